"""Start-up errors that say what failed: a listener that cannot be opened
names its address, port, path or fd; a handler whose #! interpreter is
missing (or whose #! line ends in a carriage return) is named at start-up,
in the close reason, and in the CGI error line."""

import errno
import os
import socket
import subprocess

import pytest
import trio

from support.clients import collect, raw_http
from support.servers import PY, ROOT, WsexecProcess, script
from wsexec.net.listen import address_label, listen_message
from wsexec.proc.shebang import (
    CARRIAGE_RETURN, HEAD_SIZE, NO_INTERPRETER, TOO_LONG, interpreter_problem, scan_directory, spawn_failure,
)

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


# --- the #! line (pure, with the file system for the interpreter) -------------------------------

@pytest.mark.parametrize("head, problem", [
    (b"#!/nonexistent/python\nprint('hi')\n", "#! interpreter /nonexistent/python not found"),
    (b"#!/nonexistent/sh -e -u\n", "#! interpreter /nonexistent/sh not found"),
    (b"#!/etc/passwd/sh\n", "#! interpreter /etc/passwd/sh not found (a part of its path is not a directory)"),
    (b"#!/bin/sh\r\necho hi\r\n", CARRIAGE_RETURN),
    (b"#!/usr/bin/env python3\r\n", CARRIAGE_RETURN),  # env itself exists: the CR still breaks it
    (b"#!/bin/sh -e\r\n", CARRIAGE_RETURN),
    (b"#!/nonexistent/sh\x0b-e\n", "#! interpreter /nonexistent/sh\\x0b-e not found"),  # only blanks separate
    (b"#!/nonexistent/\xff\n", "#! interpreter /nonexistent/\\xff not found"),
    (b"#!/bin/sh\r", CARRIAGE_RETURN),  # one line, no newline
    (b"#!{not_executable}\n", "#! interpreter {not_executable} is not an executable file"),
    (b"#!{directory}\n", "#! interpreter {directory} is not an executable file"),
    (b"#!\n", NO_INTERPRETER),
    (b"#!  \t \nrest\n", NO_INTERPRETER),
    (b"#!", NO_INTERPRETER),
    (b"#!/" + b"a" * (HEAD_SIZE - 3), TOO_LONG),  # the kernel cannot see the end of the name
    (b"#!/usr/bin/env python3\nprint('hi')\n", None),
    (b"#!/bin/sh\n", None),
    (b"#! /bin/sh -e -u\n", None),  # a space before the name, and arguments
    (b"#!/bin/sh \t\n", None),  # trailing blanks are dropped by the kernel too
    (b"#!/bin/sh", None),  # no newline at all
    (b"#!/bin/sh " + b"x" * (HEAD_SIZE - 10), None),  # a long argument is only cut short
    (b"\x7fELF\x02\x01\x01\x00" + bytes(range(256))[:200], None),  # a binary
    (b"", None),  # empty
    (b"echo no shebang\n", None),
    (b" #!/nonexistent/python\n", None),  # not at the very start: not a #! line
])
def test_interpreter_problem(tmp_path, head, problem):
    not_executable = tmp_path / "plain"
    not_executable.write_text("data\n")
    not_executable.chmod(0o644)
    names = {"not_executable": str(not_executable), "directory": str(tmp_path)}
    head = head.replace(b"{not_executable}", names["not_executable"].encode()).replace(
        b"{directory}", names["directory"].encode())
    expected = problem.format(**names) if problem else None
    assert interpreter_problem(head[:HEAD_SIZE]) == expected


@pytest.mark.parametrize("content, code, reason", [
    (b"#!/nonexistent/python\n", errno.ENOENT, "#! interpreter /nonexistent/python not found"),
    (b"#!/bin/sh\r\n", errno.ENOENT, CARRIAGE_RETURN),
    (b"#!\n", errno.ENOEXEC, NO_INTERPRETER),
    (b"echo no shebang\n", errno.ENOEXEC, "exec format error (no #! line, and not a program this system runs)"),
    (b"#!/bin/sh\n", errno.EACCES, "Permission denied"),  # nothing wrong with the line: the system's words
    (b"#!/nonexistent/python\n", errno.E2BIG, "Argument list too long"),  # not a #! error: not looked at
])
def test_spawn_failure(tmp_path, content, code, reason):
    path = tmp_path / "handler"
    path.write_bytes(content)
    assert spawn_failure(str(path), os_error(code)) == reason


