"""The control API (--control): connections by id, pushes, closes, broadcast,
readiness, the bearer token and the unix socket; pure parts as tables."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from support.clients import Client, fetch, raw_http, upgrade_request
from support.servers import PY, ROOT, make_config, script, serving
from support.waiting import trio_test, wait_until
from wsexec.control import Route, close_request, message_of, route
from wsexec.websocket import BINARY, TEXT

# Prints its id, then echoes each line; a marker file tells when stdin ended.
ECHO = """
    import os, sys
    print(os.environ["WSEXEC_CONNECTION_ID"], os.environ.get("WSEXEC_CONTROL", ""), flush=True)
    for line in sys.stdin:
        print("echo " + line.rstrip("\\n"), flush=True)
    open(os.path.join({dir!r}, os.environ["WSEXEC_CONNECTION_ID"] + ".ended"), "w").close()
"""


@pytest.mark.parametrize("method, path, expected", [
    ("GET", "/connections", Route("list")),
    ("HEAD", "/connections", Route("list")),
    ("POST", "/connections", Route("error", status=405, allow="GET, HEAD")),
    ("GET", "/connections/abc123", Route("get", "abc123")),
    ("POST", "/connections/abc123", Route("push", "abc123")),
    ("DELETE", "/connections/abc123", Route("close", "abc123")),
    ("PUT", "/connections/abc123", Route("error", status=405, allow="GET, HEAD, POST, DELETE")),
    ("GET", "/connections/a-b", Route("error", status=400)),
    ("GET", "/connections/", Route("error", status=400)),
    ("GET", "/connections/" + "a" * 65, Route("error", status=400)),
    ("POST", "/@connections/Xy9", Route("aws-push", "Xy9")),
    ("GET", "/@connections/Xy9", Route("aws-get", "Xy9")),
    ("DELETE", "/@connections/Xy9", Route("aws-close", "Xy9")),
    ("POST", "/broadcast", Route("broadcast")),
    ("GET", "/broadcast", Route("error", status=405, allow="POST")),
    ("GET", "/metrics", Route("metrics")),
    ("GET", "/healthz", Route("healthz")),
    ("GET", "/readyz", Route("readyz")),
    ("GET", "/", Route("error", status=404)),
    ("GET", "/connections/abc/extra", Route("error", status=400)),
    ("GET", "/@connections/L0SM9cOFvHcCIhw=", Route("aws-gone", "L0SM9cOFvHcCIhw=")),  # an AWS-made id: gone
    ("POST", "/production/@connections/Xy9", Route("aws-push", "Xy9")),  # a stage in the SDK's endpoint
])
def test_control_routes(method, path, expected):
    assert route(method, path) == expected


@pytest.mark.parametrize("query, expected", [
    ("", (1000, "")),
    ("code=4001&reason=bye", (4001, "bye")),
    ("code=3000", (3000, "")),
    ("reason=caf%C3%A9", (1000, "café")),
    ("code=1001", ValueError), ("code=2999", ValueError), ("code=5000", ValueError), ("code=x", ValueError),
    ("reason=" + "a" * 124, ValueError), ("reason=" + "é" * 62, ValueError), ("reason=" + "a" * 123, (1000, "a" * 123)),
])
def test_close_request(query, expected):
    if expected is ValueError:
        with pytest.raises(ValueError):
            close_request(query)
    else:
        assert close_request(query) == expected


@pytest.mark.parametrize("body, content_type, expected", [
    (b"hi", "text/plain", (TEXT, b"hi")),
    (b"hi", "Text/Plain; charset=utf-8", (TEXT, b"hi")),
    (b"\xff", "text/plain", None),
    (b"\xff", "application/octet-stream", (BINARY, b"\xff")),
    (b"hi", None, (BINARY, b"hi")),
    (b"{}", "application/json", (BINARY, b"{}")),
])
def test_pushed_body_as_message(body, content_type, expected):
    assert message_of(body, content_type) == expected


@pytest.mark.parametrize("options, code, words", [
    (["--control", "0.0.0.0:9300"], 4, b"needs --control-token"),
    (["--control", "nonsense"], 2, b"unix:PATH or HOST:PORT"),
    (["--control-token", "t"], 4, b"--control-token needs --control"),
    (["--control", "unix:/tmp/x.ctl", "--inetd"], 4, b"no --control"),
])
def test_control_options_refused(options, code, words):
    result = subprocess.run([PY, "-m", "wsexec", "--port", "0", *options, "cat"], cwd=ROOT, capture_output=True, timeout=20)
    assert result.returncode == code and words in result.stderr, result.stderr


def control_port(state) -> int:
    return int(state.shared.control_url.rsplit(":", 1)[1])


@trio_test(20)
async def test_list_get_push_and_close_by_id(tmp_path):
    handler = script(tmp_path, "echo.py", ECHO.format(dir=str(tmp_path)))
    async with serving(make_config(handler, control="127.0.0.1:0")) as (state, url):
        port = control_port(state)
        async with open_websocket_url(url + "/room/a?x=1", subprotocols=[]) as ws, \
                open_websocket_url(url + "/other") as other:
            conn_id, control = (await ws.get_message()).split()
            other_id = (await other.get_message()).split()[0]
            assert conn_id.isalnum() and control == state.shared.control_url
            await ws.send_message("one")
            assert await ws.get_message() == "echo one"

            listing = json.loads((await fetch(port, "GET", "/connections")).body)
            assert {c["id"] for c in listing} == {conn_id, other_id}
            mine = json.loads((await fetch(port, "GET", f"/connections/{conn_id}")).body)
            assert mine["path"] == "/room/a?x=1" and mine["remote_addr"] == "127.0.0.1" and mine["protocol"] is None
            assert mine["messages_in"] == 1 and mine["messages_out"] == 2 and isinstance(mine["pid"], int)
            assert mine["bytes_in"] > 0 and mine["started"].endswith("Z") and mine["last_active"] >= mine["started"]
            only = json.loads((await fetch(port, "GET", "/connections?path=/room")).body)
            assert [c["id"] for c in only] == [conn_id]

            reply = await fetch(port, "POST", f"/connections/{conn_id}", [("Content-Type", "text/plain")], "héllo".encode())
            assert reply.status == 204 and await ws.get_message() == "héllo"
            reply = await fetch(port, "POST", f"/connections/{conn_id}", body=b"\x00\xff")
            assert reply.status == 204 and await ws.get_message() == b"\x00\xff"
            reply = await fetch(port, "POST", f"/connections/{conn_id}", [("Content-Type", "text/plain")], b"\xff")
            assert reply.status == 400 and "UTF-8" in json.loads(reply.body)["error"]

            reply = await fetch(port, "DELETE", f"/connections/{conn_id}?code=4001&reason=bye")
            assert reply.status == 204
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert (closed.value.reason.code, closed.value.reason.reason) == (4001, "bye")
            # the handler's stdin was closed, as when a client leaves
            await wait_until((tmp_path / f"{conn_id}.ended").exists, 5, "the handler saw its stdin closed")

            async def unlisted() -> bool:
                return (await fetch(port, "GET", f"/connections/{conn_id}")).status != 200

            await wait_until(unlisted, 5, "listed until its handler is gone, then not", 0.02)
            for method in ("GET", "POST", "DELETE"):
                reply = await fetch(port, method, f"/connections/{conn_id}", body=b"x" if method == "POST" else None)
                assert reply.status == 404 and json.loads(reply.body)["error"]
            assert (await fetch(port, "DELETE", f"/connections/{other_id}?code=1001")).status == 400
            assert (await fetch(port, "GET", "/connections/no-such")).status == 400
            assert (await fetch(port, "PATCH", f"/connections/{other_id}")).header("allow") == "GET, HEAD, POST, DELETE"
            assert (await fetch(port, "GET", "/nothing")).status == 404


@trio_test(20)
async def test_pushes_keep_their_order_and_never_split_handler_lines(tmp_path):
    # The handler prints 300 numbered lines as fast as it can while 100 pushes arrive.
    handler = script(tmp_path, "flood.py", """
        import sys
        print("ready", flush=True)
        sys.stdin.readline()
        for i in range(300):
            print(f"line {i:04d} " + "x" * 500, flush=True)
        sys.stdin.readline()
    """)
    async with serving(make_config(handler, control="127.0.0.1:0")) as (state, url):
        port = control_port(state)
        async with open_websocket_url(url, max_message_size=1 << 20) as ws:
            assert await ws.get_message() == "ready"
            conn_id = json.loads((await fetch(port, "GET", "/connections")).body)[0]["id"]
            got = []

            async def pushes():
                async with await Client.open(port) as client:  # one keep-alive connection
                    for i in range(100):
                        reply = await client.request("POST", f"/connections/{conn_id}",
                                                     [("Content-Type", "text/plain")], f"push {i:03d}".encode())
                        assert reply.status == 204

            await ws.send_message("go")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pushes)
                while len(got) < 400:
                    got.append(await ws.get_message())
    lines = [m for m in got if m.startswith("line ")]
    pushed = [m for m in got if m.startswith("push ")]
    assert len(lines) == 300 and len(pushed) == 100 and len(got) == 400
    assert lines == [f"line {i:04d} " + "x" * 500 for i in range(300)]
    assert pushed == [f"push {i:03d}" for i in range(100)]


@trio_test(30)
async def test_a_client_that_does_not_read_gets_503_and_others_are_not_held_back(tmp_path):
    handler = script(tmp_path, "quiet.py", "import sys\nprint('hi', flush=True)\nsys.stdin.read()\n")
    config = make_config(handler, control="127.0.0.1:0", pushtimeoutms=300)
    async with serving(config) as (state, url):
        port = control_port(state)
        stuck = await trio.open_tcp_stream("127.0.0.1", state.addresses[0][1])  # never reads after the 101
        await stuck.send_all(upgrade_request("/stuck"))
        async with open_websocket_url(url + "/fine") as fine:
            assert await fine.get_message() == "hi"
            ids = {c["path"]: c["id"] for c in json.loads((await fetch(port, "GET", "/connections")).body)}
            big = b"x" * (1 << 20)
            statuses = []
            with trio.fail_after(15):
                while 503 not in statuses:
                    statuses.append((await fetch(port, "POST", f"/connections/{ids['/stuck']}", body=big)).status)
            reply = await fetch(port, "POST", f"/connections/{ids['/stuck']}", body=big)
            assert statuses[-1] == 503 and reply.status in (503, 404) and len(statuses) < 40
            # meanwhile the other client is served at once, broadcast included
            with trio.fail_after(2):
                sent = json.loads((await fetch(port, "POST", "/broadcast", [("Content-Type", "text/plain")], b"to all")).body)
                assert await fine.get_message() == "to all"
            assert sent["sent"] >= 1
        await stuck.aclose()


@trio_test(20)
async def test_broadcast_reaches_every_matching_client(tmp_path):
    handler = script(tmp_path, "hi.py", "import sys\nprint('hi', flush=True)\nsys.stdin.read()\n")
    async with serving(make_config(handler, control="127.0.0.1:0")) as (state, url):
        port = control_port(state)
        async with open_websocket_url(url + "/a/1") as a1, open_websocket_url(url + "/a/2") as a2, \
                open_websocket_url(url + "/b") as b:
            for ws in (a1, a2, b):
                assert await ws.get_message() == "hi"
            reply = await fetch(port, "POST", "/broadcast?path=/a/", [("Content-Type", "text/plain")], b"news")
            assert json.loads(reply.body) == {"sent": 2}
            assert [await a1.get_message(), await a2.get_message()] == ["news", "news"]
            reply = await fetch(port, "POST", "/broadcast", body=b"\x01")
            assert json.loads(reply.body) == {"sent": 3}
            assert [await ws.get_message() for ws in (a1, a2, b)] == [b"\x01"] * 3
            async with await Client.open(port) as client:  # back to back: each client gets them in order
                for i in range(50):
                    reply = await client.request("POST", "/broadcast", [("Content-Type", "text/plain")], str(i).encode())
                    assert json.loads(reply.body) == {"sent": 3}
            for ws in (a1, a2, b):
                assert [await ws.get_message() for _ in range(50)] == [str(i) for i in range(50)]
            # too large: refused from the head alone, before the body is sent
            head = f"POST /broadcast HTTP/1.1\r\nHost: x\r\nContent-Length: {4 * 1024 * 1024 + 1}\r\n\r\n"
            answer = await raw_http(port, head.encode())
            assert answer.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in answer


@trio_test(20)
async def test_token_health_and_readiness(tmp_path):
    handler = script(tmp_path, "hi.py", "import sys\nprint('hi', flush=True)\nsys.stdin.read()\n")
    config = make_config(handler, control="127.0.0.1:0", control_token="s3cret", maxforks=1)
    async with serving(config) as (state, url):
        port = control_port(state)
        assert (await fetch(port, "GET", "/healthz")).status == 200
        assert json.loads((await fetch(port, "GET", "/readyz")).body) == {"ready": True}
        for auth in ((), (("Authorization", "Bearer wrong"),), (("Authorization", "s3cret"),)):
            reply = await fetch(port, "GET", "/connections", auth)
            assert reply.status == 401 and reply.header("www-authenticate").startswith("Bearer")
        good = [("Authorization", "Bearer s3cret")]
        assert (await fetch(port, "GET", "/connections", good)).status == 200
        async with open_websocket_url(url) as ws:
            assert await ws.get_message() == "hi"
            reply = await fetch(port, "GET", "/readyz")  # --maxforks 1 is full
            assert reply.status == 503 and json.loads(reply.body)["ready"] is False
        state.registry.draining = True
        assert (await fetch(port, "GET", "/readyz")).status == 503


@trio_test(20)
async def test_unix_control_socket_keep_alive(tmp_path):
    handler = script(tmp_path, "hi.py", "import sys\nprint('hi', flush=True)\nsys.stdin.read()\n")
    path = tmp_path / "ws.ctl"
    async with serving(make_config(handler, control=f"unix:{path}")) as (state, url):
        assert state.shared.control_url == f"unix:{path}"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        async with open_websocket_url(url) as ws:
            assert await ws.get_message() == "hi"
            async with Client(await trio.open_unix_socket(str(path))) as client:
                listing = json.loads((await client.request("GET", "/connections")).body)
                assert client.reusable
                reply = await client.request("POST", f"/connections/{listing[0]['id']}",
                                             [("Content-Type", "text/plain")], b"via unix")
                assert reply.status == 204 and await ws.get_message() == "via unix"
    assert not path.exists()  # removed on the way out
