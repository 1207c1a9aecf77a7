"""One connection: request head -> checks -> upgrade -> handler session -> close.

The session runs the handler inside the connection's nursery, so the handler
cannot outlive it. Whichever end finishes first (client, handler output,
handler exit, server shutdown) closes the other, on websocketd's ladder.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import TYPE_CHECKING, Optional, Tuple

import trio

from .http import plain

from .http import response
from .proc.children import Child, describe_status, stop
from .http.environment import build_environment
from .proc.lines import LineSplitter, LineTooLong
from .log import ACCESS, ConnectionLog
from .http.origin import origin_allowed
from .http.request import ClientGone, HttpError, Request, read_request
from .http.routing import Route, route_command, route_dir
from .net.streams import Socket
from .websocket import (
    BINARY,
    GOING_AWAY,
    INTERNAL_ERROR,
    NORMAL,
    TEXT,
    TOO_BIG,
    WebSocket,
    handshake_problem,
    handshake_response,
    is_upgrade,
    is_utf8,
    select_subprotocol,
)

if TYPE_CHECKING:
    from .net.front import Front
    from .server import ServerState

logger = logging.getLogger("wsexec.connection")


def address_of(sockname: object) -> Tuple[str, int]:
    if isinstance(sockname, tuple):
        return str(sockname[0]), int(sockname[1])
    return str(sockname or "unix"), 0


async def handle_connection(stream: Socket, state: "ServerState", front: Optional["Front"] = None) -> None:
    """The one catch-all: an unexpected error ends this connection (1011 or
    HTTP 500) with a traceback in the log, and never the server. `front` comes
    from wsexec/net/front.py (TLS, PROXY header, trusted proxies), else None."""
    conn = Connection(stream, state, front)
    try:
        await conn.run()
    except Exception:
        conn.log.exception("internal error")
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(state.config.gracems / 1000):
                if conn.ws is not None:
                    await conn.ws.close(INTERNAL_ERROR, "internal error", state.config.gracems / 1000)
                else:
                    headers = state.config.headers + state.config.headers_http
                    await response.send(stream, response.render(500, "internal error", headers), 1)
        except Exception:  # the connection is beyond saving; the server is not
            conn.log.debug("could not tell the client", exc_info=True)
    finally:
        await stream.aclose()


class Connection:
    def __init__(self, stream: Socket, state: "ServerState", front: Optional["Front"] = None) -> None:
        self.stream = stream
        self.state = state
        self.config = state.config
        self.id = state.new_id()
        self.front = front
        if front is None:
            self.remote = address_of(stream.sock.getpeername())
            self.local = address_of(stream.sock.getsockname())
        else:
            self.remote, self.local = front.remote, front.local
        self.log = ConnectionLog(logger, self.id, self.remote)
        self.ws: Optional[WebSocket] = None
        self.input_scope = trio.CancelScope()  # the client-to-handler pump: cancelled when another end finishes
        self.client_done = False
        self.output_closed = trio.Event()  # the handler's stdout ended (or a line was too long)
        self.close_override: Optional[Tuple[int, str]] = None

    # --- before the upgrade --------------------------------------------------

    async def run(self) -> None:
        config = self.config
        try:
            # A plain scope, not fail_after: this runs once per connection.
            with trio.CancelScope(deadline=trio.current_time() + config.handshakems / 1000) as deadline:
                request = await read_request(self.stream, config.maxheader, self.remote, self.local)
            if deadline.cancelled_caught:
                self.log.log(ACCESS, "handshake timeout")
                return await self.refuse(408, "request head not received in time")
            if self.front is not None:
                request = self.front.apply(request)
        except ClientGone:
            return
        except HttpError as e:
            return await self.refuse(e.status, e.message, e.headers)
        if not is_upgrade(request.header) and plain.enabled(config):
            # Plain HTTP (wsexec/http/plain.py), kept alive until it ends or upgrades.
            next_request = await plain.serve_plain(self, request)
            if next_request is None:
                return
            request = next_request
        try:
            route = self.check(request)
        except HttpError as e:
            return await self.refuse(e.status, e.message, e.headers, request)
        await self.upgrade(request, route)

    def check(self, request: Request) -> Route:
        """Every reason to refuse a request, in order; the route if none applies."""
        config = self.config
        if not is_upgrade(request.header):
            raise HttpError(404, "not found: this address serves WebSocket connections only")
        problem = handshake_problem(request.method, request.http_version, request.header)
        if problem:
            extra = (("Sec-WebSocket-Version", "13"),) if problem[0] == 426 else ()
            raise HttpError(problem[0], problem[1], extra)
        if not origin_allowed(request.header("origin"), request.forwarded_host or request.header("host"), config.origins, config.sameorigin, request.tls):
            raise HttpError(403, f"origin not allowed: {request.header('origin')}")
        if "\0" in request.target or "%00" in request.path:
            raise HttpError(400, "NUL in the request target")
        if config.dir:
            route = route_dir(config.dir, request.path)
            if route is None:
                raise HttpError(404, "not found")
        else:
            route = route_command(config.command[0], request.path)
        if config.maxforks and self.state.forks >= config.maxforks:
            raise HttpError(429, "too many connections, try again later", (("Retry-After", "1"),))
        return route

    async def refuse(self, status: int, message: str, headers=(), request: Optional[Request] = None) -> None:  # type: ignore[no-untyped-def]
        path = request.path if request else "-"
        self.log.log(ACCESS, "REFUSED %d %s: %s", status, path, message)
        extra = tuple(headers) + self.config.headers + self.config.headers_http
        head_only = request is not None and request.method == "HEAD"
        await response.send(self.stream, response.render(status, message, extra, head_only), 1)

    async def environment(self, request: Request, route: Route) -> dict:
        remote_host = request.remote[0]
        if self.config.reverselookup:
            with trio.move_on_after(2):
                try:
                    remote_host = (await trio.socket.getnameinfo(request.remote, 0))[0]
                except OSError:
                    pass
        env = build_environment(
            request,
            script_name=route.script_name,
            path_info=route.path_info,
            path_translated=route.path_translated,
            remote_host=remote_host,
            unique_id=f"{self.state.instance}{self.id:x}",
            server_software=self.state.software,
            passed_env=self.config.passed_env,
        )
        if self.front is not None:
            env.update(self.front.variables)  # SSL_* (mod_ssl's names)
        return env

    async def upgrade(self, request: Request, route: Route) -> None:
        config, state = self.config, self.state
        env = await self.environment(request, route)
        state.forks += 1
        state.connections.add(self)
        try:
            key = request.header("sec-websocket-key") or ""
            headers = config.headers + config.headers_ws
            protocol = select_subprotocol(request.header("sec-websocket-protocol"), config.subprotocols)
            if protocol is not None:
                headers += (("Sec-WebSocket-Protocol", protocol),)
                env["WEBSOCKET_PROTOCOL"] = protocol
            await self.stream.send_all(handshake_response(key, headers))
            self.ws = WebSocket(self.stream, config.maxmessage, request.trailing)
            await self.session(request, route, env)
        finally:
            state.forks -= 1
            state.connections.discard(self)

    # --- the session -------------------------------------------------------------

    async def session(self, request: Request, route: Route, env: dict) -> None:
        ws, config = self.ws, self.config
        assert ws is not None
        grace = config.gracems / 1000
        argv = (route.program,) + tuple(config.command[1:])
        started = time.monotonic()
        try:
            child = await self.state.reaper.spawn(argv, env, self.log, self.wakeup)
        except OSError as e:
            reason = f"cannot start handler: {e.strerror or e}"
            self.log.error("%s (%s)", reason, route.program)
            with trio.move_on_after(grace):
                await ws.close(INTERNAL_ERROR, reason, grace)
            self.log_disconnect(request, "not started", INTERNAL_ERROR, reason, started)
            return
        self.log.pid = str(child.pid)
        self.log.log(ACCESS, "CONNECT %s", request.target)
        code, reason = GOING_AWAY, "server stopped"  # unless the session ends on its own
        try:
            code, reason = await self.supervise(child, ws)
        finally:
            # However the session ended (even cancelled), the handler goes with it.
            if child.status is None:
                child.signal_group(signal.SIGKILL)
                # Reap it here: when the whole server is cancelled, the reaper may be too.
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    while child.status is None:
                        self.state.reaper.poll_one(child)
                        if child.status is None:
                            await trio.sleep(0.005)
            ws.close_now(code, reason)  # cancelled: a close frame if it fits, no waiting
            self.state.reaper.release(child)
            status = describe_status(child.status) if child.status is not None else "not reaped"
            self.log_disconnect(request, status, code, reason, started)

    def log_disconnect(self, request: Request, status: str, code: int, reason: str, started: float) -> None:
        ws = self.ws
        assert ws is not None
        received = ws.close_received[0] if ws.close_received else "none"
        self.log.log(
            ACCESS,
            "DISCONNECT %s %s close=%s/%s client_close=%s in=%d out=%d %.3fs",
            request.target, status, code, reason or "-", received, ws.bytes_in, ws.bytes_out, time.monotonic() - started,
        )

    async def supervise(self, child: Child, ws: WebSocket) -> Tuple[int, str]:
        config = self.config
        grace = config.gracems / 1000
        output_scope = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.pump_output, child, ws, output_scope)
            if config.pingms:
                nursery.start_soon(self.keepalive, ws, config.pingms / 1000)
            # This task pumps the client's messages itself (one task fewer per
            # connection) until the client is done or another end finishes.
            with self.input_scope:
                await self.pump_input(child, ws)
            if self.client_done:
                # Client gone first: stdin closed at once, the client released
                # (its close was answered), then the ladder.
                cancel(output_scope)
                child.close_stdin()
                if not (ws.gone or ws.close_received):  # a protocol error: wait for the reply
                    with trio.move_on_after(grace):
                        await ws.close(ws.close_sent[0] if ws.close_sent else 1000, "", grace)
                self.stream.close()
                ws.gone = True
                await stop(child, config.closems)
                code, reason = ws.close_sent or ws.close_received or (1006, "client gone")
            elif self.state.stopping.is_set() and not (self.output_closed.is_set() or child.exited.is_set()):
                child.close_stdin()
                await stop(child, config.closems)
                code, reason = GOING_AWAY, "server shutting down"
            else:
                # The handler finished: deliver what it printed, then close
                # with its exit status (RFC 6455 section 7.4.1: 1000 or 1011).
                with trio.move_on_after(grace):
                    await self.output_closed.wait()
                child.close_stdin()
                await stop(child, config.closems)
                assert child.status is not None
                if self.close_override:
                    code, reason = self.close_override
                elif child.status == 0:
                    code, reason = NORMAL, ""
                else:
                    code, reason = INTERNAL_ERROR, describe_status(child.status)
            cancel(output_scope)
            if not ws.gone:
                with trio.move_on_after(grace):
                    await ws.close(code, reason, grace)
            if config.pingms:
                nursery.cancel_scope.cancel()  # the keepalive task
        return code, reason

    async def keepalive(self, ws: WebSocket, interval: float) -> None:
        """A ping every interval; a client that sends nothing back for two
        intervals (no pong, no message) is treated as gone."""
        heard, quiet = ws.bytes_in, 0
        while ws.open:
            await trio.sleep(interval)
            if ws.bytes_in != heard:
                heard, quiet = ws.bytes_in, 0
            else:
                quiet += 1
            if quiet >= 2:
                self.log.log(ACCESS, "no answer to pings for %.1fs: dropping the client", 2 * interval)
                ws.gone = True
                self.stream.close()
                self.client_done = True
                self.wakeup()
                return
            await ws.ping()

    def wakeup(self) -> None:
        """Some end of the session finished: stop pumping client messages."""
        cancel(self.input_scope)

    async def pump_input(self, child: Child, ws: WebSocket) -> None:
        """Client messages to the handler's stdin; a blocked write is the backpressure."""
        writable = True
        binary = self.config.binary
        while True:
            batch = await ws.receive()
            if batch is None:
                break
            if not writable:
                continue
            if len(batch) == 1:
                data = batch[0][1] if binary else batch[0][1] + b"\n"
            else:
                payloads = [payload for _, payload in batch]
                data = b"".join(payloads) if binary else b"\n".join(payloads) + b"\n"
            try:
                # A handler that does not read blocks this write; meanwhile
                # nobody reads the client, so check it has not left.
                await child.io.send_all(data, still_wanted=self.stream.peer_open)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                if not self.stream.peer_open():
                    self.log.debug("client left while the handler was not reading")
                    ws.gone = True
                    break
                writable = False
                self.log.debug("handler stopped reading stdin; client messages are dropped")
        self.client_done = True
        self.wakeup()

    async def pump_output(self, child: Child, ws: WebSocket, scope: trio.CancelScope) -> None:
        """Handler stdout to the client; a blocked send is the backpressure."""
        with scope:
            limit = self.config.maxmessage
            splitter = None if self.config.binary else LineSplitter(limit)
            size = min(1 << 18, limit)
            try:
                while True:
                    data = await child.io.receive_some(size)
                    if not data:
                        break
                    if splitter is None:
                        sent = await ws.send_message(BINARY, data)
                    else:
                        lines = splitter.feed(data)
                        if len(lines) == 1:
                            sent = await ws.send_message(*line_message(lines[0]))
                        else:
                            sent = not lines or await ws.send_messages([line_message(line) for line in lines])
                    if not sent:
                        return  # client gone; its end of the session handles the rest
                last = splitter.finish() if splitter else None
                if last is not None:
                    await ws.send_messages([line_message(last)])
            except LineTooLong as e:
                self.log.error("%s; closing", e)
                self.close_override = (TOO_BIG, str(e))
            except trio.BrokenResourceError:
                pass
            self.output_closed.set()
            self.wakeup()


def cancel(scope: trio.CancelScope) -> None:
    """Cancel once: trio's cancel() formats the calling task on every call,
    even when the scope is already cancelled."""
    if not scope.cancel_called:
        scope.cancel()


def line_message(line: bytes) -> Tuple[int, bytes]:
    """A stdout line as a message: text when it is UTF-8, else binary, so no
    byte is lost and no invalid text frame is sent (RFC 6455 section 8.1)."""
    return (TEXT if is_utf8(line) else BINARY, line)
