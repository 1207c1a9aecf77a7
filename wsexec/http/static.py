"""--staticdir: files by URL path, with validators and byte ranges.

Resolving a path is pure (strings and the file system, no sockets); choosing
the answer (200, 206, 304, 416) is pure over header values; only `serve`
does I/O, and it sends the file with sendfile(2) in bounded pieces, so a large
file is never read into memory.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from mimetypes import guess_type
from typing import TYPE_CHECKING, Optional, Tuple, Union

import trio

from .routing import decode_path
from .syntax import imf_fixdate
from ..net.streams import Socket

if TYPE_CHECKING:
    from .exchange import Exchange

INDEX = "index.html"
# A file up to this size goes out in the same write as the head.
SMALL = 64 * 1024
CHUNK = 1 << 18  # bytes per sendfile call, between checks for other tasks


@dataclass(frozen=True)
class Found:
    path: str  # real path, inside the root
    name: str  # the name the URL gives it: its type comes from this, not a symlink's target


@dataclass(frozen=True)
class AddSlash:
    location: str  # the same URL path with a '/' after the directory name


def resolve(root: str, url_path: str) -> Union[Found, AddSlash, None]:
    """The file a URL path names under root, or None (404).

    decode_path refuses '..', '.', dot-files, encoded '/' and NUL; the real
    path (symlinks followed) must still be root or below it, so a symlink that
    leaves the root is refused too. A directory is served by its index.html;
    without a trailing '/' it is first redirected, so relative links work.
    """
    segments = decode_path(url_path)
    if segments is None:
        return None
    asked = os.path.join(root, *segments)
    real = inside(root, asked)
    if real is None:
        return None
    try:
        mode = os.stat(real).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISDIR(mode):
        if not url_path.endswith("/"):
            return AddSlash(url_path + "/")
        asked = os.path.join(asked, INDEX)
        real = inside(root, asked)
        if real is None:
            return None
        try:
            mode = os.stat(real).st_mode
        except OSError:
            return None
    return Found(real, os.path.basename(asked)) if stat.S_ISREG(mode) else None


def inside(root: str, path: str) -> Optional[str]:
    real = os.path.realpath(path)
    return real if real == root or real.startswith(root + os.sep) else None


def content_type(path: str) -> str:
    kind, encoding = guess_type(path)
    if kind is None or encoding is not None:  # x.tar.gz is not a tar to a browser
        return "application/octet-stream"
    if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
        return kind + "; charset=utf-8"
    return kind


def etag_of(st: os.stat_result) -> str:
    return f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'


# --- choosing the answer (RFC 9110 sections 13 and 14) ------------------------------

@dataclass(frozen=True)
class Plan:
    status: int  # 200, 206, 304 or 416
    start: int = 0
    length: int = 0  # bytes of the file to send


def plan(
    method: str,
    size: int,
    mtime: int,
    etag: str,
    if_none_match: Optional[str] = None,
    if_modified_since: Optional[str] = None,
    range_: Optional[str] = None,
    if_range: Optional[str] = None,
) -> Plan:
    # RFC 9110 13.2.2: If-None-Match first; If-Modified-Since only without it.
    if if_none_match is not None:
        if none_match_fails(if_none_match, etag):
            return Plan(304)
    elif if_modified_since is not None:
        since = http_date(if_modified_since)
        if since is not None and mtime <= since:
            return Plan(304)
    # RFC 9110 14.2: "GET is the only method for which range handling is defined."
    if method != "GET" or range_ is None or not if_range_holds(if_range, etag, mtime):
        return Plan(200, 0, size)
    span = parse_range(range_, size)
    if span is None:  # not a single byte range we understand: MAY be ignored
        return Plan(200, 0, size)
    if span == ():
        return Plan(416)
    start, end = span
    return Plan(206, start, end - start + 1)


def none_match_fails(header: str, etag: str) -> bool:
    """True if If-None-Match matches (weak comparison, RFC 9110 13.1.2)."""
    if header.strip() == "*":
        return True
    tags = [t.strip() for t in header.split(",")]
    return any(t.removeprefix("W/") == etag for t in tags)


def if_range_holds(header: Optional[str], etag: str, mtime: int) -> bool:
    """RFC 9110 13.1.5: an entity tag must match strongly, a date exactly."""
    if header is None:
        return True
    header = header.strip()
    if header.startswith('"') or header.startswith("W/"):
        return header == etag
    return http_date(header) == mtime


def http_date(text: str) -> Optional[int]:
    from email.utils import parsedate_to_datetime  # conditional requests only

    try:
        return int(parsedate_to_datetime(text).timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def parse_range(header: str, size: int) -> Union[Tuple[int, int], Tuple[()], None]:
    """'bytes=a-b' | 'bytes=a-' | 'bytes=-n' -> (first, last) inclusive;
    () if unsatisfiable (answer 416); None if not one byte range (answer 200)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if first == "":
        if last == "":
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            return ()
        return (max(0, size - suffix), size - 1)
    start = int(first)
    if last != "" and int(last) < start:
        return None  # invalid syntax per RFC 9110 14.1.1: ignored
    if start >= size:
        return ()
    end = size - 1 if last == "" else min(int(last), size - 1)
    return (start, end)


