"""One-click unsubscribe and the preferences page end to end, against real `herd run`
processes with `[web]` and the mail sink (plain HTTP clients).

Each server's site has an https `web_base_url` (as behind a TLS proxy: the tests reach the
plain HTTP port under it), so its mails carry RFC 8058's one-click headers.  A mail's
`List-Unsubscribe` names the sending server's page and the mailto; a GET of it and forged
tokens change nothing; a one-click POST from another site, with no cookie, stops the mails to
that user and no one else's; the settings link at the foot of a mail opens the preferences
page, whose changes show in `WHOAMI` on the other server; cross-site posts are refused;
revoking the links ends the page; no token reaches a log.  A one-server herd on a plain http
site lists its page without the one-click header.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import pytest

from herd.tokens import unsubscribe_token
from tests.support.herd import SECRET
from tests.support.lines import Session
from tests.support.polling import wait_until
from tests.support.ports import free_ports
from tests.support.smtp import Mail, SmtpProcess
from tests.support.users import add_user

from .notify_harness import outbox_rows
from .test_web import Browser, WebHerd

NAMES = ("Bailey", "Bona")
LINKS = (("Bailey", "Bona"),)
USERS = ("alice", "bob", "carol", "dave")
_SITE = re.compile(r"https://(bailey|bona)\.renga\.test")
_PREFS = re.compile(
    r"Your settings \(channels, quiet hours, digest\): (https://\S+/prefs\?t=([\w-]+))"
)


def site_of(name: str) -> str:
    return f"https://{name.lower()}.renga.test"


class HttpsWebHerd(WebHerd):
    """Each server's site under an https base URL of its own."""

    def write_config(self, path: Path, links: object) -> Path:
        super().write_config(path, links)
        if self.web_ports is None:
            return path
        text = path.read_text()
        for name, port in self.web_ports.items():
            line = f"web_port = {port}\n"
            text = text.replace(line, f'{line}web_base_url = "{site_of(name)}"\n')
        path.write_text(text)
        return path


@dataclass
class Scene:
    herd: HttpsWebHerd
    smtp: SmtpProcess
    tokens: dict[str, str]
    event_id: str
    seen_tokens: set[str] = field(default_factory=set)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory, places_seed: Path) -> Iterator[Scene]:
    root = tmp_path_factory.mktemp("webprefs")
    herd = HttpsWebHerd(root / "herd", smtp_port=0, seed=places_seed, names=NAMES, links=LINKS)
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
        tokens = {user: add_user(herd.config_path, user, f"{user}@example.net") for user in USERS}
        with Session(herd.ports["Bailey"], "alice", tokens["alice"]) as alice:
            event_id = alice.event("PLAN Dinner")["id"]
            alice.event(f"INVITE {event_id} bob carol dave")
        yield Scene(herd, smtp, tokens, event_id)
    finally:
        try:
            herd.close()
        finally:
            smtp.close()


# --- helpers -----------------------------------------------------------------------------------


def mails_to(scene: Scene, user: str, subject: str) -> list[Mail]:
    return [
        mail
        for mail in scene.smtp.mails()
        if f"{user}@example.net" in mail.rcpt_to and subject in str(mail.message["Subject"])
    ]


def wait_mail(scene: Scene, user: str, subject: str) -> Mail:
    def found() -> Mail | None:
        mails = mails_to(scene, user, subject)
        return mails[0] if mails else None

    return wait_until(found, 15.0, lambda: f"{user}'s mail about {subject!r}")


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def browser_for(scene: Scene, url: str) -> tuple[Browser, str, str]:
    """(a browser on the server the URL's site names, the path with its query, the origin)."""
    parts = urllib.parse.urlsplit(url)
    match = _SITE.fullmatch(f"{parts.scheme}://{parts.netloc}")
    assert match is not None, url
    name = {"bailey": "Bailey", "bona": "Bona"}[match[1]]
    return Browser(scene.herd.web_ports[name]), f"{parts.path}?{parts.query}", site_of(name)


