"""The control listener (--control): reach any connection by id.

Its own listener, never the public port: a unix socket (mode --control-mode)
or a TCP address, loopback unless --control-token is given (then every
request but /healthz and /readyz must carry `Authorization: Bearer TOKEN`).
HTTP/1.1 with keep-alive; answers and errors are JSON.

    GET    /connections[?path=PREFIX]   every live connection
    GET    /connections/ID              one
    POST   /connections/ID              the body to that client as one message (204)
    DELETE /connections/ID[?code=N&reason=TEXT]   close it (204)
    POST   /broadcast[?path=PREFIX]     the body to every matching client ({"sent": N})
    POST|GET|DELETE [/STAGE]/@connections/ID   the same, as AWS API Gateway's management API
    GET    /metrics                     Prometheus text exposition (wsexec/metrics.py)
    GET    /healthz, /readyz            liveness; readiness (503 while draining or --maxforks is full)
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import socket
import time
from dataclasses import dataclass
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple
from urllib.parse import parse_qsl, unquote

import trio

from .config import Config
from .http.exchange import Reader, wants_keep_alive
from .http.plain import linger
from .http.request import ClientGone, HttpError, Request, read_request
from .http.syntax import render_head
from .log import ACCESS, CONTROL
from .metrics import Metrics
from .net.streams import Socket, accept_forever
from .proc.children import Slots
from .registry import Registry
from .session import Session
from .stats import Stats
from .websocket import BINARY, TEXT, is_utf8

logger = logging.getLogger("wsexec.control")

ID = re.compile(r"[0-9A-Za-z]{1,64}")
STAGED = re.compile(r"/[^/@]+(/@connections/.*)", re.S)  # /STAGE/@connections/ID
SMALL_BODY = 64 * 1024  # most a request that carries no message may send
OPEN = ("/healthz", "/readyz")  # answered without the token: load balancers and probes


@dataclass(frozen=True)
class Route:
    """What a control request asks for: an action and the connection id, or
    an error status with the methods allowed (405)."""

    action: str
    conn_id: str = ""
    status: int = 200
    allow: str = ""


def route(method: str, path: str) -> Route:
    """Pure: the request line's method and decoded path -> what to do."""
    fixed = {"/healthz": "healthz", "/readyz": "readyz", "/metrics": "metrics", "/connections": "list"}
    if path in fixed:
        return Route(fixed[path]) if method in ("GET", "HEAD") else Route("error", status=405, allow="GET, HEAD")
    if path == "/broadcast":
        return Route("broadcast") if method == "POST" else Route("error", status=405, allow="POST")
    # AWS SDKs are given the API's URL with its stage (https://ID.execute-api.REGION.amazonaws.com/STAGE)
    staged = STAGED.fullmatch(path)
    if staged:
        path = staged.group(1)
    for prefix, kind in (("/connections/", ""), ("/@connections/", "aws-")):
        if path.startswith(prefix):
            conn_id = path[len(prefix):]
            if not ID.fullmatch(conn_id):
                # an id wsexec never gives out: AWS clients are told it is gone
                return Route("aws-gone", conn_id) if kind else Route("error", status=400)
            action = {"GET": "get", "HEAD": "get", "POST": "push", "DELETE": "close"}.get(method)
            if action is None:
                return Route("error", status=405, allow="GET, HEAD, POST, DELETE")
            return Route(kind + action, conn_id)
    return Route("error", status=404)


def close_request(query: str) -> Tuple[int, str]:
    """?code=N&reason=TEXT for a close by id; ValueError says what is wrong.
    RFC 6455 section 7.4: 1000, or 3000-4999 (registered and private use);
    the reason fits a control frame (123 bytes of UTF-8)."""
    params = dict(parse_qsl(query, keep_blank_values=True))
    code_text = params.get("code", "1000")
    if not code_text.isdigit() or not (int(code_text) == 1000 or 3000 <= int(code_text) <= 4999):
        raise ValueError("code must be 1000 or 3000-4999")
    reason = params.get("reason", "")
    if len(reason.encode("utf-8", "surrogatepass")) > 123:
        raise ValueError("reason must be at most 123 bytes of UTF-8")
    return int(code_text), reason


