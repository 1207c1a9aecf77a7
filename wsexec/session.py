"""One WebSocket session over a far end (wsexec/backends/): the pumps, the
first side to finish, keepalive pings, the close, and the session's log lines.

The far end is started inside the session's nursery and closed in its
`finally`, so it cannot outlive the session. Whichever side finishes first
(the client, the far end's output, the far end itself, a server shutdown)
wakes the session, which then closes the other side:

    client first      its close was echoed (or it vanished); released at
                      once, then the far end is closed
    closed by id      (the control API, or a session limit: --idlems,
                      --lifetimems) the client gets that close frame and
                      is released, then the far end is closed, as when a
                      client leaves
    shutdown          the far end is closed, then the client gets 1001
    far end first     its remaining output is delivered (within --gracems),
                      it is closed, and the client gets the code its
                      outcome gives (backends.close_frame)
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Tuple

import trio

from .backends import (
    API_CLOSED,
    CLIENT_CLOSED,
    CLIENT_GONE,
    FAR_END_DONE,
    PROTOCOL_ERROR,
    SERVER_STOPPING,
    CannotStart,
    Ending,
    FarEnd,
    Frames,
    Message,
    Outcome,
    close_frame,
)
from .config import Config
from .log import ACCESS, CONNECT, DISCONNECT, DROPPED, ConnectionLog
from .net.streams import Stream
from .stats import Stats
from .websocket import INTERNAL_ERROR, NO_STATUS, PART, WebSocket


def client_ending(ws: WebSocket) -> Ending:
    """How a client finished, from what its WebSocket saw."""
    if ws.close_received:
        return Ending(CLIENT_CLOSED, *ws.close_received)
    if ws.close_sent:  # wsexec closed first: the client broke the protocol
        return Ending(PROTOCOL_ERROR, *ws.close_sent)
    return Ending(CLIENT_GONE, 1006, "client gone")


def close_text(close: Optional[Tuple[int, str]]) -> str:
    """A close frame for the log: its code, 'empty' for a frame without one
    (RFC 6455 section 7.1.5: 1005 is never on the wire), 'none' if there was none."""
    if close is None:
        return "none"
    return "empty" if close[0] == NO_STATUS else str(close[0])


def cancel(scope: trio.CancelScope) -> None:
    """Cancel once: trio's cancel() formats the calling task on every call,
    even when the scope is already cancelled."""
    if not scope.cancel_called:
        scope.cancel()


class Clock:
    """Wall-clock time to the second, for last-activity stamps: read per
    message, so it is an attribute, set by a task of the control listener
    (wsexec/control.py) once a second; not kept without --control."""

    def __init__(self) -> None:
        self.now = time.time()


class Session:
    # slots: a held connection's memory is counted in KiB (bench S5)
    __slots__ = ("id", "ws", "far", "stream", "config", "log", "stopping", "stats", "clock", "started",
                 "started_at", "last_active", "messages_in", "messages_out", "remote", "target", "protocol",
                 "user_agent", "input_scope", "client_done", "output_closed", "close_asked", "_push_lock")

    def __init__(self, conn_id: str, ws: WebSocket, far: FarEnd, stream: Stream, config: Config,
                 log: ConnectionLog, stopping: Callable[[], bool], stats: Stats, clock: Clock) -> None:
        self.id = conn_id
        self.ws = ws
        self.far = far
        self.stream = stream
        self.config = config
        self.log = log
        self.stopping = stopping
        self.stats = stats
        self.clock = clock
        self.started = time.monotonic()
        self.started_at = clock.now  # wall clock, for the control API
        self.last_active = clock.now
        self.messages_in = 0
        self.messages_out = 0
        # What the control API shows; set by the connection before the session runs.
        self.remote: Tuple[str, int] = ("", 0)
        self.target = ""
        self.protocol: Optional[str] = None
        self.user_agent = ""
        self.input_scope = trio.CancelScope()  # the client-to-far-end pump: cancelled when another side finishes
        self.client_done = False
        self.output_closed = trio.Event()  # the far end's output ended
        self.close_asked: Optional[Tuple[int, str]] = None  # by the control API
        self._push_lock: Optional[trio.StrictFIFOLock] = None  # made by the first push

    @property
    def push_lock(self) -> trio.StrictFIFOLock:
        """Pushes to this client keep their order (made on first use: most
        sessions are never pushed to)."""
        if self._push_lock is None:
            self._push_lock = trio.StrictFIFOLock()
        return self._push_lock

    @property
    def pid(self) -> Optional[int]:
        return int(self.far.label) if self.far.label.isdigit() else None

    def wake(self) -> None:
        """Some side of the session finished (or the server is stopping)."""
        cancel(self.input_scope)

    def drop_client(self, why: str) -> None:
        """Treat the client as gone (it stopped answering, or a send to it
        was cut short and its connection can carry no more frames)."""
        self.log.log(ACCESS, DROPPED, why)
        self.ws.gone = True
        self.stream.close()
        self.client_done = True
        self.wake()

    def close_by_id(self, code: int, reason: str) -> None:
        """The control API closes this connection with code and reason."""
        if self.close_asked is None:
            self.close_asked = (code, reason)
            self.wake()

    async def push(self, message: Message) -> bool:
        """One message to the client from outside the far end (the control
        API), in order with other pushes and never inside another message.
        False if the client is gone. The caller bounds the wait; a push cut
        off half way leaves a broken frame, so the client is then dropped."""
        ws = self.ws
        async with self.push_lock:
            try:
                sent = await ws.send_message(*message)
            except trio.Cancelled:
                if ws.gone and not self.client_done:
                    self.drop_client("a push to a client that does not read timed out mid-message")
                raise
        if sent:
            self.messages_out += 1
            self.last_active = self.clock.now
            self.stats.pushes += 1
        return sent

    async def run(self, target: str) -> None:
        ws, far, grace = self.ws, self.far, self.config.gracems / 1000
        ending = Ending(SERVER_STOPPING)  # unless the session ends on its own
        crashed = False  # an unexpected error: the connection's catch-all closes with 1011
        try:
            try:
                await far.start(self.wake)
            except CannotStart:
                ending = Ending(FAR_END_DONE)
                outcome = await far.close(ending)
                with trio.move_on_after(grace):
                    await ws.close(outcome.code, outcome.reason, grace)
                return
            self.log.pid = far.label
            self.log.log(ACCESS, CONNECT, target)
            ending = await self.supervise()
        except Exception:  # not Cancelled (a BaseException), alone or in a group
            crashed = True
            raise
        finally:
            # However the session ended (even cancelled), the far end goes with it.
            try:
                await far.close(ending)
            finally:
                outcome = far.outcome  # set by close(), even when it was cancelled
                code, reason = (INTERNAL_ERROR, "internal error") if crashed else close_frame(ending, outcome)
                if not crashed:
                    ws.close_now(code, reason)  # cancelled: a close frame if it fits, no waiting
                self.log_disconnect(target, outcome, code, reason)
                self.count(ws.close_sent[0] if ws.close_sent else 1006)

    def count(self, code: int) -> None:
        stats, ws = self.stats, self.ws
        stats.closed[code] += 1
        stats.messages_in += self.messages_in
        stats.messages_out += self.messages_out
        stats.bytes_in += ws.bytes_in
        stats.bytes_out += ws.bytes_out

    def log_disconnect(self, target: str, outcome: Optional[Outcome], code: int, reason: str) -> None:
        ws = self.ws
        self.log.log(
            ACCESS,
            DISCONNECT,
            target, outcome.status if outcome else "not stopped", "empty" if code == NO_STATUS else code, reason or "-",
            close_text(ws.close_received), ws.bytes_in, ws.bytes_out, time.monotonic() - self.started,
        )

    async def supervise(self) -> Ending:
        ws, far, config = self.ws, self.far, self.config
        grace = config.gracems / 1000
        output_scope = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.pump_output, output_scope)
            if config.pingms:
                nursery.start_soon(self.keepalive, config.pingms / 1000)
            if config.idlems or config.lifetimems:  # no task (and no cost) without them
                nursery.start_soon(self.limits, config.idlems, config.lifetimems)
            # This task pumps the client's messages itself (one task fewer per
            # session) until the client is done or another side finishes.
            with self.input_scope:
                await self.pump_input()
            if self.client_done or self.close_asked:
                # The client first, or closed by id: released at once (after
                # the close handshake where wsexec sent the close), then the
                # far end is closed.
                cancel(output_scope)
                if self.client_done:
                    ending = client_ending(ws)
                else:
                    assert self.close_asked is not None
                    ending = Ending(API_CLOSED, *self.close_asked)
                if ending.kind in (PROTOCOL_ERROR, API_CLOSED) and not ws.gone:
                    with trio.move_on_after(grace):
                        await ws.close(ending.code, ending.reason, grace)
                self.stream.close()
                ws.gone = True
            elif self.stopping() and not (self.output_closed.is_set() or far.finished):
                ending = Ending(SERVER_STOPPING)
            else:
                # The far end first: deliver what it still sends, then close
                # with its outcome.
                with trio.move_on_after(grace):
                    await self.output_closed.wait()
                ending = Ending(FAR_END_DONE)
            outcome = await far.close(ending)
            cancel(output_scope)
            if not ws.gone:
                code, reason = close_frame(ending, outcome)
                with trio.move_on_after(grace):
                    await ws.close(code, reason, grace)
            if config.pingms or config.idlems or config.lifetimems:
                nursery.cancel_scope.cancel()  # the keepalive and limits tasks
        return ending

    async def keepalive(self, interval: float) -> None:
        """A ping every interval; a client that sends nothing back for two
        intervals (no pong, no message) is treated as gone."""
        ws = self.ws
        heard, quiet = ws.bytes_in, 0
        while ws.open:
            await trio.sleep(interval)
            if ws.bytes_in != heard:
                heard, quiet = ws.bytes_in, 0
            else:
                quiet += 1
            if quiet >= 2:
                self.drop_client(f"no answer to pings for {2 * interval:.1f}s")
                return
            await ws.ping()

    async def limits(self, idlems: int, lifetimems: int) -> None:
        """--idlems and --lifetimems: close (as the control API's close by id
        does) a connection with no message either way for idlems, or open for
        lifetimems. Idle time is watched through the message counters, looked
        at every quarter of idlems (no clock read per message): a connection
        is closed after between idlems and 1.25 x idlems without a message."""
        now = trio.current_time()
        end = now + lifetimems / 1000 if lifetimems else float("inf")
        idle = idlems / 1000
        step = idle / 4 if idlems else float("inf")
        seen, quiet_since = self.messages_in + self.messages_out, now
        while True:
            await trio.sleep_until(min(end, now + step))
            now = trio.current_time()
            if now >= end:
                self.close_by_id(1000, f"open for {lifetimems} ms")
                return
            count = self.messages_in + self.messages_out
            if count != seen:
                seen, quiet_since = count, now
            elif now - quiet_since >= idle - 1e-6:
                self.close_by_id(1000, f"idle for {idlems} ms")
                return

    async def pump_input(self) -> None:
        """Client messages to the far end; a blocked delivery is the backpressure."""
        ws, far = self.ws, self.far
        taken = True
        streamed = ws.reader.stream  # --maxframesize 0: a piece of a message is not a message
        while True:
            batch = await ws.receive()
            if batch is None:
                break
            self.messages_in += sum(1 for op, _ in batch if not op & PART) if streamed else len(batch)
            self.last_active = self.clock.now
            if taken and not await far.deliver(batch):
                if not self.stream.peer_open():
                    self.log.debug("client left while the handler was not reading")
                    ws.gone = True
                    break
                taken = False
                self.log.debug("handler stopped reading stdin; client messages are dropped")
        self.client_done = True
        self.wake()

    async def pump_output(self, scope: trio.CancelScope) -> None:
        """Far-end messages to the client; a blocked send is the backpressure."""
        ws, far = self.ws, self.far
        with scope:
            while True:
                batch = await far.receive()
                if batch is None:
                    break
                if type(batch) is Frames:
                    sent = await ws.send_frames(batch.data)
                    count = batch.count
                elif len(batch) == 1:
                    sent = await ws.send_message(*batch[0])
                    count = 1
                else:
                    sent = await ws.send_messages(batch)
                    count = len(batch)
                if not sent:
                    return  # client gone; its side of the session handles the rest
                self.messages_out += count
                self.last_active = self.clock.now
            self.output_closed.set()
            self.wake()
