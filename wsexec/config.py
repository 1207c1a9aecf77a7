"""The frozen configuration, built once by the command line and passed down."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
from dataclasses import dataclass, field, replace
from typing import Mapping, Optional, Tuple
from urllib.parse import urlsplit

from .http.syntax import is_token
from .log import FORMATS as LOG_FORMATS
from .log import STREAMS, open_file
from .net.proxy import parse_trust
from .net.tls import make_context
from .proc.launch import Limit, parse_limits
from .proc.shebang import script_problem

# Exit codes, as websocketd documents them.
EXIT_BAD_COMMAND = 1
EXIT_USAGE = 2
EXIT_CANNOT_LISTEN = 3
EXIT_BAD_COMBINATION = 4

DEFAULT_PORT = 80

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

LOG_LEVELS = ("debug", "trace", "access", "info", "error", "fatal", "none")

Header = Tuple[str, str]


class ConfigError(Exception):
    """A configuration that cannot run; carries the process exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Config:
    command: Tuple[str, ...] = ()  # program and its arguments (command mode)
    dir: Optional[str] = None  # script directory (--dir mode), absolute
    port: int = DEFAULT_PORT
    # --port was not given (the default is used): only for the hint in a
    # cannot-listen message (wsexec/net/listen.py). The command line sets it
    # from click's parameter source, so '--port 80' given is not defaulted.
    port_defaulted: bool = False
    addresses: Tuple[str, ...] = ()  # empty: every interface, IPv4 and IPv6
    binary: bool = False
    framed: bool = False  # a record per message both ways (wsexec/proc/framing.py)
    passstderr: bool = False  # stdout and stderr lines to the client as JSON (websocketd's --passstderr)
    maxforks: int = 0  # 0: unlimited
    closems: int = 0
    passenv: Tuple[str, ...] = ("PATH", "LD_LIBRARY_PATH")
    reverselookup: bool = False
    origins: Tuple[str, ...] = ()
    sameorigin: bool = False
    headers: Tuple[Header, ...] = ()
    headers_ws: Tuple[Header, ...] = ()
    headers_http: Tuple[Header, ...] = ()
    loglevel: str = "access"
    log: str = "stderr"  # "stderr", "stdout", or a file path (absolute once loaded)
    logformat: str = "text"  # LOG_FORMATS
    maxmessage: int = 4 * 1024 * 1024
    # Largest inbound message (websocketd's --maxframesize); None: maxmessage;
    # 0: no limit, each message streamed to the handler as its frames arrive.
    maxframesize: Optional[int] = None
    # permessage-deflate (RFC 7692, wsexec/deflate.py).
    compress: bool = False
    compresswindow: int = 10  # window bits with context kept; 0: no context kept either way
    compressmin: int = 32  # messages shorter than this go uncompressed
    maxheader: int = 16 * 1024
    handshakems: int = 10_000
    gracems: int = 2_000
    # The --passenv variables as wsexec's own environment had them at start-up.
    passed_env: Mapping[str, str] = field(default_factory=dict)
    # Plain HTTP on the same port (wsexec/http/plain.py): absolute paths once validated.
    staticdir: Optional[str] = None
    cgidir: Optional[str] = None
    devconsole: bool = False
    redirport: Optional[int] = None  # plain HTTP listener that redirects to https://
    cgitimeoutms: int = 60_000
    pingms: int = 0  # 0: no keepalive pings
    idlems: int = 0  # a connection with no message either way this long is closed; 0: never
    lifetimems: int = 0  # a connection open this long is closed; 0: never
    # --env NAME=VALUE: added to passed_env by load(), after the --passenv variables.
    env: Tuple[Tuple[str, str], ...] = ()
    subprotocols: Tuple[str, ...] = ()  # offered WebSocket subprotocols wsexec may accept
    # Listeners and what comes before HTTP (wsexec/net/listen.py, front.py, tls.py, proxy.py).
    ssl: bool = False
    sslcert: Optional[str] = None
    sslkey: Optional[str] = None
    sslca: Optional[str] = None  # CA file or directory: client certificates required
    unixsocket: Optional[str] = None
    unixsocket_mode: int = 0o660
    trusted_proxies: Tuple[str, ...] = ()  # CIDRs, addresses, or 'unix'
    proxy_protocol: bool = False
    inetd: bool = False  # serve the one connection on stdin/stdout
    listen_fds: Tuple[int, ...] = ()  # inherited by systemd socket activation (read at start-up)
    reuseport: bool = False  # SO_REUSEPORT: several wsexec processes on one address and port
    cwd: Optional[str] = None  # handlers' working directory: a directory, or "script" (each one's own)
    # Handler controls (wsexec/proc/terminal.py, launch.py).
    pty: bool = False  # stdin and stdout a raw pseudo-terminal
    ptysize: Tuple[int, int] = (80, 24)  # its window: columns, rows
    user: Optional[str] = None  # --user, --group: names or ids as given...
    group: Optional[str] = None
    rlimits: Tuple[str, ...] = ()  # --rlimit NAME=VALUE as given
    run_as: Tuple[Optional[int], Optional[int]] = (None, None)  # ...as uid and gid, set by load()
    limits: Tuple[Limit, ...] = ()  # --rlimit parsed, by load()
    prlimit: str = ""  # prlimit's path, for --rlimit where the gate cannot be had (wsexec/proc/gate.py)
    setpriv: str = ""  # setpriv's path, for --user and --group where the spawner thread cannot take them
    # --shared (wsexec/backends/shared.py): one process for many clients.
    shared: bool = False
    tagged: bool = False
    topics: bool = False
    lingerms: int = 0
    sharedqueue: int = 64 * 1024  # bytes of output waiting for one client
    sharedstallms: int = 500  # a client whose queue stays full this long is closed
    # The control API (wsexec/control.py): its own listener, never the public port.
    control: Optional[str] = None  # "unix:PATH" or "HOST:PORT"
    control_mode: int = 0o600
    control_token: Optional[str] = None
    pushtimeoutms: int = 5_000  # most a push waits for a client that does not read
    drainms: int = 0  # on SIGTERM: /readyz says 503 and clients are still accepted this long
    # --callback (wsexec/backends/callback.py): each connection's events as HTTP requests to an API.
    callback: Optional[str] = None  # http:// or https:// URL, in place of COMMAND
    callback_concurrency: int = 100  # most requests to the API in flight (and pooled connections)
    callbacktimeoutms: int = 29_000  # each request's whole time (AWS API Gateway's 29 s)

    @property
    def has_handler(self) -> bool:
        """Whether WebSocket upgrades go anywhere (else the site alone is served)."""
        return bool(self.command or self.dir or self.callback)

    @property
    def inbound_limit(self) -> int:
        """The largest client message (0: none, streamed)."""
        return self.maxmessage if self.maxframesize is None else self.maxframesize

    @property
    def serves_plain(self) -> bool:
        """Whether plain HTTP requests are answered (else 404 and close)."""
        return bool(self.devconsole or self.cgidir or self.staticdir)