def message_of(body: bytes, content_type: Optional[str]) -> Optional[Tuple[int, bytes]]:
    """A pushed body as a message: text for text/*, which must then be UTF-8
    (None if it is not), binary for anything else."""
    if (content_type or "").strip().lower().startswith("text/"):
        return (TEXT, body) if is_utf8(body) else None
    return (BINARY, body)


def rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"


def describe(session: Session) -> Dict[str, Any]:
    ws = session.ws
    return {
        "id": session.id,
        "remote_addr": session.remote[0],
        "remote_port": session.remote[1],
        "path": session.target,
        "protocol": session.protocol,
        "pid": session.pid,
        "started": rfc3339(session.started_at),
        "last_active": rfc3339(session.last_active),
        "messages_in": session.messages_in,
        "messages_out": session.messages_out,
        "bytes_in": ws.bytes_in,
        "bytes_out": ws.bytes_out,
    }


def describe_aws(session: Session) -> Dict[str, Any]:
    """GetConnection's answer as AWS sends it on the wire."""
    return {
        "connectedAt": rfc3339(session.started_at),
        "lastActiveAt": rfc3339(session.last_active),
        "identity": {"sourceIp": session.remote[0], "userAgent": session.user_agent},
    }


class Answer:
    """One control answer: status, JSON (or text) body, extra headers."""

    def __init__(self, status: int, body: Any = None, headers: Tuple[Tuple[str, str], ...] = (),
                 content_type: str = "application/json") -> None:
        self.status = status
        self.headers = headers
        self.content_type = content_type
        if body is None:
            self.body = b""
        elif isinstance(body, bytes):
            self.body = body
        else:
            self.body = json.dumps(body, separators=(",", ":")).encode()


def error(status: int, message: str, headers: Tuple[Tuple[str, str], ...] = ()) -> Answer:
    return Answer(status, {"error": message}, headers)


def gone(conn_id: str) -> Answer:
    """An id that is not open, as AWS answers it: botocore raises GoneException."""
    return Answer(410, {"message": f"connection {conn_id} is gone"}, (("x-amzn-ErrorType", "GoneException"),))


# The error names AWS SDKs raise, by status (API Gateway management API).
AWS_ERRORS = {400: "BadRequestException", 401: "ForbiddenException", 403: "ForbiddenException",
              404: "GoneException", 410: "GoneException", 411: "BadRequestException",
              413: "PayloadTooLargeException", 503: "LimitExceededException"}


def as_aws(answer: Answer) -> Answer:
    """An error on an AWS route as AWS sends it: {"message"} and
    x-amzn-ErrorType, which botocore turns into the named exception."""
    if any(name.lower() == "x-amzn-errortype" for name, _ in answer.headers):
        return answer
    message = json.loads(answer.body).get("error", "") if answer.body else ""
    kind = AWS_ERRORS.get(answer.status, "BadRequestException")
    return Answer(answer.status, {"message": message}, answer.headers + (("x-amzn-ErrorType", kind),))


