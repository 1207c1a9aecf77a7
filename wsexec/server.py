"""Listen, accept, and stop: the server around the connections."""

from __future__ import annotations

import errno
import gc
import logging
import os
import signal
import socket
from functools import partial
from itertools import count
from typing import List, Optional, Set, Tuple

import trio

from . import __version__
from .proc.children import Reaper
from .config import EXIT_CANNOT_LISTEN, Config
from .connection import Connection
from .net.front import handler_for
from .http.plain import serve_redirects
from .net.listen import describe, open_listeners, remove_unix
from .log import setup
from .http.response import render
from .net.streams import Socket, next_connection

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
        self.redirect_addresses: List[Tuple[str, int]] = []  # --redirport listeners
        self.urls: List[str] = []  # every listener, unix sockets too (wsexec/net/listen.py)
        self._ids = count(1)
        self._accept_scopes: List[trio.CancelScope] = []  # one per listener: a scope is entered once
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
        for scope in self._accept_scopes:
            scope.cancel()
        for conn in list(self.connections):
            conn.wakeup()

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


def bind(config: Config) -> List[socket.socket]:
    """One listening socket per address (all interfaces, v4 and v6, if none given).
    With --port 0 every listener shares the first one's port."""
    port = config.port
    hosts = list(config.addresses) or [None]
    sockets: List[socket.socket] = []
    try:
        for host in hosts:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            seen = set()
            for family, type_, proto, _, addr in infos:
                if (family, addr) in seen:
                    continue
                seen.add((family, addr))
                sock = socket.socket(family, type_, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if port == 0 and len(sockets) > 1:
                    addr = (addr[0], sockets[0].getsockname()[1]) + tuple(addr[2:])
                sock.bind(addr)
                sock.listen(BACKLOG)
                sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def serve(config: Config, *, handle_signals: bool = True, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
    """Serve until shut down; task_status gets the ServerState (with .addresses)."""
    state = ServerState(config)
    listeners = open_listeners(config, bind)
    state.addresses = [s.getsockname()[:2] for s in listeners if s.family != socket.AF_UNIX]
    state.urls = [describe(s, config.ssl) for s in listeners]
    owned_unix = (config.unixsocket, os.lstat(config.unixsocket).st_ino) if config.unixsocket and not config.listen_fds else None
    try:
        async with trio.open_nursery() as root:
            await root.start(state.reaper.run)
            if handle_signals:
                # Started, not just scheduled: a SIGTERM right after "listening on"
                # must already take the graceful path.
                await root.start(watch_signals, state)
            if config.redirport is not None:
                await root.start(serve_redirects, state)
            for url in state.urls:
                logger.info("serving %s on %s", " ".join(config.command) or f"--dir {config.dir}", url)
            task_status.started(state)
            async with trio.open_nursery() as connections:
                state._connections_scope = connections.cancel_scope
                for listener in listeners:
                    connections.start_soon(accept, state, listener, connections)
                await state.stopping.wait()
                with trio.move_on_after(state.shutdown_deadline):
                    while state.connections:
                        await trio.sleep(0.01)
                connections.cancel_scope.cancel()
            root.cancel_scope.cancel()
    finally:
        state.reaper.spawner.close()
    if owned_unix:
        remove_unix(*owned_unix)
    logger.info("stopped")


async def accept(state: ServerState, listener: socket.socket, nursery: trio.Nursery) -> None:
    """Accept until shutdown. When out of file descriptors, a spare one is
    given up to accept the client and answer 503 rather than leave it hanging
    in the backlog while accept() fails in a busy loop."""
    spare: Optional[int] = os.open(os.devnull, os.O_RDONLY)
    handle = handler_for(state, listener)  # handle_connection unless TLS, PROXY or a unix socket
    accepted = 0
    with trio.CancelScope() as scope:
        state._accept_scopes.append(scope)
        if state.stopping.is_set():
            scope.cancel()
        try:
            while True:
                try:
                    conn = await next_connection(listener)
                except OSError as e:
                    if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        continue  # ECONNABORTED and the like: that client is gone
                    spare = refuse_when_out_of_fds(listener, spare)
                    await trio.sleep(0.05)
                    continue
                if conn.family in (socket.AF_INET, socket.AF_INET6):
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(handle, Socket(conn), state)
                accepted += 1
                if accepted % 16 == 0:
                    await trio.lowlevel.checkpoint()
                if spare is None:
                    spare = reserve_fd()
        finally:
            trio.lowlevel.notify_closing(listener)
            listener.close()
            if spare is not None:
                os.close(spare)


def reserve_fd() -> Optional[int]:
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None


def refuse_when_out_of_fds(listener: socket.socket, spare: Optional[int]) -> Optional[int]:
    if spare is None:
        return reserve_fd()
    os.close(spare)
    try:
        conn, _ = listener.accept()
    except OSError:
        return reserve_fd()
    logger.error("out of file descriptors: refusing a connection with 503")
    try:
        conn.setblocking(False)
        conn.send(render(503, "server busy: out of file descriptors, try again later"))
    except OSError:
        pass
    conn.close()
    return reserve_fd()


async def watch_signals(state: ServerState, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
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


def keep_inherited_fds_from_handlers() -> None:
    """posix_spawn closes no descriptors: mark every one wsexec inherited
    (beyond 0-2) close-on-exec, so none leaks into handlers."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the descriptor listdir itself used, now closed


def tune_gc() -> None:
    """The collector, not wsexec, set the tail latency with thousands of open
    connections: a full collection walks every object of every connection
    (measured in bench S5b: pauses up to 260 ms, collecting nothing, and a
    first-echo p99 of 86 ms). Objects made at start-up are frozen out of it,
    and collections are made rarer; connections leave little cyclic garbage
    (about 20 objects when one ends), which is still collected."""
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


def run(config: Config) -> int:
    setup(config.loglevel)
    tune_gc()
    keep_inherited_fds_from_handlers()
    if config.inetd:
        from .net.listen import run_inetd

        return run_inetd(config)
    ensure_standard_fds()

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            try:
                state = await nursery.start(partial(serve, config))
            except OSError as e:
                logger.critical("cannot listen: %s", e)
                return EXIT_CANNOT_LISTEN
            for url in state.urls:
                print(f"listening on {url}", flush=True)
        return 0

    try:
        return trio.run(main)
    except KeyboardInterrupt:
        return 0
