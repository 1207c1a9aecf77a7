"""--cgidir: CGI/1.1 with real scripts, real sockets on 127.0.0.1."""

from __future__ import annotations

import logging
import os

import pytest
import trio
from trio_websocket import open_websocket_url

from support.clients import Client, collect, fetch, parse_raw, raw_http, response_head, upgrade_request
from support.procfs import descendants
from support.servers import PY, make_config, script, serving
from support.waiting import trio_test, wait_gone, wait_slots_free, wait_until
from wsexec.http import cgi

DUMP_ENV = """
import os, sys
body = sys.stdin.buffer.read()
print("Content-Type: text/plain")
print()
for k in sorted(os.environ):
    print(f"{k}={os.environ[k]}")
print(f"BODY={body.decode()}")
"""

ECHO = """
import os, sys
# The body back, as it is read, without knowing its length first.
sys.stdout.write("Content-Type: application/octet-stream\\n\\n")
sys.stdout.flush()
left = int(os.environ["CONTENT_LENGTH"] or 0)
while left:
    data = os.read(0, min(left, 65536))
    if not data:
        break
    os.write(1, data)
    left -= len(data)
"""


def parse_env(body: bytes) -> dict:
    return dict(line.split("=", 1) for line in body.decode().splitlines() if "=" in line)


def port_of(state) -> int:
    return state.addresses[0][1]


# --- pure: the script's header ----------------------------------------------------------

@pytest.mark.parametrize("block, status, headers, location", [
    (b"Content-Type: text/plain\n", 200, (("Content-Type", "text/plain"),), None),
    (b"Content-type: text/html\r\nX-A: 1\r\n", 200, (("Content-type", "text/html"), ("X-A", "1")), None),
    (b"Status: 404 Not Here\nContent-Type: text/plain\n", 404, (("Content-Type", "text/plain"),), None),
    (b"Status: 201\nContent-Type: text/plain\n", 201, (("Content-Type", "text/plain"),), None),
    (b"Location: https://example.com/x\n", 302, (("Location", "https://example.com/x"),), None),
    (b"Status: 301 Moved\nLocation: http://e/\n", 301, (("Location", "http://e/"),), None),
    (b"Location: /local?q=1\n", 200, (), "/local?q=1"),
    (b"Location: //evil.example/\n", 302, (("Location", "//evil.example/"),), None),
    (b"Status: 204 No Content\n", 204, (), None),
    (b"Content-Type: text/plain\nConnection: close\nTransfer-Encoding: chunked\n", 200,
     (("Content-Type", "text/plain"),), None),
])
def test_parse_head_accepts(block, status, headers, location):
    head = cgi.parse_head(block)
    assert (head.status, head.headers, head.local_location) == (status, headers, location)


@pytest.mark.parametrize("block", [
    b"", b"hello world\n", b"Content-Type text/plain\n", b"X-Only: 1\n", b"Status: 200 OK\n",
    b"Status: abc\nContent-Type: text/plain\n", b"Status: 100 Continue\nContent-Type: text/plain\n",
    b"Content-Type: text/plain\n folded\n", b"Bad Name: 1\nContent-Type: text/plain\n",
    b"Content-Type: text/plain\nContent-Length: ten\n", b"Content-Type: text/\x01plain\n",
])
def test_parse_head_refuses(block):
    with pytest.raises(cgi.BadHeader):
        cgi.parse_head(block)


def test_split_head():
    assert cgi.split_head(b"A: 1\n\nbody") == (b"A: 1\n", b"body")
    assert cgi.split_head(b"A: 1\r\n\r\nbody\n\n") == (b"A: 1\r\n", b"body\n\n")
    assert cgi.split_head(b"A: 1\nB: 2\n") is None
    assert cgi.split_head(b"\nbody") == (b"", b"body")


# --- environment and body ---------------------------------------------------------------

