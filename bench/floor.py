"""The floor: the least a trio server can do for one S4 session. Not a product.

    python3 bench/run.py --scenarios S4 --wsexec-cmd "python3 bench/floor.py"
    python3 bench/run.py --scenarios S4 --wsexec-cmd "python3 bench/floor.py --spawner"

It takes run.py's arguments (--port P --address A COMMAND), answers every
connection with a canned 101 (no request checks), starts COMMAND inline with
os.posix_spawn (a vfork; with --spawner, on wsexec's spawner thread), echoes lines both ways for short unfragmented
frames only, answers the client's close and reaps the child. No environment
beyond three variables, no limits, no logging, no backpressure, no timeouts.
What it costs per connection is the CPU any trio server must pay for S4 on
the machine; bench/RESULTS.md (finding 18) compares wsexec with it.
"""

from __future__ import annotations

import argparse
import base64
import gc
import hashlib
import os
import shutil
import signal
import socket

import trio

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
exited: dict[int, trio.Event] = {}
spawner = None  # wsexec.proc.spawn.Spawner with --spawner


async def reap() -> None:
    with trio.open_signal_receiver(signal.SIGCHLD) as signals:
        async for _ in signals:
            while True:
                try:
                    pid, _ = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                event = exited.pop(pid, None)
                if event is not None:
                    event.set()


async def recv(sock: socket.socket) -> bytes:
    while True:
        try:
            return sock.recv(65536)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)


def unmask_first(data: bytes) -> tuple[int, bytes, bytes]:
    """(opcode, payload, rest) of a masked frame with a payload under 126 bytes."""
    n = data[1] & 0x7F
    key, payload = data[2:6], data[6:6 + n]
    return data[0] & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(payload)), data[6 + n:]


async def session(client: socket.socket, program: str) -> None:
    head = b""
    while b"\r\n\r\n" not in head:
        data = await recv(client)
        if not data:
            client.close()
            return
        head += data
    key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "127.0.0.1"}
    if spawner is not None:
        pid = await spawner.spawn([program], env, theirs.fileno(), theirs.fileno())
    else:
        pid = os.posix_spawn(program, [program], env, setpgroup=0,
                             file_actions=[(os.POSIX_SPAWN_DUP2, theirs.fileno(), 0),
                                           (os.POSIX_SPAWN_DUP2, theirs.fileno(), 1)])
    theirs.close()
    done = exited[pid] = trio.Event()
    client.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")

    async def output() -> None:
        while True:
            data = await recv(ours)
            if not data:
                return
            for line in data.splitlines():
                client.send(bytes((0x81, len(line))) + line)

    buffered = head.split(b"\r\n\r\n", 1)[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output)
        while True:
            if len(buffered) < 6 or len(buffered) < 6 + (buffered[1] & 0x7F):
                buffered += await recv(client)
                continue
            opcode, payload, buffered = unmask_first(buffered)
            if opcode == 8:
                client.send(bytes((0x88, len(payload))) + payload)
                ours.shutdown(socket.SHUT_WR)
                break
            ours.send(payload + b"\n")
    client.close()
    ours.close()
    await done.wait()


async def main(port: int, address: str, program: str) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(1024)
    listener.setblocking(False)
    gc.freeze()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reap)
        print(f"listening on ws://{address}:{port}/", flush=True)
        while True:
            try:
                client, _ = listener.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(listener)
                continue
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            nursery.start_soon(session, client, program)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--address", default="127.0.0.1")
    ap.add_argument("--spawner", action="store_true", help="spawn on wsexec's spawner thread")
    ap.add_argument("command")
    args = ap.parse_args()
    if args.spawner:
        from wsexec.proc.spawn import Spawner

        spawner = Spawner()
    try:
        trio.run(main, args.port, args.address, shutil.which(args.command) or args.command)
    except KeyboardInterrupt:
        pass
