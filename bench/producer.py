#!/usr/bin/env python3
"""The shared process of S7 and S8 (bench/run.py): numbered lines on stdout.

    producer.py RATE [SECONDS [wait]]  S7: RATE lines/s, paced on the monotonic clock;
                                  with `wait`, from the first SIGUSR1 on
    producer.py signal [SECONDS]  S8: one line each time SIGUSR1 arrives

Every line is 64 bytes before its newline: a 10-digit sequence number from 0,
a space, then padding. Each line is flushed on its own. Clients count loss
from gaps in the numbers. The process ends after SECONDS (default 300) or
when its stdout is closed, so it never outlives a run by much even where the
server keeps it (websocat).

Pacing: line i is due at start + i / RATE. A producer held back (a full pipe:
wsexec's backpressure) catches up on what is due, at most one second's worth
(beyond that its schedule moves on, no number skipped), as a real source with
a buffer would.
"""
from __future__ import annotations

import signal
import sys
import time

SIZE = 64


def line(seq: int) -> bytes:
    return (b"%010d " % seq).ljust(SIZE, b"x") + b"\n"


def paced(out, rate: float, seconds: float, wait: bool) -> None:
    end = time.monotonic() + seconds
    if wait:  # until SIGUSR1 (the harness has connected every client)
        go = []
        signal.signal(signal.SIGUSR1, lambda signum, frame: go.append(1))
        while not go and time.monotonic() < end:
            time.sleep(0.01)
    start = time.monotonic()
    seq = 0
    while True:
        now = time.monotonic()
        if now >= end:
            return
        due = int((now - start) * rate)
        if due - seq > rate:  # over a second behind: move the schedule, keep the numbers
            start = now - (seq + rate) / rate
            due = seq + int(rate)
        while seq < due:
            out.write(line(seq))
            out.flush()
            seq += 1
        # a tick of at least 1 ms: at 20,000 lines/s about 20 lines a tick
        time.sleep(min(0.1, max(0.001, start + (seq + 1) / rate - time.monotonic())))


def on_signal(out, seconds: float) -> None:
    # The handler is set before anything else: the harness waits for SIGUSR1
    # to show in SigCgt (/proc/PID/status) before it sends one, so none can
    # kill us. It prints at once: a signal interrupts the sleep below.
    seq = 0

    def emit(signum, frame) -> None:
        nonlocal seq
        out.write(line(seq))
        out.flush()
        seq += 1

    signal.signal(signal.SIGUSR1, emit)
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "1000"
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 300.0
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # stdout closed: end quietly
    out = sys.stdout.buffer
    try:
        if mode == "signal":
            on_signal(out, seconds)
        else:
            paced(out, float(mode), seconds, sys.argv[3:4] == ["wait"])
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
