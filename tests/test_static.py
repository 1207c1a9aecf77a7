"""--staticdir and the plain-HTTP connection: real sockets on 127.0.0.1, a real directory."""

from __future__ import annotations

import os
import time
from email.utils import formatdate

import pytest
import trio

from support.clients import Client, parse_raw, raw_http, response_head, upgrade_request
from support.procfs import proc_status
from support.servers import WsexecProcess, make_config, serving
from support.waiting import trio_test
from wsexec.http import static

SECRET = b"top secret, outside the root"


@pytest.fixture
def site(tmp_path):
    """root/ with files, a subdirectory, symlinks in and out; secret.txt beside root."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "index.html").write_text("<h1>home</h1>\n")
    (root / "sub" / "index.html").write_text("<h1>sub</h1>\n")
    (root / "a.txt").write_bytes(b"0123456789")
    (root / "style.css").write_text("body{}\n")
    (root / "pic.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "data.weird-extension").write_bytes(b"?")
    (root / ".hidden").write_bytes(b"dot file")
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (root / "link-out").symlink_to(tmp_path / "secret.txt")
    (root / "dir-out").symlink_to(tmp_path)
    (root / "link-in").symlink_to(root / "a.txt")
    os.mkfifo(root / "fifo")
    return root


def port_of(state) -> int:
    return state.addresses[0][1]


# --- pure: choosing the answer -------------------------------------------------------

@pytest.mark.parametrize("header, size, expected", [
    ("bytes=0-0", 10, (0, 0)),
    ("bytes=2-5", 10, (2, 5)),
    ("bytes=5-", 10, (5, 9)),
    ("bytes=-3", 10, (7, 9)),
    ("bytes=-30", 10, (0, 9)),
    ("bytes=8-100", 10, (8, 9)),
    ("bytes=10-", 10, ()),
    ("bytes=10-20", 10, ()),
    ("bytes=-0", 10, ()),
    ("bytes=0-", 0, ()),
    ("bytes=5-2", 10, None),
    ("bytes=1-2,4-5", 10, None),
    ("items=1-2", 10, None),
    ("bytes=a-b", 10, None),
    ("bytes=-", 10, None),
    ("bytes=1", 10, None),
])
def test_parse_range(header, size, expected):
    assert static.parse_range(header, size) == expected


def test_plan_validators_and_ranges():
    tag, mtime = '"1-a-2"', 1_000_000
    date = formatdate(mtime, usegmt=True)
    assert static.plan("GET", 10, mtime, tag).status == 200
    assert static.plan("GET", 10, mtime, tag, if_none_match=tag).status == 304
    assert static.plan("GET", 10, mtime, tag, if_none_match=f'"x", W/{tag}').status == 304
    assert static.plan("GET", 10, mtime, tag, if_none_match="*").status == 304
    assert static.plan("GET", 10, mtime, tag, if_none_match='"other"').status == 200
    # If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2)
    assert static.plan("GET", 10, mtime, tag, if_none_match='"other"', if_modified_since=date).status == 200
    assert static.plan("GET", 10, mtime, tag, if_modified_since=date).status == 304
    assert static.plan("GET", 10, mtime, tag, if_modified_since=formatdate(mtime - 1, usegmt=True)).status == 200
    assert static.plan("GET", 10, mtime, tag, if_modified_since="not a date").status == 200
    assert static.plan("GET", 10, mtime, tag, range_="bytes=2-3") == static.Plan(206, 2, 2)
    assert static.plan("HEAD", 10, mtime, tag, range_="bytes=2-3").status == 200  # ranges are for GET only
    assert static.plan("GET", 10, mtime, tag, range_="bytes=20-").status == 416
    assert static.plan("GET", 10, mtime, tag, range_="bytes=2-3", if_range=tag).status == 206
    assert static.plan("GET", 10, mtime, tag, range_="bytes=2-3", if_range='"old"').status == 200
    assert static.plan("GET", 10, mtime, tag, range_="bytes=2-3", if_range=date).status == 206
    assert static.plan("GET", 10, mtime, tag, range_="bytes=2-3", if_range=f"W/{tag}").status == 200


# --- files, types, directories ---------------------------------------------------------

@trio_test(15)
async def test_files_types_lengths_and_index(site):
    async with serving(make_config("cat", staticdir=str(site))) as (state, url):
        port = port_of(state)
        async with await Client.open(port) as client:
            for path, ctype, body in [
                ("/", "text/html; charset=utf-8", b"<h1>home</h1>\n"),
                ("/index.html", "text/html; charset=utf-8", b"<h1>home</h1>\n"),
                ("/sub/", "text/html; charset=utf-8", b"<h1>sub</h1>\n"),
                ("/a.txt", "text/plain; charset=utf-8", b"0123456789"),
                ("/style.css", "text/css; charset=utf-8", b"body{}\n"),
                ("/pic.png", "image/png", b"\x89PNG\r\n\x1a\n"),
                ("/data.weird-extension", "application/octet-stream", b"?"),
                ("/link-in", "application/octet-stream", b"0123456789"),  # a symlink inside the root is fine
                ("/a%2etxt", "text/plain; charset=utf-8", b"0123456789"),
            ]:
                reply = await client.request("GET", path)
                assert (reply.status, reply.header("content-type"), reply.body) == (200, ctype, body), path
                assert reply.header("content-length") == str(len(body))
                assert reply.header("last-modified") and reply.header("etag", ).startswith('"')
                head = await client.request("HEAD", path)
                assert head.status == 200 and head.body == b"" and head.header("content-length") == str(len(body))
                assert head.header("etag") == reply.header("etag")
            assert client.reusable  # all of it on one kept-alive connection
            moved = await client.request("GET", "/sub?x=1")
            assert moved.status == 301 and moved.header("location") == "/sub/?x=1"
            for path in ("/empty/", "/missing.txt", "/sub/missing", "/fifo"):
                reply = await client.request("GET", path)
                assert reply.status == 404 and reply.body == b"not found\n", path
            assert b"a.txt" not in (await client.request("GET", "/empty/")).body  # no listing
        assert state.handlers.slots.taken == 0


@trio_test(15)
async def test_conditional_requests_and_ranges(site):
    async with serving(make_config("cat", staticdir=str(site))) as (state, url):
        port = port_of(state)
        async with await Client.open(port) as client:
            first = await client.request("GET", "/a.txt")
            etag, modified = first.header("etag"), first.header("last-modified")
            assert modified == formatdate(int(os.stat(site / "a.txt").st_mtime), usegmt=True)
            for headers in ([("If-None-Match", etag)], [("If-None-Match", f'"nope", {etag}')],
                            [("If-Modified-Since", modified)]):
                reply = await client.request("GET", "/a.txt", headers)
                assert reply.status == 304 and reply.body == b"", headers
                assert reply.header("etag") == etag
            for headers in ([("If-None-Match", '"nope"')],
                            [("If-Modified-Since", formatdate(time.time() - 86400 * 365, usegmt=True))]):
                assert (await client.request("GET", "/a.txt", headers)).status == 200, headers

            reply = await client.request("GET", "/a.txt", [("Range", "bytes=2-5")])
            assert (reply.status, reply.body, reply.header("content-range")) == (206, b"2345", "bytes 2-5/10")
            assert reply.header("content-length") == "4"
            reply = await client.request("GET", "/a.txt", [("Range", "bytes=-3")])
            assert (reply.status, reply.body) == (206, b"789")
            reply = await client.request("GET", "/a.txt", [("Range", "bytes=7-")])
            assert (reply.status, reply.body) == (206, b"789")
            reply = await client.request("GET", "/a.txt", [("Range", "bytes=10-20")])
            assert (reply.status, reply.header("content-range")) == (416, "bytes */10")
            reply = await client.request("GET", "/a.txt", [("Range", "bytes=2-5"), ("If-Range", '"stale"')])
            assert (reply.status, reply.body) == (200, b"0123456789")
            reply = await client.request("GET", "/a.txt", [("Range", "bytes=2-5"), ("If-Range", etag)])
            assert reply.status == 206
            assert client.reusable
            # The file changes: the old validators no longer match.
            (site / "a.txt").write_bytes(b"changed!")
            os.utime(site / "a.txt", (time.time() + 10, time.time() + 10))
            reply = await client.request("GET", "/a.txt", [("If-None-Match", etag)])
            assert (reply.status, reply.body) == (200, b"changed!")
            assert reply.header("etag") != etag


# --- nothing outside the root -------------------------------------------------------------

TRAVERSALS = [
    "/../secret.txt", "/%2e%2e/secret.txt", "/%2E%2E/secret.txt", "/sub/../../secret.txt",
    "/sub/%2e%2e/%2e%2e/secret.txt", "/..%2fsecret.txt", "/%2e%2e%2fsecret.txt", "/sub%2f..%2f..%2fsecret.txt",
    "/.%2e/secret.txt", "/..%5csecret.txt", "/..\\secret.txt", "/link-out", "/dir-out/secret.txt",
    "/.hidden", "/%2ehidden", "/a.txt%00", "/a.txt%00.png", "//secret.txt",
    "/%2fetc%2fpasswd", "/sub/..%00/secret.txt", "http://127.0.0.1/../secret.txt", "/..", "/%2e%2e",
]


@trio_test(30)
async def test_nothing_outside_the_root_is_served(site):
    async with serving(make_config("cat", staticdir=str(site), loglevel="fatal")) as (state, url):
        port = port_of(state)
        for target in TRAVERSALS:
            answer = await raw_http(port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            status, _, body = parse_raw(answer)
            assert status in (400, 404), (target, answer[:300])
            assert SECRET not in answer and b"dot file" not in answer, target
        # a raw NUL byte in the target never reaches the file system either
        answer = await raw_http(port, b"GET /a.txt\x00 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert parse_raw(answer)[0] == 400
        # the control: the same harness does get a file inside the root
        answer = await raw_http(port, b"GET /a.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"0123456789")


# --- large files ----------------------------------------------------------------------

def test_large_file_is_streamed_not_read_into_memory(tmp_path):
    """256 MiB (sparse, with markers) through a real `python -m wsexec`: the
    bytes arrive intact and the server's peak memory grows by far less."""
    root = tmp_path / "root"
    root.mkdir()
    size = 256 << 20
    markers = {0: b"FIRST", 100 << 20: b"MIDDLE", size - 4: b"LAST"}
    with open(root / "big.bin", "wb") as f:
        f.truncate(size)
        for offset, mark in markers.items():
            f.seek(offset)
            f.write(mark)
    with WsexecProcess("--staticdir", str(root), "cat") as server:
        peak_before = proc_status(server.proc.pid, "VmHWM")

        async def download():
            received = 0
            found = {}
            with trio.fail_after(60):
                async with await Client.open(server.port) as client:
                    await client.send_request("GET", "/big.bin")
                    reply = await client.read_head()
                    assert reply.status == 200 and reply.header("content-length") == str(size)
                    while True:
                        data = await client.read_data()
                        if data is None:
                            break
                        for offset, mark in markers.items():
                            if received <= offset < received + len(data):
                                found[offset] = data[offset - received: offset - received + len(mark)]
                        received += len(data)
                    ranged = await client.request("GET", "/big.bin", [("Range", f"bytes={100 << 20}-{(100 << 20) + 5}")])
            return received, found, ranged

        received, found, ranged = trio.run(download)
        peak_after = proc_status(server.proc.pid, "VmHWM")
    assert received == size
    assert found == {0: b"FIRST", 100 << 20: b"MIDDLE", size - 4: b"LAST"}
    assert (ranged.status, ranged.body) == (206, b"MIDDLE")
    assert peak_after - peak_before < 32 * 1024, (peak_before, peak_after)  # kB


