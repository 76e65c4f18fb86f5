"""A real headless Chromium for the web tests: Debian's `chromium`, driven through its own
`chromedriver` by Selenium, with nothing downloaded and nothing reached but loopback.

The binaries are `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's `chromium` and
`chromium-driver`): `make test` installs them when missing (`make test-deps`), and so does the first
test that needs them when it runs as root; without them and without root the browser tests are
skipped, saying what to install (never in CI, where they fail).  Selenium is handed both paths,
so its Selenium Manager is never run (and `SE_OFFLINE` is set in case it were).

`Browser` is one Chromium with its own fresh profile under the test's tmp dir, started with the
flags of a closed, GPU-less sandbox run as root (`CHROMIUM_FLAGS`).  What the tests call, all
blocking and all bounded (`WAIT_SECONDS`):

- `open(url)`, `url`, `title`, `text` (the body's rendered text), `text_of(css)`, `html`,
  `cookies()`;
- finding, each waiting until exactly one element matches: `by_label(text)` (a form control by
  its label, `aria-label` or `aria-labelledby`), `by_role(role, name)` (Chromium's own
  accessibility tree: `button`, `link`, `heading`, `textbox`, `checkbox`, `combobox`…, by
  accessible name), `by_css(selector)`; `all_by_role`, `all_by_css` for lists;
- acting: `click(element)`, `click_button(name)`, `click_link(name)`, `fill(label, value)`
  (text fields, text areas, selects), `check(label)`, `submit(button)` (clicks a form's submit
  button and waits for the page that answers), `press(keys)` and `focused` (keyboard
  navigation);
- waiting: `wait_for_text(text, within=css)`, `wait_for_no_text`, `wait_until(condition,
  what)`: polls with a deadline; a timeout raises `BrowserError` with the URL, the page's text
  and its console errors;
- `console_errors()` (everything the page logged at error level: uncaught exceptions,
  `console.error`, failed loads; `take_console_errors()` also forgets them);
- `set_size(width, height, mobile)`, `phone()` (390x844, a mobile viewport that honours
  `<meta name=viewport>`), `desktop()` (1280x900); `set_timezone(zone)`;
- `screenshot()` (the whole page as PNG into `test-artifacts/screenshots/<test name>-<width>.png`
  at the repository's root, gitignored) and `screenshots()` (phone and desktop);
- `execute(script, *args)`, and `driver` (the Selenium WebDriver) for anything else.

The fixtures `browser` (JavaScript on) and `browser_without_js` (JavaScript off through
Chromium's content settings, as a user who turned it off: `<script>` does not run,
`<noscript>` shows) hand each test a browser that is started once per session and reset between
tests: cookies, cache and the storage of every origin it visited cleared, extra windows closed,
viewport back to desktop, time zone back to the host's.  Right after the test's body (a hook,
`pytest_runtest_call`, so before the test's other fixtures stop its servers) the browser leaves
the page, so its streams close; a test that passed fails if its pages logged errors it did not
take, and a test that failed leaves `<test name>-failure-<width>.png`.  At the session's end each
browser is shut down and every process it started (chromedriver, Chromium and Chromium's
helpers) is waited for, killed by its id if it lingers.

The calls block: with the server under test in other processes (`herd run`) a test calls them
directly.  A test whose server runs on this process's reactor (`pytest_twisted`) runs each call
in a thread, `await in_thread(browser.open, url)`, so the reactor keeps serving meanwhile.

What it costs (measured on 2 busy cores): a browser starts in about 2 s, once per session and
kind (so at most twice); a test adds about 0.3 s to reset and leave it; opening a local page,
filling and submitting a form and seeing the answer takes about 0.6 s; each browser holds about
370 MiB (PSS) in 10 processes.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import psutil
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.select import Select
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DEBIAN_PACKAGES = {CHROMIUM: "chromium", CHROMEDRIVER: "chromium-driver"}

# Root, no GPU, no network but loopback: no sandbox (it needs user namespaces or setuid), /tmp
# rather than a small /dev/shm, and nothing that phones home (updates, sync, QUIC probes).
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--no-proxy-server",  # loopback only, whatever proxy the environment names
    # A page left must really unload (its streams close), not wait in the back-forward cache.
    "--disable-features=BackForwardCache",
)

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"

WAIT_SECONDS = 10.0  # the default bound of every wait
POLL_SECONDS = 0.05
PAGE_LOAD_SECONDS = 30.0  # one navigation (a page that never loads fails, never hangs)
SCRIPT_SECONDS = 10.0
STOP_SECONDS = 5.0  # what the processes get to exit after quit, before SIGKILL
SCREENSHOT_MAX_HEIGHT = 8000  # CSS pixels of a full-page screenshot
TEXT_IN_ERRORS = 4000  # characters of the page's text quoted in a timeout

PHONE = (390, 844)
DESKTOP = (1280, 900)

# Roles whose accessible name can come from a <label>: what `by_label` finds.
_CONTROLS = (
    "input:not([type=hidden]):not([type=submit]):not([type=button]):not([type=reset])"
    ":not([type=image]), select, textarea, [contenteditable=''], [contenteditable=true],"
    " [role=textbox], [role=searchbox], [role=combobox], [role=listbox], [role=checkbox],"
    " [role=radio], [role=switch], [role=spinbutton], [role=slider]"
)

P = ParamSpec("P")
T = TypeVar("T")


class BrowserError(AssertionError):
    """A wait that ran out or a search that found nothing (or too much), with what the page
    showed."""


class BrowserUnavailable(Exception):
    """Chromium or ChromeDriver is missing and cannot be installed here."""


def in_thread(call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
    """Run a blocking browser call in the reactor's thread pool: for tests whose server runs on
    this process's reactor (`await in_thread(browser.wait_for_text, "3 votes")`)."""
    return deferToThread(call, *args, **kwargs)


