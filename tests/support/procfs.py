"""What /proc says about processes: their trees, states, fds, memory and CPU."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List


def descendants(pid: int) -> List[int]:
    """PIDs of every live process below pid (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def zombies(pid: int) -> List[int]:
    """Children of pid that are zombies (exited, not reaped)."""
    out = []
    for child in descendants(pid):
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if state[0] == "Z" and int(state[1]) == pid:
            out.append(child)
    return out


def open_fds() -> int:
    """How many fds this (the test) process has open."""
    return len(os.listdir("/proc/self/fd"))


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_status(pid: int, field: str) -> int:
    """A numeric field of /proc/PID/status, e.g. 'VmRSS' (kB) or 'Threads'."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
