"""--maxforks under concurrency: a handler slot is checked and claimed in one
step, so simultaneous WebSocket upgrades and CGI requests never run more than
N handlers at once; the rest get 429."""

from __future__ import annotations

import trio

from support.clients import raw_http, upgrade_request
from support.servers import make_config, script, serving
from support.waiting import trio_test

# Each handler counts itself in and out under a lock and records how many
# were running when it came in; it holds its slot for 0.4 s.
COUNTER = """
    import fcntl, os, sys, time
    D = {dir!r}

    def step(delta):
        with open(os.path.join(D, "lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = os.path.join(D, "now")
            now = int(open(path).read() or 0) if os.path.exists(path) else 0
            now += delta
            open(path, "w").write(str(now))
            if delta > 0:
                open(os.path.join(D, "peaks"), "a").write(f"{{now}}\\n")

    step(1)
    time.sleep(0.4)
    step(-1)
    if "GATEWAY_INTERFACE" in os.environ and os.environ.get("REQUEST_METHOD") and "HTTP_UPGRADE" not in os.environ:
        sys.stdout.write("Content-Type: text/plain\\r\\n\\r\\nran\\n")
    else:
        sys.stdout.write("ran\\n")
"""


def handler(directory, name="count.py"):
    return script(directory, name, COUNTER.format(dir=str(directory / "runs")))


def peaks(directory):
    text = (directory / "runs" / "peaks").read_text()
    return [int(n) for n in text.split()]


async def upgrade_status(port: int) -> int:
    """Upgrade, then hold the connection until the server closes it."""
    answer = await raw_http(port, upgrade_request("/"), timeout=10)
    return int(answer.split(b" ", 2)[1])


async def cgi_status(port: int) -> int:
    answer = await raw_http(port, b"GET /count.py HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=10)
    return int(answer.split(b" ", 2)[1])


async def all_at_once(calls):
    statuses = []

    async def one(call):
        statuses.append(await call())

    async with trio.open_nursery() as nursery:
        for call in calls:
            nursery.start_soon(one, call)
    return statuses


@trio_test(30)
async def test_simultaneous_upgrades_never_exceed_maxforks(tmp_path):
    (tmp_path / "runs").mkdir()
    # --reverselookup puts an await between the check and the upgrade (the old race)
    config = make_config(handler(tmp_path), maxforks=1, reverselookup=True)
    async with serving(config) as (state, url):
        port = state.addresses[0][1]
        statuses = await all_at_once([lambda: upgrade_status(port)] * 24)
    assert sorted(set(statuses)) == [101, 429], statuses
    assert max(peaks(tmp_path)) == 1 and len(peaks(tmp_path)) == statuses.count(101)


@trio_test(30)
async def test_simultaneous_cgi_requests_never_exceed_maxforks(tmp_path):
    (tmp_path / "cgi" / "runs").mkdir(parents=True)
    handler(tmp_path / "cgi")
    config = make_config("cat", cgidir=str(tmp_path / "cgi"), maxforks=1)
    async with serving(config) as (state, url):
        port = state.addresses[0][1]
        statuses = await all_at_once([lambda: cgi_status(port)] * 24)
    assert sorted(set(statuses)) == [200, 429], statuses
    assert max(peaks(tmp_path / "cgi")) == 1 and len(peaks(tmp_path / "cgi")) == statuses.count(200)


@trio_test(30)
async def test_upgrades_and_cgi_requests_share_maxforks(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "cgi").mkdir()
    (tmp_path / "cgi" / "runs").symlink_to(tmp_path / "runs")  # one count for both kinds
    ws_handler = handler(tmp_path)
    handler(tmp_path / "cgi")
    config = make_config(ws_handler, cgidir=str(tmp_path / "cgi"), maxforks=2, reverselookup=True)
    async with serving(config) as (state, url):
        port = state.addresses[0][1]
        statuses = await all_at_once([lambda: upgrade_status(port), lambda: cgi_status(port)] * 12)
        assert state.handlers.slots.taken == 0
    assert set(statuses) <= {101, 200, 429} and 429 in statuses, statuses
    ran = statuses.count(101) + statuses.count(200)
    assert max(peaks(tmp_path)) <= 2 and len(peaks(tmp_path)) == ran >= 2
