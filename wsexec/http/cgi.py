"""--cgidir: CGI/1.1 scripts (RFC 3875) for plain HTTP requests.

The script gets the same environment as a WebSocket handler (build_environment,
--passenv) plus CONTENT_LENGTH and CONTENT_TYPE from the request; the request
body on stdin; PATH_INFO from the URL path after the script. Its output is a
CGI header block, then a body that is streamed to the client as it is written
(chunked, unless the script gives Content-Length). A script counts against
--maxforks like a WebSocket handler, runs in its own process group, and is
stopped with the usual signal ladder when it runs past --cgitimeoutms.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, AsyncIterator, List, Optional, Tuple

import trio

from ..proc.children import Child, stop
from ..proc.shebang import spawn_failure
from .syntax import is_token
from .environment import to_env
from .request import ClientGone
from .routing import Route, route_dir

if TYPE_CHECKING:
    from .exchange import Exchange

Header = Tuple[str, str]

HEAD_LIMIT = 64 * 1024  # most bytes of CGI header a script may print
# Hop-by-hop fields are the server's business (RFC 9110 section 7.6.1), and
# Status is CGI's own (RFC 3875 section 6.3.3): none of them is passed on.
NOT_PASSED = {"status", "connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection", "te",
              "trailer", "content-length"}
# A script answers any method but these: CONNECT asks for a tunnel and TRACE
# would echo the client's credentials back (RFC 9110 sections 9.3.6, 9.3.8).
NOT_TAKEN = ("CONNECT", "TRACE")
ALLOW = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
_STATUS = re.compile(r"([1-5][0-9][0-9])(?:[ \t].*)?")


def route(root: str, url_path: str) -> Optional[Route]:
    """An executable under root, like --dir; PATH_TRANSLATED is PATH_INFO mapped
    into root (RFC 3875 section 4.1.6), empty without PATH_INFO."""
    found = route_dir(root, url_path)
    if found is None:
        return None
    translated = os.path.join(root, found.path_info.lstrip("/")) if found.path_info else ""
    return replace(found, path_translated=translated)


# --- the script's header (pure) -------------------------------------------------------

class BadHeader(Exception):
    """The script's output does not start with a valid CGI header."""


@dataclass(frozen=True)
class CgiHead:
    status: int
    headers: Tuple[Header, ...]  # passed on to the client
    content_length: Optional[int] = None
    local_location: Optional[str] = None  # RFC 3875 6.2.2: answer this URL instead


def split_head(buf: bytes) -> Optional[Tuple[bytes, bytes]]:
    """(header lines, rest) once a blank line ('\\n' or '\\r\\n') has arrived."""
    pos = 0
    while True:
        nl = buf.find(b"\n", pos)
        if nl < 0:
            return None
        if buf[pos:nl] in (b"", b"\r"):
            return buf[:pos], buf[nl + 1 :]
        pos = nl + 1


def parse_head(block: bytes) -> CgiHead:
    """RFC 3875 section 6: a document response needs Content-Type; a redirect,
    Location; Status is optional ('NNN reason')."""
    fields: List[Header] = []
    for raw in block.split(b"\n"):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            raise BadHeader("folded header line")
        name_b, sep, value_b = line.partition(b":")
        name, value = name_b.decode("latin-1"), value_b.strip(b" \t").decode("latin-1")
        if not sep or not is_token(name):
            raise BadHeader(f"malformed header line {line[:60]!r}")
        if any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in value):
            raise BadHeader(f"control character in header {name}")
        fields.append((name, value))
    if not fields:
        raise BadHeader("no header")
    first = {}
    for name, value in fields:
        first.setdefault(name.lower(), value)
    status: Optional[int] = None
    if "status" in first:
        match = _STATUS.fullmatch(first["status"])
        if not match or int(match.group(1)) < 200:
            raise BadHeader(f"bad Status: {first['status'][:60]!r}")
        status = int(match.group(1))
    length: Optional[int] = None
    if "content-length" in first:
        if not first["content-length"].isdigit():
            raise BadHeader(f"bad Content-Length: {first['content-length'][:60]!r}")
        length = int(first["content-length"])
    location = first.get("location")
    if location is not None and location.startswith("/") and not location.startswith("//") and status in (None, 200):
        return CgiHead(200, (), None, location)
    if location is not None:
        status = status or 302  # RFC 3875 6.2.3: a client redirect
    elif "content-type" not in first and status not in (204, 304):
        raise BadHeader("no Content-Type")
    passed = tuple((n, v) for n, v in fields if n.lower() not in NOT_PASSED)
    return CgiHead(status or 200, passed, length)


