"""--user, --group, --rlimit: handlers and CGI scripts run as the user and
group given, without supplementary groups, under the limits given (from
their first instruction, set by prlimit and setpriv); bad values and a
wsexec that is not root exit 4. The tests run as root (here and in CI)."""

from __future__ import annotations

import grp
import os
import pwd
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import trio

from support.clients import collect, fetch
from support.servers import PY, ROOT, WsexecProcess, drain_output, make_config, script, serving
from support.waiting import trio_test
from wsexec.proc.children import Handlers
from wsexec.proc.launch import INFINITY, Limit, parse_limit, parse_limits, wrapper
from wsexec.proc.spawn import Spawner

IDS = "#!/bin/sh\necho \"$(id -u) $(id -g) $(id -G)\"\n"
CGI_IDS = "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\necho \"$(id -u) $(id -g) $(id -G)\"\n"
ULIMITS = "#!/bin/sh\necho \"$(ulimit -n) $(ulimit -t) $(ulimit -v) $(ulimit -d) $(ulimit -f) $(ulimit -c)\"\n"
NPROC = "#!/bin/sh\ngrep 'Max processes' /proc/self/limits\n"
TTY = "#!/bin/sh\necho \"$(id -u) $(stat -c %u \"$(readlink /proc/self/fd/0)\") $(test -t 0 && echo tty)\"\n"
NOBODY = pwd.getpwnam("nobody")
DAEMON_GID = grp.getgrnam("daemon").gr_gid


