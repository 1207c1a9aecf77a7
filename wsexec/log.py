"""Logging: websocketd's level names, one line per event, connection context on each."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, MutableMapping, Optional, Tuple

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
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(second))
        return f"{self._prefix}.{int(record.msecs):03d}"


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


def setup(level: str, target: str = "stderr") -> None:
    """Install the one handler: on stderr, stdout, or appending to the file
    at target (raises OSError if it cannot be opened)."""
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
    handler.setFormatter(Formatter())
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

    def __init__(self, logger: logging.Logger, conn_id: int, remote: Tuple[str, int]) -> None:
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
