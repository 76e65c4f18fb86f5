"""The JSON API end to end, against real `herd run` processes with `[web]`: every example
exchange of docs/web.md's "JSON API" section runs as written (a small runner below: the
request is sent as shown, the status line, the shown headers and the body are matched, the
body re-laid out as the doc lays it out; `…` matches any text in a line, a line of `…` alone
any lines, ids bind as in tests/support/doc_sessions.py), then what the doc does not show: a
revoked token, an expired and a forged one, a token in the address, a body too large, bad
JSON, a wrong method, a vote seen on the other server, and no token in any log.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from herd.tokens import link_token
from tests.support.doc_sessions import Bindings, match
from tests.support.herd import REPO, SECRET
from tests.support.lines import Session, option_ids
from tests.support.smtp import SmtpProcess

from .test_web import WebHerd, mail_link, web_herd

DOC = REPO / "docs" / "web.md"
NAMES = ("Bailey", "Bona")
LINKS = (("Bailey", "Bona"),)
_TOKEN = re.compile(r"<(\w+)'s link token(?: for ([\w.]+))?>")
_FIRST = re.compile(r"^<!--\s*first:\s*(\w+) sends (.+?)\s*-->$")


@dataclass
class ApiScene:
    herd: WebHerd
    smtp: SmtpProcess
    tokens: dict[str, str]  # line tokens
    ids: dict[str, str]  # doc id -> real id
    seen_tokens: set[str] = field(default_factory=set)

    def link(self, user: str, event: str, expires: int | None = None) -> str:
        found = link_token(
            SECRET.encode(), user, event, expires or int(time.time()) + 3600, self.generation(user)
        )
        self.seen_tokens.add(found)
        return found

    def generation(self, user: str) -> int:
        return self._generations.get(user, 0)

    _generations: dict[str, int] = field(default_factory=dict)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory, places_seed: Path) -> Iterator[ApiScene]:
    root = tmp_path_factory.mktemp("web-api")
    with web_herd(root, places_seed) as (herd, smtp, tokens):
        with Session(herd.ports["Bailey"], "alice", tokens["alice"]) as alice:
            event = alice.event("PLAN Dinner")["id"]
            alice.event(f"PROPOSE {event} TIME 2031-06-01T18:00Z")
            alice.event(f"PROPOSE {event} PLACE +48.8534+002.3488 Chez Paul")
            shown = alice.event(f"INVITE {event} bob carol")
            time_id, place_id = option_ids(shown, "times")[0], option_ids(shown, "places")[0]
            alice.event(f"VOTE {event} {time_id} YES")
            other = alice.event("PLAN Lunch")["id"]
            alice.event(f"INVITE {other} bob")
        ids = {
            "Bailey.e3ce36.19": event,
            "Bailey.e3ce36.20": time_id,
            "Bailey.e3ce36.21": place_id,
            "Bailey.e3ce36.22": other,
        }
        yield ApiScene(herd, smtp, tokens, ids)


# --- the doc's examples ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exchange:
    line: int
    first: tuple[str, str] | None  # (user, line) run before the request
    request: tuple[str, ...]
    response: tuple[str, ...]


def doc_exchanges(text: str, section: str = "JSON API") -> list[Exchange]:
    """The ```http blocks under `## <section>` (and its sub-headings)."""
    found: list[Exchange] = []
    lines = text.split("\n")
    inside = False
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("## "):
            inside = line[3:].strip() == section
        if inside and line.strip() == "```http":
            start = index + 1
            above = _FIRST.match(lines[index - 1].strip())
            end = lines.index("```", start)
            body = lines[start:end]
            split = next(i for i, text in enumerate(body) if text.startswith("HTTP/1.1 "))
            request = body[:split]
            while request and not request[-1].strip():
                request.pop()
            found.append(
                Exchange(
                    start,
                    None if above is None else (above[1], above[2]),
                    tuple(request),
                    tuple(body[split:]),
                )
            )
            index = end
        index += 1
    return found


