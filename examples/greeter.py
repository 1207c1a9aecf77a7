#!/usr/bin/env python3
"""Answer each line (each client message) with a greeting; exit 0 when stdin ends."""
import sys

for line in sys.stdin:
    name = line.rstrip("\n")
    # flush=True: stdout is a socket, so without it replies wait in a buffer.
    print(f"Hello, {name}!", flush=True)
