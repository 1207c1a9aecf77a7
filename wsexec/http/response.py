"""Plain HTTP answers (anything that is not a WebSocket upgrade, and refusals)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Iterable, Tuple

import trio


def render(status: int, text: str, headers: Iterable[Tuple[str, str]] = (), head_only: bool = False) -> bytes:
    body = (text.rstrip("\n") + "\n").encode("utf-8")
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    lines = [
        f"HTTP/1.1 {status} {phrase}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)


async def send(stream: trio.abc.Stream, data: bytes, timeout: float) -> None:
    """Best effort: a client that does not read its answer is not waited for long."""
    with trio.move_on_after(timeout):
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
