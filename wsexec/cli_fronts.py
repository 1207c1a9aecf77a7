"""The command-line options for TLS, unix sockets, proxies, socket activation,
inetd, several processes on one port, compression and the inbound message
limit, and the control API (wsexec/net/, wsexec/deflate.py,
wsexec/control.py), kept apart from cli.py's core list."""

from __future__ import annotations

import os
from typing import Any, Callable, Dict

import click

from .config import parse_size, parse_window
from .net.listen import activated_fds, forget_activation


class Parsed(click.ParamType):
    """A value read by one of config's pure parsers; its ValueError is
    click's usage error (exit 2). `done` is the type of a value already
    parsed (a default given as such)."""

    def __init__(self, name: str, parse: Callable[[str], Any], done: type) -> None:
        self.name, self.parse, self.done = name, parse, done

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, self.done):
            return value
        try:
            return self.parse(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


SIZE = Parsed("SIZE", parse_size, int)
WINDOW = Parsed("COLSxROWS", parse_window, tuple)


class OctalMode(click.ParamType):
    name = "MODE"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, int):
            return value
        text = str(value).strip().lower().removeprefix("0o")
        try:
            mode = int(text, 8)
        except ValueError:
            self.fail(f"not an octal mode: {value!r} (e.g. 660)", param, ctx)
        if not 0 <= mode <= 0o777:
            self.fail(f"not a permission mode: {value!r} (000 to 777)", param, ctx)
        return mode


