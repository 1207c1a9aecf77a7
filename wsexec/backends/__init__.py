"""The far end of a WebSocket session: what the client's messages go to and
where the messages for the client come from.

The session engine (wsexec/session.py) drives a FarEnd and knows nothing
else about it. Today's far end is one process per connection
(wsexec/backends/process.py); a shared process, an HTTP API or pushes from
a control API implement the same four calls.

A far end's life, as the connection and the session drive it:

    backend.connect(info)   before the 101; may raise Refused (an HTTP status)
    far.start(on_finish)    after the 101; may raise CannotStart (close 1011)
    far.deliver(messages)   client -> far end, as often as the client sends;
                            a call that blocks is the backpressure
    far.receive()           far end -> client; None once its output ended
                            (messages, or Frames already encoded for the wire)
    far.close(ending)       always called, once the session has ended (also
                            when start failed or never ran); stops the far end
                            within its grace and says how it went (Outcome,
                            also kept as far.outcome); idempotent; when
                            cancelled it still releases what it holds
                            (shielded) and sets far.outcome before it raises
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, NamedTuple, Optional, Protocol, Sequence, Tuple, Union

from ..http.request import HttpError, Request

if TYPE_CHECKING:
    from ..http.routing import Route
    from ..log import ConnectionLog

Message = Tuple[int, bytes]  # (TEXT or BINARY, payload), as wsexec/websocket.py has them


class Frames(NamedTuple):
    """Messages already encoded as a server's frames (websocket.encode_frame):
    a shared process encodes each line once for all of its clients."""

    data: bytes
    count: int  # how many messages

# Why a session ended: set once, by whichever side finished first.
CLIENT_CLOSED = "client-closed"  # the client sent a close frame (its code was echoed)
CLIENT_GONE = "client-gone"  # the connection dropped, or the client stopped answering pings
PROTOCOL_ERROR = "protocol-error"  # the client broke RFC 6455; wsexec closed with the matching code
FAR_END_DONE = "far-end-done"  # the far end finished (a process exited, its output ended)
SERVER_STOPPING = "server-stopping"  # wsexec is shutting down
API_CLOSED = "api-closed"  # closed by id through the control API, with its code and reason


@dataclass(frozen=True)
class Ending:
    kind: str
    code: int = 1000  # the client's close code, the one wsexec sent for a protocol error, or the API's
    reason: str = ""


@dataclass(frozen=True)
class Outcome:
    """How the far end went, for the close frame and the DISCONNECT line."""

    code: int  # the close code it asks for when it finished first (RFC 6455 section 7.4.1)
    reason: str
    status: str  # "exit status 0", "killed by SIGKILL", "not started"...


class Refused(HttpError):
    """connect() turns the client away before the upgrade with an HTTP status."""


class CannotStart(Exception):
    """start() failed after the 101; the session closes with 1011 and this reason."""


class SessionInfo(NamedTuple):
    """What a backend learns of a new session (a tuple: one per connection)."""

    id: str  # the connection id (WSEXEC_CONNECTION_ID)
    route: Route  # the program a process backend runs
    env: Dict[str, str]  # the CGI environment
    log: ConnectionLog
    client_present: Callable[[], bool]  # asked while a delivery is blocked: has the client left?
    request: Optional[Request] = None  # the upgrade request (an HTTP backend passes its headers on)


class FarEnd(Protocol):
    label: str  # for the log's pid field
    outcome: Optional[Outcome]  # set once close() has run, even if it was cancelled
    # Fields connect() adds to the 101 (an HTTP API's Set-Cookie and
    # Sec-WebSocket-Protocol); () for most far ends. Read before start().
    upgrade_headers: Tuple[Tuple[str, str], ...]

    @property
    def finished(self) -> bool:
        """It ended on its own (a process exited)."""

    async def start(self, on_finish: Callable[[], None]) -> None:
        """Begin; on_finish() is called when the far end ends on its own."""

    async def deliver(self, messages: Sequence[Message]) -> bool:
        """Hand client messages over; False once the far end takes no more
        (the session then drops further client messages)."""

    async def receive(self) -> Optional[Union[Sequence[Message], Frames]]:
        """The next messages for the client; None once its output ended."""

    async def close(self, ending: Ending) -> Outcome:
        """Stop, within the far end's grace, and say how it went."""


class Backend(Protocol):
    async def connect(self, info: SessionInfo) -> FarEnd:
        """A far end for a new session, before the 101; may raise Refused."""


def close_frame(ending: Ending, outcome: Optional[Outcome]) -> Tuple[int, str]:
    """The close code and reason a session ends with (for a client that
    closed or vanished: what was echoed, or 1006 for the log only).

    RFC 6455 section 7.4.1: 1000 normal closure, 1001 going away (server
    shutting down), 1011 an unexpected condition (the far end's failure,
    with its reason), 1009 a message too big (an over-long output line).
    """
    if ending.kind in (CLIENT_CLOSED, PROTOCOL_ERROR, API_CLOSED):
        return ending.code, ending.reason
    if ending.kind == CLIENT_GONE:
        return 1006, "client gone"
    if ending.kind == SERVER_STOPPING or outcome is None:
        return 1001, "server shutting down"
    return outcome.code, outcome.reason
