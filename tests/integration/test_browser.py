"""The browser kit (tests/support/browser.py) against a real Chromium and a tiny site served by a
real twisted.web server on this process's reactor: forms, JavaScript off, a live
Server-Sent Events stream, screenshots, console errors, clean shutdown."""

from __future__ import annotations

import contextlib
import html
import os
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import pytest_twisted
from selenium.webdriver.common.keys import Keys
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from notifier.localxmpp import port_is_free
from tests.support import browser as browser_kit
from tests.support.browser import (
    PHONE,
    REPO,
    SCREENSHOTS,
    Browser,
    BrowserError,
    BrowserUnavailable,
    ensure_chromium,
    finish_test,
    in_thread,
    wait_gone,
)
from tests.support.polling import wait_until
from tests.support.ports import free_ports
from tests.support.processes import Processes

HEAD = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8">'
    '<meta name="viewport" content="width=device-width, initial-scale=1">'
    "<title>{title}</title></head><body>"
)

FORM = (
    HEAD.format(title="Form")
    + """
<h1>Vote</h1>
<form method="post" action="/form">
  <label>Your name <input name="name"></label>
  <label for="comment">Comment</label> <textarea id="comment" name="comment"></textarea>
  <label for="time">Time</label>
  <select id="time" name="time"><option>18:00</option><option>19:30</option></select>
  <label><input type="checkbox" name="coming" value="yes"> Coming</label>
  <button type="submit">Send</button>
</form>
<a href="/script">Elsewhere</a>
</body></html>"""
)

SCRIPT = (
    HEAD.format(title="Script")
    + """
<p id="state">rendered by the server</p>
<noscript><p>scripts are off</p></noscript>
<script>document.getElementById("state").textContent = "changed by a script";</script>
</body></html>"""
)

LIVE = (
    HEAD.format(title="Live")
    + """
<p id="live">waiting</p>
<script>
  const live = document.getElementById("live");
  const stream = new EventSource("/events");
  stream.onopen = () => { live.textContent = "connected"; };
  stream.onmessage = (event) => { live.textContent = event.data; };
</script>
</body></html>"""
)

BROKEN = (
    HEAD.format(title="Broken")
    + """
<p>a page with faults</p>
<script>console.error("logged on purpose"); noSuchFunction();</script>
</body></html>"""
)

STORE = (
    HEAD.format(title="Store")
    + """
<p>stored</p>
<script>localStorage.setItem("kit", "remembered"); document.cookie = "seen=1; path=/";</script>
</body></html>"""
)

PAGES = {b"/form": FORM, b"/script": SCRIPT, b"/live": LIVE, b"/broken": BROKEN, b"/store": STORE}


