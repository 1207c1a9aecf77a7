"""The real Prometheus server (Debian's /usr/bin/prometheus) scrapes a real
wsexec's control address, and the counters read back through Prometheus'
query API match what the test did. /metrics is also read directly and parsed
with prometheus_client's own parser.

Real processes and sockets on 127.0.0.1, every wait bounded; no mocks. A
missing prometheus binary fails the test: it is one of the test packages
(README). Only processes started here are ended, by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, TypeVar

import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import ConnectionClosed, open_websocket_url

from support.clients import parse_raw, raw_http
from support.procfs import descendants
from support.servers import ROOT, WsexecProcess, drain_output, script

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
EXAMPLE = ROOT / "examples" / "deploy" / "prometheus.yml"
CONNECTIONS = 3
TOKEN = "s3cret-t0ken"
T = TypeVar("T")

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5) -> Tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def within(seconds: float, what: str, probe: Callable[[], Optional[T]], every: float = 0.25) -> T:
    """Call probe until it returns something not None; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    last: object = None
    while True:
        try:
            found = probe()
            if found is not None:
                return found
        except (OSError, ValueError) as e:  # not up yet, or an answer not yet complete
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds} s (last error: {last!r})")
        time.sleep(every)


def example_config(control: str, guarded_control: str) -> str:
    """examples/deploy/prometheus.yml as it is, pointed at this test's two
    control addresses, its token, and a 1 s scrape interval."""
    text = EXAMPLE.read_text()
    for old, new in (("scrape_interval: 15s", "scrape_interval: 1s\n  scrape_timeout: 1s"),
                     ("'127.0.0.1:9180'", repr(control.split("//")[1])),
                     ("'10.0.0.5:9180'", repr(guarded_control.split("//")[1])),
                     ("credentials: TOKEN", f"credentials: {TOKEN}")):
        assert old in text, f"{old!r} is no longer in {EXAMPLE}: update this test"
        text = text.replace(old, new)
    return text