def parse_header(text: str) -> Header:
    """'Name: value' -> ('Name', 'value'); rejects names that are not tokens."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not name or not is_token(name):
        raise ValueError(f"expected 'Name: value', got {text!r}")
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"header value may not contain CR, LF or NUL: {text!r}")
    return name, value




def parse_size(text: str) -> int:
    """'65536', '64K', '16M' -> bytes."""
    text = text.strip().upper()
    if text.endswith("B"):
        text = text[:-1]
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
    number = text[:-1] if scale > 1 else text
    if not number.isdigit():
        raise ValueError(f"not a size: {text!r} (use bytes, or a K, M or G suffix)")
    return int(number) * scale


def parse_window(text: str) -> Tuple[int, int]:
    """'80x24' -> (80, 24): a terminal's columns and rows, 1-65535 each."""
    cols, sep, rows = text.strip().lower().partition("x")
    if not (sep and cols.isdigit() and rows.isdigit() and 0 < int(cols) < 65536 and 0 < int(rows) < 65536):
        raise ValueError(f"not a window size: {text!r} (COLSxROWS, e.g. 80x24)")
    return int(cols), int(rows)


def resolve_command(program: str, search_path: Optional[str]) -> str:
    """The absolute path of the program to run, as the shell would find it."""
    if os.sep in program:
        path = os.path.abspath(program)
        if not os.path.isfile(path):
            raise ConfigError(f"command not found: {program}", EXIT_BAD_COMMAND)
        if not os.access(path, os.X_OK):
            raise ConfigError(f"command is not executable: {program}", EXIT_BAD_COMMAND)
        return path
    found = shutil.which(program, path=search_path)
    if found is None:
        raise ConfigError(f"command not found in PATH: {program}", EXIT_BAD_COMMAND)
    return os.path.abspath(found)


