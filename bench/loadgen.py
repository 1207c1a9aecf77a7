"""picows load client for bench/run.py: one async function per scenario.

Every function talks to one server URL on 127.0.0.1, is bounded in message
count and wall time, closes its connections before returning and returns a
dict of figures (numbers; "fail" for a percentile with no samples). A server
that stops answering raises Stalled.
"""
from __future__ import annotations

import asyncio
import json
import socket
import statistics
import sys
import time
import zlib
from collections import Counter
from typing import Callable, Optional, Union

from picows import WSCloseCode, WSListener, WSMsgType, WSTransport, ws_connect

MAX_FRAME = 4 * 1024 * 1024  # room for the 1 MiB echo
# Seconds to wait for any single connect, echo or close before calling the
# server stalled; run.py lowers it for --quick so a broken server fails fast.
PATIENCE = 10.0
# picows' default close code is 0, which RFC 6455 forbids (servers answer
# 1002); a normal close says 1000.
NORMAL = WSCloseCode.OK


class Stalled(Exception):
    """The server accepted a message but did not echo it in time."""


class Echo(WSListener):
    """Counts complete messages (reassembling fragments) and wakes one waiter."""

    def __init__(self) -> None:
        self.transport: Optional[WSTransport] = None
        self.got = 0          # complete messages received
        self.partial = 0      # bytes of a fragmented message so far
        self.last_size = 0    # size of the last complete message
        self.total = 0        # bytes of all complete messages
        self.want = 0
        self.waiter: Optional[asyncio.Future[None]] = None
        self.closed = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.CLOSE:
            # Answer the server's close and drop the TCP connection.
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if kind not in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
            return  # pings are answered by picows itself
        self.partial += frame.payload_size
        if not frame.fin:
            return
        self.last_size, self.partial = self.partial, 0
        self.total += self.last_size
        self.got += 1
        if self.waiter is not None and self.got >= self.want and not self.waiter.done():
            self.waiter.set_result(None)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("server closed the connection"))

    async def wait_for_count(self, n: int, timeout: float) -> None:
        """Return once n messages in total have been received; Stalled after
        timeout. (A bare call_later, not asyncio.wait_for: it is several times
        cheaper per message, and the client must stay cheap on 2 cores.)"""
        if self.got >= n:
            return
        if self.closed:
            raise ConnectionError("server closed the connection")
        self.want = n
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, self._expire, waiter, n - self.got, timeout)
        try:
            await waiter
        finally:
            timer.cancel()

    @staticmethod
    def _expire(waiter: asyncio.Future, missing: int, timeout: float) -> None:
        if not waiter.done():
            waiter.set_exception(Stalled(f"{missing} echo(es) missing after {timeout:.0f} s"))


async def connect(url: str, timeout: Optional[float] = None) -> tuple[WSTransport, Echo]:
    timeout = timeout or PATIENCE
    transport, listener = await asyncio.wait_for(
        ws_connect(Echo, url, max_frame_size=MAX_FRAME, websocket_handshake_timeout=timeout),
        timeout)
    return transport, listener


def close(transport: WSTransport) -> None:
    transport.send_close(NORMAL)
    transport.disconnect()


async def round_trip(t: WSTransport, e: Echo, payload: bytes, timeout: float) -> float:
    """Send one text message, wait for its echo; return seconds taken."""
    start = time.perf_counter()
    t.send(WSMsgType.TEXT, payload)
    await e.wait_for_count(e.got + 1, timeout)
    if e.last_size != len(payload):
        raise ValueError(f"echo was {e.last_size} bytes, sent {len(payload)}")
    return time.perf_counter() - start


def pct(values: list[float], q: float, scale: float) -> Union[float, str]:
    """q-th percentile (0..100) by nearest rank, times scale; "fail" if no samples."""
    if not values:
        return "fail"
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))] * scale


def msg32() -> bytes:
    return b"0123456789abcdef0123456789abcdef"


async def _echo_loop(t: WSTransport, e: Echo, deadline: float, cap: int,
                     lat: list[float]) -> None:
    payload = msg32()
    for _ in range(cap):
        if time.perf_counter() >= deadline:
            break
        lat.append(await round_trip(t, e, payload, PATIENCE))


