"""The web in a real headless Chromium (tests/support/browser.py), against real `herd run`
processes with `[web]`: what a person does with the pages, as they do it.

One herd of two linked servers (Bailey, Bona) and a mail sink for the module.  Each person opens
the personal link from the mail the sink caught (the link is read from the mail, never made by
the test), so the path from a mail to a vote is the one a person takes.  A test reads a tally
before it votes and acts as people no other test votes as, so none depends on another's votes.

- the link from the mail opens the event page; a vote through the page's form changes the
  tally, with JavaScript on and with it off (then the form posts and the page reloads);
- markup and script in an event's title and in a comment show as text: no alert, no element
  made, nothing run, no console error;
- every field has a label, the vote form is used with the keyboard alone (with a visible focus
  ring), the page has one h1, the event's title, and every text WCAG AA contrast; on a phone
  nothing is wider than the screen and every button is 44 px high; phone and desktop
  screenshots are kept under test-artifacts/screenshots/ (docs/images/ has a copy of each);
- a forged or expired link shows the "not available" page and nothing of the event; a form on
  another site that posts to the vote URL (served by a small HTTP server of the test's own, on
  another origin) changes nothing;
- the live stream: a vote cast on the other server over the line protocol shows on the open
  page within a second without a reload; the page catches up after its own server restarts,
  each change shown once;
- one-click unsubscribe from a mail's `List-Unsubscribe` header (a POST, as a mail provider
  sends it) stops that user's mails while another user still gets one; the settings page from
  the link in a mail changes settings through its form, and the line protocol at the other
  server sees them.
"""

from __future__ import annotations

import html
import json
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement

from herd.tokens import link_token
from tests.support.browser import Browser, ConsoleEntry
from tests.support.herd import SECRET
from tests.support.lines import Session, now_time, option_ids
from tests.support.polling import stays_false, wait_until
from tests.support.ports import free_ports
from tests.support.smtp import Mail, SmtpProcess
from tests.support.users import add_user

from .test_web import WebHerd

NAMES = ("Bailey", "Bona")
LINKS = (("Bailey", "Bona"),)
PEOPLE = ("alice", "bob", "carol", "dave", "erin", "frank", "gina", "hal")
DINNER = "Dinner at Chez Paul"
HOSTILE = (
    "Picnic <script>window.__pwned='title'</script>"
    "<img src=x onerror=\"window.__pwned='img'\"> & co"
)
COMMENT = (
    "I'll bring <script>window.__pwned='comment'</script><b>wine</b> <img src=x onerror=alert(1)>"
)
POSITIONS = {  # near the Seine: the page's drawing of where everyone is
    "alice": "+48.8566+002.3522",
    "bob": "+48.8606+002.3376",
    "carol": "+48.8738+002.2950",
    "erin": "+48.8462+002.3372",
}
_LINK = re.compile(r"(http://127\.0\.0\.1:\d+/e/([\w.-]+)\?t=([\w-]+))")
MAIL_SECONDS = 20.0
LIVE_SECONDS = 1.0  # a change made anywhere shows on an open page within this


@dataclass
class Scene:
    herd: WebHerd
    smtp: SmtpProcess
    tokens: dict[str, str]
    dinner: str  # the event most tests use
    hostile: str  # the event with markup in its title
    times: list[str]
    places: list[str]

    def site(self, server: str = "Bailey") -> str:
        assert self.herd.web_ports is not None
        return f"http://127.0.0.1:{self.herd.web_ports[server]}"

    def line(self, user: str, server: str = "Bona") -> Session:
        return Session(self.herd.ports[server], user, self.tokens[user])


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory, places_seed: Path) -> Iterator[Scene]:
    root = tmp_path_factory.mktemp("webbrowser")
    herd = WebHerd(root / "herd", smtp_port=0, seed=places_seed, names=NAMES, links=LINKS)
    taken = set(herd.ports.values())
    spare = [port for port in free_ports(len(taken) + 3) if port not in taken]
    herd.smtp_port = spare[0]
    herd.web_ports = dict(zip(NAMES, spare[1:3], strict=True))
    herd.write_config(herd.config_path, herd.links)
    smtp = SmtpProcess(root / "smtp", herd.smtp_port)
    try:
        herd.start()
        smtp.start()
        herd.wait_answering()
        herd.wait_links()
        with ThreadPoolExecutor(4) as pool:  # `herd user add` is a process each
            made = pool.map(
                lambda user: (user, add_user(herd.config_path, user, f"{user}@example.net")),
                PEOPLE,
            )
            tokens = dict(made)
        scene = Scene(herd, smtp, tokens, "", "", [], [])
        _plan(scene)
        yield scene
    finally:
        try:
            herd.close()
        finally:
            smtp.close()


