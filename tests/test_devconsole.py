"""--devconsole: the page over plain HTTP, and the page at work in headless Chromium.

The browser test needs Debian's chromium and chromium-driver and Selenium from
PyPI; it fails (never skips) when they are missing. Selenium is given the
driver and browser paths, so it never looks for or downloads anything.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile

from support.clients import Client, collect, fetch
from support.servers import ROOT, WsexecProcess, make_config, script, serving
from support.waiting import trio_test

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = ROOT / "test-artifacts"

GREETER = """
import sys
for line in sys.stdin:
    name = line.rstrip("\\n")
    if name == "fail":
        sys.exit(3)
    print(f"Hello, {name}!", flush=True)
    if name == "bye":
        break
"""


# --- the page over HTTP ----------------------------------------------------------------

@trio_test(15)
async def test_console_page_is_served_and_self_contained(tmp_path):
    handler = script(tmp_path, "greeter.py", GREETER)
    async with serving(make_config(handler, devconsole=True, headers_http=(("X-Http", "1"),))) as (state, url):
        port = state.addresses[0][1]
        async with await Client.open(port) as client:
            page = await client.request("GET", "/any/path?x=1")
            head = await client.request("HEAD", "/")
            post = await client.request("POST", "/", body=b"x")
            assert client.reusable
        assert page.status == 200 and page.header("content-type") == "text/html; charset=utf-8"
        assert page.header("x-http") == "1" and page.header("cache-control") == "no-store"
        assert "default-src 'none'" in page.header("content-security-policy")
        html = page.body.decode()
        assert "<script>" in html and "new WebSocket" in html
        # nothing is loaded from anywhere else: no src/href, no url(), no @import, no remote URL
        assert not re.search(r"""\b(src|href)\s*=|url\(|@import|https?://""", html), "external reference in the page"
        assert (head.status, head.body, head.header("content-length")) == (200, b"", page.header("content-length"))
        assert post.status == 405 and post.header("allow") == "GET, HEAD"
        # the same URL as a WebSocket reaches the handler
        messages, code, _ = await collect(url + "/any/path", ["you", "bye"])
        assert (messages, code) == (["Hello, you!", "Hello, bye!"], 1000)


@trio_test(15)
async def test_console_comes_before_cgi_and_static(tmp_path):
    cgidir, static = tmp_path / "cgi", tmp_path / "static"
    cgidir.mkdir()
    static.mkdir()
    script(cgidir, "run.py", 'print("Content-Type: text/plain\\n\\nfrom cgi")')
    (static / "page.txt").write_text("static\n")
    handler = script(tmp_path, "greeter.py", GREETER)
    config = make_config(handler, devconsole=True, cgidir=str(cgidir), staticdir=str(static))
    async with serving(config) as (state, url):
        port = state.addresses[0][1]
        for path in ("/run.py", "/page.txt", "/missing"):
            reply = await fetch(port, "GET", path)
            assert reply.status == 200 and b"wsexec dev console" in reply.body, path
        messages, code, _ = await collect(url + "/run.py", ["bye"])
        assert (messages, code) == (["Hello, bye!"], 1000)
        # and without --devconsole the same server answers with CGI and static files
    async with serving(make_config(handler, cgidir=str(cgidir), staticdir=str(static))) as (state, url):
        port = state.addresses[0][1]
        assert (await fetch(port, "GET", "/run.py")).body == b"from cgi\n"
        assert (await fetch(port, "GET", "/page.txt")).body == b"static\n"


# --- the page in a real browser -------------------------------------------------------------

@contextlib.contextmanager
def ceiling(seconds: int):
    """An absolute time limit for blocking (non-trio) code in the main thread."""
    def expire(signum, frame):
        raise TimeoutError(f"test ran past its {seconds} s ceiling")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def headless_chromium():
    assert os.access(CHROMIUM, os.X_OK), "chromium is missing: apt-get install -y chromium chromium-driver"
    assert os.access(CHROMEDRIVER, os.X_OK), "chromedriver is missing: apt-get install -y chromium-driver"
    from selenium import webdriver  # the `test` extra; an ImportError fails the test
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="wsexec-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                 "--window-size=1000,700"):
        options.add_argument(flag)
    os.environ["SE_OFFLINE"] = "true"  # belt and braces: Selenium Manager may not download
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(15)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_console_in_headless_chromium(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    handler = script(tmp_path, "greeter.py", GREETER)
    with ceiling(90), WsexecProcess("--devconsole", str(handler)) as server, headless_chromium() as driver:
        page_url = f"http://127.0.0.1:{server.port}/greet?lang=en"
        driver.get(page_url)
        wait = WebDriverWait(driver, 10)

        def log_text(_=None) -> str:
            return driver.find_element(By.ID, "log").text

        assert driver.find_element(By.ID, "url").get_attribute("value") == f"ws://127.0.0.1:{server.port}/greet?lang=en"
        wait.until(lambda d: d.find_element(By.ID, "status").text == "connected")
        box = driver.find_element(By.ID, "message")
        box.send_keys("world", Keys.ENTER)
        wait.until(lambda d: "Hello, world!" in log_text())
        driver.find_element(By.ID, "message").send_keys("bye")
        driver.find_element(By.ID, "send").click()
        wait.until(lambda d: "closed: code 1000" in log_text())
        assert driver.find_element(By.ID, "status").text == "closed (1000)"

        # connect again; this time the handler exits with status 3: 1011 and the reason
        driver.find_element(By.ID, "connect").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text == "connected")
        driver.find_element(By.ID, "message").send_keys("again", Keys.ENTER)
        wait.until(lambda d: "Hello, again!" in log_text())
        driver.find_element(By.ID, "message").send_keys("fail", Keys.ENTER)
        wait.until(lambda d: "closed: code 1011, reason: exit status 3" in log_text())

        lines = log_text().splitlines()
        ARTIFACTS.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(ARTIFACTS / "devconsole.png"))
        # nothing else was loaded, and the page ran without errors
        resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert resources == [], resources
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors

    assert lines[0].startswith("connected to ws://127.0.0.1:")
    assert "world" in lines and "Hello, world!" in lines and "Hello, bye!" in lines
    assert any(line.startswith("closed: code 1000") for line in lines)
    assert (ARTIFACTS / "devconsole.png").stat().st_size > 1000
