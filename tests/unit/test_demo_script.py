"""`herd demo`'s script (herd.clients.demoscript): every line is a wire line that parses back
to itself, the times it proposes are ahead of the clock it was built from, on the right days in
alice's zone, and the whole get-together, played through the planning core (rules, state,
replies) as one server would, is accepted line after line and ends decided.

Pure.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from herd.clients.demoscript import (
    FALLBACK_VENUE,
    FRIENDS,
    MIN_AHEAD,
    SHOWN_CHARACTERS,
    ZONE,
    Known,
    NotKnownYet,
    Setting,
    Step,
    choose_servers,
    get_together,
    peers_of,
    shown,
    summary,
)
from herd.ops import Op
from herd.replies import respond, suggest_reply
from herd.rules import add_user, execute, suggestion_query
from herd.state import PlanningState
from herd.tokens import hash_token
from herd.venues import Venue
from herd.wire.client import IAmAt, parse_client_line
from herd.wire.grammar import iso6709_position
from herd.wire.planning import (
    NOTIFIER_PARSERS,
    PlanningError,
    ProposeTime,
    Subscribe,
    Suggest,
    format_reply,
    parse_planning_line,
)
from herd.zones import timezone_of

SETTING = Setting("Bailey", "Bona", "Campbell", "Jaquez")
PARIS = ZoneInfo(ZONE)
SAMPLE = Known(
    event="Bailey.e3ce.19",
    times=("Bailey.e3ce.24", "Bailey.e3ce.25"),
    places=("Bailey.e3ce.26",),
)


def _ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 10**9 + 123_456_789


def _lines(steps: list[Step], known: Known) -> list[bytes]:
    return [make(known).to_line() for step in steps for make in step.lines]


def _parse(line: bytes) -> object:
    body = line.rstrip(b"\n")
    word = body.split()[0]
    if word in NOTIFIER_PARSERS:
        return NOTIFIER_PARSERS[word](body.split(), body)
    if word == b"IAMAT":
        return parse_client_line(body)
    return parse_planning_line(body)


NOWS = [
    datetime(2026, 12, 6, 16, 30, tzinfo=UTC),  # a Sunday
    datetime(2026, 12, 11, 17, 0, tzinfo=UTC),  # Friday 18:00 in Paris: Friday 19:30 is near
    datetime(2026, 12, 12, 17, 30, tzinfo=UTC),  # Saturday 18:30 in Paris
    datetime(2027, 3, 27, 12, 0, tzinfo=UTC),  # the Saturday before summer time starts
    datetime(2027, 10, 29, 23, 0, tzinfo=UTC),  # the night before summer time ends
]


@pytest.mark.parametrize("now", NOWS)
def test_every_line_is_a_wire_line_that_parses_back_to_itself(now: datetime) -> None:
    steps = get_together(_ns(now), SETTING)
    for step in steps:
        for make in step.lines:
            command = make(SAMPLE)
            line = command.to_line()
            assert line.endswith(b"\n") and line.count(b"\n") == 1
            assert _parse(line) == command, line


@pytest.mark.parametrize("now", NOWS)
def test_the_times_are_ahead_on_friday_and_saturday_evening_in_alices_zone(
    now: datetime,
) -> None:
    steps = get_together(_ns(now), SETTING)
    commands = [make(SAMPLE) for step in steps for make in step.lines]
    proposed = [command for command in commands if isinstance(command, ProposeTime)]
    assert len(proposed) == 2
    moments = [datetime.fromisoformat(command.time) for command in proposed]
    for moment in moments:
        assert moment.utcoffset() is not None
        assert moment - now >= MIN_AHEAD
        assert moment - now <= timedelta(days=7) + MIN_AHEAD
    friday, saturday = (m.astimezone(PARIS) for m in moments)
    assert (friday.weekday(), friday.hour, friday.minute) == (4, 19, 30)
    assert (saturday.weekday(), saturday.hour, saturday.minute) == (5, 19, 0)
    assert moments[0].utcoffset() == friday.utcoffset()


def test_the_positions_report_now_and_are_in_alices_zone() -> None:
    now = _ns(NOWS[0])
    reports = [
        line for line in _lines(get_together(now, SETTING), SAMPLE) if line.startswith(b"IAMAT")
    ]
    assert len(reports) == len(FRIENDS)
    for line, friend in zip(reports, FRIENDS, strict=True):
        report = parse_client_line(line.rstrip(b"\n"))
        assert isinstance(report, IAmAt)
        assert report.client == friend.device.encode()
        assert report.time == b"%d.123456789" % (now // 10**9)
        assert timezone_of(None, iso6709_position(report.position)) == ZONE


def test_each_friend_plays_on_their_server_and_bob_follows_his_pushes() -> None:
    steps = get_together(_ns(NOWS[0]), SETTING)
    servers = {(step.user, step.server) for step in steps}
    assert {("alice", "Bailey"), ("bob", "Bona"), ("carol", "Campbell")} <= servers
    assert steps[-1].server == "Jaquez"
    follow = [step for step in steps if step.follow]
    assert [step.user for step in follow] == ["bob"]
    assert [make(SAMPLE) for make in follow[0].lines] == [Subscribe(None)]
    assert all(step.title and step.says for step in steps)


def test_a_line_that_needs_what_no_reply_told_says_so() -> None:
    steps = get_together(_ns(NOWS[0]), SETTING)
    invite = next(step for step in steps if step.title.startswith("alice invites"))
    with pytest.raises(NotKnownYet, match="event"):
        invite.lines[0](Known())
    decide = next(step for step in steps if step.title.startswith("alice decides"))
    with pytest.raises(NotKnownYet, match="time option 2"):
        decide.lines[0](Known(event="E1"))


def test_known_learns_the_event_and_the_first_venue_and_ignores_the_rest() -> None:
    event = {
        "id": "Bailey.1.5",
        "times": [{"id": "Bailey.1.6"}, {"id": "Bailey.1.7"}],
        "places": [{"id": "Bailey.1.8"}],
    }
    known = Known().learn(format_reply(b"EVENT", event))
    assert known.event == "Bailey.1.5"
    assert known.times == ("Bailey.1.6", "Bailey.1.7")
    assert known.places == ("Bailey.1.8",)
    assert known.place_to_propose() == FALLBACK_VENUE
    suggested = known.learn(
        format_reply(b"SUGGEST", {"venues": [{"name": "Café Louvre", "lat": 48.86, "lon": 2.34}]})
    )
    assert suggested.place_to_propose().name == "Café Louvre"
    assert suggested.place_to_propose().position == "+48.8600+002.3400"
    assert suggested.event == "Bailey.1.5"
    for other in (b"AT Bailey +0.1 x +1.0+1.0 1\n", b"USER {}\n", b"EVENT [1]\n", b"EVENT {\n"):
        assert known.learn(other) == known
    assert known.learn(format_reply(b"SUGGEST", {"venues": []})).venue is None


def test_servers_alice_then_her_neighbours_then_one_nobody_used() -> None:
    names = ["Bailey", "Bona", "Campbell", "Clark", "Jaquez"]
    links = [frozenset(pair) for pair in (("Bailey", "Clark"), ("Bailey", "Jaquez"))]
    assert choose_servers(names, peers_of(links)) == ("Bailey", "Clark", "Jaquez", "Campbell")
    assert choose_servers(names, {}) == ("Bailey", "Bona", "Campbell", "Jaquez")
    assert choose_servers(["Solo"], {}) == ("Solo", "Solo", "Solo", "Solo")
    assert choose_servers(["A", "B"], {}) == ("A", "B", "A", "B")
    with pytest.raises(ValueError):
        choose_servers([], {})


def test_where_to_look_follows_the_channels_the_herd_has() -> None:
    def looks(setting: Setting) -> str:
        return " ".join(step.look for step in get_together(_ns(NOWS[0]), setting))

    both = looks(SETTING)
    assert "herd chat carol" in both and "herd mail" in both
    neither = looks(Setting("A", "B", "C", "D", mail=False, jabber=False))
    assert "herd chat" not in neither and "herd mail" not in neither
    assert "only on the line" in neither


def test_a_long_reply_is_cut_and_says_how_much() -> None:
    assert shown(b"OK alice\n") == "OK alice"
    cut = shown(b"EVENT " + b"x" * 500 + b"\n")
    assert cut.endswith(f"… ({506 - SHOWN_CHARACTERS} more characters)")


# --- the whole get-together through the planning core --------------------------------------------


class Server:
    """One server's planning core: execute, apply, respond, with sequential op ids."""

    def __init__(self, now_ns: int) -> None:
        self.state = PlanningState()
        self.now_ns = now_ns
        self.ids = itertools.count(1)
        self.positions: dict[str, tuple[float, float]] = {}
        for friend in FRIENDS:
            digest = hash_token(f"t-{friend.user}", b"s" * 16)
            self.apply(add_user(self.state, friend.user, digest, now_ns, self.new_op_id))

    def new_op_id(self) -> str:
        return f"Bailey.e3ce.{next(self.ids)}"

    def apply(self, ops: list[Op] | PlanningError) -> list[Op]:
        assert not isinstance(ops, PlanningError), ops
        for op in ops:
            self.state.apply(op)
        return ops

    def send(self, user: str, command: object) -> bytes:
        if isinstance(command, IAmAt):
            device = command.client.decode()
            owner = next(f.user for f in FRIENDS if f.device == device)
            self.positions[owner] = (command.latitude, command.longitude)
            return b"AT ...\n"
        if isinstance(command, Subscribe):
            return b"SUBSCRIBED bob -\n"
        if isinstance(command, Suggest):
            query = suggestion_query(self.state, user, command, self.positions.get)
            assert not isinstance(query, PlanningError), query
            return suggest_reply(query, [Venue("Le Procope", 48.8530, 2.3389)])
        ops = self.apply(execute(self.state, user, command, self.now_ns, self.new_op_id))  # type: ignore[arg-type]
        return respond(self.state, user, command, ops, self.positions.get)  # type: ignore[arg-type]