def _plan(scene: Scene) -> None:
    """alice's dinner (two times, two places, everyone invited, a few votes, positions, a
    comment) and her picnic with markup in its title."""
    for user, position in POSITIONS.items():
        with scene.line(user, "Bailey") as person:
            reply = person.request(f"DEVICE ADD {user}-phone".encode())
            assert reply.startswith(b"USER "), reply
        scene.herd.iamat("Bailey", f"{user}-phone".encode(), position.encode(), now_time())
    with scene.line("alice", "Bailey") as alice:
        dinner = alice.event(f"PLAN {DINNER}")["id"]
        alice.event(f"PROPOSE {dinner} TIME 2031-06-06T18:30Z")
        alice.event(f"PROPOSE {dinner} TIME 2031-06-07T19:00Z")
        alice.event(f"PROPOSE {dinner} PLACE +48.8534+002.3488 Chez Paul")
        event = alice.event(f"PROPOSE {dinner} PLACE +48.8530+002.3390 Le Procope")
        times, places = option_ids(event, "times"), option_ids(event, "places")
        alice.event(f"VOTE {dinner} {times[0]} YES")
        alice.event(f"VOTE {dinner} {places[0]} YES")
        alice.event(f"INVITE {dinner} {' '.join(PEOPLE[1:])}")
        alice.event(f"COMMENT {dinner} The terrace if it is warm; inside otherwise.")
        hostile = alice.event(f"PLAN {HOSTILE}")["id"]
        alice.event(f"PROPOSE {hostile} TIME 2031-07-01T11:00Z")
        alice.event(f"INVITE {hostile} dave erin")
    with scene.line("frank", "Bailey") as frank:
        frank.event(f"VOTE {dinner} {times[1]} MAYBE")
    scene.dinner, scene.hostile, scene.times, scene.places = dinner, hostile, times, places


# --- mails and links --------------------------------------------------------------------------


def _plain(mail: Mail) -> str:
    part = mail.message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def mails_to(scene: Scene, user: str) -> list[Mail]:
    return [mail for mail in scene.smtp.mails() if f"{user}@example.net" in mail.rcpt_to]


def mail_link(scene: Scene, user: str, event_id: str) -> str:
    """The personal link to `event_id` in a mail the sink caught for `user`."""

    def found() -> str | None:
        for mail in mails_to(scene, user):
            match = _LINK.search(_plain(mail))
            if match and match[2] == event_id:
                return match[1]
        return None

    return wait_until(found, MAIL_SECONDS, lambda: f"{user}'s mail with a link to {event_id}")


def open_from_mail(scene: Scene, browser: Browser, user: str, event_id: str) -> None:
    """`user` clicks the link in their mail: the event page, the token gone from the address."""
    browser.open(mail_link(scene, user, event_id))
    assert urllib.parse.urlsplit(browser.url).path == f"/e/{event_id}"
    assert "t=" not in browser.url
    browser.wait_for_text(f"You are {user}.")


def option(option_id: str) -> str:
    """The CSS selector of an option's item (ids have dots: not `#…`)."""
    return f'li[id="option-{option_id}"]'


def tally(browser: Browser, option_id: str) -> tuple[int, int, int]:
    """(yes, maybe, no) as the option's item shows them."""
    counts = shown_tally(browser, option_id)
    assert counts is not None, browser.text_of(option(option_id))
    return counts


def shown_tally(browser: Browser, option_id: str) -> tuple[int, int, int] | None:
    """The tally (the page's `[data-count]` hooks), or None while the page shows none (between
    two documents)."""
    try:
        texts = browser.execute(
            "const item = document.querySelector(arguments[0]); if (!item) { return null; }"
            " return ['yes', 'maybe', 'no'].map(c =>"
            " (item.querySelector('[data-count=' + c + ']') || {}).textContent || '')",
            option(option_id),
        )
    except WebDriverException:
        return None
    if not texts:
        return None
    counts = []
    for text, choice in zip(texts, ("yes", "maybe", "no"), strict=True):
        match = re.fullmatch(rf"(\d+) {choice}", text.strip())
        if match is None:
            return None
        counts.append(int(match[1]))
    return counts[0], counts[1], counts[2]


def vote_button(browser: Browser, option_id: str, choice: str) -> WebElement:
    return browser.by_css(f'{option(option_id)} form.vote button[value="{choice}"]')


def line_event(scene: Scene, event_id: str, server: str = "Bona") -> dict[str, Any]:
    with scene.line("alice", server) as alice:
        return alice.event(f"EVENT {event_id}")


