"""The WebSocket engine (RFC 6455): handshake, frames, and one connection's I/O.

Everything WebSocket-specific lives here, so the engine can be replaced without
touching the rest of wsexec. The frame codec is pure (no I/O); `WebSocket`
drives it over a trio stream. The one extension is permessage-deflate
(--compress, wsexec/deflate.py), given to the reader and the WebSocket as an
object with compress() and inflate(); without it RSV bits must be 0.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import struct
from collections import deque
from typing import TYPE_CHECKING, Deque, Iterable, List, Optional, Sequence, Tuple

import trio

from .http.syntax import header_tokens

if TYPE_CHECKING:
    from .deflate import Deflate

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
# On a data event: more of this message follows. Only when messages stream in
# pieces (an unlimited inbound message, --maxframesize 0).
PART = 0x100
RSV1 = 0x40  # "Per-Message Compressed" (RFC 7692 section 6)
UNLIMITED = 1 << 63

# Close codes (RFC 6455 section 7.4.1).
NORMAL = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
NO_STATUS = 1005  # never sent: "no status code was actually present"
ABNORMAL = 1006  # never sent: the connection dropped without a close frame
INVALID_DATA = 1007
POLICY = 1008
TOO_BIG = 1009
INTERNAL_ERROR = 1011

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
RECEIVE_SIZE = 1 << 18

Message = Tuple[int, bytes]  # (TEXT or BINARY, payload)


class ProtocolError(Exception):
    """The peer broke RFC 6455; `code` is the close code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# --- handshake (pure) -------------------------------------------------------


def is_upgrade(get_header) -> bool:  # type: ignore[no-untyped-def]
    """Whether the request asks for a WebSocket at all (else it is plain HTTP)."""
    return "websocket" in header_tokens(get_header("upgrade"))


def handshake_problem(method: str, http_version: str, get_header) -> Optional[Tuple[int, str]]:  # type: ignore[no-untyped-def]
    """RFC 6455 section 4.2.1: what is wrong with an upgrade request, as (status, text)."""
    if method != "GET":
        return 405, "a WebSocket handshake must use GET"
    if http_version in ("1.0", "0.9"):
        return 400, "a WebSocket handshake needs HTTP/1.1"
    if "upgrade" not in header_tokens(get_header("connection")):
        return 400, "missing 'Connection: Upgrade'"
    key = get_header("sec-websocket-key") or ""
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except ValueError:
        return 400, "Sec-WebSocket-Key must be 16 bytes in base64"
    if (get_header("sec-websocket-version") or "").strip() != "13":
        return 426, "only Sec-WebSocket-Version 13 is supported"
    return None


def select_subprotocol(offered: Optional[str], supported: Sequence[str]) -> Optional[str]:
    """RFC 6455 section 4.2.2: the server picks one of the client's
    Sec-WebSocket-Protocol values, here the first (in the client's order of
    preference) that --subprotocol names; None to pick none."""
    for name in (t.strip() for t in (offered or "").split(",")):
        if name and name in supported:
            return name
    return None


def accept_key(key: str) -> str:
    """RFC 6455 section 4.2.2: base64(SHA-1(key + GUID))."""
    return base64.b64encode(hashlib.sha1(key.strip().encode("ascii") + GUID).digest()).decode("ascii")


def handshake_response(key: str, headers: Iterable[Tuple[str, str]]) -> bytes:
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_key(key)}",
    ]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --- frames (pure) ----------------------------------------------------------


UNMASK_CHUNK = 4096


