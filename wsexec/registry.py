"""The server's live sessions by connection id, and the stop flag they watch.

Shutdown wakes every session through here; the control API, metrics and
health checks read it.
"""

from __future__ import annotations

import os
from itertools import count
from typing import TYPE_CHECKING, Dict, Iterator, Optional

import trio

from .session import Clock

if TYPE_CHECKING:
    from .session import Session


class Registry:
    def __init__(self) -> None:
        self.sessions: Dict[str, "Session"] = {}
        self.requests = 0  # plain HTTP requests being answered (they delay shutdown too)
        self.stopping = trio.Event()
        self.draining = False  # --drainms: still accepting, but /readyz says 503
        self.clock = Clock()
        self._numbers = count(1)

    def new_id(self) -> str:
        """A connection id: letters and digits, safe in a URL path, unique for
        the life of the process (a counter) and hard to guess (8 random hex
        digits before it: equal ids would need equal counters)."""
        return f"{os.urandom(4).hex()}{next(self._numbers):x}"

    def get(self, conn_id: str) -> Optional["Session"]:
        return self.sessions.get(conn_id)

    def add(self, session: "Session") -> None:
        self.sessions[session.id] = session

    def remove(self, session: "Session") -> None:
        self.sessions.pop(session.id, None)

    def __len__(self) -> int:
        return len(self.sessions) + self.requests

    def __iter__(self) -> Iterator["Session"]:
        return iter(list(self.sessions.values()))

    def stop(self) -> None:
        """Accept no more; wake every session so it closes with 1001."""
        self.stopping.set()
        for session in self:
            session.wake()