@pytest.fixture
def public(tmp_path):
    """A directory other users can read (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="wsexec-launch-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.mark.parametrize("text, limit", [
    ("nofile=64", Limit("nofile", 64, 64)),
    ("nofile=64:128", Limit("nofile", 64, 128)),
    ("NOFILE = 64", Limit("nofile", 64, 64)),
    ("cpu=1", Limit("cpu", 1, 2)),  # SIGXCPU at 1 s, SIGKILL a second later
    ("cpu=1:1", Limit("cpu", 1, 1)),
    ("cpu=unlimited", Limit("cpu", INFINITY, INFINITY)),
    ("as=512M", Limit("as", 512 << 20, 512 << 20)),
    ("data=1g:2G", Limit("data", 1 << 30, 2 << 30)),
    ("fsize=10K", Limit("fsize", 10240, 10240)),
    ("core=0", Limit("core", 0, 0)),
    ("nproc=10:unlimited", Limit("nproc", 10, INFINITY)),
])
def test_parse_limit(text, limit):
    assert parse_limit(text) == limit


@pytest.mark.parametrize("text, says", [
    ("nofile", "needs NAME=VALUE"),
    ("files=10", "unknown limit 'files'"),
    ("nofile=ten", "not a number: 'ten' (a count"),
    ("nofile=10K", "not a number: '10K'"),  # suffixes are for bytes
    ("cpu=1.5", "not a number: '1.5' (whole seconds"),
    ("as=12X", "not a number"),
    ("nofile=-1", "not a number"),
    ("nofile=", "not a number"),
    ("nofile=10:5", "soft limit is above the hard one"),
    ("nofile=unlimited:5", "soft limit is above the hard one"),
])
def test_parse_limit_refuses(text, says):
    with pytest.raises(ValueError, match=None) as caught:
        parse_limit(text)
    assert says in str(caught.value)


def test_the_last_limit_of_a_name_wins():
    assert parse_limits(["nofile=10", "cpu=3", "nofile=20"]) == (Limit("nofile", 20, 20), Limit("cpu", 3, 4))


@pytest.mark.parametrize("limits, uid, gid, argv", [
    ((), None, None, ()),  # plain spawns: no wrapper at all
    ((Limit("nofile", 64, 64),), None, None, ("prlimit", "--nofile=64:64", "--")),
    ((), 65534, 65534, ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--")),
    ((), None, 1, ("setpriv", "--regid=1", "--clear-groups", "--")),
    ((Limit("cpu", 1, INFINITY),), 7, 8,
     ("prlimit", "--cpu=1:unlimited", "--", "setpriv", "--reuid=7", "--regid=8", "--clear-groups", "--")),
])
def test_wrapper(limits, uid, gid, argv):
    assert wrapper(limits, uid, gid) == argv


@trio_test(20)
async def test_user_runs_handlers_and_cgi_scripts_as_that_user_without_groups(public):
    handler = script(public, "ids.sh", IDS, "/bin/sh")
    (public / "cgi").mkdir(mode=0o755)
    script(public / "cgi", "ids.sh", CGI_IDS, "/bin/sh")
    expected = f"{NOBODY.pw_uid} {NOBODY.pw_gid} {NOBODY.pw_gid}"
    async with serving(make_config(handler, user="nobody", cgidir=str(public / "cgi"))) as (state, url):
        assert await collect(url + "/") == ([expected], 1000, "")
        reply = await fetch(state.addresses[0][1], "GET", "/ids.sh")
        assert (reply.status, reply.body.decode().strip()) == (200, expected)


STATUS = "#!/bin/sh\ngrep -E '^(Uid|Gid|Groups|CapPrm|CapEff):' /proc/self/status\n"


@trio_test(20)
async def test_no_way_back_to_root(public):
    """Real, effective, saved and file-system ids all the user's, no
    supplementary group, no capability; wsexec itself stays root: only its
    spawner thread holds the handlers' real ids (effective ids root's)."""
    handler = script(public, "status.sh", STATUS, "/bin/sh")
    async with serving(make_config(handler, user="nobody")) as (state, url):
        messages, code, _ = await collect(url + "/")
        threads = []  # every thread's real, effective, saved and file-system uid
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/status") as f:
                threads.append(next(line.split()[1:] for line in f if line.startswith("Uid:")))
    u, g = NOBODY.pw_uid, NOBODY.pw_gid
    assert [m.replace("\t", " ").split() for m in messages] == [
        ["Uid:", *[str(u)] * 4], ["Gid:", *[str(g)] * 4], ["Groups:"], ["CapPrm:", "0" * 16], ["CapEff:", "0" * 16]]
    assert os.getuid() == os.geteuid() == 0
    assert sorted(threads).count([str(u), "0", "0", "0"]) == 1, threads  # the spawner thread
    assert all(t in ([str(u), "0", "0", "0"], ["0", "0", "0", "0"]) for t in threads), threads


def test_without_the_spawner_thread_setpriv_takes_the_credentials():
    """Where the spawner thread cannot take them (no C library thread, a
    machine whose system call numbers wsexec does not know), setpriv does."""
    threaded = Handlers(owner=(7, 8), setpriv="/usr/bin/setpriv")
    assert threaded.launcher == () and threaded.spawner.credentials == (7, 8)
    inline = Handlers(spawner=Spawner(use_thread=False), owner=(7, 8), setpriv="/usr/bin/setpriv")
    assert inline.launcher == ("/usr/bin/setpriv", "--reuid=7", "--regid=8", "--clear-groups", "--")
    plain = Handlers(spawner=Spawner(use_thread=False))
    assert plain.launcher == () and plain.spawner.credentials == (None, None)


@trio_test(20)
async def test_group_chooses_the_group(public):
    handler = script(public, "ids.sh", IDS, "/bin/sh")
    async with serving(make_config(handler, user=str(NOBODY.pw_uid), group="daemon")) as (state, url):
        assert await collect(url + "/") == ([f"{NOBODY.pw_uid} {DAEMON_GID} {DAEMON_GID}"], 1000, "")
    async with serving(make_config(handler, group="daemon")) as (state, url):  # the user stays root
        assert await collect(url + "/") == ([f"0 {DAEMON_GID} {DAEMON_GID}"], 1000, "")


@trio_test(20)
async def test_user_with_pty_owns_its_terminal(public):
    handler = script(public, "tty.sh", TTY, "/bin/sh")
    async with serving(make_config(handler, user="nobody", pty=True)) as (state, url):
        messages, code, _ = await collect(url + "/")
    assert (messages, code) == ([f"{NOBODY.pw_uid} {NOBODY.pw_uid} tty"], 1000)


@trio_test(20)
async def test_limits_are_in_place_when_the_handler_starts(tmp_path, public):
    handler = script(tmp_path, "ulimits.sh", ULIMITS, "/bin/sh")
    limits = ("nofile=64", "cpu=7", "as=512M", "data=1G", "fsize=1M", "core=0")
    async with serving(make_config(handler, rlimits=limits)) as (state, url):
        # sh reports as, data and fsize in KiB (fsize: in 512-byte blocks for dash)
        messages, code, _ = await collect(url + "/")
    assert code == 1000
    n, t, v, d, f, c = messages[0].split()
    assert (n, t, v, d, c) == ("64", "7", str(512 * 1024), str(1024 * 1024), "0"), messages
    assert int(f) in (1024, 2048), messages
    nproc = script(public, "nproc.sh", NPROC, "/bin/sh")
    async with serving(make_config(nproc, rlimits=("nproc=50:60",), user="nobody")) as (state, url):
        messages, code, _ = await collect(url + "/")
    assert messages[0].split() == ["Max", "processes", "50", "60", "processes"], messages


@trio_test(20)
async def test_limits_apply_to_cgi_scripts(tmp_path):
    (tmp_path / "cgi").mkdir()
    script(tmp_path / "cgi", "n.sh", "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\nulimit -n\n", "/bin/sh")
    async with serving(make_config(cgidir=str(tmp_path / "cgi"), rlimits=("nofile=33",))) as (state, url):
        reply = await fetch(state.addresses[0][1], "GET", "/n.sh")
    assert (reply.status, reply.body.decode().strip()) == (200, "33")


@trio_test(30)
async def test_a_handler_past_its_cpu_limit_is_killed_by_sigxcpu(tmp_path):
    spin = script(tmp_path, "spin.sh", "while :; do :; done\n", "/bin/sh")
    async with serving(make_config(spin, rlimits=("cpu=1",))) as (state, url):
        messages, code, reason = await collect(url + "/", timeout=20)
    assert (messages, code, reason) == ([], 1011, "killed by SIGXCPU")


@trio_test(20)
async def test_a_handler_that_cannot_run_is_closed_with_1011(tmp_path):
    handler = script(tmp_path, "gone.sh", IDS, "/bin/sh")
    async with serving(make_config(handler, rlimits=("nofile=64",))) as (state, url):
        handler.unlink()  # after the start-up check
        messages, code, reason = await collect(url + "/")
        gated = state.handlers.gate is not None
    # At the gate the spawn itself fails; through prlimit, prlimit says so and exits 127.
    assert (messages, code, reason) == ([], 1011, "cannot start handler: No such file or directory" if gated
                                        else "exit status 127")


@trio_test(20)
async def test_the_gate_sets_limits_without_an_exec(tmp_path):
    """As root (CAP_SYS_ADMIN), limits are set at the gate: no wrapper in
    front of the handler, whose parent is wsexec itself; anyone but wsexec's
    own children is refused at the gate."""
    handler = script(tmp_path, "h.sh", "#!/bin/sh\necho $PPID $(ulimit -n)\n", "/bin/sh")
    async with serving(make_config(handler, rlimits=("nofile=50",))) as (state, url):
        assert state.handlers.gate is not None and state.handlers.launcher == ()
        assert await collect(url + "/") == ([f"{os.getpid()} 50"], 1000, "")
        with pytest.raises(PermissionError):
            await trio.to_thread.run_sync(open, state.handlers.gate.path)
        # Nor a process further down (sh's child, not wsexec's).
        stranger = await trio.run_process(["/bin/sh", "-c", f"cat {state.handlers.gate.path}; echo $?"],
                                          capture_stdout=True, capture_stderr=True)
        assert stranger.stdout == b"1\n" and b"Operation not permitted" in stranger.stderr, stranger


@trio_test(20)
async def test_the_gate_with_pty(tmp_path):
    """--pty and --rlimit: the terminal is the handler's stdin and stdout and
    its limits are set at the gate."""
    handler = script(tmp_path, "h.sh", "#!/bin/sh\n[ -t 0 ] && [ -t 1 ] && t=tty\necho $PPID $(ulimit -n) $t\n",
                     "/bin/sh")
    async with serving(make_config(handler, rlimits=("nofile=52",), pty=True)) as (state, url):
        assert state.handlers.gate is not None
        assert await collect(url + "/") == ([f"{os.getpid()} 52 tty"], 1000, "")


@trio_test(40)
async def test_many_handlers_at_the_gate_at_once_each_get_their_limits(tmp_path):
    """The event loop answers the gate while two spawner threads wait there:
    40 clients at once all run under the limits, as wsexec's children."""
    handler = script(tmp_path, "h.sh", "#!/bin/sh\necho $PPID $(ulimit -n)\n", "/bin/sh")
    results = []
    async with serving(make_config(handler, rlimits=("nofile=50",))) as (state, url):
        assert state.handlers.gate is not None and state.handlers.spawner.threads == 2

        async def one() -> None:
            results.append(await collect(url + "/", timeout=30))

        async with trio.open_nursery() as nursery:
            for _ in range(40):
                nursery.start_soon(one)
    assert results == [([f"{os.getpid()} 50"], 1000, "")] * 40