# --- running a script ----------------------------------------------------------------

async def run(ex: "Exchange", found: Route) -> Optional[str]:
    """Answer the request with the script; a local redirect's URL if it asks for one."""
    peer = ex.peer
    handlers = peer.handlers
    if not handlers.slots.take():
        await ex.error(429, "too many handlers running, try again later", (("Retry-After", "1"),))
        return None
    try:
        session = await start(ex, found)
        if session is None:
            return None
        try:
            location = await session.run()
        finally:
            await session.end()
    finally:
        handlers.slots.give_back()
    if session.tail:
        # The answer's last bytes go out only now, with the script reaped and
        # its --maxforks slot free: a client that sends its next request as
        # soon as this one is complete never finds its own script still counted.
        try:
            await peer.stream.send_all(session.tail)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            ex.keep = False
    return location


async def start(ex: "Exchange", found: Route) -> Optional["Session"]:
    """The script started with its environment, or None (502 sent) if it cannot start."""
    peer = ex.peer
    env = await peer.environment(ex.request, found)
    # RFC 3875 4.1.2 and 4.1.3: set when the request has a body.
    env["CONTENT_LENGTH"] = str(ex.body_left) if ex.body_left else ""
    env["CONTENT_TYPE"] = to_env(ex.request.header("content-type") or "")
    try:
        child = await peer.handlers.spawn((found.program,), env, peer.log)
    except OSError as e:
        peer.log.error("CGI %s: cannot start: %s", found.script_name, spawn_failure(found.program, e))
        await ex.error(502, "bad gateway: the CGI script could not be started")
        return None
    return Session(ex, found, child)


