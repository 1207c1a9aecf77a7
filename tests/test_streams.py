"""The socket layer under wsexec: its own edge-triggered poller, on real sockets."""

import socket
import subprocess
import sys
import time

import pytest
import trio

from helpers import ROOT, trio_test
from wsexec.streams import Poller, Socket


async def with_poller(fn):
    async with trio.open_nursery() as nursery:
        await nursery.start(Poller().run)
        try:
            await fn()
        finally:
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_data_then_end_of_stream_arriving_together_are_both_seen(kind):
    @trio_test(5)
    async def run():
        async def body():
            if kind == "unix":
                a, b = socket.socketpair()
            else:
                listener = socket.create_server(("127.0.0.1", 0))
                a = socket.create_connection(listener.getsockname())
                b, _ = listener.accept()
                listener.close()
            ours = Socket(b)
            reader_started = trio.Event()

            async def peer():
                await reader_started.wait()
                await trio.sleep(0.05)
                a.sendall(b"last line without newline")
                a.close()  # data and end of stream in one go

            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer)
                reader_started.set()
                got = await ours.receive_some(65536)  # a short read: the socket looks drained
                rest = await ours.receive_some(65536)  # must see the end, not wait for an edge
            assert (got, rest) == (b"last line without newline", b"")
            ours.close()

        await with_poller(body)

    run()


HALF_CLOSED = """
import socket, sys, time, trio
sys.path.insert(0, sys.argv[1])
from wsexec.streams import Poller, Socket

async def main():
    async with trio.open_nursery() as nursery:
        await nursery.start(Poller().run)
        listener = socket.create_server(("127.0.0.1", 0))
        peer = socket.create_connection(listener.getsockname())
        conn, _ = listener.accept()
        peer.shutdown(socket.SHUT_WR)  # FIN: the peer sends no more and reads nothing
        ours = Socket(conn)
        assert await ours.receive_some(10) == b""
        await trio.sleep(0.1)  # and the poller has seen it too
        cpu = time.process_time()
        with trio.move_on_after(1):
            await ours.send_all(b"x" * (64 << 20))
        print(round(time.process_time() - cpu, 3))
        nursery.cancel_scope.cancel()

trio.run(main)
"""


def test_half_closed_peer_with_a_full_buffer_blocks_without_spinning():
    # In a separate process: a spinning send never yields, so no in-process ceiling could stop it.
    result = subprocess.run([sys.executable, "-c", HALF_CLOSED, str(ROOT)], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) < 0.5, "send_all spun on a half-closed peer"


@trio_test(5)
async def test_close_wakes_a_waiting_reader_with_closed_resource_error():
    async def body():
        a, b = socket.socketpair()
        ours = Socket(b)
        outcome = []

        async def reader():
            try:
                await ours.receive_some(10)
            except trio.ClosedResourceError:
                outcome.append("closed")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.sleep(0.05)
            ours.close()
        assert outcome == ["closed"]
        a.close()

    await with_poller(body)


@trio_test(5)
async def test_a_cancelled_wait_leaves_the_socket_usable():
    async def body():
        a, b = socket.socketpair()
        ours = Socket(b)
        with trio.move_on_after(0.05):
            await ours.receive_some(10)
        a.sendall(b"later")
        assert await ours.receive_some(10) == b"later"
        ours.close()
        a.close()

    await with_poller(body)


@trio_test(5)
async def test_without_a_poller_trio_waits_are_used():
    a, b = socket.socketpair()
    ours = Socket(b)

    async def later():
        await trio.sleep(0.05)
        a.sendall(b"hi")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(later)
        assert await ours.receive_some(10) == b"hi"
    ours.close()
    a.close()
