"""Origin checks against cross-site WebSocket hijacking (RFC 6455 section 10.2)."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

from .syntax import split_host

DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def parse_origin(origin: str) -> Optional[Tuple[str, str, str]]:
    """'https://Example.com' -> ('https', 'example.com', '443'); None if not a URL origin."""
    scheme, sep, rest = origin.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS or not rest or "/" in rest.rstrip("/"):
        return None
    host, port = split_host(rest.rstrip("/"), DEFAULT_PORTS[scheme])
    return scheme, host.lower(), port


def entry_matches(entry: str, origin: Tuple[str, str, str]) -> bool:
    """An --origin entry is 'host', 'host:port' or 'scheme://host[:port]'."""
    scheme, host, port = origin
    if "://" in entry:
        wanted = parse_origin(entry)
        return wanted == origin
    name, _, want_port = entry.lower().partition(":")
    if name.startswith("[") or entry.count(":") > 1:  # IPv6 literal
        name, want_port = split_host(entry.lower(), 0)
        want_port = "" if want_port == "0" else want_port
    return name == host and (not want_port or want_port == port)


def origin_allowed(
    origin: Optional[str], host: Optional[str], origins: Sequence[str], sameorigin: bool, tls: bool
) -> bool:
    if not origins and not sameorigin:
        return True
    if origin is None:
        # Browsers always send Origin; a client without one (curl, a native
        # program) is no cross-site page, but an explicit list is a whitelist.
        return not origins
    parsed = parse_origin(origin)
    if parsed is None:  # 'null', 'file://', garbage
        return False
    if sameorigin:
        want_host, want_port = split_host(host, 443 if tls else 80)
        return (want_host.lower(), want_port) == parsed[1:]
    return any(entry_matches(entry, parsed) for entry in origins)
