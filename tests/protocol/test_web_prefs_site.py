"""`/unsubscribe` and `/prefs` over an in-memory transport (`StringTransport`), with the herd's
real planning state and a `run_as` that records each line and answers when the test says: the
lines each request runs (none for a GET, a forged token, a body that names someone), the
answers, and the bound on writes in flight.  No reactor, no sockets."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from herd.clock import Clock as HerdClock
from herd.config import load_config
from herd.ops import OPERATOR, AddUser, CreateEvent, Invite, Op, SetUserField, UserField
from herd.state import PlanningState
from herd.tokens import USER_SCOPE, link_token, unsubscribe_token
from tests.protocol.test_web_site import exchange, get
from web.host import WebHost
from web.site import WebSite, build_site
from web.templates import WebTemplates, read_static

SECRET = b"prefs site secret"
NOW = 1_796_000_000
T0 = NOW * 10**9
ORIGIN = "http://127.0.0.1:8001"


class Lines:
    """`run_as` that records each line; a line is answered at once with `answer`, or held
    (`hold`) until the test fires it."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, bytes]] = []
        self.held: list[Deferred[bytes]] = []
        self.hold = False
        self.answers: dict[bytes, bytes] = {}

    def run_as(self, user: str, line: bytes) -> Deferred[bytes]:
        self.lines.append((user, line))
        answered: Deferred[bytes] = Deferred()
        if self.hold:
            self.held.append(answered)
            return answered
        word = line.split(b" ", 1)[0]
        default = {b"OPTOUT": b"OPTOUT " + user.encode(), b"LINKS": b'LINKS {"generation":1}'}
        answered.callback(self.answers.get(line, default.get(word, b'USER {"id":"x"}')) + b"\n")
        return answered


Site = tuple[WebSite, Lines, PlanningState]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    config_path = tmp_path / "herd.toml"
    config_path.write_text(
        "[servers.A]\nport = 12000\nweb_port = 8001\n[web]\nbody_bytes = 2048\n"
        "writes_per_address = 1\n"
    )
    config = load_config(config_path, {"HERD_SECRET": "x"})
    web = config.web_of("A")
    assert web is not None
    state = PlanningState()
    for each in (
        Op("u1", T0, OPERATOR, AddUser("alice")),
        Op("u2", T0, OPERATOR, AddUser("bob")),
        Op("u3", T0, OPERATOR, AddUser("carol")),
        Op("c3", T0 + 1, OPERATOR, SetUserField("carol", UserField.CHANNELS, "xmpp")),
        Op("E", T0 + 2, "alice", CreateEvent("Dinner")),
        Op("i", T0 + 3, "alice", Invite("E", ("bob",))),
    ):
        state.apply(each)
    scheduler = Clock()
    scheduler.advance(NOW)
    lines = Lines()
    host = WebHost(
        name="A",
        web=web,
        secret=SECRET,
        state=state,
        position_of=lambda user: None,
        run_as=lines.run_as,
        clock=HerdClock.following(scheduler),
        log=lambda who, logged: None,
        templates=WebTemplates(),
        static=read_static(),
    )
    built = build_site(host)
    built.reactor = scheduler  # type: ignore[attr-defined]
    yield built, lines, state


def request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> bytes:
    head = {"Host": "127.0.0.1:8001", "Connection": "close", **(headers or {})}
    if method == "POST":
        head["Content-Length"] = str(len(body))
    text = "".join(f"{k}: {v}\r\n" for k, v in head.items())
    return f"{method} {path} HTTP/1.1\r\n{text}\r\n".encode() + body


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def one_click(path: str, body: bytes = b"List-Unsubscribe=One-Click") -> bytes:
    return request(
        "POST",
        path,
        body,
        {"Content-Type": "application/x-www-form-urlencoded", "Origin": "https://mail.example"},
    )


def unsubscribe_path(user: str, token: str | None = None) -> str:
    return f"/unsubscribe?u={user}&t={token or unsubscribe_token(SECRET, user)}"


# --- one-click unsubscribe ---------------------------------------------------------------------


def test_opening_the_link_runs_nothing(site: Site) -> None:
    web, lines, _ = site
    for method in ("GET", "HEAD"):
        answer = exchange(web, request(method, unsubscribe_path("bob")))
        assert status(answer) == 200
    page = exchange(web, get(unsubscribe_path("bob")))
    assert b'<input type="hidden" name="List-Unsubscribe" value="One-Click">' in page
    assert lines.lines == []


def test_a_one_click_post_runs_the_optout_line_as_the_user(site: Site) -> None:
    web, lines, _ = site
    token = unsubscribe_token(SECRET, "bob")
    answer = exchange(web, one_click(unsubscribe_path("bob")))
    assert status(answer) == 200 and b"Renga sends no more emails to bob" in answer
    assert lines.lines == [("bob", f"OPTOUT bob {token}".encode())]
    assert b"Set-Cookie" not in answer


