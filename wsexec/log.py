"""Logging: websocketd's level names, one line per event, connection context on each.

Two formats: text (the default) and json (--logformat json), one object per
line. The text path does no work for json: the connection's fields reach the
json formatter only through JsonConnectionLog, and an event's fields are
derived from its log call's arguments, by the json formatter alone (EVENTS).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Callable, Dict, MutableMapping, Optional, Tuple

TRACE = 12
ACCESS = 15
LEVELS = {
    "debug": logging.DEBUG,
    "trace": TRACE,
    "access": ACCESS,
    "info": logging.INFO,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "none": logging.CRITICAL + 10,
}
logging.addLevelName(TRACE, "TRACE")
logging.addLevelName(ACCESS, "ACCESS")


class Formatter(logging.Formatter):
    """ISO 8601 local time with milliseconds; the seconds part is formatted
    once per second, not once per line."""

    clock = staticmethod(time.localtime)

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self._second = -1
        self._prefix = ""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        record.message = record.getMessage()
        return f"{self.formatTime(record)} {record.levelname} {record.name} {record.message}"

    def formatTime(self, record: logging.LogRecord, datefmt: Optional[str] = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", self.clock(second))
        return f"{self._prefix}.{int(record.msecs):03d}"


# The events' log lines. Call sites log these very strings, so the json
# formatter finds an event, and derives its fields from the call's arguments
# (as the text line has them), by looking its format string up in EVENTS.
CONNECT = "CONNECT %s"
DISCONNECT = "DISCONNECT %s %s close=%s/%s client_close=%s in=%d out=%d %.3fs"
REFUSED = "REFUSED %d %s: %s"
HANDSHAKE_TIMEOUT = "handshake timeout"
DROPPED = "%s: dropping the client"
HTTP = "HTTP %s %s %s %d bytes %.3fs%s"
REDIRECT = "%s:%d REDIRECT %s -> %s"
STDERR = "stderr: %s"
FRONT_TIMEOUT = "%s:%d REFUSED: no PROXY header or TLS handshake within --handshakems"
FRONT_REFUSED = "%s:%d REFUSED: %s"
FRONT_NOT_TLS = "%s:%d REFUSED: plain HTTP on a TLS port"
TLS_FAILED = "%s:%d TLS handshake failed: %s"
CONTROL = "control %s:%d %s %s %d"


def seconds(value: float) -> float:
    return round(value, 6)


def disconnect_fields(path: str, exit: str, close: Any, reason: str, client_close: str,
                      bytes_in: int, bytes_out: int, duration: float) -> Dict[str, Any]:
    """From the text line's arguments: close is a code or 'empty' (given as
    1005, RFC 6455's code for none), reason '-' for none, client_close a code,
    'empty' or 'none'."""
    return {
        "path": path, "exit": exit, "close_code": 1005 if close == "empty" else close,
        "close_reason": "" if reason == "-" else reason,
        "client_close": None if client_close == "none" else client_close if client_close == "empty" else int(client_close),
        "bytes_in": bytes_in, "bytes_out": bytes_out, "duration": seconds(duration),
    }


def http_fields(method: str, path: str, status: Any, bytes_out: int, duration: float, close: str) -> Dict[str, Any]:
    return {"method": method, "path": path, "status": None if status == "-" else status, "bytes_out": bytes_out,
            "duration": seconds(duration), "close": bool(close)}


def remote_fields(host: str, port: int, *rest: Any) -> Dict[str, Any]:
    return {"remote": f"{host}:{port}"}


Fields = Optional[Callable[..., Dict[str, Any]]]
EVENTS: Dict[str, Tuple[str, Fields]] = {
    CONNECT: ("connect", lambda path: {"path": path}),
    DISCONNECT: ("disconnect", disconnect_fields),
    REFUSED: ("refused", lambda status, path, reason: {"status": status, "path": None if path == "-" else path,
                                                       "reason": reason}),
    HANDSHAKE_TIMEOUT: ("timeout", None),
    DROPPED: ("dropped", None),
    HTTP: ("http", http_fields),
    REDIRECT: ("redirect", lambda host, port, path, location: {"remote": f"{host}:{port}", "path": path,
                                                               "location": location}),
    STDERR: ("stderr", None),
    FRONT_TIMEOUT: ("refused", remote_fields),
    FRONT_REFUSED: ("refused", remote_fields),
    FRONT_NOT_TLS: ("refused", remote_fields),
    TLS_FAILED: ("tls", remote_fields),
    CONTROL: ("control", lambda host, port, method, path, status: {"remote": f"{host}:{port}", "method": method,
                                                                   "path": path, "status": status}),
}
CONNECTION = "wsexec_connection"  # the record attribute JsonConnectionLog sets: (id, remote, pid)


def clean(text: str) -> str:
    """Lone surrogates (undecodable bytes, as os.fsdecode keeps them) as
    \\udcXX text: a JSON parser may reject them even escaped."""
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")


class JsonFormatter(Formatter):
    """One JSON object per line, ASCII only (control characters and anything
    else escaped): time (RFC 3339 UTC, milliseconds), level, logger, event
    (EVENTS; null for other lines), message (the text format's, without the
    connection prefix), a connection's id, remote and pid, the event's
    fields, and a traceback as exception."""

    clock = staticmethod(time.gmtime)

    def __init__(self) -> None:
        super().__init__()
        import json  # --logformat json only

        self.dumps = json.dumps

    def format(self, record: logging.LogRecord) -> str:
        entry: Dict[str, Any] = {
            "time": self.formatTime(record) + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": None,
            "message": clean(record.getMessage()),
        }
        connection = getattr(record, CONNECTION, None)
        if connection is not None:
            conn_id, remote, pid = connection
            entry.update(id=conn_id, remote=remote, pid=int(pid) if pid.isdigit() else None)
        event = EVENTS.get(record.msg) if isinstance(record.msg, str) else None
        if event is not None:
            entry["event"], fields = event
            if fields is not None:
                entry.update(fields(*record.args))
        if record.exc_info:
            entry["exception"] = clean(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = clean(record.exc_text)
        if record.stack_info:
            entry["stack"] = clean(self.formatStack(record.stack_info))
        return self.dumps(entry)


FORMATS = ("text", "json")  # --logformat
STREAMS = ("stderr", "stdout")  # --log targets that are not file paths
FILE_MODE = 0o640  # a log file wsexec creates (less the umask)


def open_file(path: str) -> int:
    """A descriptor appending to the log file at path, created if missing;
    close-on-exec, and never one of 0-2 (so it cannot pose as stdout or
    stderr when wsexec was started with those closed). Raises OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    if fd <= 2:
        import fcntl

        low = fd
        try:
            fd = fcntl.fcntl(low, fcntl.F_DUPFD_CLOEXEC, 3)
        finally:
            os.close(low)
    return fd


