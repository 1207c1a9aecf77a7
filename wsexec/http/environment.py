"""The CGI environment a handler receives (RFC 3875 section 4.1, as websocketd sets it)."""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

from .syntax import is_token, split_host
from .request import Request


def to_env(text: str) -> str:
    """A latin-1 decoded header or path back to its bytes, kept exact through
    os.fsencode (UTF-8 with surrogateescape); CR, LF and NUL become spaces."""
    if text.isascii() and text.isprintable():
        return text  # the usual case, and already what the rest would give
    raw = text.encode("latin-1", "replace")
    for bad in (b"\r", b"\n", b"\0"):
        raw = raw.replace(bad, b" ")
    return raw.decode("utf-8", "surrogateescape")


_KEYS: Dict[str, Optional[str]] = {}


def variable_name(header: str) -> Optional[str]:
    """'X-Forwarded-For' -> 'HTTP_X_FORWARDED_FOR'; None for a name that is dropped."""
    if not is_token(header) or not header.replace("-", "").isalnum() or not header.isascii() or header.lower() == "proxy":
        return None
    return "HTTP_" + header.upper().replace("-", "_")


def header_variables(headers: Tuple[Tuple[str, str], ...]) -> Dict[str, str]:
    """HTTP_* variables (RFC 3875 section 4.1.18): repeats joined with ', '
    (Cookie: with '; ').

    Names with anything but letters, digits and '-' are dropped (as Apache
    does): '_' so 'X_Forwarded_For' cannot pose as 'X-Forwarded-For', and
    token characters such as '!', '$' or '`' so every name is one a shell can
    hold. 'Proxy' is dropped so HTTP_PROXY cannot be set by a client (httpoxy,
    CVE-2016-5385).
    """
    out: Dict[str, str] = {}
    for name, value in headers:
        key = _KEYS.get(name, "")
        if key == "":
            key = variable_name(name)
            if len(_KEYS) < 512:  # header names repeat; a client inventing new ones gets no cache
                _KEYS[name] = key
        if key is None:
            continue
        value = to_env(value.strip())
        if key in out:
            # Cookie lines are joined as one Cookie header is written (RFC 6265
            # section 5.4, RFC 9113 section 8.2.3); other repeats with ', '.
            value = f"{out[key]}; {value}" if key == "HTTP_COOKIE" else f"{out[key]}, {value}"
        out[key] = value
    return out



def build_environment(
    request: Request,
    *,
    script_name: str,
    path_info: str,
    path_translated: str,
    remote_host: str,
    unique_id: str,
    server_software: str,
    passed_env: Mapping[str, str],
) -> Dict[str, str]:
    default_port = 443 if request.tls else 80
    server_name, server_port = split_host(request.forwarded_host or request.header("host"), default_port)
    if not server_name:
        server_name, server_port = request.local[0], str(request.local[1])
    env = dict(passed_env)
    env.update(header_variables(request.headers))
    # The CGI variables come last so no header or passed variable can override them.
    env.update(
        {
            "AUTH_TYPE": "",
            "CONTENT_LENGTH": "",
            "CONTENT_TYPE": "",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "PATH_INFO": to_env(path_info),
            "PATH_TRANSLATED": to_env(path_translated),
            "QUERY_STRING": to_env(request.query),
            "REMOTE_ADDR": request.remote[0],
            "REMOTE_HOST": remote_host,
            "REMOTE_IDENT": "",
            "REMOTE_PORT": str(request.remote[1]),
            "REMOTE_USER": "",
            "REQUEST_METHOD": request.method,
            "REQUEST_URI": to_env(request.target),
            "SCRIPT_NAME": to_env(script_name),
            "SERVER_NAME": to_env(server_name),
            "SERVER_PORT": server_port,
            "SERVER_PROTOCOL": f"HTTP/{request.http_version}",
            "SERVER_SOFTWARE": server_software,
            "UNIQUE_ID": unique_id,
        }
    )
    if request.tls:
        env["HTTPS"] = "on"
    return env
