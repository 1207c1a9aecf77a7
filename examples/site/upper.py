#!/usr/bin/env python3
"""The site's WebSocket handler: every line back in capitals."""
import sys

for line in sys.stdin:
    print(line.rstrip("\n").upper(), flush=True)
