#!/usr/bin/env python3
"""Count from 1 to LIMIT (default 10), one number per second, then exit.

stdout is a socket, not a terminal, so Python buffers it: flush=True sends
each number when it is printed instead of all of them at exit.
"""
import sys
import time


def main() -> None:
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    for i in range(1, limit + 1):
        print(i, flush=True)
        if i < limit:
            time.sleep(1)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        # wsexec sends SIGINT when the client has gone: stop quietly.
        sys.exit(130)
