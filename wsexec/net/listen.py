"""Where connections come from besides --address/--port: a unix domain socket
(--unixsocket), sockets inherited from systemd (socket activation), and the
one connection on stdin/stdout (--inetd)."""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from typing import List, Mapping, Optional, Sequence, Tuple

from ..config import DEFAULT_PORT, EXIT_CANNOT_LISTEN, Config, ConfigError

logger = logging.getLogger("wsexec.listen")

BACKLOG = 4096
SD_LISTEN_FDS_START = 3  # sd_listen_fds(3)


# --- why a listener could not be opened ------------------------------------------------

# The system's words for the usual errors, where strerror is unclear or capitalised.
ERROR_WORDS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EADDRINUSE: "address already in use",
    errno.EADDRNOTAVAIL: "address not available (no interface has it)",
    errno.ENOENT: "no such file or directory",
    errno.ENOTSOCK: "not a socket",
}
# Errors another port would avoid: only these get the hint about --port.
PORT_ERRORS = (errno.EACCES, errno.EPERM, errno.EADDRINUSE)


def error_words(error: OSError) -> str:
    """An OSError as lower-case words, not its repr: wsexec's own text as
    given, else the usual words for its errno, else its strerror."""
    text = error.strerror or str(error)
    if error.errno is not None and error.strerror == os.strerror(error.errno):
        text = ERROR_WORDS.get(error.errno, text)
    first = text.split(" ", 1)[0]
    return text if first.isupper() else text[:1].lower() + text[1:]  # 'AF_UNIX path too long' stays


def listen_message(target: str, error: OSError, default_port: bool = False) -> str:
    """'cannot listen on TARGET: WHY', with a hint when --port was not given
    and another port would help."""
    hint = ""
    if default_port and error.errno in PORT_ERRORS:
        hint = f" (the default port is {DEFAULT_PORT}; use --port)"
    return f"cannot listen on {target}: {error_words(error)}{hint}"


class CannotListen(Exception):
    """A listener could not be opened: what was being bound (an address and
    port, a unix socket path, an inherited fd) and the error."""

    def __init__(self, target: str, error: OSError, default_port: bool = False) -> None:
        super().__init__(listen_message(target, error, default_port))
        self.target = target
        self.error = error


def address_label(host: Optional[str], port: int) -> str:
    """'127.0.0.1:80', '[::]:80' (host None: every interface)."""
    host = "*" if host is None else host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- systemd socket activation -----------------------------------------------------


def activated_fds(environ: Mapping[str, str], pid: int) -> Tuple[int, ...]:
    """The descriptors systemd passed (sd_listen_fds(3)): LISTEN_FDS of them
    from fd 3 on, if LISTEN_PID names this process; otherwise none."""
    if environ.get("LISTEN_PID", "").strip() != str(pid):
        return ()
    count = environ.get("LISTEN_FDS", "").strip()
    if not count.isdigit() or int(count) == 0:
        return ()
    return tuple(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)))


def forget_activation(environ: dict) -> None:
    """As sd_listen_fds(unset_environment=1): the variables are for this process only."""
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(name, None)


def adopt(fds: Tuple[int, ...]) -> List[socket.socket]:
    """The inherited listening sockets, non-blocking and not inherited by handlers."""
    sockets = []
    for fd in fds:
        target = f"inherited fd {fd}"
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            raise CannotListen(target, e) from None
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.detach()
            raise CannotListen(target, OSError(
                errno.EINVAL, "not a listening stream socket (Accept=yes needs --inetd)")) from None
        sock.set_inheritable(False)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


# --- unix domain sockets -------------------------------------------------------------


def bind_unix(path: str, mode: int) -> socket.socket:
    """Listen on path with the given permissions. A stale socket file (nothing
    accepts on it) is replaced; a live one, or any other file, is refused.
    Raises CannotListen."""
    target = f"unix socket {path}"
    try:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise OSError(errno.EEXIST, "the file exists and is not a socket")
            if socket_is_live(path):
                raise OSError(errno.EADDRINUSE, "in use by a running server")
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as e:
        raise CannotListen(target, e) from None
    try:
        sock.bind(path)
        # Before listen(): nobody can connect until the permissions are right.
        os.chmod(path, mode)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise CannotListen(target, e) from None
    return sock


