"""Logging: websocketd's level names, one line per event, connection context on each."""

from __future__ import annotations

import logging
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


def setup(level: str) -> None:
    # Two lines per connection are on the hot path: skip what the format never
    # shows (the caller's file and line, thread and process names).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Formatter())
    root = logging.getLogger("wsexec")
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    root.propagate = False


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
