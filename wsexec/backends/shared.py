"""--shared: one handler process for many clients.

A hub per program (COMMAND, or each script of --dir: a room per path) starts
when its first client arrives, with that client's CGI environment plus
WSEXEC_SHARED=1, and stops on the usual ladder once its last client has
been gone for --lingerms. Every client's messages go to its stdin, one line
at a time; every line it prints (text mode) or every read (binary mode) goes
to every client, or with --topics to the clients whose ?topic= patterns
match the line's first word, or with --tagged to the client it names.

No output is lost to a client that keeps up: each client has a queue of at
most --sharedqueue bytes, and while one is full the process's output is not
read (the pipe blocking is the backpressure). A client whose queue stays
full for --sharedstallms is closed (1008), so one stuck client holds the
others back for at most that long.

--tagged, on the process's stdin:   +ID<TAB>ENV (a JSON object), ID<TAB>MESSAGE, -ID<TAB>CODE
          on its stdout:            ID<TAB>MESSAGE, *<TAB>MESSAGE, -ID<TAB>CODE REASON
"""

from __future__ import annotations

import json
import logging
import weakref
from collections import deque
from fnmatch import fnmatchcase
from typing import Callable, Deque, Dict, List, Optional, Sequence, Tuple
from urllib.parse import parse_qsl

import trio

from ..config import Config
from ..proc.children import Child, Handlers, describe_status, stop
from ..proc.lines import LineSplitter, LineTooLong
from ..net.streams import STALL_CHECK
from ..websocket import BINARY, NORMAL, POLICY, encode_frame
from . import CLIENT_GONE, CannotStart, Ending, Frames, Message, Outcome, Refused, SessionInfo
from .process import line_message, process_outcome, stdin_data

logger = logging.getLogger("wsexec.shared")

ALL = "*"


# --- pure: what a line of output means --------------------------------------------------


def topics_of(query: str) -> Tuple[str, ...]:
    """?topic=PATTERN (repeatable) from a request's query string."""
    return tuple(value for name, value in parse_qsl(query, keep_blank_values=True) if name == "topic")


def wants(patterns: Tuple[str, ...], line: bytes) -> bool:
    """--topics: a line's topic is its first word (as mosquitto_sub -v prints
    it); shell-style patterns, '*' matching '/' too; no pattern: every line."""
    if not patterns:
        return True
    topic = line.split(b" ", 1)[0].decode("utf-8", "surrogateescape")
    return any(fnmatchcase(topic, pattern) for pattern in patterns)


def parse_tagged(line: bytes) -> Optional[Tuple[str, str, bytes]]:
    """--tagged output: ('send', ID or '*', MESSAGE) or ('close', ID, b'CODE REASON');
    None for a line without a tab."""
    tag, sep, rest = line.partition(b"\t")
    if not sep:
        return None
    name = tag.decode("ascii", "replace")
    if name.startswith("-"):
        return ("close", name[1:], rest)
    return ("send", name, rest)


def close_of(text: bytes) -> Tuple[int, str]:
    """'4001 bye' -> (4001, 'bye'): the close a tagged process asks for;
    anything but 1000 or 3000-4999 becomes 1000."""
    code_text, _, reason = text.decode("utf-8", "replace").partition(" ")
    code = int(code_text) if code_text.isdigit() else NORMAL
    if code != NORMAL and not 3000 <= code <= 4999:
        code = NORMAL
    return code, reason.encode("utf-8")[:123].decode("utf-8", "ignore")


# --- one client of a hub ------------------------------------------------------------------


class Write:
    """Bytes for the process's stdin, written whole by the hub's writer."""

    __slots__ = ("data", "started", "ok", "done")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.started = False
        self.ok = False
        self.done = trio.Event()


