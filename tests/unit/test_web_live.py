"""The live streams' rules (`web.live`, pure: framing, checkpoints, what a frame says, where a
reconnecting stream resumes) and the hub's bounds (`web.stream`: limits, a stalled reader
dropped), the latter in process with a stepped clock and stand-in requests."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock as SteppedClock
from twisted.web.test.requesthelper import DummyRequest

from herd.clock import Clock
from herd.config import WebConfig
from herd.ops import (
    OPERATOR,
    AddComment,
    AddTime,
    AddUser,
    CastVote,
    Choice,
    CreateEvent,
    Invite,
    Op,
)
from herd.state import PlanningState
from web.live import (
    HEARTBEAT,
    RESET,
    EventHistory,
    change_data,
    change_record,
    checkpoint,
    event_state,
    frame,
    is_checkpoint,
    resume,
    start_frame,
)
from web.stream import StreamHub

T0 = 1_796_000_000_000_000_000


def parse(stream: bytes) -> list[dict[str, str]]:
    """A reader as the HTML standard's EventSource parses a stream: lines end with CR, LF or
    CRLF; `data` fields are joined with LF; a blank line dispatches."""
    events: list[dict[str, str]] = []
    current: dict[str, list[str]] = {}
    for line in re.split(r"\r\n|\r|\n", stream.decode("utf-8", "surrogateescape")):
        if line == "":
            if current:
                events.append({key: "\n".join(values) for key, values in current.items()})
            current = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        current.setdefault(name, []).append(value.removeprefix(" "))
    return events


@given(st.text())
def test_no_line_break_in_the_data_ends_the_event_or_starts_a_field(data: str) -> None:
    mark = checkpoint(T0, "Bailey.1.2")
    events = parse(frame("change", data, mark))
    assert events == [{"id": mark, "event": "change", "data": re.sub(r"\r\n|\r", "\n", data)}]


def test_a_forged_field_in_the_data_stays_data() -> None:
    data = 'x\n\nid: 9\nevent: reset\ndata: {"reload":true}\r\nretry: 1'
    framed = frame("change", data)
    assert b"\nid:" not in framed and b"\nevent: reset" not in framed
    assert parse(framed)[0]["data"].splitlines()[1:4] == ["", "id: 9", "event: reset"]


@pytest.mark.parametrize("bad", ["1\n2", "", "0" * 20, "x" * 20 + ".a", f"{T0:020d}.a b"])
def test_an_id_is_a_checkpoint_or_refused(bad: str) -> None:
    assert not is_checkpoint(bad)
    with pytest.raises(ValueError, match="checkpoint"):
        frame("change", "{}", bad)


def test_an_event_name_is_a_plain_word() -> None:
    with pytest.raises(ValueError, match="event name"):
        frame("change\ndata: x", "{}")


def test_the_stream_starts_with_a_retry_and_hello_and_comments_are_heartbeats() -> None:
    start = start_frame()
    assert start.startswith(b"retry: 2000\n\n")
    assert parse(start) == [{"retry": "2000"}, {"event": "hello", "data": "{}"}]
    assert parse(HEARTBEAT) == []
    assert parse(RESET) == [{"event": "reset", "data": '{"reload":true}'}]


@given(
    st.tuples(
        st.integers(0, 2**63), st.from_regex(r"[A-Za-z0-9_-]{1,8}\.[0-9]{1,3}", fullmatch=True)
    ),
    st.tuples(
        st.integers(0, 2**63), st.from_regex(r"[A-Za-z0-9_-]{1,8}\.[0-9]{1,3}", fullmatch=True)
    ),
)
def test_checkpoints_sort_as_their_times(a: tuple[int, str], b: tuple[int, str]) -> None:
    if a[0] != b[0]:
        assert (checkpoint(*a) < checkpoint(*b)) == (a[0] < b[0])
    assert is_checkpoint(checkpoint(*a))


def _record(n: int) -> dict[str, object]:
    return {"kind": "voted", "n": n}


def test_a_history_keeps_order_drops_the_oldest_and_knows_its_floor() -> None:
    history = EventHistory(limit=3)
    marks = [checkpoint(T0 + n, f"s.1.{n}") for n in range(5)]
    assert history.add(marks[2], _record(2)) and history.add(marks[0], _record(0))
    assert history.add(marks[1], _record(1))  # late: filed in its place
    assert not history.add(marks[1], _record(1))  # held already
    assert history.checkpoints == marks[:3] and history.floor is None
    assert history.knows("0" * 20 + ".x")
    assert history.add(marks[3], _record(3))
    assert history.floor == marks[0] and history.checkpoints == marks[1:4]
    assert not history.add(marks[0], _record(0))  # older than what is known: not again
    assert history.knows(marks[0]) and not history.knows(checkpoint(T0 - 1, "s.1.0"))
    assert [mark for mark, _ in history.after(marks[1])] == marks[2:4]
    assert history.latest() == marks[3]


def test_resume_merges_the_events_in_order_and_resets_what_it_cannot_resume() -> None:
    one, two = EventHistory(10), EventHistory(10)
    marks = [checkpoint(T0 + n, f"s.1.{n}") for n in range(6)]
    for n, mark in enumerate(marks):
        (one if n % 2 else two).add(mark, _record(n))
    histories = {"one": one, "two": two}
    assert resume(None, histories, None).missed == ()
    got = resume(marks[1], histories, None)
    assert not got.reset
    assert [(mark, event) for mark, event, _ in got.missed] == [
        (marks[2], "two"),
        (marks[3], "one"),
        (marks[4], "two"),
        (marks[5], "one"),
    ]
    assert resume(marks[5], histories, None).missed == []
    assert resume("42", histories, None).reset  # not a checkpoint
    assert resume(marks[0], histories, marks[1]).reset  # older than the start's replay
    small = EventHistory(2)
    for n, mark in enumerate(marks):
        small.add(mark, _record(n))
    assert resume(marks[2], {"one": small}, None).reset  # marks[3] was dropped for room
    assert not resume(marks[3], {"one": small}, None).reset


def planned() -> tuple[PlanningState, list[Op]]:
    state = PlanningState()
    ops = [
        *(Op(f"u{n}", T0, OPERATOR, AddUser(user)) for n, user in enumerate("abc")),
        Op("E", T0 + 1, "a", CreateEvent("Dinner <script>")),
        Op("i", T0 + 2, "a", Invite("E", ("b", "c"))),
        Op("t1", T0 + 3, "a", AddTime("E", 1_893_524_400)),
        Op("t2", T0 + 4, "a", AddTime("E", 1_893_610_800)),
        Op("v1", T0 + 5, "b", CastVote("E", "t2", Choice.YES)),
        Op("c1", T0 + 6, "c", AddComment("E", "line one\nline two </script>")),
    ]
    for op in ops:
        state.apply(op)
    return state, ops


def test_a_change_record_and_the_event_state_say_what_the_page_needs() -> None:
    state, ops = planned()
    changes = state.apply(Op("v2", T0 + 7, "c", CastVote("E", "t1", Choice.MAYBE)))
    assert change_record(changes[0]) == {
        "kind": "voted",
        "by": "c",
        "option": "t1",
        "choice": "maybe",
    }
    comment = PlanningState()
    for op in ops[:-1]:
        comment.apply(op)
    record = change_record(comment.apply(ops[-1])[0])
    assert record["comment"] == {
        "id": "c1",
        "by": "c",
        "iso": "2026-11-30T00:53:20Z",
        "text": "line one\nline two </script>",
    }
    event = state.event("E")
    assert event is not None
    current = event_state(event)
    assert current == {
        "title": "Dinner <script>",
        "status": "planning",
        "participants": 3,
        "answered": 2,
        "comments": 1,
        "tallies": {"t1": [0, 1, 0], "t2": [1, 0, 0]},
        "leading_time": "t2",
        "leading_time_at": "2030-01-02T19:00:00Z",
        "leading_place": None,
        "leading_place_name": None,
        "decided": [],
    }  # no names: as small for 10,000 invitees as for 3
    data = change_data("E", record, current)
    assert "\n" not in data  # one data: line
    assert json.loads(data) == {"event": "E", "change": record, "state": current}


# --- the hub, in process ------------------------------------------------------------------------


class _Request(DummyRequest):
    """A DummyRequest that takes a push producer as the HTTP channel does."""

    def __init__(self, address: str = "10.0.0.1") -> None:
        super().__init__([b""])
        self.client = IPv4Address("TCP", address, 40000)
        self.producer: object = None
        self.channel = None

    def registerProducer(self, producer: object, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None


def _hub(**limits: int) -> tuple[StreamHub, SteppedClock, PlanningState]:
    state, _ = planned()
    stepped = SteppedClock()
    stepped.advance(T0 / 10**9)
    settings = WebConfig(
        heartbeat_seconds=15.0,
        idle_seconds=60.0,
        stream_buffer_bytes=1024,
        **limits,
    )
    hub = StreamHub(state, Clock.following(stepped), settings, b"secret", lambda work: work())
    hub.start([], complete=True)
    return hub, stepped, state


def _open(hub: StreamHub, request: _Request, user: str = "b", event: str | None = "E") -> object:
    return hub.open(request, user, 0, 2**40, event, None)


def test_streams_over_a_limit_are_refused_and_a_closed_one_frees_its_place() -> None:
    hub, _, _ = _hub(streams_per_user=2, streams_per_address=3, streams=4)
    first, second = _Request(), _Request()
    _open(hub, first)
    _open(hub, second)
    third = _Request()
    _open(hub, third)
    assert third.responseCode == 429 and third.responseHeaders.getRawHeaders(b"retry-after")
    assert hub.refused == 1 and hub.count() == 2
    _open(hub, _Request(), user="c")
    over_address = _Request()
    _open(hub, over_address, user="a")
    assert over_address.responseCode == 429
    _open(hub, _Request("10.0.0.2"), user="a")
    over_total = _Request("10.0.0.3")
    _open(hub, over_total, user="a", event=None)
    assert over_total.responseCode == 429 and hub.count() == 4
    first.finish()  # the client went away
    assert hub.count() == 3
    again = _Request()
    _open(hub, again)
    assert again.responseCode is None and hub.count() == 4


def test_a_stalled_reader_is_dropped_once_its_buffer_is_full_or_it_stalls_too_long() -> None:
    hub, stepped, state = _hub()
    slow, stuck, fine = _Request(), _Request(), _Request()
    for request in (slow, stuck, fine):
        _open(hub, request)
    assert hub.watching("b", "E") and not hub.watching("a", "E")
    slow.producer.pauseProducing()  # type: ignore[attr-defined]
    stuck.producer.pauseProducing()  # type: ignore[attr-defined]
    for n in range(6):  # a change's frame is ~300 bytes
        changes = state.apply(Op(f"v{n}x", T0 + 100 + n, "c", CastVote("E", "t1", Choice.YES)))
        hub.changed(changes[0], None)  # type: ignore[arg-type]
        stepped.advance(0)
    assert hub.dropped == 2 and hub.count() == 1  # both over 1024 bytes waiting
    assert len(fine.written) == 7  # the start, then each change at once
    resumed = _Request()
    _open(hub, resumed)
    resumed.producer.pauseProducing()  # type: ignore[attr-defined]
    stepped.advance(15)
    assert hub.count() == 2  # a heartbeat waits
    resumed.producer.resumeProducing()  # type: ignore[attr-defined]
    assert resumed.written[-1] == HEARTBEAT
    resumed.producer.pauseProducing()  # type: ignore[attr-defined]
    stepped.advance(75)  # stalled longer than idle_seconds, though little waits
    assert hub.count() == 1 and hub.dropped == 3


def test_a_user_stream_follows_every_event_of_the_user_and_resumes_across_them() -> None:
    hub, stepped, state = _hub()
    user = _Request()
    hub.open(user, "c", 0, 2**40, None, None)
    assert hub.watching("c", "any event")
    changes = state.apply(Op("vz", T0 + 200, "b", CastVote("E", "t1", Choice.NO)))
    hub.changed(changes[0], None)  # type: ignore[arg-type]
    stepped.advance(0)
    events = parse(b"".join(user.written))
    assert [event.get("event") for event in events] == [None, "hello", "change"]
    mark = events[-1]["id"]
    later = state.apply(Op("vy", T0 + 201, "a", CastVote("E", "t1", Choice.YES)))
    hub.changed(later[0], None)  # type: ignore[arg-type]
    stepped.advance(0)
    back = _Request()
    hub.open(back, "c", 0, 2**40, None, mark)
    resumed = parse(b"".join(back.written))
    assert [event["id"] for event in resumed if event.get("event") == "change"] == [
        checkpoint(T0 + 201, "vy")
    ]


def test_my_events_rows_say_what_the_live_state_says() -> None:
    """`web.mine`'s rows (the "my events" page) count the participants who answered as the
    page's script does from `event_state`; planning events first, newest first."""
    from herd.ops import Decide
    from web.mine import my_events

    state = PlanningState()
    ops = [Op(f"u{n}", T0, OPERATOR, AddUser(user)) for n, user in enumerate("abc")]
    for number, (event_id, title) in enumerate((("E1", "Old dinner"), ("E2", "New lunch"))):
        at = T0 + 10 * (number + 1)
        ops += [
            Op(event_id, at, "a", CreateEvent(title)),
            Op(f"{event_id}t", at + 1, "a", AddTime(event_id, 1_893_524_400)),
            Op(f"{event_id}i", at + 2, "a", Invite(event_id, ("b", "c"))),
        ]
    ops += [
        Op("v1", T0 + 30, "b", CastVote("E1", "E1t", Choice.YES)),
        Op("d1", T0 + 31, "a", Decide("E1", "E1t", "")),
    ]
    for op in ops:
        state.apply(op)
    rows = my_events(state.events_of("b"), "b", "Europe/Paris", lambda e: f"/e/{e}?t=x")
    assert [(row.id, row.status, row.link) for row in rows] == [
        ("E2", "planning", "/e/E2?t=x"),
        ("E1", "decided", "/e/E1?t=x"),
    ]
    old = rows[1]
    assert (old.answered, old.people, old.leading_place) == (1, 3, None)
    assert old.leading_time is not None and old.leading_time.endswith("CET")
    assert old.leading_time_iso == "2030-01-01T19:00:00Z"
    event = state.event("E1")
    assert event is not None
    live = event_state(event)
    assert (live["answered"], live["participants"]) == (old.answered, old.people)
    assert live["leading_time_at"] == old.leading_time_iso
    assert live["leading_place_name"] == old.leading_place
    assert live["title"] == event.title and live["status"] == old.status