OPTIONS = [
    click.option("--ssl", is_flag=True, help="Serve TLS (wss:// and https://); needs --sslcert and --sslkey. TLS 1.2 at least."),
    click.option("--sslcert", metavar="FILE", help="TLS certificate chain (PEM)."),
    click.option("--sslkey", metavar="FILE", help="TLS private key (PEM)."),
    click.option("--sslca", metavar="FILE", help="Require client certificates signed by the CAs in FILE (PEM, or a hashed directory): mutual TLS. The handler gets SSL_CLIENT_S_DN, SSL_CLIENT_VERIFY and the rest of mod_ssl's SSL_CLIENT_* variables."),
    click.option("--unixsocket", metavar="PATH", help="Listen on a unix domain socket at PATH instead of TCP (add --address to listen on TCP too). A stale socket file is replaced."),
    click.option("--unixsocket-mode", type=OctalMode(), default="660", show_default=True, help="Permissions of the --unixsocket file, octal."),
    click.option("--trusted-proxy", "trusted_proxies", multiple=True, metavar="CIDR", help="Believe Forwarded and X-Forwarded-For/-Proto/-Host from this address or network ('unix': unix socket peers) for REMOTE_ADDR, REMOTE_PORT, HTTPS and SERVER_NAME; repeatable."),
    click.option("--proxy-protocol", is_flag=True, help="Every connection starts with a PROXY protocol v1 or v2 header (haproxy send-proxy, stunnel protocol = proxy); without one it is refused."),
    click.option("--inetd", is_flag=True, help="Serve the one connection on stdin/stdout, then exit (inetd, xinetd, systemd Accept=yes)."),
    click.option("--maxframesize", type=SIZE, default=None, help="Largest client message, as websocketd's flag (beyond it, close 1009); stdout lines keep --maxmessage. 0: no limit, each message is streamed to the handler as its frames arrive, never held whole (not with --shared, --framed, --callback or --compress). Default: --maxmessage."),
    click.option("--compress", is_flag=True, help="Accept permessage-deflate (RFC 7692) when a client offers it: messages both ways are compressed."),
    click.option("--compresswindow", type=int, default=10, show_default=True, metavar="BITS", help="With --compress: the zlib window (9-15 bits) kept per connection between messages, bounding its memory (10: about 23 KiB per connection; 15: about 290 KiB). 0: no context kept, nothing held per connection, short messages compress little."),
    click.option("--compressmin", type=SIZE, default="32", show_default=True, help="With --compress: messages shorter than this are sent uncompressed."),
    click.option("--shared", is_flag=True, help="Run COMMAND (or each --dir script) once for all its clients: every client message goes to its stdin, every line it prints to every client."),
    click.option("--tagged", is_flag=True, help="With --shared: the process talks to clients one by one: '+ID<TAB>ENV', 'ID<TAB>MESSAGE' and '-ID<TAB>CODE' on its stdin; 'ID<TAB>MESSAGE', '*<TAB>MESSAGE' and '-ID<TAB>CODE REASON' on its stdout."),
    click.option("--topics", is_flag=True, help="With --shared: a line's first word is its topic; a client given ?topic=PATTERN (repeatable; shell-style, * matches /) gets only the lines whose topic matches."),
    click.option("--lingerms", type=int, default=0, show_default=True, help="With --shared: milliseconds the process runs on after its last client left."),
    click.option("--sharedqueue", type=SIZE, default="64K", show_default=True, help="With --shared: most output bytes waiting for one client; while a client's queue is full the process's output is not read."),
    click.option("--sharedstallms", type=int, default=500, show_default=True, help="With --shared: a client whose queue stays full this long is closed (1008), so the others go on."),
    click.option("--callback", metavar="URL", help="In place of COMMAND: each connection's events as HTTP requests to URL (http:// or https://, the client's path and query appended): GET before the upgrade (2xx accepts, any other status refuses), POST per client message (a 2xx body is the reply), DELETE at the end."),
    click.option("--callback-concurrency", type=int, default=100, show_default=True, help="With --callback: most requests to the API in flight at once, over at most this many kept-alive connections."),
    click.option("--callbacktimeoutms", type=int, default=29_000, show_default=True, help="With --callback: milliseconds a request to the API may take (waiting for a pooled connection included); then 504 at connect, 1011 for a message."),
    click.option("--cwd", metavar="DIR", help="Run handlers and CGI scripts in DIR ('script': each in its own file's directory, as Apache runs CGI scripts). Default: wsexec's working directory."),
    click.option("--pty", is_flag=True, help="Give each WebSocket handler a pseudo-terminal in raw mode as stdin and stdout, so programs that buffer output when it is not a terminal (python, grep, tr, awk, sed, perl) send every line at once. stderr stays a pipe to the log. When the connection ends the terminal is hung up (SIGHUP, then the usual ladder). None left: HTTP 503."),
    click.option("--ptysize", type=WINDOW, default="80x24", show_default=True, metavar="COLSxROWS", help="With --pty: the terminal's window size in columns and rows, as programs such as ps, ls and top read it."),
    click.option("--user", metavar="NAME", help="Run handlers and CGI scripts as this user (a name or uid), in its group unless --group is given, without supplementary groups. wsexec must run as root."),
    click.option("--group", metavar="NAME", help="Run handlers and CGI scripts in this group (a name or gid), without supplementary groups. wsexec must run as root."),
    click.option("--rlimit", "rlimits", multiple=True, metavar="NAME=VALUE", help="A resource limit for handlers and CGI scripts, set before they start: cpu (seconds; SIGXCPU, SIGKILL a second later), as, data, fsize, core (bytes, K/M/G allowed), nofile, nproc; VALUE is SOFT or SOFT:HARD, or unlimited. Repeatable."),
    click.option("--reuseport", is_flag=True, help="Let several wsexec processes listen on the same address and port (SO_REUSEPORT); the kernel spreads connections among them."),
    click.option("--control", metavar="ADDRESS", help="Serve the control API (list, push to, close connections by id; /metrics, /healthz, /readyz) on unix:PATH or HOST:PORT, never the public port. A TCP address must be loopback unless --control-token is given."),
    click.option("--control-mode", type=OctalMode(), default="600", show_default=True, help="Permissions of a unix:PATH --control socket, octal."),
    click.option("--control-token", metavar="TOKEN", help="Every control request but /healthz and /readyz must carry 'Authorization: Bearer TOKEN' (else 401)."),
    click.option("--pushtimeoutms", type=int, default=5_000, show_default=True, help="Milliseconds a control API push waits for a client that does not read; then 503 with Retry-After."),
    click.option("--drainms", type=int, default=0, show_default=True, help="On SIGTERM or SIGINT, answer /readyz with 503 at once and keep accepting clients this long, then stop gracefully."),
]


def front_options(fn: Callable) -> Callable:
    for option in reversed(OPTIONS):
        fn = option(fn)
    return fn


def front_settings(values: Dict[str, Any]) -> Dict[str, Any]:
    """Config fields from the options' values, plus the sockets systemd passed
    (LISTEN_FDS / LISTEN_PID, read once here at start-up)."""
    settings = dict(values)
    settings["trusted_proxies"] = tuple(settings.get("trusted_proxies", ()))
    settings["rlimits"] = tuple(settings.get("rlimits", ()))
    settings["listen_fds"] = activated_fds(os.environ, os.getpid())
    forget_activation(os.environ)  # type: ignore[arg-type]
    return settings
