"""Soak: 5,000 connect/disconnect cycles against one `python -m wsexec`, 20 at
a time, mixing well- and badly-behaved handlers. Afterwards the server has its
baseline fd count, no zombies, no stray processes, and bounded RSS growth."""

from __future__ import annotations

import time
from collections import Counter
from typing import Dict, List

import pytest
import trio

from support.clients import client_frame, raw_upgrade, read_server_frames
from support.procfs import descendants, fd_count, proc_status, zombies
from support.servers import WsexecProcess, drain_output, script
from support.waiting import trio_test, wait_until

CYCLES = 5000
CONCURRENCY = 20
RSS_GROWTH_BOUND_KB = 32 * 1024

# name -> (handler body for /bin/sh, the close code the client must see)
KINDS: Dict[str, tuple] = {
    "echo": ("exec cat\n", 1000),
    "stubborn": ("trap '' INT TERM\necho up\nwhile :; do sleep 0.05; done\n", 1000),
    "forker": ("sleep 1000 &\necho up\nexec cat\n", 1000),
    "deaf": ("echo up\nexec sleep 1000\n", 1000),
    "quitter": ("exit 3\n", 1011),
    "no_newline": ("printf 'no newline'\nexit 0\n", 1000),
    "suicide": ("kill -9 $$\n", 1011),
}
ORDER = sorted(KINDS)


async def cycle(port: int, kind: str) -> int:
    stream, rest = await raw_upgrade(port, f"/{kind}")
    async with stream:
        if kind == "echo":
            await stream.send_all(client_frame(0x1, b"x"))
            while b"\x81\x01x" not in rest:
                rest += await stream.receive_some(4096)
            rest = rest.replace(b"\x81\x01x", b"", 1)
        elif kind in ("stubborn", "forker", "deaf"):
            while b"\x81\x02up" not in rest:
                rest += await stream.receive_some(4096)
            rest = rest.replace(b"\x81\x02up", b"", 1)
        if KINDS[kind][1] == 1000 and kind != "no_newline":
            await stream.send_all(client_frame(0x8, b"\x03\xe8"))  # the client leaves
        frames, code = await read_server_frames(stream, rest)
        if kind == "no_newline":
            assert frames == [(0x1, b"no newline")], frames
    return code  # type: ignore[return-value]


@pytest.mark.slow
@trio_test(300)
async def test_soak_5000_cycles_leave_nothing_behind(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for name, (body, _) in KINDS.items():
        script(tmp_path, name, body, interpreter="/bin/sh")
    with WsexecProcess("--loglevel", "error", "--dir", str(tmp_path)) as server:
        tail = drain_output(server)
        pid = server.proc.pid
        codes: Counter = Counter()
        wrong: List[tuple] = []
        counter = iter(range(CYCLES))

        async def worker() -> None:
            for i in counter:
                kind = ORDER[i % len(ORDER)]
                with trio.fail_after(10):
                    code = await cycle(server.port, kind)
                codes[kind, code] += 1
                if code != KINDS[kind][1]:
                    wrong.append((i, kind, code))

        # warm-up, then the baseline
        for kind in ORDER:
            await cycle(server.port, kind)
        await wait_until(lambda: not descendants(pid), 5, "no handler left from the warm-up")
        base_fds, base_rss = fd_count(pid), proc_status(pid, "VmRSS")

        start = time.monotonic()
        with trio.fail_after(240):
            async with trio.open_nursery() as nursery:
                for _ in range(CONCURRENCY):
                    nursery.start_soon(worker)
        took = time.monotonic() - start

        await wait_until(lambda: not descendants(pid) and fd_count(pid) <= base_fds, 5,
                         lambda: f"no handler left ({descendants(pid)}), fds back to {base_fds} ({fd_count(pid)})")
        fds, rss = fd_count(pid), proc_status(pid, "VmRSS")
        print(
            f"soak: {CYCLES} cycles in {took:.1f} s ({CYCLES / took:.0f}/s), fds {base_fds} -> {fds}, "
            f"RSS {base_rss} -> {rss} kB (+{rss - base_rss} kB), codes {dict(codes)}"
        )
        assert not wrong, wrong[:10]
        assert sum(codes.values()) == CYCLES
        assert fds == base_fds
        assert zombies(pid) == [] and descendants(pid) == []
        assert rss - base_rss < RSS_GROWTH_BOUND_KB, (base_rss, rss)
        assert server.proc.poll() is None, tail()[-2000:]