class Member:
    """One session's side of a hub: a bounded queue of its messages, each
    encoded as a frame once for every client it goes to."""

    __slots__ = ("hub", "info", "id", "topics", "label", "queue", "queued", "limit", "full_since",
                 "arrived", "ended", "close_with", "on_finish", "outcome", "joined")

    upgrade_headers = ()  # nothing for the 101

    def __init__(self, hub: "Hub", info: SessionInfo, topics: Tuple[str, ...]) -> None:
        self.hub = hub
        self.info = info
        self.id = info.id
        self.topics = topics
        self.label = "-"
        self.queue: Deque[bytes] = deque()  # frames
        self.queued = 0  # bytes
        self.limit = hub.config.sharedqueue
        self.full_since: Optional[float] = None
        self.arrived = trio.Event()
        self.ended = False  # no more output for this client (the process ended, or closed it)
        self.close_with: Optional[Tuple[int, str]] = None  # asked by a tagged process
        self.on_finish: Callable[[], None] = lambda: None
        self.outcome: Optional[Outcome] = None
        self.joined = False

    @property
    def finished(self) -> bool:
        return self.ended

    def put(self, frame: bytes) -> None:
        self.queue.append(frame)
        self.queued += len(frame)
        if self.queued > self.limit and self.full_since is None:
            self.full_since = trio.current_time()
        self.arrived.set()

    def end(self, close_with: Optional[Tuple[int, str]] = None) -> None:
        if not self.ended:
            self.ended = True
            self.close_with = close_with
            self.arrived.set()
            self.on_finish()

    async def start(self, on_finish: Callable[[], None]) -> None:
        self.on_finish = on_finish
        if self.hub.done:  # its process ended since this client was connected
            self.hub = self.hub.backend.hub_for(self.hub.program)
        await self.hub.join(self)
        self.label = self.hub.label

    async def deliver(self, messages: Sequence[Message]) -> bool:
        return await self.hub.write(self, messages)

    async def receive(self) -> Optional[Frames]:
        while not self.queue:
            if self.ended:
                return None
            self.arrived = trio.Event()
            await self.arrived.wait()
        batch = Frames(b"".join(self.queue), len(self.queue))
        self.queue.clear()
        self.queued = 0
        self.full_since = None
        self.hub.drained.set()
        return batch

    async def close(self, ending: Ending) -> Outcome:
        if self.outcome is None and not self.joined:  # its session never started
            self.outcome = Outcome(NORMAL, "", "not started")
            if not self.hub.members and not self.hub.starting:
                self.hub.retire()
        if self.outcome is None:
            # the code this client is closed with: the one the process (or a
            # stall) closed it with, else the client's own
            if self.close_with is not None:
                code = self.close_with[0]
            else:
                code = ending.code if ending.kind != CLIENT_GONE else 1006
            try:
                await self.hub.leave(self, code)
            finally:
                if self.close_with is not None:
                    self.outcome = Outcome(self.close_with[0], self.close_with[1], f"closed by shared pid {self.label}")
                else:
                    self.outcome = self.hub.outcome or Outcome(NORMAL, "", f"shared pid {self.label}")
        return self.outcome


# --- the process and its clients ---------------------------------------------------------


