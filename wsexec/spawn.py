"""Starting a handler process without stalling the event loop.

posix_spawn is a vfork: the caller is suspended until the child has called
exec, which takes as long as the kernel needs to open and map the program
(longer on slow storage, and on a busy machine until the caller is scheduled
again: 0.1-1.4 ms each under the benchmark's connection-rate load). Python's
os.posix_spawn also holds the GIL for all of it. So the C library's
posix_spawn is called through ctypes, which releases the GIL, from one
spawner thread; the loop goes on serving other connections meanwhile.

Where that is not available (not Linux, no C library found) spawns run
inline with os.posix_spawn, as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import queue
import signal
import sys
import threading
from typing import Callable, Mapping, Optional, Sequence

import trio

# Signals Python or trio may have set to ignored or handled; a handler starts
# with every signal at its default and none blocked.
RESET_SIGNALS = (
    signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT,
)

# <spawn.h> flags, the same in glibc and musl.
_SETPGROUP, _SETSIGDEF, _SETSIGMASK = 0x02, 0x04, 0x08
# Opaque C types, sized generously (glibc: 80, 336 and 128 bytes).
_ACTIONS_SIZE, _ATTR_SIZE, _SIGSET_SIZE = 256, 1024, 256
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def _inline_spawn(argv: Sequence[str], env: Mapping[str, str], stdio: int, stderr: int) -> int:
    return os.posix_spawn(
        argv[0],
        list(argv),
        env,
        file_actions=[
            (os.POSIX_SPAWN_DUP2, stdio, 0),
            (os.POSIX_SPAWN_DUP2, stdio, 1),
            (os.POSIX_SPAWN_DUP2, stderr, 2),
        ],
        setpgroup=0,
        setsigdef=RESET_SIGNALS,
        setsigmask=(),
    )


def _strings(items: Sequence[str]) -> ctypes.Array:
    """A NULL-terminated char* array, encoded as os.fsencode would; refuses
    what C would cut short, as os.posix_spawn does."""
    if "\0" in "".join(items):
        raise ValueError("embedded null byte")
    return (ctypes.c_char_p * (len(items) + 1))(*[item.encode(_FS_ENCODING, _FS_ERRORS) for item in items], None)


class _Libc:
    """The few <spawn.h> calls wsexec needs, and one attribute set built once."""

    def __init__(self, libc: ctypes.CDLL) -> None:
        self.libc = libc
        for name in ("posix_spawn", "posix_spawn_file_actions_init", "posix_spawn_file_actions_adddup2",
                     "posix_spawn_file_actions_destroy", "posix_spawnattr_init", "posix_spawnattr_setflags",
                     "posix_spawnattr_setpgroup", "posix_spawnattr_setsigdefault", "posix_spawnattr_setsigmask",
                     "sigemptyset", "sigaddset"):
            getattr(libc, name).restype = ctypes.c_int
        self.attr = ctypes.create_string_buffer(_ATTR_SIZE)
        default = ctypes.create_string_buffer(_SIGSET_SIZE)
        empty = ctypes.create_string_buffer(_SIGSET_SIZE)
        self._check(libc.posix_spawnattr_init(self.attr))
        self._check(libc.sigemptyset(default))
        for signum in RESET_SIGNALS:
            self._check(libc.sigaddset(default, int(signum)))
        self._check(libc.sigemptyset(empty))
        self._check(libc.posix_spawnattr_setsigdefault(self.attr, default))
        self._check(libc.posix_spawnattr_setsigmask(self.attr, empty))
        self._check(libc.posix_spawnattr_setpgroup(self.attr, 0))
        self._check(libc.posix_spawnattr_setflags(self.attr, ctypes.c_short(_SETPGROUP | _SETSIGDEF | _SETSIGMASK)))

    @staticmethod
    def _check(result: int) -> None:
        if result != 0:
            raise OSError(result, os.strerror(result))

    def prepare(self, argv: Sequence[str], env: Mapping[str, str], stdio: int, stderr: int) -> "_Request":
        """Everything the C call needs, built on the loop's thread."""
        if "=" in "".join(env) or "" in env:
            raise ValueError("illegal environment variable name")
        args = _strings(argv)
        envp = _strings([f"{name}={value}" for name, value in env.items()])
        actions = ctypes.create_string_buffer(_ACTIONS_SIZE)
        libc = self.libc
        self._check(libc.posix_spawn_file_actions_init(actions))
        try:
            for fd, target in ((stdio, 0), (stdio, 1), (stderr, 2)):
                self._check(libc.posix_spawn_file_actions_adddup2(actions, fd, target))
        except OSError:
            libc.posix_spawn_file_actions_destroy(actions)
            raise
        return _Request(args[0], actions, args, envp)

    def spawn(self, request: "_Request") -> int:
        """The blocking part, run on the spawner thread; the GIL is released
        for the whole call. Returns the pid, or raises OSError."""
        pid = ctypes.c_int(0)
        libc = self.libc
        try:
            result = libc.posix_spawn(ctypes.byref(pid), request.path, request.actions, self.attr,
                                      request.argv, request.envp)
        finally:
            libc.posix_spawn_file_actions_destroy(request.actions)
        if result != 0:
            raise OSError(result, os.strerror(result), request.path.decode(errors="replace"))
        return pid.value


class _Request:
    __slots__ = ("path", "actions", "argv", "envp", "done", "result", "error")

    def __init__(self, path: bytes, actions: ctypes.Array, argv: ctypes.Array, envp: ctypes.Array) -> None:
        self.path, self.actions, self.argv, self.envp = path, actions, argv, envp
        self.done: Optional[Callable[["_Request"], None]] = None
        self.result = 0
        self.error: Optional[BaseException] = None


def _load_libc() -> Optional[_Libc]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return _Libc(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True))
    except (OSError, AttributeError):
        return None


class Spawner:
    """Starts handlers: spawn() returns the pid once the child has called exec
    (or raises OSError: not found, not executable, bad interpreter...)."""

    def __init__(self, use_thread: bool = True) -> None:
        self._libc = _load_libc() if use_thread else None
        self._queue: "queue.SimpleQueue[Optional[_Request]]" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None

    @property
    def threaded(self) -> bool:
        return self._libc is not None

    def _run(self) -> None:
        # Signals are for the main thread; this one only spawns.
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        libc = self._libc
        assert libc is not None
        while True:
            request = self._queue.get()
            if request is None:
                return
            try:
                request.result = libc.spawn(request)
            except BaseException as e:  # reported to the waiting connection
                request.error = e
            try:
                assert request.done is not None
                request.done(request)
            except BaseException:  # the thread must outlive any one request
                pass

    async def spawn(self, argv: Sequence[str], env: Mapping[str, str], stdio: int, stderr: int) -> int:
        if self._libc is None:
            return _inline_spawn(argv, env, stdio, stderr)
        request = self._libc.prepare(argv, env, stdio, stderr)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="wsexec-spawner", daemon=True)
            self._thread.start()
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()

        def done(finished: _Request) -> None:  # on the spawner thread
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task)
            except trio.RunFinishedError:
                pass  # the server is gone; so is the child's reaper

        request.done = done
        self._queue.put(request)
        # Not cancellable: the child exists once the call returns, and its
        # caller must own it (a cancellation is delivered right after).
        await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        if request.error is not None:
            raise request.error
        return request.result

    def close(self) -> None:
        """Let the thread finish (it has nothing queued once no task waits on it)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(1)
            self._thread = None
