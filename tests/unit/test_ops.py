"""The op codec (docs/protocol.md §13): ids and text, op JSON both ways, and what it refuses.

Pure.
"""

from __future__ import annotations

import json
import re
from dataclasses import fields

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
    LinksRevoked,
    Op,
    Reopen,
    SetDevice,
    SetUserField,
    Uninvite,
    UserField,
    client_bytes,
    client_text,
    is_client,
    is_id,
    is_text,
)
from herd.wire.grammar import WireError

T0 = 1_780_000_000_000_000_000  # ns, 2026-05-28


def op(op_id: str, actor: str, body: Body, time_ns: int = T0) -> Op:
    return Op(op_id, time_ns, actor, body)


# --- ids and text --------------------------------------------------------------------------------


def test_ids_are_single_safe_fields() -> None:
    assert is_id("B.17") and is_id("alice") and is_id("a_b-c.9")
    assert not is_id("") and not is_id("-x") and not is_id(".x") and not is_id("a b")
    assert not is_id("x" * 65) and not is_id(OPERATOR) and not is_id("é")


def test_text_is_unicode_without_controls() -> None:
    assert is_text("Dîner chez Paul", 200)
    assert not is_text("", 200)
    assert not is_text("x" * 201, 200)
    assert not is_text("a\tb", 200)
    assert not is_text(client_text(b"\xff"), 200)


@given(st.binary(min_size=1, max_size=40).filter(lambda b: not re.search(rb"[ \t\n\r\x0b\x0c]", b)))
def test_client_ids_round_trip_as_text(client: bytes) -> None:
    text = client_text(client)
    assert client_bytes(text) == client
    assert is_client(text)


def test_client_text_must_be_canonical() -> None:
    assert not is_client("\udcc3\udca9")  # the bytes of "é", spelled as escapes
    assert not is_client("\ud800")
    assert not is_client("a b")
    assert not is_client("")


# --- op JSON -------------------------------------------------------------------------------------


def test_op_json_is_one_ascii_field() -> None:
    vote = op("B.7", "bob", CastVote("B.1", "B.2", Choice.YES), 1_764_950_400_000_000_000)
    assert vote.to_json() == (
        b'{"id":"B.7","ns":1764950400000000000,"actor":"bob","kind":"vote",'
        b'"event":"B.1","option":"B.2","choice":"yes"}'
    )
    comment = op("B.8", "bob", AddComment("B.1", "On  y va\u00a0!"))
    line = comment.to_json()
    assert line.split() == [line]
    assert b'"text":"On\\u0020\\u0020y\\u0020va\\u00a0!"' in line
    assert Op.from_json(line) == comment


def test_op_stamp_and_kind() -> None:
    created = op("B.1", "alice", CreateEvent("Dinner"), 5)
    assert created.stamp == (5, "B.1")
    assert created.kind == "create"


EVERY_KIND = [
    op("u1", OPERATOR, AddUser("alice")),
    op("u2", OPERATOR, SetUserField("alice", UserField.TOKEN, "scrypt$1024$8$1$00$00")),
    op("u3", "alice", SetUserField("alice", UserField.EMAIL, None)),
    op("d1", "alice", SetDevice(client_text(b"ph\xffone"), "alice")),
    op("d2", "alice", SetDevice("phone", None)),
    op("e1", "alice", CreateEvent("Dinner at Paul's")),
    op("i1", "alice", Invite("e1", ("bob", "carol"))),
    op("i2", "alice", Uninvite("e1", ("bob",))),
    op("t1", "alice", AddTime("e1", 1_796_493_600)),
    op("p1", "bob", AddPlace("e1", "Chez Paul", 48.8566, -2.5)),
    op("p2", "bob", AddPlace("e1", "Somewhere", None, None)),
    op("v1", "bob", CastVote("e1", "t1", Choice.MAYBE)),
    op("c1", "bob", AddComment("e1", "Ça marche")),
    op("s1", "alice", Decide("e1", "t1", "p1")),
    op("s2", "alice", Reopen("e1")),
    op("s3", "alice", Cancel("e1")),
    op("g1", OPERATOR, DigestSent("alice", T0 - 5)),
    op("l1", "alice", LinksRevoked("alice", 2)),
]


