"""--callback URL: connections as HTTP requests to an API. A real API (Python's
stdlib server on 127.0.0.1, in a thread of the test), the example API and
lighttpd running a CGI script; bad backends; no descriptor or pooled
connection left behind. The pure decisions as tables."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from support.certs import make_certs
from support.clients import collect, fetch, raw_http, response_head, upgrade_request
from support.procfs import fd_count
from support.servers import PY, ROOT, WsexecProcess, drain_output
from support.waiting import readline_within, trio_test, wait_for, wait_until
from wsexec.backends.callback import (accept_headers, api_target, forwarded_headers, header_text, refusal,
                                     reply_message)
from wsexec.config import EXIT_BAD_COMBINATION, EXIT_USAGE, Config, ConfigError, validate
from wsexec.websocket import BINARY, TEXT

# --- the pure decisions ------------------------------------------------------------------


@pytest.mark.parametrize("base, target, expected", [
    ("/ws", "/", "/ws"),
    ("/ws", "/room/1?x=2", "/ws/room/1?x=2"),
    ("/ws/", "/room", "/ws/room"),
    ("/", "/", "/"),
    ("/", "/room", "/room"),
    ("/", "/?a=1", "/?a=1"),
    ("/hook?key=k", "/chat?y=1", "/hook/chat?key=k&y=1"),
    ("/hook?key=k", "/", "/hook?key=k"),
    ("/cgi-bin/ws.cgi", "/a%20b", "/cgi-bin/ws.cgi/a%20b"),
])
def test_api_target(base, target, expected):
    assert api_target(base, target) == expected


@pytest.mark.parametrize("client, kept", [
    ([("Cookie", "a=1"), ("Authorization", "Bearer t"), ("User-Agent", "ua"), ("Origin", "http://o")],
     [("Cookie", "a=1"), ("Authorization", "Bearer t"), ("User-Agent", "ua"), ("Origin", "http://o")]),
    ([("Host", "h"), ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", "k"),
      ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Extensions", "permessage-deflate"),
      ("Sec-WebSocket-Protocol", "chat")], []),
    ([("Connection", "Upgrade, X-Secret"), ("X-Secret", "s"), ("X-Other", "o")], [("X-Other", "o")]),
    ([("Keep-Alive", "5"), ("TE", "trailers"), ("Transfer-Encoding", "chunked"), ("Content-Length", "0"),
      ("Proxy-Authorization", "p")], []),
    # a client cannot pass itself off: wsexec sets these
    ([("X-Forwarded-For", "6.6.6.6"), ("Forwarded", "for=6.6.6.6"), ("Connection-Id", "x"),
      ("Wsexec-Control", "evil"), ("WebSocket-Close-Code", "1000")], []),
])
def test_forwarded_headers(client, kept):
    extra = [("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "example.org")]
    assert forwarded_headers(client, "10.0.0.1", True, "example.org") == kept + extra


def test_forwarded_headers_without_host_or_tls():
    assert forwarded_headers([], "::1", False, None) == [("X-Forwarded-For", "::1"), ("X-Forwarded-Proto", "http")]


@pytest.mark.parametrize("answer, offered, protocol, headers", [
    ([("Content-Type", "text/plain")], None, None, ()),
    ([("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")], None, None, (("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"))),
    ([("Sec-WebSocket-Protocol", "chat")], "chat, superchat", "chat", (("Sec-WebSocket-Protocol", "chat"),)),
    ([("Sec-WebSocket-Protocol", "other")], "chat", None, ()),  # not offered: the client would fail it
    ([("Sec-WebSocket-Protocol", "chat")], None, None, ()),
    ([("X-Api", "1"), ("Location", "/x")], None, None, ()),
])
def test_accept_headers(answer, offered, protocol, headers):
    assert accept_headers(answer, offered) == (protocol, headers)


@pytest.mark.parametrize("status, answer, body, message, headers", [
    (401, [("WWW-Authenticate", "Bearer"), ("X-Api", "1")], b"log in\n", "log in", (("WWW-Authenticate", "Bearer"),)),
    (403, [], b"", "refused by the API (403)", ()),
    (302, [("Location", "/login")], b"", "refused by the API (302)", (("Location", "/login"),)),
    (503, [("Retry-After", "5")], b"busy", "busy", (("Retry-After", "5"),)),
    (404, [], b"\xffno", "\ufffdno", ()),
])
def test_refusal(status, answer, body, message, headers):
    refused = refusal(status, answer, body)
    assert (refused.status, refused.message, refused.headers) == (status, message, headers)


@pytest.mark.parametrize("reason, field", [
    ("bye", "bye"),
    ("a\r\nX-Evil: 1", "a  X-Evil: 1"),
    ("nul\0del\x7f", "nul del "),
    ("é", "\xc3\xa9"),  # UTF-8 bytes, carried as latin-1 text
])
def test_header_text(reason, field):
    assert header_text(reason) == field


@pytest.mark.parametrize("content_type, body, kind", [
    ("text/plain; charset=utf-8", b"hi", TEXT),
    (None, b"hi", TEXT),
    ("application/json", b"{}", TEXT),
    ("application/ld+json", b"{}", TEXT),
    ("TEXT/HTML", "é".encode(), TEXT),
    ("application/octet-stream", b"hi", BINARY),
    ("image/png", b"hi", BINARY),
    ("text/plain", b"\xff\xfe", BINARY),  # invalid UTF-8: binary, as for handler lines
    (None, b"\xc3", BINARY),
])
def test_reply_message(content_type, body, kind):
    assert reply_message(content_type, body) == (kind, body)


@pytest.mark.parametrize("options, code, word", [
    (dict(callback="ftp://api/"), EXIT_USAGE, "http://"),
    (dict(callback="http:///x"), EXIT_USAGE, "host"),
    (dict(callback="http://api:99999/"), EXIT_USAGE, "URL"),
    (dict(callback="http://api/#f"), EXIT_USAGE, "fragment"),
    (dict(callback="http://api/é"), EXIT_USAGE, "non-ASCII"),
    (dict(callback="http://api/", command=("cat",)), EXIT_BAD_COMBINATION, "COMMAND"),
    (dict(callback="http://api/", dir="/tmp"), EXIT_BAD_COMBINATION, "--dir"),
    (dict(callback="http://api/", shared=True), EXIT_BAD_COMBINATION, "--shared"),
    (dict(callback="http://api/", binary=True), EXIT_BAD_COMBINATION, "--binary"),
    (dict(callback="http://api/", framed=True), EXIT_BAD_COMBINATION, "--framed"),
    (dict(callback="http://api/", passstderr=True), EXIT_BAD_COMBINATION, "--passstderr"),
    (dict(callback="http://api/", maxforks=3), EXIT_BAD_COMBINATION, "--maxforks"),
    (dict(callback="http://api/", closems=3), EXIT_BAD_COMBINATION, "--closems"),
    (dict(callback="http://api/", cwd="/tmp"), EXIT_BAD_COMBINATION, "--cwd"),
    (dict(callback="http://api/", env=(("A", "1"),)), EXIT_BAD_COMBINATION, "--env"),
    (dict(callback="http://api/", callback_concurrency=0), EXIT_USAGE, "--callback-concurrency"),
    (dict(callback="http://api/", callbacktimeoutms=0), EXIT_USAGE, "--callbacktimeoutms"),
])
def test_callback_refused_combinations(options, code, word):
    with pytest.raises(ConfigError) as caught:
        validate(Config(**options))
    assert caught.value.exit_code == code and word in str(caught.value)


@pytest.mark.parametrize("options", [
    dict(callback="http://127.0.0.1:1/"),
    dict(callback="https://api.example/ws?key=1"),
    dict(callback="http://api/", cgidir="/tmp", maxforks=2, closems=10),  # CGI scripts are processes
])
def test_callback_accepted_combinations(options):
    assert validate(Config(**options)).has_handler


def test_callback_and_command_exit_4():
    done = subprocess.run([PY, "-m", "wsexec", "--port", "0", "--callback", "http://127.0.0.1:1/", "cat"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 4 and "COMMAND" in done.stderr


# --- a real API, in a thread -------------------------------------------------------------


class Api:
    """Python's stdlib HTTP/1.1 server on 127.0.0.1: records every request and
    behaves by path (see Handler). open_connections counts wsexec's sockets to it."""

    def __init__(self, tls: Optional[ssl.SSLContext] = None) -> None:
        self.requests: List[Tuple[str, str, Dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.open_connections = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with api.lock:
                    api.open_connections += 1

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    with api.lock:
                        api.open_connections -= 1

            def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
                pass

            def answer(self, status: int, body: bytes = b"", headers=(), kind: str = "text/plain; charset=utf-8"):  # type: ignore[no-untyped-def]
                self.send_response(status)
                self.send_header("Content-Type", kind)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with api.lock:
                    api.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                         body))
                path = self.path.split("?")[0]
                behaviour = path.split("/")[1]
                if self.command == "DELETE":
                    return self.answer(204)
                if self.command == "GET":
                    if behaviour == "refuse":
                        return self.answer(401, b"who are you?\n", [("WWW-Authenticate", "Bearer realm=x")])
                    if behaviour == "slowget":
                        time.sleep(1.5)
                    return self.answer(200, b"ok", [("Set-Cookie", "session=abc; HttpOnly"),
                                                    ("Set-Cookie", "theme=dark"), ("Sec-WebSocket-Protocol", "chat"),
                                                    ("X-Not-For-Client", "1")])
                # POST: what the message asks for
                if body == b"fail":
                    return self.answer(500, b"broken")
                if body == b"slow":
                    time.sleep(1.5)
                    return self.answer(200, b"late")
                if body == b"big":  # chunked, no Content-Length: wsexec has to count
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    chunk = b"x" * 65536
                    try:
                        for _ in range(64):  # 4 MiB, far over --maxmessage
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.write(b"0\r\n\r\n")
                    except OSError:
                        pass  # wsexec stopped reading: expected
                    self.close_connection = True
                    return
                if body == b"bigdeclared":
                    self.send_response(200)
                    self.send_header("Content-Length", str(1 << 30))
                    self.end_headers()
                    self.close_connection = True
                    return
                if body == b"cut":
                    self.send_response(200)
                    self.send_header("Content-Length", "100")
                    self.end_headers()
                    self.wfile.write(b"only ten b")
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if body == b"badutf":
                    return self.answer(200, b"\xff\xfeok", kind="text/plain")
                if body == b"quiet":
                    return self.answer(204)
                if body == b"hangup":  # answers, then closes the kept-alive connection without saying so
                    self.close_connection = True
                    return self.answer(200, b"bye")
                kind = self.headers.get("Content-Type", "text/plain")
                return self.answer(200, b"re: " + body, kind=kind)

            do_GET = do_POST = do_DELETE = handle_one

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Api":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def seen(self, method: str) -> List[Tuple[str, str, Dict[str, str], bytes]]:
        with self.lock:
            return [r for r in self.requests if r[0] == method]


