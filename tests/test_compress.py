"""--compress: permessage-deflate (RFC 7692). The negotiation as a table, the
inflate limits (bombs, bad data) on the pure reader and against a running
wsexec with its RSS measured, and real clients: Python's `websockets` and
headless Chromium, with text and binary modes, control-API pushes, --shared
and TLS."""

from __future__ import annotations

import asyncio
import json
import subprocess
import zlib
from typing import Optional

import pytest
import trio

from support.certs import make_certs
from support.clients import client_frame, raw_upgrade, read_server_frames
from support.procfs import proc_status
from support.servers import WsexecProcess, drain_output, make_config, script, serving
from support.waiting import trio_test
from wsexec.config import Config, ConfigError, validate
from wsexec.deflate import Deflate, negotiate, parse_offers
from wsexec.websocket import BINARY, INVALID_DATA, PROTOCOL_ERROR, TEXT, TOO_BIG, FrameReader

PMD = "permessage-deflate"


# --- negotiation (pure) --------------------------------------------------------------------

@pytest.mark.parametrize("offer, window, answer", [
    # no offer, another extension, or only malformed offers: not used (the handshake still succeeds)
    (None, 10, None),
    ("", 10, None),
    ("x-webkit-deflate-frame", 10, None),
    (f"{PMD}; unknown_param", 10, None),
    (f"{PMD}; server_max_window_bits", 10, None),  # needs a value in an offer
    (f"{PMD}; server_max_window_bits=16", 10, None),
    (f"{PMD}; server_max_window_bits=7", 10, None),
    (f"{PMD}; server_max_window_bits=010", 10, None),  # leading zero
    (f"{PMD}; server_max_window_bits=abc", 10, None),
    (f"{PMD}; client_max_window_bits=16", 10, None),
    (f"{PMD}; client_max_window_bits=", 10, None),
    (f"{PMD}; server_no_context_takeover=1", 10, None),
    (f"{PMD}; server_no_context_takeover; server_no_context_takeover", 10, None),  # twice
    # an 8-bit window for wsexec's compressor cannot be met (zlib uses 9): declined
    (f"{PMD}; server_max_window_bits=8", 10, None),
    # the plain offer (no client_max_window_bits): the client's window cannot be bounded, so it
    # is asked not to keep its context; wsexec's own window is announced
    (PMD, 10, f"{PMD}; client_no_context_takeover; server_max_window_bits=10"),
    # what browsers send: the client's window is bounded instead
    (f"{PMD}; client_max_window_bits", 10, f"{PMD}; server_max_window_bits=10; client_max_window_bits=10"),
    (f"{PMD}; client_max_window_bits=12", 10, f"{PMD}; server_max_window_bits=10; client_max_window_bits=10"),
    (f"{PMD}; client_max_window_bits=9", 10, f"{PMD}; server_max_window_bits=10; client_max_window_bits=9"),
    (f"{PMD}; client_max_window_bits=8", 10, f"{PMD}; server_max_window_bits=10; client_max_window_bits=8"),
    (f'{PMD}; client_max_window_bits="11"', 10, f"{PMD}; server_max_window_bits=10; client_max_window_bits=10"),
    # the client limits wsexec's window
    (f"{PMD}; server_max_window_bits=9", 10, f"{PMD}; client_no_context_takeover; server_max_window_bits=9"),
    (f"{PMD}; server_max_window_bits=12", 10, f"{PMD}; client_no_context_takeover; server_max_window_bits=10"),
    # the client asks that neither keeps context
    (f"{PMD}; server_no_context_takeover; client_no_context_takeover", 10,
     f"{PMD}; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"),
    # window 15: zlib's default; a client without client_max_window_bits keeps its context
    (PMD, 15, PMD),
    (f"{PMD}; client_max_window_bits", 15, f"{PMD}; client_max_window_bits=15"),
    # window 0: no context either way, nothing held per connection
    (PMD, 0, f"{PMD}; server_no_context_takeover; client_no_context_takeover"),
    (f"{PMD}; server_max_window_bits=9; client_max_window_bits", 0,
     f"{PMD}; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9"),
    # several offers: the first that can be met, in the client's order
    (f"{PMD}; server_max_window_bits=8, {PMD}; client_max_window_bits", 10,
     f"{PMD}; server_max_window_bits=10; client_max_window_bits=10"),
    (f"{PMD}; bogus, {PMD}", 10, f"{PMD}; client_no_context_takeover; server_max_window_bits=10"),
    (f"x-other, {PMD}; server_no_context_takeover", 15, f"{PMD}; server_no_context_takeover"),
    # names and parameter names are case-insensitive tokens; spaces do not matter
    ("Permessage-Deflate ;Client_Max_Window_Bits ", 10, f"{PMD}; server_max_window_bits=10; client_max_window_bits=10"),
])
def test_negotiation(offer: Optional[str], window: int, answer: Optional[str]) -> None:
    agreement = negotiate(offer, window)
    assert (agreement.response if agreement else None) == answer


