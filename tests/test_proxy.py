"""The real client behind proxies: PROXY protocol v1/v2 and Forwarded /
X-Forwarded-* as tables (wsexec/net/proxy.py), then end to end on 127.0.0.1."""

import socket
import struct

import pytest
import trio

from support.clients import raw_http, read_server_frames, upgrade_request
from support.servers import make_config, script, serving
from support.waiting import trio_test
from wsexec.config import ConfigError
from wsexec.net.proxy import (
    UNIX, Hop, ProxyError, ProxyHeader, forwarded_hops, parse_node, parse_proxy_header, parse_trust, resolve,
    x_forwarded_hops,
)

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(command=0x21, family=0x11, body=b"", length=None):
    return SIG + bytes([command, family]) + struct.pack("!H", len(body) if length is None else length) + body


def v4_body(src="192.0.2.1", dst="192.0.2.2", sport=4711, dport=443):
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


def v6_body(src="2001:db8::1", dst="2001:db8::2", sport=4711, dport=443):
    return (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
            + struct.pack("!HH", sport, dport))


def tlv(kind, value):
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def ssl_tlv(client=0x01, verify=0, subs=b""):
    return tlv(0x20, bytes([client]) + struct.pack("!I", verify) + subs)


# --- PROXY protocol ------------------------------------------------------------------

@pytest.mark.parametrize("data, expected", [
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 4711 443\r\nGET", ProxyHeader(41, ("192.0.2.1", 4711), ("192.0.2.2", 443))),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n", ProxyHeader(44, ("2001:db8::1", 1), ("2001:db8::2", 65535))),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(15)),
    (b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n", ProxyHeader(39)),
    (v2(body=v4_body()) + b"GET", ProxyHeader(28, ("192.0.2.1", 4711), ("192.0.2.2", 443))),
    (v2(family=0x21, body=v6_body()), ProxyHeader(52, ("2001:db8::1", 4711), ("2001:db8::2", 443))),
    (v2(family=0x21, body=v6_body(src="::ffff:192.0.2.9")), ProxyHeader(52, ("192.0.2.9", 4711), ("2001:db8::2", 443))),
    (v2(command=0x20, family=0x00), ProxyHeader(16)),  # LOCAL: a health check, keep the real peer
    (v2(command=0x20, family=0x11, body=v4_body()), ProxyHeader(28)),  # LOCAL ignores addresses
    (v2(family=0x00), ProxyHeader(16)),  # UNSPEC
    (v2(family=0x31, body=b"\0" * 216), ProxyHeader(232, (UNIX, 0))),
    (v2(body=v4_body() + tlv(0x04, b"\0\0")), ProxyHeader(33, ("192.0.2.1", 4711), ("192.0.2.2", 443))),
    (v2(body=v4_body() + ssl_tlv(subs=tlv(0x21, b"TLSv1.3") + tlv(0x23, b"TLS_AES_256_GCM_SHA384"))),
     ProxyHeader(71, ("192.0.2.1", 4711), ("192.0.2.2", 443), True,
                 (("SSL_PROTOCOL", "TLSv1.3"), ("SSL_CIPHER", "TLS_AES_256_GCM_SHA384"), ("SSL_CLIENT_VERIFY", "NONE")))),
    (v2(body=v4_body() + ssl_tlv(client=0x07, subs=tlv(0x22, b"alice"))),
     ProxyHeader(44, ("192.0.2.1", 4711), ("192.0.2.2", 443), True,
                 (("SSL_CLIENT_VERIFY", "SUCCESS"), ("SSL_CLIENT_S_DN_CN", "alice")))),
    (v2(body=v4_body() + ssl_tlv(client=0x00)), ProxyHeader(36, ("192.0.2.1", 4711), ("192.0.2.2", 443))),
])
def test_proxy_header_parses(data, expected):
    assert parse_proxy_header(data) == expected


@pytest.mark.parametrize("data", [
    b"", b"P", b"PROXY", b"PROXY TCP4 192.0.2.1", SIG[:5], SIG, SIG + b"\x21\x11\x00", v2(body=v4_body())[:20],
])
def test_proxy_header_needs_more(data):
    assert parse_proxy_header(data) is None


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n",
    b"\x16\x03\x01\x02\x00",  # a TLS ClientHello
    b"PROXY TCP4 192.0.2.1 192.0.2.2 4711\r\n",  # a field missing
    b"PROXY TCP4 2001:db8::1 192.0.2.2 1 2\r\n",  # IPv6 in TCP4
    b"PROXY TCP6 192.0.2.1 192.0.2.2 1 2\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 65536 2\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 -1 2\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 01 2\r\n",  # no leading zeros
    b"PROXY TCP4 999.0.2.1 192.0.2.2 1 2\r\n",
    b"PROXY UDP4 192.0.2.1 192.0.2.2 1 2\r\n",
    b"PROXY TCP4  192.0.2.1 192.0.2.2 1 2\r\n",  # two spaces
    b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2" + b" " * 80,  # no CRLF within 107 bytes
    v2(command=0x11, body=v4_body()),  # version 1 in a v2 header
    v2(command=0x22, body=v4_body()),  # command 2
    v2(family=0x41, body=v4_body()),  # family 4
    v2(body=v4_body()[:8]),  # address block too short
    v2(family=0x21, body=v4_body()),
    v2(body=v4_body() + b"\x04\x00"),  # truncated TLV
    v2(body=v4_body() + tlv(0x20, b"\x01\0\0\0\0" + b"\x21\x00\x09abc")),  # truncated sub-TLV
])
def test_proxy_header_refused(data):
    with pytest.raises(ProxyError):
        parse_proxy_header(data)


