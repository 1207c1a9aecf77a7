"""Running several wsexec instances: behind haproxy, health-checked on
/readyz, drained on SIGTERM without refusing a client
(examples/deploy/haproxy-balance.cfg); and several processes sharing one port
with --reuseport.

haproxy must be installed (`apt-get install -y haproxy`): a missing one fails
the test, it is never skipped. Everything listens on 127.0.0.1; every wait has
a ceiling."""

import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from support.clients import raw_http
from support.servers import PY, ROOT, WsexecProcess, drain_output, script
from support.waiting import wait_until
from test_fronts import free_port, front, program, render

# The handler says which instance serves it (its WSEXEC_CONTROL is unique per
# instance), then echoes.
WHO = """
import os, sys
print(os.environ.get("WSEXEC_CONTROL", "-"), os.environ["WSEXEC_CONNECTION_ID"], os.getppid(), flush=True)
for line in sys.stdin:
    print(line, end="", flush=True)
"""

DRAIN_MS = 3000
DOWN_CEILING = 2.0  # seconds haproxy may take to mark a draining instance down (inter 200 fall 1)


class Client:
    """One WebSocket client held open in the background: which instance
    served it, its messages after the first, and how it ended."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.who: Optional[str] = None  # the instance's WSEXEC_CONTROL
        self.error: Optional[BaseException] = None  # refused, or the handshake failed
        self.code: Optional[int] = None
        self.closed_at: Optional[float] = None
        self.ws = None
        self.send_messages, self.messages = trio.open_memory_channel(100)

    async def run(self, url: str, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        started = False
        try:
            async with open_websocket_url(url) as ws:
                self.ws = ws
                self.who = (await ws.get_message()).split()[0]
                started = True
                task_status.started()
                try:
                    while True:
                        await self.send_messages.send(await ws.get_message())
                except ConnectionClosed as e:
                    self.code = e.reason.code
                    self.closed_at = time.monotonic()
        except Exception as e:  # before the first message: refused, or the handshake failed
            if started:
                raise
            self.error = e
            task_status.started()

    async def echo(self, text: str, timeout: float = 5) -> str:
        with trio.fail_after(timeout):
            await self.ws.send_message(text)
            return await self.messages.receive()


async def open_clients(nursery: trio.Nursery, url: str, count: int, prefix: str) -> List[Client]:
    """One after another, each handshake within 10 s."""
    clients = []
    for i in range(count):
        client = Client(f"{prefix}{i}")
        with trio.fail_after(10):
            await nursery.start(client.run, url)
        clients.append(client)
    return clients


async def http_status(port: int, path: str) -> int:
    answer = await raw_http(port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    return int(answer.split(b" ", 2)[1])


async def server_states(stats_socket: str) -> Dict[str, str]:
    """haproxy's view of backend wsexec, from its admin socket: {'a': 'UP', 'b': 'DOWN'}."""
    with trio.fail_after(5):
        stream = await trio.open_unix_socket(stats_socket)
        async with stream:
            await stream.send_all(b"show stat\n")
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    lines = data.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:] if line]
    return {row["svname"]: row["status"] for row in rows if row["pxname"] == "wsexec" and row["svname"] in ("a", "b")}


