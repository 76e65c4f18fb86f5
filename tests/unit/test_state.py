"""The replicated planning state (docs/protocol.md §13): merge rules, changes, views.

Pure.  The property tests deliver one set of ops to several replicas in different orders, with
duplicates, and require identical state; the reference is the same ops applied in stamp order.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herd.changes import ChangeKind
from herd.ops import (
    OPERATOR,
    AddComment,
    AddPlace,
    AddTime,
    AddUser,
    Body,
    Cancel,
    CastVote,
    Choice,
    CreateEvent,
    Decide,
    DigestSent,
    Invite,
    Op,
    Reopen,
    SetDevice,
    SetUserField,
    Uninvite,
    UserField,
)
from herd.state import PlanningState
from herd.views import Status, format_utc
from herd.wire.grammar import WireError

T0 = 1_780_000_000_000_000_000  # ns, 2026-05-28


def op(op_id: str, actor: str, body: Body, time_ns: int = T0) -> Op:
    return Op(op_id, time_ns, actor, body)


def state_of(*ops: Op) -> PlanningState:
    state = PlanningState()
    for each in ops:
        state.apply(each)
    return state


def dinner() -> list[Op]:
    """alice organises e1 and invites bob and carol; a time t1 and a place p1 are proposed."""
    return [
        op("e1", "alice", CreateEvent("Dinner"), T0),
        op("i1", "alice", Invite("e1", ("bob", "carol")), T0 + 1),
        op("t1", "alice", AddTime("e1", 1_796_493_600), T0 + 2),
        op("p1", "bob", AddPlace("e1", "Chez Paul", 48.8566, 2.3522), T0 + 3),
    ]


# --- merge rules ---------------------------------------------------------------------------------


def test_duplicate_op_changes_nothing() -> None:
    state = state_of(*dinner())
    before = state.snapshot()
    assert all(state.apply(each) == [] for each in dinner())
    assert state.snapshot() == before
    assert state.knows("e1") and not state.knows("zz")


def test_votes_are_last_writer_wins_with_op_id_tie_break() -> None:
    state = state_of(*dinner())
    state.apply(op("v2", "bob", CastVote("e1", "t1", Choice.NO), T0 + 10))
    state.apply(op("v1", "bob", CastVote("e1", "t1", Choice.YES), T0 + 10))  # equal time, id lower
    assert state.apply(op("v0", "bob", CastVote("e1", "t1", Choice.MAYBE), T0 + 9)) == []
    event = state.event("e1")
    assert event is not None
    assert event.tally("t1") == {Choice.YES: (), Choice.MAYBE: (), Choice.NO: ("bob",)}


def test_ops_before_their_event_wait_in_place() -> None:
    ops = dinner()
    vote = op("v1", "carol", CastVote("e1", "p1", Choice.YES), T0 + 5)
    early = state_of(vote, *reversed(ops))
    assert early.event("e1") == state_of(*ops, vote).event("e1")
    assert state_of(vote).event("e1") is None
    assert state_of(vote).events_of("carol") == []


def test_only_current_participants_votes_count() -> None:
    state = state_of(*dinner())
    state.apply(op("v1", "dave", CastVote("e1", "t1", Choice.YES), T0 + 5))
    state.apply(op("v2", "bob", CastVote("e1", "t1", Choice.YES), T0 + 5))
    state.apply(op("v3", "alice", CastVote("e1", "t1", Choice.MAYBE), T0 + 5))
    state.apply(op("v4", "bob", CastVote("e1", "nope", Choice.YES), T0 + 5))
    event = state.event("e1")
    assert event is not None
    assert event.tally("t1")[Choice.YES] == ("bob",)
    assert event.tally("t1")[Choice.MAYBE] == ("alice",)
    assert "nope" not in event.votes
    state.apply(op("x1", "alice", Uninvite("e1", ("bob",)), T0 + 6))
    event = state.event("e1")
    assert event is not None and event.tally("t1")[Choice.YES] == ()


def test_invitations_are_registers_and_drive_visibility() -> None:
    state = state_of(*dinner())
    assert [e.id for e in state.events_of("bob")] == ["e1"]
    state.apply(op("x1", "alice", Uninvite("e1", ("bob",)), T0 + 6))
    assert state.events_of("bob") == []
    assert state.apply(op("x0", "alice", Invite("e1", ("bob",)), T0 + 5)) == []  # older
    assert state.events_of("bob") == []
    state.apply(op("x2", "alice", Invite("e1", ("bob",)), T0 + 7))
    assert [e.id for e in state.events_of("bob")] == ["e1"]
    # Uninviting the organiser (only a buggy peer could) does not hide the event from them.
    state.apply(op("x3", "alice", Uninvite("e1", ("alice",)), T0 + 8))
    assert [e.id for e in state.events_of("alice")] == ["e1"]


def test_status_is_one_register_with_the_decision() -> None:
    state = state_of(*dinner())
    state.apply(op("s1", "alice", Decide("e1", "t1", "p1"), T0 + 10))
    event = state.event("e1")
    assert event is not None and event.status is Status.DECIDED
    assert event.decision == ("t1", "p1")
    state.apply(op("s2", "alice", Reopen("e1"), T0 + 11))
    event = state.event("e1")
    assert event is not None and event.status is Status.PLANNING and event.decision is None
    assert state.apply(op("s0", "alice", Cancel("e1"), T0 + 9)) == []
    state.apply(op("s3", "alice", Cancel("e1"), T0 + 12))
    event = state.event("e1")
    assert event is not None and event.status is Status.CANCELLED


def test_devices_have_one_owner() -> None:
    state = state_of(op("u1", OPERATOR, AddUser("alice")), op("u2", OPERATOR, AddUser("bob")))
    state.apply(op("d1", "alice", SetDevice("phone", "alice"), T0 + 1))
    [moved] = state.apply(op("d2", "bob", SetDevice("phone", "bob"), T0 + 2))
    assert moved.users == ("alice", "bob")
    assert state.user_of_client("phone") == "bob"
    assert state.clients_of("alice") == () and state.clients_of("bob") == ("phone",)
    [removed] = state.apply(op("d3", "bob", SetDevice("phone", None), T0 + 3))
    assert removed.users == ("bob",)
    assert state.user_of_client("phone") is None and state.user_of_client("other") is None


def test_users_and_their_fields() -> None:
    assert PlanningState().user("alice") is None
    state = state_of(
        op("u0", "alice", SetUserField("alice", UserField.EMAIL, "a@b.c"), T0 - 1),
        op("u1", OPERATOR, AddUser("alice")),
        op("u2", "alice", SetUserField("alice", UserField.CHANNELS, ""), T0 + 1),
        op("u3", "alice", SetUserField("alice", UserField.DIGEST, "weekly"), T0 + 1),
        op("u4", "alice", SetUserField("alice", UserField.TZ, "Europe/Paris"), T0 + 1),
    )
    user = state.user("alice")
    assert user is not None
    assert (user.email, user.channels, user.digest, user.tz) == (
        "a@b.c",
        (),
        "weekly",
        "Europe/Paris",
    )
    assert user.to_json("Europe/Paris") == {
        "id": "alice",
        "jid": None,
        "email": "a@b.c",
        "channels": [],
        "digest": "weekly",
        "digest_at": None,
        "quiet": None,
        "tz": "Europe/Paris",
        "tz_set": True,
        "web_quiet": True,
        "clients": [],
    }
    assert state.users() == ["alice"]
    assert state.apply(op("u5", OPERATOR, AddUser("alice"))) == []
    state.apply(op("u6", "alice", SetUserField("alice", UserField.CHANNELS, None), T0 + 2))
    user = state.user("alice")
    assert user is not None and user.channels == ("email", "line", "xmpp")


def test_digest_time_is_a_register_merged_alike_in_any_order() -> None:
    ops = [
        op("u1", OPERATOR, AddUser("alice")),
        op("u2", "alice", SetUserField("alice", UserField.DIGEST_AT, "19:30"), T0 + 1),
        op("u3", "alice", SetUserField("alice", UserField.DIGEST_AT, "06:15"), T0 + 2),
    ]
    for order in (ops, ops[::-1], [ops[1], ops[0], ops[2]], [ops[2], ops[1], ops[0]]):
        user = state_of(*order).user("alice")
        assert user is not None and user.digest_at == "06:15"
        assert user.to_json("UTC")["digest_at"] == "06:15"
    unset = op("u4", "alice", SetUserField("alice", UserField.DIGEST_AT, None), T0 + 3)
    for order in ([*ops, unset], [unset, *ops]):
        user = state_of(*order).user("alice")
        assert user is not None and user.digest_at is None  # the herd's hour again


def test_a_user_field_this_server_does_not_know_is_refused_whole() -> None:
    """What a server from before a field does with an op setting it: the op does not parse, so
    the flooding layer skips it (logged, counted) and the user keeps that server's default."""
    line = op("u9", "alice", SetUserField("alice", UserField.DIGEST_AT, "19:30"), T0).to_json()
    assert Op.from_json(line).body == SetUserField("alice", UserField.DIGEST_AT, "19:30")
    with pytest.raises(WireError, match="unknown user field 'digest_hour'"):
        Op.from_json(line.replace(b"digest_at", b"digest_hour"))