class Control:
    def __init__(self, config: Config, registry: Registry, stats: Stats, slots: Slots) -> None:
        self.config = config
        self.registry = registry
        self.stats = stats
        self.slots = slots
        self.metrics = Metrics(registry, stats)
        self.token = f"Bearer {config.control_token}".encode() if config.control_token else None
        self.background: Optional[trio.Nursery] = None  # broadcast deliveries
        self.outboxes: Dict[str, "Outbox"] = {}  # connection id -> broadcasts waiting for it

    async def serve(self, listeners: List[socket.socket], *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
        try:
            async with trio.open_nursery() as nursery:
                self.background = nursery
                nursery.start_soon(self.tick)
                for listener in listeners:
                    nursery.start_soon(accept_forever, listener, nursery, self.handle)
                task_status.started()
        finally:
            for listener in listeners:
                listener.close()

    async def tick(self) -> None:
        """The sessions' coarse clock for last-activity stamps."""
        clock = self.registry.clock
        while True:
            clock.now = time.time()
            await trio.sleep(1)

    async def handle(self, stream: Socket) -> None:
        """Requests on one control connection, kept alive; any unexpected
        error ends that connection with a log line, never the listener."""
        try:
            name = stream.sock.getpeername()
            remote = (str(name[0]), int(name[1])) if isinstance(name, tuple) else ("unix", 0)
            local = ("control", 0)
            reader = Reader(stream, b"")
            while True:
                with trio.move_on_after(self.config.handshakems / 1000) as idle:
                    request = await read_request(reader, self.config.maxheader, remote, local)
                if idle.cancelled_caught:
                    return  # an idle connection just ends
                # the body and any pipelined request come after the head
                reader = Reader(stream, request.trailing + reader.take())
                if await self.respond(stream, reader, request):
                    return
        except (ClientGone, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except HttpError as e:
            await self.send(stream, error(e.status, e.message), keep=False)
        except Exception:
            logger.exception("control: internal error")
        finally:
            await stream.aclose()

    async def respond(self, stream: Socket, reader: Reader, request: Request) -> bool:
        """Answer one request; True if the connection is to close."""
        keep = wants_keep_alive(request)
        path = unquote(request.path)
        found = route(request.method, path)
        length_text = request.header("content-length") or "0"
        length = int(length_text) if length_text.isdigit() else -1
        limit = self.config.maxmessage if found.action in ("push", "aws-push", "broadcast") else SMALL_BODY
        if request.header("transfer-encoding") is not None or length < 0:
            answer, keep = error(411, "send the body with Content-Length"), False
        elif length > limit:
            answer, keep = error(413, f"body larger than {limit} bytes"), False
        elif self.token is not None and path not in OPEN and not self.authorized(request):
            answer = error(401, "a bearer token is required", (("WWW-Authenticate", 'Bearer realm="wsexec"'),))
            keep = keep and await self.skip(reader, length)
        else:
            body = await self.read_body(reader, length)
            answer = await self.act(found, request, body)
        if found.action.startswith("aws-") and answer.status >= 400:
            answer = as_aws(answer)
        logger.log(ACCESS if answer.status < 400 else logging.INFO, CONTROL,
                   request.remote[0], request.remote[1], request.method, request.target, answer.status)
        await self.send(stream, answer, keep, head_only=request.method == "HEAD")
        if not keep:
            await linger(stream, reader)
        return not keep

    def authorized(self, request: Request) -> bool:
        given = (request.header("authorization") or "").strip().encode("latin-1", "replace")
        assert self.token is not None
        return hmac.compare_digest(given, self.token)

    async def read_body(self, reader: Reader, length: int) -> bytes:
        parts, left = [], length
        while left > 0:
            data = await reader.receive_some(min(left, 65536))
            if not data:
                raise ClientGone()
            parts.append(data)
            left -= len(data)
        return b"".join(parts)

    async def skip(self, reader: Reader, length: int) -> bool:
        """Drop a refused request's body; True if the connection can go on."""
        if length > SMALL_BODY:
            return False
        await self.read_body(reader, length)
        return True

    async def send(self, stream: Socket, answer: Answer, keep: bool, head_only: bool = False) -> None:
        headers = (("Content-Type", answer.content_type), ("Content-Length", str(len(answer.body)))) + answer.headers
        if answer.status == 204:
            headers = answer.headers
        head = render_head(answer.status, headers, close=not keep)
        await stream.send_all(head if head_only or answer.status == 204 else head + answer.body)

    # --- the actions -------------------------------------------------------------------

    async def act(self, found: Route, request: Request, body: bytes) -> Answer:
        action = found.action
        if action == "error":
            messages = {400: "malformed connection id (letters and digits)", 404: "no such endpoint",
                        405: "method not allowed"}
            headers = (("Allow", found.allow),) if found.allow else ()
            return error(found.status, messages[found.status], headers)
        if action == "healthz":
            return Answer(200, {"status": "ok"})
        if action == "readyz":
            return self.readiness()
        if action == "metrics":
            text, content_type = self.metrics.exposition()
            return Answer(200, text, content_type=content_type)
        if action == "list":
            prefix = dict(parse_qsl(request.query)).get("path", "")
            return Answer(200, [describe(s) for s in self.registry if s.target.startswith(prefix)])
        if action == "broadcast":
            return self.broadcast(request, body)
        if action == "aws-gone":
            return gone(found.conn_id)
        session = self.registry.get(found.conn_id)
        aws = action.startswith("aws-")
        if session is None:
            return gone(found.conn_id) if aws else error(404, f"no open connection {found.conn_id}")
        if action in ("get", "aws-get"):
            return Answer(200, describe_aws(session) if aws else describe(session))
        if action in ("close", "aws-close"):
            try:
                code, reason = (1000, "") if aws else close_request(request.query)
            except ValueError as e:
                return error(400, str(e))
            session.close_by_id(code, reason)
            return Answer(204)
        # push: AWS clients send no type, so their UTF-8 data goes out as text
        content_type = request.header("content-type")
        if aws and not (content_type or "").lower().startswith("text/") and is_utf8(body):
            content_type = "text/plain"
        message = message_of(body, content_type)
        if message is None:
            return error(400, "a text/* body must be UTF-8")
        with trio.move_on_after(self.config.pushtimeoutms / 1000):
            if not await session.push(message):
                return gone(found.conn_id) if aws else error(404, f"no open connection {found.conn_id}")
            return Answer(200 if aws else 204)
        return error(503, "the client is not reading; try again later", (("Retry-After", "1"),))

    def readiness(self) -> Answer:
        if self.registry.stopping.is_set() or self.registry.draining:
            return Answer(503, {"ready": False, "why": "draining"})
        if self.slots.full:
            return Answer(503, {"ready": False, "why": "--maxforks is full"})
        return Answer(200, {"ready": True})

    def broadcast(self, request: Request, body: bytes) -> Answer:
        """Queued for every matching client at once: a slow client holds back
        neither the others nor the caller. Each client's broadcasts go out in
        order; a client whose queue already holds --maxmessage bytes is
        skipped, so its memory stays bounded. `sent` counts the clients it
        was queued for."""
        message = message_of(body, request.header("content-type"))
        if message is None:
            return error(400, "a text/* body must be UTF-8")
        prefix = dict(parse_qsl(request.query)).get("path", "")
        sent = 0
        for session in self.registry:
            if session.target.startswith(prefix) and self.enqueue(session, message):
                sent += 1
        return Answer(200, {"sent": sent})

    def enqueue(self, session: Session, message: Tuple[int, bytes]) -> bool:
        outbox = self.outboxes.get(session.id)
        if outbox is None:
            outbox = self.outboxes[session.id] = Outbox()
            assert self.background is not None
            self.background.start_soon(self.deliver, session, outbox)
        elif outbox.size + len(message[1]) > self.config.maxmessage:
            return False
        outbox.messages.append(message)
        outbox.size += len(message[1])
        return True

    async def deliver(self, session: Session, outbox: "Outbox") -> None:
        """One client's queued broadcasts, in order; gone when the queue is empty."""
        try:
            while outbox.messages:
                message = outbox.messages.popleft()
                outbox.size -= len(message[1])
                with trio.move_on_after(self.config.pushtimeoutms / 1000):
                    if not await session.push(message):
                        return  # the client is gone
        finally:
            del self.outboxes[session.id]


class Outbox:
    __slots__ = ("messages", "size")

    def __init__(self) -> None:
        self.messages: Deque[Tuple[int, bytes]] = deque()
        self.size = 0  # bytes waiting
