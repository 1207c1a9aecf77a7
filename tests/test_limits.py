"""Session limits (--idlems, --lifetimems), extra variables (--env) and
--license, end to end: real sockets on 127.0.0.1, real handler processes."""

import os
import subprocess

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from support.clients import collect, fetch
from support.servers import PY, ROOT, WsexecProcess, make_config, script, serving
from support.waiting import trio_test, wait_gone, wait_slots_free, wait_until

ECHO = """
import os, sys
print(os.getpid(), flush=True)
for line in sys.stdin:
    print(line.strip(), flush=True)
"""

TICKER = """
import os, sys, time
print(os.getpid(), flush=True)
while True:
    time.sleep(0.05)
    print("tick", flush=True)
"""

DUMP_ENV = """
import os
for k in sorted(os.environ):
    print(f"{k}={os.environ[k]}")
"""


async def until_closed(ws, timeout):
    """Messages received until the server closes (within timeout): (messages, code, reason)."""
    got = []
    with trio.fail_after(timeout):
        try:
            while True:
                got.append(await ws.get_message())
        except ConnectionClosed as e:
            return got, e.reason.code, e.reason.reason


# --- --idlems ----------------------------------------------------------------------------

@trio_test(20)
async def test_idle_connection_is_closed_and_its_handler_stopped(tmp_path):
    handler = script(tmp_path, "echo.py", ECHO)
    async with serving(make_config(handler, idlems=400)) as (state, url):
        async with open_websocket_url(url) as ws:
            pid = int(await ws.get_message())
            # Messages every 100 ms keep it open well past 400 ms.
            start = trio.current_time()
            while True:
                await ws.send_message("ping")
                assert await ws.get_message() == "ping"
                last = trio.current_time()  # the last message either way
                if last - start > 1.0:
                    break
                await trio.sleep(0.1)
            _, code, reason = await until_closed(ws, 5)
            quiet = trio.current_time() - last
        assert (code, reason) == (1000, "idle for 400 ms")
        assert 0.4 <= quiet < 2.0, quiet
        await wait_gone(pid, timeout=5)
        await wait_slots_free(state, 5)
        # counted as the session's last step, just after its handler's slot is given back
        await wait_until(lambda: state.stats.closed[1000] == 1, 5)


@trio_test(20)
async def test_handler_output_counts_as_activity(tmp_path):
    handler = script(tmp_path, "ticker.py", TICKER)
    async with serving(make_config(handler, idlems=300, lifetimems=1200)) as (state, url):
        start = trio.current_time()
        async with open_websocket_url(url) as ws:
            messages, code, reason = await until_closed(ws, 5)
            open_for = trio.current_time() - start
        # The silent client was not closed as idle: the handler's lines are
        # messages too. The lifetime ended it.
        assert (code, reason) == (1000, "open for 1200 ms")
        assert 1.2 <= open_for < 3.0, open_for
        assert messages.count("tick") > 10
        await wait_gone(int(messages[0]), timeout=5)


# --- --lifetimems ------------------------------------------------------------------------

@trio_test(20)
async def test_lifetime_closes_a_busy_connection(tmp_path):
    handler = script(tmp_path, "echo.py", ECHO)
    async with serving(make_config(handler, lifetimems=500)) as (state, url):
        start = trio.current_time()  # before the upgrade: the lifetime counts from it
        async with open_websocket_url(url) as ws:
            pid = int(await ws.get_message())
            with trio.fail_after(5):
                try:
                    while True:
                        await ws.send_message("busy")
                        await ws.get_message()
                        await trio.sleep(0.02)
                except ConnectionClosed as e:
                    code, reason = e.reason.code, e.reason.reason
            open_for = trio.current_time() - start
        assert (code, reason) == (1000, "open for 500 ms")
        assert 0.5 <= open_for < 2.5, open_for
        await wait_gone(pid, timeout=5)
        await wait_slots_free(state, 5)


def all_tasks():
    """Every task of this trio run."""
    found, nurseries = [], list(trio.lowlevel.current_root_task().child_nurseries)
    while nurseries:
        for task in nurseries.pop().child_tasks:
            found.append(task)
            nurseries.extend(task.child_nurseries)
    return found


