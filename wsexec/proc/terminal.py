"""--pty: a handler's stdin and stdout as a pseudo-terminal in raw mode.

stdio line-buffers a terminal by itself, so python, grep, tr, awk, sed and
perl send each line as they print it, unmodified. Raw mode: no echo, no
CR/LF translation, no line editing (so no 4,096-byte line limit), no signal
characters (so --binary passes every byte through).

The handler starts as a session leader with the terminal as its
controlling terminal (set up by the spawn, wsexec/proc/spawn.py). Raw mode
has no end-of-file character, so stdin cannot be closed alone: when the
connection ends wsexec closes its side, which hangs the terminal up. The
handler's group gets SIGHUP, reads get end-of-file and writes fail (EIO);
then the usual ladder. wsexec's side reads EIO once every copy of the
terminal is closed: the end of output.
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios
from typing import Callable, Optional, Tuple, Union

import trio

YIELD_EVERY = 16  # calls that did not wait, then other tasks get a turn (as net/streams.py)
# A terminal hands over at most a few KiB per read (the line discipline's
# buffer), so a larger request would only allocate more for nothing.
MAX_READ = 65536


def make_raw(fd: int) -> None:
    """cfmakeraw(3): bytes pass as they are, both ways."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP | termios.INLCR
               | termios.IGNCR | termios.ICRNL | termios.IXON | termios.IXOFF)
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    cc[termios.VMIN], cc[termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])


class Terminal:
    """wsexec's side (the master) of one handler's terminal, with the
    stream methods a Child's io needs. Before the spawn it also holds the
    handler's side (slave), by path and descriptor."""

    __slots__ = ("fd", "path", "slave", "_closed", "_budget")

    def __init__(self, fd: int, slave: int) -> None:
        self.fd = fd
        self.slave: Optional[int] = slave
        self.path = os.ttyname(slave)
        self._closed = False
        self._budget = YIELD_EVERY

    async def _spend(self) -> None:
        self._budget -= 1
        if self._budget <= 0:
            self._budget = YIELD_EVERY
            await trio.lowlevel.checkpoint()

    @classmethod
    def open(cls, owner: Optional[int] = None, group: Optional[int] = None,
             size: Tuple[int, int] = (80, 24)) -> "Terminal":
        """A new raw terminal of size (columns, rows); OSError when none is
        left (EAGAIN, ENOSPC at /proc/sys/kernel/pty/max) or no descriptor is
        (EMFILE, ENFILE)."""
        master, slave = os.openpty()  # both close-on-exec, and neither becomes wsexec's own terminal
        try:
            make_raw(slave)
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
            if owner is not None or group is not None:  # --user, --group: the handler's own terminal
                os.fchown(slave, -1 if owner is None else owner, -1 if group is None else group)
            os.set_blocking(master, False)
            return cls(master, slave)
        except OSError:
            os.close(master)
            os.close(slave)
            raise

    def spawned(self) -> None:
        """The handler has its own copies now: wsexec's goes, so that the end
        of the handler's output is seen."""
        if self.slave is not None:
            os.close(self.slave)
            self.slave = None

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        """b"" at the end: EIO once no process holds the terminal, or after
        hang_up()."""
        while not self._closed:
            try:
                data = os.read(self.fd, min(max_bytes, MAX_READ))
                await self._spend()
                return data
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_readable(self.fd)
                except trio.ClosedResourceError:
                    break
            except OSError:  # EIO: every copy of the handler's side is closed
                break
        return b""

    async def send_all(self, data: Union[bytes, bytearray, memoryview],
                       still_wanted: Optional[Callable[[], bool]] = None) -> None:
        view = memoryview(data)
        while view:
            if self._closed:
                raise trio.ClosedResourceError("terminal was hung up")
            try:
                view = view[os.write(self.fd, view):]
                continue
            except InterruptedError:
                continue
            except BlockingIOError:
                pass
            except OSError as e:
                raise trio.BrokenResourceError(str(e)) from e
            try:
                if still_wanted is None:
                    await trio.lowlevel.wait_writable(self.fd)
                else:
                    with trio.move_on_after(1.0):
                        await trio.lowlevel.wait_writable(self.fd)
                    if not still_wanted():
                        raise trio.BrokenResourceError("send abandoned")
            except trio.ClosedResourceError:
                raise trio.ClosedResourceError("terminal was hung up") from None
        await self._spend()

    def send_nowait(self, data: bytes) -> None:
        """One non-blocking attempt; whatever does not fit is dropped."""
        if not self._closed:
            try:
                os.write(self.fd, data)
            except OSError:
                pass

    def shutdown_write(self) -> None:
        """Raw mode has no end-of-file character: hang up instead."""
        self.close()

    def close(self) -> None:
        self.spawned()
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self.fd)
            os.close(self.fd)
