"""TLS: the server context (--ssl, --sslcert, --sslkey, --sslca) and a TLS
stream with the interface of streams.Socket, over memory BIOs.

The handshake is done by the connection's own task (wsexec/net/front.py) under
--handshakems, so a slow or broken client only ever costs its own task.
The client certificate of a mutual-TLS connection reaches the handler as
the variables Apache mod_ssl sets (SSL_CLIENT_S_DN, SSL_CLIENT_VERIFY, ...).
"""

from __future__ import annotations

import os
import socket
import ssl
from typing import Callable, Dict, Optional, Union

import trio

from .streams import Socket

# Plaintext handed to OpenSSL per write: large enough for whole records,
# small enough that a big message does not sit in memory twice.
WRITE_CHUNK = 1 << 16
RECEIVE_SIZE = 1 << 16
TLS_HANDSHAKE = 0x16  # the first byte of a ClientHello record (RFC 8446 section 5.1)

# Short names of the attributes Python's getpeercert() spells out (RFC 4514 section 3).
SHORT_NAMES = {
    "commonName": "CN", "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST",
    "organizationName": "O", "organizationalUnitName": "OU", "streetAddress": "STREET",
    "domainComponent": "DC", "userId": "UID", "emailAddress": "emailAddress",
}


class NotTls(Exception):
    """The client spoke something else (plain HTTP) on a TLS port."""