# --- forwarded headers ------------------------------------------------------------------

@pytest.mark.parametrize("text, node", [
    ("192.0.2.43", ("192.0.2.43", 0)),
    ("192.0.2.43:47011", ("192.0.2.43", 47011)),
    ("[2001:db8:cafe::17]", ("2001:db8:cafe::17", 0)),
    ("[2001:db8:cafe::17]:4711", ("2001:db8:cafe::17", 4711)),
    ("2001:db8:cafe::17", ("2001:db8:cafe::17", 0)),
    ("::ffff:192.0.2.1", ("192.0.2.1", 0)),
    (" 192.0.2.43 ", ("192.0.2.43", 0)),
    ("192.0.2.43:_port", ("192.0.2.43", 0)),
    ("unknown", None),
    ("_hidden", None),
    ("[2001:db8::1]x", None),
    ("example.com", None),
    ("", None),
])
def test_parse_node(text, node):
    assert parse_node(text) == node


@pytest.mark.parametrize("value, hops", [
    ("for=192.0.2.60;proto=http;by=203.0.113.43", [Hop(("192.0.2.60", 0), "http")]),
    ('for="[2001:db8:cafe::17]:4711"', [Hop(("2001:db8:cafe::17", 4711))]),
    ("for=192.0.2.43, for=198.51.100.17", [Hop(("192.0.2.43", 0)), Hop(("198.51.100.17", 0))]),
    ('For="_gazonk";Proto=HTTPS;Host="a.example:8443"', [Hop(None, "HTTPS", "a.example:8443")]),
    ('for=unknown;host="x,y.example"', [Hop(None, None, "x,y.example")]),
    ('for="192.0.2.1";host="a\\"b"', [Hop(("192.0.2.1", 0), None, 'a"b')]),
    ("proto=https", [Hop(None, "https")]),
    ("", []),
])
def test_forwarded_hops(value, hops):
    assert forwarded_hops(value) == hops


@pytest.mark.parametrize("xff, proto, host, hops", [
    ("203.0.113.7", "https", "a.example", [Hop(("203.0.113.7", 0), "https", "a.example")]),
    ("203.0.113.7, 10.0.0.2", "https", None, [Hop(("203.0.113.7", 0)), Hop(("10.0.0.2", 0), "https")]),
    ("203.0.113.7, 10.0.0.2", "https, http", None, [Hop(("203.0.113.7", 0), "https"), Hop(("10.0.0.2", 0), "http")]),
    (None, "https", "a.example", [Hop(None, "https", "a.example")]),
    ("garbage", None, None, [Hop(None)]),
    (None, None, None, []),
])
def test_x_forwarded_hops(xff, proto, host, hops):
    assert x_forwarded_hops(xff, proto, host) == hops


TRUST = parse_trust(["127.0.0.1", "10.0.0.0/8", "::1", "unix"])


