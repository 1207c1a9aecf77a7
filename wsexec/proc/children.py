"""The far end of a connection: a handler process.

Each handler runs in its own process group with one socket as both stdin and
stdout and a pipe as stderr: three descriptors per connection in wsexec,
counting the client's socket. Exits are learned from SIGCHLD (no pidfd per
child). The group is signalled only while its leader is unreaped, so a
recycled PID is never hit.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import trio

from ..stats import Stats
from .launch import Limit, wrapper
from .spawn import Spawner
from .stderr import StderrPipe, StderrReader
from ..net.streams import Socket

if TYPE_CHECKING:
    from .gate import Gate  # --rlimit alone loads it
    from .terminal import Terminal  # --pty alone loads it (and termios)

logger = logging.getLogger(__name__)


@dataclass
class Child:
    pid: int
    io: Union[Socket, Terminal]  # the handler's stdin and stdout
    stderr: StderrPipe  # read by the reaper's StderrReader
    status: Optional[int] = None  # wait status once reaped
    exited: trio.Event = field(default_factory=trio.Event)
    on_exit: Optional[Callable[[], None]] = None  # the connection's "something ended"

    def close_stdin(self) -> None:
        self.io.shutdown_write()

    def signal_group(self, signum: int) -> None:
        if self.status is None:  # the leader is unreaped, so the group id is still ours
            try:
                os.killpg(self.pid, signum)
            except ProcessLookupError:
                pass


def describe_status(status: int) -> str:
    """'exit status 3', 'killed by SIGKILL': how a handler ended, for people."""
    return f"killed by {exit_label(status)}" if os.WIFSIGNALED(status) else f"exit status {exit_label(status)}"


def exit_label(status: int) -> str:
    """'0', '3', 'SIGKILL': how a handler ended, for the metrics."""
    if os.WIFSIGNALED(status):
        try:
            return signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            return str(os.WTERMSIG(status))
    return str(os.waitstatus_to_exitcode(status))


class Slots:
    """--maxforks: how many handlers (WebSocket and CGI) may run at once.
    take() checks and claims in one step, with no await between, so
    concurrent admissions cannot overshoot; 0 means no limit."""

    __slots__ = ("limit", "taken")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0

    def take(self) -> bool:
        if self.limit and self.taken >= self.limit:
            return False
        self.taken += 1
        return True

    def give_back(self) -> None:
        self.taken -= 1

    @property
    def full(self) -> bool:
        return bool(self.limit) and self.taken >= self.limit


class Handlers:
    """Starts handler processes, reaps them on SIGCHLD (telling each waiting
    connection its status), logs their stderr, and counts them for --maxforks."""

    def __init__(self, maxforks: int = 0, spawner: Optional[Spawner] = None, stats: Optional[Stats] = None,
                 cwd: Optional[str] = None, limits: Sequence[Limit] = (), prlimit: str = "prlimit",
                 owner: Tuple[Optional[int], Optional[int]] = (None, None), setpriv: str = "setpriv",
                 ptysize: Tuple[int, int] = (80, 24)) -> None:
        self.children: Dict[int, Child] = {}
        self.spawner = spawner or Spawner(credentials=owner)
        # --rlimit: set at the gate (run() opens it), else by prlimit; --user,
        # --group: taken by the spawner thread, else by setpriv.
        self.limits = tuple(limits)
        self.gate: Optional["Gate"] = None
        self._prlimit = wrapper(self.limits, None, None, prlimit=prlimit)
        self._setpriv = wrapper((), *owner, setpriv=setpriv) if self.spawner.credentials != owner else ()
        self.launcher = self._prlimit + self._setpriv
        self.stderr = StderrReader()
        self.slots = Slots(maxforks)
        self.stats = stats or Stats()
        self.cwd = cwd  # --cwd: a directory, "script" (each program's own), or None (wsexec's)
        self.owner = owner  # --user, --group: uid and gid, for the handler's terminal
        self.ptysize = ptysize  # --ptysize: its window, columns and rows

    def open_terminal(self) -> Terminal:
        """--pty: a handler's terminal, taken before the upgrade is answered so
        that running out of them is an HTTP refusal; OSError if none is left."""
        from .terminal import Terminal

        return Terminal.open(*self.owner, self.ptysize)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
        """Reap on SIGCHLD; meanwhile log every handler's stderr."""
        if self.limits:
            from .gate import CAP_SYS_RESOURCE, Gate, capable

            try:
                if self.spawner.credentials != (None, None) and not capable(CAP_SYS_RESOURCE):
                    raise OSError(0, "no CAP_SYS_RESOURCE for the --user handlers' limits")
                if not self.spawner.threaded:
                    raise OSError(0, "no spawner thread")  # an inline spawn would wait at the gate for itself
                self.gate = Gate(self.limits)
                self.launcher = self._setpriv
                self.spawner.threads = 2
            except OSError as e:  # not root, or no fanotify permission events: one exec more
                logger.info("--rlimit: limits set by prlimit before each handler (no gate: %s)", e.strerror)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.stderr.run)
                if self.gate is not None:
                    nursery.start_soon(self.gate.serve)
                await self._reap_on_signal(task_status)
        finally:
            self.stderr.close_all()
            if self.gate is None:
                self.spawner.close()
            else:  # a child still at the gate is answered while the spawner stops
                self.spawner.close(self.gate.answer)
                self.gate.close()

    async def _reap_on_signal(self, task_status) -> None:  # type: ignore[no-untyped-def]
        try:
            receiver = trio.open_signal_receiver(signal.SIGCHLD)
        except RuntimeError:  # not in the main thread: poll instead
            task_status.started()
            while True:
                await trio.sleep(0.05)
                self.poll()
        with receiver as batches:
            task_status.started()
            self.poll()
            async for _ in batches:
                self.poll()

    async def spawn(
        self, argv: Sequence[str], env: Mapping[str, str], log: Union[logging.Logger, logging.LoggerAdapter],
        on_exit: Optional[Callable[[], None]] = None, watch_stderr: bool = True,
        terminal: Optional[Terminal] = None,
    ) -> Child:
        """Start a handler (wsexec/proc/spawn.py); OSError if it cannot start.
        Its stderr lines go to log (read by the StderrReader, or with
        watch_stderr=False by its far end); on_exit is called when it has been reaped.
        With a terminal (--pty) that is its stdin and stdout, and the Child's
        io; it is closed if the handler cannot start."""
        io: Union[Socket, "Terminal"]
        theirs: Optional[socket.socket] = None
        try:
            if terminal is None:
                ours, theirs = socket.socketpair()
                io = Socket(ours)
            else:
                io = terminal
            err_read, err_write = os.pipe()
        except OSError:
            if terminal is not None:
                terminal.close()
            elif theirs is not None:
                ours.close()
                theirs.close()
            raise
        try:
            stderr = self.stderr.open(err_read, log, watch_stderr)  # closes err_read if it fails
        except OSError:
            io.close()
            if theirs is not None:
                theirs.close()
            os.close(err_write)
            raise
        began = time.monotonic()
        try:
            cwd = os.path.dirname(argv[0]) if self.cwd == "script" else self.cwd
            stdio = theirs.fileno() if theirs is not None else -1
            pid = await self.spawner.spawn(self.launcher + tuple(argv), env, stdio, err_write, cwd,
                                           terminal.path if terminal is not None else None,
                                           self.gate.checkpoint if self.gate is not None else None)
            self.stats.started(time.monotonic() - began)
        except BaseException:
            io.close()
            self.stderr.close(stderr)
            raise
        finally:
            if theirs is not None:
                theirs.close()
            else:
                io.spawned()  # type: ignore[union-attr]
            os.close(err_write)
        child = Child(pid, io, stderr, on_exit=on_exit)
        self.children[pid] = child
        # Its SIGCHLD may have come before it was registered here.
        self.poll_one(child)
        return child

    def poll(self) -> None:
        """Collect every exited handler. Peeking with WNOWAIT finds ours in O(1)
        each; a child that is not ours (wsexec embedded in a bigger program)
        falls back to checking ours one by one."""
        while self.children:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info = None
            if info is None:
                return
            child = self.children.get(info.si_pid)
            if child is None:
                for child in list(self.children.values()):
                    self.poll_one(child)
                return
            self._reap(child)

    def poll_one(self, child: Child) -> None:
        try:
            info = os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            info = None
        if info is not None:
            self._reap(child)

    def _reap(self, child: Child) -> None:
        # The leader is gone; whatever it left in its group goes too, while the
        # unreaped leader still holds the group id.
        child.signal_group(signal.SIGKILL)
        try:
            _, status = os.waitpid(child.pid, 0)
        except ChildProcessError:
            status = 0
        child.status = status
        self.stats.exits[exit_label(status)] += 1
        del self.children[child.pid]
        child.exited.set()
        if child.on_exit is not None:
            child.on_exit()

    def release(self, child: Child) -> None:
        """Once the handler is done: its last stderr lines, its descriptors closed."""
        child.io.close()
        self.stderr.close(child.stderr)

    async def dispose(self, child: Child) -> str:
        """However its connection ended (even cancelled): the handler's group
        killed if it still runs, the handler reaped here (when the whole server
        is cancelled the reaping task may be gone), its descriptors closed.
        Returns its status for the log."""
        if child.status is None:
            child.signal_group(signal.SIGKILL)
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                while child.status is None:
                    self.poll_one(child)
                    if child.status is None:
                        await trio.sleep(0.005)
        self.release(child)
        return describe_status(child.status) if child.status is not None else "not reaped"

    def kill_all(self) -> None:
        for child in list(self.children.values()):
            child.signal_group(signal.SIGKILL)


async def stop(child: Child, closems: int) -> None:
    """websocketd's ladder, on the whole group: SIGINT, SIGTERM, then SIGKILL
    at closems + 100, 250 and 500 ms, stopping as soon as the handler exits."""
    if child.exited.is_set():
        return
    start = trio.current_time()
    base = closems / 1000
    for delay, signum in ((0.1, signal.SIGINT), (0.25, signal.SIGTERM), (0.5, signal.SIGKILL)):
        with trio.move_on_at(start + base + delay):
            await child.exited.wait()
            return
        child.signal_group(signum)
    await child.exited.wait()
