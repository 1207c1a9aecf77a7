"""Start-up errors that say what failed: a listener that cannot be opened
names its address, port, path or fd."""

import errno
import os
import socket
import subprocess

import pytest

from helpers import PY, ROOT
from wsexec.net.listen import address_label, listen_message

ENV = dict(os.environ, PYTHONPATH=str(ROOT))
HINT = " (the default port is 80; use --port)"


def os_error(code, text=None):
    """An OSError as the system raises it (strerror the C library's words) or as wsexec's own."""
    return OSError(code, text if text is not None else os.strerror(code))


def start(args, timeout=20):
    return subprocess.run([PY, "-m", "wsexec", *args], cwd=ROOT, env=ENV, capture_output=True, timeout=timeout)


# --- cannot listen: the words (pure) ---------------------------------------------------------

@pytest.mark.parametrize("target, error, defaulted, message", [
    ("0.0.0.0:80", os_error(errno.EACCES), True, "cannot listen on 0.0.0.0:80: permission denied" + HINT),
    ("0.0.0.0:80", os_error(errno.EPERM), True, "cannot listen on 0.0.0.0:80: permission denied" + HINT),
    ("0.0.0.0:80", os_error(errno.EADDRINUSE), True, "cannot listen on 0.0.0.0:80: address already in use" + HINT),
    ("[::]:80", os_error(errno.EACCES), False, "cannot listen on [::]:80: permission denied"),  # --port 80 given
    ("127.0.0.1:8080", os_error(errno.EADDRINUSE), False, "cannot listen on 127.0.0.1:8080: address already in use"),
    ("10.9.9.9:8080", os_error(errno.EADDRNOTAVAIL), False,
     "cannot listen on 10.9.9.9:8080: address not available (no interface has it)"),
    ("127.0.0.1:8080 (--redirport)", os_error(errno.EADDRINUSE), False,
     "cannot listen on 127.0.0.1:8080 (--redirport): address already in use"),
    # a name that does not resolve: no hint, another port would not help
    ("nosuch.invalid:80", socket.gaierror(socket.EAI_NONAME, "Name or service not known"), True,
     "cannot listen on nosuch.invalid:80: name or service not known"),
    ("unix socket /no/dir/ws.sock", os_error(errno.ENOENT), False,
     "cannot listen on unix socket /no/dir/ws.sock: no such file or directory"),
    ("unix socket /run/ws.sock", os_error(errno.EADDRINUSE, "in use by a running server"), False,
     "cannot listen on unix socket /run/ws.sock: in use by a running server"),
    ("unix socket /run/ws.sock", os_error(errno.EEXIST, "the file exists and is not a socket"), False,
     "cannot listen on unix socket /run/ws.sock: the file exists and is not a socket"),
    ("unix socket /x", OSError("AF_UNIX path too long"), False, "cannot listen on unix socket /x: AF_UNIX path too long"),
    ("inherited fd 3", os_error(errno.ENOTSOCK), False, "cannot listen on inherited fd 3: not a socket"),
    ("inherited fd 3", os_error(errno.EINVAL, "not a listening stream socket (Accept=yes needs --inetd)"), False,
     "cannot listen on inherited fd 3: not a listening stream socket (Accept=yes needs --inetd)"),
    ("inherited fd 4", os_error(errno.EBADF), False, "cannot listen on inherited fd 4: bad file descriptor"),
])
def test_listen_message(target, error, defaulted, message):
    assert listen_message(target, error, defaulted) == message


@pytest.mark.parametrize("host, port, label", [
    ("127.0.0.1", 8080, "127.0.0.1:8080"),
    ("0.0.0.0", 80, "0.0.0.0:80"),
    ("::", 80, "[::]:80"),
    ("::1", 0, "[::1]:0"),
    ("localhost", 8080, "localhost:8080"),
])
def test_address_label(host, port, label):
    assert address_label(host, port) == label


# --- cannot listen: end to end -----------------------------------------------------------------

def held_port():
    """A listening socket the test holds on 127.0.0.1 (no SO_REUSEADDR)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def test_port_in_use_names_the_address():
    with held_port() as taken:
        port = taken.getsockname()[1]
        result = start(["--address", "127.0.0.1", "--port", str(port), "cat"])
    stderr = result.stderr.decode()
    assert result.returncode == 3, stderr
    assert f"CRITICAL wsexec.server cannot listen on 127.0.0.1:{port}: address already in use\n" in stderr
    assert "Errno" not in stderr and "use --port" not in stderr


def test_redirport_in_use_names_the_redirport():
    with held_port() as taken:
        port = taken.getsockname()[1]
        result = start(["--address", "127.0.0.1", "--port", "0", "--redirport", str(port), "cat"])
    assert result.returncode == 3, result.stderr
    assert f"cannot listen on 127.0.0.1:{port} (--redirport): address already in use\n" in result.stderr.decode()


def test_default_port_gets_the_hint_and_a_given_port_does_not():
    """Port 80 on 127.0.0.1 is held by the test (or, if it cannot bind it, by
    someone else, or it is not root and gets permission denied): either way
    wsexec cannot listen there, and only without --port does it say so."""
    holder = socket.socket()
    try:
        try:
            holder.bind(("127.0.0.1", 80))
            holder.listen(1)
        except OSError:
            pass  # taken already, or not permitted: wsexec fails the same way
        defaulted = start(["--address", "127.0.0.1", "cat"])
        given = start(["--address", "127.0.0.1", "--port", "80", "cat"])
    finally:
        holder.close()
    assert defaulted.returncode == 3 and given.returncode == 3, (defaulted.stderr, given.stderr)
    assert "cannot listen on 127.0.0.1:80: " in defaulted.stderr.decode()
    assert defaulted.stderr.decode().endswith(HINT + "\n"), defaulted.stderr
    assert "cannot listen on 127.0.0.1:80: " in given.stderr.decode() and "use --port" not in given.stderr.decode()


def test_unix_socket_in_a_missing_directory(tmp_path):
    path = tmp_path / "no-such-dir" / "ws.sock"
    result = start(["--unixsocket", str(path), "cat"])
    assert result.returncode == 3, result.stderr
    assert f"cannot listen on unix socket {path}: no such file or directory\n" in result.stderr.decode()
