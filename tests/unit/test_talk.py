"""The pure core of `herd talk`: which address SERVER names, where the history goes and what it
keeps, how received bytes are cut into lines (bounded) and shown on a terminal."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herd.clients.talk_core import (
    LineSplitter,
    Target,
    TargetError,
    for_terminal,
    history_path,
    keep_in_history,
    parse_address,
    resolve_target,
)
from herd.config import dial_host

SERVERS = {
    "Bailey": ("127.0.0.1", 12001),
    "Bona": ("0.0.0.0", 12002),
    "Campbell": ("::", 12003),
    "db.example.org:1": ("10.0.0.9", 12004),  # a name may hold a colon: names come first
}


def test_no_server_is_the_first_of_the_config() -> None:
    assert resolve_target(None, SERVERS) == Target("Bailey", "127.0.0.1", 12001)


def test_a_server_name_exactly_or_in_any_case() -> None:
    assert resolve_target("Bona", SERVERS) == Target("Bona", "127.0.0.1", 12002)
    assert resolve_target("bona", SERVERS) == Target("Bona", "127.0.0.1", 12002)
    assert resolve_target("CAMPBELL", SERVERS) == Target("Campbell", "::1", 12003)
    assert resolve_target("db.example.org:1", SERVERS).port == 12004


def test_names_that_differ_only_in_case_need_the_exact_one() -> None:
    servers = {"bailey": ("127.0.0.1", 1), "Bailey": ("127.0.0.1", 2)}
    assert resolve_target("Bailey", servers).port == 2
    with pytest.raises(TargetError, match="exact name"):
        resolve_target("BAILEY", servers)


def test_host_and_port() -> None:
    assert resolve_target("127.0.0.1:12005", SERVERS) == Target(
        "127.0.0.1:12005", "127.0.0.1", 12005
    )
    assert resolve_target("localhost:80", SERVERS) == Target("localhost:80", "localhost", 80)
    assert resolve_target("[::1]:12001", SERVERS) == Target("[::1]:12001", "::1", 12001)


@pytest.mark.parametrize(
    "spec",
    [
        "Nobody",
        "",
        "host:",
        ":80",
        "host:0",
        "host:65536",
        "host:8o",
        "::1:80",
        "[nope]:80",
        "a b:80",
        "host:٣",
    ],
)
def test_neither_a_name_nor_an_address(spec: str) -> None:
    with pytest.raises(TargetError, match="known: Bailey, Bona"):
        resolve_target(spec, SERVERS)


def test_a_config_without_servers() -> None:
    with pytest.raises(TargetError, match="no servers"):
        resolve_target(None, {})
    assert resolve_target("127.0.0.1:9", {}).port == 9


def test_parse_address_and_dial_host() -> None:
    assert parse_address("example.org:65535") == ("example.org", 65535)
    assert parse_address("example.org") is None
    assert dial_host("0.0.0.0") == "127.0.0.1"
    assert dial_host("192.0.2.1") == "192.0.2.1"


def test_history_goes_under_the_state_directory() -> None:
    home = Path("/home/ann")
    assert history_path({}, home) == Path("/home/ann/.local/state/renga/talk_history")
    assert history_path({"XDG_STATE_HOME": "/s"}, home) == Path("/s/renga/talk_history")
    # The XDG spec: a relative path is invalid and ignored.
    assert history_path({"XDG_STATE_HOME": "rel"}, home) == home / ".local/state/renga/talk_history"


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        ("IAMAT kiwi +34.06-118.44 1700000000.5", True),
        ("WHOAMI", True),
        ("", True),
        ("AUTH alice t0ken", False),
        ("  auth alice t0ken", False),
        ("AUTH", True),  # nothing secret in it
        ("AUTH alice", False),  # a token typed where the user goes
        ("USER-TOKEN alice scrypt$...", False),
        ("OPTOUT alice unsubscribe-token", False),
        ("optout alice x", False),
        ("AUTHOR", True),
    ],
)
def test_lines_with_a_secret_stay_out_of_the_history_file(line: str, kept: bool) -> None:
    assert keep_in_history(line) is kept


def test_terminal_text_escapes_what_could_drive_the_terminal() -> None:
    assert for_terminal(b"AT Bailey +0.1 kiwi +34-118 1.5") == "AT Bailey +0.1 kiwi +34-118 1.5"
    assert for_terminal("caf\u00e9 \u00fcber".encode()) == "caf\u00e9 \u00fcber"
    assert for_terminal(b"\x1b[2J\x07x") == "\\x1b[2J\\x07x"
    assert for_terminal(b"a\tb\r") == "a\tb\\x0d"
    assert for_terminal(b"id-\xff\xfe") == "id-\\xff\\xfe"
    assert for_terminal("\u202eevil".encode()) == "\\u202eevil"
    assert for_terminal("\U000e0001".encode()) == "\\U000e0001"


def test_splitter_cuts_lines_across_chunks() -> None:
    splitter = LineSplitter(limit=16)
    assert splitter.feed(b"AT one\nAT t") == [b"AT one"]
    assert splitter.feed(b"wo\n\nPUSH") == [b"AT two", b""]
    assert splitter.finish() == [b"PUSH"]
    assert splitter.finish() == []


def test_splitter_holds_at_most_its_limit() -> None:
    splitter = LineSplitter(limit=8)
    pieces = splitter.feed(b"x" * 20)
    assert pieces == [b"x" * 8, b"x" * 8]
    assert splitter.feed(b"y\nz") == [b"xxxxy"]
    assert splitter.feed(b"a" * 30 + b"\n") == [b"za" + b"a" * 6, b"a" * 8, b"a" * 8, b"a" * 7]


def test_splitter_does_not_cut_inside_a_utf8_sequence() -> None:
    splitter = LineSplitter(limit=8)
    euro = "\u20ac".encode()  # 3 bytes
    pieces = splitter.feed(b"abcdef" + euro + b"gh")
    assert pieces == [b"abcdef"]
    assert splitter.finish() == [euro + b"gh"]


def _split(chunks: list[bytes], limit: int) -> list[bytes]:
    splitter = LineSplitter(limit)
    pieces: list[bytes] = []
    for chunk in chunks:
        pieces += splitter.feed(chunk)
    return pieces + splitter.finish()


@given(
    chunks=st.lists(st.binary(max_size=40), max_size=20),
    limit=st.integers(min_value=4, max_value=32),
)
def test_splitter_loses_nothing_whatever_the_chunks(chunks: list[bytes], limit: int) -> None:
    data = b"".join(chunks)
    pieces = _split(chunks, limit)
    assert all(len(piece) <= limit for piece in pieces)
    assert b"".join(pieces) == data.replace(b"\n", b"")
    assert len(pieces) >= data.count(b"\n")
    assert pieces == _split([data], limit)  # the same lines however the bytes arrived


@given(text=st.text(max_size=200), limit=st.integers(min_value=4, max_value=32))
def test_splitter_keeps_utf8_whole(text: str, limit: int) -> None:
    for piece in _split([text.encode()], limit):
        piece.decode()  # no sequence cut in two
