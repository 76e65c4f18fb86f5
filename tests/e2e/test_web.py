"""The web end to end, against real `herd run` processes with `[web]` (plain HTTP clients: the
browser tests are tests/e2e/test_web_browser.py).

One herd of two linked servers and a mail sink for the module: a personal link from a mail the
sink caught opens the event page; a vote through the page's form shows on the other server's
page; forged, expired, revoked and other-event links get the same 403 with nothing of the event
on it; a cross-site POST is refused; script in a title and a comment is shown as text; no token
ever reaches a server's log.
"""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from herd.tokens import link_token
from tests.support.herd import SECRET
from tests.support.lines import Session, option_ids
from tests.support.polling import wait_until
from tests.support.ports import free_ports
from tests.support.smtp import Mail, SmtpProcess
from tests.support.users import add_user

from .notify_harness import NotifyHerd

NAMES = ("Bailey", "Bona")
LINKS = (("Bailey", "Bona"),)
TITLE = "Dinner <script>alert('title')</script> & co"
COMMENT = "I'll bring <script>alert('comment')</script> wine"
_LINK = re.compile(r"(http://127\.0\.0\.1:\d+/e/([\w.-]+)\?t=([\w-]+))")


class WebHerd(NotifyHerd):
    """A NotifyHerd whose config turns the web on, each server on a port of its own."""

    web_ports: dict[str, int] | None = None  # chosen after the herd's own ports

    def write_config(self, path: Path, links: object) -> Path:
        super().write_config(path, links)  # type: ignore[arg-type]
        if self.web_ports is None:
            return path
        text = path.read_text()
        for name, port in self.ports.items():
            text = text.replace(
                f"[servers.{name}]\nport = {port}\n",
                f"[servers.{name}]\nport = {port}\nweb_port = {self.web_ports[name]}\n",
            )
        path.write_text(text + "\n[web]\nlink_days = 7\nbody_bytes = 4096\n")
        return path


@dataclass
class Browser:
    """A minimal cookie jar over http.client: one server's site, no redirects followed."""

    port: int
    cookies: dict[str, str] = field(default_factory=dict)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], str]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            sent = dict(headers or {})
            if self.cookies:
                sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            text = response.read().decode("utf-8", "replace")
            for header in response.headers.get_all("Set-Cookie") or []:
                name, _, rest = header.partition("=")
                value = rest.split(";")[0]
                if "Max-Age=0" in header or not value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = value
            return response.status, {k.lower(): v for k, v in response.getheaders()}, text
        finally:
            connection.close()

    def get(self, path: str) -> tuple[int, dict[str, str], str]:
        return self.request("GET", path)

    def post(
        self, path: str, form: dict[str, str], origin: str | None = "self"
    ) -> tuple[int, dict[str, str], str]:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if origin == "self":
            headers["Origin"] = f"http://127.0.0.1:{self.port}"
        elif origin is not None:
            headers["Origin"] = origin
        body = urllib.parse.urlencode(form).encode()
        return self.request("POST", path, body, headers)


@dataclass
class Scene:
    herd: WebHerd
    smtp: SmtpProcess
    tokens: dict[str, str]
    event_id: str
    other_event: str
    times: list[str]
    places: list[str]
    seen_tokens: set[str] = field(default_factory=set)  # every token a test used: never logged


@contextmanager
def web_herd(
    root: Path, seed: Path, kind: type[WebHerd] = WebHerd
) -> Iterator[tuple[WebHerd, SmtpProcess, dict[str, str]]]:
    """Bailey and Bona with `[web]` and a mail sink, on ports of their own, linked, with alice,
    bob and carol and their tokens; stopped however the block ends."""
    herd = kind(root / "herd", smtp_port=0, seed=seed, names=NAMES, links=LINKS)
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
        tokens = {
            user: add_user(herd.config_path, user, f"{user}@example.net")
            for user in ("alice", "bob", "carol")
        }
        yield herd, smtp, tokens
    finally:
        try:
            herd.close()
        finally:
            smtp.close()


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory, places_seed: Path) -> Iterator[Scene]:
    root = tmp_path_factory.mktemp("web")
    with web_herd(root, places_seed) as (herd, smtp, tokens):
        with Session(herd.ports["Bailey"], "alice", tokens["alice"]) as alice:
            event = alice.event(f"PLAN {TITLE}")
            event_id = event["id"]
            alice.event(f"PROPOSE {event_id} TIME 2031-06-01T18:00Z")
            alice.event(f"PROPOSE {event_id} PLACE +48.8534+002.3488 Chez Paul")
            event = alice.event(f"INVITE {event_id} bob carol")
            other = alice.event("PLAN Another one")["id"]
            alice.event(f"INVITE {other} bob")
        yield Scene(
            herd,
            smtp,
            tokens,
            event_id,
            other,
            option_ids(event, "times"),
            option_ids(event, "places"),
        )


