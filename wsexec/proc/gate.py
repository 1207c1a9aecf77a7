"""--rlimit without an exec: each handler waits at a gate while wsexec sets
its limits.

A resource limit belongs to the whole process, and posix_spawn has no way to
set one; prlimit(2) can set another process's, but only before the handler's
first instruction will do. So the spawn's first file action opens a gate
file, which is watched by a fanotify permission mark: the child's open()
waits in the kernel until wsexec answers, and the event names the child's
pid. This module's thread then sets the limits with prlimit(2) and lets it
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
import select
import shutil
import struct
import tempfile
import threading
from typing import Optional, Sequence, Tuple

from .launch import INFINITY, Limit

logger = logging.getLogger(__name__)

# <sys/fanotify.h>
_CLOEXEC, _CLASS_CONTENT, _OPEN_PERM, _MARK_ADD = 0x1, 0x4, 0x10000, 0x1
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
    """The gate for one server's handlers; `path` is what a spawn opens."""

    def __init__(self, limits: Sequence[Limit]) -> None:
        self.limits: Tuple[Tuple[int, Tuple[int, int]], ...] = tuple(
            (_resource(lim.name), tuple(resource.RLIM_INFINITY if v == INFINITY else v for v in (lim.soft, lim.hard)))
            for lim in limits)  # type: ignore[misc]
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = libc.fanotify_init(_CLASS_CONTENT | _CLOEXEC, os.O_RDONLY | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify: {os.strerror(err)}")
        self.fd = fd
        self.directory = ""
        # A directory others may pass through but not list (handlers run as
        # --user reach the gate by its random name), and a file they may read.
        self.directory = tempfile.mkdtemp(prefix="wsexec-gate-")
        try:
            os.chmod(self.directory, 0o711)
            self.path = os.path.join(self.directory, "gate")
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o444))
            if libc.fanotify_mark(fd, _MARK_ADD, ctypes.c_uint64(_OPEN_PERM), _AT_FDCWD, os.fsencode(self.path)) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"fanotify_mark: {os.strerror(err)}")
            self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC)
        except OSError:
            self._remove()
            raise
        self._thread: Optional[threading.Thread] = threading.Thread(target=self._run, name="wsexec-gate", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._wake_read in ready:
                return
            try:
                data = os.read(self.fd, 4096)
            except OSError as e:  # the thread must go on: a child waits at the gate until answered
                logger.error("--rlimit gate: %s", e)
                continue
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
        is refused)."""
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2:].split()[1]) == os.getpid()

    def close(self) -> None:
        """After the last spawn (a child still at the gate would be let through
        without its limits once the fanotify descriptor is closed)."""
        if self._thread is not None:
            os.write(self._wake_write, b"\0")
            self._thread.join(5)
            self._thread = None
            os.close(self._wake_read)
            os.close(self._wake_write)
        self._remove()

    def _remove(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
