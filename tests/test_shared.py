"""--shared (wsexec/backends/shared.py): one process for many clients. Fan-out,
whole input lines, the process's life, stuck clients, --dir rooms, --tagged,
--topics (with the real Mosquitto), --binary, the control API, --maxforks and
SIGTERM; the pure parts as tables. Real sockets on 127.0.0.1, real processes,
every wait with a ceiling."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import List, Tuple

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from support.clients import Client, client_frame, raw_upgrade, read_server_frames, response_head, upgrade_request
from support.procfs import alive, descendants, open_fds, zombies
from support.servers import ROOT, WsexecProcess, drain_output, make_config, script, serving
from support.waiting import trio_test, wait_gone, wait_slots_free, wait_until
from wsexec.backends.shared import close_of, parse_tagged, topics_of, wants

# --- pure parts --------------------------------------------------------------------------


@pytest.mark.parametrize("query, expected", [
    ("", ()),
    ("x=1", ()),
    ("topic=a", ("a",)),
    ("topic=a&x=1&topic=b%2Fc", ("a", "b/c")),
    ("topic=", ("",)),
    ("topic=a+b", ("a b",)),
    ("topic=sensors/*&topic=alerts", ("sensors/*", "alerts")),
    ("Topic=a", ()),  # names are case-sensitive
])
def test_topics_of(query, expected):
    assert topics_of(query) == expected


@pytest.mark.parametrize("patterns, line, expected", [
    ((), b"anything at all", True),
    ((), b"", True),
    (("sensors/*",), b"sensors/kitchen/temp 21.5", True),  # '*' matches '/' too
    (("sensors/kitchen/*",), b"sensors/garage/door open", False),
    (("sensors/kitchen",), b"sensors/kitchen/temp 21.5", False),
    (("sensors/?",), b"sensors/a 1", True),
    (("a", "b"), b"b rest of line", True),
    (("a", "b"), b"c b a", False),  # only the first word is the topic
    (("alerts",), b"alerts", True),  # a line that is only a topic
    (("x",), b"", False),
    (("*",), b"", True),
    (("[ab]/*",), b"b/c 1", True),
    (("sensors/*",), b"sensors/\xff 1", True),  # not UTF-8: still matched
    (("Sensors/*",), b"sensors/a 1", False),  # case-sensitive
])
def test_wants(patterns, line, expected):
    assert wants(patterns, line) is expected


@pytest.mark.parametrize("line, expected", [
    (b"abc\thello", ("send", "abc", b"hello")),
    (b"*\tto all", ("send", "*", b"to all")),
    (b"-abc\t4001 bye", ("close", "abc", b"4001 bye")),
    (b"-abc\t", ("close", "abc", b"")),
    (b"abc\ta\tb", ("send", "abc", b"a\tb")),
    (b"abc\t", ("send", "abc", b"")),
    (b"\tx", ("send", "", b"x")),
    (b"no tab here", None),
    (b"", None),
])
def test_parse_tagged(line, expected):
    assert parse_tagged(line) == expected


@pytest.mark.parametrize("text, expected", [
    (b"4001 bye", (4001, "bye")),
    (b"1000", (1000, "")),
    (b"3000 x y", (3000, "x y")),
    (b"4999", (4999, "")),
    (b"1001 away", (1000, "away")),  # a code for wsexec alone
    (b"1011 oops", (1000, "oops")),
    (b"2999", (1000, "")),
    (b"5000", (1000, "")),
    (b"abc", (1000, "")),
    (b"", (1000, "")),
    (b"-1 x", (1000, "x")),
    (b"4000 " + b"a" * 200, (4000, "a" * 123)),
    ("4000 ".encode() + "é".encode() * 70, (4000, "é" * 61)),  # 123 bytes of UTF-8, whole characters
])
def test_close_of(text, expected):
    assert close_of(text) == expected


# --- handlers ------------------------------------------------------------------------------

# Commands on stdin, one a line: "echo TEXT" prints TEXT; "pid" prints the
# process's and its background child's pids and what it started with;
# "burst N COUNT [WIDTH]": once COUNT such lines came, prints N numbered lines;
# "exit N" exits with N.
HUB = """
    import os, subprocess, sys
    child = subprocess.Popen(["sleep", "300"])  # a grandchild: must not outlive the hub
    bursts = 0
    for line in sys.stdin:
        word, _, rest = line.rstrip("\\n").partition(" ")
        if word == "echo":
            print(rest, flush=True)
        elif word == "pid":
            print("pid", os.getpid(), child.pid, os.environ.get("WSEXEC_SHARED"),
                  os.environ.get("QUERY_STRING"), os.environ.get("SCRIPT_NAME"), flush=True)
        elif word == "burst":
            n, count, width = (list(map(int, rest.split())) + [40])[:3]
            bursts += 1
            if bursts == count:
                for i in range(n):
                    sys.stdout.write("line %d %s\\n" % (i, "x" * width))
                sys.stdout.flush()
        elif word == "exit":
            sys.exit(int(rest))
