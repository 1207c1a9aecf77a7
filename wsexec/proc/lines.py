"""Cutting a handler's stdout into messages (text mode)."""

from __future__ import annotations

from typing import List, Optional


class LineTooLong(Exception):
    pass


class LineSplitter:
    """Bytes in, complete lines out, each without its "\\n" or "\\r\\n".

    A line longer than max_line raises LineTooLong rather than growing the
    buffer without bound.
    """

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._partial = b""

    def feed(self, data: bytes) -> List[bytes]:
        if data and not self._partial and data.find(b"\n") == len(data) - 1 and len(data) <= self.max_line:
            # The usual case: exactly one whole line.
            return [data[:-2] if data.endswith(b"\r\n") else data[:-1]]
        if self._partial:
            data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > self.max_line:
            raise LineTooLong(f"output line exceeds {self.max_line} bytes")
        for i, line in enumerate(lines):
            if line.endswith(b"\r"):
                line = lines[i] = line[:-1]
            if len(line) > self.max_line:
                raise LineTooLong(f"output line exceeds {self.max_line} bytes")
        return lines

    def finish(self) -> Optional[bytes]:
        """The final line when stdout ends without a newline (websocketd drops it)."""
        rest, self._partial = self._partial, b""
        return rest or None