def mail_link(scene: Scene, user: str, event_id: str) -> tuple[int, str, str]:
    """(web port, path with the token, token) of the link in `user`'s invitation to the event."""

    def found() -> tuple[int, str, str] | None:
        for mail in scene.smtp.mails():
            if f"{user}@example.net" not in mail.rcpt_to:
                continue
            match = _LINK.search(_text(mail))
            if match and match[2] == event_id:
                url = urllib.parse.urlsplit(match[1])
                assert url.port is not None
                return url.port, f"{url.path}?{url.query}", match[3]
        return None

    return wait_until(found, 15.0, lambda: f"{user}'s mail with a link to {event_id}")


def _text(mail: Mail) -> str:
    part = mail.message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def open_page(scene: Scene, user: str, server: str = "Bailey") -> Browser:
    """`user` opens the link in their mail (on `server`'s site: any server accepts it)."""
    _, path, token = mail_link(scene, user, scene.event_id)
    scene.seen_tokens.add(token)
    browser = Browser(scene.herd.web_ports[server])
    status, headers, _ = browser.get(path)
    assert status == 303, (status, headers)
    assert headers["location"] == f"/e/{scene.event_id}"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    scene.seen_tokens.add(browser.cookies["renga_session"])
    return browser


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([\w-]+)"', page)
    assert match is not None, page
    return match[1]


def assert_denied(status: int, page: str) -> None:
    assert status == 403
    assert "Dinner" not in page and "Chez Paul" not in page and "alice" not in page


# --- the tests ---------------------------------------------------------------------------------


def test_the_link_in_a_mail_opens_the_event_page(scene: Scene) -> None:
    port, _, _ = mail_link(scene, "bob", scene.event_id)
    assert port == scene.herd.web_ports["Bailey"]  # the server that sent it put its own URL
    browser = open_page(scene, "bob")
    status, headers, page = browser.get(f"/e/{scene.event_id}")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    csp = headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"
    assert "Chez Paul" in page and "You are bob." in page
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/static/renga.js" defer>']
    assert "Dinner &lt;script&gt;alert(&#39;title&#39;)&lt;/script&gt; &amp; co" in page
    status, headers, css = browser.get("/static/renga.css")
    assert status == 200 and headers["content-type"].startswith("text/css") and "body" in css


def test_a_vote_through_the_form_shows_on_the_other_servers_page(scene: Scene) -> None:
    at_bailey = open_page(scene, "carol", "Bailey")
    _, _, page = at_bailey.get(f"/e/{scene.event_id}")
    option = scene.times[0]
    status, headers, _ = at_bailey.post(
        f"/e/{scene.event_id}/vote",
        {"csrf": csrf_of(page), "option": option, "choice": "yes"},
    )
    assert status == 303 and headers["location"] == f"/e/{scene.event_id}"
    _, _, page = at_bailey.get(f"/e/{scene.event_id}")
    assert "Your vote is in." in page
    assert "Your answer: yes" in page
    # the same session is good at Bona (nothing is stored: the cookie carries it)
    at_bona = Browser(scene.herd.web_ports["Bona"], dict(at_bailey.cookies))

    def shown_at_bona() -> bool:
        status, _, page = at_bona.get(f"/e/{scene.event_id}")
        assert status == 200
        return "Yes: carol." in page

    wait_until(shown_at_bona, 5.0, "carol's YES on Bona's page")
    # and on the line protocol
    with Session(scene.herd.ports["Bona"], "alice", scene.tokens["alice"]) as alice:
        event = alice.wait_event(scene.event_id, lambda e: e["times"][0]["yes"] == ["carol"])
        assert event["times"][0]["id"] == option


def test_an_error_from_the_server_is_shown(scene: Scene) -> None:
    browser = open_page(scene, "bob")
    _, _, page = browser.get(f"/e/{scene.event_id}")
    status, _, _ = browser.post(
        f"/e/{scene.event_id}/vote",
        {"csrf": csrf_of(page), "option": "no.such.option", "choice": "yes"},
    )
    assert status == 303
    _, _, page = browser.get(f"/e/{scene.event_id}")
    assert f"Not done: {scene.event_id} has no option no.such.option" in page


def test_script_in_a_comment_is_shown_as_text(scene: Scene) -> None:
    browser = open_page(scene, "bob", "Bona")
    _, _, page = browser.get(f"/e/{scene.event_id}")
    status, _, _ = browser.post(
        f"/e/{scene.event_id}/comment",
        {"csrf": csrf_of(page), "text": COMMENT + "\r\nVOTE x y YES"},
    )
    assert status == 303
    _, _, page = browser.get(f"/e/{scene.event_id}")
    assert "Your comment is posted." in page
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/static/renga.js" defer>']
    assert "I&#39;ll bring &lt;script&gt;alert(&#39;comment&#39;)&lt;/script&gt; wine VOTE" in page


