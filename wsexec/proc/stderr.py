"""Handler stderr to the log, never to the client.

Every handler's stderr pipe is read by one task through one epoll set, so a
connection costs neither a task nor a trio stream for it. Lines are logged at
ERROR with their connection's context; a line longer than PIECE bytes is
logged in pieces. When a handler is done, what is left in its pipe is logged
before the connection's DISCONNECT line.

A line `wsexec-close CODE REASON` is also the handler's own close code
(wsexec/proc/closing.py), kept on its pipe for when it ends.

With --passstderr a pipe is not read here: its far end reads it (read()) and
takes the lines from `out` for the client (they are logged all the same).
The far end waits on its stdout socket only; its stderr pipe stays in this
epoll set, armed once per wait (EPOLLONESHOT), and data there cancels the
wait: no task, nursery or descriptor per connection for it.
"""

from __future__ import annotations

import logging
import os
import select
from typing import Dict, List, Optional, Union

import trio

from ..log import STDERR
from .closing import Close, stderr_close

PIECE = 4096  # bytes of one logged line at most
READ = 16384  # bytes read from one pipe at a time
TURN = 65536  # bytes logged per turn at most, then other tasks run (level-triggered: the rest waits)
DRAIN_READS = 64  # reads when closing: a pipe holds 64 KiB unless enlarged


class StderrPipe:
    __slots__ = ("fd", "log", "partial", "eof", "registered", "close_asked", "out", "waiter")

    def __init__(self, fd: int, log: Union[logging.Logger, logging.LoggerAdapter], watched: bool = True) -> None:
        self.fd = fd
        self.log = log
        self.partial = b""
        self.eof = False
        self.registered = True
        self.close_asked: Optional[Close] = None  # the last `wsexec-close` line's, if valid
        self.out: Optional[List[bytes]] = None if watched else []  # --passstderr: lines for the client
        self.waiter: Optional[trio.CancelScope] = None  # --passstderr: its far end's wait, while armed

    def read(self) -> int:
        """One read: bytes read, 0 when none were waiting or at the end."""
        try:
            data = os.read(self.fd, READ)
        except BlockingIOError:
            return 0
        except OSError:
            data = b""
        if not data:
            self.eof = True
            return 0
        lines = (self.partial + data).split(b"\n")
        rest = lines.pop()
        for line in lines:
            self._emit(line[:-1] if line.endswith(b"\r") else line)
        while len(rest) >= PIECE:
            self._emit(rest[:PIECE])
            rest = rest[PIECE:]
        self.partial = rest
        return len(data)

    def _emit(self, line: bytes) -> None:
        pieces = [line[start:start + PIECE] for start in range(0, max(len(line), 1), PIECE)]
        for piece in pieces:
            self.log.error(STDERR, piece.decode("utf-8", "backslashreplace"))
        asked = stderr_close(line)
        if asked is not None:
            close, problem = asked
            if close is None:
                self.log.error("handler asked for a close it may not choose (%s): refused", problem)
            self.close_asked = close or self.close_asked
        elif self.out is not None:
            self.out.extend(pieces)

    def finish(self) -> None:
        if self.partial:
            self._emit(self.partial)
            self.partial = b""


class StderrReader:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._pipes: Dict[int, StderrPipe] = {}

    def open(self, fd: int, log: Union[logging.Logger, logging.LoggerAdapter], watched: bool = True) -> StderrPipe:
        """Start reading the read end of a handler's stderr pipe (now ours);
        not watched: its far end reads it (--passstderr), closed here all the same."""
        try:
            os.set_blocking(fd, False)
            # not watched: in the set, disarmed until its far end waits (arm())
            self._epoll.register(fd, select.EPOLLIN if watched else select.EPOLLONESHOT)
        except OSError:
            os.close(fd)
            raise
        pipe = self._pipes[fd] = StderrPipe(fd, log, watched)
        return pipe

    def close(self, pipe: StderrPipe) -> None:
        """Log what is left (without waiting for more), then close the pipe."""
        if self._pipes.get(pipe.fd) is not pipe:
            return  # closed already: its fd number may belong to another pipe now
        for _ in range(DRAIN_READS):
            if pipe.eof or not pipe.read():
                break
        pipe.finish()
        del self._pipes[pipe.fd]
        if pipe.registered:
            self._epoll.unregister(pipe.fd)
        os.close(pipe.fd)

    def arm(self, pipe: StderrPipe, waiter: trio.CancelScope) -> None:
        """--passstderr: cancel waiter once the pipe has something to read (or ends)."""
        pipe.waiter = waiter
        self._epoll.modify(pipe.fd, select.EPOLLIN | select.EPOLLONESHOT)

    async def run(self) -> None:
        epoll, pipes = self._epoll, self._pipes
        while True:
            await trio.lowlevel.wait_readable(epoll)
            budget = TURN
            for fd, _ in epoll.poll(0):
                pipe = pipes.get(fd)
                if pipe is None:
                    continue
                if pipe.out is not None:  # its far end reads it: wake it (the event disarmed the pipe)
                    if pipe.waiter is not None:
                        pipe.waiter.cancel()
                        pipe.waiter = None
                    continue
                if budget <= 0:
                    break
                budget -= pipe.read()
                if pipe.eof and pipe.registered:  # level-triggered: it would fire forever
                    epoll.unregister(fd)
                    pipe.registered = False
                    pipe.finish()

    def close_all(self) -> None:
        for pipe in list(self._pipes.values()):
            self.close(pipe)
        self._epoll.close()
