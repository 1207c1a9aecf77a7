"""A small HTTP/1.1 client for the plain-HTTP tests: h11 over a real TCP
connection to 127.0.0.1, so keep-alive, chunked bodies and HEAD are parsed by
an independent implementation. Every wait has a time ceiling."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import h11
import trio


@dataclass
class Reply:
    status: int
    headers: Dict[str, str]  # lower-case name -> value (repeats joined with ', ')
    body: bytes = b""
    raw_headers: List[Tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name.lower())


class Client:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)
        self.informational: List[int] = []

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> "Client":
        return cls(await trio.open_tcp_stream(host, port))

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def send_request(self, method: str, target: str, headers: Sequence[Tuple[str, str]] = (),
                           body: Optional[bytes] = None, http_version: str = "1.1") -> None:
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        names = {n.lower() for n, _ in headers}
        all_headers = list(headers)
        if "host" not in names:
            all_headers.insert(0, ("Host", "127.0.0.1"))
        if body is not None and "content-length" not in names and "transfer-encoding" not in names:
            all_headers.append(("Content-Length", str(len(body))))
        data = self.h11.send(h11.Request(method=method, target=target, headers=all_headers, http_version=http_version))
        if body:
            data += self.h11.send(h11.Data(data=body))
        data += self.h11.send(h11.EndOfMessage())
        await self.stream.send_all(data)

    async def next_event(self) -> object:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.stream.receive_some(65536)
            self.h11.receive_data(data)

    async def read_head(self) -> Reply:
        while True:
            event = await self.next_event()
            if isinstance(event, h11.InformationalResponse):
                self.informational.append(event.status_code)
                continue
            if isinstance(event, h11.Response):
                break
            raise AssertionError(f"expected a response, got {event!r}")
        raw = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers.raw_items()]
        headers: Dict[str, str] = {}
        for n, v in raw:
            key = n.lower()
            headers[key] = f"{headers[key]}, {v}" if key in headers else v
        return Reply(event.status_code, headers, b"", raw)

    async def read_data(self) -> Optional[bytes]:
        """The next piece of the body, None at its end."""
        event = await self.next_event()
        if isinstance(event, h11.Data):
            return bytes(event.data)
        if isinstance(event, h11.EndOfMessage):
            return None
        raise AssertionError(f"expected body data, got {event!r}")

    async def read_reply(self) -> Reply:
        reply = await self.read_head()
        chunks = []
        while True:
            data = await self.read_data()
            if data is None:
                break
            chunks.append(data)
        reply.body = b"".join(chunks)
        return reply

    async def request(self, method: str, target: str, headers: Sequence[Tuple[str, str]] = (),
                      body: Optional[bytes] = None, http_version: str = "1.1") -> Reply:
        await self.send_request(method, target, headers, body, http_version)
        return await self.read_reply()

    @property
    def reusable(self) -> bool:
        """h11's view: both sides said the connection may carry another request."""
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    async def server_closed(self, timeout: float = 3) -> bool:
        """True if the server closes (EOF or reset) within timeout."""
        with trio.move_on_after(timeout):
            try:
                while True:
                    data = await self.stream.receive_some(65536)
                    if not data:
                        return True
            except trio.BrokenResourceError:
                return True
        return False


async def fetch(port: int, method: str, target: str, headers: Sequence[Tuple[str, str]] = (),
                body: Optional[bytes] = None, timeout: float = 5, http_version: str = "1.1") -> Reply:
    """One request on a new connection."""
    with trio.fail_after(timeout):
        async with await Client.open(port) as client:
            return await client.request(method, target, headers, body, http_version)


def parse_raw(answer: bytes) -> Tuple[int, Dict[str, str], bytes]:
    """A raw answer (read until close) as (status, headers, body) without framing checks."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body
