#!/bin/sh
# A plain CGI script behind wsexec --callback: one run per event, as for any
# web request (lighttpd, boa, busybox httpd...). HTTP_CONNECTION_ID names the
# WebSocket connection; what the script prints after its header goes back to
# that client, and only to it.
case "$REQUEST_METHOD" in
GET)    # a client connects: let it in (any other Status: turns it away)
        printf 'Content-Type: text/plain\r\n\r\nok' ;;
POST)   # a message, on stdin: the answer is the reply
        printf 'Content-Type: text/plain\r\n\r\n'
        printf '%s says: ' "$HTTP_CONNECTION_ID"
        head -c "${CONTENT_LENGTH:-0}" | tr 'a-z' 'A-Z' ;;
DELETE) # the connection ended, with this close code
        echo "$(date +%s) $HTTP_CONNECTION_ID $HTTP_WEBSOCKET_CLOSE_CODE" >> /tmp/ws-cgi.log
        printf 'Status: 204 No Content\r\n\r\n' ;;
esac