class Session:
    def __init__(self, ex: "Exchange", found: Route, child: Child) -> None:
        self.ex = ex
        self.peer = ex.peer
        self.config = ex.config
        self.route = found
        self.child = child
        self.problem = ""  # why the script's answer was refused, for the log
        self.timed_out = False
        self.feed_scope = trio.CancelScope()
        self.feed_done = trio.Event()
        self.location: Optional[str] = None
        self.tail = b""  # the end of the answer, sent once the script is gone
        self.peer.log.pid = str(child.pid)

    async def run(self) -> Optional[str]:
        ex, child, config = self.ex, self.child, self.config
        expect = (ex.request.header("expect") or "").lower()
        if ex.body_left and "100-continue" in expect and ex.request.http_version == "1.1":
            await ex.peer.stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        deadline = trio.current_time() + config.cgitimeoutms / 1000
        self.feed_scope.deadline = deadline
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.feed)
            with trio.move_on_at(deadline) as limit:
                await self.relay()
            if limit.cancelled_caught:
                await self.overtime()
            else:
                # Output ended (or was all taken): stdin closed, then the ladder.
                child.close_stdin()
                await stop(child, config.closems)
                # The rest of the body is still read (and dropped), so the
                # connection can carry the next request.
                with trio.move_on_at(deadline):
                    await self.feed_done.wait()
            self.feed_scope.cancel()
            nursery.cancel_scope.cancel()
        return self.location

    async def end(self) -> None:
        """However the request ended (even cancelled), the script goes with it."""
        status = await self.peer.handlers.dispose(self.child)
        if self.problem:
            self.peer.log.error("CGI %s: %s (%s)", self.route.script_name, self.problem, status)
        else:
            self.peer.log.debug("CGI %s: %s", self.route.script_name, status)
        self.peer.log.pid = "-"

    async def fail(self, status: int, message: str) -> None:
        """Refuse the script's answer: the client gets status, and the
        connection closes (the script may not have read all of the body)."""
        self.feed_scope.cancel()
        self.ex.keep = False
        with trio.move_on_after(self.config.gracems / 1000):
            try:
                await self.ex.error(status, message)
            except trio.BrokenResourceError:
                pass

    async def overtime(self) -> None:
        self.timed_out = True
        self.problem = f"ran past --cgitimeoutms ({self.config.cgitimeoutms} ms): stopped"
        if not self.ex.head_sent:
            await self.fail(504, "gateway timeout: the CGI script took too long")
        else:
            self.ex.keep = False  # the body is cut short: only closing can say so
        self.feed_scope.cancel()
        self.child.close_stdin()
        await stop(self.child, 0)

    # --- the script's streams -------------------------------------------------------

    async def feed(self) -> None:
        """The request body to the script's stdin; if the script stops reading,
        the rest is read from the client and dropped."""
        ex, child = self.ex, self.child
        with self.feed_scope:
            writable = True
            try:
                async for data in ex.body_chunks():
                    if writable:
                        try:
                            await child.io.send_all(data)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            writable = False
            except ClientGone:
                ex.keep = False
            if writable:
                child.close_stdin()
        self.feed_done.set()

    async def output(self, rest: bytes) -> AsyncIterator[bytes]:
        if rest:
            yield rest
        while True:
            try:
                data = await self.child.io.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                return
            yield data

    async def read_head(self) -> Tuple[bytes, bytes]:
        buf = b""
        async for data in self.output(b""):
            buf += data
            parts = split_head(buf)
            if parts is not None:
                return parts
            if len(buf) > HEAD_LIMIT:
                raise BadHeader(f"header larger than {HEAD_LIMIT} bytes")
        raise BadHeader("no header (the script printed nothing)" if not buf else "header not ended by a blank line")

    async def relay(self) -> None:
        try:
            block, rest = await self.read_head()
            head = parse_head(block)
        except BadHeader as e:
            self.problem = str(e)
            return await self.fail(502, "bad gateway: the CGI script sent no valid header")
        if head.local_location is not None:
            self.location = head.local_location
            return
        try:
            await self.respond(head, rest)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.ex.keep = False  # the client is gone; the script is stopped below

    async def respond(self, head: CgiHead, rest: bytes) -> None:
        ex = self.ex
        headers = list(head.headers)
        if ex.request.method == "HEAD" or head.status in (204, 304):
            if head.content_length is not None and head.status != 204:
                headers.append(("Content-Length", str(head.content_length)))
            ex.status, ex.head_sent = head.status, True
            self.tail = ex.render_head(head.status, headers)  # the whole answer
            async for _ in self.output(rest):  # let the script finish writing
                pass
            return
        if head.content_length is not None:
            headers.append(("Content-Length", str(head.content_length)))
            await ex.send_head(head.status, headers)
            return await self.send_counted(head.content_length, rest)
        if ex.keep:
            headers.append(("Transfer-Encoding", "chunked"))
            await ex.send_head(head.status, headers)
            async for data in self.output(rest):
                await ex.peer.stream.send_all(b"%x\r\n%b\r\n" % (len(data), data))
                ex.bytes_out += len(data)
            self.tail = b"0\r\n\r\n"
            return
        # HTTP/1.0 or Connection: close: the end of the body is the end of the connection.
        await ex.send_head(head.status, headers)
        async for data in self.output(rest):
            await ex.send_body(data)

    async def send_counted(self, length: int, rest: bytes) -> None:
        left = length
        async for data in self.output(rest):
            data = data[:left]
            left -= len(data)
            if left == 0:
                self.tail = data
                self.ex.bytes_out += len(data)
                return
            await self.ex.send_body(data)
        if left:
            self.problem = f"wrote {length - left} of the {length} bytes its Content-Length promised"
            self.ex.keep = False
