"""Bad clients: malformed handshakes, slowloris, oversized and invalid frames,
clients that never read, path traversal, header injection, foreign origins.

Every refusal is checked two ways: the answer on the wire, and that no handler
was started (handlers here append their PID to a marker file first thing).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio_websocket import open_websocket_url

from support.clients import (
    client_frame, collect, raw_http, raw_upgrade, read_server_frames, upgrade_request,
)
from support.procfs import alive, descendants, proc_status
from support.servers import WsexecProcess, drain_output, make_config, script, serving
from support.waiting import trio_test, wait_gone, wait_no_descendants, wait_slots_free, wait_until

MAXHEADER = 2048


def marker_handler(directory: Path, name: str = "marked") -> Tuple[Path, Path]:
    """A cat that first appends its PID to a marker file: (handler, marker)."""
    marker = directory / f"{name}.pids"
    handler = script(directory, name, f'echo $$ >> "{marker}"\nexec cat\n', interpreter="/bin/sh")
    return handler, marker


def started_pids(marker: Path) -> List[int]:
    return [int(x) for x in marker.read_text().split()] if marker.exists() else []


def status_of(answer: bytes) -> Optional[int]:
    """The HTTP status of a raw answer; None for no answer at all."""
    if not answer:
        return None
    first = answer.split(b"\r\n", 1)[0].split()
    assert len(first) >= 2 and first[0] == b"HTTP/1.1", answer[:200]
    return int(first[1])


def head(method: str = "GET", target: str = "/", version: str = "HTTP/1.1", drop: str = "", extra: List[str] = ()) -> bytes:  # type: ignore[assignment]
    lines = [
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    lines = [line for line in lines if not (drop and line.startswith(drop + ":"))] + list(extra)
    return (f"{method} {target} {version}\r\n" + "".join(f"{line}\r\n" for line in lines) + "\r\n").encode("latin-1")


VALID = head()
NOT_16_BYTES = st.binary(max_size=40).filter(lambda b: len(b) != 16).map(lambda b: base64.b64encode(b).decode())

# (what is wrong, request bytes) -> the statuses allowed (None: closed without an answer)
MALFORMED = st.one_of(
    st.integers(0, len(VALID) - 1).map(lambda n: ("truncated", VALID[:n])),
    st.integers(MAXHEADER + 1, 6 * MAXHEADER).map(lambda n: ("oversized", head(extra=["X-Pad: " + "a" * n]))),
    st.integers(MAXHEADER // 8, 3000).map(lambda n: ("header count", head(extra=[f"X-{i}: v" for i in range(n)]))),
    st.sampled_from(["", "8", "12", "14", "13, 8", "0x0d", "thirteen"]).map(
        lambda v: ("version", head(drop="Sec-WebSocket-Version", extra=[f"Sec-WebSocket-Version: {v}"]))
    ),
    st.just(("no version", head(drop="Sec-WebSocket-Version"))),
    st.just(("no key", head(drop="Sec-WebSocket-Key"))),
    st.one_of(NOT_16_BYTES, st.sampled_from(["!!!!", "dGhlIHNhbXBsZSBub25jZQ", "*" * 24])).map(
        lambda k: ("bad key", head(drop="Sec-WebSocket-Key", extra=[f"Sec-WebSocket-Key: {k}"]))
    ),
    st.sampled_from(["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "get", "FOO"]).map(
        lambda m: ("method", head(method=m))
    ),
    st.just(("http/1.0", head(version="HTTP/1.0"))),
    st.sampled_from(["HTTP/0.9", "HTTP/2.0", "HTTP/3.0", "HTTP/9.1"]).map(lambda v: ("major version", head(version=v))),
    st.binary(min_size=1, max_size=3 * MAXHEADER).map(lambda b: ("garbage", b)),
    st.binary(min_size=1, max_size=200).map(lambda b: ("garbage head", b"GET / HTTP/1.1\r\n" + b + b"\r\n\r\n")),
)
ALLOWED = {
    "truncated": {None},
    "oversized": {431},
    "header count": {431},
    "version": {426},
    "no version": {426},
    "no key": {400},
    "bad key": {400},
    "method": {405},
    "http/1.0": {400},
    "major version": {505},
    "garbage": {None, 400, 431},
    "garbage head": {None, 400, 431},
}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):  # type: ignore[no-untyped-def]
    directory = tmp_path_factory.mktemp("fuzz")
    handler, marker = marker_handler(directory)
    with WsexecProcess("--loglevel", "error", "--maxheader", str(MAXHEADER), "--handshakems", "1500", str(handler)) as server:
        drain_output(server)
        yield server, marker


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=MALFORMED)
def test_malformed_handshakes_are_refused_without_a_child(fuzz_server, case) -> None:  # type: ignore[no-untyped-def]
    server, marker = fuzz_server
    kind, data = case
    answer = trio.run(lambda: raw_http(server.port, data, half_close=True))
    status = status_of(answer)
    assert status in ALLOWED[kind], (kind, data[:300], answer[:300])
    if status == 426:
        assert b"\r\nSec-WebSocket-Version: 13\r\n" in answer
    assert started_pids(marker) == [], (kind, data[:300])
    assert server.proc.poll() is None
    assert descendants(server.proc.pid) == []


def test_server_still_serves_after_the_fuzzing(fuzz_server) -> None:  # type: ignore[no-untyped-def]
    # Runs after the hypothesis test (file order): the same server still works.
    server, marker = fuzz_server
    # The same valid head the fuzzer mutates really is accepted (the fuzz is not refusing everything).
    answer = trio.run(lambda: raw_http(server.port, VALID, half_close=True))
    assert answer.startswith(b"HTTP/1.1 101 "), answer[:200]
    assert trio.run(echo_once, server.url + "/", "ping") == "ping"
    assert len(started_pids(marker)) == 2


async def echo_once(url: str, message: str, timeout: float = 5) -> str:
    with trio.fail_after(timeout):
        async with open_websocket_url(url) as ws:
            await ws.send_message(message)
            return await ws.get_message()


# --- slowloris ---------------------------------------------------------------


async def slowloris(port: int, results: List[float], started: float, stop_after: float) -> None:
    """Send the request head one byte a second; record when the server cuts us off."""
    # Timed from before the connect: the server's --handshakems starts no
    # earlier than that, however late this task runs on a loaded machine.
    connected = trio.current_time()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    answer = b""
    async with stream:
        data = upgrade_request()
        for i in range(int(stop_after)):
            try:
                await stream.send_all(data[i : i + 1])
            except trio.BrokenResourceError:
                break
            with trio.move_on_after(1):
                try:
                    chunk = await stream.receive_some(4096)
                except trio.BrokenResourceError:
                    chunk = b""
                answer += chunk
                if not chunk:
                    break
                while chunk:  # the answer, then EOF (or a reset: the answer is in already)
                    try:
                        chunk = await stream.receive_some(4096)
                    except trio.BrokenResourceError:
                        chunk = b""
                    answer += chunk
                break
        results.append((trio.current_time() - connected, status_of(answer)))  # type: ignore[arg-type]


async def timed_echo(url: str) -> float:
    start = trio.current_time()
    assert await echo_once(url + "/", "hello") == "hello"
    return trio.current_time() - start


async def run_slowloris(tmp_path: Path, n: int) -> None:
    handler = script(tmp_path, "once", "import sys\nprint(sys.stdin.readline().strip(), flush=True)\n")
    config = make_config(str(handler), handshakems=1500, loglevel="error")
    async with serving(config) as (state, url):
        port = state.addresses[0][1]
        results: List[Tuple[float, Optional[int]]] = []
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(slowloris, port, results, 0, 10)
                if i % 100 == 99:
                    await trio.sleep(0)
            await trio.sleep(0.5)
            echo_times = [await timed_echo(url)]
            await trio.sleep(0.5)
            echo_times.append(await timed_echo(url))
        assert len(results) == n
        durations = sorted(d for d, _ in results)
        print(f"slowloris n={n}: echo {echo_times}, cut off after {durations[0]:.2f}..{durations[-1]:.2f} s")
        assert max(echo_times) < 1.0, echo_times
        assert all(status == 408 for _, status in results), results[:5]
        # cut off at --handshakems (1.5 s), not before, and not much after
        assert 1.4 <= durations[0] and durations[-1] < 3.5, (durations[0], durations[-1])
        await wait_slots_free(state, 3)


@trio_test(30)
async def test_slowloris_200_sockets_do_not_block_a_normal_client(tmp_path) -> None:  # type: ignore[no-untyped-def]
    await run_slowloris(tmp_path, 200)


@pytest.mark.slow
@trio_test(60)
async def test_slowloris_1000_sockets_do_not_block_a_normal_client(tmp_path) -> None:  # type: ignore[no-untyped-def]
    await run_slowloris(tmp_path, 1000)


# --- frames ------------------------------------------------------------------


def pid_handler(directory: Path) -> Tuple[Path, Path]:
    """A cat that writes its PID to a file first."""
    pidfile = directory / "pid"
    return script(directory, "pidcat", f'echo $$ > "{pidfile}"\nexec cat\n', interpreter="/bin/sh"), pidfile


async def wait_pid(pidfile: Path) -> int:
    """The PID the handler wrote to pidfile, once it is there."""
    await wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 5, f"a PID in {pidfile}")
    return int(pidfile.read_text())


async def frames_close_code(tmp_path: Path, frames: List[bytes], echo_bytes: int = 0, **options) -> Tuple[List, Optional[int]]:  # type: ignore[no-untyped-def]
    """Connect to a pid-reporting cat, send raw frames, read to the close; the
    handler must be gone afterwards. With echo_bytes, wait for that many bytes
    of data messages first, then send a close frame."""
    handler, pidfile = pid_handler(tmp_path)
    options.setdefault("loglevel", "error")
    async with serving(make_config(str(handler), **options)) as (state, url):
        port = state.addresses[0][1]
        with trio.fail_after(10):
            stream, rest = await raw_upgrade(port)
            async with stream:
                pid = await wait_pid(pidfile)
                for frame in frames:
                    try:
                        await stream.send_all(frame)
                    except trio.BrokenResourceError:
                        break
                if echo_bytes:
                    while len(rest) < echo_bytes:  # the echo (frame headers make it more)
                        rest += await stream.receive_some(65536)
                    await stream.send_all(client_frame(0x8, b"\x03\xe8"))
                received, code = await read_server_frames(stream, rest)
            await wait_gone(pid, timeout=3)
            await wait_slots_free(state, 3)
    return received, code


OVERSIZED = {
    "one frame": [client_frame(0x2, b"x" * 2000)],
    "announced only": [client_frame(0x2, b"", length=1 << 40)[:14]],
    "fragments": [client_frame(0x1, b"a" * 600, fin=False), client_frame(0x0, b"a" * 600)],
    "text": [client_frame(0x1, b"a" * 1025)],
}


@pytest.mark.parametrize("name", sorted(OVERSIZED))
@trio_test(20)
async def test_oversized_message_closes_1009_and_ends_the_child(tmp_path, name) -> None:  # type: ignore[no-untyped-def]
    received, code = await frames_close_code(tmp_path, OVERSIZED[name], maxmessage=1024)
    assert code == 1009 and received == []


@trio_test(20)
async def test_message_of_exactly_maxmessage_is_accepted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The control for the test above: the limit is the limit, not one below it.
    received, code = await frames_close_code(
        tmp_path, [client_frame(0x2, b"y" * 1024)], echo_bytes=1024, maxmessage=1024, binary=True
    )
    assert code == 1000 and b"".join(p for _, p in received) == b"y" * 1024


@trio_test(20)
async def test_oversized_output_line_closes_1009(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pidfile = tmp_path / "pid"
    handler = script(
        tmp_path, "long",
        f"import os, sys, time\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
        "sys.stdout.write('z' * 5000)\nsys.stdout.flush()\ntime.sleep(30)\n",
    )
    async with serving(make_config(str(handler), maxmessage=1024, loglevel="fatal")) as (state, url):
        messages, code, _ = await collect(url + "/", timeout=10)
        assert code == 1009 and messages == []
        await wait_gone(int(pidfile.read_text()), timeout=3)


BAD_UTF8 = {
    "invalid byte": [client_frame(0x1, b"\xff")],
    "overlong": [client_frame(0x1, b"\xc0\xaf")],
    "surrogate": [client_frame(0x1, b"\xed\xa0\x80")],
    "truncated sequence": [client_frame(0x1, b"ok\xe2\x82")],
    "fragmented": [client_frame(0x1, b"\xce", fin=False), client_frame(0x0, b"\xba\xe1\xbd\xb9\xff")],
    "close reason": [client_frame(0x8, b"\x03\xe8\xff\xfe")],
}

PROTOCOL = {
    "unmasked": [client_frame(0x1, b"hi", mask=False)],
    "rsv1": [client_frame(0x1, b"hi", rsv=4)],
    "rsv2": [client_frame(0x2, b"hi", rsv=2)],
    "rsv3": [client_frame(0x9, b"", rsv=1)],
    "opcode 3": [client_frame(0x3, b"")],
    "opcode 0xb": [client_frame(0xB, b"")],
    "fragmented ping": [client_frame(0x9, b"a", fin=False)],
    "ping of 126 bytes": [client_frame(0x9, b"p" * 126)],
    "continuation first": [client_frame(0x0, b"x")],
    "new message inside fragmented": [client_frame(0x1, b"a", fin=False), client_frame(0x1, b"b")],
    "close code 1005": [client_frame(0x8, b"\x03\xed")],
    "close code 999": [client_frame(0x8, b"\x03\xe7")],
    "1-byte close": [client_frame(0x8, b"\x03")],
    "64-bit length with top bit": [client_frame(0x2, b"", length=1 << 63)[:14]],
}


@pytest.mark.parametrize("name", sorted(BAD_UTF8))
@trio_test(20)
async def test_invalid_utf8_closes_1007(tmp_path, name) -> None:  # type: ignore[no-untyped-def]
    received, code = await frames_close_code(tmp_path, BAD_UTF8[name])
    assert code == 1007 and received == []


@pytest.mark.parametrize("name", sorted(PROTOCOL))
@trio_test(20)
async def test_protocol_violation_closes_1002(tmp_path, name) -> None:  # type: ignore[no-untyped-def]
    received, code = await frames_close_code(tmp_path, PROTOCOL[name], maxmessage=1 << 20)
    assert code == 1002 and received == []


@trio_test(20)
async def test_valid_frames_are_echoed_by_the_same_harness(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Control: the raw-frame harness is right (it can see a clean 1000).
    frames = [
        client_frame(0x1, "κόσμε".encode(), fin=False),
        client_frame(0x9, b"p"),
        client_frame(0x0, b"!"),
    ]
    received, code = await frames_close_code(tmp_path, frames, echo_bytes=2 + 2 + 12)
    assert received == [(0xA, b"p"), (0x1, "κόσμε!".encode())] and code == 1000


# --- a client that never reads -------------------------------------------------

FLOOD = """
import os, sys, time
# Write up to 1 GiB as fast as stdout takes it; record progress in a file.
count_file = sys.argv[1]
line = (b"x" * 1023 + b"\\n") * 64  # 64 KiB of 1 KiB lines
written = 0
while written < (1 << 30):
    written += os.write(1, line)
    with open(count_file + ".tmp", "w") as f:
        f.write(str(written))
    os.replace(count_file + ".tmp", count_file)
