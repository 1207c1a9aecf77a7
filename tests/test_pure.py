"""The pure parts, as tables: framing, lines, environment, routing, origins, config."""

import os
import struct

import pytest

from wsexec.config import parse_header, parse_size
from wsexec.http.environment import build_environment, header_variables
from wsexec.http.syntax import split_host
from wsexec.proc.lines import LineSplitter, LineTooLong
from wsexec.http.origin import origin_allowed
from wsexec.http.request import Request
from wsexec.http.routing import decode_path, route_command, route_dir
from wsexec.websocket import (
    BINARY, CLOSE, PING, PONG, TEXT, FrameReader, accept_key, encode_close,
    encode_frame, handshake_problem, truncate_utf8,
)

KEY = b"\x01\x02\x03\x04"


def masked(opcode, payload, fin=True, rsv=0, mask=True, length_override=None):
    """A client frame, built by hand from RFC 6455 section 5.2."""
    b0 = (0x80 if fin else 0) | rsv | opcode
    n = len(payload) if length_override is None else length_override
    if n < 126:
        head = bytes((b0, (0x80 if mask else 0) | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
    else:
        head = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
    if not mask:
        return head + payload
    body = bytes(b ^ KEY[i % 4] for i, b in enumerate(payload))
    return head + KEY + body


# --- frames -------------------------------------------------------------------

@pytest.mark.parametrize("frames, events", [
    ([masked(TEXT, b"hi")], [(TEXT, b"hi")]),
    ([masked(BINARY, b"\xff\x00")], [(BINARY, b"\xff\x00")]),
    ([masked(TEXT, b"")], [(TEXT, b"")]),
    ([masked(TEXT, b"a" * 200)], [(TEXT, b"a" * 200)]),
    ([masked(BINARY, b"b" * 70000)], [(BINARY, b"b" * 70000)]),
    ([masked(TEXT, b"he", fin=False), masked(0, b"l", fin=False), masked(0, b"lo")], [(TEXT, b"hello")]),
    ([masked(TEXT, b"a", fin=False), masked(PING, b"p"), masked(0, b"b")], [(PING, b"p"), (TEXT, b"ab")]),
    ([masked(PONG, b"x")], [(PONG, b"x")]),
    ([masked(CLOSE, struct.pack("!H", 1000) + b"bye")], [(CLOSE, (1000, "bye"))]),
    ([masked(CLOSE, b"")], [(CLOSE, (1005, ""))]),
    ([masked(TEXT, "é".encode()[:1], fin=False), masked(0, "é".encode()[1:])], [(TEXT, "é".encode())]),
    ([masked(CLOSE, b""), masked(TEXT, b"after close")], [(CLOSE, (1005, ""))]),
])
def test_frame_reader_accepts(frames, events):
    whole = FrameReader(1 << 20)
    assert whole.feed(b"".join(frames)) == events
    # The same bytes one at a time give the same events.
    bytewise = FrameReader(1 << 20)
    got = []
    for i in range(len(b"".join(frames))):
        got += bytewise.feed(b"".join(frames)[i:i + 1])
        if got and got[-1][0] == CLOSE:
            break
    assert got == events


@pytest.mark.parametrize("data, code", [
    (masked(TEXT, b"x", mask=False), 1002),               # unmasked client frame
    (masked(TEXT, b"x", rsv=0x40), 1002),                 # RSV1 without an extension
    (masked(0x3, b"x"), 1002),                            # reserved data opcode
    (masked(0xB, b"x"), 1002),                            # reserved control opcode
    (masked(PING, b"x", fin=False), 1002),                # fragmented control frame
    (masked(PING, b"x" * 126), 1002),                     # control frame over 125 bytes
    (masked(0, b"x"), 1002),                              # continuation with nothing to continue
    (masked(TEXT, b"a", fin=False) + masked(TEXT, b"b"), 1002),  # new message inside one
    (masked(TEXT, b"\xff"), 1007),                        # invalid UTF-8
    (masked(TEXT, b"\xed\xa0\x80"), 1007),                # UTF-16 surrogate in UTF-8
    (masked(TEXT, b"ok", fin=False) + masked(0, b"\xc0"), 1007),
    (masked(CLOSE, b"\x03"), 1002),                       # 1-byte close payload
    (masked(CLOSE, struct.pack("!H", 1005)), 1002),       # code that may not be sent
    (masked(CLOSE, struct.pack("!H", 999)), 1002),
    (masked(CLOSE, struct.pack("!H", 5000)), 1002),
    (masked(CLOSE, struct.pack("!H", 1000) + b"\xff"), 1007),
    (masked(BINARY, b"", length_override=1025)[:4], 1009),  # refused from the header alone
])
def test_frame_reader_refuses(data, code):
    reader = FrameReader(1024)
    assert reader.feed(data) == []
    assert reader.error.code == code


def test_messages_before_a_violation_are_kept():
    reader = FrameReader(1024)
    assert reader.feed(masked(TEXT, b"good") + masked(TEXT, b"x", mask=False)) == [(TEXT, b"good")]
    assert reader.error.code == 1002


@pytest.mark.parametrize("size, refused", [(4, False), (5, True), (125, True)])
def test_a_small_whole_frame_over_the_limit_is_refused(size, refused):
    reader = FrameReader(4)
    events = reader.feed(masked(TEXT, b"x" * size))
    assert (reader.error is not None and reader.error.code == 1009) == refused
    assert events == ([] if refused else [(TEXT, b"x" * size)])


def test_fragmented_message_size_counts_all_fragments():
    reader = FrameReader(10)
    reader.feed(masked(TEXT, b"123456", fin=False))
    reader.feed(masked(0, b"123456"))
    assert reader.error.code == 1009


@pytest.mark.parametrize("payload, header", [
    (b"", b"\x81\x00"),
    (b"x" * 125, b"\x81\x7d"),
    (b"x" * 126, b"\x81\x7e\x00\x7e"),
    (b"x" * 65536, b"\x81\x7f" + (65536).to_bytes(8, "big")),
])
def test_encode_frame_lengths(payload, header):
    assert encode_frame(TEXT, payload) == header + payload


def test_close_reason_is_cut_on_a_character_boundary():
    frame = encode_close(1011, "é" * 100)
    assert len(frame) == 2 + 2 + 122 and frame[4:].decode("utf-8") == "é" * 61
    assert truncate_utf8("abc", 2) == b"ab"
    assert encode_close(1005) == b"\x88\x00"


def test_accept_key_rfc_example():
    # RFC 6455 section 1.3
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("method, version, headers, status", [
    ("GET", "1.1", {}, None),
    ("POST", "1.1", {}, 405),
    ("GET", "1.0", {}, 400),
    ("GET", "1.1", {"connection": "keep-alive"}, 400),
    ("GET", "1.1", {"connection": "keep-alive, Upgrade"}, None),
    ("GET", "1.1", {"sec-websocket-key": "short"}, 400),
    ("GET", "1.1", {"sec-websocket-key": None}, 400),
    ("GET", "1.1", {"sec-websocket-version": "8"}, 426),
])
def test_handshake_problems(method, version, headers, status):
    base = {"upgrade": "websocket", "connection": "Upgrade",
            "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==", "sec-websocket-version": "13"}
    base.update(headers)
    problem = handshake_problem(method, version, base.get)
    assert (problem[0] if problem else None) == status


# --- lines --------------------------------------------------------------------

@pytest.mark.parametrize("chunks, lines, rest", [
    ([b"a\nb\n"], [b"a", b"b"], None),
    ([b"a\r\nb\r\n"], [b"a", b"b"], None),
    ([b"a\r", b"\nb"], [b"a"], b"b"),
    ([b"par", b"tial\n"], [b"partial"], None),
    ([b"\n\n"], [b"", b""], None),
    ([b"no newline"], [], b"no newline"),
    ([b"x\r\r\n"], [b"x\r"], None),  # only one "\r\n" is removed
    ([b"\n"], [b""], None),
    ([b"one\r\n"], [b"one"], None),
    ([b"x" * 100 + b"\n"], [b"x" * 100], None),  # exactly the limit
])
def test_line_splitter(chunks, lines, rest):
    splitter = LineSplitter(100)
    got = []
    for chunk in chunks:
        got += splitter.feed(chunk)
    assert got == lines
    assert splitter.finish() == rest


@pytest.mark.parametrize("chunks", [[b"x" * 11], [b"x" * 11 + b"\n"], [b"x" * 6, b"x" * 6]])
def test_line_splitter_bounds_line_length(chunks):
    splitter = LineSplitter(10)
    with pytest.raises(LineTooLong):
        for chunk in chunks:
            splitter.feed(chunk)


# --- environment ----------------------------------------------------------------

def request(target="/env.sh/extra/path?x=1&y=a%20b", headers=(("Host", "example.com:8080"),), tls=False):
    return Request("GET", target, "1.1", tuple(headers), ("10.0.0.1", 5555), ("127.0.0.1", 80), tls)


def test_environment_is_the_websocketd_set_plus_http_host():
    env = build_environment(
        request(headers=(("Host", "example.com:8080"), ("X-Thing", "a"), ("x-thing", "b"))),
        script_name="/env.sh", path_info="/extra/path", path_translated="/env.sh/extra/path",
        remote_host="10.0.0.1", unique_id="u1", server_software="wsexec/1", passed_env={"PATH": "/bin"},
    )
    assert env == {
        "AUTH_TYPE": "", "CONTENT_LENGTH": "", "CONTENT_TYPE": "", "GATEWAY_INTERFACE": "CGI/1.1",
        "HTTP_HOST": "example.com:8080", "HTTP_X_THING": "a, b",
        "PATH_INFO": "/extra/path", "PATH_TRANSLATED": "/env.sh/extra/path", "QUERY_STRING": "x=1&y=a%20b",
        "REMOTE_ADDR": "10.0.0.1", "REMOTE_HOST": "10.0.0.1", "REMOTE_IDENT": "", "REMOTE_PORT": "5555",
        "REMOTE_USER": "", "REQUEST_METHOD": "GET", "REQUEST_URI": "/env.sh/extra/path?x=1&y=a%20b",
        "SCRIPT_NAME": "/env.sh", "SERVER_NAME": "example.com", "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_SOFTWARE": "wsexec/1", "UNIQUE_ID": "u1", "PATH": "/bin",
    }


@pytest.mark.parametrize("headers, expected", [
    ((("Proxy", "http://evil"),), {}),
    ((("X_Forwarded_For", "1.2.3.4"),), {}),
    ((("Bad Name", "x"),), {}),
    ((("X-A", "one\r\ntwo\0"),), {"HTTP_X_A": "one  two "}),
    ((("X-Utf8", "é".encode().decode("latin-1")),), {"HTTP_X_UTF8": "é"}),
    ((("Host", "a"), ("Host", "b")), {"HTTP_HOST": "a, b"}),
    ((("Cookie", "a=1"), ("cookie", "b=2")), {"HTTP_COOKIE": "a=1; b=2"}),  # as one Cookie line is written
])
def test_header_variables(headers, expected):
    assert header_variables(headers) == expected
    assert header_variables(headers) == expected  # again, with the header names cached


def test_to_env_keeps_every_byte_but_cr_lf_nul():
    from wsexec.http.environment import to_env

    def reference(text):
        raw = text.encode("latin-1").replace(b"\r", b" ").replace(b"\n", b" ").replace(b"\0", b" ")
        return raw.decode("utf-8", "surrogateescape")

    for code in range(256):
        text = f"a{chr(code)}b"
        assert to_env(text) == reference(text), code
    assert to_env("é".encode().decode("latin-1")) == "é"
    assert to_env("plain value; q=1") == "plain value; q=1"


def test_headers_cannot_override_cgi_variables():
    env = build_environment(
        request(headers=(("Remote-Addr", "6.6.6.6"), ("Host", "h"))), script_name="/", path_info="/",
        path_translated="/", remote_host="x", unique_id="u", server_software="s",
        passed_env={"REMOTE_ADDR": "7.7.7.7", "SERVER_SOFTWARE": "evil"},
    )
    assert env["REMOTE_ADDR"] == "10.0.0.1" and env["HTTP_REMOTE_ADDR"] == "6.6.6.6"
    assert env["SERVER_SOFTWARE"] == "s"


@pytest.mark.parametrize("host, default, expected", [
    ("example.com", 80, ("example.com", "80")),
    ("example.com:8080", 80, ("example.com", "8080")),
    ("[::1]:9000", 80, ("::1", "9000")),
    ("[::1]", 443, ("::1", "443")),
    (None, 80, ("", "80")),
    ("h:notaport", 443, ("h", "443")),
])
def test_split_host(host, default, expected):
    assert split_host(host, default) == expected


def test_https_and_default_port_with_tls():
    env = build_environment(request(headers=(("Host", "secure"),), tls=True), script_name="/", path_info="",
                            path_translated="", remote_host="", unique_id="", server_software="", passed_env={})
    assert env["HTTPS"] == "on" and env["SERVER_PORT"] == "443"


# --- routing ----------------------------------------------------------------------

@pytest.mark.parametrize("path, segments", [
    ("/a/b", ("a", "b")),
    ("/a//b/", ("a", "b")),
    ("/a%20b", ("a b",)),
    ("/%2e%2e/x", None),
    ("/../x", None),
    ("/a/%2fetc", None),
    ("/a%5cb", None),
    ("/a\\b", None),
    ("/a%00", None),
    ("/.hidden", None),
    ("relative", None),
    ("/%252e%252e", ("%2e%2e",)),  # decoded once only: a literal name, not '..'
])
def test_decode_path(path, segments):
    assert decode_path(path) == segments


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    for name in ("run.sh", "sub/deep.sh"):
        (root / name).write_text("#!/bin/sh\n")
        (root / name).chmod(0o755)
    (root / "plain.txt").write_text("x")
    outside = tmp_path / "outside.sh"
    outside.write_text("#!/bin/sh\n")
    outside.chmod(0o755)
    os.symlink(outside, root / "escape.sh")
    os.symlink(root / "run.sh", root / "inside.sh")
    return str(root)


@pytest.mark.parametrize("path, script_name, path_info", [
    ("/run.sh", "/run.sh", ""),
    ("/run.sh/extra/path", "/run.sh", "/extra/path"),
    ("/run.sh/extra/", "/run.sh", "/extra/"),
    ("/run.sh/", "/run.sh", "/"),  # the slash is kept, as websocketd and Apache keep it
    ("/sub/deep.sh/x", "/sub/deep.sh", "/x"),
    ("/inside.sh", "/inside.sh", ""),
    ("/escape.sh", None, None),
    ("/plain.txt", None, None),
    ("/sub", None, None),
    ("/missing.sh", None, None),
    ("/sub/../run.sh", None, None),
    ("/", None, None),
])
def test_route_dir(tree, path, script_name, path_info):
    route = route_dir(tree, path)
    if script_name is None:
        assert route is None
    else:
        assert (route.script_name, route.path_info) == (script_name, path_info)
        assert route.program.startswith(tree)


def test_route_command_gives_whole_path_as_path_info():
    route = route_command("/bin/cat", "/a%20b/c")
    assert (route.script_name, route.path_info) == ("/", "/a b/c")


# --- origins ---------------------------------------------------------------------

@pytest.mark.parametrize("origin, host, origins, same, allowed", [
    ("http://evil.com", "h", (), False, True),  # no policy: everything
    (None, "h", ("good.com",), False, False),  # a list is a whitelist
    (None, "h", (), True, True),  # non-browser client with --sameorigin
    ("http://good.com", "h", ("good.com",), False, True),
    ("https://good.com:8443", "h", ("good.com",), False, True),
    ("https://good.com:8443", "h", ("good.com:8443",), False, True),
    ("https://good.com", "h", ("good.com:8443",), False, False),
    ("http://GOOD.com", "h", ("good.com",), False, True),
    ("http://good.com.evil.com", "h", ("good.com",), False, False),
    ("https://good.com", "h", ("http://good.com",), False, False),
    ("https://good.com", "h", ("https://good.com:443",), False, True),
    ("null", "h", ("good.com",), False, False),
    ("http://[::1]:8080", "h", ("[::1]:8080",), False, True),
    ("http://example.com:8080", "example.com:8080", (), True, True),
    ("http://example.com", "example.com:8080", (), True, False),
    ("http://evil.com:8080", "example.com:8080", (), True, False),
    ("null", "example.com", (), True, False),
])
def test_origin_allowed(origin, host, origins, same, allowed):
    assert origin_allowed(origin, host, origins, same, False) is allowed


# --- config ----------------------------------------------------------------------

@pytest.mark.parametrize("text, size", [("1024", 1024), ("64K", 65536), ("16M", 16 << 20), ("1g", 1 << 30), ("2MB", 2 << 20)])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "-5", "1.5M", "ten"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("text, ok", [("X-A: b", True), ("X-A:b:c", True), ("bad name: x", False), ("novalue", False)])
def test_parse_header(text, ok):
    if ok:
        assert parse_header(text)[0] == "X-A"
    else:
        with pytest.raises(ValueError):
            parse_header(text)


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 4095, 4096, 4097, 8192, 10001, 65536 + 3])
def test_unmask_matches_the_rfc_definition(size):
    from wsexec.websocket import unmask

    data, key = os.urandom(size), os.urandom(4)
    # RFC 6455 section 5.3: j = i MOD 4; transformed-octet-i = original-octet-i XOR masking-key-octet-j
    assert unmask(data, key) == bytes(b ^ key[i % 4] for i, b in enumerate(data))


