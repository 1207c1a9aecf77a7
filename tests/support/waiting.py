"""Every wait in the tests, each with a time ceiling: trio_test for a whole
async test, wait_until (trio) and wait_for (blocking) for a condition, and the
waits for processes and log lines built on them. A wait that runs out raises
AssertionError saying what it waited for."""

from __future__ import annotations

import functools
import inspect
import os
import select
import time
from typing import Callable, List, Union

import trio

from support.procfs import alive, descendants

POLL = 0.01  # seconds between two looks at a condition

What = Union[str, Callable[[], str]]  # what was awaited, for the failure message (a callable: said at failure time)


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


def _timed_out(what: What, timeout: float) -> AssertionError:
    said = what() if callable(what) else what
    return AssertionError(f"not within {timeout} s: {said}")


async def wait_until(condition: Callable[[], object], timeout: float, what: What = "the condition",
                     poll: float = POLL) -> float:
    """In trio code: seconds until condition() is true (awaited if it is a
    coroutine: a condition may itself ask the server); AssertionError once
    timeout has passed with it false."""
    start = trio.current_time()
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return trio.current_time() - start
        if trio.current_time() - start > timeout:
            raise _timed_out(what, timeout)
        await trio.sleep(poll)


def wait_for(condition: Callable[[], object], timeout: float, what: What = "the condition",
             poll: float = POLL) -> float:
    """In blocking code: seconds until condition() is true; AssertionError once
    timeout has passed with it false."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise _timed_out(what, timeout)
        time.sleep(poll)
    return time.monotonic() - start


async def wait_gone(*pids: int, timeout: float) -> None:
    """In trio code: until every pid has exited (a zombie counts as gone)."""
    await wait_until(lambda: not any(alive(p) for p in pids), timeout,
                     lambda: f"still alive: {[p for p in pids if alive(p)]}")


async def wait_slots_free(state, timeout: float) -> None:  # type: ignore[no-untyped-def]
    """In trio code: until an in-process server (serving) has every handler slot
    free. A slot is held until its process is reaped, which can come just after
    the answer reached the client."""
    await wait_until(lambda: state.handlers.slots.taken == 0, timeout,
                     lambda: f"{state.handlers.slots.taken} handler slots still taken")


def wait_all_gone(pids: List[int], timeout: float) -> None:
    """Blocking: until every pid has exited. A process killed by a signal can
    take a moment to die, and one re-parented to init is no longer anyone's
    descendant, so this looks at the PIDs themselves."""
    wait_for(lambda: not any(alive(p) for p in pids), timeout,
             lambda: f"still alive: {[p for p in pids if alive(p)]}")


def wait_no_descendants(pid: int, timeout: float = 5) -> float:
    """Blocking: seconds until pid has no descendants left."""
    return wait_for(lambda: not descendants(pid), timeout, lambda: f"left behind: {descendants(pid)}")


def readline_within(pipe, timeout: float) -> bytes:
    """One line from a pipe, or what came before timeout (b"" for nothing)."""
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


def wait_for_line(pipe, word: bytes, timeout: float = 5) -> bytes:
    """The first line from a pipe that contains word (the lines before it are read and dropped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = readline_within(pipe, deadline - time.monotonic())
        if word in line:
            return line
    raise AssertionError(f"no {word!r} line within {timeout} s")
