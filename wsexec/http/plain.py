"""Plain HTTP on the WebSocket port: routes, request bodies, keep-alive.

A request that is not a WebSocket upgrade comes here when --devconsole,
--cgidir or --staticdir is given (without them wsexec answers 404 and
closes). Routes, first match wins:

    1. WebSocket upgrade        (connection.py, before this module is reached)
    2. --devconsole             every other GET or HEAD gets the console page
    3. --cgidir                 an executable under DIR, the rest of the path is PATH_INFO
    4. --staticdir              a file under DIR (index.html for a directory)
    5. 404

HTTP/1.1 connections are kept open between requests (RFC 9112 section 9.3);
the next request head must arrive within --handshakems and be at most
--maxheader bytes, like the first. An upgrade request on a kept-alive
connection is handed back to the WebSocket side.

Also here: the --redirport listener, which sends every request to https://.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from dataclasses import replace
from http import HTTPStatus
from typing import TYPE_CHECKING, AsyncIterator, Iterable, Optional, Tuple

import trio

from . import cgi

from . import devconsole

from . import static
from .environment import split_host
from ..log import ACCESS
from .request import ClientGone, HttpError, Request, read_request
from ..net.streams import Socket, next_connection
from ..websocket import is_upgrade

if TYPE_CHECKING:
    from ..connection import Connection
    from ..server import ServerState

logger = logging.getLogger("wsexec.http")

Header = Tuple[str, str]

READ_ONLY = ("GET", "HEAD")
# A body sent to a route that does not take one is read and dropped up to this
# size, so the connection can be kept; a larger one closes the connection.
DISCARD_LIMIT = 1 << 20
# Unread input left when closing: drained for at most this long / this much,
# so the kernel does not answer our last response with a reset (RFC 9112 9.6).
LINGER_SECONDS = 1.0
LINGER_BYTES = 1 << 20
MAX_LOCAL_REDIRECTS = 10


def enabled(config) -> bool:  # type: ignore[no-untyped-def]
    return bool(config.devconsole or config.cgidir or config.staticdir)


class Reader:
    """The connection's socket, with bytes already received (pipelined
    requests, the start of a body) served first."""

    def __init__(self, stream: Socket, pending: bytes = b"") -> None:
        self.stream = stream
        self.pending = pending

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        if self.pending:
            data, self.pending = self.pending[:max_bytes], self.pending[max_bytes:]
            return data
        return await self.stream.receive_some(max_bytes)

    def take(self) -> bytes:
        data, self.pending = self.pending, b""
        return data


class Exchange:
    """One plain request and its answer."""

    def __init__(self, conn: "Connection", request: Request, reader: Reader) -> None:
        self.conn = conn
        self.config = conn.config
        self.request = request
        self.reader = reader
        self.keep = wants_keep_alive(request)
        self.body_left = 0  # request body bytes not yet read from the client
        self.head_sent = False
        self.status = 0
        self.bytes_out = 0

    # --- the request body ---------------------------------------------------------

    async def body_chunks(self) -> AsyncIterator[bytes]:
        """The rest of the request body, as it arrives."""
        while self.body_left > 0:
            try:
                data = await self.reader.receive_some(min(self.body_left, 65536))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.keep = False
                raise ClientGone()
            self.body_left -= len(data)
            yield data

    async def skip_body(self) -> None:
        """For a route that takes no body: drop a small one, so the connection
        can be kept; leave a large one (or one the client is waiting to be asked
        for with Expect: 100-continue) unread and close after answering."""
        if self.body_left == 0 or not self.keep:  # closing anyway: linger() drains it
            return
        expect = (self.request.header("expect") or "").lower()
        if self.body_left > DISCARD_LIMIT or "100-continue" in expect:
            self.keep = False
            return
        with trio.move_on_after(self.config.handshakems / 1000) as scope:
            async for _ in self.body_chunks():
                pass
        if scope.cancelled_caught:
            self.keep = False

    # --- the answer ----------------------------------------------------------------

    def render_head(self, status: int, headers: Iterable[Header]) -> bytes:
        lines = [f"HTTP/1.1 {status} {phrase(status)}"]
        lines += [f"{name}: {value}" for name, value in headers]
        lines += [f"{name}: {value}" for name, value in self.config.headers + self.config.headers_http]
        if not self.keep:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")

    async def send_head(self, status: int, headers: Iterable[Header]) -> None:
        self.status = status
        data = self.render_head(status, headers)
        self.head_sent = True
        await self.conn.stream.send_all(data)

    async def send_body(self, data: bytes) -> None:
        await self.conn.stream.send_all(data)
        self.bytes_out += len(data)

    async def send_text(self, status: int, text: str, headers: Iterable[Header] = (),
                        content_type: str = "text/plain; charset=utf-8") -> None:
        """A whole answer with a short body (none for HEAD)."""
        await self.skip_body()
        body = text.encode("utf-8")
        head = [("Content-Type", content_type), ("Content-Length", str(len(body)))] + list(headers)
        await self.send_head(status, head)
        if self.request.method != "HEAD":
            await self.send_body(body)

    async def error(self, status: int, message: str, headers: Iterable[Header] = (), keep: bool = True) -> None:
        if not keep:
            self.keep = False
        await self.send_text(status, message.rstrip("\n") + "\n", headers)


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def wants_keep_alive(request: Request) -> bool:
    """HTTP/1.1 keeps the connection unless either side says close (RFC 9112
    section 9.3); HTTP/1.0 is closed after one answer."""
    tokens = {t.strip().lower() for t in (request.header("connection") or "").split(",")}
    return request.http_version == "1.1" and "close" not in tokens


# --- the connection loop --------------------------------------------------------------

async def serve_plain(conn: "Connection", request: Request) -> Optional[Request]:
    """Answer plain requests on this connection until it closes; return an
    upgrade request if one arrives on it (the WebSocket side takes over)."""
    config, state = conn.config, conn.state
    reader = Reader(conn.stream, request.trailing)
    while True:
        state.connections.add(conn)  # a request in progress delays shutdown
        try:
            keep = await respond(conn, request, reader)
        finally:
            state.connections.discard(conn)
        if not keep or state.stopping.is_set():
            await linger(conn.stream, reader)
            return None
        try:
            with trio.fail_after(config.handshakems / 1000):
                request = await read_request(reader, config.maxheader, conn.remote, conn.local)
            if conn.front is not None:  # TLS, PROXY header, trusted proxies (wsexec/net/front.py)
                request = conn.front.apply(request)
        except (trio.TooSlowError, ClientGone):
            return None  # an idle keep-alive connection just ends
        except HttpError as e:
            await conn.refuse(e.status, e.message, e.headers)
            return None
        # read_request may have left bytes of a second pipelined request with the reader.
        request = replace(request, trailing=request.trailing + reader.take())
        if is_upgrade(request.header):
            return request
        reader = Reader(conn.stream, request.trailing)


async def linger(stream: Socket, reader: Reader) -> None:
    """Half-close, then read what the client still sends for a bounded time:
    closing with unread input makes the kernel send a reset, which can destroy
    the answer before the client has read it."""
    stream.shutdown_write()
    received = 0
    with trio.move_on_after(LINGER_SECONDS):
        while received < LINGER_BYTES:
            try:
                data = await reader.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            received += len(data)


async def respond(conn: "Connection", request: Request, reader: Reader) -> bool:
    """Answer one request; True if the connection may carry another."""
    ex = Exchange(conn, request, reader)
    started = time.monotonic()
    try:
        await dispatch(ex)
    except ClientGone:
        ex.keep = False
    except trio.BrokenResourceError:
        ex.keep = False
    conn.log.log(
        ACCESS, "HTTP %s %s %s %d bytes %.3fs%s",
        request.method, request.target, ex.status or "-", ex.bytes_out, time.monotonic() - started,
        "" if ex.keep else " close",
    )
    return ex.keep and ex.body_left == 0


async def dispatch(ex: Exchange, redirects: int = 0) -> None:
    request, config = ex.request, ex.config
    if "\0" in request.target or "%00" in request.path:
        return await ex.error(400, "NUL in the request target", keep=False)
    if request.header("transfer-encoding") is not None:
        # h11 accepts only "chunked" here. RFC 3875 4.1.2 wants CONTENT_LENGTH
        # before the script starts, so a chunked body is refused, as Apache does.
        ex.keep = False
        return await ex.error(411, "send the request body with Content-Length (chunked bodies are not accepted)")
    lengths = {v.strip() for v in (request.header("content-length") or "0").split(",")}
    if len(lengths) != 1:
        return await ex.error(400, "conflicting Content-Length values", keep=False)
    ex.body_left = int(lengths.pop())  # h11 checked it is digits

    if config.devconsole:
        if request.method not in READ_ONLY:
            return await ex.error(405, "method not allowed", (("Allow", "GET, HEAD"),))
        return await ex.send_text(200, devconsole.PAGE, devconsole.HEADERS, "text/html; charset=utf-8")
    if config.cgidir:
        route = cgi.route(config.cgidir, request.path)
        if route is not None:
            if request.method in cgi.NOT_TAKEN:
                return await ex.error(405, "method not allowed", (("Allow", cgi.ALLOW),))
            location = await cgi.run(ex, route)
            if location is None:
                return
            if redirects >= MAX_LOCAL_REDIRECTS:
                return await ex.error(500, "too many local redirects")
            # RFC 3875 6.2.2: answer as if the client had asked for the new URL, with GET.
            ex.keep = ex.keep and ex.body_left == 0
            headers = tuple((n, v) for n, v in request.headers if n.lower() not in ("content-length", "content-type"))
            ex.request = replace(request, method="GET", target=location, headers=headers, trailing=b"")
            return await dispatch(ex, redirects + 1)
    if config.staticdir:
        found = static.resolve(config.staticdir, request.path)
        if found is not None:
            if request.method not in READ_ONLY:
                return await ex.error(405, "method not allowed", (("Allow", "GET, HEAD"),))
            await ex.skip_body()
            if isinstance(found, static.AddSlash):
                query = f"?{request.query}" if request.query else ""
                return await ex.error(301, "moved", (("Location", found.location + query),))
            return await static.serve(ex, found)
    await ex.error(404, "not found")


# --- --redirport ------------------------------------------------------------------------

_HOST = re.compile(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]")


def redirect_location(request: Request, tls_port: int, fallback_host: str) -> str:
    """https://HOST[:PORT]/path?query for a plain request: the host from the
    Host header (if it is a plain host name or address), the TLS port, and the
    request's own path and query (websocketd drops both)."""
    name, _ = split_host(request.header("host"), 80)
    host = f"[{name}]" if ":" in name else name
    if not name or not _HOST.fullmatch(host):
        host = f"[{fallback_host}]" if ":" in fallback_host else fallback_host
    port = "" if tls_port == 443 else f":{tls_port}"
    target = request.target
    if "://" in target.split("?", 1)[0]:  # absolute-form: keep path and query only
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    if not target.startswith("/"):
        target = "/"
    return f"https://{host}{port}{target}"