@pytest.mark.parametrize("peer, headers, remote, tls, host", [
    # untrusted peer: everything ignored
    (("198.51.100.1", 5), {"x-forwarded-for": "1.2.3.4", "x-forwarded-proto": "https"}, ("198.51.100.1", 5), None, None),
    (("198.51.100.1", 5), {"forwarded": "for=1.2.3.4;proto=https"}, ("198.51.100.1", 5), None, None),
    # trusted peer, one hop
    (("127.0.0.1", 5), {"x-forwarded-for": "203.0.113.7"}, ("203.0.113.7", 0), None, None),
    (("127.0.0.1", 5), {"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https",
                        "x-forwarded-host": "a.example"}, ("203.0.113.7", 0), True, "a.example"),
    (("::1", 5), {"forwarded": 'for="[2001:db8::7]:4711";proto=https;host=b.example'}, ("2001:db8::7", 4711), True, "b.example"),
    ((UNIX, 0), {"x-forwarded-for": "203.0.113.7"}, ("203.0.113.7", 0), None, None),
    # a chain: trusted hops are skipped, the first untrusted one is the client
    (("127.0.0.1", 5), {"x-forwarded-for": "203.0.113.7, 10.1.1.1"}, ("203.0.113.7", 0), None, None),
    (("127.0.0.1", 5), {"x-forwarded-for": "10.9.9.9, 203.0.113.7, 10.1.1.1"}, ("203.0.113.7", 0), None, None),
    # a client cannot push a fake address past an untrusted hop
    (("127.0.0.1", 5), {"forwarded": "for=6.6.6.6;proto=https, for=203.0.113.7;proto=http"}, ("203.0.113.7", 0), False, None),
    # all trusted: the leftmost
    (("127.0.0.1", 5), {"x-forwarded-for": "10.0.0.1, 10.0.0.2"}, ("10.0.0.1", 0), None, None),
    # Forwarded wins over X-Forwarded-For
    (("127.0.0.1", 5), {"forwarded": "for=203.0.113.9", "x-forwarded-for": "203.0.113.7"}, ("203.0.113.9", 0), None, None),
    # unknown / obfuscated: stop there, but its proto still counts
    (("127.0.0.1", 5), {"forwarded": "for=unknown;proto=https"}, ("127.0.0.1", 5), True, None),
    # proto only
    (("127.0.0.1", 5), {"x-forwarded-proto": "https"}, ("127.0.0.1", 5), True, None),
    (("127.0.0.1", 5), {"x-forwarded-proto": "wss"}, ("127.0.0.1", 5), True, None),
    (("127.0.0.1", 5), {"x-forwarded-proto": "http"}, ("127.0.0.1", 5), False, None),
    (("127.0.0.1", 5), {}, ("127.0.0.1", 5), None, None),
    # IPv4-mapped peers are their IPv4 address
    (("::ffff:10.2.3.4", 5), {"x-forwarded-for": "203.0.113.7"}, ("203.0.113.7", 0), None, None),
])
def test_resolve(peer, headers, remote, tls, host):
    found = resolve(peer, headers.get, TRUST)
    assert (found.remote, found.tls, found.host) == (remote, tls, host)


@pytest.mark.parametrize("items, good, bad", [
    (["127.0.0.1"], ["127.0.0.1"], ["127.0.0.2", "::1", UNIX]),
    (["10.0.0.0/8"], ["10.255.0.1"], ["11.0.0.1"]),
    (["10.1.2.3/8"], ["10.9.9.9"], []),  # host bits allowed
    (["fd00::/8", "unix"], ["fd12::1", UNIX], ["fe80::1", "10.0.0.1"]),
    ([], [], ["127.0.0.1", UNIX]),
])
def test_trust(items, good, bad):
    trust = parse_trust(items)
    assert all(trust(h) for h in good) and not any(trust(h) for h in bad)


@pytest.mark.parametrize("item", ["10.0.0.0/33", "example.com", "", "unix:"])
def test_trust_refuses(item):
    with pytest.raises(ValueError):
        parse_trust([item])


def test_trusted_proxy_option_validated(tmp_path):
    handler = script(tmp_path, "h.py", "print('x')\n")
    with pytest.raises(ConfigError) as e:
        make_config(handler, trusted_proxies=("nonsense",))
    assert e.value.exit_code == 2


# --- end to end -------------------------------------------------------------------------------

DUMP_ENV = """
import os
for k in ("REMOTE_ADDR", "REMOTE_PORT", "HTTPS", "SERVER_NAME", "SERVER_PORT", "HTTP_X_FORWARDED_FOR",
          "SSL_PROTOCOL", "SSL_CLIENT_VERIFY", "SSL_CLIENT_S_DN_CN"):
    print(f"{k}={os.environ.get(k, '-')}")
"""


async def env_over(port, prefix=b"", extra="", host="127.0.0.1"):
    """Connect, send prefix + an upgrade request, read the handler's lines."""
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(prefix + upgrade_request("/", extra, host))
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = await stream.receive_some(65536)
                if not data:
                    return None
                buf += data
            head, _, rest = buf.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                return head
            frames, code = await read_server_frames(stream, rest)
    assert code == 1000
    return dict(p.decode().split("=", 1) for _, p in frames)


@trio_test(15)
async def test_forwarded_headers_only_from_trusted_peers(tmp_path):
    handler = script(tmp_path, "env.py", DUMP_ENV)
    xff = "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: ws.example\r\n"
    async with serving(make_config(handler, trusted_proxies=("127.0.0.1",))) as (state, _):
        port = state.addresses[0][1]
        env = await env_over(port, extra=xff)
    assert env["REMOTE_ADDR"] == "203.0.113.7" and env["REMOTE_PORT"] == "0"
    assert env["HTTPS"] == "on" and env["SERVER_NAME"] == "ws.example" and env["SERVER_PORT"] == "443"
    assert env["HTTP_X_FORWARDED_FOR"] == "203.0.113.7"
    # The same headers from a peer that is not trusted change nothing.
    async with serving(make_config(handler, trusted_proxies=("10.0.0.0/8",))) as (state, _):
        port = state.addresses[0][1]
        env = await env_over(port, extra=xff)
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["REMOTE_PORT"] != "0"
    assert env["HTTPS"] == "-" and env["SERVER_NAME"] == "127.0.0.1"
    assert env["HTTP_X_FORWARDED_FOR"] == "203.0.113.7"  # still there, raw


