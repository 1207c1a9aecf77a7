"""Reading one HTTP request head from a new connection (h11 does the parsing)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import h11
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
    forwarded_host: Optional[str] = None  # Host the client sent to a trusted proxy (wsexec/front.py)

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


async def read_request(
    stream: trio.abc.Stream, max_size: int, remote: Address, local: Address, tls: bool = False
) -> Request:
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=max_size)
    received = 0
    try:
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive_some(max_size)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    raise ClientGone() from None
                if not data:
                    raise ClientGone()
                received += len(data)
                parser.receive_data(data)
            elif isinstance(event, h11.Request):
                break
            else:
                raise ClientGone()
        # Everything after the head, a request body included (wsexec/http.py reads it).
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
