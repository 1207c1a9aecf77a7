"""Refusals: a short plain answer, then the connection is closed."""

from __future__ import annotations

from typing import Iterable, Tuple

import trio

from .syntax import render_head


def render(status: int, text: str, headers: Iterable[Tuple[str, str]] = (), head_only: bool = False) -> bytes:
    body = (text.rstrip("\n") + "\n").encode("utf-8")
    fields = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))] + list(headers)
    return render_head(status, fields, close=True) + (b"" if head_only else body)


async def send(stream: trio.abc.Stream, data: bytes, timeout: float) -> None:
    """Best effort: a client that does not read its answer is not waited for long."""
    with trio.move_on_after(timeout):
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
