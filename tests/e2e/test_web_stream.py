"""The live streams end to end, against real `herd run` processes with `[web]` (plain
http.client reading the Server-Sent Events; the browser tests are tests/e2e/test_web_browser.py).

One herd of two linked servers and a mail sink for the module: a vote cast on one server over
the line protocol reaches a stream open on the other within a second; a stream that reconnects
with `Last-Event-ID` after its server restarted gets exactly the changes it missed; heartbeats;
the per-user limit; a user watching an event live gets no mail for a change made there, while
one who is not watching does.
"""

from __future__ import annotations

import html
import http.client
import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from herd.tokens import USER_SCOPE, WebClaim, link_token, session_token
from tests.support.herd import SECRET
from tests.support.lines import Session, option_ids
from tests.support.polling import wait_until
from tests.support.smtp import SmtpProcess

from .test_web import Browser, WebHerd, web_herd

NAMES = ("Bailey", "Bona")
LINKS = (("Bailey", "Bona"),)
CHECKPOINT_DIGITS = 20


class StreamHerd(WebHerd):
    """A WebHerd with fast heartbeats, a small per-user stream limit and a small buffer for
    a stalled reader."""

    def write_config(self, path: Path, links: object) -> Path:
        super().write_config(path, links)
        if self.web_ports is not None:
            with path.open("a") as config:
                config.write(
                    "heartbeat_seconds = 1\nidle_seconds = 30\nstreams_per_user = 3\n"
                    "stream_buffer_bytes = 1024\n"
                )
        return path


@dataclass
class SseEvent:
    id: str | None
    name: str
    data: str

    def json(self) -> dict[str, object]:
        loaded = json.loads(self.data)
        assert isinstance(loaded, dict)
        return loaded


@dataclass
class Stream:
    """One open SSE response, read with deadlines: its events and the comment lines seen."""

    connection: http.client.HTTPConnection
    response: http.client.HTTPResponse
    buffer: bytes = b""
    comments: int = 0
    events: list[SseEvent] = field(default_factory=list)

    def _fill(self, deadline: float) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock = self.connection.sock
        assert sock is not None
        sock.settimeout(left)
        try:
            data = self.response.read1(65536)
        except TimeoutError:
            return False
        if not data:
            raise ConnectionError("the stream ended")
        self.buffer += data
        return True

    def _parse(self) -> None:
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            fields: dict[str, list[str]] = {}
            for line in block.decode("utf-8").split("\n"):
                if line.startswith(":"):
                    self.comments += 1
                    continue
                name, _, value = line.partition(":")
                fields.setdefault(name, []).append(value.removeprefix(" "))
            if "event" in fields or "data" in fields:
                self.events.append(
                    SseEvent(
                        fields.get("id", [None])[0],
                        fields.get("event", ["message"])[0],
                        "\n".join(fields.get("data", [])),
                    )
                )

    def read_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self._fill(deadline):
            self._parse()

    def next(self, timeout: float = 5.0, name: str = "change") -> SseEvent:
        deadline = time.monotonic() + timeout
        while True:
            self._parse()
            for index, event in enumerate(self.events):
                if event.name == name:
                    del self.events[: index + 1]
                    return event
            self.events.clear()
            if not self._fill(deadline):
                raise AssertionError(f"no {name} event within {timeout}s")

    def close(self) -> None:
        self.connection.close()


@dataclass
class Scene:
    herd: StreamHerd
    smtp: SmtpProcess
    tokens: dict[str, str]
    event_id: str
    times: list[str]


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory, places_seed: Path) -> Iterator[Scene]:
    root = tmp_path_factory.mktemp("stream")
    with web_herd(root, places_seed, StreamHerd) as (herd, smtp, tokens):
        with Session(herd.ports["Bailey"], "alice", tokens["alice"]) as alice:
            event_id = alice.event("PLAN Live dinner")["id"]
            alice.event(f"PROPOSE {event_id} TIME 2031-06-01T18:00Z")
            alice.event(f"PROPOSE {event_id} TIME 2031-06-02T18:00Z")
            event = alice.event(f"INVITE {event_id} bob carol")
        yield Scene(herd, smtp, tokens, event_id, option_ids(event, "times"))


def session(scene: Scene, user: str, server: str = "Bailey") -> Browser:
    """`user`'s browser on `server` after opening a personal link to the event."""
    browser = Browser(scene.herd.web_ports[server])
    token = link_token(SECRET.encode(), user, scene.event_id, int(time.time()) + 3600, 0)
    status, _, _ = browser.get(f"/e/{scene.event_id}?t={token}")
    assert status == 303
    return browser


