"""Listen, accept, and stop: the server around the connections.

Each accepted socket gets one task (`handle`): the front (PROXY header,
TLS) when the listener needs one, then the connection (wsexec/connection.py).
That task is the one catch-all: an unexpected error ends that connection
with a traceback in the log, never the server.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import signal
import socket
import sys
from functools import partial
from typing import List, Optional, Tuple

import trio

from . import __version__
from .backends import Backend
from .backends.process import ProcessBackend
from .config import EXIT_BAD_COMMAND, EXIT_CANNOT_LISTEN, Config, ConfigError, parse_control
from .connection import Connection, Shared
from .http import response
from .http.redirect import serve_redirects
from .log import STREAMS, reopen, setup
from .net.front import Fronts, open_front
from .net.listen import CannotListen, bind, bind_unix, describe, inetd_socket, open_listeners, remove_unix
from .net.streams import Socket, next_connection
from .net.tls import NotTls
from .proc.children import Handlers
from .proc.shebang import SCAN_LIMIT, scan_directory
from .registry import Registry
from .stats import Stats

logger = logging.getLogger("wsexec.server")


class Server:
    """The services connections share (handlers, registry, fronts, backend),
    the listeners' addresses, and stopping."""

    def __init__(self, config: Config, control_url: str = "") -> None:
        self.config = config
        self.stats = Stats()
        self.handlers = Handlers(config.maxforks, stats=self.stats, cwd=config.cwd, limits=config.limits,
                                 prlimit=config.prlimit, owner=config.run_as, setpriv=config.setpriv,
                                 ptysize=config.ptysize)
        self.registry = Registry()
        self.fronts = Fronts(config)
        backend: Optional[Backend] = None  # no COMMAND or --dir: the site alone is served
        self.shared_backend = None  # with --shared: the same as backend
        if config.callback:
            from .backends.callback import CallbackBackend  # with --callback only: its HTTP client

            backend = CallbackBackend(config, control_url)
        elif config.shared:
            from .backends.shared import SharedBackend  # --shared only: plain wsexec never loads it

            backend = self.shared_backend = SharedBackend(config, self.handlers)
        elif config.has_handler:
            backend = ProcessBackend(config, self.handlers)
        self.backend = backend
        self.shared = Shared(config, self.handlers, self.registry, backend, self.stats, os.urandom(6).hex(),
                             f"wsexec/{__version__}", control_url)
        self.addresses: List[Tuple[str, int]] = []
        self.redirect_addresses: List[Tuple[str, int]] = []  # --redirport listeners
        self.urls: List[str] = []  # every listener, unix sockets too (wsexec/net/listen.py)
        self._accept_scopes: List[trio.CancelScope] = []  # one per listener: a scope is entered once
        self._connections_scope: Optional[trio.CancelScope] = None
        self.control = None  # the control API (wsexec/control.py), with --control

    @property
    def stopping(self) -> trio.Event:
        return self.registry.stopping

    def shutdown(self) -> None:
        """Graceful stop: accept no more; every session closes with 1001 after
        its handler's ladder; anything still running at the deadline is cancelled."""
        if self.stopping.is_set():
            return
        logger.info("shutting down: %d connections open", len(self.registry))
        self.registry.stop()
        for scope in self._accept_scopes:
            scope.cancel()

    async def drain(self, seconds: float) -> None:
        """--drainms: /readyz turns 503 at once while clients are still
        accepted, so a health-checking front moves new ones elsewhere; then
        the graceful stop."""
        self.registry.draining = True
        logger.info("draining: readiness 503, still accepting for %.3fs", seconds)
        await trio.sleep(seconds)
        self.shutdown()

    def abort(self) -> None:
        """Immediate stop: cancel every connection; each kills its handler group."""
        self.shutdown()
        self.handlers.kill_all()
        if self._connections_scope is not None:
            self._connections_scope.cancel()

    @property
    def shutdown_deadline(self) -> float:
        # ladder (closems + 500 ms), then the close handshake, then a margin
        c = self.config
        return c.closems / 1000 + 0.5 + c.gracems / 1000 + 1.0

    async def handle(self, sock: Socket, front: bool) -> None:
        """One connection, start to end: the front if the listener needs one,
        then the request. The one catch-all."""
        stream, conn = sock, None
        try:
            opened = None
            if front:
                try:
                    opened = await open_front(sock, self.fronts, self.config.handshakems / 1000)
                except NotTls:
                    await response.send(sock, response.render(400, "this port speaks TLS: use https:// or wss://"), 1)
                    return
                if opened is None:
                    return
                stream = opened[0]
            conn = Connection(self.shared, self.registry.new_id(), stream, opened[1] if opened else None)
            await conn.run()
        except Exception:
            if conn is None:
                logger.exception("internal error before the request")
            else:
                await conn.fail()
        finally:
            await stream.aclose()
            if stream is not sock:
                sock.close()