def test_next_time_is_after_everything_seen() -> None:
    state = PlanningState()
    assert state.next_time(100) == 100
    state.apply(op("x", "alice", CreateEvent("Later"), 500))
    assert state.next_time(100) == 501
    assert state.next_time(900) == 900


# --- changes ---------------------------------------------------------------------------------


def test_changes_say_what_and_for_whom() -> None:
    state = PlanningState()
    seen = [change for each in dinner() for change in state.apply(each)]
    assert [(c.kind, c.event_id, c.users) for c in seen] == [
        (ChangeKind.CREATED, "e1", ("alice",)),
        (ChangeKind.INVITED, "e1", ("alice", "bob", "carol")),
        (ChangeKind.OPTION_ADDED, "e1", ("alice", "bob", "carol")),
        (ChangeKind.OPTION_ADDED, "e1", ("alice", "bob", "carol")),
    ]
    later = [
        op("v1", "bob", CastVote("e1", "t1", Choice.YES), T0 + 10),
        op("c1", "bob", AddComment("e1", "Yes!"), T0 + 11),
        op("x1", "alice", Uninvite("e1", ("carol",)), T0 + 12),
        op("s1", "alice", Decide("e1", "t1", "p1"), T0 + 13),
        op("s2", "alice", Reopen("e1"), T0 + 14),
        op("s3", "alice", Cancel("e1"), T0 + 15),
        op("u1", OPERATOR, AddUser("dave"), T0 + 16),
        op("u2", "dave", SetUserField("dave", UserField.QUIET, "22:00-07:00"), T0 + 17),
    ]
    seen = [change for each in later for change in state.apply(each)]
    assert [(c.kind, c.event_id, c.users, c.op) for c in seen] == [
        (ChangeKind.VOTED, "e1", ("alice", "bob", "carol"), later[0]),
        (ChangeKind.COMMENTED, "e1", ("alice", "bob", "carol"), later[1]),
        (ChangeKind.UNINVITED, "e1", ("alice", "bob", "carol"), later[2]),
        (ChangeKind.DECIDED, "e1", ("alice", "bob"), later[3]),
        (ChangeKind.REOPENED, "e1", ("alice", "bob"), later[4]),
        (ChangeKind.CANCELLED, "e1", ("alice", "bob"), later[5]),
        (ChangeKind.USER_ADDED, None, ("dave",), later[6]),
        (ChangeKind.USER_UPDATED, None, ("dave",), later[7]),
    ]