class Events(Resource):
    """`text/event-stream`: each open request gets every `push`."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.open: list[Request] = []

    def render_GET(self, request: Request) -> int:
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-store")
        request.write(b"retry: 500\n\n")  # sends the headers: the page's EventSource opens
        self.open.append(request)
        request.notifyFinish().addBoth(lambda _: self.open.remove(request))
        return NOT_DONE_YET

    def push(self, data: str) -> None:
        for request in list(self.open):
            request.write(f"data: {data}\n\n".encode())


class Pages(Resource):
    """The pages above and /events; a POST to /form answers with what it got (and sets a
    cookie); anything else is a plain 404."""

    isLeaf = True

    def __init__(self, events: Events) -> None:
        super().__init__()
        self.events = events
        self.posted: list[dict[bytes, list[bytes]]] = []

    def render_GET(self, request: Request) -> bytes | int:
        if request.path == b"/events":
            return self.events.render_GET(request)
        page = PAGES.get(request.path)
        if page is None:
            request.setResponseCode(404)
            return b"not found"
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return page.encode()

    def render_POST(self, request: Request) -> bytes:
        args = dict(request.args or {})
        self.posted.append(args)

        def field(name: bytes) -> str:
            return html.escape(args.get(name, [b""])[0].decode())

        coming = "yes" if args.get(b"coming") == [b"yes"] else "no"
        request.addCookie(b"session", b"abc", path=b"/", httpOnly=True, sameSite="lax")
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        body = (
            f"<p>Thanks, {field(b'name')}: {field(b'comment')} at {field(b'time')},"
            f" coming: {coming}</p>"
        )
        return (HEAD.format(title="Thanks") + body + "</body></html>").encode()


@dataclass
class TinySite:
    base: str
    pages: Pages
    events: Events

    def url(self, path: str) -> str:
        return self.base + path


@pytest_twisted.async_yield_fixture
async def tiny() -> AsyncIterator[TinySite]:
    from twisted.internet import reactor

    events = Events()
    pages = Pages(events)
    connections = WrappingFactory(Site(pages))  # keeps its open connections, to drop them
    port = reactor.listenTCP(0, connections, interface="127.0.0.1")
    yield TinySite(f"http://127.0.0.1:{port.getHost().port}", pages, events)
    await port.stopListening()
    for connection in list(connections.protocols):
        connection.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_a_labelled_form_is_filled_and_submitted(browser: Browser, tiny: TinySite) -> None:
    await in_thread(browser.open, tiny.url("/form"))
    await in_thread(browser.fill, "Your name", "Ada <b>")
    await in_thread(browser.fill, "Comment", "fine by me")
    await in_thread(browser.fill, "Time", "19:30")
    await in_thread(browser.check, "Coming")
    await in_thread(browser.submit, "Send")
    assert "Thanks, Ada <b>: fine by me at 19:30, coming: yes" in await in_thread(
        lambda: browser.text
    )
    assert tiny.pages.posted == [
        {
            b"name": [b"Ada <b>"],
            b"comment": [b"fine by me"],
            b"time": [b"19:30"],
            b"coming": [b"yes"],
        }
    ]
    [cookie] = await in_thread(browser.cookies)
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == ("session", True, "Lax")


@pytest_twisted.ensureDeferred
async def test_roles_labels_and_keyboard(browser: Browser, tiny: TinySite) -> None:
    await in_thread(browser.open, tiny.url("/form"))
    heading = await in_thread(browser.by_role, "heading", "Vote")
    assert heading.tag_name == "h1"
    field = await in_thread(browser.by_label, "Comment")
    assert field.tag_name == "textarea"
    focused = await in_thread(browser.press, Keys.TAB)
    assert focused.accessible_name == "Your name"
    with pytest.raises(BrowserError, match=r"found none.*buttons on the page: 'Send'"):
        await in_thread(browser.by_role, "button", "Vote", 0.2)
    with pytest.raises(BrowserError, match=r"found none.*fields on the page: 'Your name'"):
        await in_thread(browser.by_label, "Send", 0.2)
    await in_thread(browser.click_link, "Elsewhere")
    await in_thread(browser.wait_for_text, "changed by a script")
    assert (await in_thread(lambda: browser.url)).endswith("/script")


@pytest_twisted.ensureDeferred
async def test_javascript_off_really_runs_no_script(
    browser_without_js: Browser, tiny: TinySite
) -> None:
    page = browser_without_js
    await in_thread(page.open, tiny.url("/script"))
    text = await in_thread(lambda: page.text)
    assert "rendered by the server" in text
    assert "scripts are off" in text
    assert await in_thread(page.execute, "return document.getElementById('state').textContent") == (
        "rendered by the server"
    )
    # and a plain form still works, with a full reload
    await in_thread(page.open, tiny.url("/form"))
    await in_thread(page.fill, "Your name", "Bo")
    await in_thread(page.submit, "Send")
    await in_thread(page.wait_for_text, "Thanks, Bo")


@pytest_twisted.ensureDeferred
async def test_javascript_on_runs_the_script(browser: Browser, tiny: TinySite) -> None:
    await in_thread(browser.open, tiny.url("/script"))
    await in_thread(browser.wait_for_text, "changed by a script")
    assert "scripts are off" not in await in_thread(lambda: browser.text)


@pytest_twisted.ensureDeferred
async def test_a_server_sent_event_updates_the_page_live(browser: Browser, tiny: TinySite) -> None:
    await in_thread(browser.open, tiny.url("/live"))
    await in_thread(browser.wait_for_text, "connected")
    assert len(tiny.events.open) == 1
    for text in ("first change", "second change"):
        tiny.events.push(text)
        await in_thread(browser.wait_for_text, text, within="#live")
    await in_thread(browser.leave)  # the stream closes with the page
    await in_thread(browser.wait_until, lambda: not tiny.events.open, "the stream closed")


@pytest_twisted.ensureDeferred
async def test_a_timeout_shows_the_page(browser: Browser, tiny: TinySite) -> None:
    await in_thread(browser.open, tiny.url("/form"))
    with pytest.raises(BrowserError) as raised:
        await in_thread(browser.wait_for_text, "never there", 0.2)
    message = str(raised.value)
    assert "'never there' on the page" in message
    assert tiny.url("/form") in message
    assert "Your name" in message
    with pytest.raises(BrowserError, match=r"'Vote' in 'p'"):
        await in_thread(browser.wait_for_text, "Vote", 0.2, within="p")  # in the h1
    await in_thread(browser.wait_for_text, "Vote", 0.2, within="h1, p")


@pytest_twisted.ensureDeferred
async def test_console_errors_are_surfaced(browser: Browser, tiny: TinySite) -> None:
    await in_thread(browser.open, tiny.url("/broken"))
    errors = await in_thread(browser.take_console_errors)
    assert [entry.source for entry in errors] == ["console-api", "javascript"]
    assert "logged on purpose" in errors[0].message
    assert "noSuchFunction is not defined" in errors[1].message
    assert await in_thread(browser.console_errors) == []
    # what is left when the test's body ends is what fails it (pytest_runtest_call)
    await in_thread(browser.open, tiny.url("/broken"))
    left = await in_thread(finish_test, browser, False)
    assert [entry.source for entry in left] == ["console-api", "javascript"]
    assert await in_thread(lambda: browser.url) == "about:blank"


@pytest_twisted.ensureDeferred
async def test_a_failed_test_leaves_a_screenshot(browser: Browser, tiny: TinySite) -> None:
    await in_thread(browser.open, tiny.url("/form"))
    assert await in_thread(finish_test, browser, True) == []
    shot = SCREENSHOTS / "test_a_failed_test_leaves_a_screenshot-failure-1280.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shot.unlink()


PROBE = """
from tests.support.browser import Browser