def test_the_example_config_is_valid() -> None:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    check = subprocess.run([promtool, "check", "config", str(EXAMPLE)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def samples(exposition: str) -> Samples:
    """Every sample of a text exposition: (name, sorted labels) -> value."""
    out: Samples = {}
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in found, f"{name}{labels} not in /metrics: {sorted(k for k in found if k[0] == name)}"
    return found[key]


def stop(proc: subprocess.Popen) -> None:
    """End a process this test started, by its PID (then anything it left)."""
    kids = descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    for pid in kids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def control_request(port: int, method: str, target: str, body: bytes = b"",
                          content_type: str = "text/plain") -> Tuple[int, bytes]:
    """One request to the control API on its own connection (closed after)."""
    request = (f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
               f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    status, _, rest = parse_raw(await raw_http(port, request))
    return status, rest


async def ending_sessions(ws_url: str, control_port: int) -> Tuple[int, int]:
    """CONNECTIONS sessions on the `head -n 1` handler: each sends a line, gets
    it back, then the handler exits 0 and the server closes with 1000. The
    first also gets one push by id first. Returns the payload bytes (in, out)."""
    sent = received = 0
    for i in range(CONNECTIONS):
        with trio.fail_after(10):
            async with open_websocket_url(f"{ws_url}/echo1") as ws:
                if i == 0:
                    status, body = await control_request(control_port, "GET", "/connections")
                    assert status == 200, body
                    listed = json.loads(body)
                    assert len(listed) == 1 and listed[0]["path"] == "/echo1", listed
                    status, body = await control_request(control_port, "POST", f"/connections/{listed[0]['id']}",
                                                         b"pushed by id")
                    assert status == 204, (status, body)
                    assert await ws.get_message() == "pushed by id"
                    received += len("pushed by id")
                line = f"hello {i}"
                await ws.send_message(line)
                sent += len(line)
                assert await ws.get_message() == line
                received += len(line)
                try:
                    extra = await ws.get_message()
                    raise AssertionError(f"a message after the echo: {extra!r}")
                except ConnectionClosed as e:
                    assert e.reason.code == 1000, e.reason
    return sent, received


def test_prometheus_scrapes_wsexec_and_reads_the_counters_back(tmp_path: Path) -> None:
    assert os.access(PROMETHEUS, os.X_OK), (
        f"no prometheus binary at {PROMETHEUS}: install the Debian package 'prometheus' (see README)")

    handlers = tmp_path / "handlers"
    handlers.mkdir()
    script(handlers, "echo1", "exec head -n 1\n", interpreter="/bin/sh")
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<p>hi</p>\n")

    server = WsexecProcess("--control", "127.0.0.1:0", "--dir", str(handlers), "--staticdir", str(static))
    prometheus: Optional[subprocess.Popen] = None
    guarded: Optional[WsexecProcess] = None
    try:
        # WsexecProcess has read the `control on` line
        control = server.control_url
        assert control.startswith("http://127.0.0.1:"), control
        control_port = server.control_port
        stderr_tail = drain_output(server)

        # the token-protected second job of the example: a second wsexec with --control-token
        guarded = WsexecProcess("--control", "127.0.0.1:0", "--control-token", TOKEN, "--dir", str(handlers))
        guarded_control = guarded.control_url
        assert guarded_control.startswith("http://127.0.0.1:"), guarded_control
        drain_output(guarded)

        # --- Prometheus, with the example's config scraping both every second -------
        prom_port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(example_config(control, guarded_control))
        prom_log = open(tmp_path / "prometheus.log", "wb")
        prometheus = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=prom_log, stderr=subprocess.STDOUT)
        prom_log.close()
        api = f"http://127.0.0.1:{prom_port}"

        def prom_failed() -> str:
            return (tmp_path / "prometheus.log").read_text(errors="replace")[-3000:]

        def ready() -> Optional[bool]:
            assert prometheus.poll() is None, f"prometheus exited: {prom_failed()}"
            return True if http_get(f"{api}/-/ready", 2)[0] == 200 else None

        within(30, "prometheus ready", ready)

        # --- what the test does: it is what the counters must say ------------------
        ws_url = server.url
        sent, received = trio.run(ending_sessions, ws_url, control_port)
        assert http_get(f"http://127.0.0.1:{server.port}/", 5)[0] == 200  # index.html
        assert http_get(f"http://127.0.0.1:{server.port}/missing.html", 5)[0] == 404
        # an upgrade to a path with no handler: refused with 404 before any handler runs
        refused = socket.create_connection(("127.0.0.1", server.port), 5)
        refused.settimeout(5)
        with refused:
            refused.sendall(b"GET /nothing-here HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                            b"Sec-WebSocket-Version: 13\r\n\r\n")
            assert refused.recv(4096).startswith(b"HTTP/1.1 404 "), "the upgrade to no handler was not refused"

        # --- /metrics read directly -------------------------------------------------
        def settled() -> Optional[Samples]:
            status, body = http_get(f"{control}/metrics")
            assert status == 200, body
            found = samples(body.decode())
            done = found.get(("wsexec_connections_total", (("code", "1000"),)))
            active = found.get(("wsexec_connections_active", ()))
            return found if done == CONNECTIONS and active == 0 else None

        m = within(10, "the three connections counted as ended", settled)
        assert value(m, "wsexec_connections_active") == 0
        assert value(m, "wsexec_connections_total", code="1000") == CONNECTIONS
        assert sum(v for (n, _), v in m.items() if n == "wsexec_connections_total") == CONNECTIONS
        assert value(m, "wsexec_refusals_total", status="404") == 1
        assert sum(v for (n, _), v in m.items() if n == "wsexec_refusals_total") == 1
        assert value(m, "wsexec_messages_total", direction="in") == CONNECTIONS
        assert value(m, "wsexec_messages_total", direction="out") == CONNECTIONS + 1  # the echoes and the push
        # bytes are counted on the wire: the payloads plus frame heads (and the close frames)
        bytes_in = value(m, "wsexec_bytes_total", direction="in")
        bytes_out = value(m, "wsexec_bytes_total", direction="out")
        assert sent < bytes_in <= sent + 32 * CONNECTIONS, (sent, bytes_in)
        assert received < bytes_out <= received + 32 * CONNECTIONS, (received, bytes_out)
        assert value(m, "wsexec_handler_starts_total") == CONNECTIONS
        assert value(m, "wsexec_handler_start_seconds_count") == CONNECTIONS
        assert value(m, "wsexec_handler_start_seconds_bucket", le="+Inf") == CONNECTIONS
        assert 0 < value(m, "wsexec_handler_start_seconds_sum") < 10 * CONNECTIONS
        buckets = sorted(((float(dict(labels)["le"]), v) for (n, labels), v in m.items()
                          if n == "wsexec_handler_start_seconds_bucket"))
        assert len(buckets) > 2 and all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), buckets
        assert value(m, "wsexec_handler_exits_total", status="0") == CONNECTIONS
        assert sum(v for (n, _), v in m.items() if n == "wsexec_handler_exits_total") == CONNECTIONS
        assert value(m, "wsexec_http_requests_total", status="200") == 1  # index.html
        assert value(m, "wsexec_http_requests_total", status="404") == 1
        assert value(m, "wsexec_pushes_total") == 1
        assert value(m, "process_resident_memory_bytes") > 1_000_000
        assert value(m, "process_open_fds") >= 3
        families = {f.name: f.type for f in text_string_to_metric_families(http_get(f"{control}/metrics")[1].decode())}
        assert families["wsexec_handler_start_seconds"] == "histogram"
        assert families["wsexec_connections"] == "counter"  # the parser drops the _total
        assert families["wsexec_connections_active"] == "gauge"

        # --- the same counters, through Prometheus ----------------------------------
        def query(expr: str) -> list:
            status, body = http_get(f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": expr}), 5)
            answer = json.loads(body)
            assert status == 200 and answer["status"] == "success", body
            return answer["data"]["result"]

        def scraped(expr: str, want: float) -> Callable[[], Optional[list]]:
            def probe() -> Optional[list]:
                assert prometheus.poll() is None, f"prometheus exited: {prom_failed()}"
                result = query(expr)
                return result if result and float(result[0]["value"][1]) == want else None
            return probe

        result = within(60, f"Prometheus showing wsexec_connections_total {CONNECTIONS}",
                        scraped('wsexec_connections_total{code="1000",job="wsexec"}', CONNECTIONS))
        assert len(result) == 1
        assert result[0]["metric"]["job"] == "wsexec"
        assert result[0]["metric"]["instance"] == f"127.0.0.1:{control_port}"
        assert float(query("sum(wsexec_connections_total)")[0]["value"][1]) == CONNECTIONS
        within(10, "handler exits through Prometheus", scraped('wsexec_handler_exits_total{status="0",job="wsexec"}', CONNECTIONS))
        within(10, "the refusal through Prometheus", scraped('wsexec_refusals_total{status="404",job="wsexec"}', 1))
        within(10, "the push through Prometheus", scraped('wsexec_pushes_total{job="wsexec"}', 1))
        within(10, "the scrape is up", scraped('up{job="wsexec"}', 1))
        assert server.proc.poll() is None, stderr_tail()

        # --- the token: Prometheus sends it (the example's authorization block) -----
        within(10, "the token-protected job is up", scraped('up{job="wsexec-remote"}', 1))
        assert http_get(f"{guarded_control}/metrics")[0] == 401
        with urllib.request.urlopen(urllib.request.Request(
                f"{guarded_control}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}), timeout=5) as answer:
            assert answer.status == 200
        targets = json.loads(http_get(f"{api}/api/v1/targets", 5)[1])["data"]["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        assert health == {"wsexec": "up", "wsexec-remote": "up"}, targets
    finally:
        if prometheus is not None:
            stop(prometheus)
        server.stop()
        if guarded is not None:
            guarded.stop()