# --- views -------------------------------------------------------------------------------------


def test_format_utc() -> None:
    assert format_utc(1_796_493_600) == "2026-12-05T18:00:00Z"


def test_event_view_is_compact_json() -> None:
    state = state_of(
        *dinner(),
        op("p2", "carol", AddPlace("e1", "Somewhere", None, None), T0 + 4),
        op("v1", "bob", CastVote("e1", "t1", Choice.YES), T0 + 5),
        op("v2", "carol", CastVote("e1", "t1", Choice.NO), T0 + 6),
        op("v3", "alice", CastVote("e1", "p1", Choice.MAYBE), T0 + 7),
        op("c2", "carol", AddComment("e1", "Late, sorry"), T0 + 9),
        op("c1", "bob", AddComment("e1", "I'm in"), T0 + 8),
        op("s1", "alice", Decide("e1", "t1", "p1"), T0 + 10),
    )
    assert state.event_view("nope") is None
    assert state.event_view("e1") == {
        "id": "e1",
        "title": "Dinner",
        "organiser": "alice",
        "status": "decided",
        "invitees": ["bob", "carol"],
        "times": [
            {
                "id": "t1",
                "at": "2026-12-05T18:00:00Z",
                "by": "alice",
                "yes": ["bob"],
                "maybe": [],
                "no": ["carol"],
            }
        ],
        "places": [
            {
                "id": "p1",
                "name": "Chez Paul",
                "lat": 48.8566,
                "lon": 2.3522,
                "by": "bob",
                "yes": [],
                "maybe": ["alice"],
                "no": [],
            },
            {
                "id": "p2",
                "name": "Somewhere",
                "lat": None,
                "lon": None,
                "by": "carol",
                "yes": [],
                "maybe": [],
                "no": [],
            },
        ],
        "decision": {"time": "t1", "place": "p1"},
        "comments": [
            {"id": "c1", "by": "bob", "at": "2026-05-28T20:26:40Z", "text": "I'm in"},
            {"id": "c2", "by": "carol", "at": "2026-05-28T20:26:40Z", "text": "Late, sorry"},
        ],
    }


