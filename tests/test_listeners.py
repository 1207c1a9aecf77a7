"""Where connections come from: several addresses (IPv4 and IPv6 at once), a
unix domain socket, sockets passed by systemd, and inetd's stdin/stdout."""

import os
import socket
import stat
import subprocess

import pytest
import trio

from support.clients import read_server_frames, upgrade_on
from support.servers import PY, ROOT, make_config, script, serving
from support.waiting import readline_within, trio_test
from wsexec.net.listen import activated_fds

DUMP_ENV = """
import os
for k in sorted(os.environ):
    print(f"{k}={os.environ[k]}")
print("FDS=" + ",".join(sorted(os.listdir("/proc/self/fd"), key=int)))
"""

ENV = dict(os.environ, PYTHONPATH=str(ROOT))


async def env_over(stream, host="127.0.0.1", extra=""):
    """An upgrade on an open stream; the handler's KEY=VALUE lines as a dict."""
    async with stream:
        rest = await upgrade_on(stream, "/p?x=1", extra, host)
        frames, code = await read_server_frames(stream, rest)
    assert code == 1000, frames
    return dict(p.decode().split("=", 1) for _, p in frames)


# --- sd_listen_fds as a table ---------------------------------------------------------------

@pytest.mark.parametrize("environ, pid, fds", [
    ({"LISTEN_PID": "42", "LISTEN_FDS": "1"}, 42, (3,)),
    ({"LISTEN_PID": "42", "LISTEN_FDS": "3"}, 42, (3, 4, 5)),
    ({"LISTEN_PID": "41", "LISTEN_FDS": "1"}, 42, ()),  # meant for another process
    ({"LISTEN_FDS": "1"}, 42, ()),
    ({"LISTEN_PID": "42", "LISTEN_FDS": "0"}, 42, ()),
    ({"LISTEN_PID": "42", "LISTEN_FDS": "x"}, 42, ()),
    ({"LISTEN_PID": "42"}, 42, ()),
    ({}, 42, ()),
])
def test_activated_fds(environ, pid, fds):
    assert activated_fds(environ, pid) == fds


# --- several addresses, IPv6 ------------------------------------------------------------------

@trio_test(15)
async def test_ipv4_and_ipv6_listeners_at_once(tmp_path):
    handler = script(tmp_path, "env.py", DUMP_ENV)
    async with serving(make_config(handler, addresses=("127.0.0.1", "::1"))) as (state, _):
        assert sorted(a[0] for a in state.addresses) == ["127.0.0.1", "::1"]
        port = state.addresses[0][1]
        assert all(a[1] == port for a in state.addresses)  # --port 0: one port for all
        with trio.fail_after(10):
            v4 = await env_over(await trio.open_tcp_stream("127.0.0.1", port), f"127.0.0.1:{port}")
            v6 = await env_over(await trio.open_tcp_stream("::1", port), f"[::1]:{port}")
    assert v4["REMOTE_ADDR"] == "127.0.0.1" and v6["REMOTE_ADDR"] == "::1"
    assert v6["SERVER_NAME"] == "::1" and v6["SERVER_PORT"] == str(port)