def log_lines(tail) -> str:  # type: ignore[no-untyped-def]
    return tail().decode(errors="replace")


async def control(server: WsexecProcess, method: str, target: str, body: Optional[bytes] = None):  # type: ignore[no-untyped-def]
    headers = [("Content-Type", "text/plain; charset=utf-8")] if body is not None else []
    return await fetch(server.control_port, method, target, headers, body=body, timeout=10)


@trio_test(60)
async def test_every_request_and_header(tmp_path):
    """GET before the 101 with the client's headers and wsexec's, the API's
    cookies and subprotocol in the 101, POSTs in order with replies text and
    binary, pushes and closes by id through the control API, DELETE with the
    close code; GET /connections lists the connection with pid null."""
    with Api() as api, WsexecProcess("--callback", f"http://127.0.0.1:{api.port}/base?k=v", "--control",
                                     "127.0.0.1:0") as server:
        tail = drain_output(server)
        head = await response_head(server.port, upgrade_request(
            "/room/7?x=1", "Cookie: c=1\r\nAuthorization: Bearer tok\r\nUser-Agent: tester\r\n"
            "Origin: http://127.0.0.1\r\nSec-WebSocket-Protocol: chat, other\r\nX-Forwarded-For: 6.6.6.6\r\n"))
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"Set-Cookie: session=abc; HttpOnly\r\nSet-Cookie: theme=dark" in head
        assert b"Sec-WebSocket-Protocol: chat" in head and b"X-Not-For-Client" not in head
        ((method, path, headers, _),) = api.seen("GET")
        assert path == "/base/room/7?k=v&x=1"
        assert headers["cookie"] == "c=1" and headers["authorization"] == "Bearer tok"
        assert headers["user-agent"] == "tester" and headers["origin"] == "http://127.0.0.1"
        assert headers["x-forwarded-for"] == "127.0.0.1" and headers["x-forwarded-proto"] == "http"
        assert headers["x-forwarded-host"] == "127.0.0.1"
        assert headers["wsexec-control"] == server.control_url
        assert not [h for h in headers if h.startswith("sec-websocket") or h in ("upgrade", "forwarded")]
        assert "connection" not in headers  # the client's is hop-by-hop; HTTP/1.1 keeps alive by default
        first_id = headers["connection-id"]
        await wait_until(lambda: len(api.seen("DELETE")) == 1, 10, "the DELETE after the client vanished")
        assert api.seen("DELETE")[0][2]["websocket-close-code"] == "1006"

        async with open_websocket_url(f"ws://127.0.0.1:{server.port}/", subprotocols=["chat"]) as ws:
            await ws.send_message("héllo")
            assert await ws.get_message() == "re: héllo"
            await ws.send_message(b"\x00\x01")
            assert await ws.get_message() == b"re: \x00\x01"
            await ws.send_message("quiet")  # 204: nothing comes back
            await ws.send_message("after")
            assert await ws.get_message() == "re: after"
            posts = api.seen("POST")
            assert [r[3] for r in posts] == ["héllo".encode(), b"\x00\x01", b"quiet", b"after"]
            assert posts[0][2]["content-type"] == "text/plain; charset=utf-8"
            assert posts[1][2]["content-type"] == "application/octet-stream"
            conn_id = posts[0][2]["connection-id"]
            assert conn_id != first_id and posts[0][1] == "/base?k=v"
            listed = json.loads((await control(server, "GET", "/connections")).body)
            (entry,) = [c for c in listed if c["id"] == conn_id]
            assert entry["pid"] is None
            pushed = await control(server, "POST", f"/connections/{conn_id}", b"pushed")
            assert pushed.status in (200, 204)
            assert await ws.get_message() == "pushed"
            closed = await control(server, "DELETE", f"/connections/{conn_id}?code=4001&reason=bye")
            assert closed.status in (200, 202, 204)
            with pytest.raises(ConnectionClosed) as caught:
                await ws.get_message()
            assert caught.value.reason.code == 4001
        await wait_until(lambda: len(api.seen("DELETE")) == 2, 10, "the DELETE after the close by id")
        deleted = api.seen("DELETE")[1][2]
        assert (deleted["connection-id"], deleted["websocket-close-code"], deleted["websocket-close-reason"]) == \
            (conn_id, "4001", "bye")
        await wait_until(lambda: "http 204" in log_lines(tail), 10, "the DISCONNECT line with the DELETE's status")


