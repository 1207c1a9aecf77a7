"""wsexec's socket layer (streams.Socket) on real sockets."""

import socket

import pytest
import trio

from support.waiting import trio_test, wait_until
from wsexec.net.streams import Socket


def tcp_pair():
    listener = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(listener.getsockname())
    b, _ = listener.accept()
    listener.close()
    return a, b


@pytest.mark.parametrize("make", [socket.socketpair, tcp_pair])
def test_a_short_read_then_the_end_of_stream(make):
    @trio_test(5)
    async def run():
        a, b = make()
        ours = Socket(b)

        async def peer():
            await trio.sleep(0.05)
            a.sendall(b"last line without newline")
            a.close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer)
            got = await ours.receive_some(65536)  # short: the next read waits first
            rest = await ours.receive_some(65536)
        assert (got, rest) == (b"last line without newline", b"")
        ours.close()

    run()


@trio_test(5)
async def test_peer_open_follows_the_tcp_state():
    a, b = tcp_pair()
    ours = Socket(b)
    assert ours.peer_open()
    a.close()
    await wait_until(lambda: not ours.peer_open(), 2, "the peer seen closed")
    ours.close()


@trio_test(5)
async def test_a_blocked_send_gives_up_when_no_longer_wanted():
    a, b = tcp_pair()
    ours = Socket(b)
    with pytest.raises(trio.BrokenResourceError):
        await ours.send_all(b"x" * (64 << 20), still_wanted=lambda: False)
    ours.close()
    a.close()


@trio_test(5)
async def test_closed_socket_raises_closed_resource_error():
    a, b = socket.socketpair()
    ours = Socket(b)
    ours.close()
    with pytest.raises(trio.ClosedResourceError):
        await ours.receive_some(10)
    with pytest.raises(trio.ClosedResourceError):
        await ours.send_all(b"x")
    a.close()