def unsubscribe_links(mail: Mail) -> tuple[str, str]:
    """The https page and the mailto of a mail's `List-Unsubscribe`, in that order."""
    header = str(mail.message["List-Unsubscribe"])
    links = re.findall(r"<([^>]+)>", header)
    assert len(links) == 2, header
    return links[0], links[1]


def whoami(scene: Scene, server: str, user: str) -> dict[str, object]:
    with Session(scene.herd.ports[server], user, scene.tokens[user]) as session:
        reply = session.request(b"WHOAMI")
    assert reply.startswith(b"USER "), reply
    found: dict[str, object] = json.loads(reply[5:])
    return found


def one_click(browser: Browser, path: str, multipart: bool = True) -> tuple[int, str]:
    """The POST a mail provider sends (RFC 8058 §3.2): the URL as the header gives it, the body
    `List-Unsubscribe=One-Click` (multipart/form-data, as the RFC prefers), from another site,
    no cookie."""
    if multipart:
        boundary = "renga-test-boundary"
        body = (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="List-Unsubscribe"\r\n\r\n'
            f"One-Click\r\n--{boundary}--\r\n"
        ).encode()
        kind = f"multipart/form-data; boundary={boundary}"
    else:
        body, kind = b"List-Unsubscribe=One-Click", "application/x-www-form-urlencoded"
    assert not browser.cookies
    status, _, page = browser.request(
        "POST",
        path,
        body,
        {
            "Content-Type": kind,
            "Origin": "https://mail.example.com",
            "Sec-Fetch-Site": "cross-site",
        },
    )
    return status, page


def prefs_form(page: str) -> dict[str, list[str]]:
    """The settings form as the page would send it unchanged (hidden fields, ticked boxes,
    checked radios, text fields), read from the page."""
    form_html = page.split('<form method="post" action="/prefs" class="prefs">', 1)[1]
    form_html = form_html.split("</form>", 1)[0]
    form: dict[str, list[str]] = {}
    for tag in re.findall(r"<input [^>]*>", form_html):
        attrs = dict(re.findall(r'(\w[\w-]*)(?:="([^"]*)")?', tag[7:-1]))
        kind = attrs.get("type", "text")
        if kind in ("checkbox", "radio") and "checked" not in attrs:
            continue
        form.setdefault(attrs["name"], []).append(attrs.get("value", ""))
    return form


def post_form(
    browser: Browser, path: str, form: dict[str, list[str]], origin: str | None
) -> tuple[int, dict[str, str], str]:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if origin is not None:
        headers["Origin"] = origin
    body = urllib.parse.urlencode(form, doseq=True).encode()
    return browser.request("POST", path, body, headers)


def open_prefs(scene: Scene, user: str) -> tuple[Browser, str, str]:
    """`user` opens the settings link of their invitation: (browser, origin, the page)."""
    mail = wait_mail(scene, user, "invited you")
    match = _PREFS.search(text_of(mail.message))
    assert match is not None, text_of(mail.message)
    browser, path, origin = browser_for(scene, match[1])
    scene.seen_tokens.add(match[2])
    status, headers, _ = browser.get(path)
    assert status == 303 and headers["location"] == "/prefs", (status, headers)
    cookie = headers["set-cookie"]
    for flag in ("Path=/prefs", "HttpOnly", "SameSite=Lax", "Secure"):
        assert flag in cookie, cookie
    scene.seen_tokens.add(browser.cookies["renga_session"])
    status, _, page = browser.get("/prefs")
    assert status == 200, page
    return browser, origin, page


# --- the tests ---------------------------------------------------------------------------------


def test_a_mail_offers_one_click_unsubscribe_at_its_servers_site(scene: Scene) -> None:
    mail = wait_mail(scene, "bob", "invited you")
    page, mailto = unsubscribe_links(mail)
    token = unsubscribe_token(SECRET.encode(), "bob")
    scene.seen_tokens.add(token)
    parts = urllib.parse.urlsplit(page)
    assert f"{parts.scheme}://{parts.netloc}" in (site_of(name) for name in NAMES)
    assert (parts.path, parts.query) == ("/unsubscribe", f"u=bob&t={token}")
    assert mailto.startswith("mailto:") and token in mailto
    assert mail.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text = text_of(mail.message)
    assert f"Stop these emails: {page}" in text
    assert _PREFS.search(text) is not None


