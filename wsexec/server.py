"""Listen, accept, and stop: the server around the connections."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from functools import partial
from itertools import count
from typing import List, Optional, Set, Tuple

import trio

from . import __version__
from .child import Reaper
from .config import EXIT_CANNOT_LISTEN, Config
from .connection import Connection, handle_connection
from .log import setup

logger = logging.getLogger("wsexec.server")

BACKLOG = 4096


class ServerState:
    """What connections share: the config, the reaper, counters, the stop flag."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.reaper = Reaper()
        self.stopping = trio.Event()
        self.forks = 0
        self.connections: Set[Connection] = set()
        self.instance = os.urandom(6).hex()
        self.software = f"wsexec/{__version__}"
        self.addresses: List[Tuple[str, int]] = []
        self._ids = count(1)
        self._accept_scope = trio.CancelScope()
        self._connections_scope: Optional[trio.CancelScope] = None

    def new_id(self) -> int:
        return next(self._ids)

    def shutdown(self) -> None:
        """Graceful stop: accept no more; every session closes with 1001 after
        its handler's ladder; anything still running at the deadline is cancelled."""
        if self.stopping.is_set():
            return
        logger.info("shutting down: %d connections open", len(self.connections))
        self.stopping.set()
        self._accept_scope.cancel()
        for conn in list(self.connections):
            conn.stop_for_shutdown()

    def abort(self) -> None:
        """Immediate stop: cancel every connection; each kills its handler group."""
        self.shutdown()
        self.reaper.kill_all()
        if self._connections_scope is not None:
            self._connections_scope.cancel()

    @property
    def shutdown_deadline(self) -> float:
        # ladder (closems + 500 ms), then the close handshake, then a margin
        c = self.config
        return c.closems / 1000 + 0.5 + c.gracems / 1000 + 1.0


def bind(config: Config) -> List[trio.socket.SocketType]:
    """One listening socket per address (all interfaces, v4 and v6, if none given).
    With --port 0 every listener shares the first one's port."""
    port = config.port
    hosts = list(config.addresses) or [None]
    sockets: List[trio.socket.SocketType] = []
    try:
        for host in hosts:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            seen = set()
            for family, type_, proto, _, addr in infos:
                if (family, addr) in seen:
                    continue
                seen.add((family, addr))
                sock = socket.socket(family, type_, proto)
                sockets.append(sock)  # type: ignore[arg-type]
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if port == 0 and len(sockets) > 1:
                    addr = (addr[0], sockets[0].getsockname()[1]) + tuple(addr[2:])
                sock.bind(addr)
                sock.listen(BACKLOG)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return [trio.socket.from_stdlib_socket(s) for s in sockets]  # type: ignore[arg-type]


def url_of(sockname: tuple) -> str:
    host, port = sockname[0], sockname[1]
    return f"ws://[{host}]:{port}/" if ":" in host else f"ws://{host}:{port}/"


async def serve(config: Config, *, handle_signals: bool = True, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
    """Serve until shut down; task_status gets the ServerState (with .addresses)."""
    state = ServerState(config)
    listeners = [trio.SocketListener(s) for s in bind(config)]
    state.addresses = [s.getsockname()[:2] for s in (l.socket for l in listeners)]
    async with trio.open_nursery() as root:
        await root.start(state.reaper.run)
        if handle_signals:
            root.start_soon(watch_signals, state)
        for sockname in state.addresses:
            logger.info("serving %s on %s", " ".join(config.command) or f"--dir {config.dir}", url_of(sockname))
        task_status.started(state)
        async with trio.open_nursery() as connections:
            state._connections_scope = connections.cancel_scope
            connections.start_soon(accept, state, listeners, connections)
            await state.stopping.wait()
            with trio.move_on_after(state.shutdown_deadline):
                while state.connections:
                    await trio.sleep(0.01)
            connections.cancel_scope.cancel()
        root.cancel_scope.cancel()
    logger.info("stopped")


async def accept(state: ServerState, listeners: List[trio.SocketListener], nursery: trio.Nursery) -> None:
    with state._accept_scope:
        try:
            await trio.serve_listeners(partial(handle_connection, state=state), listeners, handler_nursery=nursery)
        finally:
            for listener in listeners:
                await listener.aclose()


async def watch_signals(state: ServerState) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if not state.stopping.is_set():
                logger.info("%s received", signal.Signals(signum).name)
                state.shutdown()
            else:
                logger.info("%s received again: stopping now", signal.Signals(signum).name)
                state.abort()


def ensure_standard_fds() -> None:
    """Keep fds 0-2 taken, so no socket ends up there and is inherited by handlers."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)


def run(config: Config) -> int:
    setup(config.loglevel)
    ensure_standard_fds()

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            try:
                state = await nursery.start(partial(serve, config))
            except OSError as e:
                logger.critical("cannot listen: %s", e)
                return EXIT_CANNOT_LISTEN
            for sockname in state.addresses:
                print(f"listening on {url_of(sockname)}", flush=True)
        return 0

    try:
        return trio.run(main)
    except KeyboardInterrupt:
        return 0
