"""The user's link generation (`LINKS`, `LINKS REVOKE`): a replicated max register, so a
revocation is never undone by an op that arrives late, and every server agrees."""

from __future__ import annotations

import itertools
import json

import pytest

from herd.ops import OPERATOR, AddUser, LinksRevoked, Op
from herd.replies import respond
from herd.rules import execute
from herd.state import PlanningState
from herd.wire.grammar import WireError
from herd.wire.planning import (
    PLANNING_WORDS,
    RevokeLinks,
    ShowLinks,
    parse_planning_line,
)

T0 = 1_796_000_000_000_000_000


def op(op_id: str, body: object, time_ns: int = T0, actor: str = "alice") -> Op:
    return Op(op_id, time_ns, actor, body)  # type: ignore[arg-type]


def with_alice() -> PlanningState:
    state = PlanningState()
    state.apply(op("u1", AddUser("alice"), actor=OPERATOR))
    return state


def test_the_lines_parse_and_round_trip() -> None:
    assert b"LINKS" in PLANNING_WORDS
    assert parse_planning_line(b"LINKS") == ShowLinks()
    assert parse_planning_line(b"LINKS REVOKE") == RevokeLinks()
    for command in (ShowLinks(), RevokeLinks()):
        assert parse_planning_line(command.to_line().rstrip(b"\n")) == command
    for bad in (b"LINKS revoke", b"LINKS REVOKE now", b"LINKS SHOW"):
        with pytest.raises(WireError):
            parse_planning_line(bad)


def test_a_new_user_is_at_generation_0() -> None:
    user = with_alice().user("alice")
    assert user is not None and user.link_generation == 0


def test_revoking_bumps_the_generation_and_answers_it() -> None:
    state = with_alice()
    ids = (f"o{n}" for n in itertools.count())
    for expected in (1, 2):
        ops = execute(state, "alice", RevokeLinks(), T0, lambda: next(ids))
        assert isinstance(ops, list) and [o.body for o in ops] == [LinksRevoked("alice", expected)]
        changes = state.apply(ops[0])
        assert [c.users for c in changes] == [("alice",)]
        reply = respond(state, "alice", RevokeLinks(), ops, lambda user: None)
        assert reply.startswith(b"LINKS ")
        assert json.loads(reply[6:]) == {"user": "alice", "generation": expected}
    assert execute(state, "alice", ShowLinks(), T0, lambda: next(ids)) == []
    assert json.loads(respond(state, "alice", ShowLinks(), [], lambda user: None)[6:]) == {
        "user": "alice",
        "generation": 2,
    }


def test_revoking_needs_a_login() -> None:
    refused = execute(with_alice(), None, RevokeLinks(), T0, lambda: "x")
    assert not isinstance(refused, list) and refused.code == "not-authenticated"


def test_the_generation_is_a_max_register_in_any_order() -> None:
    ops = [op("a", LinksRevoked("alice", 3), T0), op("b", LinksRevoked("alice", 1), T0 + 5)]
    ops.append(op("c", LinksRevoked("alice", 2), T0 + 9))
    snapshots = set()
    for order in itertools.permutations(ops):
        state = with_alice()
        for each in (*order, *order):  # and applied twice
            state.apply(each)
        user = state.user("alice")
        assert user is not None and user.link_generation == 3
        snapshots.add(repr(state.snapshot()))
    assert len(snapshots) == 1


def test_a_lower_generation_changes_nothing() -> None:
    state = with_alice()
    assert state.apply(op("a", LinksRevoked("alice", 2)))
    assert state.apply(op("b", LinksRevoked("alice", 2))) == []
    assert state.apply(op("c", LinksRevoked("alice", 1), T0 + 10)) == []


@pytest.mark.parametrize("generation", [0, -1, 2**53 + 1, 1.5, "1", None, True])
def test_a_bad_generation_from_a_peer_is_refused(generation: object) -> None:
    line = json.dumps(
        {
            "id": "x",
            "ns": T0,
            "actor": "alice",
            "kind": "links",
            "user": "alice",
            "generation": generation,
        }
    ).encode()
    with pytest.raises(WireError):
        Op.from_json(line)
