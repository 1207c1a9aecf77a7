"""permessage-deflate (RFC 7692), for --compress: the negotiation as a pure
function of the client's offers, and the per-connection deflate and inflate.

Imported only with --compress (the connection imports it when the option is
on), so plain wsexec creates no zlib object.

Memory is the crux: a zlib compressor kept between messages (context
takeover) costs about 243 KiB at zlib's defaults (window 15 bits, memLevel 8)
and an inflater about 40 KiB, measured with RSS over 1,000 of each. So:

- With a window of W bits (--compresswindow, default 10) wsexec keeps its
  compressor's context with a W-bit window and memLevel W-7, and asks the
  client to compress with a W-bit window when its offer allows it
  (client_max_window_bits); when it does not, the client is asked not to keep
  its context (client_no_context_takeover, RFC 7692 section 7.1.1.2) and each
  message is inflated by a fresh inflater, dropped afterwards. Measured per
  connection at W=10: compressor 13.8 KiB + inflater 8.6 KiB.
- With --compresswindow 0 no context is kept either way: outgoing messages
  are compressed by one compressor per window size shared by every
  connection (each message ends with a full flush, which resets it), and
  incoming ones by an inflater made per message. Nothing is held per
  connection between messages; small messages then compress little.
- Compressors and inflaters are made on first use: a connection that never
  sends or receives a compressed message holds none.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

NAME = "permessage-deflate"
# The end of a sync flush, removed from every compressed message and put back
# before inflating (RFC 7692 section 7.2.1 and 7.2.2).
SYNC_TAIL = b"\x00\x00\xff\xff"
# zlib cannot compress with an 8-bit window (it silently uses 9), so an offer
# that limits wsexec's window to 8 bits cannot be met; inflating is done with
# at least 9 bits, which reads a stream made with 8 as well.
MIN_BITS = 9
MAX_BITS = 15
# zlib level 1: measured 4x cheaper than the default 6 on 110-byte JSON lines
# with context (2.8 against 11.9 us) for 20 bytes out instead of 18, and a
# 64 KiB log text came to 17.5 KiB instead of 14.2.
LEVEL = 1


@dataclass(frozen=True)
class Agreement:
    """What both sides agreed on for one connection."""

    server_bits: int  # wsexec compresses with this window
    client_bits: int  # wsexec inflates with this window
    server_context: bool  # wsexec keeps its compressor's context between messages
    client_context: bool  # the client keeps its own (so wsexec keeps its inflater)
    response: str  # the Sec-WebSocket-Extensions answer


Offer = Dict[str, Optional[str]]


def parse_offers(header: Optional[str]) -> List[Tuple[str, Optional[Offer]]]:
    """Sec-WebSocket-Extensions as [(extension name, parameters or None if
    the offer is malformed)], in the client's order of preference.

    RFC 7692 section 7: an offer with an unknown parameter, an invalid value
    or a parameter given twice is declined (None here), not the handshake."""
    offers: List[Tuple[str, Optional[Offer]]] = []
    for item in (header or "").split(","):
        parts = [p.strip() for p in item.split(";")]
        name = parts[0].lower()
        if not name:
            continue
        params: Optional[Offer] = {}
        for part in parts[1:]:
            key, eq, value = part.partition("=")
            key, value = key.strip().lower(), value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]  # a quoted-string value (RFC 6455 section 9.1)
            if not key or key in params or (eq and not value):  # type: ignore[operator]
                params = None
                break
            params[key] = value if eq else None  # type: ignore[index]
        offers.append((name, params))
    return offers


def window_bits(value: Optional[str]) -> Optional[int]:
    """A window-bits value: 8 to 15, no leading zero (RFC 7692 section 7.1.2); else None."""
    if value is None or not value.isdigit() or value.startswith("0") or not 8 <= int(value) <= 15:
        return None
    return int(value)


def accept(params: Offer, window: int) -> Optional[Agreement]:
    """One permessage-deflate offer met with --compresswindow `window` (0: no
    context either way, else 9-15), or None if it is invalid or cannot be met."""
    allowed = {"server_no_context_takeover", "client_no_context_takeover",
               "server_max_window_bits", "client_max_window_bits"}
    if set(params) - allowed:
        return None
    for flag in ("server_no_context_takeover", "client_no_context_takeover"):
        if flag in params and params[flag] is not None:
            return None
    server_limit = MAX_BITS
    if "server_max_window_bits" in params:
        offered = window_bits(params["server_max_window_bits"])
        if offered is None or offered < MIN_BITS:
            return None  # invalid, or an 8-bit window zlib cannot compress with
        server_limit = offered
    client_allows = "client_max_window_bits" in params
    client_limit = MAX_BITS
    if client_allows and params["client_max_window_bits"] is not None:
        offered = window_bits(params["client_max_window_bits"])
        if offered is None:
            return None
        client_limit = offered
    answer = [NAME]
    # wsexec's side: its context is kept unless the client or --compresswindow 0
    # says otherwise; a smaller window may always be used (section 7.1.2.1).
    server_context = window > 0 and "server_no_context_takeover" not in params
    server_bits = min(server_limit, window or MAX_BITS)
    if not server_context:
        answer.append("server_no_context_takeover")
    # The client's side: its window can be bounded only if it allows
    # (client_max_window_bits in the offer); otherwise, to keep the memory
    # bound, it is asked not to keep its context (section 7.1.1.2).
    client_context = "client_no_context_takeover" not in params and window > 0
    client_bits = client_limit
    if client_context and client_allows:
        client_bits = min(client_limit, window)
    elif client_context and window < MAX_BITS:
        client_context = False
    if not client_context:
        answer.append("client_no_context_takeover")
    if "server_max_window_bits" in params or server_bits < MAX_BITS:
        answer.append(f"server_max_window_bits={server_bits}")
    if client_context and client_allows:
        answer.append(f"client_max_window_bits={client_bits}")
    return Agreement(server_bits, max(client_bits, MIN_BITS), server_context, client_context, "; ".join(answer))


def negotiate(header: Optional[str], window: int) -> Optional[Agreement]:
    """The first permessage-deflate offer that is valid and can be met, or
    None: then the extension is simply not used (never a failed handshake)."""
    for name, params in parse_offers(header):
        if name == NAME and params is not None:
            agreement = accept(params, window)
            if agreement is not None:
                return agreement
    return None


def mem_level(bits: int) -> int:
    """zlib's memLevel for a window: its default ratio (15 bits -> 8), at least 1."""
    return max(1, bits - 7)


