"""A small HTTP/1.1 client for one origin: h11 for the protocol, a bounded
pool of kept-alive connections, bodies read as they come.

Written for --callback (wsexec/backends/callback.py), where every client
message is one request: httpx 0.28 on trio cost 1.3 ms of CPU per request
here (its pool walks every connection for every connection on each event),
h11 alone 0.15 ms.

    pool = Pool("http://127.0.0.1:8081", size=100)
    async with pool.request("POST", "/room", [("Content-Type", "text/plain")], b"hi") as answer:
        body = await answer.read(limit)

At most `size` requests are in flight (the others wait their turn, FIFO) and
at most `size` connections are open. An idle connection is reused newest
first; one idle longer than `idle_seconds`, or that the server has closed
(readable while idle), is dropped instead. A request on a reused connection
that the server closed before any byte of an answer is sent once more on a
new connection (the server closed an idle connection as it was reused).
"""

from __future__ import annotations

import ssl
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import h11
import trio

Header = Tuple[str, str]
READ_SIZE = 65536


class Unreachable(Exception):
    """No connection to the server (refused, no route, TLS failed...)."""


class CutShort(Exception):
    """The server closed or broke the connection before its whole answer."""

    def __init__(self, message: str, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered  # a status line had arrived


class TooBig(Exception):
    """A body longer than the caller's limit (reading stopped there)."""


class Connection:
    __slots__ = ("stream", "h11", "idle_since")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
        self.idle_since = 0.0

    def closed_by_peer(self) -> bool:
        """An idle connection with something to read: the server's EOF (or junk)."""
        stream = self.stream
        sock = getattr(getattr(stream, "transport_stream", stream), "socket", None)
        return sock is None or sock.is_readable()


class Answer:
    """A response: status and headers at once, the body through read()."""

    __slots__ = ("status", "headers", "_conn", "done")

    def __init__(self, status: int, headers: List[Header], conn: Connection) -> None:
        self.status = status
        self.headers = headers  # as sent (names in their case), latin-1
        self._conn = conn
        self.done = False  # the whole answer has been read

    def header(self, name: str) -> Optional[str]:
        name = name.lower()
        return next((v for n, v in self.headers if n.lower() == name), None)

    async def read(self, limit: int) -> bytes:
        """The body; TooBig as soon as it is longer than limit (by its
        Content-Length, or counting), never holding more than limit + one read."""
        length = self.header("content-length") or ""
        if length.isdigit() and int(length) > limit:
            raise TooBig
        chunks, size = [], 0
        while True:
            event = await next_event(self._conn, answered=True)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    raise TooBig
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self.done = True
                return b"".join(chunks)


async def next_event(conn: Connection, answered: bool):  # type: ignore[no-untyped-def]
    try:
        while True:
            event = conn.h11.next_event()
            if event is h11.NEED_DATA:
                conn.h11.receive_data(await conn.stream.receive_some(READ_SIZE))
                continue
            if isinstance(event, h11.ConnectionClosed):
                raise CutShort("the server closed the connection", answered)
            return event
    except h11.RemoteProtocolError as e:
        raise CutShort(f"bad HTTP from the server: {e}", answered) from None
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
        raise CutShort(f"connection broken: {e}", answered) from None


class Pool:
    def __init__(self, url: str, size: int, idle_seconds: float = 4.0) -> None:
        parts = urlsplit(url)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.tls else 80)
        self.authority = parts.netloc.rpartition("@")[2]  # the Host header
        self.idle: List[Connection] = []
        self.turns = trio.Semaphore(size)
        self.idle_seconds = idle_seconds
        self.ssl_context: Optional[ssl.SSLContext] = ssl.create_default_context() if self.tls else None

    async def open(self) -> Connection:
        try:
            if self.ssl_context is not None:
                stream: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(
                    self.host, self.port, ssl_context=self.ssl_context, https_compatible=True)
                await stream.do_handshake()  # type: ignore[attr-defined]
            else:
                stream = await trio.open_tcp_stream(self.host, self.port)
        except (OSError, trio.BrokenResourceError) as e:  # refused, no route, DNS, TLS (ssl.SSLError is an OSError)
            raise Unreachable(str(e) or type(e).__name__) from None
        return Connection(stream)

    def reusable(self) -> Optional[Connection]:
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if now - conn.idle_since < self.idle_seconds and not conn.closed_by_peer():
                return conn
            close_now(conn)
        return None

    @asynccontextmanager
    async def request(self, method: str, target: str, headers: Sequence[Header], body: bytes = b"") -> AsyncIterator[Answer]:
        """One request; the answer's body is read in the block (what is left
        unread closes the connection instead of returning it to the pool)."""
        head = [(b"Host", self.authority.encode("ascii")), *((n.encode("latin-1"), v.encode("latin-1")) for n, v in headers)]
        if body or method in ("POST", "PUT"):
            head.append((b"Content-Length", b"%d" % len(body)))
        async with self.turns:
            answer: Optional[Answer] = None
            conn = self.reusable()
            reused = conn is not None
            try:
                while True:
                    if conn is None:
                        conn = await self.open()
                    try:
                        answer = await self.exchange(conn, method, target, head, body)
                        break
                    except CutShort as e:
                        if e.answered or not reused:
                            raise
                        close_now(conn)  # closed while idle, as it was reused: once more, on a new one
                        conn, reused = None, False
                yield answer
            finally:
                self.give_back(conn, answer)

    async def exchange(self, conn: Connection, method: str, target: str, head: List[Tuple[bytes, bytes]],
                       body: bytes) -> Answer:
        data = conn.h11.send(h11.Request(method=method, target=target, headers=head))
        if body:
            data += conn.h11.send(h11.Data(data=body))
        data += conn.h11.send(h11.EndOfMessage())
        try:
            await conn.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            raise CutShort(f"connection broken: {e}", False) from None
        while True:
            event = await next_event(conn, answered=False)
            if isinstance(event, h11.Response):
                headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers.raw_items()]
                return Answer(event.status_code, headers, conn)
            # an InformationalResponse (100 Continue...) is skipped

    def give_back(self, conn: Optional[Connection], answer: Optional[Answer]) -> None:
        if conn is None:
            return
        if answer is not None and answer.done and conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            conn.idle_since = time.monotonic()
            self.idle.append(conn)
        else:
            close_now(conn)

    def close(self) -> None:
        while self.idle:
            close_now(self.idle.pop())


def close_now(conn: Connection) -> None:
    """Closed without waiting (a TLS close_notify is not waited for)."""
    stream = conn.stream
    sock_stream = getattr(stream, "transport_stream", stream)
    sock = getattr(sock_stream, "socket", None)
    if sock is not None:
        sock.close()
