"""Whether an upgrade request is let in: every reason to refuse it, in order.

Pure: the request and the configuration in, the handler's route or a
refusal out. The file-system lookup of --dir is passed in as `locate`, so
the order is a table test (tests/test_admission.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

from .config import Config
from .http.origin import origin_allowed
from .http.request import Request
from .http.routing import Route
from .websocket import handshake_problem, is_upgrade

Header = Tuple[str, str]


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str
    headers: Tuple[Header, ...] = ()


def admit(request: Request, config: Config, locate: Callable[[str], Optional[Route]], full: bool) -> Union[Route, Refusal]:
    """In order: not an upgrade (404), a broken handshake (RFC 6455 section
    4.2.1: 405, 400, or 426 with the version wsexec speaks), a refused origin
    (403), a NUL in the target (400), nothing to run (404), --maxforks full
    (429). `full` is a first look: the far end claims its slot atomically
    when it is connected (wsexec/backends/process.py)."""
    if not is_upgrade(request.header):
        return Refusal(404, "not found: this address serves WebSocket connections only")
    problem = handshake_problem(request.method, request.http_version, request.header)
    if problem:
        extra = (("Sec-WebSocket-Version", "13"),) if problem[0] == 426 else ()
        return Refusal(problem[0], problem[1], extra)
    origin = request.header("origin")
    if not origin_allowed(origin, request.forwarded_host or request.header("host"), config.origins,
                          config.sameorigin, request.tls):
        return Refusal(403, f"origin not allowed: {origin}")
    if "\0" in request.target or "%00" in request.path:
        return Refusal(400, "NUL in the request target")
    route = locate(request.path) if config.has_handler else None
    if route is None:
        return Refusal(404, "not found")
    if full:
        return Refusal(429, "too many connections, try again later", (("Retry-After", "1"),))
    return route
