#!/bin/sh
# echo.sh: every message back as it came, text or binary, newlines and all
# (wsexec --framed). A record is "TYPE LENGTH\n", LENGTH bytes, "\n": read
# the header line, then copy the payload and its newline with GNU head -c,
# which reads exactly the bytes asked for.
while read -r type length; do
    printf '%s %s\n' "$type" "$length"
    head -c "$((length + 1))"
done
