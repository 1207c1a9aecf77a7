"""wsexec behind the real fronts, from Debian's packages: haproxy terminating
TLS and sending PROXY protocol v2, nginx proxying WebSockets with
X-Forwarded-For. Configs are written at test time from examples/deploy/.

These programs must be installed (`apt-get install -y haproxy nginx`): a
missing one fails the test, it is never skipped.

Clients connect to the front over ::1, the front connects to wsexec over
127.0.0.1 (the trusted proxy), so the handler can tell the client from the
proxy by address alone."""

import os
import re
import shutil
import signal
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from support.certs import make_certs
from support.clients import raw_http, read_server_frames, upgrade_on, upgrade_request
from support.servers import ROOT, WsexecProcess, drain_output, script
from support.waiting import wait_for

DEPLOY = ROOT / "examples" / "deploy"

DUMP_ENV = """
import os
for k in sorted(os.environ):
    print(f"{k}={os.environ[k]}")
"""


def program(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if not found:
        pytest.fail(f"{name} is not installed: apt-get install -y {name}")
    return found


def render(template: str, directory: Path, **values: str) -> Path:
    text = (DEPLOY / template).read_text()
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    live = [line for line in text.splitlines() if not line.lstrip().startswith(("#", ";"))]
    assert not re.search(r"@[A-Z_]+@", "\n".join(live)), "a placeholder is left"
    path = directory / template
    path.write_text(text)
    return path


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_listening(host: str, port: int, proc: subprocess.Popen, what: str, timeout: float = 10) -> None:
    """Until proc accepts connections on host:port; AssertionError at once if it exits."""

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}: {proc.stderr.read().decode(errors='replace')}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_for(listening, timeout, f"{what} listening on {host}:{port}")


@contextmanager
def front(argv, host: str, port: int, what: str):
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_listening(host, port, proc, what)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


async def env_through(port: int, host_header: str, context=None, extra: str = ""):
    """Connect to [::1]:port (TLS if context), upgrade, read the handler's
    lines; returns (env, the client's own port)."""
    with trio.fail_after(10):
        tcp = await trio.open_tcp_stream("::1", port)
        client_port = tcp.socket.getsockname()[1]
        stream = tcp if context is None else trio.SSLStream(tcp, context, server_hostname="localhost",
                                                            https_compatible=True)
        async with stream:
            rest = await upgrade_on(stream, "/chat?room=1", extra, host_header)
            frames, code = await read_server_frames(stream, rest)
    assert code == 1000, (frames, code)
    return dict(p.decode().split("=", 1) for _, p in frames), client_port


def test_haproxy_terminates_tls_and_sends_proxy_v2(tmp_path):
    haproxy = program("haproxy")
    certs = make_certs(tmp_path)
    handler = script(tmp_path, "env.py", DUMP_ENV)
    with WsexecProcess("--proxy-protocol", "--trusted-proxy", "127.0.0.1", str(handler)) as server:
        drain_output(server)
        port = free_port("::1")
        config = render("haproxy.cfg", tmp_path, FRONT_BIND=f"[::1]:{port}", CERT_PEM=str(certs.both),
                        WSEXEC=f"127.0.0.1:{server.port}")
        with front([haproxy, "-f", str(config), "-db"], "::1", port, "haproxy"):
            env, client_port = trio.run(env_through, port, f"localhost:{port}", certs.client_context())
            # A plain-TCP probe without TLS is haproxy's business; wsexec still serves the next one.
            socket.create_connection(("::1", port), timeout=5).close()
            again, _ = trio.run(env_through, port, f"localhost:{port}", certs.client_context())
    # The handler sees the browser, not haproxy.
    assert env["REMOTE_ADDR"] == "::1" and env["REMOTE_PORT"] == str(client_port)
    assert env["HTTPS"] == "on" and env["SSL_PROTOCOL"].startswith("TLSv1.")
    assert env["SERVER_NAME"] == "localhost" and env["SERVER_PORT"] == str(port)
    assert env["QUERY_STRING"] == "room=1" and again["REMOTE_ADDR"] == "::1"


def test_wsexec_refuses_connections_without_the_proxy_header(tmp_path):
    """The same wsexec, reached directly: no PROXY header, no service."""
    handler = script(tmp_path, "env.py", DUMP_ENV)
    with WsexecProcess("--proxy-protocol", str(handler)) as server:
        log = drain_output(server)
        assert trio.run(lambda: raw_http(server.port, upgrade_request(), timeout=10)) == b""
        wait_for(lambda: b"no PROXY protocol header" in log(), 5, "the refusal logged")
        assert b"REFUSED: no PROXY protocol header" in log()


def test_stunnel_terminates_tls_and_sends_proxy_v1(tmp_path):
    stunnel = program("stunnel4")
    certs = make_certs(tmp_path)
    handler = script(tmp_path, "env.py", DUMP_ENV)
    with WsexecProcess("--proxy-protocol", "--trusted-proxy", "127.0.0.1", str(handler)) as server:
        drain_output(server)
        port = free_port("::1")
        config = render("stunnel.conf", tmp_path, PREFIX=str(tmp_path), FRONT=f":::{port}", CERT_PEM=str(certs.both),
                        WSEXEC=f"127.0.0.1:{server.port}")
        with front([stunnel, str(config)], "::1", port, "stunnel"):
            env, client_port = trio.run(env_through, port, f"localhost:{port}", certs.client_context())
    assert env["REMOTE_ADDR"] == "::1" and env["REMOTE_PORT"] == str(client_port)


def test_nginx_proxies_websockets_with_x_forwarded_for(tmp_path):
    nginx = program("nginx")
    handler = script(tmp_path, "env.py", DUMP_ENV)
    with WsexecProcess("--trusted-proxy", "127.0.0.1", str(handler)) as server:
        drain_output(server)
        port = free_port("::1")
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        config = render("nginx.conf", tmp_path, PREFIX=str(prefix), FRONT_LISTEN=f"listen [::1]:{port};",
                        WSEXEC=f"127.0.0.1:{server.port}")
        argv = [nginx, "-c", str(config), "-p", str(prefix), "-e", str(prefix / "error.log"), "-g", "daemon off;"]
        with front(argv, "::1", port, "nginx"):
            env, client_port = trio.run(env_through, port, f"ws.example:{port}", None,
                                        "X-Forwarded-For: 6.6.6.6\r\n")
    # nginx appended the client (::1) to the spoofed list: ::1 is not trusted, so the walk stops there.
    assert env["HTTP_X_FORWARDED_FOR"] == "6.6.6.6, ::1"
    assert env["REMOTE_ADDR"] == "::1" and env["REMOTE_PORT"] == "0"  # X-Forwarded-For carries no port
    assert env["SERVER_NAME"] == "ws.example" and env["SERVER_PORT"] == str(port)
    assert "HTTPS" not in env  # X-Forwarded-Proto: http
    assert env["HTTP_UPGRADE"] == "websocket"
