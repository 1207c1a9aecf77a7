"""--log TARGET end to end: real `python -m wsexec` processes, real connections
on 127.0.0.1, the log read back from stdout, stderr or the file."""

import os
import re
import signal
import stat
import subprocess
import time

import pytest
import trio

from support.clients import collect
from support.servers import PY, ROOT, WsexecProcess, script
from support.waiting import readline_within, wait_for

HELLO = 'print("hi", flush=True)\n'

# Run wsexec with SIGHUP at its default even if the test runner ignores it
# (nohup): exec keeps SIG_DFL, so the PID is wsexec's.
SIGHUP_DEFAULT = (PY, "-c", "import os, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_DFL); "
                            "os.execvp(sys.argv[1], sys.argv[1:])")


def connect(url: str) -> None:
    """One real connection to a handler that says hi and exits."""
    messages, code, _ = trio.run(collect, url)
    assert (messages, code) == (["hi"], 1000)


def finish(server: WsexecProcess):
    """SIGTERM it, wait for it (bounded), and return (stdout rest, stderr)."""
    assert server.stop() == 0
    return server.proc.communicate(timeout=5)


def read(path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def events(text: str, word: str) -> list:
    """The targets of the CONNECT or DISCONNECT lines in a log."""
    return re.findall(rf" {word} (\S+)", text)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_log_stdout_puts_connection_lines_on_stdout_and_nothing_on_stderr(tmp_path):
    handler = script(tmp_path, "hello.py", HELLO)
    argv = [PY, "-m", "wsexec", "--port", "0", "--address", "127.0.0.1", "--log", "stdout", str(handler)]
    proc = subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        before, url, deadline = [], None, time.monotonic() + 10
        while url is None and time.monotonic() < deadline:
            line = readline_within(proc.stdout, deadline - time.monotonic())
            if not line:
                break
            match = re.fullmatch(rb"listening on (ws://\S+?)/?\n", line)
            if match:
                url = match.group(1).decode()
            else:
                before.append(line)
        assert url, f"no listening line after {before!r}"
        assert all(b" INFO wsexec.server serving " in line for line in before), before
        connect(url + "/on-stdout")
    finally:
        if proc.poll() is None:
            proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert err == b""
    text = out.decode()
    assert events(text, "CONNECT") == ["/on-stdout"]
    assert events(text, "DISCONNECT") == ["/on-stdout"]
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} ACCESS wsexec\.connection #\w+ 127\.0\.0\.1:\d+ pid=\d+ CONNECT /on-stdout$",
                     text, re.M), text


def test_log_file_is_reopened_on_sighup_after_logrotate_renames_it(tmp_path):
    handler = script(tmp_path, "hello.py", HELLO)
    log, rotated = tmp_path / "wsexec.log", tmp_path / "wsexec.log.1"
    with WsexecProcess("--log", str(log), str(handler)) as server:
        assert stat.S_IMODE(log.stat().st_mode) == 0o640 & ~umask()
        connect(server.url + "/before")
        wait_for(lambda: "DISCONNECT /before" in read(log), 5, "first DISCONNECT in the log file")

        log.rename(rotated)  # logrotate's default: move, then postrotate kill -HUP
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_for(lambda: "reopened" in read(log), 5, "a new log file at the path")

        connect(server.url + "/after")
        wait_for(lambda: "DISCONNECT /after" in read(log), 5, "second DISCONNECT in the new file")
        assert server.proc.poll() is None
        connect(server.url + "/still")
        wait_for(lambda: "DISCONNECT /still" in read(log), 5, "third DISCONNECT in the new file")
        out, err = finish(server)
    old, new = rotated.read_text(), log.read_text()
    assert events(old, "CONNECT") == events(old, "DISCONNECT") == ["/before"]
    assert events(new, "CONNECT") == events(new, "DISCONNECT") == ["/after", "/still"]
    assert f"INFO wsexec.server SIGHUP received: log file {log} reopened" in new
    assert "SIGHUP" not in old and "stopped" in new.splitlines()[-1]
    assert out == b"" and err == b""  # the listening line was read by WsexecProcess


def test_log_file_that_cannot_be_reopened_keeps_the_old_one_with_one_error_line(tmp_path):
    handler = script(tmp_path, "hello.py", HELLO)
    log, rotated = tmp_path / "wsexec.log", tmp_path / "wsexec.log.1"
    with WsexecProcess("--log", str(log), str(handler)) as server:
        connect(server.url + "/before")
        log.rename(rotated)
        log.mkdir()  # cannot be opened for writing, not even by root
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_for(lambda: "cannot reopen" in read(rotated), 5, "the error line in the old file")
        connect(server.url + "/after")
        wait_for(lambda: "DISCONNECT /after" in read(rotated), 5, "logging on in the old file")
        out, err = finish(server)
    old = rotated.read_text()
    errors = [line for line in old.splitlines() if " ERROR " in line]
    assert errors == [errors[0]] and errors[0].endswith(
        f"ERROR wsexec.server SIGHUP received: cannot reopen the log file {log}: Is a directory; "
        "still logging to the old file")
    assert events(old, "CONNECT") == ["/before", "/after"]
    assert list(log.iterdir()) == [] and err == b""


def test_log_file_named_stdout_is_given_as_a_relative_path(tmp_path):
    handler = script(tmp_path, "hello.py", HELLO)
    with WsexecProcess("--log", "./stdout", str(handler), cwd=tmp_path) as server:
        connect(server.url + "/file")
        wait_for(lambda: "DISCONNECT /file" in read(tmp_path / "stdout"), 5, "the file named stdout")
        out, err = finish(server)
    assert out == b"" and err == b""
    assert events((tmp_path / "stdout").read_text(), "CONNECT") == ["/file"]


def test_log_file_that_cannot_be_opened_exits_1_naming_it(tmp_path):
    handler = script(tmp_path, "hello.py", HELLO)
    path = tmp_path / "no-such-dir" / "wsexec.log"
    done = subprocess.run([PY, "-m", "wsexec", "--port", "0", "--address", "127.0.0.1", "--log", str(path), str(handler)],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr == f"wsexec: cannot open the log file {path}: No such file or directory\n"
    assert done.stdout == ""  # never listened
    assert not path.parent.exists()


@pytest.mark.parametrize("args, code, message", [
    (["--log", ""], 2, "--log must be stderr, stdout or a file path"),
    (["--inetd", "--log", "stdout"], 4, "stdout is the connection"),
])
def test_log_bad_values_and_combinations(tmp_path, args, code, message):
    handler = script(tmp_path, "hello.py", HELLO)
    done = subprocess.run([PY, "-m", "wsexec", *args, str(handler)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert done.returncode == code and message in done.stderr, done.stderr


def test_log_default_is_stderr_and_sighup_keeps_its_default(tmp_path):
    handler = script(tmp_path, "hello.py", HELLO)
    with WsexecProcess(str(handler)) as server:
        connect(server.url + "/default")
        out, err = finish(server)
    assert out == b""
    assert events(err.decode(), "CONNECT") == events(err.decode(), "DISCONNECT") == ["/default"]

    # Without a log file wsexec does not catch SIGHUP: it ends the process, as before.
    with WsexecProcess(str(handler), prefix=SIGHUP_DEFAULT) as server:
        os.kill(server.proc.pid, signal.SIGHUP)
        assert server.proc.wait(10) == -signal.SIGHUP
