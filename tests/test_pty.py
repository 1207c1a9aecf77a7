"""--pty: unmodified programs that buffer their output when it is not a
terminal send every line at once; binary mode, long lines, the handler's
session and controlling terminal, the client leaving (no handler left
behind), and running out of terminals (503, not a hang)."""

from __future__ import annotations

import os
import resource
import statistics
import time

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from support.clients import collect, raw_http, upgrade_request
from support.procfs import alive
from support.servers import PY, WsexecProcess, drain_output, make_config, script, serving
from support.waiting import trio_test, wait_gone, wait_slots_free, wait_until

# Filters every Debian system has, unmodified: what they make of "x1".
FILTERS = {
    "grep": (("grep", "x"), "x1"),
    "tr": (("tr", "a-z", "A-Z"), "X1"),
    "awk": (("awk", "{ print toupper($0) }"), "X1"),  # mawk on Debian
    "sed": (("sed", "s/x/y/"), "y1"),
    "perl": (("perl", "-pe", "s/x/z/"), "z1"),
    "python3": ((PY, "-c", "import sys\nfor line in sys.stdin: print(line.strip().upper())"), "X1"),
}
# Which of them keep their output in a buffer when stdout is not a terminal
# (README "Buffered output" lists them).
BUFFERING = ("grep", "tr", "awk", "sed", "perl", "python3")
TICK = """
import time
for _ in range(4):
    print(f"{time.time():.6f}")
    time.sleep(1)
"""


async def round_trips(url: str, expect: str, count: int = 3) -> list:
    """Seconds from each send of "x1" to its answer (after a first one that
    also waits for the program to start)."""
    delays = []
    async with open_websocket_url(url) as ws:
        for i in range(count + 1):
            sent = time.monotonic()
            await ws.send_message("x1")
            with trio.fail_after(10):
                assert await ws.get_message() == expect
            if i:
                delays.append(time.monotonic() - sent)
    return delays


@pytest.mark.parametrize("name", sorted(FILTERS))
@trio_test(60)
async def test_each_line_reaches_the_client_at_once_under_pty(name):
    argv, expect = FILTERS[name]
    async with serving(make_config(*argv, pty=True)) as (state, url):
        delays = await round_trips(url + "/", expect)
        await wait_slots_free(state, 10)
    # 100 ms each on a quiet machine (typically 1-3 ms); the median keeps a
    # shared, loaded machine from failing it for one late wake-up.
    assert statistics.median(delays) < 0.1 and max(delays) < 1, delays


@pytest.mark.parametrize("name", BUFFERING)
@trio_test(60)
async def test_without_pty_these_programs_keep_their_output(name):
    argv, _ = FILTERS[name]
    async with serving(make_config(*argv)) as (state, url):
        async with open_websocket_url(url + "/") as ws:
            await ws.send_message("x1")
            with trio.move_on_after(1.5) as waited:
                got = await ws.get_message()
            assert waited.cancelled_caught, f"{name} answered at once without --pty: {got!r}"


@trio_test(30)
async def test_a_python_script_printing_a_line_a_second(tmp_path):
    handler = script(tmp_path, "tick.py", TICK)
    async with serving(make_config(handler, pty=True)) as (state, url):
        late = []
        async with open_websocket_url(url + "/") as ws:
            for _ in range(3):
                with trio.fail_after(5):
                    printed = float(await ws.get_message())
                late.append(time.time() - printed)
    assert statistics.median(late) < 0.1 and max(late) < 1, late
    async with serving(make_config(handler)) as (state, url):  # without --pty: all at the end
        async with open_websocket_url(url + "/") as ws:
            with trio.move_on_after(2) as waited:
                await ws.get_message()
            assert waited.cancelled_caught


@trio_test(30)
async def test_binary_mode_passes_every_byte():
    data = bytes(range(256)) * 4  # ^C, ^D, ^S, CR, NUL...: raw mode leaves all of them alone
    async with serving(make_config("cat", pty=True, binary=True)) as (state, url):
        async with open_websocket_url(url + "/") as ws:
            await ws.send_message(data)
            got = b""
            with trio.fail_after(10):
                while len(got) < len(data):
                    got += await ws.get_message()
    assert got == data


@trio_test(30)
async def test_long_lines_and_carriage_returns_pass_unchanged():
    line = "a" * 20_000 + "\rb"  # a terminal's canonical mode would cut at 4,095 and turn CR into LF
    async with serving(make_config("cat", pty=True)) as (state, url):
        async with open_websocket_url(url + "/") as ws:
            await ws.send_message(line)
            await ws.send_message("short")
            with trio.fail_after(10):
                messages = [await ws.get_message(), await ws.get_message()]
    assert messages == [line, "short"], [len(m) for m in messages]


SESSION = """
import os, sys
print(os.getsid(0) == os.getpid(), os.getpgrp() == os.getpid(), os.tcgetpgrp(0) == os.getpgrp(),
      os.isatty(0), os.isatty(1), os.isatty(2), os.ttyname(0) == os.ttyname(1))
with open("/dev/tty", "w") as tty:  # its controlling terminal
    tty.write("via /dev/tty\\n")
"""


@trio_test(30)
async def test_the_handler_leads_a_session_with_the_terminal_as_its_own(tmp_path):
    handler = script(tmp_path, "session.py", SESSION)
    async with serving(make_config(handler, pty=True)) as (state, url):
        messages, code, _ = await collect(url + "/")
    assert messages == ["True True True True True False True", "via /dev/tty"], messages
    assert code == 1000