def test_agreement_windows_and_contexts() -> None:
    a = negotiate(f"{PMD}; client_max_window_bits=8", 10)
    assert (a.server_bits, a.client_bits, a.server_context, a.client_context) == (10, 9, True, True)  # inflate with >= 9
    a = negotiate(PMD, 12)
    assert (a.server_bits, a.client_bits, a.server_context, a.client_context) == (12, 15, True, False)
    a = negotiate(PMD, 0)
    assert (a.server_context, a.client_context) == (False, False)


def test_offers_are_parsed_in_order() -> None:
    assert parse_offers('a; x=1; y, b; z="2", c; x; x') == [("a", {"x": "1", "y": None}), ("b", {"z": "2"}), ("c", None)]


@pytest.mark.parametrize("options, code", [
    ({"compresswindow": 8}, 2),
    ({"compresswindow": 16}, 2),
    ({"compress": True, "maxframesize": 0}, 4),
    ({"shared": True, "maxframesize": 0}, 4),
    ({"framed": True, "maxframesize": 0}, 4),
    ({"command": (), "callback": "http://127.0.0.1:9/", "maxframesize": 0}, 4),
])
def test_bad_combinations(options, code) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as info:
        validate(Config(**{"command": ("cat",), **options}))
    assert info.value.exit_code == code


# --- the reader: inflating within the limit ---------------------------------------------------

def deflated(data: bytes, bits: int = 15, level: int = 6) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, -bits)
    return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


def reader(limit: int, offer: str = f"{PMD}; client_max_window_bits", window: int = 10) -> FrameReader:
    return FrameReader(limit, Deflate(negotiate(offer, window), 32))