def make_context(certfile: str, keyfile: str, cafile: Optional[str] = None) -> ssl.SSLContext:
    """A server context with modern defaults: TLS 1.2 at least, no
    renegotiation, no compression, HTTP/1.1 by ALPN. With cafile, a client
    certificate signed by it is required (mutual TLS)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!MD5:!DSS")
    context.load_cert_chain(certfile, keyfile)
    context.set_alpn_protocols(["http/1.1"])
    if cafile:
        if os.path.isdir(cafile):
            context.load_verify_locations(capath=cafile)
        else:
            context.load_verify_locations(cafile=cafile)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def rfc4514(name: tuple) -> str:
    """getpeercert()'s subject or issuer as the RFC 4514 string mod_ssl gives:
    the last RDN first, 'CN=alice,O=Example'."""
    rdns = []
    for rdn in reversed(name):
        rdns.append("+".join(f"{SHORT_NAMES.get(k, k)}={escape_dn(v)}" for k, v in rdn))
    return ",".join(rdns)


def escape_dn(value: str) -> str:
    """RFC 4514 section 2.4."""
    out = "".join("\\" + c if c in ',+"\\<>;=' else c for c in value)
    if out.startswith((" ", "#")):
        out = "\\" + out
    if out.endswith(" ") and len(out) > 1:
        out = out[:-1] + "\\ "
    return out


def first(name: tuple, key: str) -> Optional[str]:
    for rdn in name:
        for k, v in rdn:
            if k == key:
                return v
    return None


def client_variables(cert: Optional[dict], protocol: Optional[str], cipher: Optional[str]) -> Dict[str, str]:
    """The SSL_* variables (Apache mod_ssl names) for a verified peer certificate
    as getpeercert() returns it; SSL_CLIENT_VERIFY=NONE without one."""
    env = {"SSL_PROTOCOL": protocol or "", "SSL_CIPHER": cipher or ""}
    if not cert:
        env["SSL_CLIENT_VERIFY"] = "NONE"
        return env
    subject, issuer = cert.get("subject", ()), cert.get("issuer", ())
    env.update(
        SSL_CLIENT_VERIFY="SUCCESS",
        SSL_CLIENT_S_DN=rfc4514(subject),
        SSL_CLIENT_I_DN=rfc4514(issuer),
        SSL_CLIENT_M_SERIAL=str(cert.get("serialNumber", "")),
        SSL_CLIENT_V_START=str(cert.get("notBefore", "")),
        SSL_CLIENT_V_END=str(cert.get("notAfter", "")),
    )
    for key, short in (("commonName", "CN"), ("organizationName", "O"), ("organizationalUnitName", "OU"),
                       ("emailAddress", "Email")):
        value = first(subject, key)
        if value is not None:
            env[f"SSL_CLIENT_S_DN_{short}"] = value
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "email":
            env.setdefault("SSL_CLIENT_SAN_Email_0", value)
        elif kind == "DNS":
            env.setdefault("SSL_CLIENT_SAN_DNS_0", value)
    return env


class TlsStream:
    """TLS over a streams.Socket: receive_some, send_all, shutdown_write,
    peer_open, close, aclose, and .sock for the addresses.

    One task may receive while another sends (the WebSocket session does).
    Every TLS record OpenSSL produces goes to the socket in order: whoever
    holds the send lock drains the outgoing BIO completely."""

    def __init__(self, raw: Socket, context: ssl.SSLContext) -> None:
        self.raw = raw
        self.sock: socket.socket = raw.sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._send_lock = trio.StrictFIFOLock()
        self._shaken = False

    # --- the handshake --------------------------------------------------------------

    async def handshake(self) -> None:
        """Raises NotTls for plain HTTP, ssl.SSLError for a failed handshake,
        trio.BrokenResourceError if the client leaves."""
        first = True
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                self._send_pending()  # the alert: tells the client why (certificate, version...)
                raise
            await self._flush()
            data = await self.raw.receive_some(RECEIVE_SIZE)
            if not data:
                raise trio.BrokenResourceError("client closed the connection during the TLS handshake")
            if first and data[0] != TLS_HANDSHAKE and data[:1].isalpha():
                raise NotTls(data)
            first = False
            self._incoming.write(data)
        self._shaken = True
        await self._flush()

    def variables(self) -> Dict[str, str]:
        cipher = self._tls.cipher()
        return client_variables(self._tls.getpeercert(), self._tls.version(), cipher[0] if cipher else None)

    # --- the stream -------------------------------------------------------------------

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        """Plaintext; b"" when the client ends the connection (with or without close_notify)."""
        while True:
            try:
                data = self._tls.read(max_bytes)
            except ssl.SSLWantReadError:
                if self._outgoing.pending:
                    await self._flush()
                raw = await self.raw.receive_some(RECEIVE_SIZE)
                if raw:
                    self._incoming.write(raw)
                else:
                    self._incoming.write_eof()
                continue
            except ssl.SSLEOFError:
                return b""  # TCP closed without close_notify: the WebSocket close or HTTP framing says enough
            except ssl.SSLError as e:
                raise trio.BrokenResourceError(f"TLS error: {e}") from e
            if self._outgoing.pending:  # a key update or session ticket to answer
                await self._flush()
            return data

    async def send_all(
        self, data: Union[bytes, bytearray, memoryview], still_wanted: Optional[Callable[[], bool]] = None
    ) -> None:
        view = memoryview(data)
        for start in range(0, len(view), WRITE_CHUNK):
            try:
                self._tls.write(view[start:start + WRITE_CHUNK])
            except ssl.SSLError as e:
                raise trio.BrokenResourceError(f"TLS error: {e}") from e
            await self._flush(still_wanted)

    async def _flush(self, still_wanted: Optional[Callable[[], bool]] = None) -> None:
        async with self._send_lock:
            while self._outgoing.pending:
                await self.raw.send_all(self._outgoing.read(), still_wanted)

    def peer_open(self) -> bool:
        return self.raw.peer_open()

    def _send_pending(self) -> None:
        """What OpenSSL has for the peer, sent without waiting (best effort)."""
        data = self._outgoing.read()
        if data:
            try:
                self.sock.send(data)
            except OSError:
                pass

    def _close_notify(self) -> None:
        """Best effort, without waiting: only when no send is under way."""
        if not self._shaken or self._send_lock.locked() or self._outgoing.pending:
            return
        self._shaken = False
        try:
            self._tls.unwrap()
        except (ssl.SSLError, ValueError):
            pass  # SSLWantReadError: the peer's close_notify is not waited for
        self._send_pending()

    def shutdown_write(self) -> None:
        self._close_notify()
        self.raw.shutdown_write()

    def close(self) -> None:
        self.raw.close()

    async def aclose(self) -> None:
        if not self.raw._closed:
            self._close_notify()
        await self.raw.aclose()
