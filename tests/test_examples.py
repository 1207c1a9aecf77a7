"""Every example handler, run by `python -m wsexec` as a real process on 127.0.0.1."""

from __future__ import annotations

import os
import re
import time
from typing import Dict, List, Optional, Tuple

import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from support.servers import ROOT, WsexecProcess
from support.waiting import trio_test, wait_for_line

EXAMPLES = ROOT / "examples"
HANDLERS = ["count.sh", "count.py", "greeter.sh", "greeter.py", "dump-env.sh", "dump-env.py"]


async def read_until_closed(url: str) -> Tuple[List[object], List[float], Optional[int]]:
    """Connect and read every message until the server closes: (messages, arrival times, code)."""
    messages: List[object] = []
    times: List[float] = []
    async with open_websocket_url(url) as ws:
        try:
            while True:
                messages.append(await ws.get_message())
                times.append(time.monotonic())
        except ConnectionClosed as e:
            return messages, times, e.reason.code
    raise AssertionError("unreachable")


def environment(lines: List[object]) -> Dict[str, str]:
    assert all(isinstance(line, str) and "=" in line for line in lines), lines
    return dict(line.split("=", 1) for line in lines)  # type: ignore[union-attr]


def test_examples_are_executable_with_the_right_shebang():
    for name in HANDLERS:
        path = EXAMPLES / name
        assert os.access(path, os.X_OK), f"{name} is not executable"
        first = path.read_text().splitlines()[0]
        assert first == ("#!/bin/sh" if name.endswith(".sh") else "#!/usr/bin/env python3"), name


@pytest.mark.parametrize("name", ["count.sh", "count.py"])
@trio_test(20)
async def test_count_sends_one_number_a_second_then_closes_1000(name):
    with WsexecProcess(str(EXAMPLES / name), "3") as server:
        messages, times, code = await read_until_closed(server.url + "/")
    assert messages == ["1", "2", "3"]
    assert code == 1000
    # Flushed line by line: the numbers arrive about a second apart, not all at exit.
    assert times[2] - times[0] > 1.5


@pytest.mark.parametrize("name", ["greeter.sh", "greeter.py"])
@trio_test(20)
async def test_greeter_answers_each_line_and_exits_0_on_eof(name):
    with WsexecProcess(str(EXAMPLES / name)) as server:
        async with open_websocket_url(server.url + "/") as ws:
            for who in ("World", "Ada Lovelace", "ünïcode"):
                await ws.send_message(who)
                with trio.fail_after(5):  # each answer comes before the next message: flushed
                    assert await ws.get_message() == f"Hello, {who}!"
        # Leaving closes the greeter's stdin; it ends by itself with status 0.
        line = wait_for_line(server.proc.stderr, b"DISCONNECT", 5)
    assert b" exit status 0 " in line, line


@pytest.mark.parametrize("name", ["dump-env.sh", "dump-env.py"])
@trio_test(20)
async def test_dump_env_prints_the_cgi_environment_and_closes_1000(name):
    env = dict(os.environ, WSEXEC_EXAMPLE_SECRET="must not reach the handler")
    with WsexecProcess(str(EXAMPLES / name), env=env) as server:
        lines, _, code = await read_until_closed(server.url + "/some/path?x=1&y=a%20b")
    assert code == 1000
    assert lines == sorted(lines)
    variables = environment(lines)
    assert variables["REMOTE_ADDR"] == "127.0.0.1"
    assert variables["QUERY_STRING"] == "x=1&y=a%20b"
    assert variables["HTTP_HOST"] == f"127.0.0.1:{server.port}"
    assert variables["SCRIPT_NAME"] == "/"
    assert variables["PATH_INFO"] == "/some/path"
    assert variables["REQUEST_URI"] == "/some/path?x=1&y=a%20b"
    assert variables["SERVER_PORT"] == str(server.port)
    assert variables["GATEWAY_INTERFACE"] == "CGI/1.1"
    assert variables["SERVER_SOFTWARE"].startswith("wsexec/")
    assert "WSEXEC_EXAMPLE_SECRET" not in variables


@trio_test(20)
async def test_dir_mode_serves_the_examples_by_path():
    """The README's environment example: ws://HOST/dump-env.sh/a%20b?x=1 with --dir examples."""
    with WsexecProcess("--dir", str(EXAMPLES)) as server:
        lines, _, code = await read_until_closed(server.url + "/dump-env.sh/a%20b?x=1")
        assert code == 1000
        variables = environment(lines)
        assert variables["SCRIPT_NAME"] == "/dump-env.sh"
        assert variables["PATH_INFO"] == "/a b"
        assert variables["PATH_TRANSLATED"] == "/dump-env.sh/a b"
        assert variables["QUERY_STRING"] == "x=1"
        assert variables["REQUEST_URI"] == "/dump-env.sh/a%20b?x=1"

        async with open_websocket_url(server.url + "/greeter.sh") as ws:
            await ws.send_message("dir")
            assert await ws.get_message() == "Hello, dir!"

        # not executable, a directory, an encoded '..'
        for refused in ("/index.html", "/", "/%2e%2e/examples/dump-env.sh"):
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(server.url + refused):
                    pass
            assert rejected.value.status_code == 404, refused


def test_index_html_is_self_contained():
    page = (EXAMPLES / "index.html").read_text()
    assert not re.search(r"https?://", page), "index.html must not load anything from the network"
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    assert not re.search(r"<link\b", page, re.I)
    assert not re.search(r"@import|url\(", page, re.I)
    assert "new WebSocket(" in page and "location.host" in page
    assert "event.code" in page and "event.reason" in page
