"""The operator's commands (`USER-ADD`, `USER-TOKEN`): every field checked, nothing that could
become another field or another line, round trips; and the one free-text check of planning.

Pure: values in, bytes out, and back.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herd.ops import MAX_COMMENT, is_id
from herd.rules import execute_operator, is_free_text
from herd.tokens import hash_token, verify_token
from herd.wire.grammar import TOKEN_HASH, USER_ID, WireError, is_email, is_jid
from herd.wire.operator import OperatorLineError, UserAdd, UserToken, parse_operator_line
from herd.wire.planning import PlanningError
from tests.unit.test_rules import NOW_NS, World

HASH = hash_token("a-token", bytes(16))

users = st.from_regex(USER_ID, fullmatch=True)
hashes = st.builds(
    lambda n, r, p, salt, digest: f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}",
    st.sampled_from((1024, 2048, 4096, 8192, 16384)),
    st.integers(1, 8),
    st.integers(1, 2),
    st.binary(min_size=8, max_size=32),
    st.binary(min_size=32, max_size=32),
)
_label = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_local = st.text(
    st.characters(blacklist_categories=("C", "Z"), blacklist_characters="\"&'/:<>@"),
    min_size=1,
    max_size=20,
)
jids = st.builds(
    lambda local, labels: f"{local}@{'.'.join(labels)}",
    _local,
    st.lists(_label, min_size=1, max_size=3),
)
user_adds = st.builds(
    UserAdd, users, hashes, st.none() | st.emails().filter(is_email), st.none() | jids
)
user_tokens = st.builds(UserToken, users, hashes)

SPLITTERS = " \t\n\r\x0b\x0c\x00\x1f\x7f\x85\x9b\xa0\u1680\u2028\u2029\u3000\ufeff"


# --- examples ------------------------------------------------------------------------------------


def test_the_documented_lines() -> None:
    line = f"USER-ADD alice {HASH} email=a@example.org jid=alice@localhost\n".encode()
    command = UserAdd("alice", HASH, "a@example.org", "alice@localhost")
    assert command.to_line() == line
    assert parse_operator_line(line[:-1]) == command
    assert parse_operator_line(f"USER-ADD alice {HASH} jid=j@x email=a@b.c".encode()) == (
        UserAdd("alice", HASH, "a@b.c", "j@x")
    )
    assert UserToken("bob", HASH).to_line() == f"USER-TOKEN bob {HASH}\n".encode()
    assert parse_operator_line(f"USER-TOKEN bob {HASH}".encode()) == UserToken("bob", HASH)
    assert parse_operator_line(b"  ") is None


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("USER-ADD bad id", "bad-hash"),
        ("USER-ADD alice", "bad-field"),
        ("USER-ADD -alice {h}", "bad-user"),
        ("USER-ADD " + "a" * 65 + " {h}", "bad-user"),
        ("USER-ADD alice {h} email=a@example.org email=b@example.org", "bad-field"),
        ("USER-ADD alice {h} jid=a@x jid=a@x", "bad-field"),
        ("USER-ADD alice {h} nick=al", "bad-field"),
        ("USER-ADD alice {h} email", "bad-field"),
        ("USER-ADD alice {h} email=", "bad-value"),
        ("USER-ADD alice {h} email=a,b@example.org", "bad-value"),
        ("USER-ADD alice {h} email=a@localhost", "bad-value"),
        ("USER-ADD alice {h} email=<a@example.org>", "bad-value"),
        ("USER-ADD alice {h} jid=alice@example.org/phone", "bad-value"),
        ("USER-ADD alice {h} jid=alice", "bad-value"),
        ("USER-ADD alice {h} jid=a\u2028b@example.org", "bad-value"),
        ("USER-ADD alice scrypt$1024$8$1$00$" + "0" * 64, "bad-hash"),
        ("USER-ADD alice scrypt$1$8$1$" + "0" * 32 + "$" + "0" * 64, "bad-hash"),
        ("USER-ADD alice " + HASH.upper(), "bad-hash"),
        ("USER-TOKEN alice", "bad-field"),
        ("USER-TOKEN alice {h} email=a@example.org", "bad-field"),
        ("USER-TOKEN al\u0085ice {h}", "bad-user"),
    ],
)
def test_refusals(line: str, code: str) -> None:
    with pytest.raises(OperatorLineError) as refused:
        parse_operator_line(line.format(h=HASH).encode())
    assert refused.value.code == code
    reply = refused.value.line()
    assert reply.startswith(f"ERR {code}: ".encode()) and reply.count(b"\n") == 1
    assert HASH.encode() not in reply


def test_other_lines_are_shape_errors_and_bytes_that_are_not_utf8_are_refused() -> None:
    for line in (b"USER-DEL alice", b"user-add alice " + HASH.encode(), b"AUTH alice x"):
        with pytest.raises(WireError) as refused:
            parse_operator_line(line)
        assert not isinstance(refused.value, OperatorLineError)
    with pytest.raises(OperatorLineError) as bad:
        parse_operator_line(b"USER-ADD al\xffice " + HASH.encode())
    assert bad.value.code == "bad-field"


def test_addresses() -> None:
    for email in ("a@example.org", "first.last+tag@mail.example.co.uk", "jörg@bücher.de"):
        assert is_email(email), email
    for email in (
        "a@b",
        "a..b@example.org",
        ".a@example.org",
        "a@-x.org",
        "a b@example.org",
        "a@example.org\x85",
        "a\x9b@example.org",
        "a@@example.org",
        "a@example..org",
        "x" * 65 + "@example.org",
        "a@" + "b" * 250 + ".org",
        "a@exa_mple.org",
    ):
        assert not is_email(email), email
    for jid in ("alice@localhost", "a.b@chat.example.org", "ünï@example.org"):
        assert is_jid(jid), jid
    for jid in ("alice", "a@b/c", "a b@x", "a&b@x", "a@x\u2029", "@x", "a@"):
        assert not is_jid(jid), jid


# --- properties ----------------------------------------------------------------------------------


@given(st.one_of(user_adds, user_tokens))
def test_round_trip(command: UserAdd | UserToken) -> None:
    line = command.to_line()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_operator_line(line[:-1]) == command


@given(st.emails())
def test_every_plain_address_is_an_email(address: str) -> None:
    # Hypothesis's addresses are RFC 5322 dot-atoms; only its 255+ character ones are too long.
    local = address.rsplit("@", 1)[0]
    assert is_email(address) == (len(address) <= 254 and len(local) <= 64)


@given(st.one_of(user_adds, user_tokens), st.data())
def test_a_field_that_would_split_is_refused(
    command: UserAdd | UserToken, data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from([field.name for field in dataclasses.fields(command)]))
    value = getattr(command, name) or "x@example.org"
    where = data.draw(st.integers(0, len(value)))
    splitter = data.draw(st.sampled_from(SPLITTERS))
    fields = {**dataclasses.asdict(command), name: value[:where] + splitter + value[where:]}
    broken = type(command)(**fields)
    with pytest.raises(OperatorLineError):
        broken.to_line()


@given(
    st.text(max_size=30),
    st.text(max_size=80),
    st.none() | st.text(max_size=30),
    st.none() | st.text(max_size=30),
)
def test_whatever_is_written_is_one_line_that_reads_back_the_same(
    user: str, token_hash: str, email: str | None, jid: str | None
) -> None:
    for command in (UserAdd(user, token_hash, email, jid), UserToken(user, token_hash)):
        try:
            line = command.to_line()
        except OperatorLineError:
            continue
        assert line.count(b"\n") == 1 and line.endswith(b"\n")
        assert parse_operator_line(line[:-1]) == command


@given(st.text(max_size=70))
def test_the_user_id_grammar_is_the_replicated_one(user: str) -> None:
    assert (USER_ID.match(user) is not None) == is_id(user)


@settings(deadline=None, max_examples=20)  # the largest parameters cost ~0.1 s of scrypt
@given(hashes)
def test_every_hash_of_the_right_shape_can_be_checked(token_hash: str) -> None:
    assert TOKEN_HASH.match(token_hash) is not None
    assert not verify_token(token_hash, "some token")


def test_the_core_refuses_a_command_built_without_its_shape() -> None:
    world = World(users=("alice",))
    before = world.state.snapshot()
    refused = execute_operator(world.state, UserToken("alice", "id"), NOW_NS, world.new_op_id)
    assert isinstance(refused, PlanningError) and refused.code == "bad-hash"
    refused = execute_operator(world.state, UserAdd("bad id", HASH), NOW_NS, world.new_op_id)
    assert isinstance(refused, PlanningError) and refused.code == "bad-user"
    assert world.state.snapshot() == before
    added = execute_operator(world.state, UserAdd("bob", HASH, jid="b@x"), NOW_NS, world.new_op_id)
    assert isinstance(added, list) and len(added) == 3


# --- free text -----------------------------------------------------------------------------------

BREAKS = [chr(code) for code in range(0x80, 0xA0)] + ["\u2028", "\u2029", "\x00", "\n", "\x7f"]


@given(st.text(max_size=50), st.sampled_from(BREAKS), st.text(max_size=50))
def test_free_text_never_holds_a_control_or_a_line_separator(
    before: str, bad: str, after: str
) -> None:
    assert not is_free_text(before + bad + after, MAX_COMMENT)


def test_free_text_keeps_ordinary_writing() -> None:
    for text in ("Dinner at 8", "café — crème brûlée", "🍣 & 🍺", "Zürich\u00a0HB"):
        assert is_free_text(text, 200), text


@pytest.mark.parametrize(
    "line",
    [
        "PLAN Lunch\x85Reply-To: x",
        "PLAN a\u2028b",
        "COMMENT {e} \x9b31mred",
        "COMMENT {e} one\u2029two",
        "PROPOSE {e} PLACE Chez\x85Paul",
        "PROPOSE {e} PLACE +48.8566+002.3522 Chez\u2028Paul",
        "USER SET tz Europe/Paris\x85",
        "USER SET email a\x9b@example.org",
        "USER SET jid a@example.org\u2029",
        "USER SET quiet 22:00-07:00\x85",
    ],
)
def test_every_free_text_field_refuses_them(line: str) -> None:
    world = World(users=("alice",))
    event_id = re.search(r'"id":"([^"]+)"', world.send("alice", "PLAN Lunch").decode())
    assert event_id is not None
    before = world.state.snapshot()
    reply = world.send("alice", line.format(e=event_id[1]))
    assert reply.startswith(b"ERR bad-text: "), reply
    assert world.state.snapshot() == before