def open_stream(
    browser: Browser, path: str, last_id: str | None = None, expect: int = 200
) -> Stream:
    connection = http.client.HTTPConnection("127.0.0.1", browser.port, timeout=10)
    headers = {"Accept": "text/event-stream"}
    if browser.cookies:
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    assert response.status == expect, (response.status, response.read())
    stream = Stream(connection, response)
    if expect == 200:
        assert response.getheader("Content-Type") == "text/event-stream; charset=utf-8"
        stream.next(name="hello")
    return stream


def vote(scene: Scene, server: str, user: str, option: str, choice: str) -> None:
    with Session(scene.herd.ports[server], user, scene.tokens[user]) as line:
        line.event(f"VOTE {scene.event_id} {option} {choice}")


# --- the tests ---------------------------------------------------------------------------------


def test_a_vote_on_another_server_arrives_within_a_second(scene: Scene) -> None:
    stream = open_stream(session(scene, "bob"), f"/e/{scene.event_id}/stream")
    try:
        option = scene.times[0]
        vote(scene, "Bona", "carol", option, "YES")
        voted = time.monotonic()
        event = stream.next(timeout=3.0)
        took = time.monotonic() - voted
        assert took < 1.0, took
        assert event.id is not None and event.id[CHECKPOINT_DIGITS] == "."
        data = event.json()
        assert data["event"] == scene.event_id
        assert data["change"] == {"kind": "voted", "by": "carol", "option": option, "choice": "yes"}
        state = data["state"]
        assert isinstance(state, dict)
        assert state["tallies"][option] == [1, 0, 0]
        assert state["leading_time"] == option and state["status"] == "planning"
        assert len(event.data) < 1024  # the change and the tallies: no list of names
    finally:
        stream.close()


def test_heartbeats_keep_an_idle_stream_talking(scene: Scene) -> None:
    stream = open_stream(session(scene, "carol"), f"/e/{scene.event_id}/stream")
    try:
        stream.read_for(2.5)
        assert stream.comments >= 2
    finally:
        stream.close()


def test_no_session_no_stream(scene: Scene) -> None:
    anonymous = Browser(scene.herd.web_ports["Bailey"])
    open_stream(anonymous, f"/e/{scene.event_id}/stream", None, 403).close()
    open_stream(session(scene, "bob"), "/u/stream", None, 403).close()  # an event's session only


def test_a_user_holds_at_most_streams_per_user(scene: Scene) -> None:
    browser = session(scene, "carol", "Bona")
    streams = [open_stream(browser, f"/e/{scene.event_id}/stream") for _ in range(3)]
    try:
        refused = open_stream(browser, f"/e/{scene.event_id}/stream", None, 429)
        assert refused.response.getheader("Retry-After") == "10"
        refused.close()
        streams.pop().close()

        def room_again() -> bool:
            connection = http.client.HTTPConnection("127.0.0.1", browser.port, timeout=5)
            cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
            connection.request("GET", f"/e/{scene.event_id}/stream", headers={"Cookie": cookie})
            ok = connection.getresponse().status == 200
            connection.close()
            return ok

        wait_until(room_again, 5.0, "a stream slot freed by a closed stream")
    finally:
        for stream in streams:
            stream.close()


def test_a_user_stream_follows_every_event_of_the_user(scene: Scene) -> None:
    with Session(scene.herd.ports["Bailey"], "alice", scene.tokens["alice"]) as alice:
        other = alice.event("PLAN Lunch")["id"]
        alice.event(f"INVITE {other} carol")
    browser = Browser(scene.herd.web_ports["Bona"])
    claim = WebClaim("carol", USER_SCOPE, int(time.time()) + 3600, 0)
    browser.cookies["renga_session"] = session_token(SECRET.encode(), claim)
    stream = open_stream(browser, "/u/stream")
    try:
        vote(scene, "Bailey", "bob", scene.times[0], "NO")
        with Session(scene.herd.ports["Bailey"], "alice", scene.tokens["alice"]) as alice:
            alice.event(f"COMMENT {other} soup?")
        got: list[tuple[object, object]] = []
        while len(got) < 2:
            data = stream.next().json()
            kind = data["change"]["kind"]  # type: ignore[index]
            if kind != "invited":  # Lunch's invitation may reach Bona after the stream opened
                got.append((data["event"], kind))
        assert got == [(scene.event_id, "voted"), (other, "commented")]
    finally:
        stream.close()
    # the same cookie opens any one of carol's event streams too
    open_stream(browser, f"/e/{other}/stream").close()