def test_opening_the_unsubscribe_link_or_forging_it_changes_nothing(scene: Scene) -> None:
    page_url, _ = unsubscribe_links(wait_mail(scene, "bob", "invited you"))
    browser, path, _ = browser_for(scene, page_url)
    status, _, page = browser.get(path)
    assert status == 200 and '<form method="post">' in page and "Stop the emails" in page
    assert 'name="List-Unsubscribe" value="One-Click"' in page
    carol_token = unsubscribe_token(SECRET.encode(), "carol")
    token = path.rsplit("t=", 1)[1]
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    for bad in (
        f"/unsubscribe?u=bob&t={forged}",
        f"/unsubscribe?u=bob&t={carol_token}",  # carol's token is not bob's
        f"/unsubscribe?u=carol&t={token}",
        f"/unsubscribe?u=nobody&t={token}",
        "/unsubscribe?u=bob",
        "/unsubscribe",
    ):
        assert browser.get(bad)[0] == 403
        status, _ = one_click(browser, bad)
        assert status == 403, bad
    # the right URL without the one-click body
    status, _, _ = browser.request("POST", path, b"")
    assert status == 400
    for server in NAMES:
        assert "email" in whoami(scene, server, "bob")["channels"]  # type: ignore[operator]
        assert "email" in whoami(scene, server, "carol")["channels"]  # type: ignore[operator]


def test_a_one_click_post_stops_mails_to_that_user_only(scene: Scene) -> None:
    page_url, _ = unsubscribe_links(wait_mail(scene, "bob", "invited you"))
    browser, path, _ = browser_for(scene, page_url)
    status, page = one_click(browser, path)
    assert status == 200 and "Renga sends no more emails to bob" in page
    assert not browser.cookies  # nothing set, nothing needed
    # again (a provider may retry), urlencoded this time: the same answer
    assert one_click(browser, path, multipart=False)[0] == 200

    def email_off_at(server: str) -> bool:
        return "email" not in whoami(scene, server, "bob")["channels"]  # type: ignore[operator]

    for server in NAMES:
        wait_until(lambda s=server: email_off_at(s), 10.0, f"bob's email off at {server}")
    bob = whoami(scene, "Bona", "bob")
    assert bob["channels"] == ["line", "xmpp"]
    assert whoami(scene, "Bona", "carol")["channels"] == ["email", "line", "xmpp"]
    # a new invitation: carol gets hers, bob none
    with Session(scene.herd.ports["Bona"], "alice", scene.tokens["alice"]) as alice:
        second = alice.event("PLAN Lunch")["id"]
        alice.event(f"INVITE {second} bob carol")
    wait_mail(scene, "carol", "invited you to Lunch")
    time.sleep(2.0)  # bob's would have come with carol's: both are sent at once
    assert mails_to(scene, "bob", "invited you to Lunch") == []
    rows = [row for name in NAMES for row in outbox_rows(scene.herd.database(name))]
    lunch = {row.recipient for row in rows if "Lunch" in row.subject and row.channel == "email"}
    assert lunch == {"carol@example.net"}  # nor is bob's waiting in an outbox


