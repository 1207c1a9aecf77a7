"""A lean non-blocking socket for trio.

trio's SocketStream pays for context managers and a scheduler round trip on
every call. This tries the system call first and waits only when it would
block, yielding to other tasks every few calls so no connection can starve
the rest. Errors use trio's stream exceptions.
"""

from __future__ import annotations

import select
import socket
from typing import Callable, Dict, Optional, Union

import outcome
import trio

YIELD_EVERY = 16
STALL_CHECK = 1.0
TCP_INFO = getattr(socket, "TCP_INFO", 11)  # Linux
TCP_ESTABLISHED = 1  # tcpi_state, the first byte of struct tcp_info (linux/tcp.h)
# One receive buffer for every socket: the loop is single-threaded and each
# read is copied out before the next await, so large reads cost no memory
# per connection.
_BUFFER = bytearray(1 << 18)
_VIEW = memoryview(_BUFFER)
MAX_RECEIVE = len(_BUFFER)


READ, WRITE = 1, 2
EPOLL_READ = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
EPOLL_WRITE = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR
EPOLL_READ_ENDED = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
EPOLL_WRITE_ENDED = select.EPOLLHUP | select.EPOLLERR


class Poller:
    """Readiness for the busy sockets, from an edge-triggered epoll of our own.

    trio re-arms a one-shot epoll registration with a system call on every
    wait (measured: 16 % of the server's time at 100 connections echoing).
    Here each socket is registered once; one task turns the events into
    wake-ups, and an event nobody waits for is remembered for the next wait.
    """

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.ready: Dict[int, int] = {}
        self.ended: Dict[int, int] = {}  # fd: READ | WRITE waits that return at once
        self.waiting: Dict[int, "trio.lowlevel.Task"] = {}  # key: fd * 4 + READ or WRITE

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
        POLLER.set(self)
        try:
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(self.epoll.fileno())
                for fd, events in self.epoll.poll(0):
                    # No edge follows an end of stream or an error: remember it
                    # for good (for writing only on a full hang-up or error, so
                    # a half-closed peer cannot turn a full buffer into a spin).
                    if events & EPOLL_READ_ENDED:
                        self.ended[fd] = self.ended.get(fd, 0) | READ
                    if events & EPOLL_WRITE_ENDED:
                        self.ended[fd] = self.ended.get(fd, 0) | WRITE
                    if events & EPOLL_READ:
                        self._ready(fd, READ)
                    if events & EPOLL_WRITE:
                        self._ready(fd, WRITE)
        finally:
            POLLER.set(None)
            self.epoll.close()

    def _ready(self, fd: int, what: int) -> None:
        task = self.waiting.pop(fd * 4 + what, None)
        if task is not None:
            trio.lowlevel.reschedule(task)
        else:
            self.ready[fd] = self.ready.get(fd, 0) | what

    def register(self, fd: int) -> bool:
        try:
            self.epoll.register(fd, EPOLL_READ | EPOLL_WRITE | select.EPOLLET)
        except OSError:
            return False
        return True

    def forget(self, fd: int) -> None:
        """Before the fd is closed: wake its waiters with ClosedResourceError."""
        try:
            self.epoll.unregister(fd)
        except (OSError, ValueError):
            pass
        self.ready.pop(fd, None)
        self.ended.pop(fd, None)
        for what in (READ, WRITE):
            task = self.waiting.pop(fd * 4 + what, None)
            if task is not None:
                trio.lowlevel.reschedule(task, outcome.Error(trio.ClosedResourceError("socket was closed")))

    async def wait(self, fd: int, what: int) -> None:
        if self.ended.get(fd, 0) & what:
            return
        bits = self.ready.get(fd, 0)
        if bits & what:
            self.ready[fd] = bits & ~what
            return
        key = fd * 4 + what
        if key in self.waiting:
            raise trio.BusyResourceError("another task is already waiting on this socket")
        self.waiting[key] = trio.lowlevel.current_task()

        def abort(_: object) -> "trio.lowlevel.Abort":
            self.waiting.pop(key, None)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


POLLER: "trio.lowlevel.RunVar[Optional[Poller]]" = trio.lowlevel.RunVar("wsexec_poller", default=None)


class Socket:
    __slots__ = ("sock", "_budget", "_closed", "_drained", "_poller", "_fd")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._budget = YIELD_EVERY
        self._closed = False
        self._drained = False
        self._fd = sock.fileno()
        poller = POLLER.get()
        self._poller = poller if poller is not None and poller.register(self._fd) else None

    async def _wait_readable(self) -> None:
        if self._poller is not None:
            await self._poller.wait(self._fd, READ)
        else:
            await trio.lowlevel.wait_readable(self.sock)

    async def _wait_writable(self) -> None:
        if self._poller is not None:
            await self._poller.wait(self._fd, WRITE)
        else:
            await trio.lowlevel.wait_writable(self.sock)

    async def _fair(self) -> None:
        self._budget -= 1
        if self._budget <= 0:
            self._budget = YIELD_EVERY
            await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        limit = min(max_bytes, MAX_RECEIVE)
        if self._drained and not self._closed:
            # The last read emptied the socket, so this one would most likely
            # fail: wait first rather than pay for a failed system call.
            await self._wait_readable()
        while True:
            if self._closed:
                raise trio.ClosedResourceError("socket was closed")
            try:
                size = self.sock.recv_into(_BUFFER, limit)
            except BlockingIOError:
                await self._wait_readable()
                continue
            except OSError as e:
                raise trio.BrokenResourceError(str(e)) from e
            self._drained = 0 < size < limit
            data = bytes(_VIEW[:size])
            if not self._drained:
                await self._fair()
            return data

    async def send_all(
        self, data: Union[bytes, bytearray, memoryview], still_wanted: Optional[Callable[[], bool]] = None
    ) -> None:
        """Send everything. While blocked, still_wanted() is asked every
        STALL_CHECK seconds; False gives up with BrokenResourceError."""
        view = memoryview(data)
        while view:
            if self._closed:
                raise trio.ClosedResourceError("socket was closed")
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                if still_wanted is None:
                    await self._wait_writable()
                else:
                    with trio.move_on_after(STALL_CHECK):
                        await self._wait_writable()
                    if not still_wanted():
                        raise trio.BrokenResourceError("send abandoned") from None
                continue
            except OSError as e:
                raise trio.BrokenResourceError(str(e)) from e
            view = view[sent:]
        await self._fair()

    def send_nowait(self, data: bytes) -> None:
        """One non-blocking attempt; whatever does not fit is dropped."""
        if not self._closed:
            try:
                self.sock.send(data)
            except OSError:
                pass

    def peer_open(self) -> bool:
        """Whether a TCP peer has neither closed nor reset the connection,
        found without reading the data queued before its FIN or RST."""
        try:
            info = self.sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 1)
        except OSError:
            return True  # not TCP (unix socket): no way to tell, assume open
        return info[0] == TCP_ESTABLISHED

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._poller is not None:
                self._poller.forget(self._fd)
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()