def test_haproxy_moves_new_clients_off_a_draining_instance(tmp_path):
    """SIGTERM to instance A with --drainms: /readyz says 503 at once, haproxy
    marks A down within a bounded time, every client opened during the drain
    is served by B, none refused; A's own clients keep going until the drain
    ends, then get 1001, and A exits 0. B's clients never notice."""
    haproxy = program("haproxy")
    handler = script(tmp_path, "who.py", WHO)
    args = ("--control", "127.0.0.1:0", "--drainms", str(DRAIN_MS), str(handler))
    with WsexecProcess(*args) as a, WsexecProcess(*args) as b:
        log_a, log_b = drain_output(a), drain_output(b)
        names = {a.control_url: "a", b.control_url: "b"}
        port = free_port("127.0.0.1")
        stats = str(tmp_path / "haproxy.sock")
        config = render("haproxy-balance.cfg", tmp_path, FRONT_BIND=f"127.0.0.1:{port}", STATS_SOCKET=stats,
                        A_WS=f"127.0.0.1:{a.port}", A_CONTROL_PORT=str(a.control_port),
                        B_WS=f"127.0.0.1:{b.port}", B_CONTROL_PORT=str(b.control_port))
        with front([haproxy, "-f", str(config), "-db"], "127.0.0.1", port, "haproxy"):
            url = f"ws://127.0.0.1:{port}/"
            figures: dict = {}

            async def scenario():
                with trio.fail_after(40):
                    async def both_up():
                        return await server_states(stats) == {"a": "UP", "b": "UP"}

                    await wait_until(both_up, 10, "haproxy sees both instances up", 0.05)
                    async with trio.open_nursery() as nursery:
                        before = await open_clients(nursery, url, 6, "before")
                        assert not [c.error for c in before if c.error]
                        where = [names[c.who] for c in before]
                        figures["before"] = {n: where.count(n) for n in "ab"}
                        assert figures["before"]["a"] >= 1 and figures["before"]["b"] >= 1, where
                        for c in before:
                            assert await c.echo(f"hi {c.name}") == f"hi {c.name}"

                        sigterm = time.monotonic()
                        a.proc.send_signal(signal.SIGTERM)

                        async def a_not_ready():
                            return await http_status(a.control_port, "/readyz") == 503

                        figures["readyz_503_after"] = await wait_until(a_not_ready, 1, "A's /readyz turns 503")
                        assert await http_status(b.control_port, "/readyz") == 200
                        assert await http_status(a.control_port, "/healthz") == 200  # alive, just not ready

                        async def a_down():
                            return (await server_states(stats)).get("a") == "DOWN"

                        await wait_until(a_down, DOWN_CEILING, "haproxy marks A down")
                        figures["down_after"] = time.monotonic() - sigterm
                        assert (await server_states(stats))["b"] == "UP"

                        # New clients during the drain: all to B, none refused.
                        during = await open_clients(nursery, url, 10, "during")
                        # A still accepts while draining (a client haproxy sent it a
                        # moment before the mark would be served too).
                        direct = await open_clients(nursery, f"ws://127.0.0.1:{a.port}/", 1, "direct")
                        figures["during_opened_by"] = time.monotonic() - sigterm
                        assert figures["during_opened_by"] < DRAIN_MS / 1000, "the drain was over before the clients opened"
                        assert a.proc.poll() is None, "A stopped before its drain was over"
                        refused = [(c.name, c.error) for c in during + direct if c.error]
                        assert not refused, refused
                        where = [names[c.who] for c in during]
                        figures["during"] = {n: where.count(n) for n in "ab"}
                        assert where == ["b"] * len(during), where
                        assert names[direct[0].who] == "a"
                        for c in during:
                            assert await c.echo(f"hi {c.name}") == f"hi {c.name}"

                        # The drain ends: A's clients (through haproxy and direct) get 1001.
                        on_a = [c for c in before if names[c.who] == "a"] + direct
                        on_b = [c for c in before if names[c.who] == "b"] + during
                        for c in on_a:
                            await wait_until(lambda: c.code is not None, DRAIN_MS / 1000 + 10, f"{c.name} closed")
                        assert [c.code for c in on_a] == [1001] * len(on_a)
                        figures["closed_1001_after"] = (min(c.closed_at for c in on_a) - sigterm,
                                                        max(c.closed_at for c in on_a) - sigterm)
                        assert figures["closed_1001_after"][0] >= DRAIN_MS / 1000 - 0.05, figures
                        figures["a_exit"] = await trio.to_thread.run_sync(a.proc.wait, 10)
                        figures["a_exited_after"] = time.monotonic() - sigterm

                        # B's clients never noticed; haproxy keeps sending new ones to B.
                        for c in on_b:
                            assert c.code is None, (c.name, c.code)
                            assert await c.echo(f"still {c.name}") == f"still {c.name}"
                        after = await open_clients(nursery, url, 2, "after")
                        assert [names[c.who] for c in after] == ["b", "b"]
                        figures["clients"] = {"on_a": len(on_a), "on_b": len(on_b) + len(after)}
                        nursery.cancel_scope.cancel()

            trio.run(scenario)
        print("drain figures:", figures)
        assert figures["a_exit"] == 0, log_a()[-3000:]
        assert b.proc.poll() is None, log_b()[-3000:]
        text = log_a().decode(errors="replace")
        assert "draining: readiness 503" in text and "stopped" in text, text[-3000:]


# --- --reuseport -----------------------------------------------------------------------


def start_fails(*args: str, timeout: float = 15) -> subprocess.CompletedProcess:
    """A wsexec expected to give up at start-up."""
    argv = [PY, "-m", "wsexec", "--address", "127.0.0.1", *args]
    return subprocess.run(argv, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          capture_output=True, timeout=timeout)


