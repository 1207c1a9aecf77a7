"""Starting a handler process without stalling the event loop.

posix_spawn is a vfork: the caller is suspended until the child has called
exec, which takes as long as the kernel needs to open and map the program
(longer on slow storage, and on a busy machine until the caller is scheduled
again: 0.1-1.4 ms each under the benchmark's connection-rate load). Python's
os.posix_spawn also holds the GIL for all of it. So the C library's
posix_spawn is called through ctypes, which releases the GIL, from a
spawner thread (two with --rlimit, whose children wait at a gate the loop
answers); the loop goes on serving other connections meanwhile.

Where that is not available (not Linux, no C library found) spawns run
inline with os.posix_spawn.
"""

from __future__ import annotations

import ctypes
import errno
import ctypes.util
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from typing import Callable, Deque, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import trio

# Signals Python or trio may have set to ignored or handled; a handler starts
# with every signal at its default and none blocked.
RESET_SIGNALS = (
    signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT,
)

# <spawn.h> flags, the same in glibc (SETSID: 2.26 and later) and musl.
_RESETIDS, _SETPGROUP, _SETSIGDEF, _SETSIGMASK, _SETSID = 0x01, 0x02, 0x04, 0x08, 0x80
# Linux system call numbers of setgroups, setresuid, setresgid, called raw
# so that they change the calling thread's credentials alone (the C
# library's wrappers change every thread's).
_CREDENTIAL_CALLS = {"x86_64": (116, 117, 119), "aarch64": (159, 147, 149)}
# Opaque C types, sized generously (glibc: 80, 336 and 128 bytes).
_ACTIONS_SIZE, _ATTR_SIZE, _SIGSET_SIZE = 256, 1024, 256
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def _inline_spawn(argv: Sequence[str], env: Mapping[str, str], stdio: int, stderr: int,
                  cwd: Optional[str] = None, terminal: Optional[str] = None, gate: Optional[Checkpoint] = None) -> int:
    if cwd is not None:  # os.posix_spawn has no chdir action
        raise OSError(errno.ENOSYS, "--cwd needs the C library's posix_spawn_file_actions_addchdir_np")
    # A new session (--pty) makes the handler its group's leader too; setpgid would then fail.
    group = {"setsid": True} if terminal is not None else {"setpgroup": 0}
    return os.posix_spawn(argv[0], list(argv), env, file_actions=_stdio_actions(stdio, stderr, terminal, gate),
                          setsigdef=RESET_SIGNALS, setsigmask=(), **group)


class Checkpoint(NamedTuple):
    """Where a child waits for its --rlimit limits (wsexec/proc/gate.py):
    it closes `fds` (its copies of wsexec's side), opens `gate` (and waits
    there), then opens `alive`, which only succeeds while wsexec lives."""
    gate: str
    alive: str
    fds: Tuple[int, ...]


def _stdio_actions(stdio: int, stderr: int, terminal: Optional[str], gate: Optional[Checkpoint]) -> list:
    """The file actions, as os.posix_spawn takes them. stdin and stdout: one
    socket; or with --pty the terminal, opened by path after setsid so that
    it becomes the controlling terminal. With --rlimit the checkpoint's
    files are opened first, onto a descriptor the next action replaces, so
    that no later action needs a new descriptor."""
    target = 0 if terminal is None else 1
    actions: list = []
    if terminal is not None:
        actions.append((os.POSIX_SPAWN_OPEN, 0, terminal, os.O_RDWR, 0))
    if gate is not None:
        actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in gate.fds]
        actions += [(os.POSIX_SPAWN_OPEN, target, gate.gate, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, target, gate.alive, os.O_WRONLY | os.O_NONBLOCK, 0)]
    if terminal is None:
        actions += [(os.POSIX_SPAWN_DUP2, stdio, 0), (os.POSIX_SPAWN_DUP2, stdio, 1)]
    else:
        actions.append((os.POSIX_SPAWN_DUP2, 0, 1))
    return actions + [(os.POSIX_SPAWN_DUP2, stderr, 2)]


