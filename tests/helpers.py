"""Test helpers: a real wsexec on 127.0.0.1 (in-process or as `python -m wsexec`),
handler scripts written at test time, and clients with absolute time ceilings."""

from __future__ import annotations

import functools
import os
import re
import select
import subprocess
import sys
import textwrap
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, List, Optional, Tuple

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from wsexec.config import Config, load
from wsexec.server import Server, serve

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def trio_test(timeout: float = 20):
    """Run an async test under trio with an absolute time ceiling."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            async def main():
                with trio.fail_after(timeout):
                    await fn(*args, **kwargs)

            trio.run(main)

        return wrapper

    return decorate


def script(directory: Path, name: str, body: str, interpreter: str = PY) -> Path:
    """Write an executable handler; Python by default, or e.g. '/bin/sh'."""
    path = directory / name
    path.write_text(f"#!{interpreter}\n" + textwrap.dedent(body).lstrip("\n"))
    path.chmod(0o755)
    return path


def make_config(*command: str, **options) -> Config:
    options.setdefault("port", 0)
    options.setdefault("addresses", ("127.0.0.1",))
    options.setdefault("passed_env", {k: os.environ[k] for k in ("PATH", "LD_LIBRARY_PATH") if k in os.environ})
    options.setdefault("gracems", 1000)
    return load(Config(command=tuple(str(c) for c in command), **options))


@asynccontextmanager
async def serving(config: Config) -> AsyncIterator[Tuple[Server, str]]:
    """An in-process server on 127.0.0.1 with a free port; yields (state, ws://host:port)."""
    async with trio.open_nursery() as nursery:
        state = await nursery.start(functools.partial(serve, config, handle_signals=False))
        host, port = state.addresses[0]
        try:
            yield state, f"ws://{host}:{port}"
        finally:
            state.shutdown()


async def collect(url: str, send: List[str] = (), timeout: float = 5) -> Tuple[List[object], Optional[int], str]:
    """Connect, send messages, read until the server closes: (messages, close code, reason)."""
    messages: List[object] = []
    with trio.fail_after(timeout):
        async with open_websocket_url(url) as ws:
            for m in send:
                await ws.send_message(m)
            try:
                while True:
                    messages.append(await ws.get_message())
            except ConnectionClosed as e:
                return messages, e.reason.code, e.reason.reason or ""
    raise AssertionError("unreachable")


async def raw_http(port: int, request: bytes, timeout: float = 5, host: str = "127.0.0.1") -> bytes:
    """Send raw bytes, read everything until the server closes."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(request)
            chunks = []
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not data:
                    break
                chunks.append(data)
            return b"".join(chunks)


def upgrade_request(path: str = "/", extra: str = "", host: str = "127.0.0.1") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode("latin-1")


class WsexecProcess:
    """`python -m wsexec` as a real process; reads its `listening on` line, and
    with --control the `control on` line after it (control_url, and
    control_port for a TCP control address)."""

    def __init__(self, *args: str, cwd: Path = ROOT, env: Optional[dict] = None, timeout: float = 10,
                 prefix: Tuple[str, ...] = ()) -> None:
        # prefix: a command that runs wsexec (strace), whose child is then wsexec
        argv = [*prefix, PY, "-m", "wsexec", "--port", "0", "--address", "127.0.0.1", *args]
        full_env = dict(os.environ if env is None else env)
        full_env["PYTHONPATH"] = str(ROOT)
        self.proc = subprocess.Popen(argv, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.url = ""
        line = readline_within(self.proc.stdout, timeout)
        match = re.match(rb"listening on (ws://\S+?)/?$", line.strip())
        if not match:
            self.stop()
            raise AssertionError(f"no listening line: {line!r} {self.proc.stderr.read()!r}")
        self.url = match.group(1).decode()
        self.port = int(self.url.rsplit(":", 1)[1])
        self.control_url = ""
        self.control_port = 0
        if "--control" in args:
            self._read_control_line(timeout)

    def _read_control_line(self, timeout: float) -> None:
        """Skip any further `listening on` lines up to `control on URL`."""
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            line = readline_within(self.proc.stdout, deadline - time.monotonic())
            match = re.match(rb"control on (\S+)$", line.strip())
            if match:
                self.control_url = match.group(1).decode()
                if self.control_url.startswith("http://"):
                    self.control_port = int(self.control_url.rsplit(":", 1)[1])
                return
            if not line.startswith(b"listening on "):
                break
        self.stop()
        raise AssertionError(f"no control line: {line!r} {self.proc.stderr.read()!r}")

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise

    def __enter__(self) -> "WsexecProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def readline_within(pipe, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([pipe], [], [], left)[0]:
            break
        chunk = os.read(pipe.fileno(), 1)
        if not chunk:
            break
        buf += chunk
    return buf


def descendants(pid: int) -> List[int]:
    """PIDs of every live process below pid (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def response_head(port: int, request: bytes, timeout: float = 5) -> bytes:
    """Send a request, return the response head (up to the blank line), even if
    the connection then stays open as a WebSocket."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            head = b""
            while b"\r\n\r\n" not in head:
                data = await stream.receive_some(4096)
                if not data:
                    break
                head += data
            return head.split(b"\r\n\r\n")[0]


# --- hostile / fault / soak helpers (appended) ---------------------------------


def drain_output(server: "WsexecProcess", keep: int = 1 << 16):
    """Read a WsexecProcess's stdout and stderr in daemon threads, so its log can
    never fill a pipe and block it. Returns a function giving the last `keep`
    bytes of stderr (for assertion messages)."""
    import threading

    tail = bytearray()

    def pump(pipe, store: bool) -> None:
        while True:
            try:
                chunk = os.read(pipe.fileno(), 65536)
            except (OSError, ValueError):
                return
            if not chunk:
                return
            if store:
                tail.extend(chunk)
                del tail[:-keep]

    for pipe, store in ((server.proc.stdout, False), (server.proc.stderr, True)):
        threading.Thread(target=pump, args=(pipe, store), daemon=True).start()
    return lambda: bytes(tail)


def proc_status(pid: int, field: str) -> int:
    """A numeric field of /proc/PID/status, e.g. 'VmRSS' (kB) or 'Threads'."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def zombies(pid: int) -> List[int]:
    """Children of pid that are zombies (exited, not reaped)."""
    out = []
    for child in descendants(pid):
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if state[0] == "Z" and int(state[1]) == pid:
            out.append(child)
    return out


def client_frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0, mask: bool = True,
                 length: Optional[int] = None) -> bytes:
    """One client frame, built by hand so it can break RFC 6455 on purpose.
    `length` overrides the announced payload length."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def raw_upgrade(port: int, path: str = "/", extra: str = "", host: str = "127.0.0.1"):
    """TCP connect + handshake by hand; (stream, bytes after the 101 head). Raises
    AssertionError if the answer is not 101."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(upgrade_request(path, extra, host))
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            await stream.aclose()
            raise AssertionError(f"closed before the handshake answer: {buf!r}")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101 "):
        await stream.aclose()
        raise AssertionError(f"not upgraded: {head!r}")
    return stream, rest


async def read_server_frames(stream, rest: bytes = b"", limit: int = 1 << 26):
    """Every server frame until a close frame or EOF: (frames, close code or None).
    frames is a list of (opcode, payload); the close code is 1005 for an empty close."""
    import struct

    buf = bytearray(rest)
    frames = []
    total = 0
    while True:
        while len(buf) >= 2:
            length, head = buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    break
                length, head = struct.unpack("!H", buf[2:4])[0], 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length, head = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < head + length:
                break
            opcode, payload = buf[0] & 0x0F, bytes(buf[head:head + length])
            del buf[:head + length]
            if opcode == 0x8:
                return frames, (struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005)
            frames.append((opcode, payload))
        try:
            data = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            return frames, None
        total += len(data)
        if total > limit:
            raise AssertionError("more data than expected")
        buf += data
