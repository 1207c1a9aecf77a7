"""A real wsexec on 127.0.0.1, in-process (make_config + serving) or as
`python -m wsexec` (WsexecProcess), and handler scripts written at test time."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Optional, Tuple

import trio

from support.waiting import readline_within
from wsexec.config import Config, load
from wsexec.server import Server, serve

ROOT = Path(__file__).resolve().parent.parent.parent
PY = sys.executable


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
    """An in-process server (on 127.0.0.1 with a free port, unless config says
    otherwise); yields (state, ws://host:port of its first TCP listener, or ""
    if it has none)."""
    async with trio.open_nursery() as nursery:
        state = await nursery.start(functools.partial(serve, config, handle_signals=False))
        url = "ws://{}:{}".format(*state.addresses[0]) if state.addresses else ""
        try:
            yield state, url
        finally:
            state.shutdown()


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


def drain_output(server: WsexecProcess, keep: int = 1 << 16):
    """Read a WsexecProcess's stdout and stderr in daemon threads, so its log can
    never fill a pipe and block it. Returns a function giving the last `keep`
    bytes of stderr (for assertion messages)."""
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
