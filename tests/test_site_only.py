"""A site without a handler: --staticdir and/or --cgidir without COMMAND
serve the site, as websocketd does; WebSocket upgrades then get 404."""

from __future__ import annotations

import subprocess

import pytest

from support.clients import fetch, raw_http, upgrade_request
from support.servers import PY, ROOT, WsexecProcess, script
from support.waiting import trio_test

CGI = """
    print("Content-Type: text/plain")
    print()
    print("cgi ran")
"""


def site(tmp_path):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("<p>home</p>\n")
    (tmp_path / "cgi").mkdir()
    script(tmp_path / "cgi", "hello.py", CGI)
    return str(tmp_path / "www"), str(tmp_path / "cgi")


@pytest.mark.parametrize("kinds", [("static",), ("cgi",), ("static", "cgi")])
@trio_test(20)
async def test_a_site_without_a_handler_is_served(tmp_path, kinds):
    www, cgi = site(tmp_path)
    args = (["--staticdir", www] if "static" in kinds else []) + (["--cgidir", cgi] if "cgi" in kinds else [])
    with WsexecProcess(*args) as server:
        if "static" in kinds:
            reply = await fetch(server.port, "GET", "/")
            assert (reply.status, reply.body) == (200, b"<p>home</p>\n")
        if "cgi" in kinds:
            reply = await fetch(server.port, "GET", "/hello.py")
            assert (reply.status, reply.body) == (200, b"cgi ran\n")
        answer = await raw_http(server.port, upgrade_request("/"))
        assert answer.startswith(b"HTTP/1.1 404 ")
        answer = await raw_http(server.port, upgrade_request("/hello.py"))
        assert answer.startswith(b"HTTP/1.1 404 ")


@pytest.mark.parametrize("args, code, words", [
    ([], 2, b"missing COMMAND"),
    (["--devconsole"], 2, b"missing COMMAND"),
    (["--devconsole", "--staticdir", "."], 4, b"--devconsole tries a WebSocket handler"),
])
def test_what_a_site_without_a_handler_cannot_be(args, code, words):
    result = subprocess.run([PY, "-m", "wsexec", "--port", "0", *args], cwd=ROOT, capture_output=True, timeout=20)
    assert result.returncode == code and words in result.stderr, result.stderr