async def serve(config: Config, *, handle_signals: bool = True, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
    """Serve until shut down; task_status gets the Server (with .addresses)."""
    warn_bad_scripts(config)
    listeners = open_listeners(config)
    redirects: List[socket.socket] = []
    control: List[socket.socket] = []
    try:
        if config.redirport is not None:
            redirects = bind(config.addresses, config.redirport, "(--redirport)")
        if config.control is not None:
            control = bind_control(config)
    except CannotListen:
        for listener in listeners + redirects:
            listener.close()
        raise
    server = Server(config, control_url(control[0]) if control else "")
    server.addresses = [s.getsockname()[:2] for s in listeners if s.family != socket.AF_UNIX]
    server.redirect_addresses = [s.getsockname()[:2] for s in redirects]
    server.urls = [describe(s, config.ssl) for s in listeners]
    owned_unix = (config.unixsocket, os.lstat(config.unixsocket).st_ino) if config.unixsocket and not config.listen_fds else None
    owned_control = (control[0].getsockname(), os.lstat(control[0].getsockname()).st_ino) \
        if control and control[0].family == socket.AF_UNIX else None
    try:
        async with trio.open_nursery() as root:
            await root.start(server.handlers.run)
            if hasattr(server.backend, "run"):  # the shared processes' hubs, the HTTP client's pool
                await root.start(server.backend.run)  # type: ignore[union-attr]
            if handle_signals:
                # Started, not just scheduled: a SIGTERM right after "listening on"
                # must already take the graceful path.
                await root.start(watch_signals, server)
            if redirects:
                tls_port = server.addresses[0][1] if server.addresses else config.port
                root.start_soon(serve_redirects, config, redirects, tls_port)
            if control:
                from .control import Control  # with --control only: it loads prometheus_client

                server.control = Control(config, server.registry, server.stats, server.handlers.slots)
                gc.freeze()  # what that import made lives as long as the server: keep it out of collections
                await root.start(server.control.serve, control)
                logger.info("control API on %s", server.shared.control_url)
            serving = " ".join(config.command) or (f"--dir {config.dir}" if config.dir else
                                                   f"--callback {config.callback}" if config.callback else
                                                   "no handler (site only)")
            for url in server.urls:
                logger.info("serving %s on %s", serving, url)
            task_status.started(server)
            async with trio.open_nursery() as connections:
                server._connections_scope = connections.cancel_scope
                for listener in listeners:
                    connections.start_soon(accept, server, listener, connections)
                await server.stopping.wait()
                with trio.move_on_after(server.shutdown_deadline) as deadline:
                    while len(server.registry):
                        await trio.sleep(0.01)
                    if server.shared_backend is not None:
                        await server.shared_backend.aclose()  # shared processes, on the ladder
                connections.cancel_scope.cancel()
                if deadline.cancelled_caught:
                    logger.info("shutdown deadline passed: stopping what is left")
            root.cancel_scope.cancel()
    finally:
        server.handlers.spawner.close()
    if owned_unix:
        remove_unix(*owned_unix)
    if control and control[0].family == socket.AF_UNIX:
        remove_unix(*owned_control)
    logger.info("stopped")


def bind_control(config: Config) -> List[socket.socket]:
    """The control listener: a unix socket, or a TCP address (its own port)."""
    assert config.control is not None
    kind, host, port = parse_control(config.control)
    if kind == "unix":
        return [bind_unix(host, config.control_mode)]
    return bind([host], port, "(--control)")


def control_url(listener: socket.socket) -> str:
    """WSEXEC_CONTROL: unix:PATH, or http://HOST:PORT with the port bound."""
    name = listener.getsockname()
    if listener.family == socket.AF_UNIX:
        return "unix:" + (name.decode() if isinstance(name, bytes) else name)
    host = f"[{name[0]}]" if ":" in name[0] else name[0]
    return f"http://{host}:{name[1]}"


def warn_bad_scripts(config: Config) -> None:
    """A warning for each executable directly in --dir or --cgidir whose #!
    line names an interpreter that is missing or not executable (or ends in
    a carriage return): each would fail on every request. At most SCAN_LIMIT
    entries per directory are looked at (wsexec/proc/shebang.py), so a huge
    directory does not hold up start-up; scripts in subdirectories, and the
    rest, are judged only when a spawn fails."""
    for option, root in (("--dir", config.dir), ("--cgidir", config.cgidir)):
        if not root:
            continue
        problems, complete = scan_directory(root)
        for name, problem in problems:
            logger.warning("%s %s: %s cannot start: %s", option, root, name, problem)
        if not complete:
            logger.info("%s %s: only the first %d entries were checked for bad #! lines", option, root, SCAN_LIMIT)


async def accept(server: Server, listener: socket.socket, nursery: trio.Nursery) -> None:
    """Accept until shutdown. When out of file descriptors, a spare one is
    given up to accept the client and answer 503 rather than leave it hanging
    in the backlog while accept() fails in a busy loop."""
    spare: Optional[int] = os.open(os.devnull, os.O_RDONLY)
    # TLS, PROXY and trusted proxies need the front; so do unix sockets (their peer names)
    front = server.fronts.active or listener.family == socket.AF_UNIX
    handle = server.handle
    accepted = 0
    with trio.CancelScope() as scope:
        server._accept_scopes.append(scope)
        if server.stopping.is_set():
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
                nursery.start_soon(handle, Socket(conn), front)
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
        conn.send(response.render(503, "server busy: out of file descriptors, try again later"))
    except OSError:
        pass
    conn.close()
    return reserve_fd()


async def watch_signals(server: Server, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM and SIGINT stop the server (after --drainms, if given; a
    second signal stops without draining, a third at once); SIGHUP reopens
    the log file, and is left at its default unless the log goes to a file."""
    watched = [signal.SIGTERM, signal.SIGINT]
    if server.config.log not in STREAMS:
        watched.append(signal.SIGHUP)
    async with trio.open_nursery() as nursery:  # the drain, when there is one
        with trio.open_signal_receiver(*watched) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    reopen_log(server.config.log)
                elif server.stopping.is_set():
                    logger.info("%s received again: stopping now", name)
                    server.abort()
                elif server.config.drainms and not server.registry.draining:
                    logger.info("%s received", name)
                    nursery.start_soon(server.drain, server.config.drainms / 1000)
                else:
                    logger.info("%s received%s", name, " while draining: stopping" if server.registry.draining else "")
                    server.shutdown()


def reopen_log(path: str) -> None:
    """SIGHUP: new lines go to the file now at the --log path (logrotate has
    moved the old one); if it cannot be opened, the old file stays in use."""
    try:
        reopen()
    except OSError as e:
        logger.error("SIGHUP received: cannot reopen the log file %s: %s; still logging to the old file",
                     path, e.strerror)
    else:
        logger.info("SIGHUP received: log file %s reopened", path)


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
    try:
        setup(config.loglevel, config.log, config.logformat)
    except OSError as e:  # load() opened it a moment ago: removed or made unwritable since
        print(f"wsexec: cannot open the log file {config.log}: {e.strerror}", file=sys.stderr)
        return EXIT_BAD_COMMAND
    tune_gc()
    keep_inherited_fds_from_handlers()
    if config.inetd:
        return run_inetd(config)
    ensure_standard_fds()

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            try:
                server = await nursery.start(partial(serve, config))
            except CannotListen as e:
                logger.critical("%s", e)  # 'cannot listen on WHAT: WHY'
                return EXIT_CANNOT_LISTEN
            except OSError as e:
                logger.critical("cannot listen: %s", e)
                return EXIT_CANNOT_LISTEN
            for url in server.urls:
                print(f"listening on {url}", flush=True)
            if server.shared.control_url:
                print(f"control on {server.shared.control_url}", flush=True)
        return 0

    try:
        return trio.run(main)
    except KeyboardInterrupt:
        return 0


def run_inetd(config: Config) -> int:
    """Serve the one connection on stdin/stdout, then exit (inetd, xinetd,
    systemd Accept=yes). SIGTERM ends it as it ends a listening server."""
    try:
        sock = inetd_socket()
    except ConfigError as e:
        logger.critical("%s", e)
        return e.exit_code

    async def main() -> None:
        server = Server(config)
        try:
            async with trio.open_nursery() as root:
                await root.start(server.handlers.run)
                root.start_soon(watch_signals, server)
                await server.handle(Socket(sock), front=True)
                root.cancel_scope.cancel()
        finally:
            server.handlers.spawner.close()

    try:
        trio.run(main)
    except KeyboardInterrupt:
        pass
    return 0
