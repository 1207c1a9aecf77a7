"""--framed end to end, and the handler's own close code: the shipped echo
handlers in sh, Python and C return every message byte for byte with its
type; a handler closes with 4000-4999 by a `c` record or a `wsexec-close`
stderr line; anything else is refused with a log line."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from support.clients import client_frame, collect, raw_upgrade
from support.servers import PY, ROOT, WsexecProcess, drain_output, make_config, script, serving
from support.procfs import descendants, fd_count
from support.waiting import trio_test, wait_for, wait_until

EXAMPLES = ROOT / "examples" / "framed"

MESSAGES: List[object] = [
    "hello", "", b"", "two\nlines\n", "\n", "caf\u00e9 \u2603", b"\x00\n\xff\n", b"t 5\n", "b 3\nxyz\n",
    bytes(range(256)) * 40, "x" * 70_000, b"\n" * 3,
]


async def exchange(url: str, send: List[object], expect: int, timeout: float = 10) -> Tuple[List[object], Optional[int], str]:
    """Send every message, read `expect` back (str for text, bytes for binary), then the close."""
    got: List[object] = []
    with trio.fail_after(timeout):
        async with open_websocket_url(url, max_message_size=1 << 24) as ws:
            for message in send:
                await ws.send_message(message)
            try:
                while len(got) < expect:
                    got.append(await ws.get_message())
                await ws.aclose()
            except ConnectionClosed as e:
                return got, e.reason.code, e.reason.reason or ""
            return got, ws.closed.code if ws.closed else None, ""
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def c_echo(tmp_path_factory) -> Path:
    binary = tmp_path_factory.mktemp("c") / "echo"
    subprocess.run(["cc", "-O2", "-Wall", "-Werror", "-o", str(binary), str(EXAMPLES / "echo.c")], check=True, timeout=60)
    return binary


@pytest.mark.parametrize("handler", ["echo.sh", "echo.py", "c"])
@trio_test(60)
async def test_the_example_echo_handlers_return_every_message_as_it_came(handler, c_echo):
    program = c_echo if handler == "c" else EXAMPLES / handler
    async with serving(make_config(program, framed=True)) as (state, url):
        got, code, _ = await exchange(url + "/", MESSAGES, len(MESSAGES))
    assert got == MESSAGES  # str is a text message, bytes a binary one
    assert code == 1000


@trio_test(30)
async def test_the_sh_helper_upper_handler(tmp_path):
    async with serving(make_config(EXAMPLES / "upper.sh", framed=True)) as (state, url):
        got, code, reason = await collect(url + "/", ["abc\ndef\n", "x\n\n", "a\nb", b"\x00" * 10, "bye"])
    assert got == ["ABC\nDEF\n", "X\n\n", "A\nB", "a binary message of 10 bytes"]
    assert (code, reason) == (4000, "goodbye")


@pytest.mark.parametrize("ending, told", [
    ([client_frame(0x8, (3001).to_bytes(2, "big") + "see you \u2603".encode())], "3001 see you \u2603"),
    ([client_frame(0x8)], "1005"),  # a close frame without a code
    ([], "1006 client gone"),  # the TCP connection closed without a close frame
    ([client_frame(0x1, b"x", mask=False)], "1002 "),  # a protocol error: the close wsexec sent
    (None, "1001 server shutting down"),
])
@trio_test(30)
async def test_the_handler_is_told_how_the_connection_ended(tmp_path, ending, told):
    """A `c` record, last on the handler's stdin, says how the connection
    ended without it."""
    out = tmp_path / "stdin"
    handler = script(tmp_path, "keep.sh", f"#!/bin/sh\nexec cat > {out}\n", "/bin/sh")
    async with serving(make_config(handler, framed=True)) as (state, url):
        stream, _ = await raw_upgrade(state.addresses[0][1])
        await stream.send_all(client_frame(0x1, b"hi"))
        await wait_until(lambda: out.exists() and out.read_bytes() == b"t 2\nhi\n", 10)
        if ending is not None:
            for frame in ending:
                await stream.send_all(frame)
            if not ending or ending[0][0] & 0x0F == 0x8:
                await stream.aclose()
            await wait_until(lambda: out.read_bytes() != b"t 2\nhi\n", 10)
    if ending is None:
        await wait_until(lambda: out.read_bytes() != b"t 2\nhi\n", 10)
        await stream.aclose()
    data = out.read_bytes()
    assert data.startswith(b"t 2\nhi\nc ")
    header, payload, end = data[len(b"t 2\nhi\n"):].split(b"\n", 2)
    assert header == b"c %d" % len(payload) and end == b""
    assert payload.decode().startswith(told), payload


CLOSE_RECORD = r"""
printf 't 6\nbefore\n'
printf 'c 21\n4001 no such room: \303\251\n'
printf 't 5\nafter\n'  # after the close: never sent
sleep 5
"""


@trio_test(20)
async def test_a_close_record_ends_the_output_and_closes_at_once(tmp_path):
    handler = script(tmp_path, "closer.sh", CLOSE_RECORD, "/bin/sh")
    async with serving(make_config(handler, framed=True)) as (state, url):
        started = trio.current_time()
        got, code, reason = await collect(url + "/")
        took = trio.current_time() - started
    assert got == ["before"]
    assert (code, reason) == (4001, "no such room: \u00e9")
    assert took < 3, "the close waited for the handler to end by itself"


def run_logged(args: List[str], handler: Path, send: List[object] = ()) -> Tuple[List[object], int, str, str]:
    """A real wsexec process; (messages, code, reason, its log)."""
    with WsexecProcess("--loglevel", "access", *args, str(handler)) as server:
        log = drain_output(server)
        got, code, reason = trio.run(collect, f"ws://127.0.0.1:{server.port}/", send)
        wait_for(lambda: b"DISCONNECT" in log(), 5, "the DISCONNECT line")
    return got, code, reason, log().decode(errors="replace")


@pytest.mark.parametrize("body, args, close, logged", [
    # a `c` record: taken, refused outside 4000-4999 (then the exit status closes)
    ("printf 'c 8\\n4100 bye\\n'", ["--framed"], (4100, "bye"), None),
    ("printf 'c 8\\n1000 bye\\n'; exit 0", ["--framed"], (1000, ""), "may not choose (a close code must be 4000-4999, not 1000): refused"),
    ("printf 'c 4\\n3000\\n'; exit 3", ["--framed"], (1011, "exit status 3"), "not 3000"),
    # a stderr line, in any mode: taken when the handler ends; the last one counts
    ("echo hi; echo 'wsexec-close 4002 first' >&2; echo 'wsexec-close 4003 last' >&2; exit 1", [],
     (4003, "last"), None),
    ("echo hi; echo 'wsexec-close 4004 bye' >&2", ["--binary"], (4004, "bye"), None),
    ("echo 'wsexec-close 4005 bye' >&2; printf 't 2\\nhi\\n'", ["--framed"], (4005, "bye"), None),
    ("echo 'wsexec-close 999 no' >&2; exit 2", [], (1011, "exit status 2"), "not 999"),
    ("echo 'wsexec-close 5000 no' >&2", [], (1000, ""), "not 5000"),
    # what a framed handler gets wrong
    ("printf 'hello\\n'", ["--framed"], (1011, "bad framed output: not a record header: b'hello'"),
     "bad framed output"),
    ("printf 't 5\\nhello!'", ["--framed"], (1011, "bad framed output: a record of 5 bytes is not followed by a newline"),
     "bad framed output"),
    ("printf 't 5\\nhel'", ["--framed"], (1011, "bad framed output: the output ended inside a record"), "inside a record"),
    ("printf 'b 200\\n'", ["--framed", "--maxmessage", "126"], (1009, "a framed message of 200 bytes exceeds 126 bytes"),
     "exceeds 126 bytes"),
])
def test_how_a_handler_ends_its_connection(tmp_path, body, args, close, logged):
    handler = script(tmp_path, "h.sh", body + "\n", "/bin/sh")
    _, code, reason, log = run_logged(args, handler)
    assert (code, reason) == close, log
    if logged:
        assert logged in log, log


def test_the_stderr_close_line_is_logged_like_any_stderr_line(tmp_path):
    handler = script(tmp_path, "h.sh", "echo hi\necho 'wsexec-close 4010 see you' >&2\n", "/bin/sh")
    got, code, reason, log = run_logged([], handler)
    assert (got, code, reason) == (["hi"], 4010, "see you")
    assert "stderr: wsexec-close 4010 see you" in log
    assert "close=4010/see you" in log


def test_framed_output_of_a_client_that_left_is_not_an_error(tmp_path):
    # the client goes first: its own close code is echoed, whatever the handler asked
    handler = script(tmp_path, "h.py", "import sys, time\nsys.stdin.read()\n")
    with WsexecProcess("--loglevel", "access", "--framed", PY, str(handler)) as server:
        log = drain_output(server)

        async def leave() -> None:
            with trio.fail_after(10):
                async with open_websocket_url(f"ws://127.0.0.1:{server.port}/") as ws:
                    await ws.send_message("x")
                    await ws.aclose(4321, "client says")

        trio.run(leave)
        wait_for(lambda: b"DISCONNECT" in log(), 5, "the DISCONNECT line")
    assert b"close=4321/client says" in log()


@pytest.mark.parametrize("args, words", [
    (["--framed", "--binary"], ["--framed", "--binary"]),
    (["--framed", "--passstderr"], ["--framed", "--passstderr"]),
    (["--framed", "--shared"], ["--framed", "--shared"]),
])
def test_framed_with_a_mode_it_cannot_combine_with_exits_4(args, words):
    result = subprocess.run([PY, "-m", "wsexec", "--port", "0", *args, "cat"], cwd=ROOT, capture_output=True,
                            timeout=20)
    assert result.returncode == 4, result.stderr
    for word in words:
        assert word.encode() in result.stderr


def descriptors_for_10_connections(handler: Path, mode: List[str]) -> int:
    with WsexecProcess("--loglevel", "error", *mode, str(handler)) as server:
        drain_output(server)
        pid = server.proc.pid

        async def hold() -> int:
            before = fd_count(pid)
            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    opened = trio.Semaphore(0)
                    release = trio.Event()

                    async def one() -> None:
                        async with open_websocket_url(f"ws://127.0.0.1:{server.port}/"):
                            opened.release()
                            await release.wait()

                    for _ in range(10):
                        nursery.start_soon(one)
                    for _ in range(10):
                        await opened.acquire()
                    await wait_until(lambda: len(descendants(pid)) >= 10, 10, "10 handlers")
                    used = fd_count(pid) - before
                    release.set()
            return used

        return trio.run(hold)


def test_no_mode_costs_a_descriptor_more_per_connection(tmp_path):
    # the benchmark holds 4,500 connections at 4 descriptors each (with the
    # client's) under a 20,000 limit: framing, stderr to the client and the
    # handler's own close live in the descriptors every connection has
    handler = script(tmp_path, "wait.sh", "read -r line\n", "/bin/sh")
    used = {" ".join(mode): descriptors_for_10_connections(handler, mode)
            for mode in ([], ["--framed"], ["--passstderr"])}
    assert len(set(used.values())) == 1, used
    assert used[""] < 35, used  # 3 a connection (its socket, the handler's socket, the stderr pipe), and a few once