# --- methods, errors, headers ------------------------------------------------------------

@trio_test(15)
async def test_methods_404_body_and_configured_headers(site):
    config = make_config("cat", staticdir=str(site), headers=(("X-All", "1"),), headers_http=(("X-Http", "2"),),
                         headers_ws=(("X-Ws", "3"),))
    async with serving(config) as (state, url):
        port = port_of(state)
        async with await Client.open(port) as client:
            replies = {}
            for key, method, path, headers in [
                ("ok", "GET", "/a.txt", []), ("head", "HEAD", "/a.txt", []),
                ("range", "GET", "/a.txt", [("Range", "bytes=0-1")]),
                ("bad range", "GET", "/a.txt", [("Range", "bytes=50-")]),
                ("not modified", "GET", "/a.txt", [("If-None-Match", "*")]),
                ("moved", "GET", "/sub", []), ("missing", "GET", "/nope", []),
                ("post", "POST", "/a.txt", []), ("delete", "DELETE", "/", []),
            ]:
                replies[key] = await client.request(method, path, headers, b"" if method == "POST" else None)
            assert client.reusable
        statuses = {k: r.status for k, r in replies.items()}
        assert statuses == {"ok": 200, "head": 200, "range": 206, "bad range": 416, "not modified": 304,
                            "moved": 301, "missing": 404, "post": 405, "delete": 405}
        for key, reply in replies.items():
            assert reply.header("x-all") == "1" and reply.header("x-http") == "2", key
            assert reply.header("x-ws") is None, key
        assert replies["post"].header("allow") == "GET, HEAD"
        assert replies["missing"].body == b"not found\n" and replies["missing"].header("content-type").startswith("text/plain")
        # the upgrade still reaches the handler, with the WebSocket headers
        head = await response_head(port, upgrade_request("/a.txt"))
        assert head.startswith(b"HTTP/1.1 101 ") and b"X-Ws: 3" in head and b"X-Http" not in head


