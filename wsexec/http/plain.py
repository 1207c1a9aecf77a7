"""Plain HTTP on the WebSocket port: routes, request bodies, keep-alive.

A request that is not a WebSocket upgrade comes here when --devconsole,
--cgidir or --staticdir is given (without them wsexec answers 404 and
closes). Routes, first match wins (`choose`):

    1. WebSocket upgrade        (connection.py, before this module is reached)
    2. --devconsole             every other GET or HEAD gets the console page
    3. --cgidir                 an executable under DIR, the rest of the path is PATH_INFO
    4. --staticdir              a file under DIR (index.html for a directory)
    5. 404

HTTP/1.1 connections are kept open between requests (RFC 9112 section 9.3);
the next request head must arrive within --handshakems and be at most
--maxheader bytes, like the first. An upgrade request on a kept-alive
connection is handed back to the WebSocket side.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Optional, Union

import trio

from ..log import ACCESS, HTTP
from ..websocket import is_upgrade
from . import cgi, devconsole, static
from .exchange import Exchange, Reader
from .request import ClientGone, HttpError, Request
from .routing import Route

if TYPE_CHECKING:
    from ..net.streams import Stream
    from .exchange import Peer

READ_ONLY = ("GET", "HEAD")
# Unread input left when closing: drained for at most this long / this much,
# so the kernel does not answer our last response with a reset (RFC 9112 9.6).
LINGER_SECONDS = 1.0
LINGER_BYTES = 1 << 20
MAX_LOCAL_REDIRECTS = 10


def enabled(config) -> bool:  # type: ignore[no-untyped-def]
    return bool(config.devconsole or config.cgidir or config.staticdir)


@dataclass(frozen=True)
class Choice:
    """Where a plain request goes: 'console', 'cgi', 'static', or 'refuse'
    with a status (and the methods allowed, for 405)."""

    kind: str
    status: int = 200
    allow: str = ""


def choose(method: str, devconsole: bool, script: Optional[Route],
           file: Union[static.Found, static.AddSlash, None]) -> Choice:
    """The route precedence of the module docstring, as a pure decision over
    what the lookups under --cgidir and --staticdir found."""
    if devconsole:
        return Choice("console") if method in READ_ONLY else Choice("refuse", 405, "GET, HEAD")
    if script is not None:
        return Choice("refuse", 405, cgi.ALLOW) if method in cgi.NOT_TAKEN else Choice("cgi")
    if file is not None:
        return Choice("static") if method in READ_ONLY else Choice("refuse", 405, "GET, HEAD")
    return Choice("refuse", 404)


# --- the connection loop --------------------------------------------------------------

async def serve_plain(peer: "Peer", request: Request) -> Optional[Request]:
    """Answer plain requests on this connection until it closes; return an
    upgrade request if one arrives on it (the WebSocket side takes over)."""
    reader = Reader(peer.stream, request.trailing)
    while True:
        with peer.busy():  # a request in progress delays shutdown
            keep = await respond(peer, request, reader)
        if not keep or peer.stopping:
            await linger(peer.stream, reader)
            return None
        try:
            with trio.fail_after(peer.config.handshakems / 1000):
                request = await peer.read_request(reader)
        except (trio.TooSlowError, ClientGone):
            return None  # an idle keep-alive connection just ends
        except HttpError as e:
            await peer.refuse(e.status, e.message, e.headers)
            return None
        # read_request may have left bytes of a second pipelined request with the reader.
        request = replace(request, trailing=request.trailing + reader.take())
        if is_upgrade(request.header):
            return request
        reader = Reader(peer.stream, request.trailing)


async def linger(stream: "Stream", reader: Reader) -> None:
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


async def respond(peer: "Peer", request: Request, reader: Reader) -> bool:
    """Answer one request; True if the connection may carry another."""
    ex = Exchange(peer, request, reader)
    started = time.monotonic()
    try:
        await dispatch(ex)
    except ClientGone:
        ex.keep = False
    except trio.BrokenResourceError:
        ex.keep = False
    if ex.status:
        peer.stats.http[ex.status] += 1
    peer.log.log(
        ACCESS, HTTP,
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

    script = cgi.route(config.cgidir, request.path) if config.cgidir and not config.devconsole else None
    file = static.resolve(config.staticdir, request.path) if config.staticdir and script is None else None
    choice = choose(request.method, config.devconsole, script, file)
    if choice.kind == "refuse":
        if choice.status == 405:
            return await ex.error(405, "method not allowed", (("Allow", choice.allow),))
        return await ex.error(choice.status, "not found")
    if choice.kind == "console":
        return await ex.send_text(200, devconsole.PAGE, devconsole.HEADERS, "text/html; charset=utf-8")
    if choice.kind == "cgi":
        assert script is not None
        location = await cgi.run(ex, script)
        if location is None:
            return
        if redirects >= MAX_LOCAL_REDIRECTS:
            return await ex.error(500, "too many local redirects")
        # RFC 3875 6.2.2: answer as if the client had asked for the new URL, with GET.
        ex.keep = ex.keep and ex.body_left == 0
        headers = tuple((n, v) for n, v in request.headers if n.lower() not in ("content-length", "content-type"))
        ex.request = replace(request, method="GET", target=location, headers=headers, trailing=b"")
        return await dispatch(ex, redirects + 1)
    await ex.skip_body()
    if isinstance(file, static.AddSlash):
        query = f"?{request.query}" if request.query else ""
        return await ex.error(301, "moved", (("Location", file.location + query),))
    assert isinstance(file, static.Found)
    await static.serve(ex, file)


