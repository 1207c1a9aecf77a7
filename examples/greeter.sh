#!/bin/sh
# Answer each line (each client message) with a greeting; exit 0 when stdin ends.
# printf, not echo: some shells' echo would interpret backslashes in the name.
while IFS= read -r name; do
    printf 'Hello, %s!\n' "$name"
done
exit 0