def test_forged_expired_and_other_event_links_show_nothing(scene: Scene) -> None:
    _, _, token = mail_link(scene, "bob", scene.event_id)
    browser = Browser(scene.herd.web_ports["Bona"])
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    expired = link_token(SECRET.encode(), "bob", scene.event_id, int(time.time()) - 1, 0)
    other_secret = link_token(b"not the secret", "bob", scene.event_id, 2**40, 0)
    not_invited = link_token(SECRET.encode(), "alice", scene.other_event, 2**40, 0)
    for bad in (forged, expired, other_secret, "", "x" * 5000):
        status, headers, page = browser.get(f"/e/{scene.event_id}?t={bad}")
        assert_denied(status, page)
        assert "set-cookie" not in headers
    # bob's genuine link, for another event
    status, _, page = browser.get(f"/e/{scene.other_event}?t={token}")
    assert_denied(status, page)
    # a link for alice's own event used under another event's path
    status, _, page = browser.get(f"/e/{scene.event_id}?t={not_invited}")
    assert_denied(status, page)
    # no session at all, a forged session, an unknown event
    assert_denied(*browser.get(f"/e/{scene.event_id}")[::2])
    browser.cookies["renga_session"] = token
    assert_denied(*browser.get(f"/e/{scene.event_id}")[::2])
    assert_denied(*browser.get("/e/no.such.event")[::2])
    assert_denied(*browser.get("/e/..%2f..%2fetc")[::2])
    scene.seen_tokens.update((expired, not_invited))


def test_a_cross_site_post_is_refused(scene: Scene) -> None:
    browser = open_page(scene, "bob")
    _, _, page = browser.get(f"/e/{scene.event_id}")
    vote = {"csrf": csrf_of(page), "option": scene.places[0], "choice": "no"}
    path = f"/e/{scene.event_id}/vote"
    status, _, page = browser.post(path, vote, origin="http://evil.example")
    assert status == 403 and "another site" in page
    status, _, _ = browser.request(
        "POST",
        path,
        urllib.parse.urlencode(vote).encode(),
        {"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "cross-site"},
    )
    assert status == 403
    status, _, _ = browser.post(path, {**vote, "csrf": "wrong"})
    assert status == 403
    status, _, _ = browser.post(path, {k: v for k, v in vote.items() if k != "csrf"})
    assert status == 403
    # another user's CSRF token does not go with this session
    carol = open_page(scene, "carol")
    _, _, carol_page = carol.get(f"/e/{scene.event_id}")
    status, _, _ = browser.post(path, {**vote, "csrf": csrf_of(carol_page)})
    assert status == 403
    with Session(scene.herd.ports["Bailey"], "alice", scene.tokens["alice"]) as alice:
        event = alice.event(f"EVENT {scene.event_id}")
        assert "bob" not in event["places"][0]["no"]


def test_a_body_over_the_limit_is_refused_before_it_is_read(scene: Scene) -> None:
    browser = open_page(scene, "bob")
    _, _, page = browser.get(f"/e/{scene.event_id}")
    status, _, _ = browser.post(
        f"/e/{scene.event_id}/comment", {"csrf": csrf_of(page), "text": "x" * 5000}
    )
    assert status == 413


def test_revoked_links_and_their_sessions_open_nothing(scene: Scene) -> None:
    port, path, _ = mail_link(scene, "bob", scene.event_id)
    browser = open_page(scene, "bob", "Bona")
    assert browser.get(f"/e/{scene.event_id}")[0] == 200
    with Session(scene.herd.ports["Bailey"], "bob", scene.tokens["bob"]) as bob:
        reply = bob.request(b"LINKS REVOKE")
        assert reply.startswith(b"LINKS ")
        assert json.loads(reply[6:])["generation"] == 1

    def refused_at_bona() -> bool:
        return browser.get(f"/e/{scene.event_id}")[0] == 403

    wait_until(refused_at_bona, 5.0, "bob's session refused at Bona")
    assert_denied(*Browser(scene.herd.web_ports["Bona"]).get(path)[::2])
    assert_denied(*Browser(port).get(path)[::2])


def test_revoking_from_the_page(scene: Scene) -> None:
    browser = open_page(scene, "carol", "Bona")
    elsewhere = Browser(scene.herd.web_ports["Bailey"], dict(browser.cookies))
    _, _, page = browser.get(f"/e/{scene.event_id}")
    status, _, page = browser.post(f"/e/{scene.event_id}/revoke", {"csrf": csrf_of(page)})
    assert status == 200 and "Links revoked" in page
    assert "renga_session" not in browser.cookies
    wait_until(
        lambda: elsewhere.get(f"/e/{scene.event_id}")[0] == 403,
        5.0,
        "carol's old session refused at Bailey",
    )
    with Session(scene.herd.ports["Bailey"], "carol", scene.tokens["carol"]) as carol:
        assert json.loads(carol.request(b"LINKS")[6:])["generation"] == 1


def test_no_token_reaches_a_log(scene: Scene) -> None:
    """Last in the module: every link and session the tests used, looked for in every log."""
    assert scene.seen_tokens
    time.sleep(1.5)  # the logs are written in batches
    for name in NAMES:
        log = scene.herd.log_path(name).read_text(errors="replace")
        assert "GET /e/" in log and "?t=..." in log
        for token in scene.seen_tokens:
            assert token not in log, (name, token)
        stderr = scene.herd.stderr_path(name).read_text(errors="replace")
        for token in scene.seen_tokens:
            assert token not in stderr, (name, token)
