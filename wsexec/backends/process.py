"""One handler process per connection, websocketd's model.

Client messages go to the handler's stdin (text mode: each followed by
"\\n"), its stdout comes back as messages (text mode: one per line, text if
UTF-8 else binary; binary mode: one per read). When the session ends the
handler's stdin is closed and it is stopped on the ladder; its exit status
gives the close code: 0 -> 1000, anything else -> 1011 with the status as
the reason, an over-long line -> 1009, a close the handler asked for (a `c`
record, a `wsexec-close` stderr line) -> its own 4000-4999 code.
--framed (wsexec/proc/framing.py): a record per message both ways.
--passstderr (wsexec/proc/passstderr.py): stdout and stderr lines as JSON.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence

import trio

from ..config import Config
from ..proc.children import Child, Handlers, describe_status, stop
from ..proc.closing import Close, parse_close
from ..proc.framing import CLOSE, FrameError, FrameReader, FrameTooBig, close_record, frames
from ..proc.lines import LineSplitter, LineTooLong
from ..proc.passstderr import StreamsReader
from ..proc.shebang import spawn_failure
from ..websocket import BINARY, INTERNAL_ERROR, NORMAL, PART, TEXT, TOO_BIG, is_utf8
from . import FAR_END_DONE, SERVER_STOPPING, CannotStart, Ending, Message, Outcome, Refused, SessionInfo

if TYPE_CHECKING:
    from ..proc.terminal import Terminal


def process_outcome(status: Optional[int], too_long: str = "", not_started: str = "",
                    asked: Optional[Close] = None, bad_output: str = "") -> Outcome:
    """A handler's wait status (None: not reaped) as the session's close code;
    a close it asked for wins over its status, a fault in its output over both."""
    if not_started:
        return Outcome(INTERNAL_ERROR, not_started, "not started")
    described = describe_status(status) if status is not None else "not reaped"
    if too_long:
        return Outcome(TOO_BIG, too_long, described)
    if bad_output:
        return Outcome(INTERNAL_ERROR, bad_output, described)
    if asked is not None:
        return Outcome(asked[0], asked[1], described)
    if status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return Outcome(NORMAL, "", described)
    return Outcome(INTERNAL_ERROR, described, described)


def stdin_data(messages: Sequence[Message], binary: bool) -> bytes:
    """Client messages as a handler reads them: raw in binary mode, each
    followed by "\n" in text mode (the usual single message without a join).
    A piece of a streamed message (PART, --maxframesize 0) gets its "\n"
    only with the message's last piece."""
    if len(messages) == 1:
        opcode, payload = messages[0]
        return payload if binary or opcode & PART else payload + b"\n"
    if binary:
        return b"".join([payload for _, payload in messages])
    return b"".join([payload if opcode & PART else payload + b"\n" for opcode, payload in messages])


def line_message(line: bytes) -> Message:
    """A stdout line as a message: text when it is UTF-8, else binary, so no
    byte is lost and no invalid text frame is sent (RFC 6455 section 8.1)."""
    return (TEXT if is_utf8(line) else BINARY, line)


def told_close(ending: Ending) -> Optional[Close]:
    """--framed: the close a handler's stdin gets as a `c` record, or None
    when the handler itself ended the connection."""
    if ending.kind == FAR_END_DONE:
        return None
    if ending.kind == SERVER_STOPPING:
        return 1001, "server shutting down"
    return ending.code, ending.reason


class ProcessBackend:
    """Spawns a handler per session, within --maxforks."""

    def __init__(self, config: Config, handlers: Handlers) -> None:
        self.config = config
        self.handlers = handlers

    async def connect(self, info: SessionInfo) -> "ProcessFarEnd":
        # Checked and claimed in one step (no await between): concurrent
        # upgrades cannot run more than --maxforks handlers.
        if not self.handlers.slots.take():
            raise Refused(429, "too many connections, try again later", (("Retry-After", "1"),))
        far = ProcessFarEnd(self.config, self.handlers, info)
        if self.config.pty:
            try:
                far.terminal = self.handlers.open_terminal()
            except OSError as e:  # out of terminals or descriptors: refused, not a hang
                self.handlers.slots.give_back()
                info.log.error("no pseudo-terminal for the handler (--pty): %s", e.strerror)
                raise Refused(503, "no terminal left for the handler, try again later", (("Retry-After", "1"),))
        return far