def answer_of(event: dict[str, Any], option_id: str, user: str) -> str | None:
    for kind in ("times", "places"):
        for found in event[kind]:
            if found["id"] == option_id:
                for choice in ("yes", "maybe", "no"):
                    if user in found[choice]:
                        return choice
                return None
    raise AssertionError(f"no option {option_id}")


def mark_window(browser: Browser) -> None:
    """A marker on this document's window: gone if the page is ever reloaded or left."""
    browser.execute("window.__rengaKept = 'kept'")


def window_kept(browser: Browser) -> bool:
    return bool(browser.execute("return window.__rengaKept === 'kept'"))


def live(browser: Browser) -> bool:
    """Whether the page says it follows its stream (its script got the stream's `hello`)."""
    return bool(
        browser.execute(
            "const i = document.getElementById('live-indicator'); return !!i && !i.hidden"
        )
    )


# WCAG 2 contrast of every piece of text on the page against the background it is drawn on:
# [ratio, needed, the text, its colour, the background] for each that falls short (4.5:1, or
# 3:1 for large text).  SVG text is drawn with `fill`, not `color`: left out.
_CONTRAST = """
function rgba(text) {
  const m = text.match(/rgba?\\(([^)]+)\\)/);
  if (!m) { return [0, 0, 0, 1]; }
  const p = m[1].split(",").map(Number);
  return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
}
function over(top, bottom) {
  const a = top[3];
  return [0, 1, 2].map(i => top[i] * a + bottom[i] * (1 - a)).concat([1]);
}
function background(element) {
  const layers = [];
  for (let e = element; e; e = e.parentElement) {
    const c = rgba(getComputedStyle(e).backgroundColor);
    if (c[3] > 0) { layers.push(c); if (c[3] >= 1) { break; } }
  }
  let colour = [255, 255, 255, 1];
  for (let i = layers.length - 1; i >= 0; i--) { colour = over(layers[i], colour); }
  return colour;
}
function luminance(c) {
  const l = c.slice(0, 3).map(v => { v /= 255; return v <= 0.03928 ? v / 12.92
    : Math.pow((v + 0.055) / 1.055, 2.4); });
  return 0.2126 * l[0] + 0.7152 * l[1] + 0.0722 * l[2];
}
const short = [];
for (const e of document.body.querySelectorAll("*")) {
  if (e.closest("svg")) { continue; }
  const own = Array.from(e.childNodes).some(n => n.nodeType === 3 && n.textContent.trim());
  const box = e.getBoundingClientRect();
  if (!own || box.width === 0 || box.height === 0) { continue; }
  const style = getComputedStyle(e);
  if (style.visibility !== "visible" || Number(style.opacity) === 0) { continue; }
  const back = background(e);
  const fore = over(rgba(style.color), back);
  const [a, b] = [luminance(fore), luminance(back)].sort((x, y) => y - x);
  const ratio = (a + 0.05) / (b + 0.05);
  const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
  const needed = size >= 24 || (size >= 18.66 && bold) ? 3 : 4.5;
  if (ratio < needed) {
    short.push([Math.round(ratio * 100) / 100, needed, e.textContent.trim().slice(0, 40),
                style.color, "rgba(" + back.join(",") + ")"]);
  }
}
return short;
"""


def low_contrast(browser: Browser) -> list[list[object]]:
    """The text on the page whose contrast is below WCAG 2's AA level."""
    found = browser.execute(_CONTRAST)
    assert isinstance(found, list)
    return found


