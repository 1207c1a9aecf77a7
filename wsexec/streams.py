"""A lean non-blocking socket for trio.

trio's SocketStream pays for context managers and a scheduler round trip on
every call. This tries the system call first and waits only when it would
block, yielding to other tasks every few calls so no connection can starve
the rest. Errors use trio's stream exceptions.
"""

from __future__ import annotations

import socket
from typing import Union

import trio

YIELD_EVERY = 16
# One receive buffer for every socket: the loop is single-threaded and each
# read is copied out before the next await, so large reads cost no memory
# per connection.
_BUFFER = bytearray(1 << 18)
_VIEW = memoryview(_BUFFER)
MAX_RECEIVE = len(_BUFFER)


class Socket:
    __slots__ = ("sock", "_budget", "_closed")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._budget = YIELD_EVERY
        self._closed = False

    async def _fair(self) -> None:
        self._budget -= 1
        if self._budget <= 0:
            self._budget = YIELD_EVERY
            await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        while True:
            if self._closed:
                raise trio.ClosedResourceError("socket was closed")
            try:
                size = self.sock.recv_into(_BUFFER, min(max_bytes, MAX_RECEIVE))
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
                continue
            except OSError as e:
                raise trio.BrokenResourceError(str(e)) from e
            data = bytes(_VIEW[:size])
            await self._fair()
            return data

    async def send_all(self, data: Union[bytes, bytearray, memoryview]) -> None:
        view = memoryview(data)
        while view:
            if self._closed:
                raise trio.ClosedResourceError("socket was closed")
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)
                continue
            except OSError as e:
                raise trio.BrokenResourceError(str(e)) from e
            view = view[sent:]
        await self._fair()

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