def test_the_prefs_link_opens_the_page_and_a_change_shows_on_the_other_server(
    scene: Scene,
) -> None:
    browser, origin, page = open_prefs(scene, "dave")
    assert "For dave" in page
    form = prefs_form(page)
    assert form["channels"] == ["", "email", "xmpp", "line"]
    assert form["digest"] == ["daily"] and form["quiet_from"] == [""]
    form.update(
        channels=["", "email", "line"],
        digest=["weekly"],
        quiet_from=["22:00"],
        quiet_to=["07:30"],
        tz=["Europe/Paris"],
    )
    status, headers, _ = post_form(browser, "/prefs", form, origin)
    assert status == 303 and headers["location"] == "/prefs"
    status, _, page = browser.get("/prefs")
    assert status == 200
    assert "Saved: channels, digest, quiet hours, time zone." in page
    assert 'value="22:00"' in page and 'value="Europe/Paris"' in page
    other = "Bona" if origin == site_of("Bailey") else "Bailey"

    def changed_at_other() -> dict[str, object] | None:
        dave = whoami(scene, other, "dave")
        return dave if dave["quiet"] == "22:00-07:30" and dave["tz"] == "Europe/Paris" else None

    dave = wait_until(changed_at_other, 10.0, f"dave's new settings at {other}")
    assert dave["channels"] == ["email", "line"] and dave["digest"] == "weekly"
    assert dave["email"] == "dave@example.net"
    # a value the line protocol refuses: its words on the page, nothing else changed
    form = prefs_form(page)
    form.update(tz=["Mars/Olympus"], digest=["off"])
    status, _, _ = post_form(browser, "/prefs", form, origin)
    assert status == 303
    page = browser.get("/prefs")[2]
    assert (
        "Not saved: the time zone: Mars/Olympus is not a time zone like Europe/Paris. "
        "Saved before it: digest." in page
    )
    assert whoami(scene, other, "dave")["tz"] == "Europe/Paris"
    # a value the page itself refuses: nothing runs
    form = prefs_form(browser.get("/prefs")[2])
    form.update(quiet_from=["22:00"], quiet_to=[""], digest=["daily"])
    post_form(browser, "/prefs", form, origin)
    page = browser.get("/prefs")[2]
    assert "Not saved: give the quiet hours a start and an end, or leave both empty." in page
    assert whoami(scene, other, "dave")["digest"] == "off"