@pytest.mark.parametrize("options, extra", [({}, 0), ({"idlems": 60_000}, 1), ({"lifetimems": 60_000}, 1),
                                            ({"idlems": 60_000, "lifetimems": 60_000}, 1)])
@trio_test(20)
async def test_the_limits_task_exists_only_when_a_limit_is_on(tmp_path, options, extra):
    handler = script(tmp_path, "echo.py", ECHO)
    async with serving(make_config(handler, **options)) as (state, url):
        idle_tasks = len(all_tasks())
        async with open_websocket_url(url) as ws:
            await ws.get_message()
            names = [t.name for t in all_tasks()]
            assert sum(name.endswith(".limits") for name in names) == extra, names
            assert len(names) > idle_tasks


# --- --env ---------------------------------------------------------------------------------

def test_env_variables_reach_handlers_after_passenv_and_before_cgi(tmp_path):
    handler = script(tmp_path, "env.py", DUMP_ENV)
    env = dict(os.environ, WSEXEC_SHARED="from-environment", WSEXEC_KEPT="kept")
    with WsexecProcess("--passenv", "PATH,WSEXEC_SHARED,WSEXEC_KEPT", "--env", "WSEXEC_SHARED=from-option",
                       "--env", "WSEXEC_NEW=a=b c", "--env", "WSEXEC_EMPTY=", "--env", "REMOTE_ADDR=spoofed",
                       "--env", "GATEWAY_INTERFACE=x", str(handler), env=env) as server:
        messages, code, _ = trio.run(collect, server.url + "/")
    child = dict(m.split("=", 1) for m in messages)
    assert code == 1000
    assert child["WSEXEC_SHARED"] == "from-option"  # after --passenv: it wins
    assert child["WSEXEC_KEPT"] == "kept"
    assert child["WSEXEC_NEW"] == "a=b c" and child["WSEXEC_EMPTY"] == ""
    assert child["REMOTE_ADDR"] == "127.0.0.1" and child["GATEWAY_INTERFACE"] == "CGI/1.1"  # CGI wins


@trio_test(15)
async def test_env_variables_reach_cgi_scripts(tmp_path):
    cgi = tmp_path / "cgi"
    cgi.mkdir()
    script(cgi, "env.py", 'print("Content-Type: text/plain")\nprint()\n' + DUMP_ENV)
    config = make_config(cgidir=str(cgi), env=(("WSEXEC_FOR_CGI", "yes"), ("SCRIPT_NAME", "spoofed")))
    async with serving(config) as (state, url):
        reply = await fetch(state.addresses[0][1], "GET", "/env.py")
    child = dict(line.split("=", 1) for line in reply.body.decode().splitlines())
    assert reply.status == 200
    assert child["WSEXEC_FOR_CGI"] == "yes" and child["SCRIPT_NAME"] == "/env.py"


@pytest.mark.parametrize("args, message", [
    (["--env", "1X=y"], b"variable name"),
    (["--env", "A-B=y"], b"variable name"),
    (["--env", "=y"], b"variable name"),
    (["--env", "NOVALUE"], b"NAME=VALUE"),
    (["--idlems", "-1"], b"--idlems must be at least 0"),
    (["--lifetimems", "-5"], b"--lifetimems must be at least 0"),
])
def test_bad_options_exit_2(args, message):
    result = subprocess.run([PY, "-m", "wsexec", "--port", "0", *args, "cat"], cwd=ROOT, capture_output=True,
                            timeout=20)
    assert result.returncode == 2 and message in result.stderr, result.stderr


# --- --license -----------------------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["--license", "-license"])
def test_license_is_printed(spelling):
    result = subprocess.run([PY, "-m", "wsexec", spelling], cwd=ROOT, capture_output=True, timeout=20)
    text = result.stdout.decode()
    assert result.returncode == 0 and result.stderr == b""
    assert text.startswith("MIT License\n") and "Copyright (c) 2026 the wsexec authors" in text
    assert "WITHOUT WARRANTY OF ANY KIND" in text and text.endswith("SOFTWARE.\n")