def unmask(data: bytes, key: bytes) -> bytes:
    """XOR the payload with the 4-byte masking key (RFC 6455 section 5.3).

    Done as big-integer XORs: C speed without a C extension. Large payloads
    go in 4 KiB pieces, which measured several times faster than one
    conversion of the whole payload."""
    n = len(data)
    if n <= UNMASK_CHUNK:
        if n == 0:
            return b""
        mask = (key * (n // 4 + 1))[:n]
        return (int.from_bytes(data, "little") ^ int.from_bytes(mask, "little")).to_bytes(n, "little")
    size = UNMASK_CHUNK
    whole = int.from_bytes(key * (size // 4), "little")
    view = memoryview(data)
    parts = [
        (int.from_bytes(view[i : i + size], "little") ^ whole).to_bytes(size, "little")
        for i in range(0, n - size + 1, size)
    ]
    rest = n % size
    if rest:
        parts.append(unmask(bytes(view[n - rest :]), key))
    return b"".join(parts)


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked final frame, as a server sends it (RFC 6455 section 5.1)."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


def encode_close(code: int, reason: str = "") -> bytes:
    if code in (NO_STATUS, ABNORMAL):
        return encode_frame(CLOSE, b"")
    return encode_frame(CLOSE, struct.pack("!H", code) + truncate_utf8(reason, 123))


def truncate_utf8(text: str, limit: int) -> bytes:
    """Encode text, cut to at most limit bytes without splitting a character."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", "ignore").encode("utf-8")


def is_utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def valid_close_code(code: int) -> bool:
    """RFC 6455 section 7.4: codes an endpoint may receive in a close frame."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def parse_close(payload: bytes) -> Tuple[int, str]:
    if not payload:
        return NO_STATUS, ""
    if len(payload) == 1:
        raise ProtocolError(PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = struct.unpack("!H", payload[:2])[0]
    if not valid_close_code(code):
        raise ProtocolError(PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(INVALID_DATA, "close reason is not UTF-8") from None
    return code, reason


class FrameReader:
    """Turns bytes from a client into events: (opcode, payload) tuples.

    Data messages come out whole, as (TEXT or BINARY, bytes); control frames
    as (PING, bytes), (PONG, bytes), (CLOSE, (code, reason)). A message larger
    than max_message is refused as soon as its frame header says so; a
    compressed one (RSV1, with `deflate`) is inflated at most max_message + 1
    bytes, then refused.

    max_message 0 is no limit: then a message is not held whole but comes out
    in pieces as its bytes arrive (TEXT or BINARY, with PART on every piece
    but the last), so memory stays bounded by one receive.
    """

    def __init__(self, max_message: int, deflate: Optional["Deflate"] = None) -> None:
        self.max_message = max_message or UNLIMITED
        self.stream = not max_message
        self.deflate = deflate
        self._buffer = bytearray()
        self._opcode = 0  # opcode of the fragmented message in progress, 0 if none
        self._parts: List[bytes] = []
        self._size = 0  # bytes of the message so far, on the wire
        self._compressed = False  # the message in progress has RSV1
        self._inflated = 0  # bytes of it inflated so far
        self._decoder = None  # incremental UTF-8 check for fragmented text
        self._left = 0  # streaming: bytes of the current data frame still to come
        self._fin = 0  # streaming: the current data frame ends its message
        self._key = b""  # streaming: its masking key, turned to where the next byte falls
        self._events: List[Tuple[int, object]] = []
        self.error: Optional[ProtocolError] = None

    def feed(self, data: bytes) -> List[Tuple[int, object]]:
        """Events from the bytes so far. A protocol violation is stored in
        `error` after the events that preceded it, so none of those is lost."""
        # The usual case first: exactly one small, whole, masked data frame.
        if not self._buffer and not self._opcode and len(data) >= 6:
            b0, b1 = data[0], data[1]
            length = b1 - 0x80
            if (b0 == 0x81 or b0 == 0x82) and 0 <= length < 126 and len(data) == 6 + length and length <= self.max_message:
                payload = unmask(data[6:], data[2:6])
                if b0 == 0x82 or is_utf8(payload):
                    return [(b0 & 0x0F, payload)]
        try:
            return self._feed(data)
        except ProtocolError as e:
            # Kept without its traceback: its frames hold the payloads (an
            # inflated megabyte), and the cycle through self would keep them
            # until the garbage collector happens to run.
            e.__context__ = e.__traceback__ = None
            self.error = e
            events, self._events = self._events, []
            return events

    def _feed(self, data: bytes) -> List[Tuple[int, object]]:
        buf = self._buffer
        buf += data
        events: List[Tuple[int, object]] = []
        self._events = events
        pos, end = 0, len(buf)
        try:
            while True:
                if self._left:  # streaming: the rest of a data frame, as far as it came
                    n = min(self._left, end - pos)
                    if not n:
                        break
                    payload = unmask(bytes(buf[pos : pos + n]), self._key)
                    pos += n
                    self._left -= n
                    self._key = self._key[n % 4 :] + self._key[: n % 4]
                    self._on_data(self._fin if not self._left else 0, 0, payload, events)
                    continue
                if end - pos < 2:
                    break
                b0, b1 = buf[pos], buf[pos + 1]
                opcode, length = b0 & 0x0F, b1 & 0x7F
                head = 6
                if length == 126:
                    if end - pos < 4:
                        break
                    length = (buf[pos + 2] << 8) | buf[pos + 3]
                    head = 8
                elif length == 127:
                    if end - pos < 10:
                        break
                    length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                    head = 14
                self._check_header(b0, b1, opcode, length)
                if self.stream and opcode < 0x8 and end - pos >= head:
                    # A data frame goes out as its bytes arrive (above).
                    self._key = bytes(buf[pos + head - 4 : pos + head])
                    pos += head
                    self._left, self._fin = length, b0 & 0x80
                    self._on_data(self._fin if not length else 0, b0 & 0x7F, b"", events)
                    continue
                if end - pos < head + length:
                    break
                key = bytes(buf[pos + head - 4 : pos + head])
                payload = unmask(bytes(buf[pos + head : pos + head + length]), key)
                pos += head + length
                self._on_frame(b0, opcode, payload, events)
                if events and events[-1][0] == CLOSE:
                    # Nothing after a close frame counts (RFC 6455 section 5.5.1).
                    pos = end
                    break
        finally:
            del buf[:pos]
        return events

    def _check_header(self, b0: int, b1: int, opcode: int, length: int) -> None:
        if b0 & 0x70 and not (b0 & 0x70 == RSV1 and self.deflate is not None and opcode in (TEXT, BINARY)):
            # "MUST be 0 unless an extension is negotiated" (section 5.2);
            # permessage-deflate sets RSV1 on a message's first frame only
            # (RFC 7692 section 6.1), never on a control frame.
            raise ProtocolError(PROTOCOL_ERROR, "reserved bits set")
        if not b1 & 0x80:
            # "a client MUST mask all frames that it sends" (section 5.1)
            raise ProtocolError(PROTOCOL_ERROR, "client frame is not masked")
        if opcode >= 0x8:
            if opcode not in (CLOSE, PING, PONG):
                raise ProtocolError(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
            # "All control frames MUST have a payload length of 125 bytes or
            # less and MUST NOT be fragmented." (section 5.5)
            if not b0 & 0x80 or length > 125:
                raise ProtocolError(PROTOCOL_ERROR, "bad control frame")
            return
        if opcode == CONTINUATION:
            if not self._opcode:
                raise ProtocolError(PROTOCOL_ERROR, "continuation frame without a message")
        elif opcode in (TEXT, BINARY):
            if self._opcode:
                raise ProtocolError(PROTOCOL_ERROR, "new message inside a fragmented message")
        else:
            raise ProtocolError(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if length >> 63:
            raise ProtocolError(PROTOCOL_ERROR, "frame length has its top bit set")
        limit = self.max_message
        if b0 & RSV1 or (self._compressed and opcode == CONTINUATION):
            limit += limit // 1000 + 1024  # deflate's worst case for data that does not compress
        if self._size + length > limit:
            raise ProtocolError(TOO_BIG, f"message exceeds {self.max_message} bytes")

    def _on_frame(self, b0: int, opcode: int, payload: bytes, events: list) -> None:
        if opcode >= 0x8:
            events.append((opcode, parse_close(payload) if opcode == CLOSE else payload))
        elif opcode and b0 & 0x80 and not b0 & RSV1:
            if opcode == TEXT and not is_utf8(payload):
                raise ProtocolError(INVALID_DATA, "text message is not UTF-8")
            events.append((opcode, payload))
        else:
            self._size += len(payload)
            self._on_data(b0 & 0x80, b0 & 0x7F, payload, events)

    def _on_data(self, fin: int, first: int, payload: bytes, events: list) -> None:
        """A data frame's payload, or (streaming) the part of it that came;
        `first` is the frame's opcode and RSV bits if it starts one (else 0),
        `fin` set on the piece that ends the message."""
        if first & 0x0F:
            self._opcode = first & 0x0F
            self._compressed = bool(first & RSV1)
            if self._opcode == TEXT and not fin:
                self._decoder = codecs.getincrementaldecoder("utf-8")()
        if self._compressed:
            payload = self._inflate(payload, bool(fin))
        if self._decoder is not None:
            try:
                self._decoder.decode(payload, bool(fin))
            except UnicodeDecodeError:
                raise ProtocolError(INVALID_DATA, "text message is not UTF-8") from None
        elif self._opcode == TEXT and not is_utf8(payload):
            raise ProtocolError(INVALID_DATA, "text message is not UTF-8")
        if self.stream:
            if payload or fin:
                events.append((self._opcode if fin else self._opcode | PART, payload))
        elif fin and not self._parts:
            events.append((self._opcode, payload))
        else:
            self._parts.append(payload)
        if fin:
            if self._parts:
                events.append((self._opcode, b"".join(self._parts)))
            self._opcode, self._parts, self._size, self._decoder = 0, [], 0, None
            self._compressed, self._inflated = False, 0

    def _inflate(self, payload: bytes, last: bool) -> bytes:
        assert self.deflate is not None
        budget = self.max_message - self._inflated
        try:
            data = self.deflate.inflate(payload, budget, last)
        except ValueError:
            # RFC 7692 section 6.1 leaves the code open; the message's data is
            # not what its type says (RFC 6455 section 7.4.1: 1007).
            raise ProtocolError(INVALID_DATA, "invalid compressed data") from None
        if len(data) > budget:
            raise ProtocolError(TOO_BIG, f"message exceeds {self.max_message} bytes")
        self._inflated += len(data)
        return data


# --- one connection's I/O ---------------------------------------------------


class WebSocket:
    """A server-side WebSocket over a trio stream, after the 101 was sent."""

    def __init__(self, stream: trio.abc.Stream, max_message: int, trailing: bytes = b"",
                 deflate: Optional["Deflate"] = None) -> None:
        self.stream = stream
        self.reader = FrameReader(max_message, deflate)
        self.deflate = deflate
        self.bytes_in = 0
        self.bytes_out = 0
        self.close_sent: Optional[Tuple[int, str]] = None
        self.close_received: Optional[Tuple[int, str]] = None
        self.gone = False  # the transport is unusable (EOF, reset, or a broken send)
        self._pending: Deque[Message] = deque()
        self._trailing = trailing
        self._sending = False
        self._send_waiters = trio.lowlevel.ParkingLot()

    @property
    def open(self) -> bool:
        return not (self.gone or self.close_sent or self.close_received)

    async def receive(self) -> Optional[List[Message]]:
        """The next batch of client messages; None once the client is done.

        Pings are answered here, and a close frame is answered by echoing its
        code (RFC 6455 section 5.5.1). A protocol violation is answered with
        a close frame carrying the matching code.
        """
        while not self._pending:
            if not self.open:
                return None
            data = self._trailing or await self._receive_bytes()
            self._trailing = b""
            if not data:
                return None
            events = self.reader.feed(data)
            if len(events) == 1 and events[0][0] <= BINARY and self.reader.error is None:
                return events  # type: ignore[return-value]  # the usual case: one data message
            for opcode, payload in events:
                if opcode <= BINARY or opcode & PART:
                    self._pending.append((opcode, payload))  # type: ignore[arg-type]
                elif opcode == PING and not self.close_sent:
                    await self._send(encode_frame(PONG, payload))  # type: ignore[arg-type]
                elif opcode == CLOSE:
                    self.close_received = payload  # type: ignore[assignment]
                    if not self.close_sent:
                        await self.send_close(*self.close_received)
            if self.reader.error:
                await self.send_close(self.reader.error.code, self.reader.error.reason)
        batch = list(self._pending)
        self._pending.clear()
        return batch

    async def _receive_bytes(self) -> bytes:
        try:
            data = await self.stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.gone = True
        self.bytes_in += len(data)
        return data

    async def send_message(self, opcode: int, payload: bytes) -> bool:
        """One data message; False if the connection is no longer open."""
        if not self.open:
            return False
        if self.deflate is not None:
            return await self._send(self.encode(opcode, payload))
        return await self._send(encode_frame(opcode, payload))

    async def send_messages(self, messages: Sequence[Message]) -> bool:
        """Send data messages in one write; False if the connection is no longer open."""
        if not self.open:
            return False
        encode = encode_frame if self.deflate is None else self.encode
        return await self._send(b"".join([encode(op, data) for op, data in messages]))

    def encode(self, opcode: int, payload: bytes) -> bytes:
        """A data message as a frame, compressed (RSV1 set) unless deflate declines."""
        assert self.deflate is not None
        compressed = self.deflate.compress(payload)
        if compressed is None:
            return encode_frame(opcode, payload)
        return encode_frame(opcode | RSV1, compressed)

    async def send_frames(self, data: bytes) -> bool:
        """Data messages already encoded with encode_frame, in one write."""
        if not self.open:
            return False
        return await self._send(data)

    async def ping(self) -> None:
        if self.open:
            await self._send(encode_frame(PING, b""))

    async def send_close(self, code: int, reason: str = "") -> None:
        if self.close_sent or self.gone:
            return
        self.close_sent = (code, reason)
        await self._send(encode_close(code, reason))

    def close_now(self, code: int, reason: str) -> None:
        """Best effort, without waiting: a close frame if the socket takes it
        at once (used when the session is being cancelled)."""
        send_nowait = getattr(self.stream, "send_nowait", None)
        if self.open and not self._sending and send_nowait is not None:
            self.close_sent = (code, reason)
            send_nowait(encode_close(code, reason))

    async def close(self, code: int, reason: str, grace: float) -> None:
        """The closing handshake: send our close frame, wait up to `grace` for the reply."""
        await self.send_close(code, reason)
        if self.gone or self.close_received:
            return
        with trio.move_on_after(grace):
            while not (self.gone or self.close_received):
                data = await self._receive_bytes()
                if data:
                    for opcode, payload in self.reader.feed(data):
                        if opcode == CLOSE:
                            self.close_received = payload  # type: ignore[assignment]
                    if self.reader.error:
                        return

    async def _send(self, data: bytes) -> bool:
        if self.gone:
            return False
        # One frame at a time on the wire: the output pump and the reader
        # (pongs, close replies) both send. Uncontended, this costs no await.
        while self._sending:
            await self._send_waiters.park()
        self._sending = True
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.gone = True
            return False
        except BaseException:
            # A send cut off half way leaves a broken frame on the wire.
            self.gone = True
            raise
        finally:
            self._sending = False
            if self._send_waiters:
                self._send_waiters.unpark()
        self.bytes_out += len(data)
        return True