class Hub:
    def __init__(self, backend: "SharedBackend", program: str) -> None:
        self.backend = backend
        self.config = backend.config
        self.program = program
        self.members: Dict[str, Member] = {}
        self.child: Optional[Child] = None
        self.label = "-"
        self.started = trio.Event()
        self.starting = False
        self.failed = ""
        self.outcome: Optional[Outcome] = None  # set once the process has ended
        # stdin is written by one task, a whole write at a time: a client that
        # leaves mid-write gives up waiting, not the rest of its line
        self.writes: Deque[Write] = deque()
        self.writes_waiting = trio.Event()
        self.writer_scope = trio.CancelScope()
        self.stdin_closed = False
        self.drained = trio.Event()
        self.linger_scope: Optional[trio.CancelScope] = None
        self.done = False  # the process ended or is being stopped: new clients start a new hub
        self.output_done = trio.Event()

    # joining and leaving

    async def join(self, member: Member) -> None:
        if self.linger_scope is not None:
            self.linger_scope.cancel()  # a client came back within --lingerms
        self.members[member.id] = member
        member.joined = True
        if not self.starting:
            self.starting = True
            await self.start(member)
        await self.started.wait()
        if self.failed:
            self.members.pop(member.id, None)
            raise CannotStart(self.failed)
        if self.config.tagged:
            env_json = json.dumps(member.info.env, ensure_ascii=False, separators=(",", ":"))
            self.send_line(f"+{member.id}\t{env_json}".encode("utf-8", "surrogateescape"))

    async def start(self, first: Member) -> None:
        """The process, with the first client's environment; it is one more
        handler for --maxforks (claimed here, atomically)."""
        handlers = self.backend.handlers
        if not handlers.slots.take():
            self.failed = "too many handlers running"
        else:
            env = dict(first.info.env, WSEXEC_SHARED="1")
            try:
                self.child = await handlers.spawn((self.program,) + self.backend.args, env, logger, self.exited)
            except OSError as e:
                handlers.slots.give_back()
                self.failed = f"cannot start handler: {e.strerror or e}"
                logger.error("%s (%s)", self.failed, self.program)
        if self.child is None:
            self.retire()
        else:
            self.label = str(self.child.pid)
            logger.info("shared pid %s started for %s", self.label, self.program)
            self.backend.nursery.start_soon(self.read_output)
            self.backend.nursery.start_soon(self.write_input)
        self.started.set()

    async def leave(self, member: Member, code: int) -> None:
        if self.members.pop(member.id, None) is None:
            return
        if self.config.tagged and not self.done:
            self.send_line(f"-{member.id}\t{code}".encode())
        self.drained.set()  # its queue no longer holds the output back
        if not self.members and not self.done:
            self.backend.nursery.start_soon(self.linger)

    async def linger(self) -> None:
        """The last client left: stop the process after --lingerms, unless one comes back."""
        with trio.CancelScope() as self.linger_scope:
            await trio.sleep(self.config.lingerms / 1000)
            if self.members:
                return
            self.retire()
            if self.child is not None:
                self.child.close_stdin()
                await stop(self.child, self.config.closems)
        self.linger_scope = None

    def retire(self) -> None:
        """New clients start a new hub from now on."""
        self.done = True
        if self.backend.hubs.get(self.program) is self:
            del self.backend.hubs[self.program]

    def exited(self) -> None:
        """The process has been reaped: every client still here gets its outcome."""
        assert self.child is not None and self.child.status is not None
        self.retire()
        outcome = process_outcome(self.child.status)
        self.outcome = Outcome(outcome.code, outcome.reason, f"shared pid {self.label} {describe_status(self.child.status)}")
        try:
            self.backend.nursery.start_soon(self.release)
        except RuntimeError:  # the server is stopping: its sessions end anyway
            pass

    async def release(self) -> None:
        """After the last of its output was handed out: end every client, close its descriptors."""
        with trio.move_on_after(self.config.gracems / 1000):
            await self.output_done.wait()
        for member in list(self.members.values()):
            member.end()
        assert self.child is not None
        self.writer_scope.cancel()
        await self.backend.handlers.dispose(self.child)
        self.backend.handlers.slots.give_back()

    # input

    async def write(self, member: Member, messages: Sequence[Message]) -> bool:
        """Client messages to the shared stdin, each a whole line (never
        interleaved with another client's), tagged with the id in --tagged."""
        if self.child is None or self.done:
            return False
        if self.config.tagged:
            data = b"".join(b"%s\t%s\n" % (member.id.encode(), payload) for _, payload in messages)
        else:
            data = stdin_data(messages, self.config.binary)
        write = self.queue_write(data)
        try:
            while not write.done.is_set():
                with trio.move_on_after(STALL_CHECK):
                    await write.done.wait()
                if not write.done.is_set() and not member.info.client_present():
                    return False  # the client left while the process was not reading
            return write.ok
        finally:
            if not write.started and not write.done.is_set():
                self.writes.remove(write)  # not begun: dropped whole

    def send_line(self, line: bytes) -> None:
        """A line of wsexec's own (--tagged joins and leaves), without waiting."""
        self.queue_write(line + b"\n")

    def queue_write(self, data: bytes) -> "Write":
        write = Write(data)
        if self.stdin_closed:
            write.done.set()
        else:
            self.writes.append(write)
            self.writes_waiting.set()
        return write

    async def write_input(self) -> None:
        """The one writer of the process's stdin: each write whole, in order,
        so lines of different clients never interleave, even when a client
        leaves half way through a long line."""
        assert self.child is not None
        try:
            with self.writer_scope:
                while True:
                    while not self.writes:
                        self.writes_waiting = trio.Event()
                        await self.writes_waiting.wait()
                    write = self.writes[0]
                    write.started = True
                    await self.child.io.send_all(write.data)
                    write.ok = True
                    self.writes.popleft()
                    write.done.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the process closed its stdin, or ended
        finally:
            self.stdin_closed = True  # what is queued, or comes, is not written
            for write in self.writes:
                write.done.set()
            self.writes.clear()

    # output

    async def read_output(self) -> None:
        """The one reader of the process's stdout: every line to its clients,
        reading no more while a client's queue is full."""
        assert self.child is not None
        config = self.config
        splitter = None if config.binary else LineSplitter(config.maxmessage)
        size = min(1 << 18, config.maxmessage)
        try:
            while True:
                try:
                    data = await self.child.io.receive_some(size)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    last = splitter.finish() if splitter else None
                    if last is not None:
                        self.hand_out([last])
                    return
                if splitter is None:
                    self.fan_out((BINARY, data), data)
                    await self.wait_for_room()
                    continue
                try:
                    lines = splitter.feed(data)
                except LineTooLong as e:
                    logger.error("shared pid %s: %s; its output is no longer read", self.label, e)
                    return
                self.hand_out(lines)
                await self.wait_for_room()
        finally:
            self.output_done.set()

    def hand_out(self, lines: List[bytes]) -> None:
        for line in lines:
            if not self.config.tagged:
                self.fan_out(line_message(line), line)
                continue
            parsed = parse_tagged(line)
            if parsed is None:
                logger.debug("shared pid %s: a line without a tab is dropped", self.label)
                continue
            kind, name, rest = parsed
            if name == ALL and kind == "send":
                self.fan_out(line_message(rest), rest)
                continue
            member = self.members.get(name)
            if member is None:
                logger.debug("shared pid %s: no client %s; line dropped", self.label, name)
            elif kind == "send":
                member.put(encode_frame(*line_message(rest)))
            else:
                member.end(close_of(rest))

    def fan_out(self, message: Message, line: bytes) -> None:
        frame = encode_frame(*message)
        if self.config.topics:
            for member in self.members.values():
                if not member.ended and wants(member.topics, line):
                    member.put(frame)
            return
        for member in self.members.values():
            if not member.ended:
                member.put(frame)

    async def wait_for_room(self) -> None:
        """Hold the output while a client's queue is full; a client full for
        --sharedstallms is closed so the others go on."""
        limit, stall = self.config.sharedqueue, self.config.sharedstallms / 1000
        while True:
            full = [m for m in self.members.values() if m.queued > limit and not m.ended]
            if not full:
                return
            now = trio.current_time()
            for member in full:
                if member.full_since is not None and now - member.full_since >= stall:
                    member.info.log.log(logging.INFO, "client too slow for the shared output: closing it")
                    member.queue.clear()
                    member.queued = 0
                    member.end((POLICY, "too slow: the shared output went on without this client"))
            oldest = min((m.full_since for m in full if m.full_since is not None and not m.ended), default=None)
            if oldest is None:
                continue
            self.drained = trio.Event()
            with trio.move_on_at(oldest + stall):
                await self.drained.wait()