def test_a_stream_the_server_ends_says_why_and_ends_its_body(scene: Scene) -> None:
    """bob is uninvited while his page follows the event: the stream's last event is `end`
    (the session is over, with the sentence the page shows), then the chunked body ends
    properly (its last chunk: no incomplete response) and the connection closes."""
    with Session(scene.herd.ports["Bailey"], "alice", scene.tokens["alice"]) as alice:
        brunch = alice.event("PLAN Brunch")["id"]
        alice.event(f"INVITE {brunch} bob")
    browser = Browser(scene.herd.web_ports["Bona"])
    token = link_token(SECRET.encode(), "bob", brunch, int(time.time()) + 3600, 0)
    wait_until(lambda: browser.get(f"/e/{brunch}?t={token}")[0] == 303, 5.0, "the brunch at Bona")
    stream = open_stream(browser, f"/e/{brunch}/stream")
    try:
        with Session(scene.herd.ports["Bailey"], "alice", scene.tokens["alice"]) as alice:
            alice.event(f"UNINVITE {brunch} bob")
        end = stream.next(name="end").json()
        assert end["reason"] == "session"
        assert "no longer updates itself" in str(end["message"])
        # the body's last chunk, then the end of the connection: http.client raises
        # IncompleteRead (not ConnectionError) for a chunked body cut short
        with pytest.raises(ConnectionError, match="the stream ended"):
            stream.read_for(5.0)
    finally:
        stream.close()


def test_the_settings_link_opens_my_events_and_its_stream(scene: Scene) -> None:
    """The settings link in a mail sets the user-scope session for `/prefs` and for `/u`:
    with it, `GET /u` lists every event of the user, each with a link that opens its page, and
    `/u/stream` follows them all.  No session (or an event's only): 403, and nothing shown."""
    port = scene.herd.web_ports["Bona"]
    token = link_token(SECRET.encode(), "carol", USER_SCOPE, int(time.time()) + 3600, 0)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", f"/prefs?t={token}")
    response = connection.getresponse()
    response.read()
    connection.close()
    assert response.status == 303
    cookies = response.headers.get_all("Set-Cookie") or []
    paths = {}
    for header in cookies:
        name, _, rest = header.partition("=")
        value, _, attributes = rest.partition(";")
        assert name == "renga_session" and "HttpOnly" in attributes and "SameSite=Lax" in attributes
        paths[attributes.split("Path=")[1].split(";")[0]] = value
    assert set(paths) == {"/prefs", "/u"} and len(set(paths.values())) == 1, cookies
    browser = Browser(port, {"renga_session": paths["/u"]})
    status, headers, page = browser.get("/u")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert "Your events" in page and "Live dinner" in page and 'data-stream="/u/stream"' in page
    links = re.findall(rf'href="(/e/{re.escape(scene.event_id)}\?t=[\w-]+)"', page)
    assert len(links) == 1, page
    # the row's link opens the event page in a browser holding nothing else
    fresh = Browser(port)
    assert fresh.get(html.unescape(links[0]))[0] == 303
    status, _, event_page = fresh.get(f"/e/{scene.event_id}")
    assert status == 200 and "You are carol." in event_page
    # an event's session, or none: no list, no stream
    for other in (Browser(port), session(scene, "carol", "Bona")):
        status, _, denied = other.get("/u")
        assert status == 403 and "Live dinner" not in denied
        open_stream(other, "/u/stream", None, 403).close()
    # the page's stream: a vote at the other server arrives
    stream = open_stream(browser, "/u/stream")
    try:
        vote(scene, "Bailey", "bob", scene.times[1], "MAYBE")
        data = stream.next().json()
        assert data["event"] == scene.event_id
        assert data["change"] == {
            "kind": "voted",
            "by": "bob",
            "option": scene.times[1],
            "choice": "maybe",
        }
    finally:
        stream.close()


def test_reconnecting_after_a_restart_gets_exactly_the_missed_changes(scene: Scene) -> None:
    herd = scene.herd
    browser = session(scene, "bob")
    stream = open_stream(browser, f"/e/{scene.event_id}/stream")
    vote(scene, "Bona", "alice", scene.times[1], "MAYBE")
    seen = stream.next()
    stream.close()
    assert seen.id is not None
    herd.terminate("Bailey")
    vote(scene, "Bona", "carol", scene.times[1], "NO")
    with Session(herd.ports["Bona"], "carol", scene.tokens["carol"]) as carol:
        carol.event(f"COMMENT {scene.event_id} line one")
    herd.start("Bailey")
    herd.wait_answering("Bailey")
    herd.wait_links()
    with Session(herd.ports["Bailey"], "bob", scene.tokens["bob"]) as bob:
        bob.wait_event(scene.event_id, lambda event: len(event["comments"]) == 1)
    resumed = open_stream(browser, f"/e/{scene.event_id}/stream", seen.id)
    try:
        missed = [resumed.next(), resumed.next()]
        kinds = [event.json()["change"]["kind"] for event in missed]  # type: ignore[index]
        assert kinds == ["voted", "commented"]
        ids = [event.id for event in missed]
        assert all(mark is not None and mark > seen.id for mark in ids)
        assert ids == sorted(ids)  # type: ignore[type-var]
        assert "state" not in missed[0].json() and "state" in missed[1].json()
        comment = missed[1].json()["change"]["comment"]  # type: ignore[index]
        assert comment["text"] == "line one"  # type: ignore[index]
        resumed.read_for(1.5)
        assert not [event for event in resumed.events if event.name == "change"]
    finally:
        resumed.close()
    # from the newest id: nothing; from an id that is not a checkpoint: a reset
    again = open_stream(browser, f"/e/{scene.event_id}/stream", missed[1].id)
    again.read_for(1.0)
    assert not [event for event in again.events if event.name == "change"]
    again.close()
    broken = open_stream(browser, f"/e/{scene.event_id}/stream", "not-a-checkpoint")
    assert broken.next(name="reset").json() == {"reload": True}
    broken.close()


