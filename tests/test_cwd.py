"""--cwd: where handlers and CGI scripts run."""

from __future__ import annotations

import os
import subprocess

import pytest

from support.clients import collect, fetch
from support.servers import PY, ROOT, make_config, script, serving
from support.waiting import trio_test

WHERE = "import os\nprint(os.getcwd(), flush=True)\n"
CGI_WHERE = "import os\nprint('Content-Type: text/plain')\nprint()\nprint(os.getcwd())\n"


@trio_test(20)
async def test_handlers_run_in_the_cwd_given(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    handler = script(tmp_path, "where.py", WHERE)
    async with serving(make_config(handler, cwd=str(elsewhere))) as (state, url):
        messages, code, _ = await collect(url + "/")
    assert (messages, code) == ([str(elsewhere)], 1000)
    async with serving(make_config(handler)) as (state, url):  # default: wsexec's own
        messages, _, _ = await collect(url + "/")
    assert messages == [os.getcwd()]


@trio_test(20)
async def test_cwd_script_runs_each_in_its_own_directory(tmp_path):
    for room in ("a", "b"):
        (tmp_path / "ws" / room).mkdir(parents=True)
        script(tmp_path / "ws" / room, "where.py", WHERE)
    (tmp_path / "cgi" / "sub").mkdir(parents=True)
    script(tmp_path / "cgi" / "sub", "where.py", CGI_WHERE)
    config = make_config(dir=str(tmp_path / "ws"), cgidir=str(tmp_path / "cgi"), cwd="script")
    async with serving(config) as (state, url):
        for room in ("a", "b"):
            messages, _, _ = await collect(f"{url}/{room}/where.py")
            assert messages == [str(tmp_path / "ws" / room)]
        reply = await fetch(state.addresses[0][1], "GET", "/sub/where.py")
        assert (reply.status, reply.body.decode().strip()) == (200, str(tmp_path / "cgi" / "sub"))


@pytest.mark.parametrize("value", ["/no/such/dir", __file__])
def test_cwd_that_is_not_a_directory_exits_1(value):
    result = subprocess.run([PY, "-m", "wsexec", "--port", "0", "--cwd", value, "cat"], cwd=ROOT,
                            capture_output=True, timeout=20)
    assert result.returncode == 1 and b"--cwd is not a directory" in result.stderr, result.stderr