@pytest.mark.parametrize("each", EVERY_KIND, ids=lambda each: each.kind)
def test_every_kind_round_trips(each: Op) -> None:
    line = each.to_json()
    assert line.isascii() and line.split() == [line]
    assert Op.from_json(line) == each


def test_no_body_field_shadows_the_header() -> None:
    for each in EVERY_KIND:
        assert not {field.name for field in fields(each.body)} & {"id", "ns", "actor", "kind"}


texts = st.text(min_size=1, max_size=30).filter(lambda text: is_text(text, 200))


@given(texts, texts, st.integers(min_value=0, max_value=2**63))
def test_free_text_round_trips(title: str, comment: str, time_ns: int) -> None:
    for each in (
        op("e1", "alice", CreateEvent(title), time_ns),
        op("c1", "bob", AddComment("e1", comment), time_ns),
    ):
        line = each.to_json()
        assert line.split() == [line]
        assert Op.from_json(line) == each


VALID = {"id": "B.1", "ns": 5, "actor": "alice", "kind": "vote", "event": "e1"}


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (b"{", "not JSON"),
        (b"[1]", "object"),
        (b"\xff", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        ({**VALID, "option": "t1", "choice": "perhaps"}, "choice"),
        ({**VALID, "option": "t1"}, "lacks 'choice'"),
        ({**VALID, "option": "t1", "choice": "yes", "extra": 1}, "unexpected"),
        ({**VALID, "kind": "teleport"}, "unknown op kind"),
        ({**VALID, "kind": 3}, "unknown op kind"),
        ({**VALID, "id": "a b", "option": "t1", "choice": "yes"}, "id must be an id"),
        ({**VALID, "ns": -1, "option": "t1", "choice": "yes"}, "non-negative"),
        ({**VALID, "ns": True, "option": "t1", "choice": "yes"}, "non-negative"),
        ({**VALID, "ns": 1.5, "option": "t1", "choice": "yes"}, "non-negative"),
        ({**VALID, "actor": "@root", "option": "t1", "choice": "yes"}, "actor"),
        ({**VALID, "kind": "invite", "users": []}, "list of 1-50"),
        ({**VALID, "kind": "invite", "users": ["ok", 3]}, "list of ids"),
        ({**VALID, "kind": "comment", "text": "a\nb"}, "text"),
        ({**VALID, "kind": "comment", "text": ""}, "text"),
        ({**VALID, "kind": "time", "at": "tomorrow"}, "POSIX"),
        ({**VALID, "kind": "time", "at": 10**13}, "POSIX"),
        ({**VALID, "kind": "place", "name": "X", "lat": 91, "lon": 0}, "range"),
        ({**VALID, "kind": "place", "name": "X", "lat": 1, "lon": None}, "numbers"),
        ({**VALID, "kind": "place", "name": "X", "lat": True, "lon": 1}, "numbers"),
        ({**VALID, "kind": "user_set", "user": "a", "field": "admin", "value": "1"}, "field"),
        ({**VALID, "kind": "user_set", "user": "a", "field": "tz", "value": 1}, "text or null"),
        ({**VALID, "kind": "device", "client": "a b", "user": "a"}, "client"),
        ({**VALID, "kind": "device", "client": "\udcc3\udca9", "user": "a"}, "client"),
        ({**VALID, "kind": "device", "client": "phone", "user": "-"}, "user"),
    ],
)
def test_malformed_ops_are_refused(document: bytes | dict[str, object], reason: str) -> None:
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    with pytest.raises(WireError, match=reason):
        Op.from_json(data)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_numbers_are_refused(constant: bytes) -> None:
    data = (
        b'{"id":"B.1","ns":5,"actor":"a","kind":"place","event":"e1","name":"X","lat":%s,"lon":0}'
    )
    with pytest.raises(WireError):
        Op.from_json(data % constant)


@pytest.mark.parametrize("upto", [-1, 1.5, "5", None, True])
def test_a_digest_op_needs_a_time(upto: object) -> None:
    document = {"id": "g1", "ns": 5, "actor": OPERATOR, "kind": "digest", "user": "carol"}
    with pytest.raises(WireError):
        Op.from_json(json.dumps({**document, "upto": upto}).encode())