def layout(value: object, indent: int = 0) -> list[str]:
    """JSON as the doc lays it out: the outer object one member a line; inside it, a value of
    at most two levels that fits in 140 columns on one line, and a list of scalars always."""
    pad = " " * indent
    inline = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    if not isinstance(value, dict | list):
        return [pad + inline]
    scalars = all(not isinstance(v, dict | list) for v in _members(value))
    if (isinstance(value, list) and scalars) or (
        indent > 0 and _depth(value) <= 2 and len(pad) + len(inline) <= 140
    ):
        return [pad + inline]
    if isinstance(value, list):
        items = [layout(v, indent + 2) for v in value]
        out = [pad + "["]
    else:
        items = []
        for key, member in value.items():
            shown = layout(member, indent + 2)
            head = f"{pad}  {json.dumps(key, ensure_ascii=False)}: "
            items.append([head + shown[0].lstrip(), *shown[1:]])
        out = [pad + "{"]
    for position, item in enumerate(items):
        if position < len(items) - 1:
            item = [*item[:-1], item[-1] + ","]
        out.extend(item)
    out.append(pad + ("]" if isinstance(value, list) else "}"))
    return out


def _depth(value: object) -> int:
    if not isinstance(value, dict | list):
        return 0
    return 1 + max((_depth(v) for v in _members(value)), default=0)


def _members(value: dict[str, object] | list[object]) -> list[object]:
    return list(value.values()) if isinstance(value, dict) else list(value)


def match_lines(doc: list[str], got: list[str], bindings: Bindings) -> str | None:
    """None when `got` is what `doc` shows (a doc line `…` alone stands for any lines; a `,`
    after a line is the layout's and optional beside a `…` line)."""
    if not doc:
        return None if not got else f"unexpected lines from {got[0]!r}"
    head = doc[0].strip().rstrip(",")
    if head == "…":
        for skip in range(len(got) + 1):
            trial = Bindings(dict(bindings.values))
            if match_lines(doc[1:], got[skip:], trial) is None:
                bindings.values = trial.values
                return None
        return f"nothing after {doc[0]!r} matches"
    if not got:
        return f"missing {doc[0]!r}"
    expected, received = doc[0].rstrip(","), got[0].rstrip(",")
    problem = match(expected, received.encode(), bindings)
    if problem is not None:
        return str(problem)
    return match_lines(doc[1:], got[1:], bindings)


def send(
    port: int, request: list[str], body: bytes | None
) -> tuple[int, str, dict[str, str], bytes]:
    """(status, reason, headers by lower-case name, body) of one request sent as shown."""
    method, path, _ = request[0].split(" ")
    headers = dict(line.split(": ", 1) for line in request[1:])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        got = {name.lower(): value for name, value in response.getheaders()}
        return response.status, response.reason, got, raw
    finally:
        connection.close()


def run_exchange(scene: ApiScene, exchange: Exchange, bindings: Bindings) -> None:
    where = f"docs/web.md:{exchange.line}"
    if exchange.first is not None:
        user, line = exchange.first
        with Session(scene.herd.ports["Bailey"], user, scene.tokens[user]) as session:
            session.event(bindings.substitute(line.encode()).decode())

    def token(found: re.Match[str]) -> str:
        event = found[2] or "Bailey.e3ce36.19"
        return scene.link(found[1], bindings.values[event.encode()].decode())

    request = [
        bindings.substitute(_TOKEN.sub(token, line).encode()).decode() for line in exchange.request
    ]
    blank = request.index("") if "" in request else len(request)
    body = "\n".join(request[blank + 1 :]).encode() or None
    code, reason, headers, raw = send(scene.herd.web_ports["Bailey"], request[:blank], body)
    status = f"HTTP/1.1 {code} {reason}"
    problem = match(exchange.response[0], status.encode(), bindings)
    assert problem is None, f"{where}: {problem}"
    shown = list(exchange.response[1:])
    blank = shown.index("")
    for header in shown[:blank]:
        name, value = header.split(": ", 1)
        got = headers.get(name.lower())
        assert got is not None, f"{where}: no {name} header"
        problem = match(value, got.encode(), bindings)
        assert problem is None, f"{where}: {name}: {problem}"
    expected = [line for line in shown[blank + 1 :] if line.strip()]
    got_lines = layout(json.loads(raw))
    problem = match_lines(expected, got_lines, bindings)
    assert problem is None, f"{where}: {problem}\n" + "\n".join(got_lines)


