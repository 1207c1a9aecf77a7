"""Reading one HTTP request head from a new connection.

A plain head (the usual WebSocket upgrade) is parsed here; anything outside
that strict subset of HTTP/1.1 (obs-fold, bare LF, a body, odd bytes, a head
near the size limit) goes to h11, which gives the verdict. Both give the same
Request for every head the fast path accepts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import trio

Address = Tuple[str, int]


class HttpError(Exception):
    """A request that gets a plain HTTP error answer."""

    def __init__(self, status: int, message: str, headers: Tuple[Tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class ClientGone(Exception):
    """The client closed the connection before sending a whole request head."""


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # as sent: percent-encoded path and query
    http_version: str
    headers: Tuple[Tuple[str, str], ...]  # (name as sent, value), latin-1 decoded
    remote: Address
    local: Address
    tls: bool = False
    trailing: bytes = b""  # bytes after the head (the first WebSocket frames)
    forwarded_host: Optional[str] = None  # Host the client sent to a trusted proxy (wsexec/net/front.py)

    @property
    def path(self) -> str:
        path = self.target.split("?", 1)[0]
        if "://" in path:  # absolute-form (RFC 9112 section 3.2.2)
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        return path

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def header(self, name: str) -> Optional[str]:
        """All values of a header, joined by ', ' (RFC 9110 section 5.3); None if absent."""
        return self._by_name.get(name.lower())

    @property
    def _by_name(self) -> Dict[str, str]:
        index = self.__dict__.get("_index")
        if index is None:
            index = {}
            for n, v in self.headers:
                key = n.lower()
                index[key] = f"{index[key]}, {v}" if key in index else v
            object.__setattr__(self, "_index", index)
        return index


_REQUEST_LINE = re.compile(rb"([-!#$%&'*+.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])")
_FIELD_NAME = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
# Field values the fast path takes: visible bytes with inner spaces and tabs
# (h11 takes more, e.g. some control bytes, so those go to h11).
_ODD_VALUE_BYTE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_H11_ONLY = (b"content-length", b"transfer-encoding")


def parse_plain_head(head: bytes) -> Optional[Tuple[str, str, str, Tuple[Tuple[str, str], ...]]]:
    """(method, target, version, headers) of a head without its final CRLF
    CRLF, if it is plain enough for the fast path; None means "ask h11"."""
    lines = head.split(b"\r\n")
    first = _REQUEST_LINE.fullmatch(lines[0])
    if first is None:
        return None
    headers = []
    hosts = 0
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or _FIELD_NAME.fullmatch(name) is None:
            return None
        value = value.strip(b" \t")
        if _ODD_VALUE_BYTE.search(value) is not None:
            return None
        lower = name.lower()
        if lower in _H11_ONLY:
            return None
        hosts += lower == b"host"
        headers.append((name.decode("latin-1"), value.decode("latin-1")))
    version = first.group(3).decode("ascii")
    if hosts > 1 or (hosts == 0 and version == "1.1"):
        return None
    return first.group(1).decode("ascii"), first.group(2).decode("latin-1"), version, tuple(headers)


async def _receive(stream: trio.abc.Stream, max_size: int) -> bytes:
    try:
        data = await stream.receive_some(max_size)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise ClientGone() from None
    if not data:
        raise ClientGone()
    return data


async def read_request(
    stream: trio.abc.Stream, max_size: int, remote: Address, local: Address, tls: bool = False
) -> Request:
    buffer = bytearray()
    searched = 0  # where the next search starts: bytes before it were looked at
    while True:
        end = buffer.find(b"\r\n\r\n", searched)
        if end >= 0:
            parsed = parse_plain_head(bytes(buffer[:end])) if end + 4 <= max_size else None
            if parsed is None:
                break
            method, target, version, headers = parsed
            return checked(Request(method=method, target=target, http_version=version, headers=headers,
                                   remote=remote, local=local, tls=tls, trailing=bytes(buffer[end + 4:])))
        if len(buffer) > max_size or buffer.find(b"\n\n", searched) >= 0 or buffer.find(b"\n\r\n", searched) >= 0:
            break  # too long for the fast path, or bare LF line ends
        searched = max(0, len(buffer) - 3)
        buffer += await _receive(stream, max_size)
    return checked(await _read_with_h11(stream, bytes(buffer), max_size, remote, local, tls))


def checked(request: Request) -> Request:
    """RFC 9110 section 15.6.6: another major version than HTTP/1 gets 505
    (HTTP/1.2 is served as HTTP/1.1, RFC 9112 section 2.3)."""
    if not request.http_version.startswith("1."):
        raise HttpError(505, f"HTTP version not supported: HTTP/{request.http_version} (this server speaks HTTP/1.1)")
    return request


async def _read_with_h11(
    stream: trio.abc.Stream, received_data: bytes, max_size: int, remote: Address, local: Address, tls: bool
) -> Request:
    import h11  # the slow path only: most heads never need it

    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=max_size)
    parser.receive_data(received_data)
    received = len(received_data)
    try:
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                data = await _receive(stream, max_size)
                received += len(data)
                parser.receive_data(data)
            elif isinstance(event, h11.Request):
                break
            else:
                raise ClientGone()
        # Everything after the head, a request body included (wsexec/http/plain.py reads it).
        trailing = parser.trailing_data[0]
        # h11 bounds only an *incomplete* head: one that arrives whole in the
        # last read can be up to twice max_size, so check the size it had.
        if received - len(trailing) > max_size:
            raise HttpError(431, "request head too large")
    except h11.RemoteProtocolError as e:
        status = e.error_status_hint
        raise HttpError(status, "request head too large" if status == 431 else f"bad request: {e}") from None
    return Request(
        method=event.method.decode("ascii", "replace"),
        target=event.target.decode("latin-1"),
        http_version=event.http_version.decode("ascii", "replace"),
        headers=tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers.raw_items()),
        remote=remote,
        local=local,
        tls=tls,
        trailing=bytes(trailing),
    )
