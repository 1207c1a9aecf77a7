#!/bin/sh
# Count from 1 to LIMIT (default 10), one number per second, then exit.
# The shell's echo writes each line at once: nothing to flush.
limit=${1:-10}
i=1
while [ "$i" -le "$limit" ]; do
    echo "$i"
    if [ "$i" -lt "$limit" ]; then
        sleep 1
    fi
    i=$((i + 1))
done
