"""The JSON shapes (pure): the event as the API shows it, built from the page's model, so the
two agree; the request bodies the API reads, hostile ones refused with the right code; the
line protocol's refusals as HTTP statuses."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herd.api import CommentOn, VoteOn
from herd.ops import Choice
from herd.wire.commands import parse_client_port_line
from tests.unit.test_web_page import SCRIPT, page_of, planned
from web.model import EventPage
from web.shapes import (
    ApiError,
    bearer_token,
    comment_line,
    error_shape,
    event_shape,
    read_object,
    refusal,
    vote_line,
)


def test_the_shape_is_the_pages_model() -> None:
    page = page_of(planned())
    assert isinstance(page, EventPage)
    shape = event_shape(page)
    assert json.loads(json.dumps(shape)) == shape  # plain JSON values only
    assert list(shape) == [
        *("id", "title", "organiser", "status", "viewer", "zone", "times", "places"),
        *("leading", "answers", "not_answered", "comments"),
    ]
    assert shape["title"] == f"Dinner {SCRIPT}"  # text, never escaped here: JSON is not HTML
    times = shape["times"]
    assert isinstance(times, list)
    t1, t2 = times
    assert t1 == {
        "id": "t1",
        "at": "2030-01-01T19:00:00Z",
        "local": "Tue 1 Jan 2030 20:00 CET",
        "by": "a",
        "yes": ["c"],
        "maybe": [],
        "no": ["d"],
        "tally": {"yes": 1, "maybe": 0, "no": 1},
        "mine": None,
        "leading": False,
        "decided": False,
    }
    assert t2["mine"] == "yes" and t2["leading"] is True
    places = shape["places"]
    assert isinstance(places, list)
    assert (places[0]["lat"], places[0]["lon"]) == (48.85, 2.35)
    assert (places[1]["lat"], places[1]["lon"]) == (None, None)
    assert shape["leading"] == {"time": "t2", "place": None}
    answers = shape["answers"]
    assert isinstance(answers, list)
    assert answers[0] == {"user": "a", "organiser": True, "answers": {}}
    assert answers[1] == {"user": "b", "organiser": False, "answers": {"t2": "yes", "p1": "no"}}
    comments = shape["comments"]
    assert isinstance(comments, list)
    assert set(comments[0]) == {"id", "by", "at", "local", "text"}


def test_error_shape() -> None:
    assert error_shape("bad-json", "no") == {"error": {"code": "bad-json", "message": "no"}}


@pytest.mark.parametrize(
    ("reply", "status", "code"),
    [
        (b"ERR no-such-event: no event X\n", 404, "no-such-event"),
        (b"ERR not-invited: you take no part in X\n", 403, "not-invited"),
        (b"ERR cancelled: X is cancelled\n", 409, "cancelled"),
        (b"ERR no-such-option: X has no option Y\n", 422, "no-such-option"),
        (b"ERR something-new: what\n", 422, "something-new"),
        (b"? VOTE x\n", 500, "internal"),
    ],
)
def test_refusals_map_to_statuses(reply: bytes, status: int, code: str) -> None:
    found = refusal(reply)
    assert found is not None and (found.status, found.code) == (status, code)


def test_an_event_reply_is_no_refusal() -> None:
    assert refusal(b'EVENT {"id":"E"}\n') is None


def test_bearer_tokens() -> None:
    assert bearer_token([b"Bearer abc-_09"]) == "abc-_09"
    assert bearer_token([b"bearer   abc"]) == "abc"
    for values, code in (
        ([], "no-token"),
        ([b"Basic abc"], "bad-token"),
        ([b"Bearer a b"], "bad-token"),
        ([b"Bearer abc", b"Bearer abc"], "bad-token"),
        ([b"Bearer " + b"a" * 401], "bad-token"),
        ([b"Bearer \xff"], "bad-token"),
    ):
        with pytest.raises(ApiError) as caught:
            bearer_token(values)
        assert (caught.value.status, caught.value.code) == (401, code)


def test_a_vote_body_is_a_vote_line() -> None:
    line = vote_line("B.1", b'{"option": "B.2", "choice": "maybe"}')
    assert line == VoteOn("B.1", "B.2", Choice.MAYBE).to_line()
    assert line == b"VOTE B.1 B.2 MAYBE\n"


def test_a_comment_is_one_line() -> None:
    assert comment_line("B.1", json.dumps({"text": " hi <b>x</b> "}).encode()) == (
        CommentOn("B.1", "hi <b>x</b>").to_line()
    )


@given(st.text(max_size=50))
def test_any_text_makes_one_line_or_is_refused(text: str) -> None:
    """Whatever a client sends, the line run is one protocol line naming the event, or the
    request is refused: no text can smuggle a second command."""
    try:
        line = comment_line("B.1", json.dumps({"text": text}).encode())
    except ApiError as error:
        assert error.status in (400, 422)
        return
    assert line.count(b"\n") == 1 and line.endswith(b"\n") and b"\r" not in line
    assert parse_client_port_line(line.rstrip(b"\n")) == CommentOn("B.1", text.strip())


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "bad-json"),
        (b"{", "bad-json"),
        (b"[" * 5000, "bad-json"),
        (b'{"text": "a", "text": "b"}', "bad-json"),
        (b'{"text": Infinity}', "bad-json"),
        (b'"text"', "bad-field"),
        (b"{}", "bad-field"),
        (b'{"text": null}', "bad-field"),
        (b'{"text": ["a"]}', "bad-field"),
        (b'{"text": "\\udc80"}', "bad-json"),
    ],
)
def test_hostile_bodies_are_refused(body: bytes, code: str) -> None:
    with pytest.raises(ApiError) as caught:
        read_object(body, ("text",))
    assert caught.value.code == code and caught.value.status == 400