LOOPBACK_NAMES = ("localhost", "ip6-localhost")


def parse_control(address: str) -> Tuple[str, str, int]:
    """--control: ('unix', PATH, 0) or ('tcp', HOST, PORT); ValueError if it is neither."""
    if address.startswith("unix:"):
        path = address[5:]
        if not path:
            raise ValueError("--control unix:PATH needs a path")
        return "unix", path, 0
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--control must be unix:PATH or HOST:PORT, not {address!r}")
    return "tcp", host, int(port)


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate_control(config: Config) -> None:
    """A TCP control address must be loopback unless requests need a token."""
    if config.control is None:
        if config.control_token is not None:
            raise ConfigError("--control-token needs --control", EXIT_BAD_COMBINATION)
        return
    try:
        kind, host, _ = parse_control(config.control)
    except ValueError as e:
        raise ConfigError(str(e), EXIT_USAGE) from None
    if config.control_token is not None and (not config.control_token or any(c.isspace() for c in config.control_token)):
        raise ConfigError("--control-token must be non-empty, without spaces", EXIT_USAGE)
    if kind == "tcp" and not is_loopback(host) and config.control_token is None:
        raise ConfigError(f"--control {config.control}: a control address other than loopback needs --control-token",
                          EXIT_BAD_COMBINATION)
    if not 0 <= config.control_mode <= 0o777:
        raise ConfigError("--control-mode must be an octal mode such as 600", EXIT_USAGE)
    if config.inetd:
        raise ConfigError("--inetd serves one connection: it takes no --control", EXIT_BAD_COMBINATION)


def validate(config: Config) -> Config:
    """Check the combination of options, without touching any file; raises
    ConfigError. load() then does the checks that need the file system."""
    has_handler = config.has_handler
    if config.dir and config.command:
        raise ConfigError("give either --dir or a COMMAND, not both", EXIT_BAD_COMBINATION)
    if not has_handler and not (config.staticdir or config.cgidir):
        raise ConfigError("missing COMMAND (or --dir, --callback, or a site to serve with --staticdir or --cgidir)", EXIT_USAGE)
    if config.devconsole and not has_handler:
        raise ConfigError("--devconsole tries a WebSocket handler: give COMMAND or --dir", EXIT_BAD_COMBINATION)
    if config.origins and config.sameorigin:
        raise ConfigError("give either --origin or --sameorigin, not both", EXIT_BAD_COMBINATION)
    for name in config.subprotocols:
        if not is_token(name):
            raise ConfigError(f"--subprotocol must be a token, not {name!r}", EXIT_USAGE)
    if config.loglevel not in LOG_LEVELS:
        raise ConfigError(f"unknown --loglevel {config.loglevel!r}", EXIT_USAGE)
    if config.logformat not in LOG_FORMATS:
        raise ConfigError(f"unknown --logformat {config.logformat!r}", EXIT_USAGE)
    if not config.log:
        raise ConfigError("--log must be stderr, stdout or a file path", EXIT_USAGE)
    for name, value, low in (
        ("--port", config.port, 0),
        ("--maxforks", config.maxforks, 0),
        ("--closems", config.closems, 0),
        ("--maxmessage", config.maxmessage, 126),
        ("--maxheader", config.maxheader, 1024),
        ("--handshakems", config.handshakems, 1),
        ("--gracems", config.gracems, 0),
        ("--pingms", config.pingms, 0),
        ("--idlems", config.idlems, 0),
        ("--lifetimems", config.lifetimems, 0),
        ("--cgitimeoutms", config.cgitimeoutms, 1),
        ("--pushtimeoutms", config.pushtimeoutms, 1),
        ("--drainms", config.drainms, 0),
        ("--lingerms", config.lingerms, 0),
        ("--sharedqueue", config.sharedqueue, 1024),
        ("--sharedstallms", config.sharedstallms, 1),
        ("--maxframesize", config.maxframesize or 0, 0),
        ("--compressmin", config.compressmin, 0),
        ("--callback-concurrency", config.callback_concurrency, 1),
        ("--callbacktimeoutms", config.callbacktimeoutms, 1),
    ):
        if value < low:
            raise ConfigError(f"{name} must be at least {low}", EXIT_USAGE)
    if config.port > 65535:
        raise ConfigError("--port must be at most 65535", EXIT_USAGE)
    if config.redirport is not None and not 0 <= config.redirport <= 65535:
        raise ConfigError("--redirport must be between 0 and 65535", EXIT_USAGE)
    for name, value in config.env:
        if not ENV_NAME.fullmatch(name):
            raise ConfigError(f"--env needs NAME=VALUE with NAME a variable name (letters, digits, _; "
                              f"not a digit first), not {name + '=' + value!r}", EXIT_USAGE)
        if "\0" in value:
            raise ConfigError(f"--env {name}: a value may not contain NUL", EXIT_USAGE)
    validate_engine(config)
    validate_fronts(config)
    validate_control(config)
    validate_shared(config)
    validate_modes(config)
    validate_callback(config)
    try:
        parse_limits(config.rlimits)
    except ValueError as e:
        raise ConfigError(str(e), EXIT_BAD_COMBINATION) from None
    if config.pty and config.shared:
        raise ConfigError("--pty gives each connection's handler a terminal: not with --shared", EXIT_BAD_COMBINATION)
    return config


