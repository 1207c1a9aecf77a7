"""The handler chooses how its connection ends: a close code and reason of
its own, 4000-4999 (RFC 6455 section 7.4.2: "reserved for private use"), so
no handler can pose as wsexec's 1000/1009/1011 or as a registered code.

A handler asks in one of two ways, both read by the pure functions here:

    on stderr (any mode)   a line  wsexec-close CODE REASON
                           taken when the handler ends (its exit), so every
                           line it printed before still reaches the client
    framed mode            a record  c LENGTH\\nCODE REASON\\n  on stdout
                           (wsexec/proc/framing.py): the output ends there
                           and the connection closes without waiting for
                           the handler to exit (it is stopped on the ladder)

Why stderr and not an exit-status convention: an exit status has no room
for a reason, and existing handlers already exit with every status, so any
mapping would change how some of them close. A line on stderr costs no
descriptor (the pipe is there for the log) and an existing handler prints
`wsexec-close ` at the start of a stderr line only if it means it.
"""

from __future__ import annotations

from typing import Optional, Tuple

PREFIX = b"wsexec-close "  # a stderr line starting so asks for the close
LOW, HIGH = 4000, 4999
REASON_BYTES = 123  # RFC 6455 section 5.5: a close payload is at most 125 bytes, 2 of them the code

Close = Tuple[int, str]


def parse_close(text: bytes) -> Tuple[Optional[Close], str]:
    """b'4001 no such room' -> ((4001, 'no such room'), ''); a refusal ->
    (None, why). The reason is cut to 123 bytes at a character boundary,
    and bytes that are not UTF-8 become U+FFFD (a close reason is text)."""
    code_text, _, reason_bytes = text.partition(b" ")
    if not (code_text.isdigit() and len(code_text) == 4):
        given = code_text[:16].decode("ascii", "replace") or "none"
        return None, f"a close code must be 4000-4999, not {given}"
    code = int(code_text)
    if not LOW <= code <= HIGH:
        return None, f"a close code must be 4000-4999, not {code}"
    reason = reason_bytes.decode("utf-8", "replace").encode("utf-8")[:REASON_BYTES].decode("utf-8", "ignore")
    return (code, reason), ""


def stderr_close(line: bytes) -> Optional[Tuple[Optional[Close], str]]:
    """A stderr line (without its newline) that asks for a close: what
    parse_close makes of it; None for any other line."""
    if not line.startswith(PREFIX):
        return None
    return parse_close(line[len(PREFIX):])