@pytest.mark.parametrize("argv, expected", [
    (["-port=8080", "./h"], ["--port=8080", "./h"]),
    (["-port", "8080", "./h", "-port=1"], ["--port", "8080", "./h", "-port=1"]),
    (["--binary=true", "cat"], ["--binary", "cat"]),
    (["--binary=false", "cat"], ["cat"]),
    (["-binary", "cat"], ["--binary", "cat"]),
    (["--port", "-5", "cat"], ["--port", "-5", "cat"]),  # a value is never rewritten
    (["-h"], ["-h"]),
    (["-unknown=1", "cat"], ["-unknown=1", "cat"]),  # left for click to refuse
    (["--", "-port=1"], ["--", "-port=1"]),
    (["cat", "--binary=true"], ["cat", "--binary=true"]),  # the handler's own arguments
])
def test_go_style_flags(argv, expected):
    from wsexec.cli import go_style_flags

    assert go_style_flags(argv, {"--port"}, {"--binary"}) == expected


@pytest.mark.parametrize("offered, supported, chosen", [
    ("chat, superchat", ("superchat", "chat"), "chat"),  # the client's order of preference
    ("chat", ("json",), None),
    (None, ("chat",), None),
    ("chat", (), None),
    (" a ,b", ("b",), "b"),
    ("", ("chat",), None),
])
def test_select_subprotocol(offered, supported, chosen):
    from wsexec.websocket import select_subprotocol

    assert select_subprotocol(offered, supported) == chosen