def test_a_multipart_one_click_post_is_read_too(site: Site) -> None:
    web, lines, _ = site
    body = (
        b'--b\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\n'
        b"One-Click\r\n--b--\r\n"
    )
    answer = exchange(
        web,
        request(
            "POST",
            unsubscribe_path("bob"),
            body,
            {"Content-Type": "multipart/form-data; boundary=b"},
        ),
    )
    assert status(answer) == 200 and len(lines.lines) == 1


@pytest.mark.parametrize(
    "path",
    [
        unsubscribe_path("bob", unsubscribe_token(SECRET, "carol")),
        unsubscribe_path("bob", unsubscribe_token(b"another secret", "bob")),
        unsubscribe_path("nobody", unsubscribe_token(SECRET, "nobody")),  # genuine, no such user
        "/unsubscribe?u=bob",
        "/unsubscribe",
    ],
)
def test_a_bad_token_gets_403_and_runs_nothing(site: Site, path: str) -> None:
    web, lines, _ = site
    assert status(exchange(web, one_click(path))) == 403
    assert status(exchange(web, get(path))) == 403
    assert lines.lines == []


def test_the_body_cannot_name_the_user_or_the_token(site: Site) -> None:
    web, lines, _ = site
    fields = {"u": "bob", "t": unsubscribe_token(SECRET, "bob"), "List-Unsubscribe": "One-Click"}
    body = urllib.parse.urlencode(fields).encode()
    assert status(exchange(web, one_click("/unsubscribe", body))) == 403
    # the URL's user and token win over a body naming others
    other = {"u": "alice", "t": unsubscribe_token(SECRET, "alice"), "List-Unsubscribe": "One-Click"}
    body = urllib.parse.urlencode(other).encode()
    assert status(exchange(web, one_click(unsubscribe_path("bob"), body))) == 200
    assert [user for user, _ in lines.lines] == ["bob"]


def test_without_the_one_click_body_nothing_runs(site: Site) -> None:
    web, lines, _ = site
    for body in (
        b"",
        b"List-Unsubscribe=one-click",
        b"List-Unsubscribe=One-Click&List-Unsubscribe=One-Click",
    ):
        assert status(exchange(web, one_click(unsubscribe_path("bob"), body))) == 400
    assert lines.lines == []


def test_a_user_without_email_is_told_so_and_nothing_is_written(site: Site) -> None:
    web, lines, _ = site
    assert b"already sends no emails to carol" in exchange(web, get(unsubscribe_path("carol")))
    assert status(exchange(web, one_click(unsubscribe_path("carol")))) == 200
    assert lines.lines == []


def test_the_line_refusing_it_or_failing_shows_as_such(site: Site) -> None:
    web, lines, _ = site
    token = unsubscribe_token(SECRET, "bob")
    lines.answers[f"OPTOUT bob {token}".encode()] = f"? OPTOUT bob {token}".encode()
    assert status(exchange(web, one_click(unsubscribe_path("bob")))) == 403
    lines.answers[f"OPTOUT bob {token}".encode()] = b"ERR unavailable: try later"
    answer = exchange(web, one_click(unsubscribe_path("bob")))
    assert status(answer) == 503 and b"Nothing changed" in answer


# --- the preferences page ----------------------------------------------------------------------


def prefs_session(web: WebSite, user: str = "bob") -> tuple[str, str]:
    """Open `user`'s settings link: (their cookie, the page's CSRF token)."""
    token = link_token(SECRET, user, USER_SCOPE, NOW + 3600, 0)
    answer = exchange(web, get(f"/prefs?t={token}"))
    assert status(answer) == 303 and b"Location: /prefs\r\n" in answer
    found = re.search(rb"Set-Cookie: (renga_session=[\w-]+); Path=/prefs;", answer)
    assert found is not None, answer
    cookie = found[1].decode()
    page = exchange(web, get("/prefs", cookie))
    assert status(page) == 200 and b"For bob" in page
    csrf = re.search(rb'name="csrf" value="([\w-]+)"', page)
    assert csrf is not None
    return cookie, csrf[1].decode()


def post(path: str, fields: dict[str, list[str]], cookie: str, origin: str = ORIGIN) -> bytes:
    body = urllib.parse.urlencode(fields, doseq=True).encode()
    return request(
        "POST",
        path,
        body,
        {"Cookie": cookie, "Origin": origin, "Content-Type": "application/x-www-form-urlencoded"},
    )


def flash_of(web: WebSite, answer: bytes, cookie: str) -> str:
    found = re.search(rb"Set-Cookie: (renga_flash=[\w-]+)", answer)
    assert found is not None, answer
    page = exchange(web, get("/prefs", f"{cookie}; {found[1].decode()}")).decode()
    shown = re.search(r'<p class="flash" role="status">([^<]*)</p>', page)
    assert shown is not None
    return shown[1].replace("&#39;", "'")