def _strings(items: Sequence[str]) -> ctypes.Array:
    """A NULL-terminated char* array, encoded as os.fsencode would; refuses
    what C would cut short, as os.posix_spawn does."""
    if "\0" in "".join(items):
        raise ValueError("embedded null byte")
    return (ctypes.c_char_p * (len(items) + 1))(*[item.encode(_FS_ENCODING, _FS_ERRORS) for item in items], None)


class _Libc:
    """The few <spawn.h> calls wsexec needs, and one attribute set built once.

    Only posix_spawn itself goes through `libc` (CDLL: the GIL is released
    for the call). The quick calls go through `quick` (PyDLL: the GIL is
    kept), so neither thread hands the GIL over for them."""

    def __init__(self, path: str, resetids: bool = False) -> None:
        self.libc = ctypes.CDLL(path, use_errno=True)
        self.quick = quick = ctypes.PyDLL(path, use_errno=True)
        self.libc.posix_spawn.restype = ctypes.c_int
        for name in ("posix_spawn_file_actions_init", "posix_spawn_file_actions_adddup2", "posix_spawn_file_actions_addopen",
                     "posix_spawn_file_actions_addclose",
                     "posix_spawn_file_actions_destroy", "posix_spawnattr_init", "posix_spawnattr_setflags",
                     "posix_spawnattr_setpgroup", "posix_spawnattr_setsigdefault", "posix_spawnattr_setsigmask",
                     "sigemptyset", "sigaddset"):
            getattr(quick, name).restype = ctypes.c_int
        quick.write.restype = ctypes.c_ssize_t
        default = ctypes.create_string_buffer(_SIGSET_SIZE)
        empty = ctypes.create_string_buffer(_SIGSET_SIZE)
        self._check(quick.sigemptyset(default))
        for signum in RESET_SIGNALS:
            self._check(quick.sigaddset(default, int(signum)))
        self._check(quick.sigemptyset(empty))
        # A handler leads its own process group; with --pty, its own session
        # (and so its own group), where its terminal can be the controlling one.
        reset = _RESETIDS if resetids else 0  # --user, --group: see _become()
        self.attr = self._attributes(default, empty, _SETPGROUP | reset)
        self.attr_session = self._attributes(default, empty, _SETSID | reset)

    def _attributes(self, default: ctypes.Array, empty: ctypes.Array, flag: int) -> ctypes.Array:
        quick = self.quick
        attr = ctypes.create_string_buffer(_ATTR_SIZE)
        self._check(quick.posix_spawnattr_init(attr))
        self._check(quick.posix_spawnattr_setsigdefault(attr, default))
        self._check(quick.posix_spawnattr_setsigmask(attr, empty))
        self._check(quick.posix_spawnattr_setpgroup(attr, 0))
        self._check(quick.posix_spawnattr_setflags(attr, ctypes.c_short(flag | _SETSIGDEF | _SETSIGMASK)))
        return attr

    @staticmethod
    def _check(result: int) -> None:
        if result != 0:
            raise OSError(result, os.strerror(result))

    def prepare(self, argv: Sequence[str], env: Mapping[str, str], stdio: int, stderr: int,
                cwd: Optional[str] = None, terminal: Optional[str] = None, gate: Optional[Checkpoint] = None) -> "_Request":
        """Everything the C call needs, built on the loop's thread."""
        if "=" in "".join(env) or "" in env:
            raise ValueError("illegal environment variable name")
        args = _strings(argv)
        envp = _strings([f"{name}={value}" for name, value in env.items()])
        actions = ctypes.create_string_buffer(_ACTIONS_SIZE)
        quick = self.quick
        self._check(quick.posix_spawn_file_actions_init(actions))
        try:
            for action in _stdio_actions(stdio, stderr, terminal, gate):
                if action[0] == os.POSIX_SPAWN_OPEN:
                    _, fd, path, flags, mode = action
                    self._check(quick.posix_spawn_file_actions_addopen(actions, fd, os.fsencode(path), flags, mode))
                elif action[0] == os.POSIX_SPAWN_CLOSE:
                    self._check(quick.posix_spawn_file_actions_addclose(actions, action[1]))
                else:
                    self._check(quick.posix_spawn_file_actions_adddup2(actions, action[1], action[2]))
            if cwd is not None:  # --cwd: glibc 2.29 and later
                addchdir = getattr(quick, "posix_spawn_file_actions_addchdir_np", None)
                if addchdir is None:
                    raise OSError(errno.ENOSYS, "--cwd needs the C library's posix_spawn_file_actions_addchdir_np")
                addchdir.restype = ctypes.c_int
                self._check(addchdir(actions, os.fsencode(cwd)))
        except OSError:
            quick.posix_spawn_file_actions_destroy(actions)
            raise
        return _Request(args[0], actions, args, envp, self.attr if terminal is None else self.attr_session)

    def spawn(self, request: "_Request") -> int:
        """The blocking part, run on the spawner thread; the GIL is released
        for the whole call. Returns the pid, or raises OSError."""
        pid = ctypes.c_int(0)
        try:
            result = self.libc.posix_spawn(ctypes.byref(pid), request.path, request.actions, request.attr,
                                           request.argv, request.envp)
        finally:
            self.quick.posix_spawn_file_actions_destroy(request.actions)
        if result != 0:
            raise OSError(result, os.strerror(result), request.path.decode(errors="replace"))
        return pid.value


