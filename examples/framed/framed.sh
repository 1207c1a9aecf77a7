# framed.sh: read and write --framed records from sh. Source it:  . ./framed.sh
#
#   frame_read         reads one record: $type (t or b, or c: the connection
#                      has ended, the payload says how: CODE REASON) and
#                      $length; the payload is left on stdin, read it with
#                      frame_payload
#   frame_payload      the payload to stdout (then its newline is skipped)
#   frame_line         the payload of a one-line text message, into $line
#   frame_send T DATA  sends DATA (no NUL bytes: sh strings hold none) as type T
#   frame_close CODE REASON   closes the connection with CODE (4000-4999)
#
# Byte counts are taken in the C locale, where ${#var} counts bytes.
LC_ALL=C
export LC_ALL

frame_read() { read -r type length; }
frame_payload() { head -c "$length"; head -c 1 >/dev/null; }
frame_line() { IFS= read -r line; }
frame_send() { printf '%s %d\n%s\n' "$1" "${#2}" "$2"; }
frame_close() { set -- "$1 $2"; printf 'c %d\n%s\n' "${#1}" "$1"; }
