"""--user, --group and --rlimit: whom a handler runs as and what it may use.

posix_spawn can set neither credentials nor resource limits, and both must
be in place before the handler's first instruction.

Credentials cost nothing per spawn: the spawner thread takes the handlers'
real uid and gid and drops the supplementary groups with raw system calls
(Linux credentials belong to a thread; the C library's wrappers would change
every thread's), and POSIX_SPAWN_RESETIDS gives each child those ids as its
effective ones (wsexec/proc/spawn.py). Where that thread cannot do it, the
handler is started through util-linux's `setpriv` instead.

Resource limits belong to the whole process: each child waits at a gate
while wsexec sets them with prlimit(2) (wsexec/proc/gate.py), no exec in
between. Where that cannot be had, the handler is started through
util-linux's `prlimit --nofile=64:64 -- handler`, which sets them on itself
and execs the handler: one exec more, in the child (0.5-0.8 ms of CPU
measured), nothing on the event loop. Setting them in wsexec around the
spawn is no choice: every other thread would run under them meanwhile
(cpu=1 would kill wsexec at once, nofile=64 would refuse its next client,
as=... would fail its allocations). A fork (subprocess's way) holds the GIL
while the page tables are copied and costs more in the child. Plain spawns
take none of this.

The parsing is pure and table-tested (tests/test_launch.py).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

INFINITY = -1  # RLIM_INFINITY, written 'unlimited'

# name -> what its value counts; prlimit takes the same names as options.
LIMITS = {
    "cpu": "seconds",  # SIGXCPU at the soft limit, SIGKILL at the hard one
    "as": "bytes",
    "data": "bytes",
    "fsize": "bytes",
    "core": "bytes",
    "nofile": "count",
    "nproc": "count",
}


UNITS = {"seconds": "whole seconds", "bytes": "bytes, with an optional K, M or G", "count": "a count"}


class Limit(NamedTuple):
    name: str
    soft: int  # INFINITY: no limit
    hard: int


def parse_number(text: str, unit: str) -> int:
    """A count or seconds, or bytes with an optional K, M or G (1024-based)."""
    text = text.strip()
    if text.lower() in ("unlimited", "infinity"):
        return INFINITY
    scale = 1
    if unit == "bytes" and text[-1:].upper() in ("K", "M", "G"):
        scale = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}[text[-1].upper()]
        text = text[:-1]
    if not text.isdigit():
        raise ValueError(f"not a number: {text!r} ({UNITS[unit]}, or unlimited)")
    return int(text) * scale


def parse_limit(text: str) -> Limit:
    """'nofile=64', 'nofile=64:128', 'as=512M', 'cpu=10' -> Limit.

    One value is both the soft and the hard limit, except for cpu: there
    the hard limit is a second later, so the handler gets SIGXCPU (which it
    may catch) and SIGKILL only if it goes on. ValueError says what is wrong."""
    name, sep, value = text.partition("=")
    name = name.strip().lower()
    if not sep:
        raise ValueError(f"--rlimit needs NAME=VALUE, not {text!r}")
    if name not in LIMITS:
        raise ValueError(f"--rlimit {text!r}: unknown limit {name!r} (one of {', '.join(LIMITS)})")
    unit = LIMITS[name]
    soft_text, colon, hard_text = value.partition(":")
    try:
        soft = parse_number(soft_text, unit)
        if colon:
            hard = parse_number(hard_text, unit)
        else:
            hard = soft + 1 if name == "cpu" and soft != INFINITY else soft
    except ValueError as e:
        raise ValueError(f"--rlimit {text!r}: {e}") from None
    if hard != INFINITY and (soft == INFINITY or soft > hard):
        raise ValueError(f"--rlimit {text!r}: the soft limit is above the hard one")
    return Limit(name, soft, hard)


def parse_limits(texts: Sequence[str]) -> Tuple[Limit, ...]:
    """Every --rlimit, the last one of a name winning."""
    chosen = {}
    for text in texts:
        limit = parse_limit(text)
        chosen[limit.name] = limit
    return tuple(chosen.values())


def _value(number: int) -> str:
    return "unlimited" if number == INFINITY else str(number)


def wrapper(limits: Sequence[Limit], uid: Optional[int], gid: Optional[int],
            prlimit: str = "prlimit", setpriv: str = "setpriv") -> Tuple[str, ...]:
    """The argv put before a handler's: () when nothing is asked (plain
    spawns stay as fast as ever). Limits first, then (where the spawner
    thread cannot take them) the credentials, supplementary groups dropped."""
    argv: Tuple[str, ...] = ()
    if limits:
        argv += (prlimit, *(f"--{lim.name}={_value(lim.soft)}:{_value(lim.hard)}" for lim in limits), "--")
    if uid is not None or gid is not None:
        argv += (setpriv, *(() if uid is None else (f"--reuid={uid}",)),
                 *(() if gid is None else (f"--regid={gid}",)), "--clear-groups", "--")
    return argv
