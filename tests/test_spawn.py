"""wsexec/proc/spawn.py with real processes, both ways of starting one: the C
library's posix_spawn on the spawner thread, and os.posix_spawn inline."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket

import pytest
import trio

from wsexec.proc.spawn import RESET_SIGNALS, Spawner

from support.procfs import descendants
from support.servers import WsexecProcess
from support.waiting import trio_test
from trio_websocket import open_websocket_url

MODES = [pytest.param(True, id="thread"), pytest.param(False, id="inline")]

# Prints what the handler was given: argv, one variable, its process group,
# its blocked and ignored signal masks; then a line on stderr.
REPORT = (
    'printf "%s|%s|%s|%s|" "$0" "$1" "$GREETING" "$(ps -o pgid= -p $$ | tr -d " ")"; '
    'grep -E "^Sig(Blk|Ign)" /proc/$$/status | tr "\\n\\t" "| "; echo; echo oops >&2'
)


async def run_handler(spawner: Spawner, argv, env) -> tuple:
    """Spawn with a socketpair as stdin+stdout and a pipe as stderr; return
    (pid, stdout, stderr, wait status)."""
    ours, theirs = socket.socketpair()
    err_read, err_write = os.pipe()
    try:
        pid = await spawner.spawn(argv, env, theirs.fileno(), err_write)
    finally:
        theirs.close()
        os.close(err_write)
    with ours:
        ours.shutdown(socket.SHUT_WR)
        out = b""
        with trio.fail_after(5):
            while True:
                await trio.lowlevel.wait_readable(ours)
                chunk = ours.recv(4096)
                if not chunk:
                    break
                out += chunk
    with os.fdopen(err_read, "rb") as f:
        err = f.read()
    with trio.fail_after(5):
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            await trio.sleep(0.01)
    return pid, out, err, status


@pytest.mark.parametrize("threaded", MODES)
@trio_test(10)
async def test_handler_gets_argv_env_own_group_and_default_signals(threaded):
    spawner = Spawner(use_thread=threaded)
    assert spawner.threaded == threaded
    # wsexec may run with signals ignored (nohup) or handled (trio): the
    # handler must start with none ignored and none blocked.
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        pid, out, err, status = await run_handler(
            spawner, ["/bin/sh", "-c", REPORT, "name", "arg one"], {"GREETING": "hi there", "PATH": os.defpath})
    finally:
        signal.signal(signal.SIGHUP, old)
        spawner.close()
    name, arg, greeting, pgid, blocked, ignored, _ = out.decode().strip().split("|")
    assert (name, arg, greeting) == ("name", "arg one", "hi there")
    assert int(pgid) == pid
    assert blocked.split() == ["SigBlk:", "0000000000000000"]
    ignored_mask = int(ignored.split()[1], 16)
    for signum in RESET_SIGNALS:
        assert not ignored_mask & (1 << (signum - 1)), signal.Signals(signum).name
    assert err == b"oops\n"
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("threaded", MODES)
@pytest.mark.parametrize("program, expected", [
    ("/nonexistent/handler", errno.ENOENT),
    ("data.txt", errno.EACCES),  # not executable
    ("garbage.bin", errno.ENOEXEC),  # executable, but neither a program nor a script
])
@trio_test(10)
async def test_a_handler_that_cannot_start_raises_oserror(threaded, program, expected, tmp_path):
    for name, mode in (("data.txt", 0o644), ("garbage.bin", 0o755)):
        (tmp_path / name).write_bytes(b"\x00\x01 not a program")
        (tmp_path / name).chmod(mode)
    spawner = Spawner(use_thread=threaded)
    try:
        with pytest.raises(OSError) as caught:
            await run_handler(spawner, [str(tmp_path / program)], {})
    finally:
        spawner.close()
    assert caught.value.errno == expected


@pytest.mark.parametrize("threaded", MODES)
@pytest.mark.parametrize("argv, env", [
    (["/bin/echo", "a\0b"], {}),
    (["/bin/echo"], {"A": "x\0y"}),
    (["/bin/echo"], {"A=B": "x"}),
])
@trio_test(10)
async def test_what_c_would_cut_short_is_refused(threaded, argv, env):
    spawner = Spawner(use_thread=threaded)
    try:
        with pytest.raises(ValueError):
            await run_handler(spawner, argv, env)
    finally:
        spawner.close()


@trio_test(10)
async def test_the_loop_runs_while_the_spawner_thread_starts_handlers():
    """Many spawns at once from many tasks; each gets its own child, and a
    ticking task keeps running throughout."""
    spawner = Spawner()
    assert spawner.threaded
    ticks = []
    results = []

    async def tick():
        while True:
            ticks.append(trio.current_time())
            await trio.sleep(0)

    async def one(i):
        results.append(await run_handler(spawner, ["/bin/sh", "-c", f"echo {i}"], {}))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick)
            async with trio.open_nursery() as spawns:
                for i in range(40):
                    spawns.start_soon(one, i)
            nursery.cancel_scope.cancel()
    finally:
        spawner.close()
    assert sorted(int(out) for _, out, _, _ in results) == list(range(40))
    assert len({pid for pid, _, _, _ in results}) == 40
    assert len(ticks) > 40


@trio_test(40)
async def test_a_slow_handler_start_does_not_hold_up_running_connections():
    """strace delays every exec by one second. While a new connection's
    handler is being started, one already running still echoes at once
    (with a spawn on the loop's thread its echo would wait the whole second)."""
    strace = shutil.which("strace")
    assert strace, "strace is missing (the README's test command installs it)"
    delay = ("-f", "-qq", "--seccomp-bpf", "-e", "trace=execve", "-e", "inject=execve:delay_enter=1000000",
             "-o", os.devnull)
    server = WsexecProcess("cat", prefix=(strace, *delay), timeout=20)
    try:
        async with open_websocket_url(server.url) as running:
            await running.send_message("first")
            assert await running.get_message() == "first"

            async def newcomer():
                async with open_websocket_url(server.url) as ws:
                    await ws.send_message("late")
                    assert await ws.get_message() == "late"

            async with trio.open_nursery() as nursery:
                nursery.start_soon(newcomer)
                await trio.sleep(0.2)  # its handler's exec is being held now
                started, worst = trio.current_time(), 0.0
                for i in range(5):
                    sent = trio.current_time()
                    await running.send_message(str(i))
                    assert await running.get_message() == str(i)
                    worst = max(worst, trio.current_time() - sent)
                    await trio.sleep(0.05)
                assert trio.current_time() - started < 0.9  # all of it inside the held second
            assert worst < 0.3
    finally:
        group = os.getpgid(server.proc.pid)
        for pid in descendants(server.proc.pid):  # wsexec itself, under strace; handlers have their own groups
            try:
                if os.getpgid(pid) == group:
                    os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        server.proc.wait(10)


@pytest.mark.parametrize("threaded", MODES)
@trio_test(10)
async def test_a_working_directory_is_set_by_the_c_library_and_refused_inline(tmp_path, threaded):
    """--cwd: posix_spawn_file_actions_addchdir_np on the spawner thread;
    os.posix_spawn has no chdir action, so the inline fallback refuses it."""
    spawner = Spawner(use_thread=threaded)
    ours, theirs = socket.socketpair()
    err_read, err_write = os.pipe()
    try:
        if not threaded:
            with pytest.raises(OSError) as refused:
                await spawner.spawn(["/bin/pwd"], {}, theirs.fileno(), err_write, str(tmp_path))
            assert refused.value.errno == errno.ENOSYS
            return
        pid = await spawner.spawn(["/bin/pwd"], {}, theirs.fileno(), err_write, str(tmp_path))
        with trio.fail_after(5):
            await trio.lowlevel.wait_readable(ours)
        assert ours.recv(4096).decode().strip() == str(tmp_path)
        await reaped(pid)
    finally:
        spawner.close()
        ours.close()
        theirs.close()
        os.close(err_read)
        os.close(err_write)


async def reaped(pid: int) -> None:
    """Until the test's own child has exited and been reaped (at most 5 s)."""
    with trio.fail_after(5):
        while os.waitpid(pid, os.WNOHANG)[0] == 0:
            await trio.sleep(0.01)


@pytest.mark.parametrize("threaded", MODES)
@trio_test(10)
async def test_a_terminal_becomes_stdin_stdout_and_the_controlling_terminal(threaded):
    """--pty: the handler leads a new session (so its own process group) and
    the terminal, opened by path after setsid, is its controlling terminal."""
    from wsexec.proc.terminal import Terminal

    spawner = Spawner(use_thread=threaded)
    terminal = Terminal.open()
    err_read, err_write = os.pipe()
    check = ('import os; print(os.getsid(0) == os.getpid() == os.getpgrp() == os.tcgetpgrp(0), '
             'os.ttyname(0) == os.ttyname(1), os.isatty(2))')
    try:
        pid = await spawner.spawn([shutil.which("python3"), "-c", check], {}, -1, err_write, None, terminal.path)
        terminal.spawned()
        out = b""
        with trio.fail_after(5):
            while True:
                chunk = await terminal.receive_some()
                if not chunk:
                    break  # EIO: the handler's copies are all closed
                out += chunk
        assert out == b"True True False\n"  # raw mode: no CR added
        await reaped(pid)
    finally:
        spawner.close()
        terminal.close()
        os.close(err_read)
        os.close(err_write)