@trio_test(15)
async def test_environment_path_info_and_body(tmp_path):
    root = tmp_path / "cgi"
    (root / "sub").mkdir(parents=True)
    script(root / "sub", "env.py", DUMP_ENV)
    os.environ["WSEXEC_TEST_SECRET"] = "s3cret"
    try:
        config = make_config("cat", cgidir=str(root),
                             passed_env={"PATH": os.environ["PATH"], "WSEXEC_SHARED": "yes"})
        async with serving(config) as (state, url):
            port = port_of(state)
            reply = await fetch(port, "POST", "/sub/env.py/more/in%20fo?q=1&r=a%20b",
                                [("Content-Type", "application/x-www-form-urlencoded"), ("X-Thing", "t")], b"a=1&b=2")
            get = await fetch(port, "GET", "/sub/env.py")
    finally:
        del os.environ["WSEXEC_TEST_SECRET"]
    assert reply.status == 200 and reply.header("content-type") == "text/plain"
    env = parse_env(reply.body)
    expected = {
        "GATEWAY_INTERFACE": "CGI/1.1", "REQUEST_METHOD": "POST", "SCRIPT_NAME": "/sub/env.py",
        "PATH_INFO": "/more/in fo", "PATH_TRANSLATED": str(root / "more" / "in fo"),
        "QUERY_STRING": "q=1&r=a%20b", "REQUEST_URI": "/sub/env.py/more/in%20fo?q=1&r=a%20b",
        "CONTENT_LENGTH": "7", "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80",
        "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1", "HTTP_X_THING": "t",
        "WSEXEC_SHARED": "yes", "BODY": "a=1&b=2",
    }
    for key, value in expected.items():
        assert env.get(key) == value, key
    assert env["UNIQUE_ID"] and env["REMOTE_PORT"].isdigit()
    assert "WSEXEC_TEST_SECRET" not in env and "PYTHONPATH" not in env
    env = parse_env(get.body)
    assert (env["REQUEST_METHOD"], env["CONTENT_LENGTH"], env["PATH_INFO"], env["PATH_TRANSLATED"]) == ("GET", "", "", "")


