"""Command line: click options -> one frozen Config -> the server."""

from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence, Set

import click
from click.core import ParameterSource

from . import __version__
from .cli_fronts import SIZE, Parsed, front_options, front_settings
from .config import DEFAULT_PORT, LOG_FORMATS, LOG_LEVELS, Config, ConfigError, load, parse_header


HEADER_LINE = Parsed("'NAME: VALUE'", parse_header, tuple)


class EnvAssignment(click.ParamType):
    name = "NAME=VALUE"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, tuple):
            return value
        name, sep, text = value.partition("=")
        if not sep:
            self.fail(f"expected NAME=VALUE, got {value!r}", param, ctx)
        return name, text


def show_license(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from .license import LICENSE

        click.echo(LICENSE, nl=False)
        ctx.exit(0)


def split_list(value: str) -> tuple:
    return tuple(item.strip() for item in value.split(",") if item.strip())


@click.command(
    context_settings={"allow_interspersed_args": False, "help_option_names": ["--help", "-h"]},
    help="Run COMMAND for every WebSocket connection: client messages go to its stdin, "
    "its stdout lines come back as messages, and the HTTP request reaches it as "
    "CGI environment variables.",
)
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True, help="TCP port to listen on (0: any free port).")
@click.option("--address", multiple=True, metavar="HOST", help="Interface to listen on; repeat for several. Default: every interface, IPv4 and IPv6.")
@click.option("--dir", "dir_", type=click.Path(file_okay=False), help="Serve every executable in DIR by URL path instead of one COMMAND.")
@click.option("--binary", is_flag=True, help="Binary mode: stdout bytes go out as binary messages as read; client messages go to stdin raw.")
@click.option("--framed", is_flag=True, help="Framed mode: every message, text or binary, is one record 'TYPE LENGTH\\n' + payload + '\\n' both ways (TYPE t, b; c closes).")
@click.option("--passstderr", is_flag=True, help="Send stdout and stderr lines to the client as JSON text messages {\"stream\":\"stdout\"|\"stderr\",\"data\":...} (websocketd's); stderr is still logged.")
@click.option("--maxforks", type=int, default=0, show_default=True, help="Most handlers (WebSocket and CGI) running at once; beyond it, answer HTTP 429. 0: no limit.")
@click.option("--closems", type=int, default=0, show_default=True, help="Extra milliseconds before the SIGINT/SIGTERM/SIGKILL ladder starts when a connection ends.")
@click.option("--passenv", default="PATH,LD_LIBRARY_PATH", show_default=True, help="Comma-separated variables of wsexec's environment passed to handlers.")
@click.option("--env", "env", multiple=True, type=EnvAssignment(), help="A variable for handlers and CGI scripts, after the --passenv ones (the CGI variables still win); repeatable.")
@click.option("--reverselookup", is_flag=True, help="Resolve the client address to a host name for REMOTE_HOST.")
@click.option("--origin", default="", metavar="LIST", help="Comma-separated allowed origins (host, host:port or scheme://host:port); others get 403.")
@click.option("--sameorigin", is_flag=True, help="Allow only an Origin whose host matches the Host header.")
@click.option("--header", multiple=True, type=HEADER_LINE, help="Header added to every response; repeatable.")
@click.option("--header-ws", multiple=True, type=HEADER_LINE, help="Header added to WebSocket upgrade responses; repeatable.")
@click.option("--header-http", multiple=True, type=HEADER_LINE, help="Header added to plain HTTP responses; repeatable.")
@click.option("--loglevel", type=click.Choice(LOG_LEVELS), default="access", show_default=True, help="Least severe log level shown.")
@click.option("--log", "log_target", default="stderr", show_default=True, metavar="TARGET", help="Where the log goes: stderr, stdout, or a file appended to (created with mode 0640 less the umask; give ./stdout for a file named stdout). SIGHUP reopens the file, for logrotate.")
@click.option("--logformat", type=click.Choice(LOG_FORMATS), default="text", show_default=True, metavar="FORMAT", help="Log line format: text, or json (one JSON object per line, for journald, Loki or Elasticsearch).")
@click.option("--maxmessage", type=SIZE, default="4M", show_default=True, help="Largest message, either way (also the longest stdout line); beyond it, close 1009.")
@click.option("--maxheader", type=SIZE, default="16K", show_default=True, help="Largest HTTP request head; beyond it, answer 431.")
@click.option("--handshakems", type=int, default=10_000, show_default=True, help="Milliseconds a client has to send its complete request head.")
@click.option("--gracems", type=int, default=2_000, show_default=True, help="Milliseconds to wait for the client's close reply, and for connections to end on shutdown.")
@click.option("--pingms", type=int, default=0, show_default=True, help="Send a ping every MS milliseconds; a client silent for two intervals is dropped. 0: no pings.")
@click.option("--idlems", type=int, default=0, show_default=True, help="Close a connection (1000) with no message either way for MS milliseconds; its handler is stopped as when a client leaves. 0: never.")
@click.option("--lifetimems", type=int, default=0, show_default=True, help="Close a connection (1000) open for MS milliseconds; its handler is stopped as when a client leaves. 0: never.")
@click.option("--subprotocol", multiple=True, metavar="NAME", help="Accept this WebSocket subprotocol when a client offers it (its first offer that is listed wins; the handler gets WEBSOCKET_PROTOCOL); repeatable.")
@click.option("--staticdir", type=click.Path(file_okay=False), metavar="DIR", help="Serve the files in DIR to plain HTTP GET and HEAD requests.")
@click.option("--cgidir", type=click.Path(file_okay=False), metavar="DIR", help="Run the executables in DIR as CGI/1.1 scripts for plain HTTP requests.")
@click.option("--cgitimeoutms", type=int, default=60_000, show_default=True, help="Milliseconds a CGI script may run; then it is killed (504 if it sent no header yet).")
@click.option("--devconsole", is_flag=True, help="Answer plain HTTP GET with a page for trying the WebSocket handler in a browser.")
@click.option("--redirport", type=int, metavar="PORT", help="Also listen on PORT for plain HTTP and redirect every request to the https:// URL on --port.")
@front_options  # --ssl, --unixsocket, --trusted-proxy, --proxy-protocol, --inetd... (wsexec/cli_fronts.py)
@click.option("--license", is_flag=True, expose_value=False, is_eager=True, callback=show_license, help="Print the license (MIT) and exit.")
@click.version_option(__version__, "--version", prog_name="wsexec", message="%(prog)s %(version)s")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="COMMAND [ARGS]...")
def command(
    port: int,
    address: Sequence[str],
    dir_: Optional[str],
    binary: bool,
    framed: bool,
    passstderr: bool,
    maxforks: int,
    closems: int,
    passenv: str,
    env: Sequence,
    reverselookup: bool,
    origin: str,
    sameorigin: bool,
    header: Sequence,
    header_ws: Sequence,
    header_http: Sequence,
    loglevel: str,
    log_target: str,
    logformat: str,
    maxmessage: int,
    maxheader: int,
    handshakems: int,
    gracems: int,
    staticdir: Optional[str],
    cgidir: Optional[str],
    pingms: int,
    idlems: int,
    lifetimems: int,
    subprotocol: Sequence[str],
    cgitimeoutms: int,
    devconsole: bool,
    redirport: Optional[int],
    command: Sequence[str],
    **fronts,  # type: ignore[no-untyped-def]
) -> None:
    passenv_names = split_list(passenv)
    config = Config(
        **front_settings(fronts),
        command=tuple(command),
        dir=dir_,
        port=port,
        port_defaulted=click.get_current_context().get_parameter_source("port") == ParameterSource.DEFAULT,
        addresses=tuple(address),
        binary=binary,
        framed=framed,
        passstderr=passstderr,
        maxforks=maxforks,
        closems=closems,
        passenv=passenv_names,
        reverselookup=reverselookup,
        origins=split_list(origin),
        sameorigin=sameorigin,
        headers=tuple(header),
        headers_ws=tuple(header_ws),
        headers_http=tuple(header_http),
        loglevel=loglevel,
        log=log_target,
        logformat=logformat,
        maxmessage=maxmessage,
        maxheader=maxheader,
        handshakems=handshakems,
        gracems=gracems,
        passed_env={name: os.environ[name] for name in passenv_names if name in os.environ},
        staticdir=staticdir,
        cgidir=cgidir,
        cgitimeoutms=cgitimeoutms,
        subprotocols=tuple(subprotocol),
        pingms=pingms,
        idlems=idlems,
        lifetimems=lifetimems,
        env=tuple(env),
        devconsole=devconsole,
        redirport=redirport,
    )
    try:
        config = load(config)
    except ConfigError as e:
        click.echo(f"wsexec: {e}", err=True)
        sys.exit(e.exit_code)

    from .server import run

    sys.exit(run(config))


