"""--maxframesize, websocketd's flag: the largest client message (stdout lines
keep --maxmessage); 0 is no limit, and then each message is streamed to the
handler as its frames arrive instead of being held whole (websocketd's qa
tests BACKPRESSURE001 and BUG006 send 2 MiB with --binary --maxframesize=0)."""

from __future__ import annotations

import os

import trio

from support.clients import client_frame, raw_upgrade, read_server_frames
from support.procfs import proc_status
from support.servers import WsexecProcess, drain_output, script
from support.waiting import trio_test
from test_compress import read_frames
from wsexec.websocket import BINARY, TEXT, FrameReader, PART


def test_reader_streams_pieces_as_they_arrive() -> None:
    r = FrameReader(0)
    payload = os.urandom(100_000)
    frame = client_frame(BINARY, payload[:60_000], fin=False) + client_frame(0, payload[60_000:])
    events = []
    for i in range(0, len(frame), 7_000):  # as a socket might hand it over
        events += r.feed(frame[i:i + 7_000])
    assert r.error is None
    assert b"".join(p for _, p in events) == payload
    assert all(op == BINARY | PART for op, _ in events[:-1]) and events[-1][0] == BINARY
    assert max(len(p) for _, p in events) <= 7_000  # never more than what arrived


def test_reader_checks_streamed_text_across_pieces() -> None:
    r = FrameReader(0)
    text = "é" * 1000  # a two-byte character split between pieces
    frame = client_frame(TEXT, text.encode())
    events = r.feed(frame[:501]) + r.feed(frame[501:])
    assert b"".join(p for _, p in events).decode() == text and r.error is None
    r = FrameReader(0)
    r.feed(client_frame(TEXT, b"ok \xff", fin=False))
    assert r.error is not None and r.error.code == 1007


@trio_test(60)
async def test_binary_2_mib_echoed_by_cat() -> None:
    # websocketd's BACKPRESSURE001 / BUG006: the binary messages received are
    # put together until 2 MiB arrived
    data = bytes(i % 256 for i in range(2 << 20))
    with WsexecProcess("--binary", "--maxframesize=0", "cat") as server:
        stream, rest = await raw_upgrade(server.port)
        async with stream:
            await stream.send_all(client_frame(BINARY, data))
            got, buf = bytearray(), bytearray(rest)
            while len(got) < len(data):
                ((first, payload),) = await read_frames(stream, buf, 1)
                assert first == 0x80 | BINARY
                got += payload
    assert bytes(got) == data


COUNT = """
import os, sys
need, total = int(sys.argv[1]), 0
while total < need:
    data = os.read(0, 1 << 20)
    if not data:
        break
    total += len(data)
print(total, flush=True)
"""


@trio_test(120)
async def test_64_mib_message_streams_through_without_being_held(tmp_path) -> None:  # type: ignore[no-untyped-def]
    size = 64 << 20
    counter = script(tmp_path, "count.py", COUNT)
    with WsexecProcess("--binary", "--maxframesize", "0", "--loglevel", "error", str(counter), str(size)) as server:
        drain_output(server)
        pid = server.proc.pid
        stream, rest = await raw_upgrade(server.port)
        async with stream:
            before = proc_status(pid, "VmHWM")
            # one frame, masked with a zero key (so the bytes go as they are), sent in 1 MiB pieces
            await stream.send_all(bytes([0x82, 0x80 | 127]) + size.to_bytes(8, "big") + b"\0\0\0\0")
            chunk = b"x" * (1 << 20)
            for _ in range(size // len(chunk)):
                await stream.send_all(chunk)
            ((first, payload),) = await read_frames(stream, bytearray(rest), 1)
            after = proc_status(pid, "VmHWM")
    assert payload == str(size).encode() + b"\n"
    print(f"wsexec peak RSS {before} -> {after} kB while a 64 MiB message went through")
    assert after - before < 16 * 1024  # far from the 64 MiB it would take to hold it


@trio_test(60)
async def test_text_mode_streams_a_fragmented_message_as_one_line() -> None:
    text = b"y" * (3 << 20)
    with WsexecProcess("--maxframesize", "0", "cat") as server:
        stream, rest = await raw_upgrade(server.port)
        async with stream:
            third = len(text) // 3
            await stream.send_all(client_frame(TEXT, text[:third], fin=False) + client_frame(0, text[third:2 * third], fin=False)
                                  + client_frame(0, text[2 * third:]) + client_frame(TEXT, b"next"))
            frames = await read_frames(stream, bytearray(rest), 2)
    assert frames == [(0x80 | TEXT, text), (0x80 | TEXT, b"next")]  # the "\n" after the last piece only


@trio_test(30)
async def test_a_limit_closes_1009_and_leaves_stdout_lines_alone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # a client message over --maxframesize is refused from its header; the
    # handler's 5,000-byte line is still sent (--maxmessage, 4 MiB, applies there)
    handler = script(tmp_path, "long.py", 'import sys\nprint("z" * 5000, flush=True)\nsys.stdin.read()\n')
    with WsexecProcess("--maxframesize", "1000", str(handler)) as server:
        stream, rest = await raw_upgrade(server.port)
        async with stream:
            ((first, payload),) = await read_frames(stream, bytearray(rest), 1)
            assert payload == b"z" * 5000
            await stream.send_all(client_frame(TEXT, b"a" * 1000))  # at the limit: taken
            await trio.sleep(0.1)
            await stream.send_all(client_frame(TEXT, b"a" * 1001))
            frames, code = await read_server_frames(stream)
    assert code == 1009
