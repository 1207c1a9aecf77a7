"""The decisions later work will change, as tables: admission of an upgrade,
how a session's ending becomes a close code, and plain-HTTP route precedence."""

from __future__ import annotations

import os
import signal

import pytest

from wsexec.admission import Refusal, admit
from wsexec.backends import (
    API_CLOSED,
    CLIENT_CLOSED,
    CLIENT_GONE,
    FAR_END_DONE,
    PROTOCOL_ERROR,
    SERVER_STOPPING,
    Ending,
    Outcome,
    close_frame,
)
from wsexec.backends.process import line_message, process_outcome
from wsexec.config import Config
from wsexec.http import cgi, static
from wsexec.http.plain import Choice, choose
from wsexec.http.request import Request
from wsexec.http.routing import Route
from wsexec.registry import Registry
from wsexec.session import close_text

ROUTE = Route("/bin/cat", "", "/", "")
KEY = ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
UPGRADE = (("Host", "example.com"), ("Upgrade", "websocket"), ("Connection", "Upgrade"), KEY,
           ("Sec-WebSocket-Version", "13"))


def request(method="GET", target="/", version="1.1", headers=UPGRADE, drop=(), add=()) -> Request:
    kept = tuple(h for h in headers if h[0].lower() not in drop) + tuple(add)
    return Request(method, target, version, kept, ("127.0.0.1", 5000), ("127.0.0.1", 80))


COMMAND = Config(command=("/bin/cat",))
ORIGINS = Config(command=("/bin/cat",), origins=("good.example",))
SITE_ONLY = Config(staticdir="/srv")


def only_root(path):
    return ROUTE if path == "/" else None


@pytest.mark.parametrize("req, config, full, expected", [
    # the usual upgrade
    (request(), COMMAND, False, ROUTE),
    # in order: not an upgrade at all
    (request(drop=("upgrade",)), COMMAND, True, Refusal(404, "not found: this address serves WebSocket connections only")),
    # a broken handshake, RFC 6455 section 4.2.1, before origin and capacity
    (request(method="POST"), ORIGINS, True, Refusal(405, "a WebSocket handshake must use GET")),
    (request(version="1.0"), COMMAND, True, Refusal(400, "a WebSocket handshake needs HTTP/1.1")),
    (request(drop=("connection",)), COMMAND, True, Refusal(400, "missing 'Connection: Upgrade'")),
    (request(drop=("sec-websocket-key",)), COMMAND, True, Refusal(400, "Sec-WebSocket-Key must be 16 bytes in base64")),
    (request(drop=("sec-websocket-version",), add=(("Sec-WebSocket-Version", "8"),)), COMMAND, True,
     Refusal(426, "only Sec-WebSocket-Version 13 is supported", (("Sec-WebSocket-Version", "13"),))),
    # then the origin, before the target and capacity
    (request(target="/%00", add=(("Origin", "http://evil.example"),)), ORIGINS, True,
     Refusal(403, "origin not allowed: http://evil.example")),
    (request(add=(("Origin", "http://good.example"),)), ORIGINS, False, ROUTE),
    # then a NUL in the target
    (request(target="/a%00b"), COMMAND, True, Refusal(400, "NUL in the request target")),
    # then nothing to run: an unknown --dir path, or no handler at all (a site only)
    (request(target="/missing"), COMMAND, True, Refusal(404, "not found")),
    (request(), SITE_ONLY, True, Refusal(404, "not found")),
    # last, --maxforks
    (request(), COMMAND, True, Refusal(429, "too many connections, try again later", (("Retry-After", "1"),))),
])
def test_admission_order(req, config, full, expected):
    assert admit(req, config, only_root, full) == expected


def test_admission_looks_up_nothing_for_a_refused_request():
    looked = []
    admit(request(method="POST"), COMMAND, lambda path: looked.append(path), False)
    admit(request(), SITE_ONLY, lambda path: looked.append(path), False)
    assert looked == []


def wait_status(code=None, sig=None) -> int:
    """A real wait status from a real child."""
    pid = os.fork()
    if pid == 0:
        if sig:
            os.kill(os.getpid(), sig)
        os._exit(code or 0)
    return os.waitpid(pid, 0)[1]


@pytest.mark.parametrize("status, too_long, not_started, expected", [
    (wait_status(0), "", "", Outcome(1000, "", "exit status 0")),
    (wait_status(3), "", "", Outcome(1011, "exit status 3", "exit status 3")),
    (wait_status(sig=signal.SIGKILL), "", "", Outcome(1011, "killed by SIGKILL", "killed by SIGKILL")),
    (wait_status(0), "output line exceeds 200 bytes", "", Outcome(1009, "output line exceeds 200 bytes", "exit status 0")),
    (wait_status(1), "output line exceeds 200 bytes", "", Outcome(1009, "output line exceeds 200 bytes", "exit status 1")),
    (None, "", "cannot start handler: No such file or directory",
     Outcome(1011, "cannot start handler: No such file or directory", "not started")),
    (None, "", "", Outcome(1011, "not reaped", "not reaped")),
])
def test_handler_outcome(status, too_long, not_started, expected):
    assert process_outcome(status, too_long, not_started) == expected


