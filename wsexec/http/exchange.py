"""One plain HTTP request and its answer, over the connection it came on.

plain.py drives the requests of a connection; static.py, cgi.py and
devconsole.py answer them through an Exchange.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, AsyncIterator, Dict, Iterable, Tuple

import trio

from .request import ClientGone, Request
from .syntax import render_head

if TYPE_CHECKING:
    from typing import Protocol

    from ..config import Config
    from ..log import ConnectionLog
    from ..net.streams import Stream
    from ..proc.children import Handlers
    from ..stats import Stats
    from .routing import Route

    class Peer(Protocol):
        """What plain HTTP uses of its connection (wsexec/connection.py)."""

        stream: Stream
        log: ConnectionLog
        config: Config
        handlers: Handlers  # spawns CGI scripts, within --maxforks
        stats: Stats  # counts the answers

        async def environment(self, request: Request, route: Route) -> Dict[str, str]: ...

Header = Tuple[str, str]

# A body sent to a route that does not take one is read and dropped up to this
# size, so the connection can be kept; a larger one closes the connection.
DISCARD_LIMIT = 1 << 20


class Reader:
    """The connection's socket, with bytes already received (pipelined
    requests, the start of a body) served first."""

    def __init__(self, stream: "Stream", pending: bytes = b"") -> None:
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

    def __init__(self, peer: "Peer", request: Request, reader: Reader) -> None:
        self.peer = peer
        self.config = peer.config
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
        config = self.config
        return render_head(status, list(headers) + list(config.headers + config.headers_http), close=not self.keep)

    async def send_head(self, status: int, headers: Iterable[Header], body: bytes = b"") -> None:
        """The head, and with it a small body in the same write."""
        self.status = status
        data = self.render_head(status, headers)
        self.head_sent = True
        await self.peer.stream.send_all(data + body if body else data)
        self.bytes_out += len(body)

    async def send_body(self, data: bytes) -> None:
        await self.peer.stream.send_all(data)
        self.bytes_out += len(data)

    async def send_text(self, status: int, text: str, headers: Iterable[Header] = (),
                        content_type: str = "text/plain; charset=utf-8") -> None:
        """A whole answer with a short body (none for HEAD)."""
        await self.skip_body()
        body = text.encode("utf-8")
        head = [("Content-Type", content_type), ("Content-Length", str(len(body)))] + list(headers)
        await self.send_head(status, head, b"" if self.request.method == "HEAD" else body)

    async def error(self, status: int, message: str, headers: Iterable[Header] = (), keep: bool = True) -> None:
        if not keep:
            self.keep = False
        await self.send_text(status, message.rstrip("\n") + "\n", headers)


def wants_keep_alive(request: Request) -> bool:
    """HTTP/1.1 keeps the connection unless either side says close (RFC 9112
    section 9.3); HTTP/1.0 is closed after one answer."""
    tokens = {t.strip().lower() for t in (request.header("connection") or "").split(",")}
    return request.http_version == "1.1" and "close" not in tokens