# --- request heads: the fast path agrees with h11 -----------------------------

def h11_head(head: bytes):
    """(method, target, version, headers) as h11 parses head + CRLF CRLF, or None if it refuses."""
    import h11

    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head + b"\r\n\r\n")
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return None
    return (event.method.decode("ascii"), event.target.decode("latin-1"), event.http_version.decode("ascii"),
            tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers.raw_items()))


@pytest.mark.parametrize("head, plain", [
    (b"GET /chat?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nX-Empty:\r\nX-Pad: \t v a l \t ", True),
    (b"GET / HTTP/1.0", True),  # no Host needed in 1.0
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Latin: caf\xe9", True),
    (b"GET / HTTP/1.1", False),  # no Host: h11 refuses
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b", False),
    (b"GET / HTTP/1.1\r\nHost: a\r\n folded", False),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5", False),  # a body: h11 checks the framing
    (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked", False),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b", False),  # h11 takes some control bytes
    (b"GET / HTTP/1.1\r\nHost : a", False),
    (b"GET  / HTTP/1.1\r\nHost: a", False),
    (b"\r\nGET / HTTP/1.1\r\nHost: a", False),
    (b"GET /\x7f HTTP/1.1\r\nHost: a", False),
    (b"G(T / HTTP/1.1\r\nHost: a", False),
])
def test_plain_heads_parse_as_h11_does_and_the_rest_go_to_h11(head, plain):
    from wsexec.http.request import parse_plain_head

    parsed = parse_plain_head(head)
    assert (parsed is not None) == plain
    if plain:
        assert parsed == h11_head(head)


