#!/bin/sh
# echo.sh: every message back as it came, text or binary, newlines and all
# (wsexec --framed). A record is "TYPE LENGTH\n", LENGTH bytes, "\n": read
# the header line, then copy the payload and its newline with GNU head -c,
# which reads exactly the bytes asked for. A "c" record (how the connection
# ended: CODE REASON) comes last.
while read -r type length && [ "$type" != c ]; do
    printf '%s %s\n' "$type" "$length"
    head -c "$((length + 1))"
done