def test_a_child_still_at_the_gate_is_answered_when_the_spawner_stops(tmp_path):
    """Shutting down while a spawner thread waits at the gate: the gate is
    answered meanwhile (with the limits), the thread ends, no handler runs
    without them."""
    from wsexec.proc.gate import Gate

    async def main() -> None:
        gate = Gate(parse_limits(["nofile=45"]))  # nobody serves it: a child waits there
        spawner = Spawner()
        spawner.threads = 2
        out = tmp_path / "out"
        fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o644)
        pids = []

        async def spawn() -> None:
            pids.append(await spawner.spawn(["/bin/sh", "-c", "ulimit -n"], {"PATH": "/usr/bin:/bin"}, fd, fd,
                                            gate=gate.checkpoint))

        try:
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(spawn)
                    await trio.sleep(0.5)
                    assert not pids  # still at the gate
                    spawner.close(gate.answer)  # answered while the spawner stops
                gate.close()
        finally:
            os.close(fd)
        assert os.waitpid(pids[0], 0)[1] == 0
        assert out.read_text() == "45\n"

    trio.run(main)


GATED_SPAWN = """
import os, sys, trio
from wsexec.proc.gate import Gate
from wsexec.proc.launch import parse_limits
from wsexec.proc.spawn import Spawner

async def main():
    gate = Gate(parse_limits(["nofile=45"]))  # nobody serves it: the child waits there
    spawner = Spawner()
    print(gate.directory, flush=True)
    await spawner.spawn(["/bin/sh", "-c", "touch " + sys.argv[1]], {"PATH": "/usr/bin:/bin"}, 1, 2,
                        gate=gate.checkpoint)

trio.run(main)
"""