@pytest.mark.parametrize("now", NOWS)
def test_the_get_together_is_accepted_line_after_line_and_ends_decided(now: datetime) -> None:
    server = Server(_ns(now))
    known = Known()
    for step in get_together(_ns(now), SETTING):
        for make in step.lines:
            reply = server.send(step.user, make(known))
            assert not reply.startswith((b"ERR", b"?")), (step.title, reply)
            known = known.learn(reply)
    document = known.document
    assert document is not None
    assert document["status"] == "decided"
    assert document["places"][0]["name"] == "Le Procope"
    saturday = document["times"][1]
    assert saturday["yes"] == ["bob", "carol"]
    assert document["decision"] == {"time": saturday["id"], "place": document["places"][0]["id"]}
    assert [c["by"] for c in document["comments"]] == ["carol"]
    text = "\n".join(summary(known, {"alice": "T-A", "bob": "T-B"}, SETTING, " --config x.toml"))
    assert f'The event {known.event} "Dinner with friends" is decided.' in text
    assert "yes bob, carol" in text and "no carol" in text and "maybe bob" in text
    assert "AUTH alice T-A" in text and "AUTH bob T-B" in text
    assert "herd mail --config x.toml" in text and f"EVENT {known.event}" in text
    assert "Le Procope" in text and "19:00" in text
    assert json.dumps(document)  # the document is what the reply held