BROKEN = "data:text/html,<p>x</p><script>noSuchFunction()</script>"


def test_kit_probe_passes_but_logged_errors(browser: Browser) -> None:
    browser.open(BROKEN)


def test_kit_probe_takes_its_errors(browser: Browser) -> None:
    browser.open(BROKEN)
    assert len(browser.take_console_errors()) == 1


def test_kit_probe_fails(browser: Browser) -> None:
    browser.open("data:text/html,<p>x</p>")
    assert False, "on purpose"
"""


def test_the_plugin_fails_a_test_on_errors_and_shoots_a_failure(tmp_path: Path) -> None:
    """The fixtures and hooks as a pytest run of its own uses them."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.support.browser"]\n')
    (tmp_path / "test_probe.py").write_text(PROBE)
    shot = SCREENSHOTS / "test_kit_probe_fails-failure-1280.png"
    shot.unlink(missing_ok=True)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-rfE",
            "-q",
            f"--basetemp={tmp_path / 'base'}",
            str(tmp_path / "test_probe.py"),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=100,
    )
    out = run.stdout + run.stderr
    assert "2 failed, 1 passed" in out, out
    assert "FAILED test_probe.py::test_kit_probe_passes_but_logged_errors" in out
    assert "the page logged errors" in out and "noSuchFunction" in out
    assert "FAILED test_probe.py::test_kit_probe_fails" in out
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shot.unlink()