def test_spawn_failure_of_a_vanished_file(tmp_path):
    assert spawn_failure(str(tmp_path / "gone"), os_error(errno.ENOENT)) == "No such file or directory"


def test_scan_directory_lists_executables_with_bad_lines_only(tmp_path):
    script(tmp_path, "crlf.sh", "echo hi\r\n", "/bin/sh\r")
    script(tmp_path, "missing.py", "print(1)\n", "/nonexistent/python")
    script(tmp_path, "good.sh", "echo hi\n", "/bin/sh")
    script(tmp_path, ".hidden", "", "/nonexistent/python")  # never served
    script(tmp_path, "off.py", "", "/nonexistent/python").chmod(0o644)  # not executable: never served
    (tmp_path / "sub").mkdir()
    script(tmp_path / "sub", "deep.py", "", "/nonexistent/python")  # not directly in the directory
    (tmp_path / "binary").write_bytes(b"\x7fELF\x02\x01\x01\x00")
    (tmp_path / "binary").chmod(0o755)
    assert scan_directory(str(tmp_path)) == ([("crlf.sh", CARRIAGE_RETURN),
                                              ("missing.py", "#! interpreter /nonexistent/python not found")], True)


def test_scan_directory_is_bounded(tmp_path):
    for i in range(5):
        script(tmp_path, f"h{i}", "", "/nonexistent/python")
    problems, complete = scan_directory(str(tmp_path), limit=2)
    assert len(problems) == 2 and not complete
    assert scan_directory(str(tmp_path), limit=5)[1]


# --- the #! line: end to end ---------------------------------------------------------------------

@pytest.mark.parametrize("interpreter, problem", [
    ("/nonexistent/python", "#! interpreter /nonexistent/python not found"),
    ("/bin/sh\r", CARRIAGE_RETURN),
])
def test_command_with_a_bad_interpreter_exits_1(tmp_path, interpreter, problem):
    handler = script(tmp_path, "h", "print('never')\n", interpreter)
    result = start(["--port", "0", "--address", "127.0.0.1", str(handler)])
    assert (result.returncode, result.stderr.decode()) == (1, f"wsexec: {handler}: {problem}\n")


def test_dir_script_with_a_crlf_line_closes_1011_naming_the_carriage_return(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    script(root, "crlf.sh", "echo never\r\n", "/bin/sh\r")
    script(root, "ok.sh", "echo fine\n", "/bin/sh")
    server = WsexecProcess("--dir", str(root))
    try:
        assert trio.run(collect, server.url + "/crlf.sh") == ([], 1011, "cannot start handler: " + CARRIAGE_RETURN)
        assert trio.run(collect, server.url + "/ok.sh") == (["fine"], 1000, "")
    finally:
        assert server.stop() == 0
    log = server.proc.stderr.read().decode()
    assert f"WARNING wsexec.server --dir {root}: crlf.sh cannot start: {CARRIAGE_RETURN}\n" in log
    assert f"cannot start handler: {CARRIAGE_RETURN} ({root}/crlf.sh)" in log
    assert "ok.sh cannot start" not in log


def test_cgi_script_with_a_missing_interpreter_gets_502_and_a_log_line(tmp_path):
    cgidir = tmp_path / "cgi"
    cgidir.mkdir()
    script(cgidir, "broken.cgi", "print('Content-Type: text/plain\\n\\nnever')\n", "/nonexistent/python")
    server = WsexecProcess("--cgidir", str(cgidir))
    try:
        answer = trio.run(raw_http, server.port, b"GET /broken.cgi HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    finally:
        assert server.stop() == 0
    assert answer.startswith(b"HTTP/1.1 502 "), answer[:200]
    log = server.proc.stderr.read().decode()
    assert "CGI /broken.cgi: cannot start: #! interpreter /nonexistent/python not found\n" in log
    assert f"WARNING wsexec.server --cgidir {cgidir}: broken.cgi cannot start: " in log
