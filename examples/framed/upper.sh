#!/bin/sh
# upper.sh: each text message back in capitals (newlines and all), each
# binary message answered with its size; "bye" closes with 4000 (--framed).
. "$(dirname "$0")/framed.sh"
while frame_read; do
    if [ "$type" = c ]; then
        exit 0  # the connection has ended; frame_payload would say how (CODE REASON)
    elif [ "$type" = b ]; then
        frame_payload >/dev/null
        frame_send t "a binary message of $length bytes"
    elif [ "$length" -eq 3 ]; then
        text=$(frame_payload; echo .)  # the dot keeps a trailing newline
        if [ "$text" = bye. ]; then
            frame_close 4000 goodbye
            exit 0
        fi
        printf 't 3\n'
        printf '%s\n' "${text%.}" | tr a-z A-Z
    else
        printf 't %s\n' "$length"  # tr keeps the length
        frame_payload | tr a-z A-Z
        echo
    fi
done