@trio_test(40)
async def test_forwarded_for_the_real_client_behind_a_trusted_proxy():
    """Behind a trusted proxy the API hears of the client the proxy names,
    not of the proxy; from anyone else such headers are replaced."""
    with Api() as api, WsexecProcess("--callback", f"http://127.0.0.1:{api.port}/",
                                     "--trusted-proxy", "127.0.0.1") as server:
        head = await response_head(server.port, upgrade_request(
            "/", "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: example.org\r\n"))
        assert head.startswith(b"HTTP/1.1 101 ")
        headers = api.seen("GET")[0][2]
        assert (headers["x-forwarded-for"], headers["x-forwarded-proto"], headers["x-forwarded-host"]) == \
            ("203.0.113.7", "https", "example.org")
    with Api() as api, WsexecProcess("--callback", f"http://127.0.0.1:{api.port}/",
                                     "--trusted-proxy", "10.9.9.9") as server:
        await response_head(server.port, upgrade_request(
            "/", "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n"))
        headers = api.seen("GET")[0][2]
        assert (headers["x-forwarded-for"], headers["x-forwarded-proto"]) == ("127.0.0.1", "http")


@trio_test(40)
async def test_https_api(tmp_path):
    """An https:// API, its certificate checked against the CAs OpenSSL
    trusts (here SSL_CERT_FILE names the test's CA); without that trust the
    connect is refused 502."""
    certs = make_certs(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certs.cert), str(certs.key))
    with Api(context) as api:
        env = dict(os.environ, SSL_CERT_FILE=str(certs.cacert))
        with WsexecProcess("--callback", f"https://127.0.0.1:{api.port}/", env=env) as server:
            async with open_websocket_url(f"ws://127.0.0.1:{server.port}/") as ws:
                await ws.send_message("over tls")
                assert await ws.get_message() == "re: over tls"
                await ws.send_message("again")
                assert await ws.get_message() == "re: again"
        assert [r[3] for r in api.seen("POST")] == [b"over tls", b"again"]
        with WsexecProcess("--callback", f"https://127.0.0.1:{api.port}/") as server:
            answer = await raw_http(server.port, upgrade_request("/"), timeout=10)
            assert answer.startswith(b"HTTP/1.1 502 ")


