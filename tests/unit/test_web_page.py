"""The web's pure parts: the event page model, the positions figure, the request rules, and the
templates' escaping (a title or comment with HTML or script in it is shown as text)."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herd.ops import (
    OPERATOR,
    AddComment,
    AddPlace,
    AddTime,
    AddUser,
    CastVote,
    Choice,
    CreateEvent,
    Decide,
    Invite,
    Op,
)
from herd.state import PlanningState
from web.model import event_page, local_time, zone_or_utc
from web.rules import (
    SECURITY_HEADERS,
    Cookie,
    access_line,
    cookie_values,
    origin_of,
    read_flash,
    same_origin,
    write_flash,
)
from web.svg import SIZE, distance_km, positions_figure
from web.templates import WebTemplates, read_static

T0 = 1_796_000_000_000_000_000
SCRIPT = "<script>alert('x')</script>"


def planned(*extra: Op) -> PlanningState:
    state = PlanningState()
    ops = [
        *(Op(f"u{n}", T0, OPERATOR, AddUser(user)) for n, user in enumerate("abcd")),
        Op("E", T0 + 1, "a", CreateEvent(f"Dinner {SCRIPT}")),
        Op("i", T0 + 2, "a", Invite("E", ("b", "c", "d"))),
        Op("t1", T0 + 3, "a", AddTime("E", 1_893_524_400)),  # 2030-01-01T19:00Z
        Op("t2", T0 + 4, "a", AddTime("E", 1_893_610_800)),
        Op("p1", T0 + 5, "b", AddPlace("E", "Chez <b>Paul</b>", 48.85, 2.35)),
        Op("p2", T0 + 6, "b", AddPlace("E", "Nowhere", None, None)),
        Op("v1", T0 + 7, "b", CastVote("E", "t2", Choice.YES)),
        Op("v2", T0 + 8, "c", CastVote("E", "t2", Choice.MAYBE)),
        Op("v3", T0 + 9, "c", CastVote("E", "t1", Choice.YES)),
        Op("v4", T0 + 10, "d", CastVote("E", "t1", Choice.NO)),
        Op("v5", T0 + 11, "b", CastVote("E", "p1", Choice.NO)),
        Op("c1", T0 + 12, "c", AddComment("E", f"I'll bring {SCRIPT} & wine")),
        *extra,
    ]
    for each in ops:
        state.apply(each)
    return state


def page_of(state: PlanningState, viewer: str = "b", zone: str = "Europe/Paris") -> object:
    event = state.event("E")
    assert event is not None
    return event_page(event, viewer, zone)


def test_the_model_tallies_and_leads() -> None:
    page = page_of(planned())
    assert [row.id for row in page.times] == ["t1", "t2"]
    t1, t2 = page.times
    assert (t1.yes, t1.maybe, t1.no) == (("c",), (), ("d",))
    assert (t2.yes, t2.maybe, t2.no) == (("b",), ("c",), ())
    assert page.leading_time is not None and page.leading_time.id == "t2"  # 1 yes + 1 maybe
    assert t2.leading and not t1.leading
    assert page.leading_place is None  # only a NO on places
    assert t2.mine == "yes" and t1.mine is None
    assert t1.label == "Tue 1 Jan 2030 20:00 CET" and t1.iso == "2030-01-01T19:00:00Z"
    assert page.places[0].position == (48.85, 2.35) and page.places[1].position is None
    grid = {row.user: row.answers for row in page.answers}
    assert list(grid) == ["a", "b", "c", "d"]  # the organiser first
    assert grid["c"] == ("yes", "maybe", "", "")
    assert page.not_answered == ()
    assert page.comments[0].by == "c" and SCRIPT in page.comments[0].text
    assert page.zone == "Europe/Paris" and page.open


def test_a_decision_leads_whatever_the_votes() -> None:
    page = page_of(planned(Op("s", T0 + 20, "a", Decide("E", "t1", "p2"))))
    assert page.status == "decided"
    assert page.leading_time is not None and page.leading_time.id == "t1"
    assert page.leading_place is not None and page.leading_place.id == "p2"
    assert page.times[0].decided and not page.times[1].decided


def test_an_unknown_zone_falls_back_to_utc() -> None:
    page = page_of(planned(), zone="Not/AZone")
    assert page.zone == "UTC" and page.times[0].label.endswith("19:00 UTC")
    assert zone_or_utc("../../etc/passwd").key == "UTC"
    assert local_time(0, zone_or_utc("UTC")) == "Thu 1 Jan 1970 00:00 UTC"


def test_the_model_is_linear_in_participants_times_options() -> None:
    """50 invitees, 20 options, everyone voting: one page model, and the work counted."""
    state = PlanningState()
    users = [f"u{n}" for n in range(51)]
    for user in users:
        state.apply(Op(f"add-{user}", T0, OPERATOR, AddUser(user)))
    state.apply(Op("E", T0 + 1, "u0", CreateEvent("Big")))
    state.apply(Op("i", T0 + 2, "u0", Invite("E", tuple(users[1:]))))
    for n in range(20):
        state.apply(Op(f"t{n}", T0 + 3 + n, "u0", AddTime("E", 1_893_524_400 + n * 3600)))
    for m, user in enumerate(users):
        for n in range(20):
            choice = (Choice.YES, Choice.MAYBE, Choice.NO)[(m + n) % 3]
            state.apply(
                Op(f"v{m}-{n}", T0 + 100 + m * 20 + n, user, CastVote("E", f"t{n}", choice))
            )
    page = page_of(state, "u7", "UTC")
    assert len(page.answers) == 51 and all(len(row.answers) == 20 for row in page.answers)
    assert sum(len(r.yes) + len(r.maybe) + len(r.no) for r in page.times) == 51 * 20


# --- the figure -------------------------------------------------------------------------------


def test_the_figure_centres_the_leading_place() -> None:
    figure = positions_figure(
        (48.85, 2.35), "Chez <b>Paul</b>", [("b", (48.86, 2.35)), ("c", (48.85, 2.45))]
    )
    assert figure is not None and figure.centre_is_place
    assert [p.user for p in figure.people] == ["b", "c"]  # nearest first
    north, east = figure.people
    assert north.y < SIZE / 2 and abs(north.x - SIZE / 2) < 1
    assert east.x > SIZE / 2 and abs(east.y - SIZE / 2) < 1
    assert "<b>" not in figure.svg and "&lt;b&gt;" in figure.svg
    ET.fromstring(figure.svg)  # well-formed XML


def test_nobody_with_a_position_draws_nothing() -> None:
    assert positions_figure((0.0, 0.0), "X", []) is None


positions = st.tuples(st.floats(-90, 90, allow_nan=False), st.floats(-180, 180, allow_nan=False))
names = st.text(min_size=1, max_size=80)


@given(
    st.one_of(st.none(), positions),
    st.one_of(st.none(), names),
    st.lists(st.tuples(names, positions), min_size=1, max_size=30),
)
def test_any_positions_and_names_give_a_safe_figure_inside_its_box(
    place: tuple[float, float] | None,
    name: str | None,
    people: list[tuple[str, tuple[float, float]]],
) -> None:
    figure = positions_figure(place, name, people)
    assert figure is not None
    for person in figure.people:
        assert 0 <= person.x <= SIZE and 0 <= person.y <= SIZE
        assert math.isfinite(person.km) and 0 <= person.km <= 20_016
    svg = figure.svg
    assert "<script" not in svg.lower()
    # every number in an attribute is finite
    for value in re.findall(r'\s(?:x|y|cx|cy|r)="([^"]*)"', svg):
        assert math.isfinite(float(value))
    ET.fromstring(svg)  # well-formed, whatever the names hold


def test_distances() -> None:
    assert distance_km((0, 0), (0, 0)) == 0
    assert abs(distance_km((48.8566, 2.3522), (51.5074, -0.1278)) - 343.5) < 1
    assert abs(distance_km((0, 179.9), (0, -179.9)) - 22.2) < 0.5


# --- rules ------------------------------------------------------------------------------------


def test_no_query_value_reaches_the_access_log() -> None:
    token = "Ym9iOkIuMToxNzk2NTc5OTQ3OjC7jHxf3L-nTqRjbcv54ClL"
    line = access_line(b"GET", f"/e/B.1?t={token}&x=1".encode(), 303, 0)
    assert line == b"GET /e/B.1?t=...&x=... 303 0"
    assert token.encode() not in access_line(b"GET", f"/e/B.1?{token}".encode(), 403, 10)
    assert token.encode() not in access_line(b"GET", f"/e/B.1?{token}={token}".encode(), 403, 1)
    hostile = access_line(b"GE\nT", b"/e/\x1b[31m\r\nfake line", 404, None)
    assert b"\n" not in hostile and b"\x1b" not in hostile and b"\r" not in hostile


def test_cookies() -> None:
    cookie = Cookie("renga_session", "abc", "/e/B.1", 60, secure=True)
    assert cookie.header() == (
        b"renga_session=abc; Path=/e/B.1; Max-Age=60; HttpOnly; SameSite=Lax; Secure"
    )
    assert b"Secure" not in Cookie("a", "b", "/", 1, secure=False).header()
    headers = [b"a=1; renga_session=first; renga_session=se<c>", b"renga_session=third"]
    assert cookie_values(headers, "renga_session") == ["first", "third"]


def test_origins() -> None:
    assert origin_of("https://renga.example.org/") == "https://renga.example.org"
    assert origin_of("http://127.0.0.1:8001") == "http://127.0.0.1:8001"
    assert origin_of("https://x.org:443/base") == "https://x.org"
    allowed = {"http://127.0.0.1:8001"}
    assert same_origin(b"http://127.0.0.1:8001", None, allowed)
    assert not same_origin(b"http://evil.example", b"same-origin", allowed)
    assert not same_origin(b"null", None, allowed)
    assert not same_origin(None, b"cross-site", allowed)
    assert not same_origin(None, b"same-site", allowed)
    assert same_origin(None, b"same-origin", allowed)
    assert same_origin(None, None, allowed)  # judged by the CSRF token alone


def test_flash_round_trips_and_bounds() -> None:
    assert read_flash(write_flash("Not done: <b>x</b>")) == "Not done: <b>x</b>"
    assert len(read_flash(write_flash("x" * 1000)) or "") == 300
    assert read_flash("%%%") is None and read_flash("") is None


def test_the_security_headers() -> None:
    policy = SECURITY_HEADERS[b"Content-Security-Policy"]
    assert b"default-src 'self'" in policy and b"frame-ancestors 'none'" in policy
    assert b"unsafe-inline" not in policy
    assert SECURITY_HEADERS[b"Referrer-Policy"] == b"same-origin"
    assert SECURITY_HEADERS[b"X-Content-Type-Options"] == b"nosniff"


# --- templates --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def templates() -> WebTemplates:
    return WebTemplates()


def test_the_page_shows_titles_names_and_comments_as_text(templates: WebTemplates) -> None:
    state = planned()
    page = page_of(state)
    figure = positions_figure((48.85, 2.35), "Chez <b>Paul</b>", [("b", (48.86, 2.35))])
    html = templates.page(
        "event",
        {"page": page, "figure": figure, "csrf": "CSRF", "flash": SCRIPT, "server": "Bona"},
    ).decode()
    assert "<script" not in html.lower()
    assert html.count("&lt;script&gt;") >= 3  # title (twice: <title>, <h1>), comment, flash
    assert "<b>Paul" not in html
    assert 'name="csrf" value="CSRF"' in html
    assert 'action="/e/E/vote"' in html and 'action="/e/E/comment"' in html
    assert " style=" not in html and "<style" not in html  # nothing inline for the CSP to refuse


def test_the_static_files_are_read_once_and_typed() -> None:
    files = read_static()
    assert files["renga.css"].content_type.startswith(b"text/css")
