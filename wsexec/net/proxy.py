"""The real client behind a proxy: the PROXY protocol header and the
Forwarded / X-Forwarded-* request headers. Pure functions over bytes and
strings, no I/O (wsexec/net/front.py does the reading).

Trust follows nginx's realip model: start from the address the connection
came from (the PROXY header's source if there is one, else the TCP peer).
While that address is a --trusted-proxy, step one hop left in the forwarded
list; the first untrusted address is the client. Headers from an untrusted
peer are ignored (they still reach the handler as HTTP_* variables).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple

Address = Tuple[str, int]
UNIX = "unix:"  # REMOTE_ADDR of a client on a unix domain socket (nginx says the same)

# --- PROXY protocol (haproxy's proxy-protocol.txt, versions 1 and 2) -----------

V1_PREFIX = b"PROXY "
V1_MAX = 107  # "a receiver ... must not try to read more than 107 bytes" (section 2.1)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEAD = 16
PP2_TYPE_SSL = 0x20
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23


class ProxyError(ValueError):
    """A PROXY protocol header that is malformed, or missing."""


@dataclass(frozen=True)
class ProxyHeader:
    length: int  # bytes the header takes on the wire
    source: Optional[Address] = None  # None: LOCAL / UNKNOWN, the peer is the client
    destination: Optional[Address] = None
    tls: bool = False  # PP2_TYPE_SSL with PP2_CLIENT_SSL: the client spoke TLS to the proxy
    variables: Tuple[Tuple[str, str], ...] = ()  # SSL_* for the handler, from the SSL TLV


def parse_proxy_header(data: bytes) -> Optional[ProxyHeader]:
    """The header at the start of data; None if more bytes are needed.
    Raises ProxyError for anything else (including no header at all)."""
    if data[:12] == V2_SIGNATURE:
        return _parse_v2(data)
    if data.startswith(V1_PREFIX):
        return _parse_v1(data)
    if V2_SIGNATURE.startswith(data[:12]) or V1_PREFIX.startswith(data[:6]):
        return None  # a prefix of either: wait for more
    raise ProxyError(f"no PROXY protocol header: {bytes(data[:16])!r}")


def _parse_v1(data: bytes) -> Optional[ProxyHeader]:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyError("PROXY v1 line longer than 107 bytes")
        return None
    parts = data[:end].decode("ascii", "replace").split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(end + 2)  # "the receiver must ignore anything" after UNKNOWN
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyError(f"bad PROXY v1 line: {bytes(data[:end])!r}")
    version = 4 if parts[1] == "TCP4" else 6
    source = (_ip(parts[2], version), _port(parts[4]))
    destination = (_ip(parts[3], version), _port(parts[5]))
    return ProxyHeader(end + 2, source, destination)


def _ip(text: str, version: int) -> str:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyError(f"not an IP address in PROXY header: {text!r}") from None
    if ip.version != version:
        raise ProxyError(f"IPv{ip.version} address in a TCP{version} PROXY header: {text!r}")
    return str(ip)


def _port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or int(text) > 65535 or (len(text) > 1 and text[0] == "0"):
        raise ProxyError(f"bad port in PROXY header: {text!r}")
    return int(text)


def _parse_v2(data: bytes) -> Optional[ProxyHeader]:
    if len(data) < V2_HEAD:
        return None
    version_command, family, length = data[12], data[13], struct.unpack("!H", data[14:16])[0]
    if version_command >> 4 != 2:
        raise ProxyError(f"PROXY v2 header with version {version_command >> 4}")
    command = version_command & 0x0F
    if command not in (0, 1):
        raise ProxyError(f"PROXY v2 header with unknown command {command}")
    total = V2_HEAD + length
    if len(data) < total:
        return None
    body = bytes(data[V2_HEAD:total])
    if command == 0:  # LOCAL: the proxy's own connection (a health check); addresses ignored
        return ProxyHeader(total)
    source = destination = None
    address_family = family >> 4
    if address_family == 1:  # AF_INET
        rest = _need(body, 12)
        source = (str(ipaddress.IPv4Address(body[0:4])), struct.unpack("!H", body[8:10])[0])
        destination = (str(ipaddress.IPv4Address(body[4:8])), struct.unpack("!H", body[10:12])[0])
    elif address_family == 2:  # AF_INET6
        rest = _need(body, 36)
        source = (_unmap(ipaddress.IPv6Address(body[0:16])), struct.unpack("!H", body[32:34])[0])
        destination = (_unmap(ipaddress.IPv6Address(body[16:32])), struct.unpack("!H", body[34:36])[0])
    elif address_family == 3:  # AF_UNIX: no network address; the client is local
        rest = _need(body, 216)
        source = (UNIX, 0)
    elif address_family == 0:  # AF_UNSPEC: "the receiver ... must use the real connection endpoints"
        rest = body
    else:
        raise ProxyError(f"PROXY v2 header with unknown address family {address_family}")
    tls, variables = _tls_from_tlvs(rest)
    return ProxyHeader(total, source, destination, tls, variables)


def _need(body: bytes, size: int) -> bytes:
    if len(body) < size:
        raise ProxyError(f"PROXY v2 address block of {len(body)} bytes, expected {size}")
    return body[size:]


def _unmap(ip: ipaddress.IPv6Address) -> str:
    return str(ip.ipv4_mapped or ip)


def parse_tlvs(data: bytes) -> List[Tuple[int, bytes]]:
    """Type-length-value records (section 2.2.7); a truncated one is an error."""
    out, i = [], 0
    while i < len(data):
        if i + 3 > len(data):
            raise ProxyError("truncated TLV in PROXY v2 header")
        kind, size = data[i], struct.unpack("!H", data[i + 1:i + 3])[0]
        if i + 3 + size > len(data):
            raise ProxyError("truncated TLV in PROXY v2 header")
        out.append((kind, data[i + 3:i + 3 + size]))
        i += 3 + size
    return out


def _tls_from_tlvs(data: bytes) -> Tuple[bool, Tuple[Tuple[str, str], ...]]:
    """PP2_TYPE_SSL (section 2.2.5): whether the client used TLS, and what the
    proxy tells about it, as the SSL_* variables Apache mod_ssl would set."""
    for kind, value in parse_tlvs(data):
        if kind != PP2_TYPE_SSL or len(value) < 5:
            continue
        client, verify = value[0], struct.unpack("!I", value[1:5])[0]
        if not client & PP2_CLIENT_SSL:
            return False, ()
        sub = dict(parse_tlvs(value[5:]))
        variables = []
        if PP2_SUBTYPE_SSL_VERSION in sub:
            variables.append(("SSL_PROTOCOL", sub[PP2_SUBTYPE_SSL_VERSION].decode("ascii", "replace")))
        if PP2_SUBTYPE_SSL_CIPHER in sub:
            variables.append(("SSL_CIPHER", sub[PP2_SUBTYPE_SSL_CIPHER].decode("ascii", "replace")))
        if client & (PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS):
            variables.append(("SSL_CLIENT_VERIFY", "SUCCESS" if verify == 0 else "FAILED"))
            if PP2_SUBTYPE_SSL_CN in sub:
                variables.append(("SSL_CLIENT_S_DN_CN", sub[PP2_SUBTYPE_SSL_CN].decode("utf-8", "replace")))
        else:
            variables.append(("SSL_CLIENT_VERIFY", "NONE"))
        return True, tuple(variables)
    return False, ()


# --- trusted proxies -------------------------------------------------------------


@dataclass(frozen=True)
class Trust:
    """The --trusted-proxy list: networks, and 'unix' for unix socket peers."""

    networks: Tuple[ipaddress._BaseNetwork, ...] = ()  # type: ignore[name-defined]
    unix: bool = False

    def __call__(self, host: str) -> bool:
        if host == UNIX:
            return self.unix
        try:
            ip = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks if net.version == ip.version)


def parse_trust(items: Iterable[str]) -> Trust:
    """'10.0.0.0/8', '127.0.0.1', '::1', 'unix' -> Trust; ValueError if bad."""
    networks, unix = [], False
    for item in items:
        item = item.strip()
        if item == "unix":
            unix = True
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"--trusted-proxy: not an address, network (CIDR) or 'unix': {item!r}") from None
    return Trust(tuple(networks), unix)


# --- Forwarded (RFC 7239) and X-Forwarded-* ---------------------------------------


@dataclass(frozen=True)
class Hop:
    """One forwarded-element: what one proxy saw."""

    client: Optional[Address]  # None: 'unknown' or an obfuscated identifier
    proto: Optional[str] = None
    host: Optional[str] = None


@dataclass(frozen=True)
class Forwarded:
    """Where the request really came from, as far as trusted proxies say."""

    remote: Address
    tls: Optional[bool] = None  # None: no proxy said
    host: Optional[str] = None
    hops: int = 0  # forwarded entries believed


def split_quoted(text: str, separator: str) -> List[str]:
    """Split on separator outside quoted-strings (RFC 9110 section 5.6.4)."""
    parts, current, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif quoted and ch == "\\":
            current.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            current.append(ch)
        elif ch == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        out, escaped = [], False
        for ch in value[1:-1]:
            if escaped or ch != "\\":
                out.append(ch)
                escaped = False
            else:
                escaped = True
        return "".join(out)
    return value


def parse_node(text: str) -> Optional[Address]:
    """RFC 7239 section 6 node: '192.0.2.43', '192.0.2.43:47011', '[2001:db8::17]:4711',
    also a bare IPv6 address (as X-Forwarded-For carries it). None for 'unknown',
    '_obfuscated' names and anything that is not an IP address."""
    text = text.strip()
    port = "0"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = rest[1:]
        elif rest:
            return None
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host = text
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if not port.isdigit() or int(port) > 65535:
        port = "0"  # an obfuscated port ('_abc'): the address alone is still good
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(port)


def forwarded_hops(value: str) -> List[Hop]:
    """Forwarded: for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8::17]" """
    hops = []
    for element in split_quoted(value, ","):
        pairs: Dict[str, str] = {}
        for pair in split_quoted(element, ";"):
            name, sep, raw = pair.partition("=")
            if sep:
                pairs[name.strip().lower()] = unquote(raw)
        if not pairs:
            continue
        hops.append(Hop(parse_node(pairs.get("for", "unknown")), pairs.get("proto"), pairs.get("host")))
    return hops