TRUE_WORDS = ("1", "t", "true", "yes", "on")
FALSE_WORDS = ("0", "f", "false", "no", "off")


def go_style_flags(argv: Sequence[str], takes_value: Set[str], flags: Set[str]) -> List[str]:
    """websocketd (Go's flag package) also takes '-port=8080' and
    '--binary=true': rewrite those to click's spelling, up to COMMAND."""
    out = list(argv)
    i = 0
    while i < len(out):
        arg = out[i]
        if arg == "--" or not arg.startswith("-") or arg == "-":
            break  # COMMAND (or the end of options): the rest is the handler's
        if not arg.startswith("--") and len(arg) > 2 and "--" + arg[1:].split("=", 1)[0] in takes_value | flags:
            arg = out[i] = "-" + arg
        name, eq, value = arg.partition("=")
        if name in flags and eq:
            if value.lower() in TRUE_WORDS:
                out[i] = name
            elif value.lower() in FALSE_WORDS:
                del out[i]
                continue
        elif name in takes_value and not eq:
            i += 1  # its value follows
        i += 1
    return out


def main() -> None:
    takes_value, flags = set(), set()
    for param in command.params:
        if isinstance(param, click.Option):
            (flags if param.is_flag else takes_value).update(o for o in param.opts if o.startswith("--"))
    command(args=go_style_flags(sys.argv[1:], takes_value, flags), prog_name="wsexec")
