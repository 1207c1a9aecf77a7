"""examples/noise: one shared binary stream to several viewers (--shared --binary)."""

from __future__ import annotations

import trio
from trio_websocket import open_websocket_url

from support.servers import ROOT, WsexecProcess
from support.waiting import trio_test

NOISE = ROOT / "examples" / "noise"


@trio_test(30)
async def test_every_viewer_gets_the_same_byte_stream():
    with WsexecProcess("--shared", "--binary", "--staticdir", str(NOISE), str(NOISE / "producer.py")) as server:
        async with open_websocket_url(server.url + "/") as first:
            async with open_websocket_url(server.url + "/") as second:
                await trio.sleep(0.1)  # both joined: from here on they see the same bytes
                streams = []
                for viewer in (first, second):
                    data = b""
                    while len(data) < 3 * 4096:
                        message = await viewer.get_message()
                        assert isinstance(message, bytes)
                        data += message
                    streams.append(data)
        # the second viewer joined a moment after the first: its bytes are a later part of the same stream
        assert streams[1][:4096] in streams[0]
        assert len(set(streams[0][:4096])) > 10  # a picture, not a constant