@trio_test(20)
async def test_large_body_expect_continue_and_chunked_request(tmp_path):
    script(tmp_path, "echo.py", ECHO)
    async with serving(make_config("cat", cgidir=str(tmp_path))) as (state, url):
        port = port_of(state)
        body = os.urandom(3 << 20)
        async with await Client.open(port) as client:
            reply = await client.request("POST", "/echo.py", [("Expect", "100-continue")], body)
            assert reply.status == 200 and reply.body == body
            assert client.informational == [100]
            assert reply.header("transfer-encoding") == "chunked"
            reply = await client.request("PUT", "/echo.py", [], b"second on the same connection")
            assert reply.body == b"second on the same connection"
        # a chunked request body: 411, and the connection is closed
        answer = await raw_http(port, b"POST /echo.py HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                      b"5\r\nhello\r\n0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 411 ") and b"Connection: close" in answer
        await wait_slots_free(state, 3)


# --- the script's answer --------------------------------------------------------------------

@trio_test(20)
async def test_status_redirects_and_headers(tmp_path):
    script(tmp_path, "created.py", 'print("Status: 201 Created\\r\\nContent-Type: text/plain\\r\\nX-Custom: yes\\r\\n\\r\\nmade", end="")')
    script(tmp_path, "away.py", 'print("Location: https://example.com/elsewhere?x=1\\n")')
    script(tmp_path, "see-other.py", 'print("Status: 303 See Other\\nLocation: http://example.com/\\nContent-Type: text/plain\\n\\ngo")')
    script(tmp_path, "local.py", 'print("Location: /target.py/p?x=1\\n")')
    script(tmp_path, "to-static.py", 'print("Location: /page.txt\\n")')
    script(tmp_path, "target.py", DUMP_ENV)
    script(tmp_path, "loop.py", 'print("Location: /loop.py\\n")')
    script(tmp_path, "empty.py", 'print("Status: 204 No Content\\n")')
    script(tmp_path, "sized.py", 'print("Content-Type: text/plain\\nContent-Length: 5\\n\\nhello and more", end="")')
    static = tmp_path / "static"
    static.mkdir()
    (static / "page.txt").write_text("a static page\n")
    async with serving(make_config("cat", cgidir=str(tmp_path), staticdir=str(static))) as (state, url):
        port = port_of(state)
        async with await Client.open(port) as client:
            reply = await client.request("GET", "/created.py")
            assert (reply.status, reply.header("x-custom"), reply.body) == (201, "yes", b"made")
            assert reply.header("status") is None
            reply = await client.request("GET", "/away.py")
            assert (reply.status, reply.header("location")) == (302, "https://example.com/elsewhere?x=1")
            reply = await client.request("GET", "/see-other.py")
            assert (reply.status, reply.header("location"), reply.body) == (303, "http://example.com/", b"go\n")
            # RFC 3875 6.2.2: a local redirect is answered here, as a GET of the new URL
            reply = await client.request("POST", "/local.py", [("Content-Type", "text/plain")], b"the body")
            env = parse_env(reply.body)
            assert reply.status == 200
            assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"]) == ("/target.py", "/p", "x=1")
            assert (env["REQUEST_METHOD"], env["CONTENT_LENGTH"], env["BODY"]) == ("GET", "", "")
            reply = await client.request("GET", "/to-static.py")
            assert (reply.status, reply.body) == (200, b"a static page\n")
            reply = await client.request("GET", "/empty.py")
            assert (reply.status, reply.body) == (204, b"")
            reply = await client.request("GET", "/sized.py")
            assert (reply.header("content-length"), reply.body) == ("5", b"hello")
            reply = await client.request("HEAD", "/created.py")
            assert (reply.status, reply.body) == (201, b"")
            reply = await client.request("TRACE", "/created.py")
            assert reply.status == 405 and "POST" in reply.header("allow")
            reply = await client.request("GET", "/loop.py")
            assert reply.status == 500 and b"local redirects" in reply.body
            assert client.reusable
        # HTTP/1.0: no chunked coding, the end of the body is the end of the connection
        answer = await raw_http(port, b"GET /target.py HTTP/1.0\r\n\r\n")
        status, headers, body = parse_raw(answer)
        assert status == 200 and "transfer-encoding" not in headers and b"SERVER_PROTOCOL=HTTP/1.0" in body
        await wait_slots_free(state, 3)


@trio_test(15)
async def test_body_is_streamed_as_the_script_writes_it(tmp_path):
    go = tmp_path / "go"
    script(tmp_path, "slow.py", f"""
        import os, sys, time
        sys.stdout.write("Content-Type: text/plain\\n\\nfirst part\\n")
        sys.stdout.flush()
        deadline = time.time() + 10
        while not os.path.exists({str(go)!r}) and time.time() < deadline:
            time.sleep(0.01)
        print("second part")
    """)
    async with serving(make_config("cat", cgidir=str(tmp_path))) as (state, url):
        async with await Client.open(port_of(state)) as client:
            await client.send_request("GET", "/slow.py")
            reply = await client.read_head()
            assert reply.status == 200
            with trio.fail_after(3):  # before the script may go on
                assert await client.read_data() == b"first part\n"
            go.touch()
            rest = b""
            while (data := await client.read_data()) is not None:
                rest += data
            assert rest == b"second part\n"


# --- scripts that fail ---------------------------------------------------------------------

@trio_test(30)
async def test_broken_scripts_get_502_with_a_log_line(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="wsexec")
    broken = {
        "crash.py": 'import sys\nsys.stderr.write("boom\\n")\nraise SystemExit(3)',
        "garbage.py": 'print("hello world\\n")',
        "unterminated.py": 'print("Content-Type: text/plain", end="")',
        "no-type.py": 'print("X-Foo: 1\\n\\nbody")',
        "huge.py": 'import sys\nsys.stdout.write("X-" + "a" * 200000)',
        "killed.py": 'import os, signal\nos.kill(os.getpid(), signal.SIGKILL)',
    }
    for name, body in broken.items():
        script(tmp_path, name, body)
    script(tmp_path, "bad-interpreter.sh", "echo hi\n", interpreter="/nonexistent/interpreter")
    (tmp_path / "not-executable.py").write_text("print('Content-Type: text/plain\\n\\nran')\n")
    script(tmp_path, "ok.py", 'print("Content-Type: text/plain\\n\\nfine")')
    async with serving(make_config("cat", cgidir=str(tmp_path))) as (state, url):
        port = port_of(state)
        for name in list(broken) + ["bad-interpreter.sh"]:
            reply = await fetch(port, "GET", "/" + name)
            assert reply.status == 502 and reply.body.startswith(b"bad gateway"), name
            if name in broken:  # it may not have read the body: the connection is not reused
                assert reply.header("connection") == "close", name
        assert (await fetch(port, "GET", "/not-executable.py")).status == 404
        assert (await fetch(port, "GET", "/ok.py")).body == b"fine\n"
        await wait_slots_free(state, 3)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    for name in list(broken) + ["bad-interpreter.sh"]:
        assert any(f"CGI /{name}:" in line for line in errors), (name, errors)
    assert any("no header" in line and "exit status 3" in line for line in errors)
    assert any("stderr: boom" in line for line in errors)
    assert any("/killed.py" in line and "SIGKILL" in line for line in errors)


@trio_test(20)
async def test_script_past_the_time_limit_is_killed_with_its_group(tmp_path):
    pids = tmp_path / "pids"
    script(tmp_path, "silent.sh", f"echo $$ > {pids}; sleep 60 & echo $! >> {pids}; wait\n", interpreter="/bin/sh")
    script(tmp_path, "stalls.sh", "printf 'Content-Type: text/plain\\n\\nstart\\n'; sleep 60\n", interpreter="/bin/sh")
    async with serving(make_config("cat", cgidir=str(tmp_path), cgitimeoutms=500, loglevel="fatal")) as (state, url):
        port = port_of(state)
        started = trio.current_time()
        reply = await fetch(port, "GET", "/silent.sh")
        assert reply.status == 504 and 0.4 < trio.current_time() - started < 3
        shell, sleeper = (int(p) for p in pids.read_text().split())
        await wait_gone(shell, sleeper, timeout=3)
        # a script that started its answer and then stalls: the body is cut, the connection closed
        answer = await raw_http(port, b"GET /stalls.sh HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ") and b"start\n" in answer
        assert not answer.endswith(b"0\r\n\r\n")  # no last chunk: the client can tell it is incomplete
        await wait_slots_free(state, 3)
    assert descendants(os.getpid()) == []


@trio_test(20)
async def test_maxforks_is_shared_with_websocket_handlers(tmp_path):
    script(tmp_path, "ok.py", 'print("Content-Type: text/plain\\n\\nfine")')
    started = tmp_path / "started"
    script(tmp_path, "wait.py", f"""
        import os, sys, time
        open({str(started)!r}, "w").close()
        sys.stdout.write("Content-Type: text/plain\\n\\n")
        sys.stdout.flush()
        sys.stdin.read()
        time.sleep(1)
        print("done")
    """)
    async with serving(make_config(PY, "-c", "import sys\nfor l in sys.stdin: print(l, end='', flush=True)",
                                   cgidir=str(tmp_path), maxforks=1)) as (state, url):
        port = port_of(state)
        async with open_websocket_url(url + "/") as ws:
            await ws.send_message("hi")
            assert await ws.get_message() == "hi"
            assert state.handlers.slots.taken == 1
            reply = await fetch(port, "GET", "/ok.py")
            assert reply.status == 429 and reply.header("retry-after") == "1"
        await wait_slots_free(state, 3)
        assert (await fetch(port, "GET", "/ok.py")).body == b"fine\n"
        # the answer is complete only once its script is reaped and its slot free
        assert state.handlers.slots.taken == 0
        # and the other way round: a running CGI script holds the only slot
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch, port, "GET", "/wait.py")
            await wait_until(started.exists, 5, f"{started} written")
            head = await response_head(port, upgrade_request("/"))
            assert head.startswith(b"HTTP/1.1 429 ")
        await wait_slots_free(state, 3)