def validate_engine(config: Config) -> None:
    """--compress and --maxframesize."""
    if config.compresswindow != 0 and not 9 <= config.compresswindow <= 15:
        raise ConfigError("--compresswindow must be 0 (no context kept) or 9 to 15 (window bits)", EXIT_USAGE)
    if config.maxframesize == 0 and config.shared:
        # A streamed message holds the shared stdin until its last frame: one
        # slow client would stall every other client's input for that long.
        raise ConfigError("--maxframesize 0 streams each message to its handler: not with --shared, where "
                          "one client's unfinished message would hold up every other client's input",
                          EXIT_BAD_COMBINATION)
    if config.maxframesize == 0 and (config.framed or config.callback):
        # A --framed record starts with the message's length, and --callback
        # POSTs each message whole: neither can take a message in pieces.
        raise ConfigError("--maxframesize 0 streams each message in pieces: not with --framed or --callback, "
                          "which hand each message over whole", EXIT_BAD_COMBINATION)
    if config.maxframesize == 0 and config.compress:
        raise ConfigError("--maxframesize 0 with --compress would let a small compressed frame inflate without "
                          "bound: give --maxframesize a limit", EXIT_BAD_COMBINATION)
def callback_problem(url: str) -> str:
    """Why a --callback URL cannot be used ('' if it can)."""
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError for a bad port
    except ValueError as e:
        return f"not a URL: {e}"
    if parts.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    if not parts.hostname:
        return "needs a host"
    if parts.fragment or any(c.isspace() or not 32 < ord(c) < 127 for c in url):
        return "may not hold a #fragment, spaces, control or non-ASCII characters (percent-encode them)"
    return ""


def validate_callback(config: Config) -> None:
    """--callback replaces COMMAND, and takes no option that only means
    something for processes (--cgidir scripts are processes, so with --cgidir
    the process options are still theirs)."""
    if config.callback is None:
        return
    problem = callback_problem(config.callback)
    if problem:
        raise ConfigError(f"--callback {config.callback}: {problem}", EXIT_USAGE)
    given = [name for name, on in (
        ("COMMAND", config.command), ("--dir", config.dir), ("--shared", config.shared),
        ("--binary", config.binary), ("--tagged", config.tagged), ("--topics", config.topics),
        ("--framed", config.framed), ("--passstderr", config.passstderr), ("--pty", config.pty),
    ) if on]
    if not config.cgidir:
        given += [name for name, on in (
            ("--maxforks", config.maxforks), ("--closems", config.closems), ("--cwd", config.cwd),
            ("--env", config.env), ("--reverselookup", config.reverselookup), ("--user", config.user),
            ("--group", config.group), ("--rlimit", config.rlimits),
        ) if on]
    if given:
        raise ConfigError(f"--callback sends connections to an HTTP API, no process: not with {', '.join(given)}",
                          EXIT_BAD_COMBINATION)


