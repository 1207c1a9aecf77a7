"""--framed: every message keeps its boundary and its type, both ways.

One record per message, the same on the handler's stdin and stdout:

    TYPE SP LENGTH LF PAYLOAD LF

TYPE is `t` (a text message) or `b` (binary), or `c` (close): on stdout
the handler closes the connection (the payload is `CODE REASON`,
wsexec/proc/closing.py); on stdin, last before end-of-file, wsexec tells
how the connection ended without it (the client's close, 1006 if it left
without one, 1001 when wsexec stops). LENGTH is
the payload's size in bytes, 1 to 10 decimal digits. The LF after the
payload is not part of it: it keeps a framed stream readable, lets a shell
read a one-line text message with `read`, and catches a wrong LENGTH at
once. `t 5\\nhello\\n` is the text message "hello", `b 0\\n\\n` an empty binary
message.

Pure: a reader fed bytes in pieces of any size gives whole records back.
"""

from __future__ import annotations

import re
from typing import List, Optional, Sequence, Tuple

# The record types are the RFC 6455 opcodes of what they carry.
TEXT, BINARY, CLOSE = 0x1, 0x2, 0x8
Record = Tuple[int, bytes]

TYPES = {b"t": TEXT, b"b": BINARY, b"c": CLOSE}
LETTERS = {TEXT: b"t", BINARY: b"b", CLOSE: b"c"}
HEADER = re.compile(rb"([tbc]) ([0-9]{1,10})")
HEADER_MAX = 14  # "t 1234567890\n"


class FrameError(Exception):
    """The handler's output is not a framed stream."""


class FrameTooBig(FrameError):
    """A record longer than the message limit."""


def frame(kind: int, payload: bytes) -> bytes:
    """One message as the handler reads it."""
    return b"%s %d\n%s\n" % (LETTERS[kind], len(payload), payload)


def close_record(code: int, reason: str) -> bytes:
    """The `c` record on a handler's stdin: b'c 4\n1000\n', b'c 9\n1001 bye\n'."""
    payload = b"%d %s" % (code, reason.encode("utf-8", "replace")) if reason else b"%d" % code
    return frame(CLOSE, payload)


def frames(messages: Sequence[Tuple[int, bytes]]) -> bytes:
    if len(messages) == 1:
        return frame(*messages[0])
    return b"".join(frame(kind, payload) for kind, payload in messages)


def parse_header(line: bytes, limit: int) -> Tuple[int, int]:
    """b't 5' -> (TEXT, 5); FrameError if it is not a header, FrameTooBig if
    LENGTH is over limit."""
    match = HEADER.fullmatch(line)
    if match is None:
        raise FrameError(f"not a record header: {line[:20]!r}")
    length = int(match.group(2))
    if length > limit:
        raise FrameTooBig(f"a framed message of {length} bytes exceeds {limit} bytes")
    return TYPES[match.group(1)], length


class FrameReader:
    """Bytes in, whole records out. Holds at most one record and one read:
    a record over `limit` bytes fails at its header, before its payload."""

    __slots__ = ("limit", "buffer", "kind", "length", "failed")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self.kind = 0  # 0: reading a header; else the record whose payload is awaited
        self.length = 0
        self.failed: Optional[FrameError] = None  # raised by the next call: records before it came out first

    def feed(self, data: bytes) -> List[Record]:
        """The records completed by data; FrameError once the stream is broken
        (the records before the fault are returned first)."""
        if self.failed is not None:
            raise self.failed
        records: List[Record] = []
        try:
            self._feed(data, records)
        except FrameError as e:
            if not records:
                raise
            self.failed = e
        return records

    def _feed(self, data: bytes, records: List[Record]) -> None:
        buffer = self.buffer
        buffer += data
        pos = 0
        while True:
            if not self.kind:
                end = buffer.find(b"\n", pos, pos + HEADER_MAX)
                if end < 0:
                    if len(buffer) - pos >= HEADER_MAX:
                        raise FrameError(f"not a record header: {bytes(buffer[pos:pos + 20])!r}")
                    break
                self.kind, self.length = parse_header(bytes(buffer[pos:end]), self.limit)
                pos = end + 1
            stop = pos + self.length
            if len(buffer) <= stop:
                break
            if buffer[stop] != 0x0A:
                raise FrameError(f"a record of {self.length} bytes is not followed by a newline")
            with memoryview(buffer) as view:
                payload = bytes(view[pos:stop])  # one copy, however large
            if self.kind == TEXT and not payload.isascii():
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError:
                    raise FrameError("a text record that is not UTF-8 (send it as b)") from None
            records.append((self.kind, payload))
            self.kind = 0
            pos = stop + 1
        if pos:
            del buffer[:pos]

    def finish(self) -> None:
        """The output ended: FrameError if it ended inside a record."""
        if self.failed is not None:
            raise self.failed
        if self.kind or self.buffer:
            raise FrameError("the output ended inside a record")