@trio_test(40)
async def test_refusal_is_the_apis_answer():
    with Api() as api, WsexecProcess("--callback", f"http://127.0.0.1:{api.port}/") as server:
        answer = await raw_http(server.port, upgrade_request("/refuse"), timeout=10)
        assert answer.startswith(b"HTTP/1.1 401 ")
        assert b"WWW-Authenticate: Bearer realm=x" in answer and answer.endswith(b"who are you?\n")
        assert not api.seen("DELETE")  # never connected: nothing to disconnect


@trio_test(40)
async def test_client_close_code_reaches_delete():
    with Api() as api, WsexecProcess("--callback", f"http://127.0.0.1:{api.port}/") as server:
        async with open_websocket_url(f"ws://127.0.0.1:{server.port}/") as ws:
            await ws.aclose(4321, "done here")
        async with open_websocket_url(f"ws://127.0.0.1:{server.port}/") as ws:
            await ws.aclose(4000, "x\r\nSet-Cookie: evil")  # cannot add a field to the DELETE
        await wait_until(lambda: len(api.seen("DELETE")) == 2, 10, "the DELETEs")
        first, second = (d[2] for d in api.seen("DELETE"))
        assert (first["websocket-close-code"], first["websocket-close-reason"]) == ("4321", "done here")
        assert (second["websocket-close-code"], second["websocket-close-reason"]) == ("4000", "x  Set-Cookie: evil")
        assert "set-cookie" not in second


