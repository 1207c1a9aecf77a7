"""--passstderr, as websocketd HEAD has it (qa/integration/issue459_test.go):
stdout and stderr lines reach the client as JSON text messages
{"stream":"stdout","data":...} and {"stream":"stderr","data":...}, stderr is
still logged, and --binary with it exits 4 naming both flags."""

from __future__ import annotations

import json
import subprocess

import pytest
import trio
from trio_websocket import open_websocket_url

from support.clients import collect
from support.servers import PY, ROOT, WsexecProcess, drain_output, make_config, script, serving
from support.waiting import trio_test, wait_for

BOTH = "echo 'stdout line'\necho 'stderr line' >&2\n"


def parsed(messages):
    assert all(isinstance(m, str) for m in messages), messages  # text messages only
    return [json.loads(m) for m in messages]


def test_both_streams_reach_the_client_tagged_and_stderr_is_still_logged(tmp_path):
    handler = script(tmp_path, "both.sh", BOTH, "/bin/sh")
    with WsexecProcess("--passstderr", str(handler)) as server:
        log = drain_output(server)
        messages, code, _ = trio.run(collect, f"ws://127.0.0.1:{server.port}/")
        wait_for(lambda: b"DISCONNECT" in log(), 5, "the DISCONNECT line")
    assert sorted(messages) == ['{"stream":"stderr","data":"stderr line"}', '{"stream":"stdout","data":"stdout line"}']
    assert code == 1000
    assert b"stderr: stderr line" in log()


@trio_test(20)
async def test_without_the_flag_nothing_is_wrapped(tmp_path):
    handler = script(tmp_path, "both.sh", BOTH, "/bin/sh")
    async with serving(make_config(handler)) as (state, url):
        messages, code, _ = await collect(url + "/")
    assert (messages, code) == (["stdout line"], 1000)


ESCAPES = r"""
printf '<a href="x">&</a>\t\\ \377 caf\303\251\n'
printf '\001\033[1m bold\r\n' >&2
printf 'no newline at the end' >&2
"""


@trio_test(20)
async def test_the_bytes_are_websocketds(tmp_path):
    handler = script(tmp_path, "escapes.sh", ESCAPES, "/bin/sh")
    async with serving(make_config(handler, passstderr=True)) as (state, url):
        messages, code, _ = await collect(url + "/")
    assert sorted(messages) == sorted([
        '{"stream":"stdout","data":"\\u003ca href=\\"x\\"\\u003e\\u0026\\u003c/a\\u003e\\t\\\\ \\ufffd caf\u00e9"}',
        '{"stream":"stderr","data":"\\u0001\\u001b[1m bold"}',  # CR LF ends the line, as websocketd's trimEOL
        '{"stream":"stderr","data":"no newline at the end"}',
    ])
    assert code == 1000


INTERLEAVED = """
import sys
for i in range(200):
    print("out", i, flush=True)
    print("err", i, file=sys.stderr, flush=True)
"""


@trio_test(30)
async def test_each_stream_keeps_its_order(tmp_path):
    handler = script(tmp_path, "interleaved.py", INTERLEAVED)
    async with serving(make_config(handler, passstderr=True)) as (state, url):
        messages, code, _ = await collect(url + "/", timeout=20)
    objects = parsed(messages)
    assert [o["data"] for o in objects if o["stream"] == "stdout"] == [f"out {i}" for i in range(200)]
    assert [o["data"] for o in objects if o["stream"] == "stderr"] == [f"err {i}" for i in range(200)]
    assert code == 1000


CONVERSATION = """
import sys
for line in sys.stdin:
    print("got", line.strip(), flush=True)
    print("note", line.strip(), file=sys.stderr, flush=True)
"""


@trio_test(20)
async def test_client_messages_still_reach_stdin_as_lines(tmp_path):
    handler = script(tmp_path, "conversation.py", CONVERSATION)
    async with serving(make_config(handler, passstderr=True)) as (state, url):
        with trio.fail_after(10):
            async with open_websocket_url(url + "/") as ws:
                got = []
                for word in ("a", "b"):
                    await ws.send_message(word)
                    got += [json.loads(await ws.get_message()), json.loads(await ws.get_message())]
    assert sorted((o["stream"], o["data"]) for o in got) == [
        ("stderr", "note a"), ("stderr", "note b"), ("stdout", "got a"), ("stdout", "got b")]


@trio_test(20)
async def test_long_lines(tmp_path):
    # a stderr line is sent as it is logged, in pieces of 4096 bytes; a stdout
    # line longer than --maxmessage closes with 1009, as without the flag
    handler = script(tmp_path, "long.py", "import sys\nprint('e' * 5000, file=sys.stderr, flush=True)\n"
                                          "print('o' * 300, flush=True)\n")
    async with serving(make_config(handler, passstderr=True, maxmessage=200)) as (state, url):
        messages, code, reason = await collect(url + "/")
    assert [o["data"] for o in parsed(messages)] == ["e" * 4096, "e" * 904]
    assert (code, reason) == (1009, "output line exceeds 200 bytes")


@trio_test(20)
async def test_a_close_line_is_not_forwarded(tmp_path):
    handler = script(tmp_path, "closer.sh", "echo hi\necho 'wsexec-close 4040 gone' >&2\necho after >&2\n", "/bin/sh")
    async with serving(make_config(handler, passstderr=True)) as (state, url):
        messages, code, reason = await collect(url + "/")
    assert sorted(messages) == ['{"stream":"stderr","data":"after"}', '{"stream":"stdout","data":"hi"}']
    assert (code, reason) == (4040, "gone")


@pytest.mark.parametrize("args", [["--binary", "--passstderr"], ["--passstderr", "--binary"], ["--binary=true", "-passstderr"]])
def test_binary_with_passstderr_exits_4_naming_both(args):
    result = subprocess.run([PY, "-m", "wsexec", "--port", "0", *args, "cat"], cwd=ROOT, capture_output=True,
                            timeout=20)
    assert result.returncode == 4
    assert b"--binary" in result.stderr and b"--passstderr" in result.stderr, result.stderr


def test_passstderr_with_shared_exits_4():
    result = subprocess.run([PY, "-m", "wsexec", "--port", "0", "--shared", "--passstderr", "cat"], cwd=ROOT,
                            capture_output=True, timeout=20)
    assert result.returncode == 4 and b"--shared" in result.stderr, result.stderr


@trio_test(20)
async def test_stderr_alone_wakes_the_output_while_stdout_is_quiet(tmp_path):
    # the far end waits on stdout; a stderr line must still go out at once
    handler = script(tmp_path, "slow.sh", "sleep 0.3\necho a >&2\nsleep 0.3\necho b >&2\nread -r x\necho \"$x\"\n",
                     "/bin/sh")
    async with serving(make_config(handler, passstderr=True)) as (state, url):
        with trio.fail_after(10):
            async with open_websocket_url(url + "/") as ws:
                first = [json.loads(await ws.get_message()), json.loads(await ws.get_message())]
                await ws.send_message("after")
                last = json.loads(await ws.get_message())
    assert first == [{"stream": "stderr", "data": "a"}, {"stream": "stderr", "data": "b"}]
    assert last == {"stream": "stdout", "data": "after"}