@pytest_twisted.ensureDeferred
async def test_screenshots_at_phone_and_desktop_width(browser: Browser, tiny: TinySite) -> None:
    await in_thread(browser.open, tiny.url("/form"))
    paths = await in_thread(browser.screenshots)
    assert [path.name for path in paths] == [
        "test_screenshots_at_phone_and_desktop_width-390.png",
        "test_screenshots_at_phone_and_desktop_width-1280.png",
    ]
    for path, width in zip(paths, (PHONE[0], 1280), strict=True):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", data[16:24])[0] == width
    assert browser.width == 1280
    assert await in_thread(browser.execute, "return window.innerWidth") == 1280
    await in_thread(browser.phone)
    assert await in_thread(browser.execute, "return window.innerWidth") == PHONE[0]


@pytest_twisted.ensureDeferred
async def test_reset_forgets_cookies_storage_and_zone(browser: Browser, tiny: TinySite) -> None:
    await in_thread(browser.open, tiny.url("/store"))
    await in_thread(browser.set_timezone, "Asia/Tokyo")
    zone = "return Intl.DateTimeFormat().resolvedOptions().timeZone"
    assert await in_thread(browser.execute, zone) == "Asia/Tokyo"
    assert [c["name"] for c in await in_thread(browser.cookies)] == ["seen"]
    await in_thread(browser.reset)
    await in_thread(browser.open, tiny.url("/form"))
    assert await in_thread(browser.cookies) == []
    assert await in_thread(browser.execute, "return localStorage.getItem('kit')") is None
    assert await in_thread(browser.execute, zone) != "Asia/Tokyo"


def test_nothing_is_left_running_and_nothing_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A browser of its own: quit, every process it started is gone; Selenium Manager (which
    would download drivers) is never asked."""

    def no_manager(*args: object) -> dict[str, str]:
        raise AssertionError("Selenium Manager was run")

    monkeypatch.setattr(
        "selenium.webdriver.common.selenium_manager.SeleniumManager.binary_paths", no_manager
    )
    own = Browser(tmp_path / "own")
    with own:
        own.open("data:text/html,<p>hello</p>")
        assert own.text == "hello"
        running = own.processes()
        names = set()
        for process in running:
            with contextlib.suppress(psutil.NoSuchProcess):  # a helper may come and go
                names.add(process.name())
        assert {"chromedriver", "chromium"} <= names, names
    pids = [process.pid for process in running]
    assert wait_gone(pids, 0) == []
    marker = str(tmp_path / "own")
    left = [
        process.pid
        for process in psutil.process_iter(["cmdline"])
        if any(marker in part for part in process.info["cmdline"] or [])
    ]
    assert left == []


def test_missing_binaries_without_root_say_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    absent = {tmp_path / "chromium": "chromium", tmp_path / "chromedriver": "chromium-driver"}
    monkeypatch.setattr(browser_kit, "DEBIAN_PACKAGES", absent)
    monkeypatch.setattr(browser_kit.os, "geteuid", lambda: 1000)
    with pytest.raises(BrowserUnavailable, match=r"apt-get install -y chromium chromium-driver"):
        ensure_chromium()


def test_a_server_in_another_process_is_driven_directly(browser: Browser, tmp_path: Path) -> None:
    """As the web's end-to-end tests drive `herd run` processes: the calls block, no thread.
    The server is twisted.web's own `twist web` serving a folder."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "script.html").write_text(SCRIPT)
    [port] = free_ports(1)
    with Processes() as children:
        children.start(
            "twist web",
            [
                str(Path(sys.executable).parent / "twist"),
                "web",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--path",
                str(tmp_path / "site"),
            ],
            log_path=tmp_path / "twist.log",
        )
        wait_until(lambda: not port_is_free(port), 15, "twist web listening")
        browser.open(f"http://127.0.0.1:{port}/script.html")
        browser.wait_for_text("changed by a script")
        assert browser.title == "Script"
