"""Every client the tests use, each against a real TCP connection to
127.0.0.1 and each wait with a time ceiling:

- WebSocket sessions through trio_websocket (collect);
- raw bytes and hand-built frames, to break the protocol on purpose
  (raw_http, upgrade_request, raw_upgrade, response_head, client_frame,
  read_server_frames);
- plain HTTP/1.1 through h11, so keep-alive, chunked bodies and HEAD are
  parsed by an independent implementation (Client, fetch, Reply, parse_raw).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import h11
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

# --- WebSocket through trio_websocket ------------------------------------------------


async def collect(url: str, send: List[str] = (), timeout: float = 5) -> Tuple[List[object], Optional[int], str]:
    """Connect, send messages, read until the server closes: (messages, close code, reason)."""
    messages: List[object] = []
    with trio.fail_after(timeout):
        async with open_websocket_url(url) as ws:
            for m in send:
                await ws.send_message(m)
            try:
                while True:
                    messages.append(await ws.get_message())
            except ConnectionClosed as e:
                return messages, e.reason.code, e.reason.reason or ""
    raise AssertionError("unreachable")


# --- raw bytes and raw WebSocket frames ------------------------------------------------


async def raw_http(port: int, request: bytes, timeout: float = 5, host: str = "127.0.0.1",
                   half_close: bool = False) -> bytes:
    """Send raw bytes (then EOF if half_close), read everything until the server
    closes. A reset counts as the end, also while sending: the server may answer
    and close before it has read everything."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            try:
                await stream.send_all(request)
                if half_close:
                    await stream.send_eof()
            except trio.BrokenResourceError:
                pass
            chunks = []
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not data:
                    break
                chunks.append(data)
            return b"".join(chunks)


def upgrade_request(path: str = "/", extra: str = "", host: str = "127.0.0.1") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode("latin-1")


async def read_head(stream) -> Tuple[bytes, bytes]:  # type: ignore[no-untyped-def]
    """An answer's head up to the blank line, and the bytes after it.
    AssertionError if the server closes before the blank line."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            raise AssertionError(f"closed before the end of the answer's head: {buf!r}")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


async def upgrade_on(stream, path: str = "/", extra: str = "", host: str = "127.0.0.1") -> bytes:  # type: ignore[no-untyped-def]
    """The handshake by hand on an open stream (TCP, TLS, Unix); the bytes after
    the 101 head. AssertionError if the answer is not 101."""
    await stream.send_all(upgrade_request(path, extra, host))
    head, rest = await read_head(stream)
    if not head.startswith(b"HTTP/1.1 101 "):
        raise AssertionError(f"not upgraded: {head!r}")
    return rest


async def raw_upgrade(port: int, path: str = "/", extra: str = "", host: str = "127.0.0.1"):
    """TCP connect + handshake by hand; (stream, bytes after the 101 head). Raises
    AssertionError if the answer is not 101."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        return stream, await upgrade_on(stream, path, extra, host)
    except BaseException:
        await stream.aclose()
        raise


async def response_head(port: int, request: bytes, timeout: float = 5) -> bytes:
    """Send a request, return the response head (up to the blank line), even if
    the connection then stays open as a WebSocket."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            return (await read_head(stream))[0]


def client_frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0, mask: bool = True,
                 length: Optional[int] = None) -> bytes:
    """One client frame, built by hand so it can break RFC 6455 on purpose.
    `length` overrides the announced payload length."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def read_server_frames(stream, rest: bytes = b"", limit: int = 1 << 26):
    """Every server frame until a close frame or EOF: (frames, close code or None).
    frames is a list of (opcode, payload); the close code is 1005 for an empty close."""
    buf = bytearray(rest)
    frames = []
    total = 0
    while True:
        while len(buf) >= 2:
            length, head = buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    break
                length, head = struct.unpack("!H", buf[2:4])[0], 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length, head = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < head + length:
                break
            opcode, payload = buf[0] & 0x0F, bytes(buf[head:head + length])
            del buf[:head + length]
            if opcode == 0x8:
                return frames, (struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005)
            frames.append((opcode, payload))
        try:
            data = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            return frames, None
        total += len(data)
        if total > limit:
            raise AssertionError("more data than expected")
        buf += data


# --- plain HTTP/1.1 through h11 ----------------------------------------------------------


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
