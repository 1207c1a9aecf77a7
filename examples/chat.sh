#!/bin/sh
# chat.sh: a chat room of ordinary per-connection handlers. Each one posts what
# its client says to every connection through wsexec's control API.
#   wsexec --port 8080 --control unix:/tmp/chat.ctl examples/chat.sh
# (or --control 127.0.0.1:9300). Needs curl.
case "$WSEXEC_CONTROL" in
    unix:*) api=http://wsexec; set -- --unix-socket "${WSEXEC_CONTROL#unix:}" ;;
    *) api=$WSEXEC_CONTROL; set -- ;;
esac
say() {
    curl -s -o /dev/null "$@" -X POST -H 'Content-Type: text/plain' --data-binary @- "$api/broadcast"
}
me=$WSEXEC_CONNECTION_ID
printf '* %s joined' "$me" | say "$@"
while IFS= read -r line; do
    printf '%s: %s' "$me" "$line" | say "$@"
done
printf '* %s left' "$me" | say "$@"