# --- sending ------------------------------------------------------------------------

async def serve(ex: "Exchange", found: Found) -> None:
    request = ex.request
    try:
        # O_NONBLOCK: if a FIFO replaced the file since it was checked, open
        # must not hang; O_NOFOLLOW: nor may a symlink have replaced it.
        fd = os.open(found.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return await ex.error(404, "not found")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return await ex.error(404, "not found")
        mtime = int(st.st_mtime)
        etag = etag_of(st)
        p = plan(
            request.method, st.st_size, mtime, etag,
            request.header("if-none-match"), request.header("if-modified-since"),
            request.header("range"), request.header("if-range"),
        )
        validators = [("ETag", etag), ("Last-Modified", imf_fixdate(mtime))]
        if p.status == 304:
            return await ex.send_head(304, validators)
        if p.status == 416:
            return await ex.error(416, "range not satisfiable", (("Content-Range", f"bytes */{st.st_size}"),))
        headers = [("Content-Type", content_type(found.name)), ("Content-Length", str(p.length)),
                   ("Accept-Ranges", "bytes")] + validators
        if p.status == 206:
            headers.append(("Content-Range", f"bytes {p.start}-{p.start + p.length - 1}/{st.st_size}"))
        if request.method == "HEAD":
            await ex.send_head(p.status, headers)
        elif p.length <= SMALL:
            body = os.pread(fd, p.length, p.start)
            if len(body) < p.length:  # the file shrank under us: the promised length cannot be kept
                ex.peer.log.error("static file shrank while being sent; closing the connection")
                ex.keep = False
            await ex.send_head(p.status, headers, body)
        else:
            await ex.send_head(p.status, headers)
            await send_file(ex, fd, p.start, p.length)
    finally:
        os.close(fd)


async def send_file(ex: "Exchange", fd: int, offset: int, length: int) -> None:
    """sendfile(2) on the non-blocking socket: the kernel copies, wsexec holds
    no file data, and a full socket buffer is the backpressure."""
    if not isinstance(ex.peer.stream, Socket):  # TLS (wsexec/net/tls.py): the bytes must be encrypted
        return await copy_file(ex, fd, offset, length)
    sock = ex.peer.stream.sock
    end = offset + length
    while offset < end:
        try:
            sent = os.sendfile(sock.fileno(), fd, offset, min(CHUNK, end - offset))
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        except OSError as e:
            raise trio.BrokenResourceError(str(e)) from e
        if sent == 0:  # the file shrank under us: the promised length cannot be kept
            ex.peer.log.error("static file shrank while being sent; closing the connection")
            ex.keep = False
            return
        offset += sent
        ex.bytes_out += sent
        await trio.lowlevel.checkpoint()


async def copy_file(ex: "Exchange", fd: int, offset: int, length: int) -> None:
    """read + send_all, for streams sendfile(2) cannot write to (TLS)."""
    end = offset + length
    while offset < end:
        data = os.pread(fd, min(1 << 16, end - offset), offset)
        if not data:  # the file shrank under us
            ex.peer.log.error("static file shrank while being sent; closing the connection")
            ex.keep = False
            return
        await ex.peer.stream.send_all(data)
        offset += len(data)
        ex.bytes_out += len(data)