def descriptions(browser: Browser, role: str, name: str) -> list[str]:
    """The accessible descriptions of the elements of `role` named `name`, from Chromium's
    accessibility tree (what a screen reader says after the name and the role)."""
    driver = browser.driver
    root = driver.execute_cdp_cmd("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
    nodes = driver.execute_cdp_cmd(
        "Accessibility.queryAXTree", {"nodeId": root, "role": role, "accessibleName": name}
    ).get("nodes", [])
    return [
        str(node.get("description", {}).get("value", ""))
        for node in nodes
        if not node.get("ignored")
    ]


def only_statuses(errors: list[ConsoleEntry], *codes: int) -> None:
    """The console errors are the browser's own note of answers with these status codes (a
    403 page loaded as a page is still logged as a failed load)."""
    for entry in errors:
        assert entry.source == "network", entry
        assert any(f"status of {code}" in entry.message for code in codes), entry


# --- a vote from the mail -----------------------------------------------------------------------


def _vote_through_the_form(scene: Scene, browser: Browser, user: str, *, reload: bool) -> None:
    open_from_mail(scene, browser, user, scene.dinner)
    assert browser.by_role("heading", DINNER).tag_name == "h1"
    target = scene.times[1]
    yes, maybe, no = tally(browser, target)
    assert "Your answer: none yet" in browser.text_of(option(target))
    mark_window(browser)
    vote_button(browser, target, "yes").click()
    browser.wait_until(lambda: shown_tally(browser, target) == (yes + 1, maybe, no), "the tally")
    browser.wait_for_text("Your answer: yes", within=option(target))
    if browser.javascript:  # the page (reloaded or not) follows its stream
        browser.wait_until(lambda: live(browser), "the page following its stream")
    else:
        assert not live(browser)
    if reload:  # a plain form: a new document, which says what happened
        assert not window_kept(browser)
        browser.wait_for_text("Your vote is in.", within="[role=status]")
        assert urllib.parse.urlsplit(browser.url).path == f"/e/{scene.dinner}"
    assert browser.by_css(f'{option(target)} button[value="yes"]').get_attribute(
        "aria-pressed"
    ) == ("true")
    # what the page showed is what the herd holds, at the other server too
    with scene.line("alice", "Bona") as alice:
        alice.wait_event(scene.dinner, lambda e: answer_of(e, target, user) == "yes")


def test_a_link_from_a_mail_opens_the_page_and_a_vote_changes_the_tally(
    scene: Scene, browser: Browser
) -> None:
    _vote_through_the_form(scene, browser, "bob", reload=False)
    [session] = [c for c in browser.cookies() if c["name"] == "renga_session"]
    assert session["httpOnly"] and session["sameSite"] == "Lax"


def test_without_javascript_the_form_posts_and_the_page_reloads(
    scene: Scene, browser_without_js: Browser
) -> None:
    _vote_through_the_form(scene, browser_without_js, "carol", reload=True)


# --- markup shown as text -----------------------------------------------------------------------


def _assert_nothing_ran(browser: Browser) -> None:
    try:
        alert = browser.driver.switch_to.alert
    except NoAlertPresentException:
        pass
    else:
        text = alert.text
        alert.dismiss()
        raise AssertionError(f"an alert: {text!r}")
    assert browser.execute("return window.__pwned === undefined")
    assert browser.execute("return document.querySelectorAll('main script, main img').length") == 0
    assert browser.execute("return document.querySelectorAll('script:not([src])').length") == 0


def test_markup_in_a_title_and_a_comment_is_shown_as_text(scene: Scene, browser: Browser) -> None:
    open_from_mail(scene, browser, "dave", scene.hostile)
    heading = browser.by_role("heading", HOSTILE)
    assert heading.tag_name == "h1"
    assert browser.execute("return arguments[0].children.length", heading) == 0
    assert browser.title.startswith(HOSTILE)
    _assert_nothing_ran(browser)
    browser.fill("Your comment", COMMENT + "\nVOTE x y YES")
    browser.by_role("button", "Post").click()
    browser.wait_until(
        lambda: browser.all_by_css("ol.comments li .text"), "a comment on the page", 10
    )
    [shown] = browser.all_by_css("ol.comments li .text")
    browser.wait_until(lambda: COMMENT in shown.text, "the comment as text", 5)
    assert browser.execute("return arguments[0].children.length", shown) == 0
    assert shown.get_attribute("textContent") == COMMENT + " VOTE x y YES"
    _assert_nothing_ran(browser)
    # one comment, one line: the line break did not make a VOTE
    event = line_event(scene, scene.hostile)
    assert [c["text"] for c in event["comments"]] == [COMMENT + " VOTE x y YES"]


# --- labels, keyboard, headings, a phone ------------------------------------------------------


def test_labels_keyboard_and_headings(scene: Scene, browser: Browser) -> None:
    open_from_mail(scene, browser, "erin", scene.dinner)
    # one h1, the event's title; a heading for each part
    [h1] = browser.all_by_role("heading")[:1]
    assert h1.tag_name == "h1" and h1.accessible_name == DINNER
    assert len(browser.all_by_css("h1")) == 1
    names = [element.accessible_name for element in browser.all_by_role("heading")]
    for part in ("Times", "Places", "Who answered what", "Comments"):
        assert part in names, names
    # every field a person can use has a name a screen reader says
    fields = browser.all_by_css("input:not([type=hidden]), select, textarea, button")
    assert fields
    for element in fields:
        assert element.accessible_name.strip(), element.get_attribute("outerHTML")
    assert browser.by_label("Your comment").tag_name == "textarea"
    assert low_contrast(browser) == []
    # each vote button is named by its choice and described by its option, as a screen
    # reader says it ("Yes, button, Sat 5 Dec 2026 19:00 CET")
    shown = {
        option_id: browser.execute(
            "return document.querySelector(arguments[0] + ' .label span').textContent",
            option(option_id),
        )
        for option_id in (*scene.times, *scene.places)
    }
    assert all(shown.values()), shown
    for choice in ("Yes", "Maybe", "No"):
        assert sorted(descriptions(browser, "button", choice)) == sorted(shown.values()), choice
    # the vote form with the keyboard alone: Tab to "Maybe" on the second place, Enter
    target = scene.places[1]
    button = vote_button(browser, target, "maybe")
    yes, maybe, no = tally(browser, target)
    browser.execute("document.activeElement && document.activeElement.blur()")
    for _ in range(120):
        if browser.press(Keys.TAB) == button:
            break
    else:
        raise AssertionError("Tab never reached the Maybe button of the second place")
    ring = browser.execute(
        "const s = getComputedStyle(arguments[0]); return [s.outlineStyle, s.outlineWidth]", button
    )
    assert ring[0] != "none" and ring[1] != "0px", f"no visible focus on the button: {ring}"
    browser.press(Keys.ENTER)
    browser.wait_until(lambda: shown_tally(browser, target) == (yes, maybe + 1, no), "the tally")
    browser.wait_for_text("Your answer: maybe", within=option(target))


def test_the_event_page_on_a_phone_and_a_desktop(scene: Scene, browser: Browser) -> None:
    """Screenshots at both widths (artifacts); on a phone nothing is wider than the screen."""
    open_from_mail(scene, browser, "bob", scene.dinner)
    browser.wait_until(lambda: live(browser), "the page following its stream")
    browser.phone()
    width = browser.execute("return document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide on a 390 px phone"
    small = browser.execute(
        "return Array.from(document.querySelectorAll('button'))"
        ".filter(b => b.getBoundingClientRect().height < 44).map(b => b.textContent)"
    )
    assert small == [], f"buttons under 44 px high on a phone: {small}"
    assert low_contrast(browser) == []
    shots = browser.screenshots()
    assert [shot.name.rsplit("-", 1)[1] for shot in shots] == ["390.png", "1280.png"]
    for shot in shots:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- links that open nothing, forms from other sites -----------------------------------------


def test_forged_and_expired_links_show_the_denial_page(scene: Scene, browser: Browser) -> None:
    genuine = mail_link(scene, "frank", scene.dinner)
    token = urllib.parse.parse_qs(urllib.parse.urlsplit(genuine).query)["t"][0]
    forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    expired = link_token(SECRET.encode(), "frank", scene.dinner, int(time.time()) - 1, 0)
    other_event = link_token(SECRET.encode(), "frank", scene.hostile, 2**40, 0)
    for bad in (forged, expired, other_event):
        browser.open(f"{scene.site('Bona')}/e/{scene.dinner}?t={bad}")
        assert browser.by_role("heading", "Not available").tag_name == "h1"
        text = browser.text
        for secret in (DINNER, "Chez Paul", "alice", "Your comment"):
            assert secret not in text
        assert browser.all_by_css("form") == []
        assert browser.cookies() == []
    only_statuses(browser.take_console_errors(), 403)


class _OtherSite(BaseHTTPRequestHandler):
    page = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def other_site(page: str) -> Iterator[int]:
    """A site of another origin (http.server, in a thread), serving `page` at every path."""
    handler = type("OtherSite", (_OtherSite,), {"page": page.encode()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_form_on_another_site_does_not_change_the_vote(scene: Scene, browser: Browser) -> None:
    """The strongest forger: a page that even holds frank's genuine CSRF token, posting with
    frank's browser, from another site (`localhost`: the session cookie is not even sent) and
    from another origin of the same site (`127.0.0.1`, another port: the cookie is sent, the
    Origin is refused)."""
    open_from_mail(scene, browser, "frank", scene.dinner)
    csrf = browser.by_css(f'{option(scene.times[0])} input[name="csrf"]').get_attribute("value")
    before = answer_of(line_event(scene, scene.dinner), scene.times[0], "frank")
    assert before != "no"
    action = f"{scene.site()}/e/{scene.dinner}/vote"
    page = (
        "<!DOCTYPE html><title>Win a prize</title>"
        f'<form method="post" action="{html.escape(action)}">'
        f'<input type="hidden" name="csrf" value="{html.escape(csrf or "")}">'
        f'<input type="hidden" name="option" value="{scene.times[0]}">'
        '<input type="hidden" name="choice" value="no"></form>'
        "<script>document.forms[0].submit()</script>"
    )
    with other_site(page) as port:
        for origin in (f"http://localhost:{port}", f"http://127.0.0.1:{port}"):
            browser.open(f"{origin}/prize")
            browser.wait_until(
                lambda: urllib.parse.urlsplit(browser.url).path.endswith("/vote"),
                "the forged form posted",
            )
            browser.wait_for_text("This form was sent from another site: refused.")
            assert DINNER not in browser.text
    only_statuses(browser.take_console_errors(), 403)
    # at Bailey, where the forms went: a vote it took would be there before its answer
    assert answer_of(line_event(scene, scene.dinner, "Bailey"), scene.times[0], "frank") == before
    # frank's own page still works and shows his answer unchanged
    browser.open(f"{scene.site()}/e/{scene.dinner}")
    browser.wait_for_text(f"Your answer: {before or 'none yet'}", within=option(scene.times[0]))


# --- the live stream ----------------------------------------------------------------------------


def comments_saying(browser: Browser, text: str) -> int:
    """How many comments on the page say `text` (rendered or not)."""
    return int(
        browser.execute(
            "return Array.from(document.querySelectorAll('ol.comments li .text'))"
            ".filter(e => e.textContent === arguments[0]).length",
            text,
        )
    )


def test_a_vote_elsewhere_shows_live_and_the_page_catches_up_after_a_restart(
    scene: Scene, browser: Browser
) -> None:
    """gina's page on Bailey; alice acts over the line at Bona.  No reload all along: the
    marker set on the page's window at the start is still there at the end."""
    open_from_mail(scene, browser, "gina", scene.dinner)
    mark_window(browser)
    target = scene.places[1]
    yes, maybe, no = tally(browser, target)
    browser.wait_until(lambda: live(browser), "the page's stream open")
    with scene.line("alice", "Bona") as alice:
        alice.event(f"VOTE {scene.dinner} {target} YES")
        voted = time.monotonic()
    browser.wait_until(
        lambda: shown_tally(browser, target) == (yes + 1, maybe, no), "the live tally", 5
    )
    took = time.monotonic() - voted
    print(f"a vote at Bona showed on the page at Bailey after {took:.3f} s")
    assert took < LIVE_SECONDS, f"the vote showed {took:.2f} s after it was cast"
    assert window_kept(browser), "the page was reloaded"
    # the frame has no names: who said what and the grid are the page's own, from the vote
    said = browser.execute(
        "const item = document.querySelector(arguments[0]);"
        ' const row = document.querySelector(\'tr[data-user="alice"] td[data-option="\''
        " + arguments[1] + '\"]');"
        " return [item.querySelector('.who').textContent, row ? row.textContent : null]",
        option(target),
        target,
    )
    assert said[1] == "yes", said
    assert "alice" in said[0].split(". Maybe:")[0], said
    # a live comment with markup is text too
    said = "Live from Bona <img src=x onerror=\"window.__pwned='live'\"><b>bold</b>"
    with scene.line("alice", "Bona") as alice:
        alice.event(f"COMMENT {scene.dinner} {said}")
    browser.wait_until(lambda: comments_saying(browser, said) == 1, "the live comment", 5)
    _assert_nothing_ran(browser)
    assert browser.execute("return document.querySelectorAll('ol.comments b').length") == 0
    # the page's own server stops; changes go on elsewhere; it comes back
    assert scene.herd.terminate("Bailey") == 0
    browser.wait_until(lambda: not live(browser), "the page noticing its stream dropped")
    missed = "Said while Bailey was down"
    try:
        with scene.line("alice", "Bona") as alice:
            alice.event(f"COMMENT {scene.dinner} {missed}")
            alice.event(f"VOTE {scene.dinner} {target} NO")
        assert comments_saying(browser, missed) == 0
    finally:
        scene.herd.start("Bailey")
        scene.herd.wait_answering("Bailey")
        restarted = time.monotonic()
        scene.herd.wait_links()
    browser.wait_until(lambda: comments_saying(browser, missed) == 1, "the missed comment", 15)
    browser.wait_until(
        lambda: shown_tally(browser, target) == (yes, maybe, no + 1), "the missed vote"
    )
    print(f"the page caught up {time.monotonic() - restarted:.3f} s after Bailey answered")
    assert live(browser)
    assert stays_false(lambda: comments_saying(browser, missed) != 1, 1.0), "shown twice"
    assert comments_saying(browser, said) == 1, "an earlier change shown again"
    assert window_kept(browser), "the page was reloaded"
    # the dropped stream is the browser's own note of a failed request: nothing else
    for entry in browser.take_console_errors():
        assert "/stream" in entry.message, entry


# --- mails: one-click unsubscribe, preferences --------------------------------------------------


def list_unsubscribe(mail: Mail) -> str:
    """The web URL of a mail's `List-Unsubscribe`; RFC 8058's one-click header is there exactly
    when a listed URL is https (§3.1: never for an http page, as these test servers are)."""
    header = str(mail.message["List-Unsubscribe"] or "")
    urls = [str(url) for url in re.findall(r"<([^>]+)>", header)]
    web = [url for url in urls if url.startswith(("http://", "https://"))]
    assert web, f"no web URL in List-Unsubscribe: {header!r}"
    one_click = mail.message["List-Unsubscribe-Post"]
    if any(url.startswith("https://") for url in urls):
        assert str(one_click) == "List-Unsubscribe=One-Click"
    else:
        assert one_click is None, one_click
    return web[0]


def user_at(scene: Scene, user: str, server: str) -> dict[str, Any]:
    """`user` as the line protocol at `server` shows them (USER)."""
    with scene.line(user, server) as person:
        reply = person.request(b"USER")
    assert reply.startswith(b"USER "), reply
    document = json.loads(reply[5:])
    assert isinstance(document, dict)
    return document


def test_one_click_unsubscribe_from_a_mail_stops_the_mails(scene: Scene) -> None:
    """hal unsubscribes with his invitation's header (a POST from the test, as a mail provider
    sends it: not a browser's doing); the next invitation reaches frank, not hal."""
    mails = wait_until(
        lambda: [m for m in mails_to(scene, "hal") if m.message["List-Unsubscribe"]],
        MAIL_SECONDS,
        "hal's mail with a List-Unsubscribe",
    )
    url = list_unsubscribe(mails[0])
    assert url.startswith((f"{scene.site()}/unsubscribe?", f"{scene.site('Bona')}/unsubscribe?"))
    assert "email" in user_at(scene, "hal", "Bona")["channels"]
    # RFC 8058: a POST of that one field, no cookie, no Origin, no CSRF token
    request = urllib.request.Request(
        url,
        data=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
    wait_until(
        lambda: "email" not in user_at(scene, "hal", "Bona")["channels"],
        5.0,
        "hal's email channel off at Bona",
    )
    before = len(mails_to(scene, "hal"))
    # the next change that mails at once: an invitation to hal and frank
    with scene.line("alice", "Bailey") as alice:
        lunch = alice.event("PLAN Lunch after unsubscribing")["id"]
        alice.event(f"PROPOSE {lunch} TIME 2031-06-10T12:00Z")
        alice.event(f"INVITE {lunch} hal frank")
    mail_link(scene, "frank", lunch)  # frank's came
    assert stays_false(lambda: len(mails_to(scene, "hal")) > before, 2.0), "hal got a mail"


def prefs_link(scene: Scene, user: str) -> str:
    """The link to the settings page in a mail the sink caught for `user`."""

    def found() -> str | None:
        for mail in mails_to(scene, user):
            match = re.search(r"http://127\.0\.0\.1:\d+/prefs\?t=[\w-]+", _plain(mail))
            if match:
                return match[0]
        return None

    return wait_until(found, MAIL_SECONDS, lambda: f"{user}'s mail with a settings link")


def test_the_settings_page_from_a_mail_changes_a_setting(
    scene: Scene, browser_without_js: Browser
) -> None:
    """gina opens the settings link in her mail (scripts off: a plain form), sets her digest
    off, her digest time in the browser's own time control and her time zone; the line
    protocol at the other server shows all three."""
    page = browser_without_js
    page.open(prefs_link(scene, "gina"))
    assert urllib.parse.urlsplit(page.url).path == "/prefs" and "t=" not in page.url
    assert page.by_role("heading", "Your settings").tag_name == "h1"
    assert len(page.all_by_css("h1")) == 1
    assert low_contrast(page) == []
    for element in page.all_by_css("input:not([type=hidden]), select, textarea, button"):
        assert element.accessible_name.strip(), element.get_attribute("outerHTML")
    digest_at = page.by_label("Digest time")  # the browser's own time control, empty: usual
    assert (digest_at.get_attribute("type"), digest_at.get_attribute("value")) == ("time", "")
    before = user_at(scene, "gina", "Bona")
    assert before["digest"] != "off" and before["tz"] != "Asia/Tokyo"
    page.check("Off: every notice on its own")
    page.fill("Time zone", "Asia/Tokyo")
    page.by_label("Digest time").send_keys("0730P")  # as typed into Chromium's en-US control
    page.submit("Save")
    page.wait_for_text("Saved:", within="[role=status]")
    wait_until(
        lambda: (
            (user := user_at(scene, "gina", "Bona"))["digest"] == "off"
            and user["tz"] == "Asia/Tokyo"
        ),
        5.0,
        "gina's digest off and zone Asia/Tokyo at Bona",
    )
    assert page.by_label("Off: every notice on its own").is_selected()
    assert page.by_label("Time zone").get_attribute("value") == "Asia/Tokyo"
    assert user_at(scene, "gina", "Bona")["channels"] == before["channels"]
    assert user_at(scene, "gina", "Bona")["digest_at"] == "19:30"


def test_my_events_from_the_settings_link_updates_live(scene: Scene, browser: Browser) -> None:
    """erin opens the settings link in her mail, goes to "My events" (her dinner and her
    picnic, each with its link) and keeps it open on Bailey; hal, who had not answered the
    dinner, votes over the line at Bona: erin's row of the dinner counts him within a second,
    without a reload.  The row's link opens the dinner's page."""
    browser.open(prefs_link(scene, "erin"))
    browser.click_link("My events")
    browser.wait_until(lambda: urllib.parse.urlsplit(browser.url).path == "/u", "the /u page")
    assert browser.by_role("heading", "Your events").tag_name == "h1"
    assert len(browser.all_by_css("h1")) == 1
    assert browser.by_role("link", DINNER) and browser.by_role("link", HOSTILE)
    assert low_contrast(browser) == []
    row = f'li[id="event-{scene.dinner}"] [data-field="answered"]'
    browser.wait_until(lambda: live(browser), "the page following /u/stream")
    mark_window(browser)
    event = line_event(scene, scene.dinner)
    assert all(answer_of(event, o, "hal") is None for o in (*scene.times, *scene.places))
    answered, people = map(int, re.findall(r"\d+", browser.text_of(row)))
    with scene.line("hal", "Bona") as hal:
        hal.event(f"VOTE {scene.dinner} {scene.times[0]} YES")
        voted = time.monotonic()
    browser.wait_until(
        lambda: browser.text_of(row) == f"{answered + 1} of {people} answered", "the live row", 5
    )
    took = time.monotonic() - voted
    print(f"a vote at Bona showed on /u at Bailey after {took:.3f} s")
    assert took < LIVE_SECONDS, f"the vote showed {took:.2f} s after it was cast"
    assert window_kept(browser), "the page was reloaded"
    browser.click_link(DINNER)
    browser.wait_for_text("You are erin.")
    assert urllib.parse.urlsplit(browser.url).path == f"/e/{scene.dinner}"
    assert "t=" not in browser.url
    assert browser.take_console_errors() == []


# --- revoking, last: dave's links stop working ---------------------------------------------------


def test_revoking_from_the_page_ends_every_link_and_open_page(
    scene: Scene, browser: Browser
) -> None:
    """dave has the dinner open in one window and revokes his links from the picnic's page in
    another: the dinner's open page loses its stream, and the links in his mails open nothing
    at either server."""
    dinner_link = mail_link(scene, "dave", scene.dinner)
    picnic_link = mail_link(scene, "dave", scene.hostile)
    open_from_mail(scene, browser, "dave", scene.dinner)
    browser.wait_until(lambda: live(browser), "the dinner page following its stream")
    dinner_window = browser.driver.current_window_handle
    browser.driver.switch_to.new_window("tab")
    try:
        open_from_mail(scene, browser, "dave", scene.hostile)
        browser.submit("Revoke my links")
        assert browser.by_role("heading", "Links revoked").tag_name == "h1"
        browser.wait_for_text("no longer open anything", within="main")
    finally:
        browser.driver.close()
        browser.driver.switch_to.window(dinner_window)
    browser.wait_until(lambda: not live(browser), "the dinner page's stream ended", 10)
    # the server ended the stream properly and the page says why (and stops following it)
    browser.wait_for_text("no longer updates itself", within="#live-ended")
    assert not live(browser)
    for link in (dinner_link, picnic_link):
        for site in (scene.site("Bailey"), scene.site("Bona")):
            parts = urllib.parse.urlsplit(link)
            browser.open(f"{site}{parts.path}?{parts.query}")
            assert browser.by_role("heading", "Not available").tag_name == "h1"
            assert DINNER not in browser.text and "Picnic" not in browser.text
    browser.open(f"{scene.site('Bona')}/e/{scene.dinner}")
    assert browser.by_role("heading", "Not available").tag_name == "h1"
    # the denial pages (403) and nothing else: no incomplete response from the ended stream
    only_statuses(browser.take_console_errors(), 403)