def test_the_docs_examples_run_as_written(scene: ApiScene) -> None:
    exchanges = doc_exchanges(DOC.read_text(encoding="utf-8"))
    assert len(exchanges) >= 8
    bindings = Bindings()
    for doc, real in scene.ids.items():
        assert bindings.bind(doc.encode(), real.encode()) is None
    for exchange in exchanges:
        run_exchange(scene, exchange, bindings)


# --- what the doc does not show ----------------------------------------------------------------


def api(
    scene: ApiScene,
    method: str,
    path: str,
    token: str | None,
    body: bytes | None = None,
    content_type: str = "application/json",
    server: str = "Bailey",
) -> tuple[int, dict[str, str], dict[str, object]]:
    headers = {"Content-Type": content_type} if body is not None else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    connection = http.client.HTTPConnection("127.0.0.1", scene.herd.web_ports[server], timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, json.loads(raw) if raw else {}
    finally:
        connection.close()


def code_of(document: dict[str, object]) -> str:
    error = document["error"]
    assert isinstance(error, dict)
    return str(error["code"])


def test_a_token_from_a_mail_reads_the_event_and_votes_reach_the_other_server(
    scene: ApiScene,
) -> None:
    event = scene.ids["Bailey.e3ce36.19"]
    _, _, token = mail_link(scene, "carol", event)  # type: ignore[arg-type]
    scene.seen_tokens.add(token)
    status, headers, document = api(scene, "GET", f"/api/events/{event}", token)
    assert status == 200 and headers["content-type"] == "application/json"
    assert "set-cookie" not in headers and "access-control-allow-origin" not in headers
    shown = document["event"]
    assert isinstance(shown, dict) and shown["viewer"] == "carol"
    vote = json.dumps({"option": scene.ids["Bailey.e3ce36.20"], "choice": "maybe"}).encode()
    status, _, document = api(scene, "POST", f"/api/events/{event}/votes", token, vote)
    assert status == 200
    # the same token at Bona, which learnt the vote from Bailey
    deadline = time.monotonic() + 5.0
    while True:
        status, _, document = api(scene, "GET", f"/api/events/{event}", token, server="Bona")
        assert status == 200
        times = document["event"]["times"]  # type: ignore[index]
        if times[0]["maybe"] == ["carol"]:  # type: ignore[index]
            break
        assert time.monotonic() < deadline, document
        time.sleep(0.05)


def test_worthless_tokens_get_401_and_misplaced_ones_403(scene: ApiScene) -> None:
    event = scene.ids["Bailey.e3ce36.19"]
    path = f"/api/events/{event}"
    expired = link_token(SECRET.encode(), "bob", event, int(time.time()) - 1, 0)
    forged = link_token(b"not the secret", "bob", event, 2**40, 0)
    for token in (expired, forged, "x" * 401, "not a token"):
        status, headers, document = api(scene, "GET", path, token)
        assert status == 401 and code_of(document) == "bad-token", token
        assert headers["www-authenticate"].startswith("Bearer")
    scene.seen_tokens.update((expired, forged))
    # a token in the address is refused, even a good one
    good = scene.link("bob", event)
    status, _, document = api(scene, "GET", f"{path}?t={good}", None)
    assert status == 400 and code_of(document) == "token-in-query"
    # alice's token for another event; a genuine token for an event that does not exist
    status, _, document = api(
        scene, "GET", path, scene.link("alice", scene.ids["Bailey.e3ce36.22"])
    )
    assert status == 403 and code_of(document) == "forbidden"
    status, _, document = api(
        scene, "GET", "/api/events/Bailey.ffffff.9", scene.link("bob", "Bailey.ffffff.9")
    )
    assert status == 404 and code_of(document) == "no-such-event"
    status, _, document = api(scene, "GET", "/api/nothing", good)
    assert status == 404 and code_of(document) == "not-found"
    status, headers, document = api(scene, "DELETE", path, good)
    assert status == 405 and headers["allow"] == "GET"


def test_hostile_bodies(scene: ApiScene) -> None:
    event = scene.ids["Bailey.e3ce36.19"]
    votes = f"/api/events/{event}/votes"
    token = scene.link("carol", event)
    option = scene.ids["Bailey.e3ce36.21"]
    cases: list[tuple[bytes, int, str]] = [
        (b"{", 400, "bad-json"),
        (b"[" * 2000 + b"]" * 2000, 400, "bad-json"),
        (b'{"option": "x", "option": "y", "choice": "yes"}', 400, "bad-json"),
        (b'{"option": NaN, "choice": "yes"}', 400, "bad-json"),
        (b"\xff\xfe", 400, "bad-json"),
        (b"[]", 400, "bad-field"),
        (json.dumps({"option": option}).encode(), 400, "bad-field"),
        (json.dumps({"option": option, "choice": "yes", "more": "x"}).encode(), 400, "bad-field"),
        (json.dumps({"option": 1, "choice": "yes"}).encode(), 400, "bad-field"),
        (json.dumps({"option": "x y", "choice": "yes"}).encode(), 400, "bad-field"),
    ]
    for body, status, code in cases:
        got, _, document = api(scene, "POST", votes, token, body)
        assert (got, code_of(document)) == (status, code), body[:60]
    comments = f"/api/events/{event}/comments"
    for text in ("two\nlines", "  ", "VOTE\r\nx", "\u2028"):
        body = json.dumps({"text": text}).encode()
        got, _, document = api(scene, "POST", comments, token, body)
        assert (got, code_of(document)) == (422, "bad-text"), text
    got, _, document = api(scene, "POST", comments, token, b'{"text": "\\ud800"}')
    assert (got, code_of(document)) == (400, "bad-json")
    big = json.dumps({"text": "x" * 5000}).encode()  # the herd's body_bytes is 4096
    got, _, document = api(scene, "POST", comments, token, big)
    assert (got, code_of(document)) == (413, "body-too-large")
    got, _, document = api(
        scene, "POST", comments, token, b"{}", "application/json; charset=latin-1"
    )
    assert (got, code_of(document)) == (415, "unsupported-media-type")
    # nothing of that reached the event
    _, _, document = api(scene, "GET", f"/api/events/{event}", token)
    shown = document["event"]
    assert isinstance(shown, dict)
    assert all(c["by"] != "carol" for c in shown["comments"])  # type: ignore[attr-defined]


def test_a_revoked_token_gets_403(scene: ApiScene) -> None:
    event = scene.ids["Bailey.e3ce36.19"]
    token = scene.link("carol", event)
    assert api(scene, "GET", f"/api/events/{event}", token)[0] == 200
    with Session(scene.herd.ports["Bona"], "carol", scene.tokens["carol"]) as carol:
        assert carol.request(b"LINKS REVOKE").startswith(b"LINKS ")
    scene._generations["carol"] = 1
    deadline = time.monotonic() + 5.0
    while True:
        status, _, document = api(scene, "GET", f"/api/events/{event}", token)
        if status == 403:
            assert code_of(document) == "forbidden"
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert api(scene, "GET", f"/api/events/{event}", scene.link("carol", event))[0] == 200


def test_no_token_in_any_log(scene: ApiScene) -> None:
    assert scene.seen_tokens
    for name in NAMES:
        log = (scene.herd.data_dir / f"{name}.log").read_text(errors="replace")
        assert "/api/events/" in log or name == "Bona"
        for token in scene.seen_tokens:
            assert token not in log, (name, token[:12])
