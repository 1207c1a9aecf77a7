"""µs per spawn for each way of giving a handler credentials and resource
limits (wsexec/proc/launch.py says which wsexec takes and why).

    python3 bench/spawn_paths.py [--spawns 300] [--ballast-mib 60]

Each candidate starts /bin/true SPAWNS times from a thread (as wsexec's
spawner thread does), in a process holding BALLAST MiB of Python objects
(a fork copies page tables in proportion). Printed per spawn: medians of
the call on the thread (until the child has exec'd) and of the child's CPU
(through every exec it makes), and this process's own CPU (a fork, and the
answers at the gate, are paid here). Needs root (setuid, fanotify) and
util-linux's prlimit and setpriv.
"""

from __future__ import annotations

import _posixsubprocess  # type: ignore[import-not-found]
import argparse
import os
import resource
import select
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wsexec.proc import spawn as sp  # noqa: E402
from wsexec.proc.gate import Gate  # noqa: E402
from wsexec.proc.launch import parse_limits  # noqa: E402

TRUE = "/bin/true"
ENV = {"PATH": "/usr/bin:/bin"}
PRLIMIT = ["/usr/bin/prlimit", "--nofile=1000:1000", "--cpu=10:11", "--"]
SETPRIV = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
ULIMIT = ["/bin/sh", "-c", 'ulimit -n 1000; ulimit -t 10; exec "$0" "$@"']


def posix_spawn(libc: "sp._Libc", gate: "sp.Checkpoint | None" = None) -> Callable[[List[str]], int]:
    def run(argv: List[str]) -> int:
        r, w = os.pipe()
        try:
            return libc.spawn(libc.prepare(argv, ENV, r, w, gate=gate))
        finally:
            os.close(r)
            os.close(w)
    return run


def fork_exec(uid: int = -1, gid: int = -1, groups=None, preexec=None) -> Callable[[List[str]], int]:
    """subprocess's C path; a fork (not a vfork) once ids or preexec_fn are given."""
    def run(argv: List[str]) -> int:
        r, w = os.pipe()
        err_read, err_write = os.pipe2(os.O_CLOEXEC)
        try:
            pid = _posixsubprocess.fork_exec(
                argv, [os.fsencode(argv[0])], False, (), None, [b"PATH=/usr/bin:/bin"], r, -1, -1, w, -1, w,
                err_read, err_write, True, False, 0, gid, groups, uid, -1, preexec, True)
            os.close(err_write)
            err_write = -1
            assert not os.read(err_read, 50000), "exec failed"
            return pid
        finally:
            for fd in (r, w, err_read, err_write):
                if fd >= 0:
                    os.close(fd)
    return run


def limits_in_child() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1000, 1000))
    resource.setrlimit(resource.RLIMIT_CPU, (10, 11))


def measure(name: str, start: Callable[[List[str]], int], argv: List[str], spawns: int, gate: Gate,
            credentials: Tuple = ()) -> None:
    calls: List[float] = []
    child_cpu: List[float] = []
    own: List[float] = []

    def work() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        if credentials:
            sp._become(*credentials)  # this thread alone, as wsexec's spawner thread
        before = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(spawns):
            began = time.perf_counter()
            pid = start(argv)
            calls.append(time.perf_counter() - began)
            _, status, usage = os.wait4(pid, 0)
            assert status == 0, (name, status)
            child_cpu.append(usage.ru_utime + usage.ru_stime)
        after = resource.getrusage(resource.RUSAGE_SELF)
        own.append((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / spawns)

    thread = threading.Thread(target=work)
    thread.start()
    while thread.is_alive():  # the main thread answers the gate, as wsexec's event loop does
        if select.select([gate.fd], [], [], 0.01)[0]:
            gate.answer()
    thread.join()
    print(f"| {name} | {statistics.median(calls) * 1e6:.0f} | {statistics.median(child_cpu) * 1e6:.0f} "
          f"| {own[0] * 1e6:.0f} |", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spawns", type=int, default=300)
    ap.add_argument("--ballast-mib", type=int, default=60)
    args = ap.parse_args()
    if os.geteuid() != 0:
        ap.error("run as root: the candidates change user")
    ballast = [bytes(1000) + str(i).encode() for i in range(args.ballast_mib * 1000)]
    plain, with_ids = sp._load_libc(), sp._load_libc(resetids=True)
    assert plain is not None and with_ids is not None
    gate = Gate(parse_limits(["nofile=1000", "cpu=10"]))
    candidates: Dict[str, Tuple] = {
        "posix_spawn (plain spawns, today)": (posix_spawn(plain), [TRUE]),
        "posix_spawn + RESETIDS, ids taken by the thread (--user)": (posix_spawn(with_ids), [TRUE],
                                                                     (with_ids, 65534, 65534)),
        "posix_spawn, limits set at the gate (--rlimit)": (posix_spawn(plain, gate.checkpoint), [TRUE]),
        "posix_spawn prlimit (--rlimit without the gate)": (posix_spawn(plain), PRLIMIT + [TRUE]),
        "posix_spawn setpriv": (posix_spawn(plain), SETPRIV + [TRUE]),
        "posix_spawn prlimit setpriv": (posix_spawn(plain), PRLIMIT + SETPRIV + [TRUE]),
        "posix_spawn sh -c ulimit": (posix_spawn(plain), ULIMIT + [TRUE]),
        "fork_exec, vfork": (fork_exec(), [TRUE]),
        "fork_exec uid/gid/groups (fork)": (fork_exec(65534, 65534, []), [TRUE]),
        "fork_exec preexec_fn setrlimit (fork)": (fork_exec(preexec=limits_in_child), [TRUE]),
    }
    print(f"{args.spawns} spawns each, {len(ballast) // 1000} MiB of ballast, load {os.getloadavg()[0]:.1f}\n")
    print("| candidate | call on the thread µs | child CPU µs | parent CPU µs |")
    print("|---|---:|---:|---:|")
    for name, (start, argv, *credentials) in candidates.items():
        measure(name, start, argv, args.spawns, gate, tuple(credentials[0]) if credentials else ())
    gate.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