def test_fast_path_never_disagrees_with_h11_on_random_heads():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from wsexec.http.request import parse_plain_head

    piece = st.sampled_from([b"GET", b" ", b"/", b"?a=b", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"\r\n", b"\n", b"\r",
                             b"Host", b"host", b":", b"\t", b"x", b"\x00", b"\x01", b"\x7f", b"\xe9", b"(", b"Content-Length",
                             b"5", b"Upgrade: websocket", b"\r\n "])
    heads = st.builds(lambda first, rest: first + b"".join(rest),
                      st.sampled_from([b"GET / HTTP/1.1\r\nHost: h", b"GET / HTTP/1.0", b""]),
                      st.lists(piece, max_size=24))

    @settings(max_examples=3000, deadline=None, database=None)
    @given(heads)
    def check(head):
        if b"\r\n\r\n" in head:
            return  # not one head
        parsed = parse_plain_head(head)
        if parsed is not None:
            assert parsed == h11_head(head)

    check()


def test_log_formatter_matches_the_logging_module_format():
    import logging
    import sys

    from wsexec.log import ACCESS, Formatter

    def record(exc_info=None):
        return logging.LogRecord("wsexec.connection", ACCESS, "(unknown file)", 0, "#1 %s", ("CONNECT /",), exc_info)

    ours, reference = Formatter(), Formatter()
    plain = record()
    assert ours.format(plain) == logging.Formatter.format(reference, plain)
    assert ours.format(record()).split(" ", 1)[1] == "ACCESS wsexec.connection #1 CONNECT /"
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record(sys.exc_info())
    text = ours.format(failed)
    assert text.split("\n")[0].endswith("ACCESS wsexec.connection #1 CONNECT /") and "ValueError: boom" in text