def test_events_of_lists_oldest_first() -> None:
    state = state_of(
        op("e2", "bob", CreateEvent("Second"), T0 + 5),
        op("i2", "bob", Invite("e2", ("alice",)), T0 + 6),
        op("e1", "alice", CreateEvent("First"), T0),
        op("e3", "carol", CreateEvent("Not mine"), T0 + 1),
    )
    assert [e.id for e in state.events_of("alice")] == ["e1", "e2"]
    assert state.events_of("nobody") == []


# --- convergence -----------------------------------------------------------------------------

USERS = ["alice", "bob", "carol"]
EVENTS = ["e1", "e2", "e9"]  # e9 is never created
OPTIONS = ["t1", "t2", "p1", "nope"]
FIXED: list[tuple[str, str, Body]] = [
    ("e1", "alice", CreateEvent("One")),
    ("e2", "bob", CreateEvent("Two")),
    ("t1", "alice", AddTime("e1", 1_796_493_600)),
    ("t2", "bob", AddTime("e2", 1_796_500_000)),
    ("p1", "carol", AddPlace("e1", "Here", 1.0, 2.0)),
    ("u1", OPERATOR, AddUser("alice")),
    ("u2", OPERATOR, AddUser("bob")),
]

users = st.sampled_from(USERS)
events = st.sampled_from(EVENTS)
bodies: st.SearchStrategy[Body] = st.one_of(
    st.builds(Invite, events, st.lists(users, min_size=1, max_size=2).map(tuple)),
    st.builds(Uninvite, events, st.lists(users, min_size=1, max_size=2).map(tuple)),
    st.builds(CastVote, events, st.sampled_from(OPTIONS), st.sampled_from(list(Choice))),
    st.builds(AddComment, events, st.sampled_from(["a", "b"])),
    st.builds(Decide, events, st.sampled_from(["t1", "t2"]), st.sampled_from(["p1"])),
    st.builds(Reopen, events),
    st.builds(Cancel, events),
    st.builds(AddUser, users),
    st.builds(
        SetUserField,
        users,
        st.sampled_from([UserField.EMAIL, UserField.DIGEST]),
        st.sampled_from([None, "x@y.z", "weekly"]),
    ),
    st.builds(SetDevice, st.sampled_from(["phone", "laptop"]), st.none() | users),
)


@st.composite
def op_sets(draw: st.DrawFn) -> list[Op]:
    """Ops with few distinct times, so that equal stamps' op-id tie-breaks are exercised."""
    times = st.integers(min_value=0, max_value=3)
    fixed = [Op(i, T0 + draw(times), a, b) for i, a, b in FIXED]
    random = draw(st.lists(st.tuples(users, bodies, times), max_size=25))
    return fixed + [Op(f"r{n}", T0 + t, actor, body) for n, (actor, body, t) in enumerate(random)]


def observable(state: PlanningState) -> tuple[object, ...]:
    return (
        state.snapshot(),
        [state.event_view(event_id) for event_id in EVENTS],
        [[e.id for e in state.events_of(user)] for user in USERS],
        [state.user(user) for user in USERS],
        [state.user_of_client(client) for client in ("phone", "laptop")],
    )


@settings(max_examples=150, deadline=None)
@given(op_sets(), st.data())
def test_replicas_converge_whatever_the_order(ops: list[Op], data: st.DataObject) -> None:
    reference = state_of(*sorted(ops, key=lambda each: each.stamp))
    for _ in range(3):
        deliveries = data.draw(st.permutations(ops))
        duplicates = data.draw(st.lists(st.sampled_from(ops), max_size=5))
        replica = PlanningState()
        # Some ops arrive late (a delay), after others and after duplicates of themselves.
        cut = data.draw(st.integers(min_value=0, max_value=len(deliveries)))
        for each in [*deliveries[:cut], *duplicates, *deliveries[cut:], *duplicates]:
            replica.apply(each)
        assert observable(replica) == observable(reference)