def test_the_form_runs_one_line_per_changed_field(site: Site) -> None:
    web, lines, _ = site
    cookie, csrf = prefs_session(web)
    fields = {
        "csrf": [csrf],
        "channels": ["", "email", "line"],
        "digest": ["weekly"],
        "quiet_from": ["23:00"],
        "quiet_to": ["06:30"],
        "tz": [""],
        "email": [""],
        "jid": ["bob@chat.example"],
    }
    answer = exchange(web, post("/prefs", fields, cookie))
    assert status(answer) == 303 and b"Location: /prefs\r\n" in answer
    assert lines.lines == [
        ("bob", b"USER SET channels email,line"),
        ("bob", b"USER SET digest weekly"),
        ("bob", b"USER SET quiet 23:00-06:30"),
        ("bob", b"USER SET jid bob@chat.example"),
    ]
    assert flash_of(web, answer, cookie) == "Saved: channels, digest, quiet hours, Jabber address."


def test_a_refused_line_stops_the_rest_and_says_why(site: Site) -> None:
    web, lines, _ = site
    cookie, csrf = prefs_session(web)
    lines.answers[b"USER SET tz Mars/Olympus"] = (
        b"ERR bad-value: Mars/Olympus is not a time zone like Europe/Paris"
    )
    fields = {"csrf": [csrf], "digest": ["off"], "tz": ["Mars/Olympus"], "jid": ["b@chat.example"]}
    answer = exchange(web, post("/prefs", fields, cookie))
    assert [line for _, line in lines.lines] == [
        b"USER SET digest off",
        b"USER SET tz Mars/Olympus",
    ]
    assert flash_of(web, answer, cookie) == (
        "Not saved: the time zone: Mars/Olympus is not a time zone like Europe/Paris. "
        "Saved before it: digest."
    )


def test_what_the_page_refuses_runs_nothing(site: Site) -> None:
    web, lines, _ = site
    cookie, csrf = prefs_session(web)
    fields = {"csrf": [csrf], "quiet_from": ["23:00"], "quiet_to": [""], "email": ["a@b.c\nX"]}
    answer = exchange(web, post("/prefs", fields, cookie))
    assert status(answer) == 303 and lines.lines == []
    assert flash_of(web, answer, cookie).startswith("Not saved: ")


def test_forms_from_elsewhere_or_without_the_session_run_nothing(site: Site) -> None:
    web, lines, _ = site
    cookie, csrf = prefs_session(web)
    fields = {"csrf": [csrf], "digest": ["off"]}
    assert status(exchange(web, post("/prefs", fields, cookie, "https://evil.example"))) == 403
    assert status(exchange(web, post("/prefs", {**fields, "csrf": ["x"]}, cookie))) == 403
    assert status(exchange(web, post("/prefs", {"digest": ["off"]}, cookie))) == 403
    assert status(exchange(web, post("/prefs", fields, "renga_session=forged"))) == 403
    assert status(exchange(web, post("/prefs/revoke", fields, cookie, "null"))) == 403
    # an event's session is not a settings session, nor an event link a settings link
    event_link = link_token(SECRET, "bob", "E", NOW + 3600, 0)
    assert status(exchange(web, get(f"/prefs?t={event_link}"))) == 403
    assert lines.lines == []


def test_revoking_runs_links_revoke_and_ends_the_session(site: Site) -> None:
    web, lines, _ = site
    cookie, csrf = prefs_session(web)
    answer = exchange(web, post("/prefs/revoke", {"csrf": [csrf]}, cookie))
    assert status(answer) == 303 and b"Location: /prefs/revoked\r\n" in answer
    assert b"Set-Cookie: renga_session=; Path=/prefs; Max-Age=0" in answer
    assert lines.lines == [("bob", b"LINKS REVOKE")]
    assert b"Links revoked" in exchange(web, get("/prefs/revoked"))


def test_writes_in_flight_are_bounded_per_address(site: Site) -> None:
    """`writes_per_address = 1`: a second write while the first's lines run gets 429, and
    the count is given back when they are done."""
    web, lines, _ = site
    cookie, csrf = prefs_session(web)
    lines.hold = True
    first = web.buildProtocol(None)
    transport = StringTransport()
    first.makeConnection(transport)
    first.dataReceived(post("/prefs", {"csrf": [csrf], "digest": ["off"]}, cookie))
    assert transport.value() == b"" and len(lines.held) == 1
    assert status(exchange(web, one_click(unsubscribe_path("bob")))) == 429
    assert (
        status(exchange(web, post("/prefs", {"csrf": [csrf], "digest": ["weekly"]}, cookie))) == 429
    )
    lines.held[0].callback(b'USER {"id":"bob"}\n')
    assert status(transport.value()) == 303
    lines.hold = False
    assert status(exchange(web, one_click(unsubscribe_path("bob")))) == 200