# --- route precedence -------------------------------------------------------------------------

@trio_test(20)
async def test_route_precedence_upgrade_then_cgi_then_static_then_404(tmp_path):
    cgidir, static = tmp_path / "cgi", tmp_path / "static"
    cgidir.mkdir()
    static.mkdir()
    script(cgidir, "both.py", 'print("Content-Type: text/plain\\n\\nfrom cgi")')
    (static / "both.py").write_text("static copy\n")
    (static / "only-static.txt").write_text("static only\n")
    (cgidir / "plain.txt").write_text("not executable\n")
    handler = script(tmp_path, "ws.py", 'print("from websocket", flush=True)')
    async with serving(make_config(handler, cgidir=str(cgidir), staticdir=str(static))) as (state, url):
        port = port_of(state)
        messages, code, _ = await collect(url + "/both.py")
        assert (messages, code) == (["from websocket"], 1000)  # 1. the upgrade
        assert (await fetch(port, "GET", "/both.py")).body == b"from cgi\n"  # 2. CGI before static
        assert (await fetch(port, "GET", "/only-static.txt")).body == b"static only\n"  # 3. static
        assert (await fetch(port, "GET", "/plain.txt")).status == 404  # not executable, not static: 4. 404
        assert (await fetch(port, "GET", "/nothing")).status == 404