async def serve_redirects(state: "ServerState", *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
    """The --redirport listener: every request gets 301 to the https:// URL."""
    from ..server import bind  # server imports connection, which imports this module

    config = state.config
    listeners = bind(replace(config, port=config.redirport))
    state.redirect_addresses = [s.getsockname()[:2] for s in listeners]
    for host, port in state.redirect_addresses:
        logger.info("redirecting http://%s:%d/ to https://", host, port)
    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(accept_redirects, state, listener, nursery)
            task_status.started(state.redirect_addresses)
    finally:
        for listener in listeners:
            listener.close()


async def accept_redirects(state: "ServerState", listener: socket.socket, nursery: trio.Nursery) -> None:
    while True:
        try:
            conn = await next_connection(listener)
        except OSError:
            await trio.sleep(0.05)  # out of descriptors, or the client is gone
            continue
        nursery.start_soon(answer_redirect, state, Socket(conn))


async def answer_redirect(state: "ServerState", stream: Socket) -> None:
    config = state.config
    try:
        remote, local = stream.sock.getpeername()[:2], stream.sock.getsockname()[:2]
        with trio.fail_after(config.handshakems / 1000):
            request = await read_request(stream, config.maxheader, remote, local)
        tls_port = state.addresses[0][1] if state.addresses else config.port
        location = redirect_location(request, tls_port, local[0])
        body = f"moved to {location}\n".encode("utf-8", "replace")
        lines = ["HTTP/1.1 301 Moved Permanently", f"Location: {location}",
                 "Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(body)}", "Connection: close"]
        lines += [f"{n}: {v}" for n, v in config.headers + config.headers_http]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
        logger.log(ACCESS, "%s:%d REDIRECT %s -> %s", remote[0], remote[1], request.target, location)
        with trio.move_on_after(config.gracems / 1000):
            await stream.send_all(data if request.method == "HEAD" else data + body)
            await linger(stream, Reader(stream, b""))
    except (trio.TooSlowError, ClientGone, HttpError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await stream.aclose()
