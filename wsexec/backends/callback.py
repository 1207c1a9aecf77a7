"""--callback URL: each connection's events as HTTP requests to an API
(ws2api's model, AWS API Gateway's $connect / $default / $disconnect), so a
program behind an ordinary HTTP server (even a CGI script) serves WebSockets.

    connect     GET URL + the client's path and query, before the 101, with the
                client's headers (hop-by-hop and Sec-WebSocket-* excepted),
                X-Forwarded-For/-Proto/-Host and Connection-Id. 2xx accepts:
                its Set-Cookie and Sec-WebSocket-Protocol go into the 101. Any
                other status is the client's refusal, with its body; the API
                unreachable -> 502, no answer in time -> 504.
    message     POST to the same URL, one at a time per connection and in
                order; a 2xx answer's body goes back to the client (text or
                binary by its Content-Type). The wait is the backpressure.
                A failed POST or another status closes the connection 1011
                ("API answered 500"); a body over --maxmessage closes it 1009.
    disconnect  DELETE with WebSocket-Close-Code and WebSocket-Close-Reason,
                whoever closed (also on shutdown, within --gracems).

Every request carries Connection-Id (the control API's id, so the API can
push and close through it) and, with --control, Wsexec-Control (that API's
address). One pool (wsexec/http/client.py) serves every connection: HTTP/1.1
keep-alive, at most --callback-concurrency connections to the API and as many
requests in flight; each request (its wait for a turn included) has
--callbacktimeoutms.

An idle connection costs one small object (slots): no task, no HTTP object.
"""

from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import h11
import trio

from .. import __version__
from ..config import Config
from ..http.client import CutShort, Pool, TooBig, Unreachable
from ..http.syntax import header_tokens
from ..websocket import BINARY, INTERNAL_ERROR, NORMAL, TEXT, TOO_BIG, is_utf8
from . import (
    API_CLOSED,
    CLIENT_CLOSED,
    CLIENT_GONE,
    PROTOCOL_ERROR,
    Ending,
    Message,
    Outcome,
    Refused,
    SessionInfo,
)

Header = Tuple[str, str]

CONTROL_HEADER = "Wsexec-Control"  # the control API's address, with --control (WSEXEC_CONTROL for handlers)

# RFC 9110 section 7.6.1: hop-by-hop fields are not forwarded; nor what
# describes the client's own message (a GET has no body) or what wsexec sets.
HOP_BY_HOP = frozenset((
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length", "expect",
))
SET_BY_WSEXEC = frozenset((
    "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "connection-id",
    CONTROL_HEADER.lower(), "websocket-close-code", "websocket-close-reason",
))
ACCEPT_FIELDS = ("set-cookie",)  # of a 2xx connect answer, into the 101 (and Sec-WebSocket-Protocol)
REFUSAL_FIELDS = ("www-authenticate", "location", "retry-after", "set-cookie")  # of any other status, to the client
REFUSAL_BODY = 8 * 1024  # the most of a refusal's body passed on (and of a 2xx connect body read, then dropped)
TEXT_TYPES = ("application/json", "application/javascript", "application/xml", "application/x-www-form-urlencoded")


def api_target(base: str, target: str) -> str:
    """The request target at the API for a client's target: the --callback
    URL's path (base) + the client's path beyond '/' + its query (after the
    base's own query, if it has one).

    >>> api_target("/ws", "/room/1?x=2")
    '/ws/room/1?x=2'
    """
    path, _, query = target.partition("?")
    base, _, base_query = base.partition("?")
    if path not in ("", "/"):
        base = base.rstrip("/") + path
    query = "&".join(q for q in (base_query, query) if q)
    return f"{base}?{query}" if query else base


def forwarded_headers(headers: Iterable[Header], remote: str, tls: bool, host: Optional[str]) -> List[Header]:
    """The connect GET's headers: the client's, less hop-by-hop ones (and
    those its Connection header names), Sec-WebSocket-* and those wsexec
    sets, then X-Forwarded-For/-Proto/-Host for the real client."""
    headers = list(headers)
    named = {t for n, v in headers if n.lower() == "connection" for t in header_tokens(v)}
    kept = [(n, v) for n, v in headers
            if (key := n.lower()) not in HOP_BY_HOP and key not in SET_BY_WSEXEC and key not in named
            and not key.startswith("sec-websocket-")]
    kept += [("X-Forwarded-For", remote), ("X-Forwarded-Proto", "https" if tls else "http")]
    if host:
        kept.append(("X-Forwarded-Host", host))
    return kept


def accept_headers(answer: Iterable[Header], offered: Optional[str]) -> Tuple[Optional[str], Tuple[Header, ...]]:
    """What a 2xx connect answer puts into the 101: its Set-Cookie fields, and
    its Sec-WebSocket-Protocol if the client offered that one (RFC 6455
    section 4.1: a client fails a connection whose protocol it did not offer)."""
    protocol = None
    headers = []
    offers = [t for t in header_tokens(offered) if t]
    for name, value in answer:
        key = name.lower()
        if key in ACCEPT_FIELDS:
            headers.append((name, value))
        elif key == "sec-websocket-protocol" and value.strip().lower() in offers:
            protocol = value.strip()
    if protocol is not None:
        headers.append(("Sec-WebSocket-Protocol", protocol))
    return protocol, tuple(headers)