"""
RSS_BOUND_KB = 64 * 1024
WRITE_BOUND = 64 << 20


@pytest.mark.parametrize("mode", ["text", "binary"])
def test_client_that_never_reads_gets_backpressure(tmp_path, mode) -> None:  # type: ignore[no-untyped-def]
    count_file = tmp_path / "written"
    handler = script(tmp_path, "flood", FLOOD)
    args = ["--loglevel", "error"] + (["--binary"] if mode == "binary" else []) + [str(handler), str(count_file)]
    with WsexecProcess(*args) as server:
        drain_output(server)
        rss_before = proc_status(server.proc.pid, "VmRSS")

        async def never_read() -> Tuple[int, List[int]]:
            samples = []
            stream, _ = await raw_upgrade(server.port)
            async with stream:
                with trio.fail_after(15):
                    for _ in range(30):  # 3 s of flood, sampling RSS every 0.1 s
                        await trio.sleep(0.1)
                        samples.append(proc_status(server.proc.pid, "VmRSS"))
                    first = int(count_file.read_text())
                    await trio.sleep(1)
                    second = int(count_file.read_text())
                    kids = descendants(server.proc.pid)
                    assert len(kids) == 1 and alive(kids[0]), kids
                    state = Path(f"/proc/{kids[0]}/stat").read_text().rsplit(")", 1)[1].split()[0]
                    assert state == "S", state  # asleep (blocked in write), not running
            return first, second, samples

        first, second, samples = trio.run(never_read)
        growth = max(samples) - rss_before
        print(f"{mode}: handler wrote {second / 2**20:.1f} MiB of 1024 MiB, wsexec RSS {rss_before} kB -> max {max(samples)} kB (+{growth} kB)")
        assert second < WRITE_BOUND, second  # blocked long before 1 GiB
        assert second == first, (first, second)  # and no longer moving
        assert growth < RSS_BOUND_KB, growth
        # the client left: the blocked handler is ended too
        wait_no_descendants(server.proc.pid)


# --- path traversal against --dir --------------------------------------------

TRAVERSALS = [
    "/../outside.sh",
    "/../../outside.sh",
    "/%2e%2e/outside.sh",
    "/%2E%2E/outside.sh",
    "/.%2e/outside.sh",
    "/%2e%2e%2foutside.sh",
    "/..%2foutside.sh",
    "/..%2Foutside.sh",
    "/%252e%252e/outside.sh",
    "/%252e%252e%252foutside.sh",
    "/..%5coutside.sh",
    "/..\\outside.sh",
    "/sub/..%2f..%2foutside.sh",
    "/ok.sh%00",
    "/ok.sh%00.png",
    "/%00/../outside.sh",
    "/link.sh",
    "/linkdir/outside.sh",
    "/linkdir/root/../outside.sh",
    "//outside.sh",
    "/./../outside.sh",
    "/.hidden.sh",
    "/%2ehidden.sh",
    "/sub",
    "/notexec.sh",
    "http://127.0.0.1/../outside.sh",
]


@pytest.fixture
def script_root(tmp_path):  # type: ignore[no-untyped-def]
    marker = tmp_path / "escaped"
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    toucher = f'touch "{marker}"\necho escaped\n'
    script(tmp_path, "outside.sh", toucher, interpreter="/bin/sh")
    script(root, ".hidden.sh", toucher, interpreter="/bin/sh")
    script(root, "ok.sh", "echo ok\n", interpreter="/bin/sh")
    (root / "notexec.sh").write_text(f"#!/bin/sh\n{toucher}")
    (root / "link.sh").symlink_to(tmp_path / "outside.sh")
    (root / "linkdir").symlink_to(tmp_path)
    return root, marker


@trio_test(30)
async def test_path_traversal_never_escapes_dir(script_root) -> None:  # type: ignore[no-untyped-def]
    root, marker = script_root
    async with serving(make_config(dir=str(root), loglevel="fatal")) as (state, url):
        port = state.addresses[0][1]
        for target in TRAVERSALS:
            answer = await raw_http(port, upgrade_request(target))
            assert status_of(answer) in (400, 404), (target, answer[:200])
        # the control: the same harness reaches a script inside the root
        ok = await raw_http(port, upgrade_request("/ok.sh"))
        assert ok.startswith(b"HTTP/1.1 101 ") and b"ok" in ok, ok
        assert state.handlers.slots.taken == 0
    assert not marker.exists()


# --- header injection --------------------------------------------------------

ENV_DUMP = """
import json, os
print(json.dumps(dict(os.environ)), flush=True)
"""

INJECTED = [
    "Proxy: http://evil.example:3128",
    "Remote-Addr: 6.6.6.6",
    "Remote_Addr: 6.6.6.6",
    "REMOTE_ADDR: 6.6.6.6",
    "Script-Name: /evil",
    "Script_Name: /evil",
    "Path-Info: /evil",
    "Query-String: evil=1",
    "Gateway-Interface: evil",
    "Server-Software: evil",
    "Unique-Id: evil",
    "X_Forwarded_For: 6.6.6.6",
    "X-Forwarded-For: 10.0.0.1",
    "X-Forwarded-For: 10.0.0.2",
    "Path: /evil/bin",
    "Ld-Preload: /tmp/evil.so",
    "X-Latin: caf\xe9",
    "X-Weird!#$%&'*+.^`|~: odd but a token",
    "X-Empty:",
    "X-Spaces:    padded   ",
    "X-Fold: a\r\n folded",  # obs-fold: unfolded to spaces (RFC 9112 section 5.2)
]


@trio_test(20)
async def test_headers_cannot_override_cgi_variables(tmp_path) -> None:  # type: ignore[no-untyped-def]
    handler = script(tmp_path, "env", ENV_DUMP)
    async with serving(make_config(str(handler), loglevel="fatal")) as (state, url):
        port = state.addresses[0][1]
        stream, rest = await raw_upgrade(port, "/p?q=1", "".join(h + "\r\n" for h in INJECTED))
        async with stream:
            frames, code = await read_server_frames(stream, rest)
        assert code == 1000 and len(frames) == 1, (frames, code)
        env = json.loads(frames[0][1])
    assert "HTTP_PROXY" not in env
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["REMOTE_HOST"] == "127.0.0.1"
    assert env["SCRIPT_NAME"] == "/" and env["PATH_INFO"] == "/p" and env["QUERY_STRING"] == "q=1"
    assert env["GATEWAY_INTERFACE"] == "CGI/1.1" and env["SERVER_SOFTWARE"].startswith("wsexec/")
    assert env["UNIQUE_ID"] != "evil" and env["PATH"] == os.environ["PATH"]
    assert "LD_PRELOAD" not in env
    # headers with '_' are dropped, so they cannot pose as their '-' spelling
    assert env["HTTP_X_FORWARDED_FOR"] == "10.0.0.1, 10.0.0.2"
    assert env["HTTP_REMOTE_ADDR"] == "6.6.6.6" and env["HTTP_SCRIPT_NAME"] == "/evil"
    assert env["HTTP_X_SPACES"] == "padded" and env["HTTP_X_EMPTY"] == ""
    assert env["HTTP_X_FOLD"].split() == ["a", "folded"]
    # a legal token with characters no shell variable can hold is dropped, as Apache does
    assert not [name for name in env if "WEIRD" in name]
    for name, value in env.items():
        assert name and all(c.isupper() or c.isdigit() or c == "_" for c in name), name
        assert not any(c in value for c in "\r\n\0"), (name, value)
    assert env["HTTP_X_LATIN"].encode("utf-8", "surrogateescape") == b"caf\xe9"


@pytest.mark.parametrize(
    "extra,expected",
    [
        ("Host: evil.example\r\n", 400),  # a second Host (RFC 9112 section 3.2)
        ("X Bad: 1\r\n", 400),
        ("X-Bad : 1\r\n", 400),
        (":empty: 1\r\n", 400),
        ("X-Nul: a\0b\r\n", 400),
        ("X-CR: a\rb\r\n", 400),
        ("X-Ünicode: 1\r\n", 400),
    ],
)
@trio_test(20)
async def test_malformed_headers_are_refused_without_a_child(tmp_path, extra, expected) -> None:  # type: ignore[no-untyped-def]
    handler, marker = marker_handler(tmp_path)
    async with serving(make_config(str(handler), loglevel="fatal")) as (state, url):
        answer = await raw_http(state.addresses[0][1], upgrade_request("/", extra))
        assert status_of(answer) == expected, answer[:300]
    assert started_pids(marker) == []


# --- origin checks -----------------------------------------------------------

ORIGIN_CASES = [
    # (options, Origin header or None, expected status)
    ({"origins": ("good.example",)}, "http://evil.example", 403),
    ({"origins": ("good.example",)}, "http://good.example.evil.example", 403),
    ({"origins": ("good.example",)}, "http://evilgood.example", 403),
    ({"origins": ("good.example:8080",)}, "http://good.example:8081", 403),
    ({"origins": ("https://good.example",)}, "http://good.example", 403),
    ({"origins": ("good.example",)}, "null", 403),
    ({"origins": ("good.example",)}, "file://", 403),
    ({"origins": ("good.example",)}, None, 403),
    ({"origins": ("good.example",)}, "http://good.example", 101),
    ({"origins": ("good.example",)}, "https://GOOD.example:443", 101),
    ({"sameorigin": True}, "http://evil.example", 403),
    ({"sameorigin": True}, "http://127.0.0.1:81", 403),
    ({"sameorigin": True}, "null", 403),
    ({"sameorigin": True}, "http://127.0.0.1.evil.example", 403),
    ({"sameorigin": True}, "http://127.0.0.1", 101),
    ({"sameorigin": True}, None, 101),
]


@pytest.mark.parametrize("options,origin,expected", ORIGIN_CASES)
@trio_test(20)
async def test_origin_checks(tmp_path, options, origin, expected) -> None:  # type: ignore[no-untyped-def]
    handler, marker = marker_handler(tmp_path)
    async with serving(make_config(str(handler), loglevel="fatal", **options)) as (state, url):
        extra = f"Origin: {origin}\r\n" if origin is not None else ""
        stream = await trio.open_tcp_stream("127.0.0.1", state.addresses[0][1])
        async with stream:
            await stream.send_all(upgrade_request("/", extra))
            with trio.fail_after(5):
                answer = await stream.receive_some(65536)
        assert status_of(answer) == expected, answer[:300]
        if expected == 403:
            await trio.sleep(0.2)  # time a handler would have needed to start
            assert started_pids(marker) == []
        else:
            await wait_until(lambda: started_pids(marker), 5, "a handler started")