class _Request:
    __slots__ = ("path", "actions", "argv", "envp", "attr", "task", "result", "error")

    def __init__(self, path: bytes, actions: ctypes.Array, argv: ctypes.Array, envp: ctypes.Array,
                 attr: ctypes.Array) -> None:
        self.path, self.actions, self.argv, self.envp, self.attr = path, actions, argv, envp, attr
        self.task: Optional[trio.lowlevel.Task] = None  # the connection waiting for it
        self.result = 0
        self.error: Optional[BaseException] = None


def _load_libc(resetids: bool = False) -> Optional[_Libc]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return _Libc(ctypes.util.find_library("c") or "libc.so.6", resetids)
    except (OSError, AttributeError):
        return None


def _become(libc: _Libc, uid: Optional[int], gid: Optional[int]) -> None:
    """On the spawner thread alone: no supplementary groups, and the real
    uid and gid of the handlers; the effective ids stay root's, so the thread
    keeps its privileges. POSIX_SPAWN_RESETIDS then makes each child's
    effective ids its real ones, and exec makes the saved ids the same: a
    handler has the credentials asked for, and no way back."""
    setgroups, setresuid, setresgid = _CREDENTIAL_CALLS[os.uname().machine]
    syscall = libc.quick.syscall
    syscall.restype = ctypes.c_long
    keep = ctypes.c_long(-1)
    for result in (syscall(ctypes.c_long(setgroups), ctypes.c_long(0), None),
                   0 if gid is None else syscall(ctypes.c_long(setresgid), ctypes.c_long(gid), keep, keep),
                   0 if uid is None else syscall(ctypes.c_long(setresuid), ctypes.c_long(uid), keep, keep)):
        if result != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot take the handlers' user and group: {os.strerror(err)}")