# One compressor per window size for connections without context takeover,
# shared by all of them: a message is compressed in one call, with no await,
# and the full flush that ends it resets the compressor for the next.
SHARED: Dict[int, "zlib._Compress"] = {}


class Deflate:
    """One connection's deflate and inflate, made on first use."""

    __slots__ = ("agreement", "min_size", "_compressor", "_inflater")

    def __init__(self, agreement: Agreement, min_size: int) -> None:
        self.agreement = agreement
        self.min_size = min_size  # smaller messages go uncompressed (RSV1 clear); 0: every message compressed
        self._compressor = None
        self._inflater = None

    def compress(self, payload: bytes) -> Optional[bytes]:
        """The compressed payload, or None to send the message as it is."""
        if len(payload) < self.min_size:
            return None
        agreement = self.agreement
        bits = agreement.server_bits
        if agreement.server_context:
            if self._compressor is None:
                self._compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -bits, mem_level(bits))
            compressor = self._compressor
            data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
        else:
            compressor = SHARED.get(bits)
            if compressor is None:
                compressor = SHARED[bits] = zlib.compressobj(LEVEL, zlib.DEFLATED, -bits, mem_level(bits))
            data = compressor.compress(payload) + compressor.flush(zlib.Z_FULL_FLUSH)
            if len(data) - 4 >= len(payload) and self.min_size:
                return None  # no context to keep in step: send the smaller form (min_size 0: compress all)
        return data[:-4]

    def inflate(self, data: bytes, budget: int, last: bool) -> bytes:
        """A compressed frame's payload inflated, at most budget + 1 bytes of
        it (the caller closes 1009 when it gets more than budget); `last`
        ends the message. Raises ValueError on invalid data."""
        inflater = self._inflater
        if inflater is None:
            inflater = self._inflater = zlib.decompressobj(-self.agreement.client_bits)
        try:
            out = inflater.decompress(data + SYNC_TAIL if last else data, budget + 1)
        except zlib.error as e:
            raise ValueError(str(e)) from None
        if last or len(out) > budget:
            self.end_message()
        return out

    def end_message(self) -> None:
        if not self.agreement.client_context or (self._inflater is not None and self._inflater.eof):
            self._inflater = None  # made afresh for the next message
