"""The front door of one connection: read the request head, then answer it
as plain HTTP (wsexec/http/plain.py) or admit the upgrade (admission.py),
connect a far end (backends/), send the 101 and run the session
(session.py) until it ends.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Dict, Iterator, Optional, Tuple

import trio

from .admission import Refusal, admit
from .backends import CLIENT_GONE, Ending, Refused, SessionInfo
from .config import Config
from .http import plain, response
from .http.environment import build_environment
from .http.request import ClientGone, HttpError, Request, read_request
from .http.routing import Route, route_command, route_dir
from .log import ACCESS, HANDSHAKE_TIMEOUT, REFUSED, for_connection
from .net.front import Front
from .net.proxy import resolve
from .net.streams import Stream
from .proc.children import Handlers
from .registry import Registry
from .session import Session
from .stats import Stats
from .websocket import INTERNAL_ERROR, WebSocket, handshake_response, is_upgrade, select_subprotocol

if TYPE_CHECKING:
    from .backends import Backend
    from .http.exchange import Reader

logger = logging.getLogger("wsexec.connection")


@dataclass(frozen=True)
class Shared:
    """What every connection uses, built once by the server."""

    config: Config
    handlers: Handlers  # handler processes: spawning, reaping, --maxforks
    registry: Registry  # live sessions and the stop flag
    backend: Optional["Backend"]  # None: no COMMAND or --dir, the site alone is served
    stats: Stats  # counters for the metrics
    instance: str  # this server's UNIQUE_ID prefix
    software: str  # SERVER_SOFTWARE
    control_url: str = ""  # WSEXEC_CONTROL: where handlers reach the control API (--control)


def address_of(sockname: object) -> Tuple[str, int]:
    if isinstance(sockname, tuple):
        return str(sockname[0]), int(sockname[1])
    return str(sockname or "unix"), 0


def as_forwarded(request: Request, front: Front) -> Request:
    """The request as the client sent it to the first proxy (when trusted
    proxies say so), and over TLS if the front was TLS."""
    tls = front.tls or request.tls
    if front.trust is not None:
        found = resolve(request.remote, request.header, front.trust)
        if found.hops:
            return replace(request, remote=found.remote, tls=tls if found.tls is None else found.tls,
                           forwarded_host=found.host)
    return replace(request, tls=True) if tls and not request.tls else request


class Connection:
    __slots__ = ("shared", "config", "handlers", "stats", "id", "stream", "front", "remote", "local", "log", "ws")

    def __init__(self, shared: Shared, conn_id: str, stream: Stream, front: Optional[Front] = None) -> None:
        self.shared = shared
        self.config = shared.config
        self.handlers = shared.handlers
        self.stats = shared.stats
        self.id = conn_id
        self.stream = stream
        self.front = front
        if front is None:
            self.remote = address_of(stream.sock.getpeername())
            self.local = address_of(stream.sock.getsockname())
        else:
            self.remote, self.local = front.remote, front.local
        self.log = for_connection(logger, conn_id, self.remote)
        self.ws: Optional[WebSocket] = None

    # --- what plain HTTP uses of the connection (http/exchange.py's Peer) ---------

    @property
    def stopping(self) -> bool:
        return self.shared.registry.stopping.is_set()

    @contextmanager
    def busy(self) -> Iterator[None]:
        registry = self.shared.registry
        registry.requests += 1
        try:
            yield
        finally:
            registry.requests -= 1

    async def read_request(self, reader: "Reader | Stream") -> Request:
        request = await read_request(reader, self.config.maxheader, self.remote, self.local)
        return request if self.front is None else as_forwarded(request, self.front)

    async def refuse(self, status: int, message: str, headers=(), request: Optional[Request] = None) -> None:  # type: ignore[no-untyped-def]
        path = request.path if request else "-"
        self.log.log(ACCESS, REFUSED, status, path, message)
        self.stats.refusals[status] += 1
        extra = tuple(headers) + self.config.headers + self.config.headers_http
        head_only = request is not None and request.method == "HEAD"
        await response.send(self.stream, response.render(status, message, extra, head_only), 1)

    async def environment(self, request: Request, route: Route) -> Dict[str, str]:
        remote_host = request.remote[0]
        if self.config.reverselookup:
            with trio.move_on_after(2):
                try:
                    remote_host = (await trio.socket.getnameinfo(request.remote, 0))[0]
                except OSError:
                    pass
        shared = self.shared
        env = build_environment(
            request,
            script_name=route.script_name,
            path_info=route.path_info,
            path_translated=route.path_translated,
            remote_host=remote_host,
            unique_id=f"{shared.instance}{self.id}",
            server_software=shared.software,
            passed_env=self.config.passed_env,
        )
        env["WSEXEC_CONNECTION_ID"] = self.id
        if shared.control_url:
            env["WSEXEC_CONTROL"] = shared.control_url
        if self.front is not None:
            env.update(self.front.variables)  # SSL_* (mod_ssl's names)
        return env

    # --- the request ------------------------------------------------------------------

    async def run(self) -> None:
        config = self.config
        try:
            # A plain scope, not fail_after: this runs once per connection.
            with trio.CancelScope(deadline=trio.current_time() + config.handshakems / 1000) as deadline:
                request = await self.read_request(self.stream)
            if deadline.cancelled_caught:
                self.log.log(ACCESS, HANDSHAKE_TIMEOUT)
                return await self.refuse(408, "request head not received in time")
        except ClientGone:
            return
        except HttpError as e:
            return await self.refuse(e.status, e.message, e.headers)
        if config.serves_plain and not is_upgrade(request.header):
            # Plain HTTP, kept alive until it ends or upgrades.
            next_request = await plain.serve_plain(self, request)
            if next_request is None:
                return
            request = next_request
        # a shared process's clients take no handler slot (only a new process does: backends/shared.py)
        verdict = admit(request, config, self.locate, self.handlers.slots.full and not config.shared)
        if isinstance(verdict, Refusal):
            return await self.refuse(verdict.status, verdict.message, verdict.headers, request)
        await self.upgrade(request, verdict)

    def locate(self, path: str) -> Optional[Route]:
        config = self.config
        if config.dir:
            return route_dir(config.dir, path)
        return route_command(config.command[0] if config.command else config.callback or "", path)

    async def upgrade(self, request: Request, route: Route) -> None:
        config, shared = self.config, self.shared
        assert shared.backend is not None  # admit() found a route
        env = await self.environment(request, route)
        protocol = select_subprotocol(request.header("sec-websocket-protocol"), config.subprotocols)
        if protocol is not None:
            env["WEBSOCKET_PROTOCOL"] = protocol
        info = SessionInfo(self.id, route, env, self.log, self.stream.peer_open, request)
        del env  # the far end keeps it only as long as it needs it (a process: until it has started)
        try:
            far = await shared.backend.connect(info)
        except Refused as e:
            return await self.refuse(e.status, e.message, e.headers, request)
        del info
        contributed = far.upgrade_headers  # an HTTP API's Set-Cookie and subprotocol (backends/callback.py)
        chosen = [value for name, value in contributed if name.lower() == "sec-websocket-protocol"]
        headers = config.headers + config.headers_ws + contributed
        if chosen:
            protocol = chosen[0]
        elif protocol is not None:
            headers += (("Sec-WebSocket-Protocol", protocol),)
        deflate = None
        if config.compress:  # imported only then: plain wsexec makes no zlib object
            from .deflate import Deflate, negotiate

            agreement = negotiate(request.header("sec-websocket-extensions"), config.compresswindow)
            if agreement is not None:
                deflate = Deflate(agreement, config.compressmin)
                headers += (("Sec-WebSocket-Extensions", agreement.response),)
        self.ws = ws = WebSocket(self.stream, config.inbound_limit, request.trailing, deflate)
        registry = shared.registry
        session = Session(self.id, ws, far, self.stream, config, self.log, registry.stopping.is_set,
                          shared.stats, registry.clock)
        session.remote, session.target, session.protocol = request.remote, request.target, protocol
        session.user_agent = request.header("user-agent") or ""
        registry.add(session)
        try:
            await self.stream.send_all(handshake_response(request.header("sec-websocket-key") or "", headers))
            await session.run(request.target)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.log.debug("client left before the upgrade was sent")
        finally:
            registry.remove(session)
            if far.outcome is None:  # the session never ran: the far end still holds its slot
                await far.close(Ending(CLIENT_GONE))

    async def fail(self) -> None:
        """The catch-all's answer (wsexec/server.py): 1011 on a WebSocket,
        500 before the upgrade."""
        self.log.exception("internal error")
        grace = self.config.gracems / 1000
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(grace):
                if self.ws is not None:
                    await self.ws.close(INTERNAL_ERROR, "internal error", grace)
                else:
                    headers = self.config.headers + self.config.headers_http
                    await response.send(self.stream, response.render(500, "internal error", headers), 1)
        except Exception:  # the connection is beyond saving; the server is not
            self.log.debug("could not tell the client", exc_info=True)
