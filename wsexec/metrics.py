"""GET /metrics on the control listener: Prometheus text exposition 0.0.4,
made by the official prometheus_client library from wsexec's plain
counters (wsexec/stats.py) and the live sessions, read at scrape time, so
counting costs nothing per message. Loaded only with --control.
"""

from __future__ import annotations

from typing import Iterator, Tuple

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .registry import Registry
from .stats import START_BUCKETS, Stats


class Collector:
    def __init__(self, registry: Registry, stats: Stats) -> None:
        self.registry = registry
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats, sessions = self.stats, list(self.registry.sessions.values())
        yield GaugeMetricFamily("wsexec_connections_active", "WebSocket connections open now.", len(sessions))
        yield labelled("wsexec_connections", "WebSocket connections ended, by the close code sent (1006: none).",
                       "code", stats.closed)
        yield labelled("wsexec_refusals", "Requests refused with an HTTP status before any handler ran.",
                       "status", stats.refusals)
        messages = CounterMetricFamily("wsexec_messages", "WebSocket messages, by direction.", labels=["direction"])
        messages.add_metric(["in"], stats.messages_in + sum(s.messages_in for s in sessions))
        messages.add_metric(["out"], stats.messages_out + sum(s.messages_out for s in sessions))
        yield messages
        octets = CounterMetricFamily("wsexec_bytes", "Bytes on WebSocket connections as on the wire (frames included), by direction.", labels=["direction"])
        octets.add_metric(["in"], stats.bytes_in + sum(s.ws.bytes_in for s in sessions))
        octets.add_metric(["out"], stats.bytes_out + sum(s.ws.bytes_out for s in sessions))
        yield octets
        yield CounterMetricFamily("wsexec_handler_starts", "Handlers and CGI scripts started.", stats.starts)
        buckets, total = [], 0
        for bound, count in zip(START_BUCKETS + (float("inf"),), stats.start_buckets):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
        yield HistogramMetricFamily("wsexec_handler_start_seconds", "Time to start a handler or CGI script.",
                                    buckets=buckets, sum_value=stats.start_seconds)
        yield labelled("wsexec_handler_exits", "Handlers and CGI scripts ended, by exit status or signal.",
                       "status", stats.exits)
        yield labelled("wsexec_http_requests", "Plain HTTP requests answered, by status.", "status", stats.http)
        yield CounterMetricFamily("wsexec_pushes", "Messages pushed through the control API.", stats.pushes)


def labelled(name: str, documentation: str, label: str, counts: "dict") -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key in sorted(counts, key=str):
        family.add_metric([str(key)], counts[key])
    return family


class Metrics:
    def __init__(self, registry: Registry, stats: Stats) -> None:
        self.collectors = CollectorRegistry()
        self.collectors.register(Collector(registry, stats))  # type: ignore[arg-type]
        ProcessCollector(registry=self.collectors)  # process_resident_memory_bytes, process_open_fds, ...

    def exposition(self) -> Tuple[bytes, str]:
        return generate_latest(self.collectors), CONTENT_TYPE_LATEST