def _list(value: Optional[str]) -> List[str]:
    return [item.strip() for item in value.split(",") if item.strip()] if value else []


def x_forwarded_hops(forwarded_for: Optional[str], proto: Optional[str], host: Optional[str]) -> List[Hop]:
    """X-Forwarded-For: client, proxy1 (each proxy appends the address it saw).
    X-Forwarded-Proto and -Host are matched to the hops from the right when
    they list as many values; otherwise their last value (set by the nearest
    proxy) goes with the nearest hop."""
    clients, protos, hosts = _list(forwarded_for), _list(proto), _list(host)
    n = len(clients)
    if n == 0:
        return [Hop(None, protos[-1] if protos else None, hosts[-1] if hosts else None)] if protos or hosts else []

    def pick(values: List[str], i: int) -> Optional[str]:
        if len(values) == n:
            return values[i]
        return values[-1] if values and i == n - 1 else None

    return [Hop(parse_node(c), pick(protos, i), pick(hosts, i)) for i, c in enumerate(clients)]


def resolve(peer: Address, header: Callable[[str], Optional[str]], trusted: Trust) -> Forwarded:
    """The client address, scheme and host a request was sent with, believing
    forwarded headers only as far as the chain of trusted proxies reaches."""
    if not trusted(peer[0]):
        return Forwarded(peer)
    forwarded = header("forwarded")
    if forwarded is not None:
        hops = forwarded_hops(forwarded)
    else:
        hops = x_forwarded_hops(header("x-forwarded-for"), header("x-forwarded-proto"), header("x-forwarded-host"))
    remote, proto, host, believed = peer, None, None, 0
    for hop in reversed(hops):
        if not trusted(remote[0]):
            break
        believed += 1
        proto = hop.proto or proto
        host = hop.host or host
        if hop.client is None:
            break  # 'unknown' or obfuscated: the chain cannot be followed further
        remote = hop.client
    tls = None if proto is None else proto.strip().lower() in ("https", "wss")
    return Forwarded(remote, tls, host, believed)
