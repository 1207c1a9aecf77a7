"""Counters for the metrics endpoint, kept as plain integers.

Counting is a dict increment at the end of a connection, a request or a
handler; nothing is counted per message here (a session keeps its own
message and byte counts, which are read at scrape time). wsexec/metrics.py
turns these into Prometheus metrics when --control is on, so plain
`wsexec ./handler` never loads prometheus_client.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from typing import List, Tuple

# Handler start times, seconds: posix_spawn to exec on a helper thread.
START_BUCKETS: Tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Stats:
    def __init__(self) -> None:
        # The usual label values start at 0, so rate() works before the first event.
        self.closed = Counter({1000: 0, 1001: 0, 1006: 0, 1011: 0})  # close code sent (1006: none) -> connections
        self.refusals = Counter({404: 0, 429: 0})  # HTTP status -> requests refused before any handler ran
        self.http = Counter({200: 0, 404: 0})  # HTTP status -> plain HTTP requests answered
        self.exits = Counter({"0": 0})  # "0", "3", "SIGKILL", ... -> handlers ended
        self.messages_in = 0  # of connections that ended (live ones are added at scrape time)
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.pushes = 0
        self.starts = 0
        self.start_seconds = 0.0
        self.start_buckets: List[int] = [0] * (len(START_BUCKETS) + 1)  # the last is +Inf

    def started(self, seconds: float) -> None:
        self.starts += 1
        self.start_seconds += seconds
        self.start_buckets[bisect_left(START_BUCKETS, seconds)] += 1