class ProcessFarEnd:
    __slots__ = ("config", "handlers", "info", "label", "child", "splitter", "read_size", "output_ended",
                 "too_long", "not_started", "outcome", "frames", "asked", "bad_output", "streams", "terminal",
                 "writing")
    upgrade_headers = ()  # nothing for the 101

    def __init__(self, config: Config, handlers: Handlers, info: SessionInfo) -> None:
        self.config = config
        self.handlers = handlers
        self.info = info
        self.label = "-"
        self.child: Optional[Child] = None
        self.splitter = None if config.binary or config.framed else LineSplitter(config.maxmessage)
        self.frames = FrameReader(config.maxmessage) if config.framed else None
        self.asked: Optional[Close] = None  # by a `c` record
        self.bad_output = ""
        self.streams: Optional[StreamsReader] = None  # --passstderr, once started
        self.read_size = min(1 << 18, config.maxmessage)
        self.output_ended = False
        self.too_long = ""
        self.not_started = ""
        self.outcome: Optional[Outcome] = None
        self.terminal: Optional["Terminal"] = None  # --pty: taken in connect(), the child's once started
        self.writing = False  # a write to stdin is under way (cancelled mid-record, no `c` record may follow)

    @property
    def finished(self) -> bool:
        return self.child is not None and self.child.exited.is_set()

    async def start(self, on_finish: Callable[[], None]) -> None:
        info = self.info
        argv = (info.route.program,) + tuple(self.config.command[1:])
        try:
            terminal, self.terminal = self.terminal, None  # spawn() owns it now, even if it fails
            self.child = await self.handlers.spawn(argv, info.env, info.log, on_finish,
                                                   watch_stderr=not self.config.passstderr, terminal=terminal)
        except OSError as e:
            # On failure only: a missing #! interpreter is named, not just ENOENT.
            self.not_started = f"cannot start handler: {spawn_failure(info.route.program, e)}"
            info.log.error("%s (%s)", self.not_started, info.route.program)
            raise CannotStart(self.not_started) from None
        self.label = str(self.child.pid)
        if self.config.passstderr:
            self.streams = StreamsReader(self.child.io, self.child.stderr, self.handlers.stderr,
                                         self.config.maxmessage, self.read_size)
        self.info = info._replace(env={}, request=None)  # held for the whole session: keep no copy of the environment

    async def deliver(self, messages: Sequence[Message]) -> bool:
        assert self.child is not None
        data = frames(messages) if self.frames is not None else stdin_data(messages, self.splitter is None)
        self.writing = True
        try:
            # A handler that does not read blocks this write; meanwhile
            # nobody reads the client, so ask whether it is still there.
            await self.child.io.send_all(data, still_wanted=self.info.client_present)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        self.writing = False
        return True

    async def receive(self) -> Optional[List[Message]]:
        assert self.child is not None
        if self.frames is not None:
            return await self.receive_framed(self.frames)
        if self.streams is not None:
            try:
                return await self.streams.receive()
            except LineTooLong as e:
                return self.output_too_long(e)
        while not self.output_ended:
            try:
                data = await self.child.io.receive_some(self.read_size)
            except trio.BrokenResourceError:
                data = b""
            splitter = self.splitter
            if not data:
                self.output_ended = True
                last = splitter.finish() if splitter is not None else None
                return None if last is None else [line_message(last)]
            if splitter is None:
                return [(BINARY, data)]
            try:
                lines = splitter.feed(data)
            except LineTooLong as e:
                return self.output_too_long(e)
            if lines:
                return [line_message(line) for line in lines]
        return None

    def output_too_long(self, e: Exception) -> None:
        self.info.log.error("%s; closing", e)
        self.too_long = str(e)
        self.output_ended = True

    async def receive_framed(self, reader: FrameReader) -> Optional[List[Message]]:
        """Whole records; a `c` record ends the output with the handler's own close."""
        assert self.child is not None
        while not self.output_ended:
            try:
                data = await self.child.io.receive_some(self.read_size)
            except trio.BrokenResourceError:
                data = b""
            try:
                if not data:
                    self.output_ended = True
                    reader.finish()
                    return None
                records = reader.feed(data)
            except FrameError as e:
                if isinstance(e, FrameTooBig):
                    return self.output_too_long(e)
                self.info.log.error("bad framed output: %s; closing", e)
                self.output_ended = True
                self.bad_output = f"bad framed output: {e}"
                return None
            for i, (kind, payload) in enumerate(records):
                if kind == CLOSE:
                    self.output_ended = True
                    self.asked, problem = parse_close(payload)
                    if problem:
                        self.info.log.error("handler asked for a close it may not choose (%s): refused", problem)
                    return records[:i] or None
            if records:
                return records
        return None

    async def close(self, ending: Ending) -> Outcome:
        """stdin closed, the ladder, the handler reaped and its slot given back."""
        if self.outcome is not None:
            return self.outcome
        child = self.child
        try:
            if child is not None:
                told = told_close(ending) if self.frames is not None and not self.writing else None
                if told is not None:  # without waiting: a handler that does not read is not waited for
                    child.io.send_nowait(close_record(*told))
                child.close_stdin()
                await stop(child, self.config.closems)
        finally:
            if child is not None:
                await self.handlers.dispose(child)  # shielded: also when cancelled
            if self.terminal is not None:  # never started
                self.terminal.close()
            self.handlers.slots.give_back()
            self.outcome = process_outcome(child.status if child else None, self.too_long,
                                           self.not_started or ("" if child else "not started"),
                                           self.asked or (child.stderr.close_asked if child else None),
                                           self.bad_output)
        return self.outcome
