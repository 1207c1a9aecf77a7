"""--redirport: a plain HTTP listener that sends every request to https://."""

from __future__ import annotations

import logging
import re
import socket
from functools import partial
from typing import List

import trio

from ..config import Config
from ..log import ACCESS, REDIRECT
from ..net.streams import Socket, accept_forever
from .exchange import Reader
from .plain import linger
from .request import ClientGone, HttpError, Request, read_request
from .syntax import render_head, split_host

logger = logging.getLogger("wsexec.http")


_HOST = re.compile(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]")


def redirect_location(request: Request, tls_port: int, fallback_host: str) -> str:
    """https://HOST[:PORT]/path?query for a plain request: the host from the
    Host header (if it is a plain host name or address), the TLS port, and the
    request's own path and query (websocketd drops both)."""
    name, _ = split_host(request.header("host"), 80)
    host = f"[{name}]" if ":" in name else name
    if not name or not _HOST.fullmatch(host):
        host = f"[{fallback_host}]" if ":" in fallback_host else fallback_host
    port = "" if tls_port == 443 else f":{tls_port}"
    target = request.target
    if "://" in target.split("?", 1)[0]:  # absolute-form: keep path and query only
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    if not target.startswith("/"):
        target = "/"
    return f"https://{host}{port}{target}"


async def serve_redirects(config: Config, listeners: List[socket.socket], tls_port: int) -> None:
    """The --redirport listeners: every request gets 301 to the https:// URL
    on tls_port. The sockets are bound by the server (wsexec/net/listen.py)."""
    for listener in listeners:
        host, port = listener.getsockname()[:2]
        logger.info("redirecting http://%s:%d/ to https://", host, port)
    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(accept_forever, listener, nursery, partial(answer_redirect, config, tls_port))
    finally:
        for listener in listeners:
            listener.close()


async def answer_redirect(config: Config, tls_port: int, stream: Socket) -> None:
    try:
        remote, local = stream.sock.getpeername()[:2], stream.sock.getsockname()[:2]
        with trio.fail_after(config.handshakems / 1000):
            request = await read_request(stream, config.maxheader, remote, local)
        location = redirect_location(request, tls_port, local[0])
        body = f"moved to {location}\n".encode("utf-8", "replace")
        headers = [("Location", location), ("Content-Type", "text/plain; charset=utf-8"),
                   ("Content-Length", str(len(body)))] + list(config.headers + config.headers_http)
        data = render_head(301, headers, close=True)
        logger.log(ACCESS, REDIRECT, remote[0], remote[1], request.target, location)
        with trio.move_on_after(config.gracems / 1000):
            await stream.send_all(data if request.method == "HEAD" else data + body)
            await linger(stream, Reader(stream, b""))
    except (trio.TooSlowError, ClientGone, HttpError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await stream.aclose()
