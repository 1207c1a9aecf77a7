"""examples/site: a page, a CGI script and a WebSocket handler served by one
`python -m wsexec`, run exactly as the README's "Serving a whole site" says."""

from __future__ import annotations

import re

import trio
from trio_websocket import open_websocket_url

from support.servers import ROOT, WsexecProcess
from support.waiting import trio_test
from support.clients import Client
from test_devconsole import ARTIFACTS, ceiling, headless_chromium

SITE = ROOT / "examples" / "site"
ARGS = ("--staticdir", "examples/site/static", "--cgidir", "examples/site/cgi", "examples/site/upper.py")


def test_readme_shows_the_site_command():
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"^## Serving a whole site\n(.*?)(?=^## |\Z)", readme, re.S | re.M)
    assert section, "README.md lacks '## Serving a whole site'"
    assert "wsexec --port 8080 " + " ".join(ARGS) in section.group(1)


@trio_test(20)
async def test_site_page_cgi_and_websocket_on_one_port():
    with WsexecProcess(*ARGS) as server:
        async with await Client.open(server.port) as client:
            page = await client.request("GET", "/")
            assert page.status == 200 and page.header("content-type") == "text/html; charset=utf-8"
            assert b"One wsexec, three kinds of answer" in page.body
            css = await client.request("GET", "/style.css")
            assert css.status == 200 and css.header("content-type") == "text/css; charset=utf-8"
            hello = await client.request("GET", "/hello.py/greeting?name=Ada%20L")
            assert hello.status == 200 and hello.body == b"Hello, Ada L, from CGI!\nPATH_INFO=/greeting\n"
            posted = await client.request("POST", "/hello.py", [("Content-Type", "application/x-www-form-urlencoded")],
                                          b"name=Bob")
            assert posted.body.startswith(b"Hello, Bob, from CGI!\n")
            assert (await client.request("GET", "/upper.py")).status == 404  # the handler is not a page
            assert client.reusable
        with trio.fail_after(5):
            async with open_websocket_url(server.url + "/") as ws:
                await ws.send_message("shout this")
                assert await ws.get_message() == "SHOUT THIS"


def test_site_in_headless_chromium():
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    with ceiling(90), WsexecProcess(*ARGS) as server, headless_chromium() as driver:
        driver.get(f"http://127.0.0.1:{server.port}/")
        wait = WebDriverWait(driver, 10)
        # the style sheet came from --staticdir
        color = driver.execute_script("return getComputedStyle(document.querySelector('pre')).backgroundColor")
        assert color == "rgb(242, 242, 238)"
        name = driver.find_element(By.ID, "name")
        name.clear()
        name.send_keys("Grace")
        driver.find_element(By.ID, "ask").click()
        wait.until(lambda d: "Hello, Grace, from CGI!" in d.find_element(By.ID, "cgi-result").text)
        assert driver.find_element(By.ID, "cgi-result").text.startswith("200 ")
        wait.until(lambda d: d.find_element(By.ID, "ws-status").text == "connected")
        driver.find_element(By.ID, "line").send_keys("quiet words", Keys.ENTER)
        wait.until(lambda d: "QUIET WORDS" in d.find_element(By.ID, "ws-log").text)
        ARTIFACTS.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(ARTIFACTS / "site.png"))