class FileHandler(logging.Handler):
    """Appends each line to a file with one write(2), unbuffered, so nothing
    is lost when wsexec is killed; reopen() (on SIGHUP) starts writing to
    whatever file is at the path now, after logrotate has moved the old one."""

    terminator = "\n"

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.fd = open_file(path)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = memoryview((self.format(record) + self.terminator).encode("utf-8", "backslashreplace"))
            while data:
                data = data[os.write(self.fd, data):]
        except Exception:
            self.handleError(record)

    def reopen(self) -> None:
        """Switch to a new descriptor for the path; on OSError the old one stays."""
        fd = open_file(self.path)
        with self.lock:  # type: ignore[union-attr]
            old, self.fd = self.fd, fd
        os.close(old)

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
        super().close()


def setup(level: str, target: str = "stderr", fmt: str = "text") -> None:
    """Install the one handler: on stderr, stdout, or appending to the file
    at target (raises OSError if it cannot be opened), writing lines in fmt
    (FORMATS); connections made after it log in that format."""
    global _connection_log
    # Two lines per connection are on the hot path: skip what the format never
    # shows (the caller's file and line, thread and process names).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler: logging.Handler
    if target in STREAMS:
        handler = logging.StreamHandler(sys.stdout if target == "stdout" else sys.stderr)
    else:
        handler = FileHandler(target)
    handler.setFormatter(JsonFormatter() if fmt == "json" else Formatter())
    _connection_log = JsonConnectionLog if fmt == "json" else ConnectionLog
    root = logging.getLogger("wsexec")
    for old in root.handlers:
        old.close()  # a FileHandler's descriptor; a StreamHandler leaves its stream open
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    root.propagate = False


def reopen() -> None:
    """Reopen the log file (SIGHUP); nothing when the log goes to stderr or
    stdout. Raises OSError, and the old file stays in use."""
    for handler in logging.getLogger("wsexec").handlers:
        if isinstance(handler, FileHandler):
            handler.reopen()


class ConnectionLog(logging.LoggerAdapter):
    """Prefixes every line with the connection id, client address and handler pid."""

    def __init__(self, logger: logging.Logger, conn_id: str, remote: Tuple[str, int]) -> None:
        super().__init__(logger, {})
        self.conn_id = conn_id
        self.remote = f"{remote[0]}:{remote[1]}"
        self.pid = "-"

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> Tuple[Any, MutableMapping[str, Any]]:
        return f"#{self.conn_id} {self.remote} pid={self.pid} {msg}", kwargs

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        """The record Logger.log would make, without its layers (two lines per
        connection are on the hot path); anything with keywords takes the usual way."""
        logger = self.logger
        if kwargs or not isinstance(logger, logging.Logger):
            return super().log(level, msg, *args, **kwargs)
        if logger.isEnabledFor(level):
            text, _ = self.process(msg, kwargs)
            logger.handle(logger.makeRecord(logger.name, level, "(unknown file)", 0, text, args, None,
                                            "(unknown function)"))


class JsonConnectionLog(ConnectionLog):
    """For the json format: no prefix; the id, address and pid go to
    JsonFormatter as a record attribute. Takes LoggerAdapter's usual way."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> Tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(kwargs.get("extra") or {}), CONNECTION: (self.conn_id, self.remote, self.pid)}
        return msg, kwargs

    log = logging.LoggerAdapter.log


_connection_log = ConnectionLog  # setup() sets it


def for_connection(logger: logging.Logger, conn_id: str, remote: Tuple[str, int]) -> ConnectionLog:
    """A new connection's log, in the format setup() chose."""
    return _connection_log(logger, conn_id, remote)
