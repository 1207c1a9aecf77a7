"""--rlimit without an exec: each handler waits at a gate while wsexec sets
its limits.

A resource limit belongs to the whole process, and posix_spawn has no way to
set one; prlimit(2) can set another process's, but only before the handler's
first instruction will do. So the spawn's first file action opens a gate
file, which is watched by a fanotify permission mark: the child's open()
waits in the kernel until wsexec answers, and the event names the child's
pid. wsexec's event loop then sets the limits with prlimit(2) and lets it
through; the spawn goes on (its other file actions, exec). Nothing is exec'd
in between, so a limited handler costs about what a plain one does.

Fanotify permission events need CAP_SYS_ADMIN, and prlimit(2) on a child
that already has the --user ids (the spawner thread's, wsexec/proc/spawn.py)
needs CAP_SYS_RESOURCE: without them (wsexec not root, a container that
drops them, a kernel without permission events) the handlers are started
through util-linux's prlimit instead (wsexec/proc/launch.py). Anything that
goes wrong at the gate denies the open, so the spawn fails ("cannot start
handler"): a handler never runs without its limits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import resource
import shutil
import struct
import tempfile
from typing import Sequence, Tuple

import trio

from .launch import INFINITY, Limit
from .spawn import Checkpoint

logger = logging.getLogger(__name__)

# <sys/fanotify.h>
_CLOEXEC, _NONBLOCK, _CLASS_CONTENT, _OPEN_PERM, _MARK_ADD = 0x1, 0x2, 0x4, 0x10000, 0x1
_ALLOW, _DENY = 0x1, 0x2
_AT_FDCWD = -100
_EVENT = struct.Struct("IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_RESPONSE = struct.Struct("iI")  # fd, response


CAP_SYS_RESOURCE = 24


def capable(bit: int) -> bool:
    """Whether this thread's effective capabilities include this one."""
    try:
        with open("/proc/thread-self/status") as f:
            effective = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return False
    return bool(effective >> bit & 1)


def _resource(name: str) -> int:
    return getattr(resource, f"RLIMIT_{name.upper()}")


class Gate:
    """The gate for one server's handlers; `path` is what a spawn opens.

    serve() answers on the event loop: a child at the gate waits for the
    loop's next turn, and no other thread has to take the GIL for it (a
    thread of its own cost ~300 µs of CPU per spawn in S4, mostly in
    handing the GIL over). So the spawner runs more than one thread
    (wsexec/proc/spawn.py) and several children can wait at once."""

    def __init__(self, limits: Sequence[Limit]) -> None:
        self.limits: Tuple[Tuple[int, Tuple[int, int]], ...] = tuple(
            (_resource(lim.name), tuple(resource.RLIM_INFINITY if v == INFINITY else v for v in (lim.soft, lim.hard)))
            for lim in limits)  # type: ignore[misc]
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = libc.fanotify_init(_CLASS_CONTENT | _CLOEXEC | _NONBLOCK, os.O_RDONLY | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify: {os.strerror(err)}")
        self.fd = fd
        self.directory = ""
        self._alive = -1
        try:
            # A directory others may pass through but not list (handlers run as
            # --user reach the gate by its random name): in /run where there is
            # one (no tmp cleaner ages it out), else in the temporary directory.
            place = "/run" if os.access("/run", os.W_OK) else None
            self.directory = tempfile.mkdtemp(prefix="wsexec-gate-", dir=place)
            os.chmod(self.directory, 0o711)
            self.path = os.path.join(self.directory, "gate")
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o444))
            if libc.fanotify_mark(fd, _MARK_ADD, ctypes.c_uint64(_OPEN_PERM), _AT_FDCWD, os.fsencode(self.path)) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"fanotify_mark: {os.strerror(err)}")
            # Should wsexec die with a child at the gate, the kernel lets the
            # child through once nothing holds the fanotify descriptor (so
            # children close their copies first): it then finds no reader on
            # this pipe, and its spawn fails instead of running unlimited.
            alive = os.path.join(self.directory, "alive")
            os.mkfifo(alive)
            os.chmod(alive, 0o222)
            self._alive = os.open(alive, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            self._remove()
            raise
        self.checkpoint = Checkpoint(self.path, alive, (self.fd, self._alive))

    async def serve(self) -> None:
        """Answer each child as it reaches the gate, until cancelled."""
        while True:
            await trio.lowlevel.wait_readable(self.fd)
            self.answer()

    def answer(self) -> None:
        """Answer every child waiting at the gate now; never blocks."""
        while True:
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                return
            except OSError as e:  # the loop must go on: a child waits at the gate until answered
                logger.error("--rlimit gate: %s", e)
                return
            offset = 0
            while offset + _EVENT.size <= len(data):
                length, _, _, _, _, event_fd, pid = _EVENT.unpack_from(data, offset)
                offset += max(length, _EVENT.size)
                self._answer(event_fd, pid)

    def _answer(self, event_fd: int, pid: int) -> None:
        answer = _DENY
        try:
            if self._ours(pid):
                for which, values in self.limits:
                    resource.prlimit(pid, which, values)
                answer = _ALLOW
        except (OSError, ValueError) as e:  # denied: that spawn fails, and no handler runs without its limits
            logger.error("--rlimit gate: cannot set the limits of pid %d: %s", pid, e)
        finally:
            try:
                os.write(self.fd, _RESPONSE.pack(event_fd, answer))
            finally:
                os.close(event_fd)

    @staticmethod
    def _ours(pid: int) -> bool:
        """Only wsexec's own children pass (anyone else who opens the gate
        is refused: prlimit as root could raise their hard limits). One
        system call: waitid() on a pid that is not our child fails; on ours
        it neither waits (WNOHANG) nor reaps (WNOWAIT)."""
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return True

    def close(self) -> None:
        """After the last spawn: a child still at the gate would be let
        through without its limits once the descriptor is closed, so the
        spawner's threads are stopped first (answering as they finish)."""
        if self.fd >= 0:
            self.answer()
        self._remove()

    def _remove(self) -> None:
        if self._alive >= 0:
            os.close(self._alive)
            self._alive = -1
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