async def s1_single(url: str, duration: float, cap: int) -> dict:
    """One connection, 32-byte round trips back to back."""
    t, e = await connect(url)
    lat: list[float] = []
    start = time.perf_counter()
    try:
        await _echo_loop(t, e, start + duration, cap, lat)
    finally:
        close(t)
    elapsed = time.perf_counter() - start
    return {"msgs": len(lat), "rate": len(lat) / elapsed,
            "p50": pct(lat, 50, 1e6), "p99": pct(lat, 99, 1e6)}


async def s2_concurrent(url: str, conns: int, duration: float, cap: int, deflate: bool = False,
                        count_drops: bool = False) -> dict:
    """`conns` connections, each doing 32-byte round trips back to back
    (deflate, S2z: JSON lines with permessage-deflate offered, and the bytes
    of frames on the wire per round trip). With count_drops, a connection the
    server drops (S9: Pushpin does, under load) ends its own loop and is
    counted in "dropped" instead of failing the run; the others go on."""
    pairs = await asyncio.gather(*((connect_deflating if deflate else connect)(url) for _ in range(conns)))
    lat: list[float] = []
    start = time.perf_counter()
    loop = _deflate_loop if deflate else _echo_loop

    async def one(t: WSTransport, e) -> int:  # type: ignore[no-untyped-def]
        try:
            await loop(t, e, start + duration, cap, lat)  # type: ignore[operator]
        except ConnectionError:
            if not (count_drops and e.closed):
                raise
            return 1
        return 0

    try:
        dropped = sum(await asyncio.gather(*(one(t, e) for t, e in pairs)))
    finally:
        for t, _ in pairs:
            close(t)
    elapsed = time.perf_counter() - start
    if dropped:
        print(f"    {dropped} of {conns} connections dropped by the server", file=sys.stderr)
    figures = {"msgs": len(lat), "rate": len(lat) / elapsed, "p50": pct(lat, 50, 1e6), "p99": pct(lat, 99, 1e6),
               "dropped": dropped}
    if deflate:
        figures["wire"] = sum(e.wire for _, e in pairs) / max(1, len(lat))  # type: ignore[attr-defined]
        figures["accepted"] = sum(e.on for _, e in pairs)  # type: ignore[attr-defined]
    return figures


async def s3_large(url: str, size: int, count: int) -> dict:
    """Round trips of `size` ASCII bytes; Stalled if one takes over PATIENCE."""
    payload = b"x" * size
    t, e = await connect(url)
    lat: list[float] = []
    try:
        for _ in range(count):
            lat.append(await round_trip(t, e, payload, PATIENCE))
    finally:
        close(t)
    return {"msgs": len(lat), "mibps": size * len(lat) / sum(lat) / 2**20,
            "p50": pct(lat, 50, 1e3)}


# --- S2z, S3z: permessage-deflate (wsexec --compress against websocketd, which never accepts it)

OFFER = "permessage-deflate; client_max_window_bits"  # what browsers offer


def frame_bytes(payload: int, masked: bool) -> int:
    """A frame's size on the wire (RFC 6455 section 5.2)."""
    return payload + 2 + (4 if masked else 0) + (0 if payload < 126 else 2 if payload < 65536 else 8)


