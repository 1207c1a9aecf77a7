"""What comes before the HTTP request on a connection: the PROXY protocol
header, the TLS handshake, and who the client really is.

Without --ssl, --proxy-protocol and --trusted-proxy, TCP connections go
straight to connection.handle_connection (server.accept picks the handler
once per listener), so the plain path pays nothing for any of this.
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Dict, Optional, Tuple

import trio

from ..http import response
from ..config import EXIT_BAD_COMBINATION, EXIT_BAD_COMMAND, EXIT_USAGE, Config, ConfigError
from ..log import ACCESS
from .proxy import UNIX, ProxyError, ProxyHeader, Trust, parse_proxy_header, parse_trust, resolve
from ..http.request import Request
from .streams import Socket
from .tls import NotTls, TlsStream, make_context

if TYPE_CHECKING:
    from ..server import ServerState

logger = logging.getLogger("wsexec.front")

Address = Tuple[str, int]
PEEK_SIZE = 536  # a v1 line (107) or a v2 header with its usual TLVs
PEEK_WAIT = 0.005  # a header split across segments: look again after this


def validate_fronts(config: Config) -> Config:
    """--ssl and its files, --unixsocket, --trusted-proxy, --inetd."""
    if config.ssl and not (config.sslcert and config.sslkey):
        raise ConfigError("--ssl needs --sslcert and --sslkey", EXIT_BAD_COMBINATION)
    if not config.ssl and (config.sslcert or config.sslkey or config.sslca):
        raise ConfigError("--sslcert, --sslkey and --sslca need --ssl", EXIT_BAD_COMBINATION)
    if config.ssl:
        try:
            make_context(config.sslcert, config.sslkey, config.sslca)  # type: ignore[arg-type]
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            raise ConfigError(f"cannot load the TLS certificate, key or CA: {e}", EXIT_BAD_COMMAND) from None
    if not 0 <= config.unixsocket_mode <= 0o777:
        raise ConfigError("--unixsocket-mode must be an octal mode such as 660", EXIT_USAGE)
    try:
        parse_trust(config.trusted_proxies)
    except ValueError as e:
        raise ConfigError(str(e), EXIT_USAGE) from None
    if config.inetd and (config.unixsocket or config.addresses or config.redirport is not None):
        raise ConfigError("--inetd serves stdin: it takes no --address, --unixsocket or --redirport",
                          EXIT_BAD_COMBINATION)
    return config


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


def fronts_of(state: "ServerState") -> Fronts:
    fronts = getattr(state, "fronts", None)
    if fronts is None:
        fronts = state.fronts = Fronts(state.config)  # type: ignore[attr-defined]
    return fronts


def handler_for(state: "ServerState", listener: socket.socket):  # type: ignore[no-untyped-def]
    """The coroutine function a listener's connections are handed to."""
    from ..connection import handle_connection

    if fronts_of(state).active or listener.family == socket.AF_UNIX:
        return handle_front
    return handle_connection


@dataclass(frozen=True)
class Front:
    """What the front of one connection established, for connection.py."""

    remote: Address
    local: Address
    tls: bool = False
    variables: Dict[str, str] = field(default_factory=dict)  # SSL_* for the handler
    trust: Optional[Trust] = None

    def apply(self, request: Request) -> Request:
        """The request as the client sent it to the first proxy (if trusted ones say so)."""
        tls = self.tls or request.tls
        if self.trust is None:
            return replace(request, tls=True) if tls and not request.tls else request
        found = resolve(request.remote, request.header, self.trust)
        if found.hops == 0:
            return replace(request, tls=True) if tls and not request.tls else request
        return replace(
            request,
            remote=found.remote,
            tls=tls if found.tls is None else found.tls,
            forwarded_host=found.host,
        )


def address_of(name: object) -> Address:
    if isinstance(name, tuple):
        return str(name[0]), int(name[1])
    return UNIX, 0


def local_of(name: object) -> Address:
    if isinstance(name, tuple):
        return str(name[0]), int(name[1])
    return (name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name or "localhost")), 0


async def handle_front(sock: Socket, state: "ServerState") -> None:
    """PROXY header, then TLS, each within --handshakems; then the connection."""
    from ..connection import handle_connection

    config, fronts = state.config, fronts_of(state)
    try:
        remote, local = address_of(sock.sock.getpeername()), local_of(sock.sock.getsockname())
    except OSError:
        await sock.aclose()  # already gone
        return
    stream = sock
    tls, variables = False, {}
    try:
        with trio.fail_after(config.handshakems / 1000):
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
        logger.log(ACCESS, "%s:%d REFUSED: no PROXY header or TLS handshake within --handshakems", *remote)
        await sock.aclose()
        return
    except ProxyError as e:
        logger.error("%s:%d REFUSED: %s", remote[0], remote[1], e)
        await sock.aclose()
        return
    except NotTls:
        logger.log(ACCESS, "%s:%d REFUSED: plain HTTP on a TLS port", *remote)
        with trio.move_on_after(1):
            await response.send(sock, response.render(400, "this port speaks TLS: use https:// or wss://"), 1)
        await sock.aclose()
        return
    except (ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
        logger.log(ACCESS, "%s:%d TLS handshake failed: %s", remote[0], remote[1], e)
        await sock.aclose()
        return
    await handle_connection(stream, state, Front(remote, local, tls, variables, fronts.trust))  # type: ignore[call-arg]


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