def ensure_chromium() -> None:
    """Install Debian's `chromium` and `chromium-driver` if either binary is missing and we are
    root (as in CI); raise BrowserUnavailable saying what to run otherwise."""
    missing = [pkg for path, pkg in DEBIAN_PACKAGES.items() if not os.access(path, os.X_OK)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise BrowserUnavailable(
            f"{' and '.join(missing)} not installed (no {CHROMIUM} or {CHROMEDRIVER}); "
            f"run: sudo apt-get install -y chromium chromium-driver (or make test-deps)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *missing]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        # A fresh machine may have no package lists yet.
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        done = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BrowserUnavailable(f"apt-get install {' '.join(missing)} failed:\n{done.stderr}")
    still = [str(path) for path in DEBIAN_PACKAGES if not os.access(path, os.X_OK)]
    if still:
        raise BrowserUnavailable(f"apt-get installed {' '.join(missing)} but no {still}")


def artifact_name(name: str) -> str:
    """A test's name as a file name (`test_x[phone-1]` -> `test_x_phone-1_`)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


@dataclass(frozen=True)
class ConsoleEntry:
    level: str  # SEVERE, WARNING, INFO…
    source: str  # javascript (uncaught), console-api, network…
    message: str

    def __str__(self) -> str:
        return f"[{self.source}] {self.message}"


class Browser:
    """One headless Chromium with a fresh profile in `profile`, driven by its ChromeDriver.

    `start()` and `close()` (or a `with` block); `javascript=False` turns scripts off for the
    whole profile.  Screenshots are named after `test_name` (the fixtures set it per test)."""

    def __init__(
        self,
        profile: Path,
        *,
        javascript: bool = True,
        screenshots: Path = SCREENSHOTS,
        test_name: str = "browser",
    ) -> None:
        self.profile = profile
        self.javascript = javascript
        self.screenshots_dir = screenshots
        self.test_name = test_name
        self._driver: webdriver.Chrome | None = None
        self._service: Service | None = None
        self._console: list[ConsoleEntry] = []
        self._origins: set[str] = set()
        self._size: tuple[int, int, bool] = (*DESKTOP, False)
        self._known: dict[int, psutil.Process] = {}  # every process seen, with its start time
        self.started_seconds = 0.0  # how long the last start() took

    # -- life ----------------------------------------------------------------------------

    def __enter__(self) -> Browser:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def driver(self) -> webdriver.Chrome:
        if self._driver is None:
            raise BrowserError("the browser is not started")
        return self._driver

    def start(self) -> None:
        ensure_chromium()
        os.environ["SE_OFFLINE"] = "true"  # Selenium Manager, were it ever run, stays offline
        began = time.monotonic()
        self.profile.mkdir(parents=True, exist_ok=True)
        data_dir = self.profile / "chromium"
        shutil.rmtree(data_dir, ignore_errors=True)
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={data_dir}")
        options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
        if not self.javascript:
            options.add_experimental_option(
                "prefs", {"profile.managed_default_content_settings.javascript": 2}
            )
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self._service = Service(
            executable_path=str(CHROMEDRIVER), log_output=str(self.profile / "chromedriver.log")
        )
        try:
            self._driver = webdriver.Chrome(options=options, service=self._service)
            self._notice_processes()
            self.driver.set_page_load_timeout(PAGE_LOAD_SECONDS)
            self.driver.set_script_timeout(SCRIPT_SECONDS)
            self._size = (*DESKTOP, False)
            self._apply_size()
        except BaseException:
            self.close()
            raise
        self.started_seconds = time.monotonic() - began

    def alive(self) -> bool:
        if self._driver is None:
            return False
        try:
            self._driver.current_url  # noqa: B018 (a round trip)
        except WebDriverException:
            return False
        return True

    def processes(self) -> list[psutil.Process]:
        """What this browser runs now: chromedriver, Chromium and Chromium's helpers."""
        self._notice_processes()
        found = []
        for process in self._known.values():
            try:  # is_running() is False for a pid reused by another process
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process)
            except psutil.NoSuchProcess:
                continue
        return found

    def _notice_processes(self) -> None:
        """Remember the driver's process tree, and whatever runs on this profile (a helper
        forked off and re-parented)."""
        seen: list[psutil.Process] = []
        service = self._service
        process = getattr(service, "process", None) if service is not None else None
        if process is not None:
            try:
                root = psutil.Process(process.pid)
                seen.append(root)
                seen.extend(root.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        marker = str(self.profile / "chromium")  # a fresh tmp path: only ours name it
        for candidate in psutil.process_iter(["cmdline"]):
            if any(marker in part for part in candidate.info["cmdline"] or []):
                seen.append(candidate)
        for found in seen:
            known = self._known.get(found.pid)
            if known is None or not known.is_running():
                self._known[found.pid] = found

    def close(self) -> None:
        """Quit the browser and its driver; wait for every process of theirs, SIGKILL (by id)
        those that outlive STOP_SECONDS."""
        self._notice_processes()
        try:
            if self._driver is not None:
                self._driver.quit()
        except WebDriverException:
            pass
        finally:
            self._driver = None
            if self._service is not None:
                self._service.stop()
                self._service = None
        survivors = self.processes()
        _, alive = psutil.wait_procs(survivors, timeout=STOP_SECONDS)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(alive, timeout=STOP_SECONDS)
        self._known.clear()

    def reset(self) -> None:
        """A clean slate for the next test: restarted if it died; one window on about:blank;
        cookies, cache and every visited origin's storage cleared; desktop size; the host's time
        zone; the console forgotten."""
        if not self.alive():
            self.close()
            self.start()
        driver = self.driver
        handles = driver.window_handles
        for handle in handles[1:]:
            driver.switch_to.window(handle)
            driver.close()
        driver.switch_to.window(handles[0])
        self.leave()
        driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
        driver.execute_cdp_cmd("Network.clearBrowserCache", {})
        for origin in sorted(self._origins):
            driver.execute_cdp_cmd(
                "Storage.clearDataForOrigin", {"origin": origin, "storageTypes": "all"}
            )
        self._origins.clear()
        driver.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": ""})
        self.desktop()
        self._drain_console()
        self._console.clear()

    def leave(self) -> None:
        """Go to about:blank: the page's connections (its streams) close."""
        self._note_origin()
        self.driver.get("about:blank")

    # -- reading -------------------------------------------------------------------------

    def open(self, url: str) -> None:
        """Navigate and wait for the page's load event."""
        self._note_origin(url)
        self.driver.get(url)
        self._note_origin()

    @property
    def url(self) -> str:
        return self.driver.current_url

    @property
    def title(self) -> str:
        return self.driver.title

    @property
    def text(self) -> str:
        """The body's text as rendered (hidden elements left out)."""
        return self.text_of(None)

    def text_of(self, selector: str | None) -> str:
        """The rendered text of the elements matching the CSS `selector` (one per line; the
        body's if None; empty if nothing matches yet)."""
        text = self.driver.execute_script(
            "const found = arguments[0] === null ? [document.body]"
            " : Array.from(document.querySelectorAll(arguments[0]));"
            " return found.filter(e => e).map(e => e.innerText).join('\\n')",
            selector,
        )
        return str(text)

    @property
    def html(self) -> str:
        return self.driver.page_source

    def cookies(self) -> list[dict[str, Any]]:
        """The current page's cookies, HttpOnly ones included (`httpOnly`, `sameSite`…)."""
        return self.driver.get_cookies()

    def execute(self, script: str, *args: object) -> Any:
        """Run `script` in the page (a function body: `return …`); works with JavaScript off
        too, since the driver does not go through the page's settings."""
        return self.driver.execute_script(script, *args)

    # -- finding -------------------------------------------------------------------------

    def by_css(self, selector: str, timeout: float = WAIT_SECONDS) -> WebElement:
        return self._one(lambda: self.all_by_css(selector), f"CSS {selector!r}", timeout)

    def all_by_css(self, selector: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def by_role(
        self, role: str, name: str | None = None, timeout: float = WAIT_SECONDS
    ) -> WebElement:
        """The one element of ARIA `role` (and accessible `name`, exactly, if given) in
        Chromium's accessibility tree: what a screen reader would find."""
        what = f"role {role!r}" + (f" named {name!r}" if name is not None else "")
        return self._one(
            lambda: self.all_by_role(role, name), what, timeout, lambda: self._names(role)
        )

    def all_by_role(self, role: str, name: str | None = None) -> list[WebElement]:
        query: dict[str, Any] = {"role": role}
        if name is not None:
            query["accessibleName"] = name
        return self._query_accessibility(query)

    def by_label(self, label: str, timeout: float = WAIT_SECONDS) -> WebElement:
        """The one form control whose accessible name is `label` (from its <label>,
        `aria-label` or `aria-labelledby`), as a user finds a field."""
        return self._one(
            lambda: self._labelled(label), f"a field labelled {label!r}", timeout, self._labels
        )

    def _labelled(self, label: str) -> list[WebElement]:
        found = self._query_accessibility({"accessibleName": label})
        return [
            element
            for element in found
            if self.driver.execute_script(
                "return arguments[0].matches(arguments[1])", element, _CONTROLS
            )
        ]

    def _query_accessibility(self, query: dict[str, Any]) -> list[WebElement]:
        driver = self.driver
        root = driver.execute_cdp_cmd("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
        nodes = driver.execute_cdp_cmd("Accessibility.queryAXTree", {"nodeId": root, **query})
        elements: list[WebElement] = []
        for node in nodes.get("nodes", []):
            backend = node.get("backendDOMNodeId")
            if backend is None or node.get("ignored"):
                continue
            element = self._element_of(backend)
            if element is not None and element not in elements:
                elements.append(element)
        return elements

    def _element_of(self, backend_node_id: int) -> WebElement | None:
        """The DOM node behind an accessibility node, as a WebElement (text nodes: None)."""
        driver = self.driver
        remote = driver.execute_cdp_cmd("DOM.resolveNode", {"backendNodeId": backend_node_id})
        object_id = remote["object"].get("objectId")
        if object_id is None or remote["object"].get("className") == "Text":
            return None
        driver.execute_cdp_cmd(
            "Runtime.callFunctionOn",
            {"objectId": object_id, "functionDeclaration": "function(){window.__kitFound=this}"},
        )
        element = driver.execute_script(
            "const found = window.__kitFound; delete window.__kitFound; return found"
        )
        return element if isinstance(element, WebElement) else None

    def _names(self, role: str) -> str:
        names = []
        for element in self.all_by_role(role):
            names.append(repr(element.accessible_name))
        return f"{role}s on the page: {', '.join(names) or 'none'}"

    def _labels(self) -> str:
        names = [repr(element.accessible_name) for element in self.all_by_css(_CONTROLS)]
        return f"fields on the page: {', '.join(names) or 'none'}"

    def _one(
        self,
        find: Callable[[], list[WebElement]],
        what: str,
        timeout: float,
        context: Callable[[], str] | None = None,
    ) -> WebElement:
        found: list[WebElement] = []

        def exactly_one() -> bool:
            nonlocal found
            try:
                found = find()
            except WebDriverException:  # the page changed under the search: look again
                found = []
            return len(found) == 1

        def problem() -> str:
            count = "none" if not found else f"{len(found)}"
            extra = f"; {context()}" if context is not None else ""
            return f"{what}: found {count}, wanted exactly one{extra}"

        self.wait_until(exactly_one, problem, timeout)
        return found[0]

    # -- acting --------------------------------------------------------------------------

    def click(self, element: WebElement) -> None:
        element.click()

    def click_button(self, name: str, timeout: float = WAIT_SECONDS) -> None:
        self.by_role("button", name, timeout).click()

    def click_link(self, name: str, timeout: float = WAIT_SECONDS) -> None:
        self.by_role("link", name, timeout).click()

    def fill(self, label: str, value: str, timeout: float = WAIT_SECONDS) -> WebElement:
        """Type `value` into the field labelled `label` (cleared first); in a <select>, choose
        the option whose text is `value`."""
        field = self.by_label(label, timeout)
        if field.tag_name.lower() == "select":
            Select(field).select_by_visible_text(value)
        else:
            field.clear()
            field.send_keys(value)
        return field

    def check(self, label: str, checked: bool = True, timeout: float = WAIT_SECONDS) -> None:
        """Tick (or untick) the checkbox or radio button labelled `label`."""
        field = self.by_label(label, timeout)
        if field.is_selected() != checked:
            field.click()

    def submit(self, button: str, *, reload: bool = True, timeout: float = WAIT_SECONDS) -> None:
        """Click the submit button named `button`; with `reload` (a plain form), wait until the
        page that answers has loaded."""
        element = self.by_role("button", button, timeout)
        if not reload:
            element.click()
            return
        mark = self._mark_document()
        element.click()
        self.wait_until(
            lambda: self._document_replaced(mark), f"a new page after {button!r}", timeout
        )
        self._note_origin()

    def _mark_document(self) -> str:
        mark = f"{time.monotonic_ns()}"
        self.driver.execute_script("document.__kitMark = arguments[0]", mark)
        return mark

    def _document_replaced(self, mark: str) -> bool:
        try:
            state = self.driver.execute_script(
                "return [document.__kitMark || null, document.readyState]"
            )
        except WebDriverException:  # between two documents
            return False
        return bool(state[0] != mark and state[1] == "complete")

    def press(self, *keys: str) -> WebElement:
        """Send keys (`Keys.TAB`, `Keys.ENTER`, text) to what has the focus; returns what has
        it then."""
        ActionChains(self.driver).send_keys(*keys).perform()
        return self.focused

    @property
    def focused(self) -> WebElement:
        return self.driver.switch_to.active_element

    # -- waiting -------------------------------------------------------------------------

    def wait_until(
        self,
        condition: Callable[[], T | None],
        what: str | Callable[[], str],
        timeout: float = WAIT_SECONDS,
    ) -> T:
        """Poll `condition` until it returns something truthy; BrowserError at the deadline,
        with what the page shows."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() >= deadline:
                message = what() if callable(what) else what
                raise BrowserError(f"timed out after {timeout} s: {message}\n{self.describe()}")
            time.sleep(POLL_SECONDS)

    def wait_for_text(
        self, text: str, timeout: float = WAIT_SECONDS, *, within: str | None = None
    ) -> None:
        """Until `text` shows on the page (or in the elements matching the CSS `within`)."""
        where = f"in {within!r}" if within is not None else "on the page"
        self.wait_until(lambda: text in self.text_of(within), f"{text!r} {where}", timeout)

    def wait_for_no_text(
        self, text: str, timeout: float = WAIT_SECONDS, *, within: str | None = None
    ) -> None:
        where = f"from {within!r}" if within is not None else "from the page"
        self.wait_until(lambda: text not in self.text_of(within), f"{text!r} gone {where}", timeout)

    def describe(self) -> str:
        """The URL, the page's text and its console errors, for a failure message."""
        try:
            url, text = self.url, self.text
        except WebDriverException as error:
            return f"(the page cannot be read: {error.msg})"
        if len(text) > TEXT_IN_ERRORS:
            text = text[:TEXT_IN_ERRORS] + "…"
        errors = "".join(f"\n  {entry}" for entry in self.console_errors())
        return f"page {url}:\n{text}" + (f"\nconsole errors:{errors}" if errors else "")

    # -- the console ---------------------------------------------------------------------

    def console_errors(self) -> list[ConsoleEntry]:
        """Every error the pages logged since the last `take_console_errors()` or reset."""
        self._drain_console()
        return [entry for entry in self._console if entry.level == "SEVERE"]

    def take_console_errors(self) -> list[ConsoleEntry]:
        """The errors logged so far, forgotten (a test that provokes some takes them)."""
        errors = self.console_errors()
        self._console.clear()
        return errors

    def _drain_console(self) -> None:
        logged: list[dict[str, Any]] = self.driver.get_log("browser")  # type: ignore[no-untyped-call]
        for raw in logged:
            entry = ConsoleEntry(str(raw["level"]), str(raw.get("source", "")), str(raw["message"]))
            if entry.source == "network" and "/favicon.ico" in entry.message:
                continue  # the browser asks for one on its own; not the page's doing
            self._console.append(entry)

    # -- size, zone, screenshots ---------------------------------------------------------

    def set_size(self, width: int, height: int, mobile: bool = False) -> None:
        """The viewport in CSS pixels; `mobile` as a phone renders (honouring the page's
        `<meta name=viewport>`)."""
        self._size = (width, height, mobile)
        self._apply_size()

    def _apply_size(self) -> None:
        width, height, mobile = self._size
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )

    def phone(self) -> None:
        self.set_size(*PHONE, mobile=True)

    def desktop(self) -> None:
        self.set_size(*DESKTOP)

    @property
    def width(self) -> int:
        return self._size[0]

    def set_timezone(self, zone: str) -> None:
        """The page's time zone (IANA name), as a viewer's elsewhere."""
        self.driver.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": zone})

    def screenshot(self, label: str = "", *, full_page: bool = True) -> Path:
        """The page as PNG, into `<screenshots>/<test name>[-<label>]-<width>.png`."""
        name = artifact_name("-".join(part for part in (self.test_name, label) if part))
        path = self.screenshots_dir / f"{name}-{self.width}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        driver = self.driver
        capture: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            height = max(self._size[1], min(int(size["height"]), SCREENSHOT_MAX_HEIGHT))
            capture["captureBeyondViewport"] = True
            capture["clip"] = {"x": 0, "y": 0, "width": self.width, "height": height, "scale": 1}
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", capture)
        path.write_bytes(base64.b64decode(shot["data"]))
        self._apply_size()  # capturing beyond the viewport may have stretched it
        return path

    def screenshots(self, label: str = "") -> list[Path]:
        """The page at phone and at desktop width (the size it had is put back)."""
        before = self._size
        paths = []
        for size in (self.phone, self.desktop):
            size()
            paths.append(self.screenshot(label))
        self.set_size(*before)
        return paths

    # -- bookkeeping ---------------------------------------------------------------------

    def _note_origin(self, url: str | None = None) -> None:
        """Remember the origin of `url` (or of the current page) to clear its storage."""
        try:
            url = url if url is not None else self.driver.current_url
        except WebDriverException:
            return
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and parts.netloc:
            self._origins.add(f"{parts.scheme}://{parts.netloc}")


# -- pytest fixtures (a plugin: tests/conftest.py loads it) ---------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Right after a test's body, before any fixture ends (so before its servers stop): each
    browser it used leaves its page, after a screenshot if the test failed; a test that passed
    fails if its pages logged errors it did not take."""
    values = getattr(item, "funcargs", {}).values()
    browsers = list({id(value): value for value in values if isinstance(value, Browser)}.values())
    try:
        result = yield
    except pytest.skip.Exception:
        for browser in browsers:
            finish_test(browser, failed=False)
        raise
    except BaseException:
        for browser in browsers:
            finish_test(browser, failed=True)
        raise
    errors = [entry for browser in browsers for entry in finish_test(browser, failed=False)]
    if errors:
        listed = "\n  ".join(str(entry) for entry in errors)
        pytest.fail(f"the page logged errors (take_console_errors() if expected):\n  {listed}")
    return result


def finish_test(browser: Browser, failed: bool) -> list[ConsoleEntry]:
    """What a browser does when a test's body ends: a `<test>-failure-<width>.png` if it
    `failed`; its console errors taken (returned); its page left, so its streams close."""
    if not browser.alive():
        return []
    with contextlib.suppress(WebDriverException):
        if failed:
            browser.screenshot("failure")
    errors = browser.take_console_errors()
    with contextlib.suppress(WebDriverException):
        browser.leave()
    return errors


def _session_browser(
    factory: pytest.TempPathFactory, javascript: bool, name: str
) -> Iterator[Browser]:
    try:
        ensure_chromium()
    except BrowserUnavailable as error:
        if os.environ.get("CI"):
            pytest.fail(f"no browser in CI: {error}")
        pytest.skip(f"browser tests skipped: {error}")
    browser = Browser(factory.mktemp(name), javascript=javascript)
    browser.start()
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="session")
def _chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    yield from _session_browser(tmp_path_factory, True, "chromium")


@pytest.fixture(scope="session")
def _chromium_without_js(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    yield from _session_browser(tmp_path_factory, False, "chromium-nojs")


def _per_test(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Browser]:
    browser.reset()
    browser.test_name = artifact_name(request.node.name)
    yield browser
    browser.test_name = "browser"


@pytest.fixture
def browser(_chromium: Browser, request: pytest.FixtureRequest) -> Iterator[Browser]:
    """A headless Chromium with JavaScript on, clean for this test."""
    yield from _per_test(_chromium, request)


@pytest.fixture
def browser_without_js(
    _chromium_without_js: Browser, request: pytest.FixtureRequest
) -> Iterator[Browser]:
    """A headless Chromium with JavaScript turned off, clean for this test."""
    yield from _per_test(_chromium_without_js, request)


def wait_gone(pids: Sequence[int], timeout: float = STOP_SECONDS) -> list[int]:
    """Of `pids`, those still running (not zombies) after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                continue
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(POLL_SECONDS)
