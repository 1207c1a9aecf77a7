"""--logformat: the json format end to end (real `python -m wsexec` processes,
real connections on 127.0.0.1, the log read back from a --log file), and the
formatter itself as a table."""

import json
import logging
import os
import re
import subprocess
import time
from datetime import datetime, timezone

import pytest
import trio

from support.clients import collect, raw_http
from support.servers import PY, ROOT, WsexecProcess, script
from support.waiting import wait_for
from wsexec.config import Config, ConfigError, validate
from wsexec.log import (
    ACCESS, CONNECT, CONTROL, DISCONNECT, DROPPED, HANDSHAKE_TIMEOUT, HTTP, REDIRECT, REFUSED, STDERR, TLS_FAILED,
    TRACE,
    ConnectionLog, Formatter, JsonConnectionLog, JsonFormatter,
)

TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
REMOTE = re.compile(r"127\.0\.0\.1:\d+")

# Says its pid and connection id, then exits 0.
WHO = """
import os
print(os.getpid(), os.environ["WSEXEC_CONNECTION_ID"], flush=True)
"""

# Odd bytes on stderr: invalid UTF-8, control characters, JSON's own
# specials, valid non-ASCII, characters str.splitlines would split at, and a
# last line without a newline.
ODD = """
import sys
sys.stderr.buffer.write(
    b"bad \\xff\\xfe\\xc3 utf8\\n"
    b"ctl \\x00\\x01\\x07\\x1b[31m\\x7f\\ttab\\r mid\\n"
    b"quote \\" backslash \\\\ \\xc3\\xa9 \\xe2\\x80\\xa8 \\x0b\\x0c\\x1c\\x85\\n"
    b"no newline \\x1b")
sys.stderr.flush()
print("done", flush=True)
"""