class Deflating(Echo):
    """Echo that offers permessage-deflate as a browser does: once accepted,
    what it sends is compressed (context kept unless the server says
    client_no_context_takeover) and RSV1 messages are inflated. Counts the
    bytes of WebSocket frames both ways (`wire`), compressed or not."""

    def __init__(self, request=None, response=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        answer = (response.headers.get("Sec-WebSocket-Extensions", "") if response is not None else "") or ""
        params = dict(p.strip().partition("=")[::2] for p in answer.split(";")[1:])
        self.on = answer.startswith("permessage-deflate")
        self.bits = int(params.get("client_max_window_bits") or 15)
        self.client_context = "client_no_context_takeover" not in params
        self.server_context = "server_no_context_takeover" not in params
        self.compressor = zlib.compressobj(6, zlib.DEFLATED, -self.bits)
        self.inflater = zlib.decompressobj(-15)
        self.parts: list[bytes] = []
        self.compressed = False
        self.wire = 0

    def send_text(self, transport: WSTransport, payload: bytes) -> None:
        if self.on:
            if not self.client_context:
                self.compressor = zlib.compressobj(6, zlib.DEFLATED, -self.bits)
            data = (self.compressor.compress(payload) + self.compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
            transport.send(WSMsgType.TEXT, data, rsv1=True)
        else:
            data = payload
            transport.send(WSMsgType.TEXT, data)
        self.wire += frame_bytes(len(data), True)

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        if frame.msg_type not in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
            return super().on_ws_frame(transport, frame)
        self.wire += frame_bytes(frame.payload_size, False)
        if frame.msg_type != WSMsgType.CONTINUATION:
            self.compressed = bool(frame.rsv1)
        self.parts.append(frame.get_payload_as_bytes())
        if not frame.fin:
            return
        data, self.parts = b"".join(self.parts), []
        if self.compressed:
            if not self.server_context:
                self.inflater = zlib.decompressobj(-15)
            data = self.inflater.decompress(data + b"\x00\x00\xff\xff")
        self.last_size = len(data)
        self.total += self.last_size
        self.got += 1
        if self.waiter is not None and self.got >= self.want and not self.waiter.done():
            self.waiter.set_result(None)


async def connect_deflating(url: str) -> tuple[WSTransport, Deflating]:
    transport, listener = await asyncio.wait_for(
        ws_connect(Deflating, url, max_frame_size=MAX_FRAME, websocket_handshake_timeout=PATIENCE,
                   extra_headers={"Sec-WebSocket-Extensions": OFFER}), PATIENCE)
    return transport, listener


def sensor_line(i: int) -> bytes:
    """A JSON reading of the kind a sensor feed sends (~110 bytes)."""
    return (f'{{"sensor":"kitchen/temp{i % 9}","value":{20 + (i * 37) % 1000 / 100:.2f},'
            f'"ts":{1700000000 + i},"unit":"C","ok":true,"seq":{i}}}').encode()


def log_text(size: int) -> bytes:
    """`size` bytes of log-like text without a newline (the echo is by line)."""
    import random
    rnd, words, out, n = random.Random(1), ["GET", "POST", "/api/items", "/static/app.js", "200", "304", "404"], [], 0
    while n < size:
        piece = (f'{{"t":{1700000000 + rnd.randrange(10**5)},"ip":"10.0.{rnd.randrange(256)}.{rnd.randrange(256)}",'
                 f'"req":"{rnd.choice(words)} {rnd.choice(words)}","ms":{rnd.randrange(2000)}}} ')
        out.append(piece)
        n += len(piece)
    return "".join(out).encode()[:size]


async def deflate_trip(t: WSTransport, e: Deflating, payload: bytes) -> float:
    """round_trip() with permessage-deflate when the server accepted it."""
    start = time.perf_counter()
    e.send_text(t, payload)
    await e.wait_for_count(e.got + 1, PATIENCE)
    if e.last_size != len(payload):
        raise ValueError(f"echo was {e.last_size} bytes, sent {len(payload)}")
    return time.perf_counter() - start


async def _deflate_loop(t: WSTransport, e: Deflating, deadline: float, cap: int, lat: list[float]) -> None:
    for i in range(cap):
        if time.perf_counter() >= deadline:
            break
        lat.append(await deflate_trip(t, e, sensor_line(i)))


async def s3z_deflate(url: str, size: int, count: int) -> dict:
    """S3 with `size` bytes of log-like text and permessage-deflate offered."""
    payload = log_text(size)
    t, e = await connect_deflating(url)
    lat: list[float] = []
    try:
        for _ in range(count):
            lat.append(await deflate_trip(t, e, payload))
    finally:
        close(t)
    return {"msgs": len(lat), "mibps": size * len(lat) / sum(lat) / 2**20, "p50": pct(lat, 50, 1e3),
            "wire": e.wire / max(1, len(lat)), "accepted": int(e.on)}


async def _one_session(url: str) -> float:
    """Connect, one echo, close handshake; return seconds for the whole life."""
    start = time.perf_counter()
    t, e = await connect(url)
    try:
        await round_trip(t, e, msg32(), PATIENCE)
        t.send_close(NORMAL)
        # Wait for the server's close reply (Echo disconnects on it), bounded.
        await asyncio.wait_for(t.wait_disconnected(), PATIENCE)
    finally:
        t.disconnect()
    return time.perf_counter() - start


async def s4_conn_rate(url: str, parallel: int, duration: float, cap: int) -> dict:
    """`parallel` workers doing connect + handshake + one echo + close in a loop."""
    lat: list[float] = []
    errors = 0
    start = time.perf_counter()
    deadline = start + duration
    budget = iter(range(cap))  # shared across workers: bounds the total count

    async def worker() -> None:
        nonlocal errors
        for _ in budget:
            if time.perf_counter() >= deadline:
                return
            try:
                lat.append(await _one_session(url))
            except Exception:  # refused, reset, timed out: counted, not fatal
                errors += 1

    await asyncio.gather(*(worker() for _ in range(parallel)))
    elapsed = time.perf_counter() - start
    return {"conns": len(lat), "rate": len(lat) / elapsed, "p50": pct(lat, 50, 1e3),
            "p99": pct(lat, 99, 1e3), "errors": errors}


async def _paced(n: int, rate: float, make, tasks: Optional[list] = None) -> list:
    """Start make(i) for i < n at `rate` per second; gather results/exceptions.
    The tasks go to `tasks` too, so a caller cancelled meanwhile can close them."""
    start = time.perf_counter()
    tasks = [] if tasks is None else tasks
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(make(i)))
    return await asyncio.gather(*tasks, return_exceptions=True)


async def s5_held(url: str, n: int, rate: float,
                  sample: Callable[[int], dict[str, float]], deflate: bool = False,
                  echoes: int = 0) -> dict:
    """Open n connections at `rate`/s and hold them; sample() the server while
    all are held; then one echo each (also paced), then close all.
    deflate (S5z): permessage-deflate offered, and the echo (4 KiB of log
    text, which fills a small window) comes first, since compression state is
    made on first use; then the sample. With `echoes`, only that many
    connections, spread evenly, echo (S10: each echo costs an API request),
    and "held" counts those the server has not closed."""
    opened = await _paced(n, rate, lambda i: (connect_deflating if deflate else connect)(url))
    pairs = [p for p in opened if not isinstance(p, BaseException)]
    try:
        await asyncio.sleep(1.0)  # let the server finish spawning before measuring
        held = sum(not e.closed for _, e in pairs)
        if deflate:
            text = log_text(4096)
            lat = await _paced(len(pairs), rate, lambda i: deflate_trip(*pairs[i], text))  # type: ignore[arg-type]
            await asyncio.sleep(1.0)
            figures = sample(len(pairs))
        else:
            figures = sample(len(pairs))
            probe = pairs[::max(1, len(pairs) // echoes)][:echoes] if echoes else pairs
            lat = await _paced(len(probe), rate,
                               lambda i: round_trip(*probe[i], msg32(), PATIENCE))
        ok = [x for x in lat if isinstance(x, float)]
    finally:
        for t, _ in pairs:
            close(t)
    figures.update({"opened": len(pairs), "held": held, "ok": len(ok), "p99": pct(ok, 99, 1e3)})
    # Failures are counted, not fatal; say why so a short count can be explained.
    why = Counter(f"{type(x).__name__}: {x}"[:80] for x in opened + lat if isinstance(x, BaseException))
    if why:
        print(f"    S5 failures: {dict(why.most_common(3))}", file=sys.stderr)
    return figures


async def s6_pipelined(url: str, depth: int, duration: float, cap: int) -> dict:
    """One connection: send `depth` messages, then read `depth` echoes; repeat."""
    t, e = await connect(url)
    payload = msg32()
    sent = 0
    start = time.perf_counter()
    try:
        for _ in range(cap):
            if time.perf_counter() >= start + duration:
                break
            for _ in range(depth):
                t.send(WSMsgType.TEXT, payload)
            sent += depth
            await e.wait_for_count(sent, PATIENCE)
            if e.total != sent * len(payload):  # lines merged or split by the server
                raise ValueError(f"{e.got} echoes of {e.total} bytes for {sent} sent")
    finally:
        close(t)
    elapsed = time.perf_counter() - start
    return {"msgs": e.got, "rate": e.got / elapsed}


# ---------------------------------------------------------------- control API (wsexec only)

def control_address(control: str) -> tuple[str, int]:
    """'http://127.0.0.1:PORT' (what wsexec prints) -> (host, port); 127.0.0.1 only."""
    host, _, port = control.split("//", 1)[1].rstrip("/").rpartition(":")
    if host != "127.0.0.1":
        raise ValueError(f"control address {control!r} is not on 127.0.0.1")
    return host, int(port)


class HttpConn:
    """One raw HTTP/1.1 keep-alive connection to the control API: write a
    request, read its answer. Cheap on purpose (no HTTP library), every read
    bounded by PATIENCE."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, control: str) -> "HttpConn":
        host, port = control_address(control)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), PATIENCE)
        return cls(reader, writer)

    async def answer(self) -> tuple[int, bytes]:
        """Read one answer: (status, body). Bodies come with Content-Length
        (wsexec's control API never chunks); 204 has none."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), PATIENCE)
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await asyncio.wait_for(self.reader.readexactly(length), PATIENCE) if length else b""
        return status, body

    async def get(self, target: str) -> tuple[int, bytes]:
        self.writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        return await self.answer()

    def close(self) -> None:
        self.writer.close()


async def _scrape_every(control: str, period: float, stop: asyncio.Event, took: list[float]) -> None:
    """GET /metrics every `period` s until stop, as Prometheus would (first at
    once); the seconds each took go to `took`."""
    conn = await HttpConn.open(control)
    try:
        while not stop.is_set():
            start = time.perf_counter()
            status, body = await conn.get("/metrics")
            took.append(time.perf_counter() - start)
            if status != 200 or b"wsexec_connections_active" not in body:
                raise ValueError(f"/metrics answered {status}: {body[:100]!r}")
            try:
                await asyncio.wait_for(stop.wait(), period)
            except asyncio.TimeoutError:
                pass
    finally:
        conn.close()


async def c1_metrics_cost(url: str, control: str, conns: int, duration: float, cap: int,
                          period: float = 1.0) -> dict:
    """S2 exactly; with a control address (wsexec --control), /metrics is also
    scraped every `period` s during the run, as a Prometheus would."""
    if not control:
        return await s2_concurrent(url, conns, duration, cap)
    stop, took = asyncio.Event(), []
    scraper = asyncio.ensure_future(_scrape_every(control, period, stop, took))
    try:
        figures = await s2_concurrent(url, conns, duration, cap)
    finally:
        stop.set()
        await asyncio.wait_for(scraper, PATIENCE)  # re-raises a failed scrape
    figures["scrapes"] = len(took)
    # the wait for the answer under load, not the scrape's CPU (~1.5 ms idle, 100 sessions)
    print(f"    {len(took)} scrape(s) of /metrics, answered in {statistics.mean(took) * 1e3:.1f} ms on average"
          if took else "    no scrape of /metrics finished", file=sys.stderr)
    return figures


class Pushed(Echo):
    """A held connection that records when each pushed message arrives.
    A push's payload starts with its index (decimal, space padded)."""

    arrivals: dict[int, float]  # push index -> perf_counter at arrival (shared by all)
    wrong = 0                   # messages that were not the push expected here (shared)

    def __init__(self) -> None:
        super().__init__()
        self.expect: set[int] = set()   # indices pushed to this connection, not yet arrived

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        if frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY) and frame.fin:
            now = time.perf_counter()
            index = int(frame.get_payload_as_bytes()[:10])
            if index in self.expect:
                self.expect.discard(index)
                Pushed.arrivals[index] = now
            else:
                Pushed.wrong += 1
        super().on_ws_frame(transport, frame)


async def c2_push(url: str, control: str, conns: int, http_conns: int, duration: float,
                  cap: int, size: int = 32) -> dict:
    """`conns` WebSocket connections held open; `http_conns` keep-alive HTTP
    connections to the control API POST /connections/ID in turn over them,
    each waiting for its 204 before the next push, for `duration` s (at most
    `cap` pushes). Every push must arrive on the connection it was sent to;
    the delivery time runs from writing the POST to the message's arrival."""
    if not control:
        raise ValueError("the push scenario needs wsexec --control")
    Pushed.arrivals, Pushed.wrong = {}, 0
    pairs = await asyncio.gather(*(asyncio.wait_for(
        ws_connect(Pushed, url, max_frame_size=MAX_FRAME, websocket_handshake_timeout=PATIENCE), PATIENCE)
        for _ in range(conns)))
    https: list[HttpConn] = []
    try:
        https = [await HttpConn.open(control) for _ in range(http_conns)]
        # Which id is which connection: wsexec lists each with the client's port.
        by_port = {t.underlying_transport.get_extra_info("sockname")[1]: (t, e) for t, e in pairs}
        deadline = time.perf_counter() + PATIENCE
        while True:
            status, body = await https[0].get("/connections")
            listed = json.loads(body) if status == 200 else []
            if len(listed) >= conns or time.perf_counter() > deadline:
                break
            await asyncio.sleep(0.05)
        targets = [(c["id"], by_port[c["remote_port"]][1]) for c in listed if c["remote_port"] in by_port]
        if len(targets) != conns:
            raise ValueError(f"GET /connections listed {len(targets)} of the {conns} connections")

        sent_at: dict[int, float] = {}
        budget = iter(range(cap))  # shared: bounds the total count
        start = time.perf_counter()
        stop_at = start + duration

        async def pusher(conn: HttpConn) -> None:
            for index in budget:
                if time.perf_counter() >= stop_at:
                    return
                conn_id, listener = targets[index % len(targets)]
                payload = f"{index:<10d}".encode().ljust(size, b".")
                listener.expect.add(index)
                sent_at[index] = time.perf_counter()
                conn.writer.write(b"POST /connections/%s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                  b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                                  % (conn_id.encode(), len(payload), payload))
                status, body = await conn.answer()
                if status != 204:
                    raise ValueError(f"push {index} answered {status}: {body[:100]!r}")

        await asyncio.gather(*(pusher(c) for c in https))
        answered = time.perf_counter() - start
        # Every push must arrive: wait for the last ones, bounded.
        wait_until = time.perf_counter() + PATIENCE
        while len(Pushed.arrivals) < len(sent_at) and time.perf_counter() < wait_until:
            await asyncio.sleep(0.01)
        lost = len(sent_at) - len(Pushed.arrivals)
        if lost:
            raise Stalled(f"{lost} of {len(sent_at)} pushes did not arrive within {PATIENCE:.0f} s")
        if Pushed.wrong:
            raise ValueError(f"{Pushed.wrong} messages arrived on a connection they were not pushed to")
        lat = [Pushed.arrivals[i] - sent_at[i] for i in sent_at]
        return {"pushes": len(sent_at), "rate": len(sent_at) / answered,
                "p50": pct(lat, 50, 1e6), "p99": pct(lat, 99, 1e6)}
    finally:
        for conn in https:
            conn.close()
        for t, _ in pairs:
            close(t)


# ---------------------------------------------------------------- one shared process (S7, S8)

def seq_of(payload: bytes) -> int:
    """bench/producer.py's lines start with a 10-digit sequence number."""
    return int(payload[:10])


class Fan(WSListener):
    """A client of a shared producer: counts its numbered lines and the
    numbers it missed (a gap between two lines it got is a loss)."""

    def __init__(self) -> None:
        self.transport: Optional[WSTransport] = None
        self.got = 0
        self.lost = 0
        self.backwards = 0       # a number at or below the last one: must never happen
        self.next = -1           # the number expected next (-1: none seen yet)
        self.first_at = 0.0      # perf_counter at the first line
        self.close_code: Optional[int] = None  # the server's close, if it sent one
        self.closed = False
        self.arrived: Optional[asyncio.Event] = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT:
            seq = int(frame.get_payload_as_bytes()[:10])
            if self.next < 0:
                self.first_at = time.perf_counter()
                if self.arrived is not None:
                    self.arrived.set()
            elif seq > self.next:
                self.lost += seq - self.next
            elif seq < self.next:
                self.backwards += 1
            self.next = seq + 1
            self.got += 1
        elif kind == WSMsgType.CLOSE:
            self.close_code = int(frame.get_close_code())
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True


STUCK_RCVBUF = 4096


def small_socket(_url) -> socket.socket:
    """A socket whose receive buffer is set small before it connects: on
    loopback an unread socket otherwise soaks up about 4 MB (12 s of S7b)
    before the server notices anything."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STUCK_RCVBUF)
    return sock


async def fan_connect(url: str, small: bool = False) -> tuple[WSTransport, Fan]:
    return await asyncio.wait_for(
        ws_connect(Fan, url, max_frame_size=MAX_FRAME, websocket_handshake_timeout=PATIENCE,
                   socket_factory=small_socket if small else None), PATIENCE)


async def s7_fanout(url: str, n: int, window: float, trigger: Callable[[], float],
                    stuck: bool = False, rate: float = 2000.0, warmup: float = 0.5) -> dict:
    """n clients of one shared producer (started by the first, silent until
    trigger()), opened at `rate`/s; from the trigger on, after `warmup` s,
    the lines they got in `window` s, in total, and the numbers they missed
    over their whole life. With `stuck`, one
    more client, connected first, never reads (its socket is paused, its
    receive buffer 4 KiB): it is not counted; what it does to the others is
    the figure."""
    sleeper: Optional[tuple[WSTransport, Fan]] = None
    pairs: list[tuple[WSTransport, Fan]] = []
    try:
        if stuck:
            sleeper = await fan_connect(url, small=True)
            sleeper[0].underlying_transport.pause_reading()
            stuck_at = time.perf_counter()
        began = time.perf_counter()
        tasks: list[asyncio.Future] = []
        try:
            opened = await _paced(n, rate, lambda i: fan_connect(url), tasks)
        finally:  # cancelled (the run's ceiling): close what did connect
            pairs = [t.result() for t in tasks if t.done() and not t.cancelled() and not t.exception()]
            for t in tasks:
                t.cancel()
        print(f"    {len(pairs)} clients connected in {time.perf_counter() - began:.1f} s", file=sys.stderr)
        if len(pairs) < n:
            why = Counter(f"{type(x).__name__}: {x}"[:80] for x in opened if isinstance(x, BaseException))
            raise ValueError(f"{n - len(pairs)} of {n} clients did not connect: {dict(why.most_common(3))}")
        fans = [e for _, e in pairs]
        trigger()  # the producer starts printing
        await asyncio.sleep(warmup)
        got0, top0, start = sum(e.got for e in fans), max(e.next for e in fans), time.perf_counter()
        await asyncio.sleep(window)
        got1, top1, elapsed = sum(e.got for e in fans), max(e.next for e in fans), time.perf_counter() - start
        closed = sum(e.closed for e in fans)
        lost, backwards = sum(e.lost for e in fans), sum(e.backwards for e in fans)
        total = sum(e.got for e in fans)
    finally:
        for t, _ in pairs:
            close(t)
    if sleeper is not None:
        # What became of it: resume reading and see whether the server closed it.
        # resume reading and see whether the server had closed it before then.
        t, e = sleeper
        held = time.perf_counter() - stuck_at
        t.underlying_transport.resume_reading()
        deadline = time.perf_counter() + min(PATIENCE, 3.0)
        while e.close_code is None and not e.closed and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        # A server that gave up on it may have dropped the TCP connection
        # without a close frame (none fits in a full socket).
        print(f"    the client that did not read ({held:.1f} s): "
              + (f"ended by the server (close frame: {e.close_code or 'none'}) after the {e.got} lines "
                 "buffered for it" if e.closed else
                 f"still open ({e.got} lines since it resumed reading)"), file=sys.stderr)
        close(t)
    if backwards:
        print(f"    {backwards} line(s) arrived out of order", file=sys.stderr)
    print(f"    {total} lines to {n} clients, {lost} missed ({lost / max(1, lost + total):.1%}), "
          f"{closed} client(s) closed by the server", file=sys.stderr)
    return {"msgs": got1 - got0, "rate": (got1 - got0) / elapsed, "lost": lost,
            "loss_pct": 100.0 * lost / max(1, lost + total), "closed": closed,
            "produced": (top1 - top0) / elapsed}


async def s8_shared_held(url: str, n: int, rate: float, sample: Callable[[int], dict],
                         trigger: Callable[[], float]) -> dict:
    """n clients of one shared producer opened at `rate`/s and held;
    sample() the server while all are held; then trigger() makes the producer
    print one line (it returns perf_counter when it was asked): the time for
    it to reach each client."""
    opened = await _paced(n, rate, lambda i: fan_connect(url))
    pairs = [p for p in opened if not isinstance(p, BaseException)]
    try:
        await asyncio.sleep(1.0)  # let the server settle before measuring
        figures = sample(len(pairs))
        fans = [e for _, e in pairs]
        arrived = asyncio.Event()
        for e in fans:
            e.arrived = arrived
        asked = trigger()
        deadline = time.perf_counter() + PATIENCE
        while time.perf_counter() < deadline:
            if all(e.got for e in fans):
                break
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), 0.05)
            except asyncio.TimeoutError:
                pass
        lat = [e.first_at - asked for e in fans if e.got]
        dropped = sum(e.closed for e in fans)
    finally:
        for t, _ in pairs:
            close(t)
    why = Counter(f"{type(x).__name__}: {x}"[:80] for x in opened if isinstance(x, BaseException))
    if why:
        print(f"    S8 failures: {dict(why.most_common(3))}", file=sys.stderr)
    print(f"    {len(lat)} of {len(pairs)} held clients got the line; {dropped} closed before it",
          file=sys.stderr)
    figures.update({"opened": len(pairs), "ok": len(lat), "p50": pct(lat, 50, 1e3), "p99": pct(lat, 99, 1e3)})
    return figures