def socket_is_live(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as e:
        # EAGAIN: a full backlog is a live server
        return e.errno in (errno.EAGAIN, errno.EACCES, errno.EPERM)
    finally:
        probe.close()
    return True


def remove_unix(path: str, inode: Optional[int]) -> None:
    """Remove the socket file on the way out, if it is still ours."""
    try:
        if inode is not None and os.lstat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass


# --- all listeners ---------------------------------------------------------------------


def bind(hosts: Sequence[str], port: int, role: str = "", default_port: bool = False,
         reuseport: bool = False) -> List[socket.socket]:
    """One listening socket per address (all interfaces, v4 and v6, if none given).
    With port 0 every listener shares the first one's port. Raises
    CannotListen naming the address that failed (followed by role, e.g.
    '(--redirport)'); default_port: --port was not given (for the hint).
    reuseport lets several processes listen on the same address and port
    (the kernel spreads connections among them)."""
    sockets: List[socket.socket] = []
    suffix = f" {role}" if role else ""
    target = ""
    try:
        for host in list(hosts) or [None]:
            target = address_label(host, port)
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            seen = set()
            for family, type_, proto, _, addr in infos:
                if (family, addr) in seen:
                    continue
                seen.add((family, addr))
                target = address_label(addr[0], addr[1])
                sock = socket.socket(family, type_, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuseport:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if port == 0 and len(sockets) > 1:
                    addr = (addr[0], sockets[0].getsockname()[1]) + tuple(addr[2:])
                    target = address_label(addr[0], addr[1])
                sock.bind(addr)
                sock.listen(BACKLOG)
                sock.setblocking(False)
    except OSError as e:
        for sock in sockets:
            sock.close()
        raise CannotListen(target + suffix, e, default_port) from None
    return sockets


def open_listeners(config: Config) -> List[socket.socket]:
    """Inherited sockets if systemd passed some; otherwise --unixsocket and/or
    TCP (--unixsocket alone listens on the unix socket only; add --address
    to listen on TCP as well). Raises CannotListen."""
    if config.listen_fds:
        return adopt(config.listen_fds)
    sockets: List[socket.socket] = []
    if config.unixsocket:
        sockets.append(bind_unix(config.unixsocket, config.unixsocket_mode))
    try:
        if not config.unixsocket or config.addresses:
            sockets += bind(config.addresses, config.port, default_port=config.port_defaulted,
                            reuseport=config.reuseport)
    except CannotListen:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def describe(sock: socket.socket, tls: bool) -> str:
    """The URL printed in the `listening on` line."""
    name = sock.getsockname()
    scheme = "wss" if tls else "ws"
    if sock.family == socket.AF_UNIX:
        path = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        return f"{scheme}+unix:{path}"
    host, port = name[0], name[1]
    return f"{scheme}://[{host}]:{port}/" if ":" in host else f"{scheme}://{host}:{port}/"


# --- inetd -------------------------------------------------------------------------------


def inetd_socket() -> socket.socket:
    """The connection inetd (or systemd Accept=yes) put on stdin and stdout.
    It is moved off fds 0 and 1 (and 2, when stderr is the same socket), which
    then point at /dev/null, so nothing wsexec prints can reach the client."""
    try:
        st0 = os.fstat(0)
    except OSError:
        raise ConfigError("--inetd: no stdin", EXIT_CANNOT_LISTEN) from None
    if not stat.S_ISSOCK(st0.st_mode):
        raise ConfigError("--inetd: stdin is not a socket", EXIT_CANNOT_LISTEN)
    sock = socket.socket(fileno=os.dup(0))
    sock.set_inheritable(False)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        try:
            st = os.fstat(fd)
        except OSError:
            st = None
        if fd < 2 or (st is not None and (st.st_dev, st.st_ino) == (st0.st_dev, st0.st_ino)):
            os.dup2(devnull, fd)
    os.close(devnull)
    sock.setblocking(False)
    return sock