class Spawner:
    """Starts handlers: spawn() returns the pid once the child has called exec
    (or raises OSError: not found, not executable, bad interpreter...).

    The spawner thread hands each finished request back through a deque and
    one byte on a pipe, which a trio system task reads to wake the waiting
    connection. The byte is written with the GIL held (it cannot block), so
    the thread gives the GIL up only in posix_spawn and while idle."""

    def __init__(self, use_thread: bool = True, credentials: Tuple[Optional[int], Optional[int]] = (None, None)) -> None:
        """credentials: --user and --group as uid and gid (None: wsexec's),
        taken by the spawner thread (see _become) where it can; otherwise
        self.credentials is (None, None) and the caller must see to them."""
        wanted = credentials != (None, None)
        self._libc = _load_libc(wanted) if use_thread else None
        self.credentials = credentials if wanted and self.can_take_credentials else (None, None)
        self._queue: "queue.SimpleQueue[Optional[_Request]]" = queue.SimpleQueue()
        self._finished: Deque[_Request] = deque()
        self._threads: List[threading.Thread] = []
        self.threads = 1  # how many to start: more while children wait at the --rlimit gate
        self._pipe: Optional[Tuple[int, int]] = None  # (read, write): "some request finished"

    @property
    def threaded(self) -> bool:
        return self._libc is not None

    @property
    def can_take_credentials(self) -> bool:
        return self._libc is not None and os.uname().machine in _CREDENTIAL_CALLS

    def _run(self, libc: _Libc, wake: int) -> None:
        # Signals are for the main thread; this one only spawns.
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        failed: Optional[OSError] = None
        if self.credentials != (None, None):
            try:
                _become(libc, *self.credentials)
            except OSError as e:  # every spawn then fails with it: no handler runs as root by mistake
                failed = e
        while True:
            request = self._queue.get()
            if request is None:
                return
            try:
                if failed is not None:
                    raise failed
                request.result = libc.spawn(request)
            except BaseException as e:  # reported to the waiting connection
                request.error = e
            self._finished.append(request)
            libc.quick.write(wake, b"\0", 1)  # a full pipe is fine: the loop has a byte to wake on

    async def _deliver(self, wake: int) -> None:
        """On the loop: wake each connection whose handler has started."""
        finished = self._finished
        try:
            while True:
                await trio.lowlevel.wait_readable(wake)
                try:
                    os.read(wake, 4096)
                except BlockingIOError:
                    pass
                while finished:
                    request = finished.popleft()
                    assert request.task is not None
                    trio.lowlevel.reschedule(request.task)
        except trio.ClosedResourceError:
            return  # close()

    async def spawn(self, argv: Sequence[str], env: Mapping[str, str], stdio: int, stderr: int,
                    cwd: Optional[str] = None, terminal: Optional[str] = None, gate: Optional[Checkpoint] = None) -> int:
        """stdio is the handler's stdin and stdout, unless terminal (a path,
        --pty) is given: then that is, and the handler leads a new session.
        gate: where the child waits for its --rlimit limits."""
        libc = self._libc
        if libc is None:
            return _inline_spawn(argv, env, stdio, stderr, cwd, terminal, gate)
        request = libc.prepare(argv, env, stdio, stderr, cwd, terminal, gate)
        if not self._threads:
            self._pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            trio.lowlevel.spawn_system_task(self._deliver, self._pipe[0], name="wsexec-spawner-results")
            for _ in range(self.threads):
                thread = threading.Thread(target=self._run, args=(libc, self._pipe[1]), name="wsexec-spawner",
                                          daemon=True)
                thread.start()
                self._threads.append(thread)
        request.task = trio.lowlevel.current_task()
        self._queue.put(request)
        # Not cancellable: the child exists once the call returns, and its
        # caller must own it (a cancellation is delivered right after).
        await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        if request.error is not None:
            raise request.error
        return request.result

    def close(self, waiting: Callable[[], None] = lambda: None) -> None:
        """Stop the threads (nothing is queued once no task waits on them).
        Call it inside the trio run that used spawn(); waiting() is called
        while they finish (the --rlimit gate answers a child there)."""
        if not self._threads or self._pipe is None:
            return
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + 1
        for thread in self._threads:
            while thread.is_alive() and time.monotonic() < deadline:
                waiting()
                thread.join(0.01)
        if any(thread.is_alive() for thread in self._threads):
            return  # stuck in an exec: its pipe stays open for it to write to
        while self._finished:  # finished after the results task last looked
            trio.lowlevel.reschedule(self._finished.popleft().task)  # type: ignore[arg-type]
        read, write = self._pipe
        trio.lowlevel.notify_closing(read)
        os.close(read)
        os.close(write)
        self._threads, self._pipe = [], None