def refusal(status: int, answer: Iterable[Header], body: bytes) -> Refused:
    """A non-2xx connect answer as the client's refusal: its status, its body
    (as text) and the fields that tell the client what to do next."""
    headers = tuple((n, v) for n, v in answer if n.lower() in REFUSAL_FIELDS)
    text = body.decode("utf-8", "replace").strip() or f"refused by the API ({status})"
    return Refused(status, text, headers)


def reply_message(content_type: Optional[str], body: bytes) -> Message:
    """A reply body as a message: text for a textual (or absent) Content-Type
    whose body is UTF-8, else binary (RFC 6455 section 8.1: no invalid text
    frame is sent; as for handler lines, no byte is lost)."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    textual = (not mime or mime.startswith("text/") or mime in TEXT_TYPES or mime.endswith("+json")
               or mime.endswith("+xml"))
    return (TEXT if textual and is_utf8(body) else BINARY, body)


def header_text(text: str) -> str:
    """A client's text (a close reason) as a field value: its UTF-8 bytes,
    control characters as spaces, so it cannot end the field (RFC 9110
    section 5.5: no CR, LF or NUL)."""
    return "".join(" " if c < " " or c == "\x7f" else c for c in text).encode("utf-8").decode("latin-1")


def message_type(kind: int) -> str:
    return "text/plain; charset=utf-8" if kind == TEXT else "application/octet-stream"


class Failed(Exception):
    """A request that went wrong: the close code and reason it ends the connection with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class CallbackBackend:
    """One pool of connections to the API for every connection."""

    def __init__(self, config: Config, control_url: str = "") -> None:
        assert config.callback is not None
        self.config = config
        parts = urlsplit(config.callback)
        self.base = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")  # targets start from it
        self.timeout = config.callbacktimeoutms / 1000
        self.grace = config.gracems / 1000
        self.common: Tuple[Header, ...] = ((CONTROL_HEADER, control_url),) if control_url else ()
        self.own = (("User-Agent", f"wsexec/{__version__}"),) + self.common  # the connect GET has the client's
        self.pool = Pool(config.callback, config.callback_concurrency)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
        """Holds the pool for the server's life; closes it at the end."""
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self.pool.close()

    async def connect(self, info: SessionInfo) -> "CallbackFarEnd":
        request = info.request
        assert request is not None
        target = api_target(self.base, request.target)
        headers = forwarded_headers(request.headers, request.remote[0], request.tls,
                                    request.forwarded_host or request.header("host"))
        headers += [("Connection-Id", info.id), *self.common]
        try:
            with trio.fail_after(self.timeout):
                async with self.pool.request("GET", target, headers) as answer:
                    status = answer.status
                    try:
                        body = await answer.read(REFUSAL_BODY)
                    except TooBig:
                        body = b""  # a 2xx body is not used; a refusal gets its status alone
        except trio.TooSlowError:
            info.log.error("API did not answer the connect GET in %.3fs: %s", self.timeout, target)
            raise Refused(504, "the API did not answer in time") from None
        except h11.LocalProtocolError as e:  # a client header that cannot be sent on
            info.log.error("connect GET not sendable: %s", e)
            raise Refused(400, "request headers that cannot be passed on to the API") from None
        except Unreachable as e:
            info.log.error("API unreachable for the connect GET: %s", e)
            raise Refused(502, "the API is unreachable") from None
        except CutShort as e:
            info.log.error("API answer to the connect GET cut short: %s", e)
            raise Refused(502, "the API's answer was cut short") from None
        if not 200 <= status < 300:
            raise refusal(status, answer.headers, body)
        _, upgrade = accept_headers(answer.headers, request.header("sec-websocket-protocol"))
        return CallbackFarEnd(self, info, self.base if target == self.base else target, upgrade)  # most share one string

    async def post(self, far: "CallbackFarEnd", kind: int, payload: bytes) -> Optional[Message]:
        """One client message to the API; its reply, if any. Raises Failed."""
        headers = (("Connection-Id", far.id), ("Content-Type", message_type(kind)), *self.own)
        try:
            with trio.fail_after(self.timeout):
                async with self.pool.request("POST", far.target, headers, payload) as answer:
                    if not 200 <= answer.status < 300:
                        raise Failed(INTERNAL_ERROR, f"API answered {answer.status}")
                    body = await answer.read(self.config.maxmessage)
        except trio.TooSlowError:
            raise Failed(INTERNAL_ERROR, "API did not answer in time") from None
        except TooBig:
            raise Failed(TOO_BIG, f"API answer over {self.config.maxmessage} bytes") from None
        except Unreachable as e:
            far.log.debug("POST %s: %s", far.target, e)
            raise Failed(INTERNAL_ERROR, "API unreachable") from None
        except CutShort as e:
            far.log.debug("POST %s: %s", far.target, e)
            raise Failed(INTERNAL_ERROR, "API answer cut short") from None
        return reply_message(answer.header("content-type"), body) if body else None

    async def delete(self, far: "CallbackFarEnd", code: int, reason: str, limit: float) -> str:
        """The disconnect; its status for the DISCONNECT line (never raises)."""
        headers = (("Connection-Id", far.id), ("WebSocket-Close-Code", str(code)),
                   ("WebSocket-Close-Reason", header_text(reason)), *self.own)
        try:
            with trio.fail_after(limit):
                async with self.pool.request("DELETE", far.target, headers) as answer:
                    try:
                        await answer.read(REFUSAL_BODY)  # read, so the connection is kept alive
                    except TooBig:
                        pass
                    return f"http {answer.status}"
        except trio.TooSlowError:
            far.log.debug("API did not answer the DELETE in %.3fs", limit)  # the DISCONNECT line says so
            return "DELETE not answered in time"
        except (Unreachable, CutShort, h11.LocalProtocolError) as e:
            far.log.debug("DELETE failed: %s", e)  # the DISCONNECT line says so
            return "DELETE failed"