def test_a_cross_site_post_to_prefs_is_refused(scene: Scene) -> None:
    browser, origin, page = open_prefs(scene, "dave")
    form = prefs_form(page)
    form.update(quiet_from=["01:00"], quiet_to=["02:00"])
    status, _, page = post_form(browser, "/prefs", form, "https://evil.example")
    assert status == 403 and "another site" in page
    status, _, _ = browser.request(
        "POST",
        "/prefs",
        urllib.parse.urlencode(form, doseq=True).encode(),
        {"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "cross-site"},
    )
    assert status == 403
    assert post_form(browser, "/prefs", {**form, "csrf": ["wrong"]}, origin)[0] == 403
    no_csrf = {k: v for k, v in form.items() if k != "csrf"}
    assert post_form(browser, "/prefs", no_csrf, origin)[0] == 403
    assert post_form(Browser(browser.port), "/prefs", form, origin)[0] == 403  # no session
    assert post_form(browser, "/prefs/revoke", {"csrf": ["wrong"]}, origin)[0] == 403
    for server in NAMES:
        assert whoami(scene, server, "dave")["quiet"] == "22:00-07:30"


def test_the_page_sets_the_digest_time_and_says_what_is_wrong_with_a_bad_one(
    scene: Scene,
) -> None:
    browser, origin, page = open_prefs(scene, "carol")
    form = prefs_form(page)
    assert form["digest_at"] == [""]  # none of her own: the herd's hour
    assert '<input type="time" id="digest-at" name="digest_at" value=""' in page
    assert '<label for="digest-at">Digest time</label>' in page
    assert "Empty: the usual hour, 08:00." in page
    form.update(digest_at=["19:30"])
    status, headers, _ = post_form(browser, "/prefs", form, origin)
    assert status == 303 and headers["location"] == "/prefs"
    page = browser.get("/prefs")[2]
    assert "Saved: digest time." in page and 'name="digest_at" value="19:30"' in page

    def set_everywhere(value: str | None) -> bool:
        return all(whoami(scene, name, "carol")["digest_at"] == value for name in NAMES)

    wait_until(lambda: set_everywhere("19:30"), 10.0, "carol's digest time on every server")
    # what a browser without a time control lets a person type: refused, nothing runs
    form = prefs_form(page)
    form.update(digest_at=["7pm"], digest=["weekly"])
    post_form(browser, "/prefs", form, origin)
    page = browser.get("/prefs")[2]
    assert "Not saved: the digest time is a time like 19:30 (or empty for the usual hour)." in page
    assert whoami(scene, "Bailey", "carol")["digest"] == "daily"
    # emptied: back to the herd's hour
    form = prefs_form(page)
    form.update(digest_at=[""])
    post_form(browser, "/prefs", form, origin)
    assert "Saved: digest time." in browser.get("/prefs")[2]
    wait_until(lambda: set_everywhere(None), 10.0, "carol's digest time unset on every server")


def test_revoking_all_links_from_the_page_ends_them(scene: Scene) -> None:
    browser, origin, page = open_prefs(scene, "dave")
    mail = wait_mail(scene, "dave", "invited you")
    prefs_path = browser_for(scene, _PREFS.search(text_of(mail.message))[1])[1]  # type: ignore[index]
    csrf = prefs_form(page)["csrf"]
    status, headers, _ = post_form(browser, "/prefs/revoke", {"csrf": csrf}, origin)
    assert status == 303 and headers["location"] == "/prefs/revoked"
    assert "renga_session" not in browser.cookies
    status, _, page = browser.get("/prefs/revoked")
    assert status == 200 and "Links revoked" in page
    with Session(scene.herd.ports["Bona"], "dave", scene.tokens["dave"]) as dave:
        wait_until(
            lambda: json.loads(dave.request(b"LINKS")[6:])["generation"] == 1,
            10.0,
            "dave's link generation 1 at Bona",
        )
    for name in NAMES:
        status, _, page = Browser(scene.herd.web_ports[name]).get(prefs_path)
        assert status == 403 and "dave" not in page


def test_an_http_site_lists_its_page_without_claiming_one_click(
    tmp_path: Path, places_seed: Path
) -> None:
    """A herd whose site is plain http (as `herd up` gives on loopback): its mails list the
    http page and the mailto, and no `List-Unsubscribe-Post` (RFC 8058 §3.1 asks for an https
    URI); the page itself works the same for a person who opens it."""
    herd = WebHerd(tmp_path / "herd", smtp_port=0, seed=places_seed, names=("Bailey",), links=())
    spare = [port for port in free_ports(3) if port not in herd.ports.values()]
    herd.smtp_port, herd.web_ports = spare[0], {"Bailey": spare[1]}
    herd.write_config(herd.config_path, herd.links)
    smtp = SmtpProcess(tmp_path / "smtp", herd.smtp_port)
    try:
        herd.start()
        smtp.start()
        herd.wait_answering()
        tokens = {
            user: add_user(herd.config_path, user, f"{user}@example.net") for user in ("ann", "ben")
        }
        with Session(herd.ports["Bailey"], "ann", tokens["ann"]) as ann:
            event_id = ann.event("PLAN Tea")["id"]
            ann.event(f"INVITE {event_id} ben")

        def invitation() -> Mail | None:
            return next(iter(smtp.mails()), None)

        mail = wait_until(invitation, 15.0, "ben's invitation")
        token = unsubscribe_token(SECRET.encode(), "ben")
        page = f"http://127.0.0.1:{spare[1]}/unsubscribe?u=ben&t={token}"
        header = str(mail.message["List-Unsubscribe"])
        assert header.startswith(f"<{page}>, <mailto:") and token in header.split(",")[1]
        assert mail.message["List-Unsubscribe-Post"] is None
        browser = Browser(spare[1])
        status, _ = one_click(browser, f"/unsubscribe?u=ben&t={token}")
        assert status == 200
        with Session(herd.ports["Bailey"], "ben", tokens["ben"]) as ben:
            assert b'"channels":["line","xmpp"]' in ben.request(b"WHOAMI")
    finally:
        try:
            herd.close()
        finally:
            smtp.close()


def test_no_token_reaches_a_log(scene: Scene) -> None:
    """Last in the module: every token the tests used, looked for in every log."""
    assert len(scene.seen_tokens) >= 3
    time.sleep(1.5)  # the logs are written in batches
    for name in NAMES:
        log = scene.herd.log_path(name).read_text(errors="replace")
        for token in scene.seen_tokens:
            assert token not in log, (name, token)
        stderr = scene.herd.stderr_path(name).read_text(errors="replace")
        for token in scene.seen_tokens:
            assert token not in stderr, (name, token)
    logs = "".join(scene.herd.log_path(name).read_text(errors="replace") for name in NAMES)
    assert "POST /unsubscribe?u=...&t=... 200" in logs
    assert "OPTOUT bob <redacted>" in logs