def test_a_child_at_the_gate_when_wsexec_dies_neither_runs_nor_hangs(tmp_path):
    """wsexec killed (SIGKILL, no clean-up) while a child waits at the gate:
    the kernel lets the child through, the liveness check stops its spawn
    there, and it exits; its handler never runs, unlimited or otherwise."""
    marker = tmp_path / "ran"
    proc = subprocess.Popen([PY, "-c", GATED_SPAWN, str(marker)], cwd=ROOT, stdout=subprocess.PIPE)
    child = 0
    try:
        directory = proc.stdout.readline().decode().strip()
        deadline = time.monotonic() + 10
        while not child and time.monotonic() < deadline:
            for task in os.listdir(f"/proc/{proc.pid}/task"):  # the spawner thread's child
                pids = Path(f"/proc/{proc.pid}/task/{task}/children").read_text().split()
                child = child or (int(pids[0]) if pids else 0)
            time.sleep(0.02)
        assert child, "no child"
        while "fanotify" not in Path(f"/proc/{child}/wchan").read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "fanotify" in Path(f"/proc/{child}/wchan").read_text()  # waiting at the gate
    finally:
        proc.kill()
        proc.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break  # exited and reaped
        if state == "Z":
            break  # exited
        time.sleep(0.05)
    else:
        os.kill(child, 9)
        pytest.fail("the child still waits at the gate")
    assert not marker.exists()
    shutil.rmtree(directory, ignore_errors=True)  # the dead process could not


def run_wsexec(*args: str, prefix=()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, PY, "-m", "wsexec", "--port", "0", *args, "cat"], cwd=ROOT, capture_output=True,
                          timeout=20)


@pytest.mark.parametrize("args, says", [
    (("--rlimit", "files=10"), b"unknown limit 'files'"),
    (("--rlimit", "nofile=ten"), b"not a number: 'ten'"),
    (("--rlimit", "nofile=10:5"), b"soft limit is above the hard one"),
    (("--rlimit", "cpu"), b"--rlimit needs NAME=VALUE"),
    (("--rlimit", "nofile=unlimited"), b"--rlimit nofile: at most"),
    (("--user", "nobody", "--rlimit", f"nofile={resource.getrlimit(resource.RLIMIT_NOFILE)[1] + 1}"),
     b"--user nobody cannot raise the hard limit above wsexec's own"),
    (("--user", "no-such-user-here"), b"--user no-such-user-here: no such user"),
    (("--group", "no-such-group-here"), b"--group no-such-group-here: no such group"),
])
def test_bad_values_exit_4(args, says):
    result = run_wsexec(*args)
    assert result.returncode == 4 and says in result.stderr, result.stderr


@pytest.mark.parametrize("args, says", [
    (("--user", "nobody"), b"--user and --group need wsexec to run as root (it runs as uid 65534)"),
    (("--group", "daemon"), b"--user and --group need wsexec to run as root"),
    (("--rlimit", f"nofile={resource.getrlimit(resource.RLIMIT_NOFILE)[1] + 1}"), b"wsexec (not root) cannot raise the hard limit above wsexec's own"),
])
def test_not_root_exits_4(args, says):
    result = run_wsexec(*args, prefix=not_root())
    assert result.returncode == 4 and says in result.stderr, result.stderr


def not_root() -> tuple:
    """A command that runs wsexec as uid 65534 (util-linux): setpriv to
    nobody where nobody can run this Python and read the code, else a user
    namespace of its own (unshare), where wsexec is 65534 too and can neither
    change user nor raise a hard limit."""
    as_nobody = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
    probe = subprocess.run([*as_nobody, PY, "-c", "import click, trio, wsexec"], cwd=ROOT, capture_output=True,
                           timeout=20)
    return as_nobody if probe.returncode == 0 else ("unshare", "--user")


def test_not_root_may_lower_limits(public):
    handler = script(public, "n.sh", "#!/bin/sh\nulimit -n\n", "/bin/sh")
    with WsexecProcess("--rlimit", "nofile=40", str(handler), prefix=not_root()) as server:
        drain_output(server)
        assert trio.run(collect, server.url + "/") == (["40"], 1000, "")