def _mails_about(scene: Scene, user: str, text: str) -> list[str]:
    found = []
    for mail in scene.smtp.mails():
        if f"{user}@example.net" not in mail.rcpt_to:
            continue
        part = mail.message.get_body(("plain",))
        body = "" if part is None else str(part.get_content())
        if text in body:
            found.append(mail.name)
    return found


def test_a_user_watching_live_gets_no_mail_for_the_change(scene: Scene) -> None:
    herd = scene.herd
    for user in ("bob", "carol"):
        with Session(herd.ports["Bailey"], user, scene.tokens[user]) as line:
            line.user_set("digest", "off")  # a comment is mailed at once, not in a digest
    stream = open_stream(session(scene, "bob"), f"/e/{scene.event_id}/stream")
    try:
        with Session(herd.ports["Bailey"], "alice", scene.tokens["alice"]) as alice:
            alice.event(f"COMMENT {scene.event_id} watched-live-1")
        assert stream.next().json()["change"]["kind"] == "commented"  # type: ignore[index]
        wait_until(
            lambda: _mails_about(scene, "carol", "watched-live-1"), 15.0, "carol's comment mail"
        )
        time.sleep(1.0)  # bob's would have gone out with carol's, from the same outbox
        assert _mails_about(scene, "bob", "watched-live-1") == []
        # with web_quiet no, the page and the mail both tell him
        with Session(herd.ports["Bailey"], "bob", scene.tokens["bob"]) as bob:
            assert bob.user_set("web_quiet", "no")["web_quiet"] is False
            with Session(herd.ports["Bailey"], "alice", scene.tokens["alice"]) as alice:
                alice.event(f"COMMENT {scene.event_id} watched-live-2")
            wait_until(
                lambda: _mails_about(scene, "bob", "watched-live-2"), 15.0, "bob's comment mail"
            )
            bob.user_set("web_quiet", "yes")
    finally:
        stream.close()
    # not watching any more (the server sees the closed connection at once): mailed again
    time.sleep(0.5)
    with Session(herd.ports["Bailey"], "alice", scene.tokens["alice"]) as alice:
        alice.event(f"COMMENT {scene.event_id} watched-live-3")
    wait_until(lambda: _mails_about(scene, "bob", "watched-live-3"), 15.0, "bob's comment mail")


def test_a_reader_that_stalls_is_dropped(scene: Scene) -> None:
    browser = session(scene, "alice", "Bailey")
    cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: small window
    reader.connect(("127.0.0.1", browser.port))
    try:
        request = f"GET /e/{scene.event_id}/stream HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n"
        reader.sendall(request.encode() + b"\r\n")
        assert b"200 OK" in reader.recv(512)  # then it reads no more
        votes = 3000  # ~0.5 KB a frame: more than every buffer on the way
        with Session(scene.herd.ports["Bona"], "carol", scene.tokens["carol"]) as carol:
            carol.send(
                b"".join(
                    f"VOTE {scene.event_id} {scene.times[0]} {('YES', 'NO')[n % 2]}\n".encode()
                    for n in range(votes)
                )
            )
            for _ in range(votes):
                assert carol.line().startswith(b"EVENT ")
            carol.event(f"COMMENT {scene.event_id} after-the-votes")
        with Session(scene.herd.ports["Bailey"], "bob", scene.tokens["bob"]) as bob:
            bob.wait_event(
                scene.event_id,
                lambda event: any(c["text"] == "after-the-votes" for c in event["comments"]),
            )
        time.sleep(0.5)  # its frames are written on the turn after it is applied
        received, ended = b"", False
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                reader.settimeout(deadline - time.monotonic())
                chunk = reader.recv(65536)
                if not chunk:
                    ended = True
                    break
                received += chunk
        except ConnectionResetError:
            ended = True  # dropped at once: what waited was thrown away
        except TimeoutError:
            pass
        changes = received.count(b"event: change")
        assert ended, f"still open after {changes} changes, {len(received)} bytes"
        assert changes < votes
    finally:
        reader.close()