@trio_test(40)
async def test_shutdown_sends_delete_within_grace():
    with Api() as api:
        server = WsexecProcess("--callback", f"http://127.0.0.1:{api.port}/", "--gracems", "1000")
        try:
            async with open_websocket_url(f"ws://127.0.0.1:{server.port}/") as ws:
                started = time.monotonic()
                server.proc.terminate()
                with pytest.raises(ConnectionClosed) as caught:
                    await ws.get_message()
                assert caught.value.reason.code == 1001
            assert server.proc.wait(10) == 0 and time.monotonic() - started < 8
        finally:
            server.stop()
        (delete,) = api.seen("DELETE")
        assert delete[2]["websocket-close-code"] == "1001"


# --- bad backends ------------------------------------------------------------------------


async def still_serves(port: int) -> None:
    async with open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
        await ws.send_message("fine")
        assert await ws.get_message() == "re: fine"


@trio_test(120)
async def test_bad_backends_then_no_leak():
    """Each bad answer ends its connection with a clear code and a log line;
    wsexec serves the others, and afterwards holds no more descriptors and no
    more connections to the API than before (the pool is at most 4)."""
    with Api() as api, WsexecProcess("--callback", f"http://127.0.0.1:{api.port}/", "--callbacktimeoutms", "700",
                                     "--maxmessage", "64K", "--callback-concurrency", "4") as server:
        tail = drain_output(server)
        url = f"ws://127.0.0.1:{server.port}/"
        await still_serves(server.port)
        baseline = fd_count(server.proc.pid)
        for sends, code, reason, log in [
            (["fail"], 1011, "API answered 500", "API answered 500"),
            (["slow"], 1011, "API did not answer in time", "API did not answer in time"),
            (["big"], 1009, "API answer over 65536 bytes", "API answer over 65536 bytes"),
            (["bigdeclared"], 1009, "API answer over 65536 bytes", "API answer over"),
            (["cut"], 1011, "API answer cut short", "API answer cut short"),
        ]:
            got, closed, why = await collect(url, ["first", *sends, "never posted"], timeout=15)
            assert (got, closed, why) == (["re: first"], code, reason), sends
            await wait_until(lambda: log in log_lines(tail), 5, f"the log line {log!r}")
            await still_serves(server.port)
        assert [r[3] for r in api.seen("POST")].count(b"never posted") == 0
        async with open_websocket_url(url) as ws:  # the API closed the pooled connection: a new one
            await ws.send_message("hangup")
            assert await ws.get_message() == "bye"
            await ws.send_message("next")
            assert await ws.get_message() == "re: next"
        async with open_websocket_url(url) as ws:  # invalid UTF-8 as text/plain: binary
            await ws.send_message("badutf")
            assert await ws.get_message() == b"\xff\xfeok"
        # slower than the timeout at connect: 504
        answer = await raw_http(server.port, upgrade_request("/slowget"), timeout=10)
        assert answer.startswith(b"HTTP/1.1 504 ")
        await wait_until(lambda: "API did not answer the connect GET" in log_lines(tail), 5, "the 504's log line")
        await still_serves(server.port)
        await trio.sleep(2)  # the slow API threads finish their answers to closed sockets
        await wait_until(lambda: fd_count(server.proc.pid) <= baseline, 10,
                         lambda: f"wsexec's fds back to {baseline}: {fd_count(server.proc.pid)}")
        assert api.open_connections <= 4
        # many at once, more than the pool: all served through at most 4 connections
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(still_serves, server.port)
        assert api.open_connections <= 4
        await wait_until(lambda: fd_count(server.proc.pid) <= baseline + 3, 10,
                         lambda: f"wsexec's fds near {baseline}: {fd_count(server.proc.pid)}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@trio_test(60)
async def test_api_down_at_connect_and_later():
    """Nothing listening: 502 at connect. The API gone after the connect: the
    next message closes 1011 'API unreachable'; the DELETE is tried within
    --gracems and fails, logged."""
    dead = free_port()
    with WsexecProcess("--callback", f"http://127.0.0.1:{dead}/") as server:
        tail = drain_output(server)
        answer = await raw_http(server.port, upgrade_request("/"), timeout=10)
        assert answer.startswith(b"HTTP/1.1 502 ") and b"unreachable" in answer
        await wait_until(lambda: "API unreachable for the connect GET" in log_lines(tail), 5, "the log line")
    api, port = start_example_api()
    with WsexecProcess("--callback", f"http://127.0.0.1:{port}/", "--gracems", "500") as server:
        tail = drain_output(server)
        async with open_websocket_url(f"ws://127.0.0.1:{server.port}/") as ws:
            await ws.send_message("one")
            assert await ws.get_message() == "ONE"
            api.kill()  # the pooled connection goes with it
            api.wait(10)
            started = time.monotonic()
            await ws.send_message("two")
            with pytest.raises(ConnectionClosed) as caught:
                await ws.get_message()
            assert (caught.value.reason.code, caught.value.reason.reason) in (
                (1011, "API unreachable"), (1011, "API answer cut short"))
            assert time.monotonic() - started < 5
        await wait_until(lambda: "DELETE failed" in log_lines(tail), 5, "the DELETE's log line")


def hangup_api(listener: socket.socket, posts: List[bytes]) -> None:
    """A raw HTTP/1.1 API: its first connection answers one request, then
    closes on reading the next one without answering (as a server ending an
    idle keep-alive connection just as it is reused); later ones answer all."""
    for number in range(3):
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            data = b""
            for answered in range(100):
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if b"\r\n\r\n" not in data:
                    break
                head, _, data = data.partition(b"\r\n\r\n")
                length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), b"0"))
                while len(data) < length:
                    data += conn.recv(65536)
                body, data = data[:length], data[length:]
                if number == 0 and answered == 1:
                    break  # closed, unanswered
                if head.startswith(b"POST"):
                    posts.append(body)
                reply = b"re: " + body if head.startswith(b"POST") else b"ok"
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(reply), reply))


