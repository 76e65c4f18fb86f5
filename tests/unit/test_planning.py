"""Planning lines: parsing every command, refusing what has not a command's shape, and error
lines carrying bytes as they came.

Pure.
"""

from __future__ import annotations

import pytest

from herd.ops import Choice, UserField
from herd.wire.grammar import WireError
from herd.wire.planning import (
    PLANNING_WORDS,
    AddDevice,
    CancelEvent,
    CommentOn,
    DecideEvent,
    InviteUsers,
    ListEvents,
    Login,
    PlanEvent,
    PlanningCommand,
    PlanningError,
    ProposePlace,
    ProposeTime,
    RemoveDevice,
    ReopenEvent,
    SetUser,
    ShowEvent,
    ShowUser,
    Suggest,
    UninviteUsers,
    UnsetUser,
    VoteOn,
    WhoAmI,
    parse_planning_line,
)

# --- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "command"),
    [
        (b"AUTH alice s3cr3t", Login("alice", "s3cr3t")),
        (b"WHOAMI", WhoAmI()),
        (b"USER", ShowUser()),
        (b"USER SET email a@b.c", SetUser(UserField.EMAIL, "a@b.c")),
        (b"USER SET channels xmpp, email ", SetUser(UserField.CHANNELS, "xmpp, email")),
        (b"USER SET quiet 22:00-07:00", SetUser(UserField.QUIET, "22:00-07:00")),
        (b"USER SET digest weekly", SetUser(UserField.DIGEST, "weekly")),
        (b"USER SET jid alice@example.org", SetUser(UserField.JID, "alice@example.org")),
        (b"USER SET tz Europe/Paris", SetUser(UserField.TZ, "Europe/Paris")),
        (b"USER UNSET tz", UnsetUser(UserField.TZ)),
        (b"DEVICE ADD ph\xffone", AddDevice("ph\udcffone")),
        (b"DEVICE REMOVE phone", RemoveDevice("phone")),
        (b"  PLAN  Dinner  at\tPaul's  ", PlanEvent("Dinner  at\tPaul's")),
        (b"INVITE B9 bob carol", InviteUsers("B9", ("bob", "carol"))),
        (b"UNINVITE B9 bob", UninviteUsers("B9", ("bob",))),
        (b"PROPOSE B9 TIME 2026-12-05T19:00+01:00", ProposeTime("B9", "2026-12-05T19:00+01:00")),
        (b"PROPOSE B9 PLACE Chez  Paul", ProposePlace("B9", None, "Chez  Paul")),
        (
            b"PROPOSE B9 PLACE +48.8566+002.3522 Chez Paul",
            ProposePlace("B9", "+48.8566+002.3522", "Chez Paul"),
        ),
        (b"VOTE B9 B11 MAYBE", VoteOn("B9", "B11", Choice.MAYBE)),
        (b"COMMENT B9 I'll  bring wine", CommentOn("B9", "I'll  bring wine")),
        (b"DECIDE B9 B11 B12", DecideEvent("B9", "B11", "B12")),
        (b"REOPEN B9", ReopenEvent("B9")),
        (b"CANCEL B9\r", CancelEvent("B9")),
        (b"EVENT B9", ShowEvent("B9")),
        (b"EVENTS", ListEvents()),
        (b"SUGGEST B9", Suggest("B9", None)),
        (b"SUGGEST B9 2.5", Suggest("B9", "2.5")),
    ],
)
def test_parse(line: bytes, command: PlanningCommand) -> None:
    assert line.split()[0] in PLANNING_WORDS
    assert parse_planning_line(line) == command


def test_parse_blank() -> None:
    assert parse_planning_line(b" \t ") is None


@pytest.mark.parametrize(
    "line",
    [
        b"plan Dinner",
        b"IAMAT x +1.0+1.0 1",
        b"AUTH alice",
        b"AUTH alice a b",
        b"WHOAMI me",
        b"USER SET",
        b"USER SET email",
        b"USER SET token abc",
        b"USER GET email",
        b"USER UNSET email now",
        b"DEVICE ADD",
        b"DEVICE LOSE phone",
        b"PLAN",
        b"INVITE B9",
        b"PROPOSE B9 TIME",
        b"PROPOSE B9 TIME 2026-12-05 19:00Z",
        b"PROPOSE B9 DATE 2026-12-05T19:00Z",
        b"PROPOSE B9 PLACE +48.8566+002.3522",
        b"VOTE B9 B11 yes",
        b"VOTE B9 B11",
        b"COMMENT B9",
        b"DECIDE B9 B11",
        b"REOPEN",
        b"CANCEL B9 now",
        b"EVENT",
        b"EVENTS all",
        b"SUGGEST",
        b"SUGGEST B9 1 2",
    ],
)
def test_parse_refuses_malformed_lines(line: bytes) -> None:
    with pytest.raises(WireError):
        parse_planning_line(line)


def test_error_lines_carry_bytes_as_they_came() -> None:
    assert (
        PlanningError("no-such-event", "no event \udcff").line()
        == b"ERR no-such-event: no event \xff\n"
    )