def test_a_second_process_on_the_same_port_needs_reuseport(tmp_path):
    handler = script(tmp_path, "who.py", WHO)
    with WsexecProcess(str(handler)) as first:
        drain_output(first)
        second = start_fails("--port", str(first.port), str(handler))
        assert second.returncode == 3, second
        assert b"cannot listen" in second.stderr, second.stderr
        # Asking for it only in the second is not enough: the first must allow it too.
        third = start_fails("--reuseport", "--port", str(first.port), str(handler))
        assert third.returncode == 3, third


def test_reuseport_shares_one_port_between_processes(tmp_path):
    handler = script(tmp_path, "who.py", WHO)
    with WsexecProcess("--reuseport", str(handler)) as first:
        drain_output(first)
        # --port given twice: click keeps the last, the first instance's port.
        with WsexecProcess("--reuseport", "--port", str(first.port), str(handler)) as second:
            drain_output(second)
            assert second.port == first.port
            url = f"ws://127.0.0.1:{first.port}/"
            pids = {first.proc.pid: "first", second.proc.pid: "second"}
            served: List[str] = []

            async def connect_many(count: int):
                with trio.fail_after(60):
                    for i in range(count):
                        async with open_websocket_url(url) as ws:
                            with trio.fail_after(10):
                                first_line = await ws.get_message()
                                served.append(pids[int(first_line.split()[2])])
                                await ws.send_message(f"n{i}")
                                assert await ws.get_message() == f"n{i}"

            trio.run(connect_many, 60)
            counts = {name: served.count(name) for name in ("first", "second")}
            print("reuseport distribution over 60 connections:", counts, file=sys.stderr)
            # The kernel hashes each connection's addresses and ports over the
            # listening sockets: with 60 different client ports both get some.
            assert counts["first"] >= 1 and counts["second"] >= 1, counts
            # When one stops, the other alone serves the port.
            assert first.stop() == 0
            trio.run(connect_many, 5)
            assert served[-5:] == ["second"] * 5


def unit_command(unit: str) -> List[str]:
    """ExecStart= of a unit file in examples/deploy, split into arguments."""
    import shlex

    text = (ROOT / "examples" / "deploy" / unit).read_text()
    lines = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].split("=", 1)[1])


async def unix_get(path: str, target: str) -> bytes:
    with trio.fail_after(5):
        stream = await trio.open_unix_socket(path)
        async with stream:
            await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: wsexec\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    return data


def test_the_systemd_template_unit_runs_instances_on_one_port(tmp_path):
    """examples/deploy/wsexec@.service's ExecStart, as systemd would run
    wsexec@1 and wsexec@2 (%i filled in, /run/wsexec/%i made as
    RuntimeDirectory= makes it; here under tmp_path, on a free port): both
    start on the one port, each with its own control socket, and each
    serves its share of the connections."""
    argv = unit_command("wsexec@.service")
    assert argv[0] == "/usr/local/bin/wsexec" and "--reuseport" in argv
    handler = script(tmp_path, "who.py", WHO)
    port = free_port("127.0.0.1")
    run = tmp_path / "run"

    def instance_args(i: int) -> List[str]:
        (run / "wsexec" / str(i)).mkdir(parents=True)
        args = [a.replace("%i", str(i)).replace("/run/", f"{run}/") for a in argv[1:]]
        args[args.index("--port") + 1] = str(port)
        assert args[-1] == "/usr/local/lib/wsexec/handler"
        return args[:-1] + [str(handler)]

    with WsexecProcess(*instance_args(1)) as one, WsexecProcess(*instance_args(2)) as two:
        drain_output(one), drain_output(two)
        assert one.port == two.port == port
        sockets = [one.control_url, two.control_url]
        assert sockets == [f"unix:{run}/wsexec/1/control.sock", f"unix:{run}/wsexec/2/control.sock"]
        pids = {one.proc.pid: 1, two.proc.pid: 2}

        async def check():
            served = []
            with trio.fail_after(60):
                for _ in range(30):
                    async with open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
                        control, _, ppid = (await ws.get_message()).split()
                        served.append(pids[int(ppid)])
                        assert control == sockets[pids[int(ppid)] - 1]  # WSEXEC_CONTROL names its own
                for path in sockets:
                    assert (await unix_get(path[5:], "/readyz")).startswith(b"HTTP/1.1 200 ")
            return served

        served = trio.run(check)
        print("template unit: 30 connections served by instance", {i: served.count(i) for i in (1, 2)},
              file=sys.stderr)
        assert set(served) == {1, 2}, served
