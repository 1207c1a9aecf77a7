#!/usr/bin/env python3
"""A live binary stream for every viewer: one shared process (wsexec --shared
--binary) writes 64x64 grey frames, 10 a second; each read of its output goes
to every browser as a binary message. Frames are 4096 bytes, but a message
may hold part of one or several: the page reassembles them, as a video
player (jsmpeg over MPEG-TS) would.

    wsexec --port 8080 --shared --binary --staticdir examples/noise examples/noise/producer.py
    then open http://localhost:8080/
"""
import math
import sys
import time

SIDE = 64
out = sys.stdout.buffer
t = 0.0
while True:
    frame = bytearray(SIDE * SIDE)
    for y in range(SIDE):
        for x in range(SIDE):
            frame[y * SIDE + x] = int(127 + 127 * math.sin(x / 6 + t) * math.cos(y / 5 - t))
    out.write(frame)
    out.flush()
    t += 0.2
    time.sleep(0.1)