def validate_modes(config: Config) -> None:
    """--binary, --framed and --passstderr each say what stdout is: one at a time."""
    if config.binary and config.passstderr:
        # websocketd refuses it too: binary reads cannot be wrapped as JSON text
        raise ConfigError("please give only one of --binary and --passstderr: binary output cannot be "
                          "wrapped in JSON lines", EXIT_BAD_COMBINATION)
    if config.framed and (config.binary or config.passstderr):
        raise ConfigError("--framed carries text and binary messages itself: not with --binary or --passstderr",
                          EXIT_BAD_COMBINATION)
    if config.shared and (config.framed or config.passstderr):
        raise ConfigError("--framed and --passstderr are per connection: not with --shared (a shared "
                          "process's records and stderr could not say which client they are for)",
                          EXIT_BAD_COMBINATION)


def validate_shared(config: Config) -> None:
    if (config.tagged or config.topics) and not config.shared:
        raise ConfigError("--tagged and --topics work with --shared", EXIT_BAD_COMBINATION)
    if config.tagged and config.topics:
        raise ConfigError("give either --tagged or --topics, not both", EXIT_BAD_COMBINATION)
    if config.binary and (config.tagged or config.topics):
        raise ConfigError("--tagged and --topics work on lines: not with --binary", EXIT_BAD_COMBINATION)
    if config.shared and not config.has_handler:
        raise ConfigError("--shared needs COMMAND or --dir", EXIT_BAD_COMBINATION)


def validate_fronts(config: Config) -> None:
    """--ssl and its files, --unixsocket, --trusted-proxy, --inetd."""
    if config.ssl and not (config.sslcert and config.sslkey):
        raise ConfigError("--ssl needs --sslcert and --sslkey", EXIT_BAD_COMBINATION)
    if not config.ssl and (config.sslcert or config.sslkey or config.sslca):
        raise ConfigError("--sslcert, --sslkey and --sslca need --ssl", EXIT_BAD_COMBINATION)
    if not 0 <= config.unixsocket_mode <= 0o777:
        raise ConfigError("--unixsocket-mode must be an octal mode such as 660", EXIT_USAGE)
    try:
        parse_trust(config.trusted_proxies)
    except ValueError as e:
        raise ConfigError(str(e), EXIT_USAGE) from None
    if config.inetd and (config.unixsocket or config.addresses or config.redirport is not None):
        raise ConfigError("--inetd serves stdin: it takes no --address, --unixsocket or --redirport",
                          EXIT_BAD_COMBINATION)
    if config.inetd and config.log == "stdout":
        raise ConfigError("--inetd: stdout is the connection, so the log cannot go there (--log stdout)",
                          EXIT_BAD_COMBINATION)


def check_log_file(path: str) -> str:
    """The absolute path of a --log file that can be opened for appending
    (created if missing), so SIGHUP reopens the same path whatever the
    working directory."""
    absolute = os.path.abspath(path)
    try:
        os.close(open_file(absolute))
    except OSError as e:
        raise ConfigError(f"cannot open the log file {path}: {e.strerror}", EXIT_BAD_COMMAND) from None
    return absolute


WRAPPER_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"


def _identity(kind: str, name: str) -> int:
    """A user's uid or a group's gid, by name or number; ConfigError if unknown."""
    import grp
    import pwd

    try:
        if name.isdigit():
            return int(name)
        return pwd.getpwnam(name).pw_uid if kind == "user" else grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"--{kind} {name}: no such {kind}", EXIT_BAD_COMBINATION) from None


