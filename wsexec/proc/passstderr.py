"""--passstderr, as websocketd (HEAD) defines it: every stdout line and every
stderr line goes to the client as a text message holding one JSON object,

    {"stream":"stdout","data":"..."}    {"stream":"stderr","data":"..."}

keys in that order, no spaces, `data` escaped as websocketd's encoder (Go's
encoding/json) escapes it, so a client written for websocketd parses the same
bytes: `"` and `\\` escaped, `\\n \\r \\t \\b \\f` short, other control
characters as `\\u00XX`, `<`, `>` and `&` as `\\u003c \\u003e \\u0026`, U+2028
and U+2029 as `\\u2028 \\u2029`, and each byte that is not part of valid UTF-8
as `\\ufffd`; everything else as it is.
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

import trio

from ..net.streams import Socket
from .lines import LineSplitter
from .stderr import StderrPipe, StderrReader

TEXT = 0x1  # the RFC 6455 opcode
Message = Tuple[int, bytes]

ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f",
           "<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
NEEDS_ESCAPE = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029\udc80-\udcff]')
PLAIN = re.compile(rb'[^\x00-\x1f"\\<>&\x80-\xff]*')  # ASCII that needs no escape: the fast path


def _escape(match: "re.Match[str]") -> str:
    char = match.group()
    if "\udc80" <= char <= "\udcff":  # surrogateescape's stand-in for one invalid byte
        return "\\ufffd"
    return ESCAPES.get(char) or "\\u%04x" % ord(char)


def json_string(data: bytes) -> bytes:
    """data as a JSON string, escaped as websocketd's Go encoder does."""
    if PLAIN.fullmatch(data):
        return b'"' + data + b'"'
    # surrogateescape turns each byte of invalid UTF-8 into one lone
    # surrogate, as Go turns each into one U+FFFD; valid UTF-8 never
    # decodes to a surrogate.
    text = data.decode("utf-8", "surrogateescape")
    return ('"' + NEEDS_ESCAPE.sub(_escape, text) + '"').encode("utf-8")


def stream_message(stream: str, line: bytes) -> bytes:
    """One line of "stdout" or "stderr" as websocketd's JSON object."""
    return b'{"stream":"%s","data":%s}' % (stream.encode(), json_string(line))


class StreamsReader:
    """One handler's stdout lines and stderr lines, as JSON messages, in the
    order they are read. stderr is read only when the client takes output
    (it is output now), and each stderr line is logged as without the flag."""

    __slots__ = ("io", "pipe", "reader", "splitter", "size", "stdout_done")

    def __init__(self, io: Socket, pipe: StderrPipe, reader: StderrReader, max_line: int, size: int) -> None:
        self.io = io
        self.pipe = pipe
        self.reader = reader  # wakes a wait when the pipe has something (wsexec/proc/stderr.py)
        self.splitter = LineSplitter(max_line)
        self.size = size
        self.stdout_done = False

    async def receive(self) -> Optional[List[Message]]:
        """The next messages; None once both streams ended; LineTooLong for an
        over-long stdout line."""
        pipe = self.pipe
        assert pipe.out is not None
        while True:
            if not pipe.eof:
                pipe.read()  # logs each line, and keeps it in pipe.out
                if pipe.eof:
                    pipe.finish()
            messages = [(TEXT, stream_message("stderr", line)) for line in pipe.out]
            pipe.out.clear()
            if not self.stdout_done:
                try:
                    data: Optional[bytes] = self.io.sock.recv(self.size)
                except BlockingIOError:
                    data = None
                except OSError:
                    data = b""
                if data == b"":
                    self.stdout_done = True
                    last = self.splitter.finish()
                    lines = [] if last is None else [last]
                else:
                    lines = self.splitter.feed(data) if data else []
                messages += [(TEXT, stream_message("stdout", line)) for line in lines]
            if messages:
                return messages
            if self.stdout_done and pipe.eof:
                return None
            with trio.CancelScope() as waiting:
                if not pipe.eof:
                    self.reader.arm(pipe, waiting)
                if self.stdout_done:
                    await trio.sleep_forever()
                else:
                    await trio.lowlevel.wait_readable(self.io.sock)
            pipe.waiter = None