"""


async def wait_for(ws, expected: str, timeout: float = 5) -> List[object]:
    """Messages until `expected` (other clients' output may come first); returns those skipped."""
    skipped = []
    with trio.fail_after(timeout):
        while True:
            message = await ws.get_message()
            if message == expected:
                return skipped
            skipped.append(message)


async def join(ws, name: str) -> None:
    """This client has joined the hub once it sees its own echo (its messages
    reach stdin only after it joined)."""
    await ws.send_message(f"echo joined {name}")
    await wait_for(ws, f"joined {name}")


async def pid_of(ws) -> Tuple[int, int, str, str, str]:
    """(pid, its background child's pid, WSEXEC_SHARED, QUERY_STRING, SCRIPT_NAME)."""
    await ws.send_message("pid")
    with trio.fail_after(5):
        while True:
            message = await ws.get_message()
            if isinstance(message, str) and message.startswith("pid "):
                _, pid, child, shared, query, name = message.split(" ")
                return int(pid), int(child), shared, query, name


async def closed(ws, timeout: float = 5) -> Tuple[int, str, List[object]]:
    """Read until the server closes: (code, reason, messages before it)."""
    messages = []
    with trio.fail_after(timeout):
        try:
            while True:
                messages.append(await ws.get_message())
        except ConnectionClosed as e:
            return e.reason.code, e.reason.reason or "", messages


async def settled_fds(url: str) -> int:
    """This process's descriptor count once a first hub came and went (the
    spawner opens its pipe and /dev/null at its first start)."""
    async with open_websocket_url(url + "/") as ws:
        pid, child, *_ = await pid_of(ws)
    await wait_gone(pid, child, timeout=5)
    await trio.sleep(0.1)
    return open_fds()


async def fds_back_to(count: int) -> None:
    await wait_until(lambda: open_fds() == count, 5, lambda: f"{open_fds()} fds open, not {count}")


# --- fan-out, input, lifecycle --------------------------------------------------------------


@trio_test(30)
async def test_every_line_reaches_every_client_in_order(tmp_path):
    handler = script(tmp_path, "hub.py", HUB)
    n, clients = 5000, 5
    async with serving(make_config(handler, shared=True)) as (state, url):
        results = {}

        async def client(k: int) -> None:
            async with open_websocket_url(url + f"/?k={k}") as ws:
                await join(ws, str(k))
                await ws.send_message(f"burst {n} {clients}")
                lines = []
                with trio.fail_after(20):
                    while len(lines) < n:
                        message = await ws.get_message()
                        if isinstance(message, str) and message.startswith("line "):
                            lines.append(message)
                results[k] = lines

        async with trio.open_nursery() as nursery:
            for k in range(clients):
                nursery.start_soon(client, k)
    expected = ["line %d %s" % (i, "x" * 40) for i in range(n)]
    assert sorted(results) == list(range(clients))
    for k, lines in results.items():
        assert lines == expected, k


# Checks every stdin line is whole: "K I " and then the letter of client K,
# LENGTH times. Prints "done TOTAL BAD ORDER" after TOTAL lines.
CHECKER = """
    import sys
    total, length = int(sys.argv[1]), int(sys.argv[2])
    seen = bad = disorder = 0
    last = {}
    for line in sys.stdin.buffer:
        k, i, body = line.rstrip(b"\\n").split(b" ", 2)
        letter = b"abcdefghij"[int(k):int(k) + 1]
        if len(body) != length or body.strip(letter):
            bad += 1
        if int(i) != last.get(k, -1) + 1:
            disorder += 1
        last[k] = int(i)
        seen += 1
        if seen == total:
            print("done", seen, bad, disorder, flush=True)
"""


@trio_test(60)
async def test_lines_of_concurrent_clients_reach_stdin_whole(tmp_path):
    clients, count, length = 4, 12, 300_000  # each line larger than the socket pair's buffer
    handler = script(tmp_path, "checker.py", CHECKER)
    config = make_config(handler, str(clients * count), str(length), shared=True)
    async with serving(config) as (state, url):
        async with trio.open_nursery() as nursery:
            results = []

            async def client(k: int, ready: trio.Event, go: trio.Event) -> None:
                async with open_websocket_url(url + "/") as ws:
                    # joined once the upgrade is done and start() ran; a first
                    # message would go to the checker, so wait on the hub itself
                    ready.set()
                    await go.wait()
                    letter = "abcdefghij"[k]
                    for i in range(count):
                        await ws.send_message(f"{k} {i} " + letter * length)
                    results.append(await ws.get_message())

            events = [(trio.Event(), trio.Event()) for _ in range(clients)]
            for k, (ready, go) in enumerate(events):
                nursery.start_soon(client, k, ready, go)
            with trio.fail_after(10):
                for ready, _ in events:
                    await ready.wait()
                while sum(len(h.members) for h in state.backend.hubs.values()) < clients:
                    await trio.sleep(0.01)
            for _, go in events:
                go.set()
    assert results == [f"done {clients * count} 0 0"] * clients


async def reaped(pid: int) -> None:
    """Gone, then reaped by the server: an exited process stays its child, a
    zombie, for the moment the server takes to reap it."""
    await wait_until(lambda: pid not in descendants(os.getpid()) and not zombies(os.getpid()), 5,
                     lambda: f"not reaped: {descendants(os.getpid())}, zombies {zombies(os.getpid())}")


@trio_test(40)
async def test_starts_with_the_first_client_and_stops_after_the_last(tmp_path):
    handler = script(tmp_path, "hub.py", HUB)
    async with serving(make_config(handler, shared=True, lingerms=0, closems=0)) as (state, url):
        fds = await settled_fds(url)
        async with open_websocket_url(url + "/?who=first") as first:
            pid, child, shared, query, _ = await pid_of(first)
            assert (shared, query) == ("1", "who=first")
            async with open_websocket_url(url + "/?who=second") as second:
                await join(second, "second")
                assert (await pid_of(second))[:5] == (pid, child, "1", "who=first", "/")  # the first one's env
            assert alive(pid)  # one client is still here
            await first.send_message("echo still")
            await wait_for(first, "still")
        await wait_gone(pid, child, timeout=5)
        await reaped(pid)
        await fds_back_to(fds)
        assert not state.backend.hubs and not state.handlers.children and state.handlers.slots.taken == 0

        # The next client starts a new one, with its own environment.
        async with open_websocket_url(url + "/?who=third") as third:
            new_pid, new_child, _, query, _ = await pid_of(third)
            assert new_pid != pid and query == "who=third"
        await wait_gone(new_pid, new_child, timeout=5)
        await fds_back_to(fds)


@trio_test(40)
async def test_lingerms_keeps_the_process_for_a_client_that_comes_back(tmp_path):
    handler = script(tmp_path, "hub.py", HUB)
    async with serving(make_config(handler, shared=True, lingerms=1500, closems=0)) as (state, url):
        fds = await settled_fds(url)
        async with open_websocket_url(url + "/") as ws:
            pid, child, *_ = await pid_of(ws)
        await trio.sleep(0.5)
        assert alive(pid)
        async with open_websocket_url(url + "/") as ws:  # back within --lingerms
            assert (await pid_of(ws))[0] == pid
        left = time.monotonic()
        await wait_gone(pid, child, timeout=6)
        lingered = time.monotonic() - left
        assert 1.4 < lingered < 4, lingered  # counted from the last client leaving
        await reaped(pid)
        await fds_back_to(fds)
        async with open_websocket_url(url + "/") as ws:
            assert (await pid_of(ws))[0] != pid


@pytest.mark.parametrize("status, code, reason", [(0, 1000, ""), (3, 1011, "exit status 3")])
@trio_test(30)
async def test_process_exit_closes_every_client_and_the_next_starts_anew(tmp_path, status, code, reason):
    handler = script(tmp_path, "hub.py", HUB)
    async with serving(make_config(handler, shared=True)) as (state, url):
        async with open_websocket_url(url + "/") as a, open_websocket_url(url + "/") as b, \
                open_websocket_url(url + "/") as c:
            for name, ws in (("a", a), ("b", b), ("c", c)):
                await join(ws, name)
            pid = (await pid_of(a))[0]
            await b.send_message("echo last words")
            await c.send_message(f"exit {status}")
            for ws in (a, b, c):
                got_code, got_reason, messages = await closed(ws)
                assert (got_code, got_reason) == (code, reason)
                assert "last words" in messages  # output before the exit is delivered
        await wait_gone(pid, timeout=5)
        async with open_websocket_url(url + "/") as d:
            new_pid = (await pid_of(d))[0]
            assert new_pid != pid
        await reaped(pid)


# --- a client that does not read ---------------------------------------------------------


async def stuck_client(port: int, path: str = "/"):
    """A client that upgrades and then never reads: a small receive buffer
    (set before connect, so the window stays small), read by nobody."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    await stream.send_all(upgrade_request(path))
    buf = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in buf:
            buf += await stream.receive_some(1)  # byte by byte: nothing past the head is read
    assert buf.startswith(b"HTTP/1.1 101 "), buf
    return stream


class RawReader:
    """A client that reads as fast as the socket allows (no parsing while it
    reads), so it always keeps up; frames are parsed afterwards."""

    def __init__(self, stream, rest: bytes) -> None:
        self.stream = stream
        self.data = bytearray(rest)

    @classmethod
    async def open(cls, port: int) -> "RawReader":
        return cls(*await raw_upgrade(port))

    async def send(self, text: str) -> None:
        await self.stream.send_all(client_frame(0x1, text.encode()))

    async def read_until(self, marker: bytes, timeout: float = 30) -> None:
        with trio.fail_after(timeout):
            while marker not in self.data[-(1 << 17):]:
                chunk = await self.stream.receive_some(1 << 18)
                assert chunk, "closed early"
                self.data += chunk

    async def frames(self) -> List[Tuple[int, bytes]]:
        class Done:
            async def receive_some(self, size):
                return b""
        return (await read_server_frames(Done(), bytes(self.data)))[0]


@trio_test(60)
async def test_a_client_that_never_reads_is_closed_1008_and_the_others_lose_nothing(tmp_path):
    handler = script(tmp_path, "hub.py", HUB)
    n = 20000
    # --gracems: how long wsexec waits to send the stuck client its close frame
    with WsexecProcess("--shared", "--sharedstallms", "500", "--gracems", "20000", str(handler)) as server:
        log = drain_output(server)
        good = [await RawReader.open(server.port) for _ in range(2)]
        stuck = await stuck_client(server.port)
        try:
            for k, reader in enumerate(good):
                await reader.send(f"echo joined {k}")
                await reader.read_until(f"joined {k}".encode(), 5)
            await stuck.send_all(client_frame(0x1, b"echo joined stuck"))
            for reader in good:
                await reader.read_until(b"joined stuck", 5)
            asked = time.time()
            await good[0].send(f"burst {n} 1 250")  # 5 MB, more than the stuck client's buffers hold
            async with trio.open_nursery() as nursery:
                for reader in good:
                    nursery.start_soon(reader.read_until, b"line %d " % (n - 1))
            # The stuck client reads at last (within --gracems, while its close
            # frame still waits to be sent): a prefix of the lines, then 1008.
            with trio.fail_after(10):
                frames, code = await read_server_frames(stuck)
        finally:
            await stuck.aclose()
            for reader in good:
                await reader.stream.aclose()
        for reader in good:
            numbers = [int(p.split()[1]) for op, p in await reader.frames() if p.startswith(b"line ")]
            assert numbers == list(range(n))  # none lost, none out of order
        numbers = [int(p.split()[1]) for op, p in frames if p.startswith(b"line ")]
        assert numbers == list(range(len(numbers))) and 0 < len(numbers) < n
        assert code == 1008, (code, len(frames))
    line = next(line for line in log().splitlines() if b"client too slow for the shared output" in line)
    stamp = line.split()[0].decode()
    closed_at = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) + int(stamp[20:23]) / 1000
    # Filling its buffers takes a few ms, then its queue stays full for --sharedstallms.
    print(f"stuck client closed {closed_at - asked:.3f}s after the burst began")
    assert 0.45 < closed_at - asked < 3, closed_at - asked
    assert re.search(rb"DISCONNECT / .*close=1008/too slow", log()), log()[-3000:]
    assert log().count(b"client too slow") == 1


# --- --dir rooms, --maxforks, the control API, SIGTERM -------------------------------------


@trio_test(30)
async def test_each_dir_script_is_a_room_with_its_own_process(tmp_path):
    rooms = tmp_path / "rooms"
    rooms.mkdir()
    for name in ("a.py", "b.py"):
        script(rooms, name, HUB)
    async with serving(make_config(dir=str(rooms), shared=True)) as (state, url):
        async with open_websocket_url(url + "/a.py") as a1, open_websocket_url(url + "/a.py") as a2, \
                open_websocket_url(url + "/b.py") as b1, open_websocket_url(url + "/b.py") as b2:
            for name, ws in (("a1", a1), ("a2", a2), ("b1", b1), ("b2", b2)):
                await join(ws, name)
            pa, pb = await pid_of(a1), await pid_of(b1)
            assert pa[4] == "/a.py" and pb[4] == "/b.py" and pa[0] != pb[0]
            assert (await pid_of(a2))[0] == pa[0] and (await pid_of(b2))[0] == pb[0]
            await a2.send_message("echo for room a")
            await wait_for(a1, "for room a")
            await b2.send_message("echo for room b")
            skipped = await wait_for(b1, "for room b")
            assert "for room a" not in skipped  # room a's output stays in room a
        await wait_gone(pa[0], pb[0], timeout=5)


@trio_test(30)
async def test_maxforks_counts_each_room_process(tmp_path):
    rooms = tmp_path / "rooms"
    rooms.mkdir()
    for name in ("a.py", "b.py"):
        script(rooms, name, HUB)
    async with serving(make_config(dir=str(rooms), shared=True, maxforks=1)) as (state, url):
        port = state.addresses[0][1]
        async with open_websocket_url(url + "/a.py") as a1:
            pid = (await pid_of(a1))[0]
            async with open_websocket_url(url + "/a.py") as a2:  # the same process: no new slot
                assert (await pid_of(a2))[0] == pid
                head = await response_head(port, upgrade_request("/b.py"))
                assert head.startswith(b"HTTP/1.1 429 "), head
                assert b"Retry-After: 1" in head
        await wait_gone(pid, timeout=5)
        await wait_slots_free(state, 5)  # its slot is given back once it is reaped
        async with open_websocket_url(url + "/b.py") as b1:
            assert (await pid_of(b1))[4] == "/b.py"


@trio_test(30)
async def test_control_api_lists_every_client_with_the_shared_pid(tmp_path):
    handler = script(tmp_path, "hub.py", HUB)
    async with serving(make_config(handler, shared=True, control="127.0.0.1:0")) as (state, url):
        port = int(state.shared.control_url.rsplit(":", 1)[1])
        async with open_websocket_url(url + "/x") as a, open_websocket_url(url + "/y") as b, \
                open_websocket_url(url + "/z") as c:
            for name, ws in (("a", a), ("b", b), ("c", c)):
                await join(ws, name)
            pid = (await pid_of(a))[0]
            async with await Client.open(port) as client:
                reply = await client.request("GET", "/connections")
                listing = json.loads(reply.body)
                assert sorted(item["path"] for item in listing) == ["/x", "/y", "/z"]
                assert [item["pid"] for item in listing] == [pid] * 3
                # a push reaches one client only, as in per-connection mode
                target = next(item["id"] for item in listing if item["path"] == "/y")
                reply = await client.request("POST", f"/connections/{target}", [("Content-Type", "text/plain")], b"just b")
                assert reply.status == 204
            await wait_for(b, "just b")
            await a.send_message("echo after")
            assert "just b" not in await wait_for(a, "after")


def test_sigterm_closes_every_client_1001_and_stops_the_process(tmp_path):
    handler = script(tmp_path, "hub.py", HUB)
    server = WsexecProcess("--shared", str(handler))
    log = drain_output(server)
    result = {}

    async def main() -> None:
        with trio.fail_after(20):
            async with open_websocket_url(server.url + "/") as a, open_websocket_url(server.url + "/") as b, \
                    open_websocket_url(server.url + "/") as c:
                for name, ws in (("a", a), ("b", b), ("c", c)):
                    await join(ws, name)
                result["pid"], result["child"], *_ = await pid_of(a)
                server.proc.send_signal(signal.SIGTERM)
                result["codes"] = [(await closed(ws))[:2] for ws in (a, b, c)]

    try:
        trio.run(main)
        assert server.proc.wait(10) == 0
    finally:
        server.stop()
    assert result["codes"] == [(1001, "server shutting down")] * 3
    assert not alive(result["pid"]) and not alive(result["child"]), log()[-2000:]


# --- --tagged, --topics, --binary ------------------------------------------------------------

# --tagged: announces joins (with what the env says) and leaves to everyone;
# a client's "to ID TEXT" goes to ID, "all TEXT" to everyone, "close ID CODE
# REASON" closes ID, "raw TEXT" prints a line without a tab.
TAGGED = """
    import json, sys
    for line in sys.stdin:
        line = line.rstrip("\\n")
        if line.startswith("+"):
            cid, env = line[1:].split("\\t", 1)
            env = json.loads(env)
            print("*\\tjoin %s %s %s" % (cid, env["WSEXEC_CONNECTION_ID"] == cid, env["QUERY_STRING"]))
            print("%s\\tyou are %s" % (cid, cid), flush=True)
        elif line.startswith("-"):
            cid, code = line[1:].split("\\t")
            print("*\\tleave %s %s" % (cid, code), flush=True)
        else:
            cid, message = line.split("\\t", 1)
            word, _, rest = message.partition(" ")
            if word == "to":
                target, text = rest.split(" ", 1)
                print("%s\\t%s" % (target, text), flush=True)
            elif word == "all":
                print("*\\t%s says %s" % (cid, rest), flush=True)
            elif word == "close":
                target, reason = rest.split(" ", 1)
                print("-%s\\t%s" % (target, reason), flush=True)
            elif word == "raw":
                print(rest, flush=True)
"""


async def tagged_join(ws, query: str) -> str:
    """Its id, from the join line and the line addressed to it."""
    with trio.fail_after(5):
        while True:
            message = await ws.get_message()
            if message.startswith("you are "):
                return message.split()[2]


@trio_test(30)
async def test_tagged_joins_addressing_closing_and_leaves(tmp_path):
    handler = script(tmp_path, "tagged.py", TAGGED)
    async with serving(make_config(handler, shared=True, tagged=True)) as (state, url):
        port = state.addresses[0][1]
        async with open_websocket_url(url + "/?name=alice") as alice:
            a = await tagged_join(alice, "name=alice")
            async with open_websocket_url(url + "/?name=bob") as bob:
                b = await tagged_join(bob, "name=bob")
                await wait_for(alice, f"join {b} True name=bob")  # the env, with its id, as JSON
                await alice.send_message(f"to {b} hello bob")
                assert await bob.get_message() == "hello bob"
                await alice.send_message("to nosuchid hello?")  # an unknown id: dropped
                await alice.send_message("raw no tab at all")  # no tab: dropped
                await alice.send_message("all hi")
                for ws in (alice, bob):  # nothing came before it
                    assert await ws.get_message() == f"{a} says hi"

                await bob.send_message(f"close {b} 4001 bye bob")
                code, reason, _ = await closed(bob)
                assert (code, reason) == (4001, "bye bob")
            assert await alice.get_message() == f"leave {b} 4001"  # the code bob was closed with

            async with open_websocket_url(url + "/?name=carol") as carol:
                c = await tagged_join(carol, "name=carol")
                await wait_for(alice, f"join {c} True name=carol")
                await carol.aclose(code=4321, reason="carol out")
            assert await alice.get_message() == f"leave {c} 4321"

            stream, _ = await raw_upgrade(port, "/?name=dave")  # vanishes: no close frame
            with trio.fail_after(5):
                message = await alice.get_message()
            assert message.startswith("join ") and message.endswith(" True name=dave")
            d = message.split()[1]
            await stream.aclose()
            assert await alice.get_message() == f"leave {d} 1006"


# "pub TOPIC TEXT" prints "TOPIC TEXT", as mosquitto_sub -v does.
PUBLISHER = """
    import sys
    for line in sys.stdin:
        word, _, rest = line.rstrip("\\n").partition(" ")
        if word == "pub":
            print(rest, flush=True)
"""


@trio_test(30)
async def test_topics_send_each_client_the_lines_it_asked_for(tmp_path):
    handler = script(tmp_path, "pub.py", PUBLISHER)
    published = [
        "sensors/kitchen/temp 21.5",
        "sensors/garage/door open",
        "alerts fire in the kitchen",
        "sensors/kitchen/humidity 40",
        "weather/out 12",
    ]
    queries = {
        "all": "",  # no pattern: every line
        "sensors": "?topic=sensors/*",  # '*' matches '/' too
        "kitchen": "?topic=sensors/kitchen/*&topic=alerts",
        "door": "?topic=sensors/garage/door",
        "none": "?topic=nothing/*",
    }
    expected = {
        "all": published,
        "sensors": [published[0], published[1], published[3]],
        "kitchen": [published[0], published[2], published[3]],
        "door": [published[1]],
        "none": [],
    }
    async with serving(make_config(handler, shared=True, topics=True)) as (state, url):
        async with AsyncExitStack() as stack:
            sockets = {}
            for name, query in queries.items():
                # every client with patterns also takes 'sync', to know when the lines are all out
                target = "/" + query + ("&topic=sync" if query else "")
                sockets[name] = await stack.enter_async_context(open_websocket_url(url + target))
            await wait_until(lambda: sum(len(h.members) for h in state.backend.hubs.values()) >= len(queries), 5,
                             "every client in a hub")
            for line in published + ["sync done"]:
                await sockets["all"].send_message("pub " + line)
            for name, ws in sockets.items():
                got = await wait_for(ws, "sync done")
                assert got == expected[name], name


@trio_test(30)
async def test_binary_reads_go_to_every_client(tmp_path):
    handler = script(tmp_path, "echo.py", """
        import os
        while True:
            data = os.read(0, 65536)
            if not data:
                break
            os.write(1, data)
    """)
    async with serving(make_config(handler, shared=True, binary=True)) as (state, url):
        async with open_websocket_url(url + "/") as a, open_websocket_url(url + "/") as b:
            for ws, mark in ((a, b"A"), (b, b"B")):  # joined once its own bytes come back
                await ws.send_message(mark)
                with trio.fail_after(5):
                    while await ws.get_message() != mark:
                        pass
            with trio.fail_after(5):
                assert await a.get_message() == b"B"  # b's bytes reached a too
            payload = bytes(range(256)) * 4096  # 1 MiB, not UTF-8
            await a.send_message(payload)
            for ws in (a, b):
                got = b""
                with trio.fail_after(10):
                    while len(got) < len(payload):
                        message = await ws.get_message()
                        assert isinstance(message, bytes)  # binary frames
                        got += message
                assert got == payload


# --- examples/chat-tagged.sh ---------------------------------------------------------------


@trio_test(30)
async def test_chat_tagged_example_announces_and_relays():
    chat = ROOT / "examples" / "chat-tagged.sh"
    assert chat.read_text().startswith("#!/bin/sh\n") and len(chat.read_text().splitlines()) < 20
    with WsexecProcess("--shared", "--tagged", str(chat)) as server:
        async with open_websocket_url(server.url + "/") as alice:
            joined = await alice.get_message()
            assert joined.startswith("* ") and joined.endswith(" joined")
            a = joined.split()[1]
            async with open_websocket_url(server.url + "/") as bob:
                bob_joined = await bob.get_message()
                b = bob_joined.split()[1]
                assert bob_joined == f"* {b} joined" and b != a
                assert await alice.get_message() == bob_joined
                await alice.send_message("hello bob")
                for ws in (alice, bob):
                    assert await ws.get_message() == f"{a}: hello bob"
                await bob.send_message("tabs\tand \\n stay")
                for ws in (alice, bob):
                    assert await ws.get_message() == f"{b}: tabs\tand \\n stay"
            with trio.fail_after(5):
                assert await alice.get_message() == f"* {b} left"


# --- the real Mosquitto ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_mosquitto_reaches_the_matching_clients_of_two_instances():
    """examples/deploy/mosquitto.conf: one broker, two wsexec each running one
    mosquitto_sub -v for all its clients; one publish reaches the matching
    clients of both."""
    port = free_port()
    # Started as root, mosquitto drops to the user mosquitto: the file must be readable by it.
    work = Path(tempfile.mkdtemp(prefix="wsexec-mosquitto-"))
    work.chmod(0o755)
    conf = work / "mosquitto.conf"
    conf.write_text((ROOT / "examples" / "deploy" / "mosquitto.conf").read_text().replace("@PORT@", str(port)))
    conf.chmod(0o644)
    broker_log = open(work / "broker.log", "wb")
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=broker_log, stderr=subprocess.STDOUT)
    servers: List[WsexecProcess] = []
    pids: set = set()  # the mosquitto_sub processes, one per instance
    try:
        deadline = time.monotonic() + 10
        while True:
            assert broker.poll() is None, (work / "broker.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not listen"
                time.sleep(0.05)
        sub = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-v", "-t", "sensors/#"]
        for _ in range(2):
            servers.append(WsexecProcess("--shared", "--topics", "--control", "127.0.0.1:0", *sub))
        for server in servers:
            drain_output(server)

        async def main() -> dict:
            got = {}
            async with AsyncExitStack() as stack:
                clients = {}
                for name, server, query in (("kitchen@1", servers[0], "?topic=sensors/kitchen/*"),
                                            ("garage@1", servers[0], "?topic=sensors/garage/*"),
                                            ("sensors@2", servers[1], "?topic=sensors/*"),
                                            ("other@2", servers[1], "?topic=other/*&topic=sensors/kitchen")):
                    clients[name] = await stack.enter_async_context(open_websocket_url(server.url + "/" + query))
                with trio.fail_after(10):
                    # every client joined its instance's hub (the control API shows its pid) ...
                    for server in servers:
                        while True:
                            async with await Client.open(server.control_port) as http:
                                listing = json.loads((await http.request("GET", "/connections")).body)
                            if len(listing) == 2 and all(item["pid"] for item in listing):
                                pids.update(item["pid"] for item in listing)
                                break
                            await trio.sleep(0.05)
                    # ... and both mosquitto_sub have subscribed
                    while (work / "broker.log").read_bytes().count(b"Received SUBSCRIBE") < 2:
                        await trio.sleep(0.05)
                await trio.to_thread.run_sync(lambda: subprocess.run(
                    ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", "sensors/kitchen/temp", "-m", "21.5"],
                    check=True, timeout=10))
                for name in ("kitchen@1", "sensors@2"):
                    with trio.fail_after(5):
                        got[name] = await clients[name].get_message()
                for name in ("garage@1", "other@2"):
                    with trio.move_on_after(0.5):
                        got[name] = await clients[name].get_message()
            return got

        got = trio.run(main)
        assert got == {"kitchen@1": "sensors/kitchen/temp 21.5", "sensors@2": "sensors/kitchen/temp 21.5"}
        assert len(pids) == 2
        for server in servers:
            assert server.stop() == 0
        assert not any(alive(pid) for pid in pids)
    finally:
        for server in servers:
            server.stop()
        broker.terminate()
        try:
            broker.wait(10)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait(5)
        broker_log.close()
        shutil.rmtree(work, ignore_errors=True)


# Reads nothing until the file GO exists, then tells each line it got: "whole
# a", "hello", or "torn LENGTH".
LATE_READER = """
    import os, sys, time
    go = sys.argv[1]
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.01)
    for line in sys.stdin.buffer:
        line = line.rstrip(b"\\n")
        if line == b"hello":
            print("hello", flush=True)
        elif line == b"a" * 1_000_000:
            print("whole a", flush=True)
        else:
            print("torn", len(line), flush=True)
"""


@trio_test(30)
async def test_a_client_leaving_mid_line_leaves_no_torn_line_on_stdin(tmp_path):
    """The process is not reading; a's long line is half written when a
    vanishes; b's line must not be glued to a's half."""
    go = tmp_path / "go"
    handler = script(tmp_path, "late.py", LATE_READER)
    async with serving(make_config(handler, str(go), shared=True)) as (state, url):
        port = state.addresses[0][1]
        async with open_websocket_url(url + "/") as b:
            assert await b.get_message() == "ready"
            a, _ = await raw_upgrade(port)
            await wait_until(lambda: sum(len(h.members) for h in state.backend.hubs.values()) >= 2, 5,
                             "both clients in the hub")
            await a.send_all(client_frame(0x1, b"a" * 1_000_000))  # more than the socket pair holds
            await trio.sleep(0.5)  # a's line is being written, the process not reading
            await b.send_message("hello")
            a.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            await a.aclose()  # vanishes (RST)
            await trio.sleep(2)  # wsexec notices within its stall check (1 s)
            go.touch()
            got = []
            with trio.move_on_after(10):
                while "hello" not in got:
                    got.append(await b.get_message())
            assert got and all(line in ("hello", "whole a") for line in got), got
