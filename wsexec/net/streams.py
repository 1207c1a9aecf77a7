"""A lean non-blocking socket for trio.

trio's SocketStream pays for context managers and a scheduler round trip on
every call. This tries the system call first and waits only when it would
block, yielding to other tasks every few calls so no connection can starve
the rest. Errors use trio's stream exceptions.
"""

from __future__ import annotations

import socket
from typing import Awaitable, Callable, Optional, Protocol, Union

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


class Stream(Protocol):
    """What a connection is read and written through: a Socket, or a
    TlsStream over one (wsexec/net/tls.py)."""

    sock: socket.socket

    async def receive_some(self, max_bytes: int = 65536) -> bytes: ...
    async def send_all(self, data: Union[bytes, bytearray, memoryview],
                       still_wanted: Optional[Callable[[], bool]] = None) -> None: ...
    def peer_open(self) -> bool: ...
    def shutdown_write(self) -> None: ...
    def close(self) -> None: ...
    async def aclose(self) -> None: ...


async def next_connection(listener: socket.socket) -> socket.socket:
    """The next connection on a non-blocking listening socket, waiting for
    one; OSError for anything but "none yet" (EMFILE, ECONNABORTED...)."""
    while True:
        try:
            return listener.accept()[0]
        except BlockingIOError:
            await trio.lowlevel.wait_readable(listener)


async def accept_forever(listener: socket.socket, nursery: trio.Nursery,
                         handle: Callable[["Socket"], Awaitable[None]]) -> None:
    """A side listener's accept loop (the control API, --redirport): each
    connection to handle() in nursery, until cancelled."""
    while True:
        try:
            conn = await next_connection(listener)
        except OSError:
            await trio.sleep(0.05)  # out of descriptors, or that client is gone
            continue
        if conn.family != socket.AF_UNIX:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        nursery.start_soon(handle, Socket(conn))


class Socket:
    __slots__ = ("sock", "_budget", "_closed", "_drained")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._budget = YIELD_EVERY
        self._closed = False
        self._drained = False

    async def _yield(self) -> None:
        self._budget = YIELD_EVERY
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        limit = min(max_bytes, MAX_RECEIVE)
        if self._drained and not self._closed:
            # The last read emptied the socket, so this one would most likely
            # fail: wait first rather than pay for a failed system call.
            await trio.lowlevel.wait_readable(self.sock)
        while True:
            if self._closed:
                raise trio.ClosedResourceError("socket was closed")
            try:
                size = self.sock.recv_into(_BUFFER, limit)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
                continue
            except OSError as e:
                raise trio.BrokenResourceError(str(e)) from e
            self._drained = 0 < size < limit
            data = bytes(_VIEW[:size])
            if not self._drained:
                self._budget -= 1
                if self._budget <= 0:
                    await self._yield()
            return data

    async def send_all(
        self, data: Union[bytes, bytearray, memoryview], still_wanted: Optional[Callable[[], bool]] = None
    ) -> None:
        """Send everything. While blocked, still_wanted() is asked every
        STALL_CHECK seconds; False gives up with BrokenResourceError."""
        if not self._closed:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as e:
                raise trio.BrokenResourceError(str(e)) from e
            if sent == len(data):  # the usual case: all of it in one call
                self._budget -= 1
                if self._budget <= 0:
                    await self._yield()
                return
            data = memoryview(data)[sent:]
        await self._send_rest(data, still_wanted)

    async def _send_rest(self, data: Union[bytes, bytearray, memoryview], still_wanted: Optional[Callable[[], bool]]) -> None:
        view = memoryview(data)
        while view:
            if self._closed:
                raise trio.ClosedResourceError("socket was closed")
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                if still_wanted is None:
                    await trio.lowlevel.wait_writable(self.sock)
                else:
                    with trio.move_on_after(STALL_CHECK):
                        await trio.lowlevel.wait_writable(self.sock)
                    if not still_wanted():
                        raise trio.BrokenResourceError("send abandoned") from None
                continue
            except OSError as e:
                raise trio.BrokenResourceError(str(e)) from e
            view = view[sent:]
        await self._yield()

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
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()