@trio_test(15)
async def test_a_small_body_on_get_is_skipped_and_the_connection_kept(site):
    async with serving(make_config("cat", staticdir=str(site))) as (state, url):
        async with await Client.open(port_of(state)) as client:
            reply = await client.request("GET", "/a.txt", [("Content-Type", "text/plain")], b"x" * 5000)
            assert reply.body == b"0123456789"
            reply = await client.request("GET", "/style.css")
            assert reply.body == b"body{}\n"


# --- keep-alive and the limits on request heads -------------------------------------------

@trio_test(20)
async def test_keep_alive_pipelining_and_close(site):
    async with serving(make_config("cat", staticdir=str(site), handshakems=1500)) as (state, url):
        port = port_of(state)
        # two pipelined requests in one write, answered in order on one connection
        answer = await raw_http(port, b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n"
                                      b"GET /style.css HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        first, _, second = answer.partition(b"0123456789")
        assert first.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in first
        assert second.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in second and second.endswith(b"body{}\n")
        # HTTP/1.0: one answer, then the server closes
        answer = await raw_http(port, b"GET /a.txt HTTP/1.0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in answer
        # an idle kept-alive connection is closed after --handshakems
        async with await Client.open(port) as client:
            assert (await client.request("GET", "/a.txt")).status == 200
            started = trio.current_time()
            assert await client.server_closed(5)
            assert 1.0 < trio.current_time() - started < 4
        # a keep-alive connection can become a WebSocket
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n")
                buf = b""
                while not buf.endswith(b"0123456789"):
                    buf += await stream.receive_some(4096)
                await stream.send_all(upgrade_request("/"))
                buf = b""
                while b"\r\n\r\n" not in buf:
                    buf += await stream.receive_some(4096)
                assert buf.startswith(b"HTTP/1.1 101 ")


@trio_test(20)
async def test_head_size_and_head_time_are_bounded(site):
    async with serving(make_config("cat", staticdir=str(site), maxheader=2048, handshakems=800,
                                   loglevel="fatal")) as (state, url):
        port = port_of(state)
        big = b"GET /a.txt HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 4096 + b"\r\n\r\n"
        assert (await raw_http(port, big)).startswith(b"HTTP/1.1 431 ")
        # the same limit on the second request of a kept-alive connection
        answer = await raw_http(port, b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n" + big)
        assert answer.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 431 " in answer
        # a head that trickles in too slowly gets 408
        started = trio.current_time()
        answer = await raw_http(port, b"GET /a.txt HTTP/1.1\r\n")  # and nothing more
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert 0.6 < trio.current_time() - started < 3


@trio_test(15)
async def test_without_http_options_plain_requests_still_get_404_and_close(site):
    async with serving(make_config("cat")) as (state, url):
        answer = await raw_http(port_of(state), b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 404 ") and b"Connection: close" in answer


# --- --redirport -------------------------------------------------------------------------

def redirect_for(target: str, host: str = None, tls_port: int = 8443) -> str:
    from wsexec.http.redirect import redirect_location
    from wsexec.http.request import Request

    headers = (("Host", host),) if host is not None else ()
    request = Request("GET", target, "1.1", headers, ("127.0.0.1", 5000), ("127.0.0.1", 80))
    return redirect_location(request, tls_port, "127.0.0.1")


@pytest.mark.parametrize("target, host, port, expected", [
    ("/path?q=1&r=a%20b", "example.com", 8443, "https://example.com:8443/path?q=1&r=a%20b"),
    ("/path", "example.com:8080", 443, "https://example.com/path"),
    ("/", "[::1]:80", 8443, "https://[::1]:8443/"),
    ("/x", None, 8443, "https://127.0.0.1:8443/x"),
    ("/x", "evil.com/@other", 8443, "https://127.0.0.1:8443/x"),  # not a host name: not echoed
    ("/x", "a b", 8443, "https://127.0.0.1:8443/x"),
    ("http://example.com/abs?k=v", "example.com", 8443, "https://example.com:8443/abs?k=v"),
    ("*", "example.com", 8443, "https://example.com:8443/"),
])
def test_redirect_location(target, host, port, expected):
    assert redirect_for(target, host, port) == expected


@trio_test(15)
async def test_redirport_answers_301_to_https_keeping_path_and_query(site):
    config = make_config("cat", redirport=0, headers=(("X-All", "1"),), headers_http=(("X-Http", "2"),),
                         handshakems=1000)
    async with serving(config) as (state, url):
        tls_port = port_of(state)
        (host, port), = state.redirect_addresses
        assert port not in (0, tls_port)
        answer = await raw_http(port, b"GET /some/path?x=1&y=a%20b HTTP/1.1\r\nHost: example.org:" + str(port).encode() + b"\r\n\r\n")
        status, headers, body = parse_raw(answer)
        assert status == 301
        assert headers["location"] == f"https://example.org:{tls_port}/some/path?x=1&y=a%20b"
        assert headers["x-all"] == "1" and headers["x-http"] == "2" and headers["connection"] == "close"
        status, headers, body = parse_raw(await raw_http(port, b"HEAD / HTTP/1.1\r\nHost: example.org\r\n\r\n"))
        assert (status, headers["location"], body) == (301, f"https://example.org:{tls_port}/", b"")
        # a head that never ends is not waited for past --handshakems
        async with await Client.open(port) as client:
            await client.stream.send_all(b"GET / HTTP/1.1\r\n")
            assert await client.server_closed(config.handshakems / 1000 + 3)


def test_cli_checks_the_http_options(tmp_path):
    import subprocess

    from support.servers import PY, ROOT

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for args, code in [
        (["--staticdir", str(tmp_path / "missing"), "cat"], 1),
        (["--cgidir", str(tmp_path / "missing"), "cat"], 1),
        (["--cgitimeoutms", "0", "cat"], 2),
        (["--redirport", "70000", "cat"], 2),
    ]:
        done = subprocess.run([PY, "-m", "wsexec", "--port", "0", *args], env=env, capture_output=True, timeout=30)
        assert done.returncode == code, (args, done.stderr)
