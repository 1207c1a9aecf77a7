#!/usr/bin/env python3
# echo.py: every message back as it came (wsexec --framed), with a reader and
# a writer for records: "TYPE LENGTH\n", LENGTH bytes, "\n".
import sys

stdin, stdout = sys.stdin.buffer, sys.stdout.buffer


def read_record():
    """(type, payload) of the next record; None at the end of stdin."""
    header = stdin.readline()
    if not header:
        return None
    kind, length = header.split()
    payload = stdin.read(int(length) + 1)[:-1]  # and its newline
    return kind.decode(), payload


def write_record(kind, payload):
    stdout.write(b"%s %d\n%s\n" % (kind.encode(), len(payload), payload))
    stdout.flush()


while True:
    record = read_record()
    if record is None or record[0] == "c":  # the end: "c" says how (CODE REASON)
        break
    write_record(*record)
