"""HTTP grammar shared by every part of wsexec: tokens, Host values, status
phrases, the Date header and response heads. Pure: no I/O."""

from __future__ import annotations

import re
import time
from http import HTTPStatus
from typing import Iterable, List, Optional, Tuple

Header = Tuple[str, str]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def is_token(name: str) -> bool:
    """RFC 9110 section 5.6.2: token = 1*tchar."""
    return _TOKEN.fullmatch(name) is not None


def header_tokens(value: Optional[str]) -> List[str]:
    """A comma-separated header value as lower-case tokens."""
    return [t.strip().lower() for t in (value or "").split(",")]


def split_host(host: Optional[str], default_port: int) -> Tuple[str, str]:
    """'example.com:8080' -> ('example.com', '8080'); '[::1]' -> ('::1', '80')."""
    if not host:
        return "", str(default_port)
    host = host.strip()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.partition(":")
    if not port.isdigit():
        port = str(default_port)
    return name, port


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def imf_fixdate(seconds: float) -> str:
    """RFC 9110 section 5.6.7: 'Sun, 06 Nov 1994 08:49:37 GMT' (English
    names whatever the locale)."""
    t = time.gmtime(seconds)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


_date_second = -1
_date_text = ""


def http_date(now: Optional[float] = None) -> str:
    """RFC 9110 section 5.6.7 IMF-fixdate, made once per second."""
    global _date_second, _date_text
    second = int(time.time() if now is None else now)
    if second != _date_second:
        _date_second, _date_text = second, imf_fixdate(second)
    return _date_text


def render_head(status: int, headers: Iterable[Header], close: bool = False) -> bytes:
    """A response head with Date (RFC 9110 section 6.6.1: an origin server
    with a clock sends it; one a CGI script gave is kept instead) and, when
    asked, Connection: close."""
    lines = [f"HTTP/1.1 {status} {phrase(status)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if not any(line[:5].lower() == "date:" for line in lines):
        lines.insert(1, f"Date: {http_date()}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
