"""examples/chat.sh: per-connection shell handlers that reach each other
through the control API, run by `python -m wsexec` as a real process."""

from __future__ import annotations

import pytest
import trio
from trio_websocket import open_websocket_url

from support.servers import ROOT, WsexecProcess
from support.waiting import trio_test


@pytest.mark.parametrize("control", ["unix", "tcp"])
@trio_test(30)
async def test_chat_room_of_shell_handlers(tmp_path, control):
    address = f"unix:{tmp_path / 'chat.ctl'}" if control == "unix" else "127.0.0.1:0"
    with WsexecProcess("--control", address, str(ROOT / "examples" / "chat.sh")) as server:
        async with open_websocket_url(server.url + "/") as alice:
            joined = await alice.get_message()
            assert joined.startswith("* ") and joined.endswith(" joined")
            alice_id = joined.split()[1]
            async with open_websocket_url(server.url + "/") as bob:
                bob_joined = await bob.get_message()
                assert await alice.get_message() == bob_joined  # both see bob arrive
                bob_id = bob_joined.split()[1]
                await alice.send_message("hello bob")
                assert await bob.get_message() == f"{alice_id}: hello bob"
                assert await alice.get_message() == f"{alice_id}: hello bob"
                await bob.send_message("hi alice")
                assert await alice.get_message() == f"{bob_id}: hi alice"
            with trio.fail_after(5):
                assert await alice.get_message() == f"* {bob_id} left"
