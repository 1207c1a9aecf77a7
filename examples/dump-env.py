#!/usr/bin/env python3
"""Print every environment variable this handler got, one NAME=value a line, sorted; then exit.

Python 3.7+ started with the C locale (wsexec passes no LANG by default)
adds LC_CTYPE itself (PEP 538), so it shows up here but not in dump-env.sh.
"""
import os
import sys

for line in sorted(f"{name}={value}" for name, value in os.environ.items()):
    print(line)
sys.stdout.flush()