@trio_test(15)
async def test_forwarded_ignored_without_trusted_proxy(tmp_path):
    handler = script(tmp_path, "env.py", DUMP_ENV)
    async with serving(make_config(handler)) as (state, _):
        env = await env_over(state.addresses[0][1], extra="Forwarded: for=203.0.113.7;proto=https\r\n")
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["HTTPS"] == "-"


@trio_test(15)
async def test_proxy_protocol_v1_and_v2(tmp_path):
    handler = script(tmp_path, "env.py", DUMP_ENV)
    async with serving(make_config(handler, proxy_protocol=True)) as (state, _):
        port = state.addresses[0][1]
        env = await env_over(port, b"PROXY TCP4 203.0.113.7 127.0.0.1 4711 443\r\n")
        assert (env["REMOTE_ADDR"], env["REMOTE_PORT"], env["HTTPS"]) == ("203.0.113.7", "4711", "-")
        env = await env_over(port, v2(family=0x21, body=v6_body("2001:db8::7", "::1", 5555, 443)))
        assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("2001:db8::7", "5555")
        tls = ssl_tlv(client=0x07, subs=tlv(0x21, b"TLSv1.3") + tlv(0x22, b"alice"))
        env = await env_over(port, v2(body=v4_body("203.0.113.8") + tls))
        assert (env["REMOTE_ADDR"], env["HTTPS"], env["SERVER_PORT"]) == ("203.0.113.8", "on", "443")
        assert (env["SSL_PROTOCOL"], env["SSL_CLIENT_VERIFY"], env["SSL_CLIENT_S_DN_CN"]) == ("TLSv1.3", "SUCCESS", "alice")
        env = await env_over(port, v2(command=0x20, family=0))  # LOCAL: the real peer
        assert env["REMOTE_ADDR"] == "127.0.0.1"
        # A header split across writes is put together.
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"PROXY TCP4 203.0.113.9 ")
                await trio.sleep(0.05)
                await stream.send_all(b"127.0.0.1 1 2\r\n" + upgrade_request())
                head = await stream.receive_some(65536)
        assert head.startswith(b"HTTP/1.1 101")


@pytest.mark.parametrize("prefix", [
    b"",  # no header at all: the request itself
    b"PROXY TCP4 nonsense\r\n",
    v2(command=0x23, body=v4_body()),
])
def test_proxy_protocol_refuses_bad_headers(tmp_path, prefix, caplog):
    handler = script(tmp_path, "env.py", DUMP_ENV)

    @trio_test(15)
    async def run():
        async with serving(make_config(handler, proxy_protocol=True)) as (state, _):
            port = state.addresses[0][1]
            data = await raw_http(port, prefix + upgrade_request())
            assert data == b""  # closed without an answer
            # ... and the server still serves others.
            env = await env_over(port, b"PROXY TCP4 203.0.113.7 127.0.0.1 4711 443\r\n")
            assert env["REMOTE_ADDR"] == "203.0.113.7"

    with caplog.at_level("ERROR", logger="wsexec"):
        run()
    assert any("REFUSED" in r.getMessage() and "PROXY" in r.getMessage() for r in caplog.records)


@trio_test(15)
async def test_proxy_protocol_header_within_handshakems(tmp_path):
    handler = script(tmp_path, "env.py", DUMP_ENV)
    async with serving(make_config(handler, proxy_protocol=True, handshakems=300)) as (state, _):
        port = state.addresses[0][1]
        with trio.fail_after(3):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"PROXY TCP4 ")  # and nothing more
                started = trio.current_time()
                try:
                    data = await stream.receive_some(100)
                except trio.BrokenResourceError:  # closed with our bytes unread: a reset
                    data = b""
                assert data == b"" and 0.25 < trio.current_time() - started < 2


@trio_test(15)
async def test_proxy_protocol_only_from_trusted_proxies(tmp_path):
    handler = script(tmp_path, "env.py", DUMP_ENV)
    config = make_config(handler, proxy_protocol=True, trusted_proxies=("10.0.0.0/8",))
    async with serving(config) as (state, _):
        port = state.addresses[0][1]
        assert await env_over(port, b"PROXY TCP4 203.0.113.7 127.0.0.1 4711 443\r\n") is None