def test_compressed_messages_whole_fragmented_and_with_context() -> None:
    r = reader(10_000)
    c = zlib.compressobj(6, zlib.DEFLATED, -10)  # the client keeps its context (client_max_window_bits=10)
    first = (c.compress(b"hello world " * 20) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
    second = (c.compress(b"hello world " * 20) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
    assert r.feed(client_frame(TEXT, first, rsv=4)) == [(TEXT, b"hello world " * 20)]
    assert len(second) < 10  # refers to the first message: the inflater kept its window
    events = r.feed(client_frame(BINARY, second[:3], fin=False, rsv=4) + client_frame(0, second[3:]))
    assert events == [(BINARY, b"hello world " * 20)] and r.error is None
    # an uncompressed message in between is allowed (RSV1 clear)
    assert r.feed(client_frame(TEXT, b"plain")) == [(TEXT, b"plain")]


@pytest.mark.parametrize("frames, code", [
    # a bomb: 4 MiB of zeros in a few KiB, with a 1 MiB limit
    ([client_frame(BINARY, deflated(b"\0" * (4 << 20)), rsv=4)], TOO_BIG),
    # the same cut in fragments
    ([client_frame(BINARY, deflated(b"\0" * (4 << 20))[:100], fin=False, rsv=4),
      client_frame(0, deflated(b"\0" * (4 << 20))[100:])], TOO_BIG),
    ([client_frame(BINARY, b"\xff\xff\xff\xff", rsv=4)], INVALID_DATA),  # not deflate data
    ([client_frame(TEXT, deflated(b"\xff\xfe"), rsv=4)], INVALID_DATA),  # inflates to invalid UTF-8
    ([client_frame(TEXT, b"ab", fin=False), client_frame(0, b"cd", rsv=4)], PROTOCOL_ERROR),  # RSV1 on a continuation
    ([client_frame(0x9, b"", rsv=4)], PROTOCOL_ERROR),  # RSV1 on a control frame
    ([client_frame(TEXT, b"ab", rsv=2)], PROTOCOL_ERROR),  # RSV2: no extension uses it
])
def test_reader_refuses(frames, code) -> None:  # type: ignore[no-untyped-def]
    r = reader(1 << 20)
    for frame in frames:
        assert r.feed(frame) == []
    assert r.error is not None and r.error.code == code


def test_compressed_bit_without_the_extension_is_a_protocol_error() -> None:
    r = FrameReader(1 << 20)
    r.feed(client_frame(TEXT, deflated(b"hello"), rsv=4))
    assert r.error is not None and r.error.code == PROTOCOL_ERROR


def test_bomb_is_inflated_no_further_than_the_limit() -> None:
    limit = 1 << 20
    d = Deflate(negotiate(PMD, 10), 32)
    out = d.inflate(deflated(b"\0" * (64 << 20)), limit, True)
    assert len(out) == limit + 1  # the limit and one byte: enough to know it is too big


# --- against a running wsexec -------------------------------------------------------------------

def inflate_reply(payload: bytes, bits: int = 15) -> bytes:
    return zlib.decompressobj(-bits).decompress(payload + b"\x00\x00\xff\xff")


async def read_frames(stream, buf: bytearray, count: int):  # type: ignore[no-untyped-def]
    """The next `count` server frames as (first byte: FIN, RSV bits and opcode;
    payload); buf holds the bytes already read, and keeps those left over."""
    frames = []
    while len(frames) < count:
        if len(buf) >= 2:
            length, head = buf[1] & 0x7F, 2
            if length >= 126:
                head = 4 if length == 126 else 10
                length = int.from_bytes(buf[2:head], "big") if len(buf) >= head else 1 << 62
            if len(buf) >= head + length:
                frames.append((buf[0], bytes(buf[head:head + length])))
                del buf[:head + length]
                continue
        data = await stream.receive_some(1 << 20)
        assert data, f"connection ended after {frames}"
        buf += data
    return frames


@trio_test(20)
async def test_raw_handshake_compressed_echo_and_small_messages_plain() -> None:
    big = b'{"sensor": "kitchen", "value": 21.5}' * 10
    with WsexecProcess("--compress", "cat") as server:
        stream, rest = await raw_upgrade(server.port, extra=f"Sec-WebSocket-Extensions: {PMD}; client_max_window_bits\r\n")
        async with stream:
            await stream.send_all(client_frame(TEXT, deflated(big, 10), rsv=4) + client_frame(TEXT, b"hi"))
            (first, payload), small = await read_frames(stream, bytearray(rest), 2)
    assert first == 0x80 | 0x40 | TEXT and len(payload) < len(big) // 5  # FIN, RSV1 (compressed)
    assert inflate_reply(payload, 10) == big
    assert small == (0x80 | TEXT, b"hi")  # under --compressmin: RSV1 clear


@trio_test(20)
async def test_no_offer_no_extension() -> None:
    with WsexecProcess("--compress", "cat") as server:
        stream, rest = await raw_upgrade(server.port)
        async with stream:
            await stream.send_all(client_frame(TEXT, b"x" * 200))
            frames = await read_frames(stream, bytearray(rest), 1)
    assert frames == [(0x80 | TEXT, b"x" * 200)]


BOMB = deflated(b"\0" * (64 << 20), 15, 9)  # 64 MiB of zeros in about 64 KiB


@trio_test(120)
async def test_bombs_close_1009_and_do_not_grow_memory() -> None:
    with WsexecProcess("--compress", "--maxmessage", "1M", "--loglevel", "error", "cat") as server:
        drain_output(server)
        pid = server.proc.pid

        async def one_bomb() -> Optional[int]:
            stream, rest = await raw_upgrade(server.port, extra=f"Sec-WebSocket-Extensions: {PMD}\r\n")
            async with stream:
                await stream.send_all(client_frame(BINARY, BOMB, rsv=4))
                return (await read_server_frames(stream, rest))[1]

        assert await one_bomb() == TOO_BIG
        before, peak_before = proc_status(pid, "VmRSS"), proc_status(pid, "VmHWM")
        codes = [await one_bomb() for _ in range(40)]
        after, peak_after = proc_status(pid, "VmRSS"), proc_status(pid, "VmHWM")
    assert codes == [TOO_BIG] * 40
    print(f"RSS {before} -> {after} kB, peak {peak_before} -> {peak_after} kB after 40 bombs of 64 MiB each")
    # 40 x 64 MiB were offered; neither the resident set nor its peak moved by more than a few MiB
    assert after - before < 8 * 1024 and peak_after - peak_before < 8 * 1024


# --- real clients -----------------------------------------------------------------------------

def websockets_echo(url: str, messages, ssl_context=None, **kw):  # type: ignore[no-untyped-def]
    """Python's `websockets` client offering permessage-deflate (its default):
    (the Sec-WebSocket-Extensions answer, the replies)."""
    import websockets  # the `test` extra

    async def run():  # type: ignore[no-untyped-def]
        async with websockets.connect(url, compression="deflate", ssl=ssl_context, max_size=None, **kw) as ws:
            replies = []
            for message in messages:
                await ws.send(message)
                replies.append(await asyncio.wait_for(ws.recv(), 10))
            return ws.response.headers.get("Sec-WebSocket-Extensions"), replies

    return asyncio.run(asyncio.wait_for(run(), 30))


TEXTS = ["short", json.dumps({"items": list(range(300))}), "é" * 5000]


@pytest.mark.parametrize("window, answer", [
    ("10", f"{PMD}; server_max_window_bits=10; client_max_window_bits=10"),
    ("0", f"{PMD}; server_no_context_takeover; client_no_context_takeover"),
    ("15", f"{PMD}; client_max_window_bits=15"),
])
def test_websockets_client_text_mode(window: str, answer: str) -> None:
    with WsexecProcess("--compress", "--compresswindow", window, "cat") as server:
        got, replies = websockets_echo(server.url + "/", TEXTS * 3)
    assert got == answer
    assert replies == TEXTS * 3


ECHO_ONE_READ = """
import os
while True:
    data = os.read(0, 1 << 20)
    if not data:
        break
    os.write(1, data)
"""


def test_websockets_client_binary_mode(tmp_path) -> None:  # type: ignore[no-untyped-def]
    echo = script(tmp_path, "echo.py", ECHO_ONE_READ)
    payloads = [bytes(range(256)) * 20, b"\x00" * 30000, b"ab"]
    with WsexecProcess("--compress", "--binary", str(echo)) as server:
        answer, replies = websockets_echo(server.url + "/", payloads)
    assert answer and answer.startswith(PMD)
    assert replies == payloads


@trio_test(40)
async def test_websockets_client_over_tls(tmp_path) -> None:  # type: ignore[no-untyped-def]
    certs = make_certs(tmp_path)
    config = make_config("cat", compress=True, ssl=True, sslcert=str(certs.cert), sslkey=str(certs.key))
    async with serving(config) as (state, url):
        wss = "wss://127.0.0.1:{}/".format(state.addresses[0][1])
        answer, replies = await trio.to_thread.run_sync(
            lambda: websockets_echo(wss, TEXTS, ssl_context=certs.client_context()))
    assert answer and answer.startswith(PMD) and replies == TEXTS


def test_websockets_client_with_shared_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # one cat for every client: each client's line comes back to every client, compressed
    with WsexecProcess("--compress", "--shared", "cat") as server:
        answer, replies = websockets_echo(server.url + "/", TEXTS)
    assert answer and answer.startswith(PMD) and replies == TEXTS


def test_control_api_push_is_compressed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import websockets

    sock = tmp_path / "ctl"
    pushed = "pushed " * 100

    async def run(url: str) -> list:
        async with websockets.connect(url, compression="deflate") as ws:
            await ws.send("hello")
            assert await asyncio.wait_for(ws.recv(), 10) == "hello"

            def push() -> None:
                listing = subprocess.run(["curl", "-s", "--unix-socket", str(sock), "http://wsexec/connections"],
                                         capture_output=True, timeout=10, check=True).stdout
                conn_id = json.loads(listing)[0]["id"]
                subprocess.run(["curl", "-s", "-f", "--unix-socket", str(sock), "-H", "Content-Type: text/plain",
                                "--data-binary", pushed, f"http://wsexec/connections/{conn_id}"], timeout=10, check=True)

            await asyncio.get_running_loop().run_in_executor(None, push)
            return [await asyncio.wait_for(ws.recv(), 10), ws.response.headers.get("Sec-WebSocket-Extensions")]

    with WsexecProcess("--compress", "--control", f"unix:{sock}", "cat") as server:
        message, answer = asyncio.run(asyncio.wait_for(run(server.url + "/"), 30))
    assert message == pushed and answer.startswith(PMD)


def test_headless_chromium_negotiates_and_uses_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from test_devconsole import ceiling, headless_chromium

    with ceiling(90), WsexecProcess("--compress", "--devconsole", "cat") as server, headless_chromium() as driver:
        driver.get(f"http://127.0.0.1:{server.port}/")
        result = driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const ws = new WebSocket(arguments[0]);
            const big = JSON.stringify({sensor: "kitchen", values: Array.from({length: 500}, (_, i) => i % 7)});
            const got = [];
            ws.onopen = () => { ws.send(big); ws.send("tiny"); };
            ws.onmessage = (e) => { got.push(e.data); if (got.length === 2) { ws.close(1000); } };
            ws.onclose = (e) => done({extensions: ws.extensions, same: got[0] === big && got[1] === "tiny",
                                      code: e.code});
            ws.onerror = () => done({error: true});
        """, f"ws://127.0.0.1:{server.port}/")
    assert result["extensions"].startswith(PMD), result
    assert result["same"] and result["code"] == 1000, result