@pytest.mark.parametrize("options, size", [({}, "24 80"), ({"ptysize": (132, 50)}, "50 132")])
@trio_test(20)
async def test_the_terminal_has_a_window_size(tmp_path, options, size):
    """stty reads the window from the terminal (TIOCGWINSZ), as ps and ls do."""
    handler = script(tmp_path, "size.sh", "#!/bin/sh\nstty size\n", "/bin/sh")
    async with serving(make_config(handler, pty=True, **options)) as (state, url):
        assert await collect(url + "/") == ([size], 1000, "")


@pytest.mark.parametrize("value", ["80", "80x", "x24", "0x24", "80x65536", "eightyx24", "-80x24"])
def test_a_bad_ptysize_is_a_usage_error(value):
    import subprocess

    from support.servers import ROOT

    result = subprocess.run([PY, "-m", "wsexec", "--port", "0", "--pty", "--ptysize", value, "cat"], cwd=ROOT,
                            capture_output=True, timeout=20)
    assert result.returncode == 2 and b"not a window size" in result.stderr, result.stderr


PID_THEN_WAIT = {
    "sighup": "import os, time\nprint(os.getpid(), flush=True)\nwhile True: time.sleep(0.2)\n",
    "ignores sighup, reads stdin": "import os, signal, sys\nsignal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
                                   "print(os.getpid(), flush=True)\nsys.stdin.read()\n",
    "ignores sighup and stdin": "import os, signal, time\nsignal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
                                "print(os.getpid(), flush=True)\nwhile True: time.sleep(0.2)\n",
}


@pytest.mark.parametrize("kind", sorted(PID_THEN_WAIT))
@trio_test(30)
async def test_the_client_leaving_ends_the_handler(tmp_path, kind):
    """The hang-up (SIGHUP, end-of-file on stdin), then the ladder: no handler is left behind."""
    handler = script(tmp_path, "h.py", PID_THEN_WAIT[kind])
    async with serving(make_config(handler, pty=True)) as (state, url):
        async with open_websocket_url(url + "/") as ws:
            pid = int(await ws.get_message())
            assert alive(pid)
        await wait_gone(pid, timeout=5)
        await wait_slots_free(state, 5)
        assert not state.handlers.children


@trio_test(30)
async def test_the_handler_exiting_ends_the_connection_with_its_status(tmp_path):
    handler = script(tmp_path, "h.py", "print('bye')\nraise SystemExit(3)\n")
    async with serving(make_config(handler, pty=True)) as (state, url):
        messages, code, reason = await collect(url + "/")
    assert (messages, code, reason) == (["bye"], 1011, "exit status 3")


async def echo_once(url: str, text: str) -> str:
    with trio.fail_after(10):
        async with open_websocket_url(url) as ws:
            await ws.send_message(text)
            return await ws.get_message()


def free_slots(pid: int, limit: int) -> int:
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return sum(1 for fd in range(limit) if fd not in used)


def test_out_of_terminals_is_a_503_not_a_hang():
    """openpty failing (here EMFILE: wsexec's descriptor limit lowered so that
    accepting the client takes the last one) refuses the upgrade with 503 and
    a log line; the next client, once descriptors are back, is served."""
    with WsexecProcess("--pty", "cat") as server:
        log = drain_output(server)
        pid = server.proc.pid
        assert trio.run(echo_once, server.url + "/", "warm") == "warm"  # the spawner thread and pipes exist
        settle_fds(pid)  # the first connection's descriptors all closed
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        limit = next(n for n in range(3, soft) if free_slots(pid, n) == 1)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))
        try:
            answer = trio.run(raw_http, server.port, upgrade_request("/"))
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        assert b"Retry-After: 1" in answer and b"no terminal left" in answer, answer
        assert trio.run(echo_once, server.url + "/", "again") == "again"
        text = log().decode()
        assert "no pseudo-terminal for the handler (--pty): Too many open files" in text, text[-2000:]


def settle_fds(pid: int, timeout: float = 10) -> None:
    """Until wsexec's descriptors stay the same for half a second."""
    deadline = time.monotonic() + timeout
    seen, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = sorted(os.listdir(f"/proc/{pid}/fd"))
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since >= 0.5:
            return
        time.sleep(0.05)
    raise AssertionError(f"wsexec's descriptors kept changing for {timeout} s")


def test_pty_with_shared_exits_4():
    import subprocess

    from support.servers import ROOT

    result = subprocess.run([PY, "-m", "wsexec", "--port", "0", "--pty", "--shared", "cat"], cwd=ROOT,
                            capture_output=True, timeout=20)
    assert result.returncode == 4 and b"--pty" in result.stderr and b"--shared" in result.stderr, result.stderr


@trio_test(20)
async def test_clients_that_leave_at_once_leave_no_descriptor():
    """Clients that leave as soon as they are upgraded: no terminal kept."""
    async with serving(make_config("cat", pty=True)) as (state, url):
        assert await echo_once(url + "/", "warm") == "warm"  # the spawner's thread and pipe exist
        await wait_slots_free(state, 10)
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            with trio.move_on_after(5):
                try:
                    async with open_websocket_url(url + "/"):
                        pass
                except ConnectionClosed:
                    pass
        await wait_slots_free(state, 10)
        await wait_until(lambda: len(os.listdir("/proc/self/fd")) <= before, 5, "descriptors given back")
