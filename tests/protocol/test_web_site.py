"""The web site over an in-memory transport (`StringTransport`), with the herd's real planning
state and a recording `run_as`: the lines a form makes, the limits on requests, the headers of
every answer.  No reactor, no sockets."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from herd.clock import Clock as HerdClock
from herd.config import load_config
from herd.ops import OPERATOR, AddPlace, AddTime, AddUser, CreateEvent, Invite, Op
from herd.state import PlanningState
from herd.tokens import link_token
from web.host import WebHost
from web.site import WebSite, build_site
from web.templates import WebTemplates, read_static

SECRET = b"site secret"
NOW = 1_796_000_000
T0 = NOW * 10**9


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, bytes]] = []
        self.logged: list[tuple[str, bytes]] = []
        self.answer = b'EVENT {"id":"E"}\n'

    def run_as(self, user: str, line: bytes) -> Deferred[bytes]:
        self.lines.append((user, line))
        return succeed(self.answer)

    def log(self, who: str, lines: list[bytes]) -> None:
        self.logged += [(who, line) for line in lines]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[WebSite, Recorder]]:
    config_path = tmp_path / "herd.toml"
    config_path.write_text(
        "[servers.A]\nport = 12000\nweb_port = 8001\n[web]\nbody_bytes = 2048\n"
        "header_bytes = 2048\n"
    )
    config = load_config(config_path, {"HERD_SECRET": "x"})
    web = config.web_of("A")
    assert web is not None
    state = PlanningState()
    for each in (
        Op("u1", T0, OPERATOR, AddUser("alice")),
        Op("u2", T0, OPERATOR, AddUser("bob")),
        Op("E", T0 + 1, "alice", CreateEvent("Dinner")),
        Op("i", T0 + 2, "alice", Invite("E", ("bob",))),
        Op("t1", T0 + 3, "alice", AddTime("E", NOW + 86400)),
        Op("p1", T0 + 4, "alice", AddPlace("E", "Chez Paul", 48.85, 2.35)),
    ):
        state.apply(each)
    scheduler = Clock()
    scheduler.advance(NOW)
    recorder = Recorder()
    host = WebHost(
        name="A",
        web=web,
        secret=SECRET,
        state=state,
        position_of=lambda user: None,
        run_as=recorder.run_as,
        clock=HerdClock.following(scheduler),
        log=recorder.log,
        templates=WebTemplates(),
        static=read_static(),
    )
    site = build_site(host)
    site.reactor = scheduler  # type: ignore[attr-defined]
    yield site, recorder


def exchange(site: WebSite, data: bytes) -> bytes:
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(data)
    return transport.value()


def get(path: str, cookie: str = "") -> bytes:
    extra = f"Cookie: {cookie}\r\n" if cookie else ""
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:8001\r\n{extra}Connection: close\r\n\r\n".encode()
    )


def post(path: str, body: bytes, cookie: str, origin: str = "http://127.0.0.1:8001") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:8001\r\nCookie: {cookie}\r\n"
        f"Origin: {origin}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def session_of(site: WebSite, user: str = "bob") -> tuple[str, str]:
    """Open bob's link; (his cookie, the page's CSRF token)."""
    token = link_token(SECRET, user, "E", NOW + 3600, 0)
    answer = exchange(site, get(f"/e/E?t={token}"))
    assert answer.startswith(b"HTTP/1.1 303 ")
    found = re.search(rb"Set-Cookie: (renga_session=[\w-]+)", answer)
    assert found is not None
    cookie = found[1].decode()
    page = exchange(site, get("/e/E", cookie))
    assert page.startswith(b"HTTP/1.1 200 ")
    csrf = re.search(rb'name="csrf" value="([\w-]+)"', page)
    assert csrf is not None
    return cookie, csrf[1].decode()


def test_a_vote_is_one_vote_line_run_as_the_user(site: tuple[WebSite, Recorder]) -> None:
    web, recorder = site
    cookie, csrf = session_of(web)
    answer = exchange(
        web, post("/e/E/vote", f"csrf={csrf}&option=t1&choice=maybe".encode(), cookie)
    )
    assert answer.startswith(b"HTTP/1.1 303 ")
    assert recorder.lines == [("bob", b"VOTE E t1 MAYBE")]


def test_a_comment_is_one_line_whatever_it_holds(site: tuple[WebSite, Recorder]) -> None:
    web, recorder = site
    cookie, csrf = session_of(web)
    body = f"csrf={csrf}&text=wine%0D%0AVOTE+E+t1+NO%0Aand%09cheese".encode()
    exchange(web, post("/e/E/comment", body, cookie))
    assert recorder.lines == [("bob", b"COMMENT E wine VOTE E t1 NO and cheese")]


def test_the_servers_refusal_comes_back_on_the_page(site: tuple[WebSite, Recorder]) -> None:
    web, recorder = site
    cookie, csrf = session_of(web)
    recorder.answer = b"ERR cancelled: E is cancelled\n"
    answer = exchange(web, post("/e/E/vote", f"csrf={csrf}&option=t1&choice=yes".encode(), cookie))
    flash = re.search(rb"Set-Cookie: (renga_flash=[\w-]+)", answer)
    assert flash is not None
    page = exchange(web, get("/e/E", f"{cookie}; {flash[1].decode()}"))
    assert b"Not done: E is cancelled" in page


def test_bad_form_values_run_nothing(site: tuple[WebSite, Recorder]) -> None:
    web, recorder = site
    cookie, csrf = session_of(web)
    for body in (
        f"csrf={csrf}&option=t1&choice=YES",
        f"csrf={csrf}&option=t1+x&choice=yes",
        f"csrf={csrf}&choice=yes",
        f"csrf={csrf}&option=%ff&choice=yes",
    ):
        assert exchange(web, post("/e/E/vote", body.encode(), cookie)).startswith(b"HTTP/1.1 303")
    assert exchange(web, post("/e/E/comment", f"csrf={csrf}&text=+%0A+".encode(), cookie))
    assert recorder.lines == []


def test_cross_site_and_csrf_less_posts_run_nothing(site: tuple[WebSite, Recorder]) -> None:
    web, recorder = site
    cookie, csrf = session_of(web)
    vote = f"csrf={csrf}&option=t1&choice=yes".encode()
    assert b" 403 " in exchange(web, post("/e/E/vote", vote, cookie, "https://evil.example"))[:20]
    assert b" 403 " in exchange(web, post("/e/E/vote", vote, cookie, "null"))[:20]
    assert b" 403 " in exchange(web, post("/e/E/vote", b"option=t1&choice=yes", cookie))[:20]
    assert b" 403 " in exchange(web, post("/e/E/vote", vote, "renga_session=forged"))[:20]
    assert recorder.lines == []


def test_every_answer_carries_the_security_headers(site: tuple[WebSite, Recorder]) -> None:
    web, _ = site
    for request in (get("/"), get("/e/E"), get("/nothing/here"), get("/static/renga.css")):
        answer = exchange(web, request)
        head = answer.split(b"\r\n\r\n")[0]
        assert b"Content-Security-Policy: default-src 'self'" in head
        assert b"X-Content-Type-Options: nosniff" in head
        assert b"Referrer-Policy: no-referrer" in head
        assert b"Server: Renga" in head and b"Twisted" not in head


def test_oversized_requests_are_refused(site: tuple[WebSite, Recorder]) -> None:
    web, recorder = site
    cookie, csrf = session_of(web)
    big = f"csrf={csrf}&text=".encode() + b"x" * 3000
    assert exchange(web, post("/e/E/comment", big, cookie)).startswith(b"HTTP/1.1 413 ")
    chunked = (
        (
            f"POST /e/E/comment HTTP/1.1\r\nHost: h\r\nCookie: {cookie}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
        + b"".join(b"400\r\n" + b"x" * 1024 + b"\r\n" for _ in range(3))
        + b"0\r\n\r\n"
    )
    assert exchange(web, chunked).startswith(b"HTTP/1.1 413 ")
    line = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-Pad: " + b"y" * 3000 + b"\r\n\r\n"
    assert exchange(web, line).startswith(b"HTTP/1.1 431 ")
    many = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (n, b"y" * 90) for n in range(30))
    assert exchange(web, many + b"\r\n").startswith(b"HTTP/1.1 400 ")
    assert recorder.lines == []


def test_the_access_log_shows_no_token(site: tuple[WebSite, Recorder]) -> None:
    web, recorder = site
    token = link_token(SECRET, "bob", "E", NOW + 3600, 0)
    exchange(web, get(f"/e/E?t={token}"))
    exchange(web, get(f"/e/E?{token}"))
    assert recorder.logged
    for who, line in recorder.logged:
        assert who.startswith("web:")
        assert token.encode() not in line
    assert recorder.logged[0][1] == b"GET /e/E?t=... 303 0"


def test_posts_waiting_for_their_line_are_bounded_per_address(
    site: tuple[WebSite, Recorder],
) -> None:
    web, recorder = site
    cookie, csrf = session_of(web)
    waiting: list[Deferred[bytes]] = []

    def slow(user: str, line: bytes) -> Deferred[bytes]:
        recorder.lines.append((user, line))
        waiting.append(Deferred())
        return waiting[-1]

    object.__setattr__(web.host, "run_as", slow)
    vote = post("/e/E/vote", f"csrf={csrf}&option=t1&choice=yes".encode(), cookie)
    limit = web.host.web.settings.writes_per_address
    answers = [exchange(web, vote) for _ in range(limit + 1)]
    assert all(answer == b"" for answer in answers[:limit])  # waiting for their line
    assert answers[limit].startswith(b"HTTP/1.1 429 ")
    assert len(recorder.lines) == limit
    for each in waiting:
        each.callback(b'EVENT {"id":"E"}\n')
    assert web.host.writes == {}
    assert exchange(web, vote) == b""  # room again


def test_revoking_from_the_page_is_one_links_revoke_line(site: tuple[WebSite, Recorder]) -> None:
    web, recorder = site
    cookie, csrf = session_of(web)
    recorder.answer = b'LINKS {"user":"bob","generation":1}\n'
    answer = exchange(web, post("/e/E/revoke", f"csrf={csrf}".encode(), cookie))
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"Set-Cookie: renga_session=; Path=/e/E; Max-Age=0" in answer
    assert b"Links revoked" in answer
    assert recorder.lines == [("bob", b"LINKS REVOKE")]
    # a cross-site page cannot make someone revoke their links
    assert (
        b" 403 "
        in exchange(
            web, post("/e/E/revoke", f"csrf={csrf}".encode(), cookie, "https://evil.example")
        )[:20]
    )
    assert len(recorder.lines) == 1