def objects(path, timeout: float = 5.0, until=lambda found: False) -> list:
    """The log file's lines, each parsed as JSON (every line must be one
    object), once until(objects) holds or at the time ceiling."""
    deadline = time.monotonic() + timeout
    while True:
        data = path.read_bytes() if path.exists() else b""
        lines = data.split(b"\n")
        assert lines[-1] == b"", f"a partial line: {lines[-1]!r}"
        found = []
        for line in lines[:-1]:
            assert line.isascii(), line
            found.append(json.loads(line))
        if until(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def with_event(found: list, event: str) -> list:
    return [o for o in found if o["event"] == event]


def json_server(tmp_path, body: str, *args: str) -> tuple:
    """A wsexec logging json to a file, in a time zone far from UTC (the log's times are UTC)."""
    handler = script(tmp_path, "handler.py", body)
    log = tmp_path / "wsexec.log"
    env = dict(os.environ, TZ="IST-5:30")  # POSIX form, UTC+5:30: no tz database needed
    return WsexecProcess("--logformat", "json", "--log", str(log), *args, str(handler), env=env), log


def test_json_log_gives_connect_and_disconnect_objects_with_their_fields(tmp_path):
    server, log = json_server(tmp_path, WHO)
    with server:
        started = time.time()
        messages, code, _ = trio.run(collect, server.url + "/who?x=1")
        found = objects(log, until=lambda found: with_event(found, "disconnect"))
        assert server.stop() == 0
    assert code == 1000
    pid, conn_id = messages[0].split()

    (connect,) = with_event(found, "connect")
    assert connect == {
        "time": connect["time"], "level": "access", "logger": "wsexec.connection", "event": "connect",
        "message": "CONNECT /who?x=1", "id": conn_id, "remote": connect["remote"], "pid": int(pid),
        "path": "/who?x=1",
    }
    assert TIME.fullmatch(connect["time"]) and REMOTE.fullmatch(connect["remote"])
    logged = datetime.strptime(connect["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert abs(logged.timestamp() - started) < 10  # UTC, not local time

    (disconnect,) = with_event(found, "disconnect")
    sent = 2 + len(messages[0].encode())  # one text frame, then a close frame: 1000 without a reason
    assert disconnect == dict(
        disconnect, level="access", logger="wsexec.connection", id=conn_id, remote=connect["remote"],
        pid=int(pid), path="/who?x=1", exit="exit status 0", close_code=1000, close_reason="",
        client_close=1000, bytes_in=8, bytes_out=sent + 4,
    )
    assert 0 <= disconnect["duration"] < 5 and isinstance(disconnect["duration"], float)
    assert re.fullmatch(r"DISCONNECT /who\?x=1 exit status 0 close=1000/- client_close=1000 in=8 out=\d+ \d+\.\d{3}s",
                        disconnect["message"]), disconnect["message"]
    assert [o["event"] for o in found if o["level"] == "info"][0] is None  # "serving ..."


def test_json_log_stays_valid_for_odd_bytes_on_a_handlers_stderr(tmp_path):
    server, log = json_server(tmp_path, ODD)
    with server:
        messages, code, _ = trio.run(collect, server.url + "/odd")
        found = objects(log, until=lambda found: with_event(found, "disconnect"))
        assert server.stop() == 0
    assert (messages, code) == (["done"], 1000)
    lines = with_event(found, "stderr")
    assert [o["message"] for o in lines] == [
        "stderr: bad \\xff\\xfe\\xc3 utf8",
        "stderr: ctl \x00\x01\x07\x1b[31m\x7f\ttab\r mid",
        "stderr: quote \" backslash \\ \u00e9 \u2028 \x0b\x0c\x1c\\x85",
        "stderr: no newline \x1b",
    ]
    assert {(o["level"], o["logger"], o["pid"] is not None) for o in lines} == {("error", "wsexec.connection", True)}


def test_json_log_gives_a_refused_object(tmp_path):
    server, log = json_server(tmp_path, WHO)
    with server:
        answer = trio.run(raw_http, server.port, b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
        found = objects(log, until=lambda found: with_event(found, "refused"))
        assert server.stop() == 0
    assert answer.startswith(b"HTTP/1.1 404 ")
    (refused,) = with_event(found, "refused")
    assert refused == dict(refused, level="access", logger="wsexec.connection", pid=None, status=404, path="/plain")
    assert refused["message"] == f"REFUSED 404 /plain: {refused['reason']}"
    assert REMOTE.fullmatch(refused["remote"]) and refused["id"]


def test_text_is_still_the_default_format(tmp_path):
    handler = script(tmp_path, "handler.py", WHO)
    log = tmp_path / "wsexec.log"
    with WsexecProcess("--log", str(log), str(handler)) as server:
        messages, _, _ = trio.run(collect, server.url + "/text")
        wait_for(lambda: "DISCONNECT" in log.read_text(), 5, "the DISCONNECT line")
        assert server.stop() == 0
    pid, conn_id = messages[0].split()
    prefix = rf"\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{3}} ACCESS wsexec\.connection #{conn_id} 127\.0\.0\.1:\d+ pid={pid} "
    text = log.read_text()
    assert re.search(rf"^{prefix}CONNECT /text$", text, re.M), text
    assert re.search(rf"^{prefix}DISCONNECT /text exit status 0 close=1000/- client_close=1000 in=8 out=\d+ \d\.\d{{3}}s$",
                     text, re.M), text


def test_unknown_log_format_exits_2():
    result = subprocess.run([PY, "-m", "wsexec", "--logformat", "xml", "cat"], cwd=ROOT, capture_output=True,
                            timeout=30, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and b"--logformat" in result.stderr
    with pytest.raises(ConfigError) as e:
        validate(Config(command=("cat",), logformat="xml"))
    assert e.value.exit_code == 2 and "--logformat" in str(e.value)


# --- the formatter, as a table ----------------------------------------------------

CREATED = 1_796_084_148.02  # 2026-12-01T00:15:48.020Z


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def logged(adapter_class, level: int, msg: str, *args, **kwargs) -> logging.LogRecord:
    """The record a line gets through a connection's log (the id, address and
    pid as a session has them), with a fixed time."""
    logger = logging.getLogger("test.logformat")
    logger.propagate, logger.level = False, logging.DEBUG
    keep = Keep()
    logger.handlers[:] = [keep]
    log = adapter_class(logger, "9f3a01c21", ("127.0.0.1", 43196))
    log.pid = "12311"
    log.log(level, msg, *args, **kwargs)
    (record,) = keep.records
    record.created, record.msecs = CREATED, 20.0
    return record


COMMON = {"time": "2026-12-01T00:15:48.020Z", "logger": "test.logformat", "id": "9f3a01c21",
          "remote": "127.0.0.1:43196", "pid": 12311}


@pytest.mark.parametrize("level, msg, args, expected", [
    (ACCESS, CONNECT, ("/a?b",), {"level": "access", "event": "connect", "message": "CONNECT /a?b", "path": "/a?b"}),
    (ACCESS, DISCONNECT, ("/a", "exit status 0", 1000, "-", "1000", 8, 21, 0.0041234567),
     {"level": "access", "event": "disconnect",
      "message": "DISCONNECT /a exit status 0 close=1000/- client_close=1000 in=8 out=21 0.004s",
      "path": "/a", "exit": "exit status 0", "close_code": 1000, "close_reason": "", "client_close": 1000,
      "bytes_in": 8, "bytes_out": 21, "duration": 0.004123}),
    (ACCESS, DISCONNECT, ("/a", "killed by SIGKILL", "empty", "bye", "empty", 0, 0, 1.5),
     {"level": "access", "event": "disconnect",
      "message": "DISCONNECT /a killed by SIGKILL close=empty/bye client_close=empty in=0 out=0 1.500s",
      "path": "/a", "exit": "killed by SIGKILL", "close_code": 1005, "close_reason": "bye", "client_close": "empty",
      "bytes_in": 0, "bytes_out": 0, "duration": 1.5}),
    (ACCESS, DISCONNECT, ("/a", "not stopped", 1006, "client gone", "none", 6, 0, 0.25),
     {"level": "access", "event": "disconnect",
      "message": "DISCONNECT /a not stopped close=1006/client gone client_close=none in=6 out=0 0.250s",
      "path": "/a", "exit": "not stopped", "close_code": 1006, "close_reason": "client gone", "client_close": None,
      "bytes_in": 6, "bytes_out": 0, "duration": 0.25}),
    (ACCESS, REFUSED, (404, "-", "not found"),
     {"level": "access", "event": "refused", "message": "REFUSED 404 -: not found", "status": 404, "path": None,
      "reason": "not found"}),
    (ACCESS, HANDSHAKE_TIMEOUT, (), {"level": "access", "event": "timeout", "message": "handshake timeout"}),
    (ACCESS, DROPPED, ("no answer to pings for 2.0s",),
     {"level": "access", "event": "dropped", "message": "no answer to pings for 2.0s: dropping the client"}),
    (ACCESS, HTTP, ("GET", "/f", 200, 10, 0.5, ""),
     {"level": "access", "event": "http", "message": "HTTP GET /f 200 10 bytes 0.500s", "method": "GET",
      "path": "/f", "status": 200, "bytes_out": 10, "duration": 0.5, "close": False}),
    (ACCESS, HTTP, ("POST", "/f", "-", 0, 0.001, " close"),
     {"level": "access", "event": "http", "message": "HTTP POST /f - 0 bytes 0.001s close", "method": "POST",
      "path": "/f", "status": None, "bytes_out": 0, "duration": 0.001, "close": True}),
    (logging.ERROR, STDERR, ("a\x00\x1b \\xff \udcff",),
     {"level": "error", "event": "stderr", "message": "stderr: a\x00\x1b \\xff \\udcff"}),
    (TRACE, "anything %d", (5,), {"level": "trace", "event": None, "message": "anything 5"}),
    (logging.DEBUG, "100%", (), {"level": "debug", "event": None, "message": "100%"}),
])
def test_json_formatter_table(level, msg, args, expected):
    line = JsonFormatter().format(logged(JsonConnectionLog, level, msg, *args))
    assert line.isascii() and "\n" not in line
    assert json.loads(line) == {**COMMON, **expected}


@pytest.mark.parametrize("level, msg, args, expected", [
    (logging.CRITICAL, "cannot listen: %s", ("busy",), {"level": "critical", "event": None}),
    (ACCESS, REDIRECT, ("10.0.0.1", 5000, "/x", "https://h/x"),
     {"level": "access", "event": "redirect", "remote": "10.0.0.1:5000", "path": "/x", "location": "https://h/x"}),
    (ACCESS, TLS_FAILED, ("10.0.0.1", 5000, ValueError("bad record")),
     {"level": "access", "event": "tls", "remote": "10.0.0.1:5000"}),
    (logging.INFO, CONTROL, ("127.0.0.1", 5001, "POST", "/connections/9f3a01c21/close", 404),
     {"level": "info", "event": "control", "remote": "127.0.0.1:5001", "method": "POST",
      "path": "/connections/9f3a01c21/close", "status": 404}),
])
def test_json_formatter_lines_without_a_connection(level, msg, args, expected):
    record = logging.LogRecord("wsexec.http", level, "", 0, msg, args, None)
    record.created, record.msecs = CREATED, 20.0
    found = json.loads(JsonFormatter().format(record))
    assert found == {"time": COMMON["time"], "logger": "wsexec.http", "message": msg % args, **expected}


def test_json_formatter_puts_a_traceback_in_one_field():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logged(JsonConnectionLog, logging.ERROR, "internal error", exc_info=True)
    found = json.loads(JsonFormatter().format(record))
    assert found == dict(found, **COMMON, level="error", event=None, message="internal error")
    assert found["exception"].startswith("Traceback (most recent call last):\n")
    assert found["exception"].endswith("ValueError: boom")


def test_text_formatter_line_is_unchanged():
    record = logged(ConnectionLog, ACCESS, DISCONNECT, "/a", "exit status 0", 1000, "-", "1000", 8, 21, 0.004)
    assert Formatter().format(record) == (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(CREATED)) + ".020 ACCESS test.logformat "
        "#9f3a01c21 127.0.0.1:43196 pid=12311 DISCONNECT /a exit status 0 close=1000/- client_close=1000 in=8 out=21 0.004s"
    )