class CallbackFarEnd:
    """One connection's side of the API. The client's messages are posted by
    the session's input task (deliver); a reply waits in `reply` until the
    output task (receive) takes it, and the next POST waits for that, so a
    client that does not read holds its own posts back. The one task that
    waits (reader or poster, never both) is parked in `waiter`."""

    __slots__ = ("backend", "id", "target", "log", "upgrade_headers", "reply", "waiter", "on_finish", "failure",
                 "ended", "outcome")
    label = "-"  # no process: the log's pid field and the control API's pid (null)

    def __init__(self, backend: CallbackBackend, info: SessionInfo, target: str, upgrade: Tuple[Header, ...]) -> None:
        self.backend = backend
        self.id = info.id
        self.target = target
        self.log = info.log
        self.upgrade_headers = upgrade  # for the 101 only: dropped once the session starts
        self.reply: Optional[Message] = None
        self.waiter: Optional[trio.lowlevel.Task] = None
        self.on_finish: Optional[Callable[[], None]] = None
        self.failure: Optional[Failed] = None
        self.ended = False  # no more replies: receive() says None once `reply` is taken
        self.outcome: Optional[Outcome] = None

    @property
    def finished(self) -> bool:
        return self.failure is not None

    async def start(self, on_finish: Callable[[], None]) -> None:
        self.on_finish = on_finish
        self.upgrade_headers = ()

    def _wake(self) -> None:
        task, self.waiter = self.waiter, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    def _abort(self, raise_cancel: object) -> trio.lowlevel.Abort:
        self.waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def _park(self) -> None:
        self.waiter = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    async def deliver(self, messages: Sequence[Message]) -> bool:
        for kind, payload in messages:
            if self.failure is not None:
                return False
            try:
                reply = await self.backend.post(self, kind, payload)
            except Failed as e:
                self.log.error("%s to a message; closing %d", e.reason, e.code)
                self.failure = e
                self.ended = True
                self._wake()
                if self.on_finish is not None:
                    self.on_finish()
                return False
            if reply is not None:
                self.reply = reply
                self._wake()
                while self.reply is not None and not self.ended:
                    await self._park()  # until the output task has taken it
        return True

    async def receive(self) -> Optional[List[Message]]:
        while self.reply is None:
            if self.ended:
                return None
            await self._park()
        reply, self.reply = self.reply, None
        self._wake()
        return [reply]

    async def close(self, ending: Ending) -> Outcome:
        """The DELETE, with the code and reason the client's connection ends
        with. While the client waits for its close frame (the API failed, the
        server is stopping) it is bounded by --gracems as well."""
        if self.outcome is not None:
            return self.outcome
        self.ended = True
        self._wake()
        backend = self.backend
        failure = self.failure
        if failure is not None:
            code, reason = failure.code, failure.reason
        elif ending.kind in (CLIENT_CLOSED, PROTOCOL_ERROR, API_CLOSED, CLIENT_GONE):
            code, reason = ending.code, ending.reason
        else:  # the server is stopping
            code, reason = 1001, "server shutting down"
        waiting = failure is not None or ending.kind not in (CLIENT_CLOSED, PROTOCOL_ERROR, API_CLOSED, CLIENT_GONE)
        limit = min(backend.timeout, backend.grace) if waiting else backend.timeout
        status = "DELETE not sent"
        try:
            status = await backend.delete(self, code, reason, limit)
        finally:
            if failure is not None:
                self.outcome = Outcome(failure.code, failure.reason, f"{failure.reason}; {status}")
            else:
                self.outcome = Outcome(NORMAL, "", status)
        return self.outcome