@trio_test(40)
async def test_reused_connection_closed_unanswered_is_retried_once():
    listener = socket.create_server(("127.0.0.1", 0))
    posts: List[bytes] = []
    thread = threading.Thread(target=hangup_api, args=(listener, posts), daemon=True)
    thread.start()
    try:
        with WsexecProcess("--callback", f"http://127.0.0.1:{listener.getsockname()[1]}/") as server:
            async with open_websocket_url(f"ws://127.0.0.1:{server.port}/") as ws:
                await ws.send_message("first")  # on the connect GET's connection: closed unanswered, sent again
                assert await ws.get_message() == "re: first"
        assert posts == [b"first"]
    finally:
        listener.close()


# --- the example API, unchanged (ws2api's shape) ----------------------------------------------


def start_example_api() -> Tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([PY, str(ROOT / "examples" / "api.py"), str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    line = readline_within(proc.stdout, 10)
    assert line.startswith(b"api on port"), line
    return proc, port


@trio_test(40)
async def test_example_api():
    proc, port = start_example_api()
    try:
        with WsexecProcess("--callback", f"http://127.0.0.1:{port}/") as server:
            async with open_websocket_url(f"ws://127.0.0.1:{server.port}/chat") as ws:
                await ws.send_message("hello")
                assert await ws.get_message() == "HELLO"
                await ws.send_message(b"bin")
                assert await ws.get_message() == b"BIN"
            line = readline_within(proc.stdout, 10)
            assert line.startswith(b"closed ") and line.split()[2] == b"1000"
    finally:
        proc.terminate()
        proc.wait(10)


# --- lighttpd running a CGI script --------------------------------------------------------



def lighttpd_config(root: Path, port: int, template: Path) -> Path:
    """The recipe's lighttpd.conf, its paths and port pointed at a test directory."""
    text = template.read_text()
    text = text.replace('"/var/www"', f'"{root}"').replace("server.port = 80", f"server.port = {port}")
    text = text.replace('"/var/log/lighttpd/error.log"', f'"{root}/error.log"')
    path = root / "lighttpd.conf"
    path.write_text(text)
    return path


RECIPE = ROOT / "examples" / "deploy" / "lighttpd-callback.conf"


def test_lighttpd_recipe_config_is_valid(tmp_path):
    lighttpd = shutil.which("lighttpd") or "/usr/sbin/lighttpd"
    assert os.path.exists(lighttpd), "lighttpd is needed: apt-get install -y lighttpd"
    done = subprocess.run([lighttpd, "-tt", "-f", str(RECIPE)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


@trio_test(60)
async def test_lighttpd_cgi_script(tmp_path):
    lighttpd = shutil.which("lighttpd") or "/usr/sbin/lighttpd"
    assert os.path.exists(lighttpd), "lighttpd is needed: apt-get install -y lighttpd"
    (tmp_path / "cgi-bin").mkdir()
    log = tmp_path / "deletes.log"
    cgi = tmp_path / "cgi-bin" / "ws.cgi"  # the recipe's script, its log moved
    cgi.write_text((ROOT / "examples" / "deploy" / "cgi-bin" / "ws.cgi").read_text().replace("/tmp/ws-cgi.log", str(log)))
    cgi.chmod(0o755)
    port = free_port()
    config = lighttpd_config(tmp_path, port, RECIPE)
    done = subprocess.run([lighttpd, "-tt", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    web = subprocess.Popen([lighttpd, "-D", "-f", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0 or web.poll() is not None, 10,
                 "lighttpd listening")
        assert web.poll() is None, web.stderr.read()
        with WsexecProcess("--callback", f"http://127.0.0.1:{port}/cgi-bin/ws.cgi") as server:
            async with open_websocket_url(f"ws://127.0.0.1:{server.port}/") as ws:
                await ws.send_message("hello board")
                reply = await ws.get_message()
                conn_id, _, said = reply.partition(" says: ")
                assert said == "HELLO BOARD" and conn_id
                await ws.send_message("second")
                assert await ws.get_message() == f"{conn_id} says: SECOND"
            await wait_until(lambda: log.exists() and log.read_text().strip(), 10, "the CGI script's DELETE")
            assert log.read_text().split()[1:] == [conn_id, "1000"]
    finally:
        web.terminate()
        web.wait(10)