def test_process_prints_every_listener(tmp_path):
    handler = script(tmp_path, "env.py", DUMP_ENV)
    proc = subprocess.Popen([PY, "-m", "wsexec", "--port", "0", "--address", "127.0.0.1", "--address", "::1",
                             str(handler)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = [readline_within(proc.stdout, 10).decode().strip() for _ in range(2)]
        port = lines[0].rsplit(":", 1)[1].rstrip("/")
        assert lines == [f"listening on ws://127.0.0.1:{port}/", f"listening on ws://[::1]:{port}/"]
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


# --- unix domain sockets -------------------------------------------------------------------------

@trio_test(15)
async def test_unix_socket(tmp_path):
    handler = script(tmp_path, "env.py", DUMP_ENV)
    path = str(tmp_path / "ws.sock")
    async with serving(make_config(handler, unixsocket=path, addresses=())) as (state, _):
        assert state.addresses == [] and state.urls == [f"ws+unix:{path}"]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        with trio.fail_after(10):
            env = await env_over(await trio.open_unix_socket(path), "ws.example:8080")
    assert env["REMOTE_ADDR"] == "unix:" and env["REMOTE_PORT"] == "0" and env["REMOTE_HOST"] == "unix:"
    assert env["SERVER_NAME"] == "ws.example" and env["SERVER_PORT"] == "8080"
    for key in ("GATEWAY_INTERFACE", "QUERY_STRING", "REQUEST_URI", "SERVER_PROTOCOL", "UNIQUE_ID", "PATH_INFO"):
        assert env[key], key
    assert not os.path.exists(path)  # removed on shutdown


@trio_test(15)
async def test_unix_socket_with_tcp_and_mode(tmp_path):
    handler = script(tmp_path, "env.py", DUMP_ENV)
    path = str(tmp_path / "ws.sock")
    config = make_config(handler, unixsocket=path, unixsocket_mode=0o600, addresses=("127.0.0.1",))
    async with serving(config) as (state, _):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        port = state.addresses[0][1]
        with trio.fail_after(10):
            assert (await env_over(await trio.open_unix_socket(path)))["REMOTE_ADDR"] == "unix:"
            assert (await env_over(await trio.open_tcp_stream("127.0.0.1", port)))["REMOTE_ADDR"] == "127.0.0.1"


@trio_test(15)
async def test_unix_socket_behind_a_trusted_front(tmp_path):
    """A front on the same machine passes the client address in X-Forwarded-For."""
    handler = script(tmp_path, "env.py", DUMP_ENV)
    path = str(tmp_path / "ws.sock")
    async with serving(make_config(handler, unixsocket=path, addresses=(), trusted_proxies=("unix",))):
        with trio.fail_after(10):
            env = await env_over(await trio.open_unix_socket(path), extra="X-Forwarded-For: 203.0.113.5\r\n")
    assert env["REMOTE_ADDR"] == "203.0.113.5"


def start(args, **kwargs):
    return subprocess.run([PY, "-m", "wsexec", *args], cwd=ROOT, env=ENV, capture_output=True, timeout=30, **kwargs)


def test_unix_socket_stale_replaced_live_refused(tmp_path):
    handler = script(tmp_path, "env.py", DUMP_ENV)
    path = tmp_path / "ws.sock"
    # A stale socket file (its server is gone) is replaced.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    assert path.exists()
    proc = subprocess.Popen([PY, "-m", "wsexec", "--unixsocket", str(path), str(handler)], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert readline_within(proc.stdout, 10).decode().strip() == f"listening on ws+unix:{path}"
        # A second server on the same live socket is refused, exit code 3.
        second = start(["--unixsocket", str(path), str(handler)])
        assert second.returncode == 3 and b"in use" in second.stderr
        env = trio.run(env_over_unix, str(path))
        assert env["REMOTE_ADDR"] == "unix:"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    assert not path.exists()
    # Anything else at the path is never deleted.
    path.write_text("precious")
    third = start(["--unixsocket", str(path), str(handler)])
    assert third.returncode == 3 and path.read_text() == "precious"


async def env_over_unix(path):
    with trio.fail_after(10):
        return await env_over(await trio.open_unix_socket(path))


@pytest.mark.parametrize("mode, code", [("9", 2), ("1000", 2), ("rw", 2)])
def test_unix_socket_mode_validated(tmp_path, mode, code):
    handler = script(tmp_path, "env.py", DUMP_ENV)
    result = start(["--unixsocket", str(tmp_path / "s"), "--unixsocket-mode", mode, str(handler)])
    assert result.returncode == code, result.stderr


# --- systemd socket activation -------------------------------------------------------------------

# What systemd does before exec: the socket at fd 3, LISTEN_PID naming the new process.
ACTIVATE = """
import os, sys
if int(sys.argv[1]) != 3:
    os.dup2(int(sys.argv[1]), 3)
    os.close(int(sys.argv[1]))
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = "1"
os.execv(sys.executable, [sys.executable, "-m", "wsexec", *sys.argv[2:]])
"""


def test_socket_activation(tmp_path):
    handler = script(tmp_path, "env.py", DUMP_ENV)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    proc = subprocess.Popen(
        [PY, "-c", ACTIVATE, str(listener.fileno()), "--port", "1", str(handler)],  # --port is not bound
        cwd=ROOT, env=ENV, pass_fds=[listener.fileno()], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    listener.close()  # only wsexec holds it now
    try:
        assert readline_within(proc.stdout, 10).decode().strip() == f"listening on ws://127.0.0.1:{port}/"

        async def connect():
            with trio.fail_after(10):
                return await env_over(await trio.open_tcp_stream("127.0.0.1", port), f"127.0.0.1:{port}")

        env = trio.run(connect)
        assert env["REMOTE_ADDR"] == "127.0.0.1" and env["SERVER_PORT"] == str(port)
        assert "LISTEN_PID" not in env and "LISTEN_FDS" not in env
        assert env["FDS"] == "0,1,2,3", env["FDS"]  # 3: the handler's own listdir; no listening socket
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_socket_activation_refuses_a_connected_socket(tmp_path):
    """Accept=yes hands over a connection, not a listener: that is --inetd's job."""
    handler = script(tmp_path, "env.py", DUMP_ENV)
    a, b = socket.socketpair()
    try:
        result = subprocess.run(
            [PY, "-c", ACTIVATE, str(a.fileno()), str(handler)], cwd=ROOT, env=ENV, pass_fds=[a.fileno()],
            capture_output=True, timeout=30)
    finally:
        a.close()
        b.close()
    assert result.returncode == 3 and b"--inetd" in result.stderr


# --- inetd ----------------------------------------------------------------------------------------

def inetd_run(tmp_path, handler, stderr_too):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname(), timeout=10)
    client_port = client.getsockname()[1]
    conn, _ = listener.accept()
    listener.close()
    proc = subprocess.Popen([PY, "-m", "wsexec", "--inetd", "--loglevel", "debug", str(handler)], cwd=ROOT, env=ENV,
                            stdin=conn, stdout=conn, stderr=conn if stderr_too else subprocess.PIPE)
    conn.close()  # wsexec has it now

    async def talk():
        with trio.fail_after(10):
            return await env_over(trio.SocketStream(trio.socket.from_stdlib_socket(client)))

    try:
        env = trio.run(talk)
        code = proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    return env, code, client_port


@pytest.mark.parametrize("stderr_too", [False, True])
def test_inetd_serves_one_connection_and_exits(tmp_path, stderr_too):
    handler = script(tmp_path, "env.py", DUMP_ENV)
    env, code, client_port = inetd_run(tmp_path, handler, stderr_too)
    assert code == 0
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["REMOTE_PORT"] == str(client_port)
    assert env["FDS"] == "0,1,2,3"  # the client socket is not passed down to the handler


def test_inetd_needs_a_socket(tmp_path):
    handler = script(tmp_path, "env.py", DUMP_ENV)
    result = start(["--inetd", str(handler)], stdin=subprocess.DEVNULL)
    assert result.returncode == 3 and b"not a socket" in result.stderr