class SharedBackend:
    """Hubs by program: COMMAND, or each --dir script."""

    def __init__(self, config: Config, handlers: Handlers) -> None:
        self.config = config
        self.handlers = handlers
        self.args = tuple(config.command[1:])
        self.hubs: Dict[str, Hub] = {}  # the running (or starting) hub of each program
        self.all_hubs: "weakref.WeakSet[Hub]" = weakref.WeakSet()  # retired ones too, while they exist
        self.nursery: trio.Nursery  # set by run()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
        """The hubs' tasks (output readers, lingering, releasing) live here."""
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            for hub in self.all_hubs:
                if hub.child is not None:
                    await self.handlers.dispose(hub.child)  # shielded: no process outlives the server

    def hub_for(self, program: str) -> Hub:
        hub = self.hubs.get(program)
        if hub is None:
            hub = self.hubs[program] = Hub(self, program)
            self.all_hubs.add(hub)
        return hub

    async def connect(self, info: SessionInfo) -> Member:
        program = info.route.program
        if program not in self.hubs and self.handlers.slots.full:
            # a new process would be one more handler than --maxforks allows
            raise Refused(429, "too many handlers running, try again later", (("Retry-After", "1"),))
        query = info.env.get("QUERY_STRING", "")
        return Member(self.hub_for(program), info, topics_of(query) if self.config.topics else ())

    async def aclose(self) -> None:
        """On shutdown, after the sessions: every process stopped on the ladder."""
        async with trio.open_nursery() as nursery:
            for hub in list(self.hubs.values()):
                hub.retire()
                if hub.child is not None and hub.child.status is None:
                    hub.child.close_stdin()
                    nursery.start_soon(stop, hub.child, self.config.closems)