@settings(max_examples=100, deadline=None)
@given(op_sets(), st.data())
def test_an_op_changes_state_iff_it_reports_a_change(ops: list[Op], data: st.DataObject) -> None:
    state = PlanningState()
    for each in data.draw(st.permutations(ops)):
        before = state.snapshot()
        changes = state.apply(each)
        assert (state.snapshot() != before) == bool(changes)
        assert state.apply(each) == []


def test_user_of_jid_follows_the_jid_register() -> None:
    state = state_of(
        op("A.1", OPERATOR, AddUser("alice")),
        op("A.2", OPERATOR, AddUser("bob")),
        op("A.3", OPERATOR, SetUserField("alice", UserField.JID, "Alice@Example.org")),
    )
    assert state.user_of_jid("alice@example.ORG") == "alice"
    state.apply(op("A.4", OPERATOR, SetUserField("alice", UserField.JID, "a2@example.org"), T0 + 1))
    assert state.user_of_jid("alice@example.org") is None
    assert state.user_of_jid("A2@example.org") == "alice"
    state.apply(op("A.5", OPERATOR, SetUserField("bob", UserField.JID, "a2@example.org"), T0 + 2))
    state.apply(op("A.6", OPERATOR, SetUserField("alice", UserField.JID, None), T0 + 3))
    assert state.user_of_jid("a2@example.org") == "bob"
    stale = op("A.7", OPERATOR, SetUserField("bob", UserField.JID, "old@example.org"), T0)
    assert state.apply(stale) == []
    assert state.user_of_jid("old@example.org") is None


def test_reads_are_built_once_until_an_op_changes_them() -> None:
    """`event` and `user` hand out the same object until an op touches it (the notifier caches
    renderings by that identity), and a fresh one that shows the op afterwards."""
    state = state_of(
        op("u1", OPERATOR, AddUser("ann")),
        op("u2", OPERATOR, AddUser("bob")),
        op("e1", "ann", CreateEvent("Picnic")),
        op("i1", "ann", Invite("e1", ("bob",))),
        op("t1", "ann", AddTime("e1", 1_790_000_000)),
        op("e2", "bob", CreateEvent("Lunch")),
    )
    picnic, lunch, ann = state.event("e1"), state.event("e2"), state.user("ann")
    assert picnic is state.event("e1") and ann is state.user("ann")
    state.apply(op("v1", "bob", CastVote("e1", "t1", Choice.YES), T0 + 1))
    voted = state.event("e1")
    assert voted is not picnic and voted is not None
    assert voted.votes == {"t1": {"bob": Choice.YES}}
    assert state.event("e2") is lunch and state.user("ann") is ann
    state.apply(op("s1", OPERATOR, SetUserField("ann", UserField.TZ, "Asia/Tokyo"), T0 + 2))
    retimed = state.user("ann")
    assert retimed is not ann and retimed is not None and retimed.tz == "Asia/Tokyo"
    state.apply(op("d1", "ann", SetDevice("phone-1", "ann"), T0 + 3))
    assert state.user("ann") is not retimed
    assert state.user("ann").clients == ("phone-1",)  # type: ignore[union-attr]
    state.apply(op("v2", "bob", CastVote("e1", "t1", Choice.YES), T0 - 5))  # loses: no change
    assert state.event("e1") is voted


# --- digests sent ---------------------------------------------------------------------------


def test_digests_sent_are_max_registers_whatever_the_order() -> None:
    first = op("g1", OPERATOR, DigestSent("carol", T0 - 50), T0)
    later = op("g2", OPERATOR, DigestSent("carol", T0 - 10), T0 + 100)
    assert state_of(first, later).snapshot() == state_of(later, first).snapshot()
    assert state_of(later, first).digest_sent("carol") == (T0 + 100, T0 - 10)
    assert PlanningState().digest_sent("carol") == (0, 0)


def test_a_digest_op_is_a_change_only_when_it_moves_a_register() -> None:
    state = state_of(op("g2", OPERATOR, DigestSent("carol", T0 - 10), T0 + 100))
    [change] = state.apply(op("g3", OPERATOR, DigestSent("carol", T0 - 5), T0 + 50))
    assert (change.kind, change.event_id, change.users) == (
        ChangeKind.DIGEST_SENT,
        None,
        ("carol",),
    )
    assert state.apply(op("g4", OPERATOR, DigestSent("carol", T0 - 20), T0 + 10)) == []
    assert state.digest_sent("carol") == (T0 + 100, T0 - 5)