EXITED_0 = Outcome(1000, "", "exit status 0")
EXITED_3 = Outcome(1011, "exit status 3", "exit status 3")


@pytest.mark.parametrize("ending, outcome, expected", [
    (Ending(FAR_END_DONE), EXITED_0, (1000, "")),  # exit 0
    (Ending(FAR_END_DONE), EXITED_3, (1011, "exit status 3")),  # non-zero, with its reason
    (Ending(FAR_END_DONE), Outcome(1009, "output line exceeds 9 bytes", "exit status 0"), (1009, "output line exceeds 9 bytes")),
    (Ending(FAR_END_DONE), Outcome(1011, "cannot start handler: x", "not started"), (1011, "cannot start handler: x")),
    (Ending(CLIENT_CLOSED, 4001, "bye"), EXITED_3, (4001, "bye")),  # the client's close, echoed
    (Ending(CLIENT_CLOSED, 1005, ""), EXITED_0, (1005, "")),  # an empty close frame, echoed empty
    (Ending(PROTOCOL_ERROR, 1002, "reserved bits set"), EXITED_0, (1002, "reserved bits set")),
    (Ending(CLIENT_GONE, 1006, "client gone"), EXITED_0, (1006, "client gone")),  # nothing is sent
    (Ending(SERVER_STOPPING), EXITED_3, (1001, "server shutting down")),
    (Ending(SERVER_STOPPING), None, (1001, "server shutting down")),  # cancelled before an outcome
    # closed by id (the control API), or by --idlems / --lifetimems through the same path
    (Ending(API_CLOSED, 4000, "kicked"), EXITED_3, (4000, "kicked")),
    (Ending(API_CLOSED, 1000, "idle for 300 ms"), EXITED_0, (1000, "idle for 300 ms")),
    (Ending(API_CLOSED, 1000, "open for 500 ms"), None, (1000, "open for 500 ms")),
])
def test_close_frame(ending, outcome, expected):
    assert close_frame(ending, outcome) == expected


@pytest.mark.parametrize("close, expected", [(None, "none"), ((1005, ""), "empty"), ((1000, ""), "1000"), ((4001, "x"), "4001")])
def test_close_text_for_the_log(close, expected):
    assert close_text(close) == expected


@pytest.mark.parametrize("line, expected", [(b"hi", (1, b"hi")), (b"", (1, b"")), (b"\xff", (2, b"\xff")),
                                            ("é".encode(), (1, "é".encode()))])
def test_line_message(line, expected):
    assert line_message(line) == expected


SCRIPT = Route("/srv/cgi/s.sh", "/s.sh", "", "")
FILE = static.Found("/srv/www/a.txt", "a.txt")
SLASH = static.AddSlash("/dir/")


@pytest.mark.parametrize("method, console, script, file, expected", [
    # the dev console comes first, for GET and HEAD
    ("GET", True, SCRIPT, FILE, Choice("console")),
    ("HEAD", True, None, None, Choice("console")),
    ("POST", True, SCRIPT, FILE, Choice("refuse", 405, "GET, HEAD")),
    # then a CGI script, for any method but CONNECT and TRACE
    ("POST", False, SCRIPT, FILE, Choice("cgi")),
    ("DELETE", False, SCRIPT, None, Choice("cgi")),
    ("TRACE", False, SCRIPT, FILE, Choice("refuse", 405, cgi.ALLOW)),
    ("CONNECT", False, SCRIPT, None, Choice("refuse", 405, cgi.ALLOW)),
    # then a static file or directory, GET and HEAD only
    ("GET", False, None, FILE, Choice("static")),
    ("HEAD", False, None, SLASH, Choice("static")),
    ("PUT", False, None, FILE, Choice("refuse", 405, "GET, HEAD")),
    # then nothing
    ("GET", False, None, None, Choice("refuse", 404)),
    ("POST", False, None, None, Choice("refuse", 404)),
])
def test_plain_route_precedence(method, console, script, file, expected):
    assert choose(method, console, script, file) == expected


def test_connection_ids_are_unique_letters_and_digits():
    registry = Registry()
    ids = [registry.new_id() for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    assert all(i.isascii() and i.isalnum() for i in ids)
    assert Registry().new_id() != Registry().new_id()