def nr_open() -> Optional[int]:
    """The kernel's ceiling for a descriptor limit, if it says."""
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def load_launcher(config: Config) -> dict:
    """--user, --group, --rlimit: ids resolved, the limits checked against
    what wsexec may grant, the wrappers found (wsexec/proc/launch.py)."""
    if not (config.user or config.group or config.rlimits):
        return {}
    import resource

    root = os.geteuid() == 0
    if (config.user or config.group) and not root:
        raise ConfigError(f"--user and --group need wsexec to run as root (it runs as uid {os.geteuid()})",
                          EXIT_BAD_COMBINATION)
    uid = _identity("user", config.user) if config.user else None
    gid = _identity("group", config.group) if config.group else None
    if config.user and gid is None:
        import pwd

        try:
            gid = pwd.getpwuid(uid).pw_gid  # type: ignore[arg-type]
        except KeyError:
            raise ConfigError(f"--user {config.user}: no such user (give --group too)", EXIT_BAD_COMBINATION) from None
    limits = parse_limits(config.rlimits)
    if limits:
        from .proc.gate import CAP_SYS_RESOURCE, capable

        privileged = root and capable(CAP_SYS_RESOURCE)
    for limit in limits:
        if limit.name == "nofile":
            ceiling = nr_open()
            if ceiling is not None and (limit.hard == -1 or limit.hard > ceiling):
                raise ConfigError(f"--rlimit nofile: at most {ceiling} (/proc/sys/fs/nr_open)", EXIT_BAD_COMBINATION)
        own = resource.getrlimit(getattr(resource, f"RLIMIT_{limit.name.upper()}"))[1]
        if own == resource.RLIM_INFINITY or -1 < limit.hard <= own:
            continue
        # Raising a hard limit takes CAP_SYS_RESOURCE; prlimit, where the gate cannot be had, runs as
        # the handler's user (--user: taken before the exec), who may only lower one.
        who = ("wsexec (not root)" if not root else f"--user {config.user}" if uid not in (None, 0)
               else None if privileged else "wsexec (root without CAP_SYS_RESOURCE)")
        if who:
            raise ConfigError(f"--rlimit {limit.name}: {who} cannot raise the hard limit above wsexec's own, {own}",
                              EXIT_BAD_COMBINATION)
    tools = {}
    for tool, needed in (("prlimit", limits), ("setpriv", uid is not None or gid is not None)):  # fallbacks
        if needed:
            found = shutil.which(tool, path=WRAPPER_PATH)
            if found is None:
                raise ConfigError(f"{tool} (util-linux) not found in {WRAPPER_PATH}: needed by --user, --group or "
                                  f"--rlimit", EXIT_BAD_COMMAND)
            tools[tool] = found
    return {"run_as": (uid, gid), "limits": limits, "prlimit": tools.get("prlimit", ""), "setpriv": tools.get("setpriv", "")}


def load(config: Config) -> Config:
    """validate(), then what needs the file system: the handler found and
    executable (and its #! line, if any, naming an interpreter that is), the
    directories resolved to real paths, the TLS files loaded.
    Returns the config with every path absolute."""
    config = validate(config)
    if config.env:  # after the --passenv variables; the CGI variables still win (http/environment.py)
        config = replace(config, passed_env={**config.passed_env, **dict(config.env)})
    if config.ssl:
        try:
            make_context(config.sslcert, config.sslkey, config.sslca)  # type: ignore[arg-type]
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            raise ConfigError(f"cannot load the TLS certificate, key or CA: {e}", EXIT_BAD_COMMAND) from None
    resolved = {}
    for name in ("dir", "staticdir", "cgidir"):
        path = getattr(config, name)
        if path is not None:
            root = os.path.realpath(path)
            if not os.path.isdir(root):
                raise ConfigError(f"--{name} is not a directory: {path}", EXIT_BAD_COMMAND)
            resolved[name] = root
    if config.log not in STREAMS:
        resolved["log"] = check_log_file(config.log)
    if config.cwd is not None and config.cwd != "script":
        root = os.path.realpath(config.cwd)
        if not os.path.isdir(root):
            raise ConfigError(f"--cwd is not a directory: {config.cwd}", EXIT_BAD_COMMAND)
        resolved["cwd"] = root
    resolved.update(load_launcher(config))
    if config.command:
        program = resolve_command(config.command[0], config.passed_env.get("PATH"))
        problem = script_problem(program)
        if problem:  # it would fail on every connection: say why now
            raise ConfigError(f"{config.command[0]}: {problem}", EXIT_BAD_COMMAND)
        resolved["command"] = (program,) + tuple(config.command[1:])
    return replace(config, **resolved)
