"""What comes before the HTTP request on a connection: the PROXY protocol
header, the TLS handshake, and who the client really is.

Without --ssl, --proxy-protocol and --trusted-proxy, TCP connections go
straight to the request (the server decides once per listener), so the
plain path pays nothing for any of this.
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import trio

from ..config import Config
from ..log import ACCESS, FRONT_NOT_TLS, FRONT_REFUSED, FRONT_TIMEOUT, TLS_FAILED
from .proxy import UNIX, ProxyError, ProxyHeader, Trust, parse_proxy_header, parse_trust
from .streams import Socket, Stream
from .tls import NotTls, TlsStream, make_context

logger = logging.getLogger("wsexec.front")

Address = Tuple[str, int]
PEEK_SIZE = 536  # a v1 line (107) or a v2 header with its usual TLVs
PEEK_WAIT = 0.005  # a header split across segments: look again after this


class Fronts:
    """Built once per server: the TLS context and the trusted networks."""

    def __init__(self, config: Config) -> None:
        self.context: Optional[ssl.SSLContext] = (
            make_context(config.sslcert, config.sslkey, config.sslca) if config.ssl else None  # type: ignore[arg-type]
        )
        self.trust: Optional[Trust] = parse_trust(config.trusted_proxies) if config.trusted_proxies else None
        self.proxy_protocol = config.proxy_protocol

    @property
    def active(self) -> bool:
        return bool(self.context or self.trust or self.proxy_protocol)


@dataclass(frozen=True)
class Front:
    """What the front of one connection established, for connection.py
    (which also applies `trust` to the request's forwarding headers)."""

    remote: Address
    local: Address
    tls: bool = False
    variables: Dict[str, str] = field(default_factory=dict)  # SSL_* for the handler
    trust: Optional[Trust] = None


def address_of(name: object) -> Address:
    if isinstance(name, tuple):
        return str(name[0]), int(name[1])
    return UNIX, 0


def local_of(name: object) -> Address:
    if isinstance(name, tuple):
        return str(name[0]), int(name[1])
    return (name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name or "localhost")), 0


async def open_front(sock: Socket, fronts: Fronts, handshake_seconds: float) -> Optional[Tuple[Stream, Front]]:
    """PROXY header, then TLS, each within --handshakems: the stream to read
    the request from and what the front established; None if the connection
    was refused (logged here; the caller closes the socket). NotTls when
    the client spoke plain HTTP to a TLS port: the caller answers it."""
    try:
        remote, local = address_of(sock.sock.getpeername()), local_of(sock.sock.getsockname())
    except OSError:
        return None  # already gone
    stream: Stream = sock
    tls, variables = False, {}
    try:
        with trio.fail_after(handshake_seconds):
            if fronts.proxy_protocol:
                if fronts.trust is not None and not fronts.trust(remote[0]):
                    raise ProxyError(f"PROXY header from {remote[0]}, not a --trusted-proxy")
                header = await read_proxy_header(sock)
                if header.source is not None:
                    remote = header.source
                if header.destination is not None:
                    local = header.destination
                tls, variables = header.tls, dict(header.variables)
            if fronts.context is not None:
                stream = TlsStream(sock, fronts.context)
                await stream.handshake()
                tls, variables = True, stream.variables()
    except trio.TooSlowError:
        logger.log(ACCESS, FRONT_TIMEOUT, *remote)
        return None
    except ProxyError as e:
        logger.error(FRONT_REFUSED, remote[0], remote[1], e)
        return None
    except NotTls:
        logger.log(ACCESS, FRONT_NOT_TLS, *remote)
        raise  # the caller answers 400 in plain HTTP
    except (ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
        logger.log(ACCESS, TLS_FAILED, remote[0], remote[1], e)
        return None
    return stream, Front(remote, local, tls, variables, fronts.trust)


async def receive_raw(sock: Socket, size: int, flags: int, where: str) -> bytes:
    """One recv on the raw socket, waiting until there is something."""
    while True:
        try:
            return sock.sock.recv(size, flags)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock.sock)
        except OSError as e:
            raise ProxyError(f"connection failed {where}: {e}") from None


async def read_proxy_header(sock: Socket) -> ProxyHeader:
    """Read exactly the header: it is peeked at first, so the request bytes
    behind it stay in the socket for the TLS or HTTP reader."""
    size = PEEK_SIZE
    while True:
        data = await receive_raw(sock, size, socket.MSG_PEEK, "before the PROXY header")
        if not data:
            raise ProxyError("connection closed before a complete PROXY header")
        header = parse_proxy_header(data)
        if header is not None:
            break
        if len(data) >= 16 and data[:12] == b"\r\n\r\n\x00\r\nQUIT\n":
            size = max(size, 16 + int.from_bytes(data[14:16], "big"))
        await trio.sleep(PEEK_WAIT)  # part of the header is here: wait for the rest
    left = header.length
    while left:
        got = await receive_raw(sock, left, 0, "in the PROXY header")
        if not got:
            raise ProxyError("connection closed in the PROXY header")
        left -= len(got)
    return header
