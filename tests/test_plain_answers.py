"""Every plain HTTP answer carries Date (RFC 9110 section 6.6.1), and a small
answer goes out in one write: checked on the wire and with strace."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from email.utils import parsedate_to_datetime

import pytest
import trio

from support.clients import fetch, raw_http, upgrade_request
from support.servers import WsexecProcess, script
from support.waiting import trio_test

CGI = """
    print("Content-Type: text/plain")
    print()
    print("cgi ran")
"""
CGI_WITH_DATE = """
    print("Content-Type: text/plain")
    print("Date: Tue, 01 Dec 2026 00:00:00 GMT")
    print()
"""


def served(tmp_path, *extra):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "small.txt").write_bytes(b"s" * 1000)
    (tmp_path / "www" / "big.bin").write_bytes(b"b" * (300 * 1024))
    (tmp_path / "cgi").mkdir()
    script(tmp_path / "cgi", "hello.py", CGI)
    script(tmp_path / "cgi", "dated.py", CGI_WITH_DATE)
    return WsexecProcess("--staticdir", str(tmp_path / "www"), "--cgidir", str(tmp_path / "cgi"), *extra, "cat")


def date_is_now(value: str) -> bool:
    return abs(parsedate_to_datetime(value).timestamp() - time.time()) < 5


@trio_test(20)
async def test_every_plain_answer_has_a_date(tmp_path):
    with served(tmp_path) as server:
        for method, target, status in [("GET", "/small.txt", 200), ("HEAD", "/big.bin", 200), ("GET", "/nothing", 404),
                                       ("POST", "/small.txt", 405), ("GET", "/hello.py", 200)]:
            reply = await fetch(server.port, method, target)
            assert reply.status == status and date_is_now(reply.header("date")), (target, reply.headers)
        reply = await fetch(server.port, "GET", "/dated.py")  # the script's own Date is kept, not doubled
        assert [v for n, v in reply.raw_headers if n.lower() == "date"] == ["Tue, 01 Dec 2026 00:00:00 GMT"]
        # refusals before any route: a broken head, and an upgrade that fails its checks
        for request in (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", upgrade_request("/", "Sec-WebSocket-Version: 8\r\n")):
            answer = await raw_http(server.port, request)
            head = answer.split(b"\r\n\r\n")[0].decode()
            assert head.startswith("HTTP/1.1 4"), head
            dates = [line.split(": ", 1)[1] for line in head.split("\r\n") if line.lower().startswith("date: ")]
            assert len(dates) == 1 and date_is_now(dates[0]), head


def sends(trace: str):
    """The send calls strace saw on sockets: (call, first bytes)."""
    calls = []
    for line in trace.splitlines():
        for call in ("sendto(", "sendmsg(", "sendfile(", "write("):
            if line.startswith(call) and "<TCP:" in line.split(",", 1)[0]:
                calls.append((call[:-1], line.split(",", 2)[1].strip()))
    return calls


@pytest.mark.parametrize("target, expected", [
    ("/small.txt", ["sendto"]),  # head and a 1,000-byte body together
    ("/nothing", ["sendto"]),  # an error answer
    ("/big.bin", ["sendto", "sendfile", "sendfile"]),  # 300 KiB: the head, then the kernel copies the file
])
def test_a_small_answer_is_one_write(tmp_path, target, expected):
    strace = shutil.which("strace")
    assert strace, "strace is missing (the README's test command installs it)"
    out = tmp_path / "trace"
    with served(tmp_path, "--loglevel", "error") as server:
        tracer = subprocess.Popen([strace, "-qq", "-yy", "-s", "20", "-e", "trace=sendto,sendmsg,sendfile,write",
                                   "-o", str(out), "-p", str(server.proc.pid)])
        try:
            deadline = time.monotonic() + 10
            while "sendto(" not in (out.read_text() if out.exists() else ""):  # attached once a probe is seen
                assert time.monotonic() < deadline, "strace did not attach"
                trio.run(raw_http, server.port, b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            seen = len(sends(out.read_text()))
            trio.run(raw_http, server.port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            time.sleep(0.3)
        finally:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(10)
    assert [call for call, _ in sends(out.read_text())[seen:]] == expected
