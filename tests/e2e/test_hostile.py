"""A hostile-input suite that keeps running: a Hypothesis state machine drives three real
`herd run` processes with arbitrary interleavings of valid and invalid lines from several
connections, and checks what docs/protocol.md promises after every step.

test_fuzz.py sends one long fixed stream of mutated classic lines to one server; this suite is
the other half.  Its steps are chosen and shrunk by Hypothesis, and they mix:

- classic lines (`IAMAT`, `WHATSAT`, `STATUS`) for client ids of the connection's own, blank
  lines, garbage bytes, lines of exactly `max_line` bytes, CRLF terminators;
- planning lines after `AUTH` as users made with `herd user add` (right and wrong tokens, user
  switches pipelined with the lines that follow them, free text with control characters);
- pipelined bursts written in one go or cut into partial writes, replies left unread for a while
  (and then read), half-closes (with a last line without LF), abrupt closes (FIN or RST), lines
  over `max_line` (finished or not, half-closed or not);
- hostile load from throwaway connections: a burst of expensive `WHATSAT` lines whose replies are
  never read, a burst of wrong `AUTH` lines.

The machine keeps a model of what the herd must hold (each client's stored AT line, each event's
title, organiser, invitees and comments) and checks each reply against it, not just its shape:

- every line is answered, in order, with what the docs say, or the connection is closed exactly
  where they say (a line over `max_line`), and nothing else is written;
- after every step, a probe connection at each server gets `STATUS` and `IAMAT` answered within
  `PROBE_SECONDS` (no connection slows the others), and a valid `AUTH` under a flood of wrong
  ones within `AUTH_SECONDS`;
- after each example, every server holds the same AT line for every client and shows every
  event the same way, within `CONVERGE_SECONDS`.

One herd serves every example (module scope); each example uses fresh client ids and makes its
own events, so examples cannot see each other's state.  Bounded for CI; run it longer with
`RENGA_HOSTILE_EXAMPLES=200 RENGA_HOSTILE_STEPS=60 RENGA_HOSTILE_SHRINK=1`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import socket
import string
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.support.herd import Herd, running_herd
from tests.support.lines import Client, at_lines, now_time
from tests.support.polling import HerdError, wait_until

from .test_planning import add_user

NAMES = ("Bailey", "Bona", "Campbell")
LINKS = (("Bailey", "Bona"), ("Bona", "Campbell"))  # Campbell learns Bailey's news via Bona
MAX_LINE = 1024
USERS = ("alice", "bob", "carol")
SLOTS = 4  # client connections per example; slot i talks to NAMES[i % 3]
CLIENTS_PER_SLOT = 4

EXAMPLES = int(os.environ.get("RENGA_HOSTILE_EXAMPLES", "20"))
STEPS = int(os.environ.get("RENGA_HOSTILE_STEPS", "40"))
SHRINK = os.environ.get("RENGA_HOSTILE_SHRINK", "") not in ("", "0")

PROBE_SECONDS = 1.0  # a probe's STATUS or IAMAT, after any step
AUTH_SECONDS = 1.0  # a valid AUTH on a fresh connection, under a flood of wrong ones
REPLY_SECONDS = 10.0  # any reply on a hostile connection (wrong AUTHs are answered late)
CONVERGE_SECONDS = 5.0
PENDING_LIMIT = 200  # unread replies per connection before the machine reads them anyway
HOG_WHATSAT = b"WHATSAT hx-hog 50 20\n"  # a big reply: 20 places in Los Angeles
LA = b"+34.068930-118.445127"
POSITIONS = (LA, b"+48.8566+002.3522", b"-33.8688+151.2093", b"+0.0-140.0", b"-90.0+180.0")

_AT = re.compile(rb"AT (\S+) ([+-](?:0|[1-9][0-9]*)\.[0-9]{9}) (\S+) (\S+) (\S+)\n\Z")
_WHITESPACE = b" \t\r\x0b\x0c"
_TEXT = string.ascii_letters + string.digits + " -.,'!?é漢🙂"
_BAD_TEXT_CHARACTERS = ("\x01", "\x1f", "\x7f", "\t", "\r", "\u0085", "\u009b", "\u2028", "\u2029")
_GARBAGE_STARTS = (b"\x00", b"\xff", b"#", b"iamat", b"whatsat", b"?", b"\xc2\x85", b"Status")
_SERIAL = itertools.count(1)


# --- the herd --------------------------------------------------------------------------------


@dataclass(slots=True)
class Stage:
    """The shared herd and the tokens of its users."""

    herd: Herd
    tokens: dict[str, str]
    base: int  # a POSIX time a little before the suite started


def logs_in(port: int, user: str, token: str) -> bool:
    with Client(port) as client:
        return client.request(f"AUTH {user} {token}".encode()).startswith(b"USER ")


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory, places_seed: Path) -> Iterator[Stage]:
    root = tmp_path_factory.mktemp("hostile")
    with running_herd(root, NAMES, LINKS, max_line=MAX_LINE, seed=places_seed) as herd:
        herd.up()
        herd.warm_up()
        tokens = {user: add_user(herd, user) for user in USERS}
        for name in NAMES:
            port = herd.port(name)
            wait_until(
                lambda port=port: all(logs_in(port, u, t) for u, t in tokens.items()),  # type: ignore[misc]
                10.0,
                f"{name} to know the users",
            )
        hog = herd.iamat("Bailey", b"hx-hog", LA, now_time())
        herd.wait_knows(NAMES, b"hx-hog", hog, 10.0)
        yield Stage(herd, tokens, int(time.time()) - 3600)


# --- the model -------------------------------------------------------------------------------


@dataclass(slots=True)
class Report:
    """A client's newest report as the herd must hold it; `line` is known once its reply is
    read (a stale report is answered with it byte for byte)."""

    time: Fraction
    line: bytes | None = None
    certain: bool = True


@dataclass(slots=True)
class EventModel:
    title: str
    organiser: str
    slot: int  # only this slot's connection touches it, so its state is known exactly
    id: str | None = None  # known once the PLAN reply is read
    invitees: set[str] = field(default_factory=set)
    comments: list[tuple[str, str]] = field(default_factory=list)  # (by, text)
    certain: bool = True

    @property
    def participants(self) -> set[str]:
        return self.invitees | {self.organiser}

    def snapshot(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "organiser": self.organiser,
            "status": "planning",
            "invitees": sorted(self.invitees),
            "comments": [list(comment) for comment in self.comments],
        }


def event_view(document: dict[str, Any]) -> dict[str, Any]:
    """The parts of an EVENT reply the model knows."""
    return {
        "id": document["id"],
        "title": document["title"],
        "organiser": document["organiser"],
        "status": document["status"],
        "invitees": document["invitees"],
        "comments": [[c["by"], c["text"]] for c in document["comments"]],
    }


@dataclass(slots=True)
class Expect:
    """One reply a connection owes: how to read it, how to check it, and what becomes unknown
    if the connection goes away before it is read."""

    sent: bytes
    check: Callable[[bytes], None]
    whatsat: bool = False
    report: Report | None = None
    event: EventModel | None = None


@dataclass(slots=True)
class Slot:
    server: str
    prefix: bytes
    connection: Client
    user: str | None = None
    auth_failures: int = 0
    pending: deque[Expect] = field(default_factory=deque)
    reports: dict[bytes, Report] = field(default_factory=dict)


def reply_of(expected_prefix: bytes, sent: bytes) -> Callable[[bytes], None]:
    def check(reply: bytes) -> None:
        assert reply.startswith(expected_prefix) and reply.endswith(b"\n"), (sent, reply)
        assert reply.count(b"\n") == 1, (sent, reply)

    return check


def exactly(expected: bytes, sent: bytes) -> Callable[[bytes], None]:
    def check(reply: bytes) -> None:
        assert reply == expected, (sent, reply, expected)

    return check


def document_of(reply: bytes, word: bytes) -> dict[str, Any]:
    assert reply.startswith(word + b" ") and reply.endswith(b"\n"), reply
    decoded = json.loads(reply[len(word) + 1 :])
    assert isinstance(decoded, dict), reply
    return decoded


def wrong_token(token: str) -> str:
    """The token with its first character changed (to another one: a token may begin with x)."""
    return ("y" if token.startswith("x") else "x") + token[1:]


def received(line: bytes) -> bytes:
    """The line as the server sees it: a CR before the LF belongs to the terminator."""
    return line[:-1] if line.endswith(b"\r") else line


# --- strategies ------------------------------------------------------------------------------

titles = st.text(_TEXT, min_size=1, max_size=40).filter(lambda text: text.strip(" ") != "")
bad_titles = st.tuples(
    st.text(string.ascii_letters, min_size=1, max_size=8),
    st.sampled_from(_BAD_TEXT_CHARACTERS),
    st.text(string.ascii_letters, min_size=1, max_size=8),
).map(lambda parts: "".join(parts).encode())
garbage = st.tuples(st.sampled_from(_GARBAGE_STARTS), st.binary(max_size=80)).map(
    lambda parts: (parts[0] + parts[1]).replace(b"\n", b"")
)
blank = st.text(" \t\r\x0b\x0c", max_size=5).map(str.encode)
terminators = st.sampled_from((b"\n", b"\r\n"))


class HostileHerd(RuleBasedStateMachine):
    """One example: SLOTS client connections, a probe per server, a few throwaway hogs."""

    stage: Stage  # set by the test before running the machine

    def __init__(self) -> None:
        super().__init__()
        self.herd = self.stage.herd
        self.serial = next(_SERIAL)
        self.slots: list[Slot] = []
        self.probes: dict[str, Client] = {}
        self.probe_serial = itertools.count()
        self.hogs: list[socket.socket] = []
        self.events: list[EventModel] = []
        self.others: list[tuple[bytes, Report]] = []  # reports of replaced connections' clients

    # --- connections -------------------------------------------------------------------------

    def new_slot(self, index: int) -> Slot:
        server = NAMES[index % len(NAMES)]
        prefix = b"hx%d-%d-%d" % (self.serial, index, next(_SERIAL))
        return Slot(server, prefix, Client(self.herd.port(server), REPLY_SECONDS))

    def reconnect(self, index: int) -> None:
        """A fresh connection in the slot (same server, same client ids: everything it sent was
        read or is marked unknown)."""
        old = self.slots[index]
        old.connection.close()
        slot = Slot(old.server, old.prefix, Client(self.herd.port(old.server), REPLY_SECONDS))
        slot.reports = old.reports
        self.slots[index] = slot

    def read_reply(self, slot: Slot, expect: Expect) -> bytes:
        first = slot.connection.line()
        if expect.whatsat and first.startswith(b"AT "):
            return first + slot.connection.read_until(b"\n\n")
        return first

    def drain_slot(self, slot: Slot) -> None:
        while slot.pending:
            expect = slot.pending[0]
            try:
                reply = self.read_reply(slot, expect)
            except HerdError as error:
                local = slot.connection.sock.getsockname()[1]
                raise AssertionError(
                    f"no reply to {expect.sent!r} at {slot.server} (from port {local}): {error}"
                ) from None
            slot.pending.popleft()
            expect.check(reply)
        # nothing but replies: whatever came with them and answers no line is unasked for
        assert slot.connection.buffer == b"", f"unasked for: {slot.connection.buffer[:300]!r}"

    def send(self, slot: Slot, data: bytes, cuts: list[int] | None = None) -> None:
        """Write `data`, in one write or cut at `cuts` (partial lines on the wire)."""
        if not cuts:
            slot.connection.send(data)
            return
        start = 0
        for cut in sorted({cut for cut in cuts if 0 < cut < len(data)}):
            slot.connection.send(data[start:cut])
            start = cut
        slot.connection.send(data[start:])

    # --- lines and their expected replies ----------------------------------------------------

    def line_for(self, index: int, data: st.DataObject) -> tuple[bytes, Expect | None]:
        """Draw one line for slot `index` and what it must be answered, given the model as it
        will be when the server reaches it (every earlier line of the slot applied)."""
        slot = self.slots[index]
        kinds = ["iamat", "whatsat", "status", "garbage", "blank", "long", "auth", "whoami"]
        if slot.user is not None:
            kinds += ["plan", "bad_plan", "shape", "no_event"]
            if self.slot_events(index):
                kinds += ["event", "comment", "invite"]
        kind = data.draw(st.sampled_from(kinds), label="kind")
        return getattr(self, f"_{kind}")(slot, index, data)  # type: ignore[no-any-return]

    def certain_clients(self, slot: Slot) -> list[bytes]:
        names = [slot.prefix + b"-%d" % n for n in range(CLIENTS_PER_SLOT)]
        return [name for name in names if name not in slot.reports or slot.reports[name].certain]

    def _iamat(self, slot: Slot, index: int, data: st.DataObject) -> tuple[bytes, Expect | None]:
        clients = self.certain_clients(slot)
        if not clients:
            return self._status(slot, index, data)
        client = data.draw(st.sampled_from(clients), label="client")
        seconds = self.stage.base + data.draw(st.integers(0, 30), label="seconds")
        fraction = data.draw(st.sampled_from(("", ".5", ".50", ".000000001", ".25")))
        padding = data.draw(st.sampled_from(("", "0", "000")))
        when = f"{padding}{seconds}{fraction}".encode()
        position = data.draw(st.sampled_from(POSITIONS), label="position")
        line = b"IAMAT %s %s %s" % (client, position, when)
        value = Fraction(when.decode())
        stored = slot.reports.get(client)
        if stored is not None and value <= stored.time:

            def stale(reply: bytes, stored: Report = stored) -> None:
                assert stored.line is not None
                assert reply == stored.line, (line, reply, stored.line)

            return line, Expect(line, stale, report=stored)
        report = Report(value)
        slot.reports[client] = report
        sent_at = time.time()
        server = slot.server.encode()

        def fresh(reply: bytes) -> None:
            match = _AT.match(reply)
            assert match is not None, (line, reply)
            assert match.group(1, 3, 4, 5) == (server, client, position, when), (line, reply)
            diff = Fraction(match[2].decode())
            assert abs(diff - (Fraction(sent_at) - value)) < 60, (line, reply)
            report.line = reply

        return line, Expect(line, fresh, report=report)

    def _whatsat(self, slot: Slot, index: int, data: st.DataObject) -> tuple[bytes, Expect | None]:
        clients = self.certain_clients(slot)
        if not clients:
            return self._status(slot, index, data)
        client = data.draw(st.sampled_from(clients), label="client")
        count = data.draw(st.integers(0, 3), label="count")
        line = b"WHATSAT %s 5 %d" % (client, count)
        stored = slot.reports.get(client)

        def check(reply: bytes) -> None:
            if stored is None:
                assert reply == b"? " + line + b"\n", (line, reply)
                return
            head, _, rest = reply.partition(b"\n")
            assert head + b"\n" == stored.line, (line, reply, stored.line)
            assert rest.endswith(b"}\n\n") and b"\n\n" not in rest[:-2], (line, reply)
            answer = json.loads(rest)
            assert answer["status"] in ("OK", "ZERO_RESULTS"), answer
            assert len(answer["results"]) <= count, answer

        return line, Expect(line, check, whatsat=True)

    def _status(self, slot: Slot, index: int, data: st.DataObject) -> tuple[bytes, Expect | None]:
        line = b"STATUS"
        return line, Expect(line, reply_of(b'STATUS {"server":"%s"' % slot.server.encode(), line))

    def _garbage(self, slot: Slot, index: int, data: st.DataObject) -> tuple[bytes, Expect | None]:
        line = data.draw(garbage, label="garbage")
        return line, Expect(line, exactly(b"? " + received(line) + b"\n", line))

    def _blank(self, slot: Slot, index: int, data: st.DataObject) -> tuple[bytes, Expect | None]:
        return data.draw(blank, label="blank"), None  # no reply at all

    def _long(self, slot: Slot, index: int, data: st.DataObject) -> tuple[bytes, Expect | None]:
        """Exactly `max_line` bytes (not counting a CRLF terminator): an ordinary line."""
        line = b"#" * MAX_LINE
        return line, Expect(line, exactly(b"? " + line + b"\n", line))

    def _auth(self, slot: Slot, index: int, data: st.DataObject) -> tuple[bytes, Expect | None]:
        user = data.draw(st.sampled_from(USERS), label="user")
        right = slot.auth_failures > 0 or data.draw(st.booleans(), label="right token")
        token = self.stage.tokens[user] if right else wrong_token(self.stage.tokens[user])
        line = f"AUTH {user} {token}".encode()
        if not right:
            slot.auth_failures += 1  # the user stays; its reply comes after a delay
            return line, Expect(line, reply_of(b"ERR auth-failed: ", line))
        slot.user = user

        def check(reply: bytes) -> None:
            assert document_of(reply, b"USER")["id"] == user, (line, reply)

        return line, Expect(line, check)

    def _whoami(self, slot: Slot, index: int, data: st.DataObject) -> tuple[bytes, Expect | None]:
        line = b"WHOAMI"
        user = slot.user
        if user is None:
            return line, Expect(line, reply_of(b"ERR not-authenticated: ", line))

        def check(reply: bytes) -> None:
            assert document_of(reply, b"USER")["id"] == user, (line, reply)

        return line, Expect(line, check)

    def _plan(self, slot: Slot, index: int, data: st.DataObject) -> tuple[bytes, Expect | None]:
        assert slot.user is not None
        title = data.draw(titles, label="title")
        line = b"PLAN " + title.encode()
        event = EventModel(title.strip(" "), slot.user, index)
        self.events.append(event)
        expected = event.snapshot()

        def check(reply: bytes) -> None:
            document = document_of(reply, b"EVENT")
            event.id = expected["id"] = document["id"]
            assert event_view(document) == expected, (line, reply)

        return line, Expect(line, check, event=event)

    def _bad_plan(self, slot: Slot, index: int, data: st.DataObject) -> tuple[bytes, Expect | None]:
        line = b"PLAN " + data.draw(bad_titles, label="bad title")
        return line, Expect(line, reply_of(b"ERR bad-text: ", line))

    def _shape(self, slot: Slot, index: int, data: st.DataObject) -> tuple[bytes, Expect | None]:
        line = data.draw(
            st.sampled_from((b"PLAN", b"INVITE x", b"EVENT", b"EVENT a b", b"COMMENT x", b"plan x"))
        )
        return line, Expect(line, exactly(b"? " + line + b"\n", line))

    def _no_event(self, slot: Slot, index: int, data: st.DataObject) -> tuple[bytes, Expect | None]:
        line = b"EVENT Nowhere.ffffff.%d" % data.draw(st.integers(1, 10**6))
        return line, Expect(line, reply_of(b"ERR no-such-event: ", line))

    def slot_events(self, index: int) -> list[EventModel]:
        return [e for e in self.events if e.slot == index and e.id is not None and e.certain]

    def _event_line(
        self, slot: Slot, index: int, data: st.DataObject, verb: bytes
    ) -> tuple[EventModel, bytes]:
        event = data.draw(st.sampled_from(self.slot_events(index)), label="event")
        assert event.id is not None
        return event, verb + b" " + event.id.encode()

    def _event_reply(
        self, slot: Slot, event: EventModel, line: bytes, refusal: bytes | None
    ) -> tuple[bytes, Expect]:
        if refusal is not None:
            return line, Expect(line, reply_of(b"ERR " + refusal + b": ", line), event=event)
        expected = event.snapshot()

        def check(reply: bytes) -> None:
            assert event_view(document_of(reply, b"EVENT")) == expected, (line, reply, expected)

        return line, Expect(line, check, event=event)

    def _event(self, slot: Slot, index: int, data: st.DataObject) -> tuple[bytes, Expect | None]:
        event, line = self._event_line(slot, index, data, b"EVENT")
        refusal = None if slot.user in event.participants else b"not-invited"
        return self._event_reply(slot, event, line, refusal)

    def _comment(self, slot: Slot, index: int, data: st.DataObject) -> tuple[bytes, Expect | None]:
        event, line = self._event_line(slot, index, data, b"COMMENT")
        text = data.draw(titles, label="comment")
        line += b" " + text.encode()
        refusal = None if slot.user in event.participants else b"not-invited"
        if refusal is None:
            assert slot.user is not None
            event.comments.append((slot.user, text.strip(" ")))
        return self._event_reply(slot, event, line, refusal)

    def _invite(self, slot: Slot, index: int, data: st.DataObject) -> tuple[bytes, Expect | None]:
        event, line = self._event_line(slot, index, data, b"INVITE")
        named = data.draw(st.lists(st.sampled_from((*USERS, "zed")), min_size=1, max_size=3))
        line += b" " + " ".join(named).encode()
        refusal: bytes | None = None
        if slot.user not in event.participants:
            refusal = b"not-invited"
        elif slot.user != event.organiser:
            refusal = b"not-organiser"
        elif "zed" in named:
            refusal = b"no-such-user"
        elif set(named) <= event.participants:
            refusal = b"already-invited"
        else:
            event.invitees |= set(named) - {event.organiser}
        return self._event_reply(slot, event, line, refusal)

    # --- rules -------------------------------------------------------------------------------

    @initialize()
    def connect(self) -> None:
        self.slots = [self.new_slot(index) for index in range(SLOTS)]
        self.probes = {name: Client(self.herd.port(name), PROBE_SECONDS * 5) for name in NAMES}

    @rule(
        index=st.integers(0, SLOTS - 1),
        data=st.data(),
        count=st.integers(1, 12),
        read=st.booleans(),
    )
    def burst(self, index: int, data: st.DataObject, count: int, read: bool) -> None:
        """Pipelined lines in one write or in pieces; replies read now or left for later."""
        slot = self.slots[index]
        wire = bytearray()
        for _ in range(count):
            line, expect = self.line_for(index, data)
            # a final CR belongs to the terminator (the expected echo drops it): then LF only
            ending = b"\n" if line.endswith(b"\r") else data.draw(terminators, label="terminator")
            wire += line + ending
            if expect is not None:
                slot.pending.append(expect)
        # drawn independently of the wire's length (client ids differ between runs)
        cuts = [
            cut % max(1, len(wire)) for cut in data.draw(st.lists(st.integers(1, 4096), max_size=6))
        ]
        self.send(slot, bytes(wire), cuts)
        if read or len(slot.pending) > PENDING_LIMIT:
            self.drain_slot(slot)

    @rule(index=st.integers(0, SLOTS - 1))
    def drain(self, index: int) -> None:
        self.drain_slot(self.slots[index])

    @rule(index=st.integers(0, SLOTS - 1), data=st.data(), unterminated=st.booleans())
    def half_close(self, index: int, data: st.DataObject, unterminated: bool) -> None:
        """Lines, the last one perhaps without LF, then SHUT_WR: every line answered, then the
        server closes."""
        slot = self.slots[index]
        line, expect = self.line_for(index, data)
        wire = line if unterminated else line + b"\n"
        if expect is not None:
            if not (unterminated and line.endswith(b"\r")):
                slot.pending.append(expect)
            else:  # a last line's final CR is kept when there is no LF: echoed with it
                slot.pending.append(Expect(line, exactly(b"? " + line + b"\n", line)))
        self.send(slot, wire)
        slot.connection.sock.shutdown(socket.SHUT_WR)
        self.drain_slot(slot)
        assert slot.connection.at_eof(REPLY_SECONDS), f"{slot.server} kept the connection open"
        assert slot.connection.buffer == b"", slot.connection.buffer
        self.reconnect(index)

    @rule(
        index=st.integers(0, SLOTS - 1),
        before=st.integers(0, 3),
        ending=st.sampled_from(("lf", "crlf", "unfinished", "half-close")),
    )
    def too_long(self, index: int, before: int, ending: str) -> None:
        """A line of `max_line + 1` bytes: the lines before it are answered, it is not, and the
        server closes the connection (also when the line never ends, or ends at a half-close)."""
        slot = self.slots[index]
        self.drain_slot(slot)
        long_line = b"#" * (MAX_LINE + 1)
        tail = {"lf": b"\n", "crlf": b"\r\n", "unfinished": b"", "half-close": b""}[ending]
        slot.connection.send(b"STATUS\n" * before + long_line + tail)
        if ending == "half-close":
            slot.connection.sock.shutdown(socket.SHUT_WR)
        assert slot.connection.at_eof(REPLY_SECONDS), f"{slot.server} did not close"
        # replies not ready when the line overflowed (STATUS waits for the group commit of
        # changes before it) may be dropped: a prefix of them arrives, and nothing else
        replies = slot.connection.buffer.split(b"\n")
        assert replies[-1] == b"", f"not a whole line: {slot.connection.buffer!r}"
        assert len(replies) - 1 <= before, f"answered a long line: {slot.connection.buffer!r}"
        assert all(reply.startswith(b"STATUS {") for reply in replies[:-1]), replies
        self.reconnect(index)

    @rule(index=st.integers(0, SLOTS - 1), data=st.data(), reset=st.booleans())
    def abort(self, index: int, data: st.DataObject, reset: bool) -> None:
        """Lines and half a line, then the connection goes (FIN or RST) without reading: what
        they would have changed is unknown from here on (but the herd must still agree)."""
        slot = self.slots[index]
        line, expect = self.line_for(index, data)
        if expect is not None:
            slot.pending.append(expect)
        self.send(slot, line + b"\n" + line[: len(line) // 2])
        for unread in slot.pending:
            if unread.report is not None:
                unread.report.certain = False
            if unread.event is not None:
                unread.event.certain = False
        if reset:
            linger = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # struct linger {on, 0 s}: RST
            slot.connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        self.reconnect(index)

    @precondition(lambda self: len(self.hogs) < 2)
    @rule(server=st.sampled_from(NAMES), lines=st.integers(100, 3000))
    def hog(self, server: str, lines: int) -> None:
        """A connection that pipelines expensive WHATSATs and never reads a reply (it stays
        open until the example ends): the probes must not notice."""
        sock = socket.create_connection(("127.0.0.1", self.herd.port(server)), timeout=5.0)
        self.hogs.append(sock)
        sock.settimeout(0.5)
        with contextlib.suppress(TimeoutError):  # the server stopped reading: backpressure
            sock.sendall(HOG_WHATSAT * lines)

    @rule(server=st.sampled_from(NAMES), lines=st.integers(50, 2000), user=st.sampled_from(USERS))
    def auth_flood(self, server: str, lines: int, user: str) -> None:
        """Wrong AUTHs pipelined on a throwaway connection that then goes: a valid AUTH on a
        fresh connection is answered within AUTH_SECONDS all the same."""
        with socket.create_connection(("127.0.0.1", self.herd.port(server)), timeout=5.0) as sock:
            sock.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                sock.sendall(b"AUTH mallory wrong-token\n" * lines)
            started = time.monotonic()
            with Client(self.herd.port(server), AUTH_SECONDS * 5) as client:
                reply = client.request(f"AUTH {user} {self.stage.tokens[user]}".encode())
            elapsed = time.monotonic() - started
        assert reply.startswith(b"USER "), reply
        assert elapsed < AUTH_SECONDS, f"AUTH took {elapsed:.2f} s after {lines} wrong AUTHs"

    # --- invariants --------------------------------------------------------------------------

    @invariant()
    def probes_are_answered_quickly(self) -> None:
        if not self.probes:
            return
        for name, probe in self.probes.items():
            client = b"hx%d-probe-%d" % (self.serial, next(self.probe_serial))
            for line, expected in (
                (b"STATUS", b'STATUS {"server":"%s"' % name.encode()),
                (b"IAMAT %s %s %s" % (client, LA, now_time()), b"AT %s " % name.encode()),
            ):
                started = time.monotonic()
                try:
                    reply = probe.request(line)
                except HerdError as error:
                    raise AssertionError(
                        f"{name} did not answer a probe {line!r}: {error}"
                    ) from None
                elapsed = time.monotonic() - started
                assert reply.startswith(expected), (name, line, reply)
                assert elapsed < PROBE_SECONDS, f"{name} took {elapsed:.2f} s to answer {line!r}"

    # --- the end of an example: read everything, then the herd must agree -------------------

    def teardown(self) -> None:
        try:
            for slot in self.slots:
                self.drain_slot(slot)
            for hog in self.hogs:
                hog.close()
            self.hogs = []
            self.check_convergence()
        finally:
            for slot in self.slots:
                slot.connection.close()
            for probe in self.probes.values():
                probe.close()
            for hog in self.hogs:
                hog.close()

    def check_convergence(self) -> None:
        expected: dict[bytes, bytes] = {}
        unknown: list[bytes] = []
        for slot in self.slots:
            for client, report in slot.reports.items():
                if report.certain and report.line is not None:
                    expected[client] = report.line[:-1]
                elif not report.certain:
                    unknown.append(client)
        if expected:
            self.herd.wait_converged(NAMES, expected, CONVERGE_SECONDS)
        if unknown:
            wait_until(lambda: self.agree_on(unknown), CONVERGE_SECONDS, f"agreement on {unknown}")
        events = [event for event in self.events if event.id is not None]
        if events:
            wait_until(
                lambda: self.events_agree(events),
                CONVERGE_SECONDS,
                lambda: f"every server to show the events as the model: {self.event_views(events)}",
            )

    def agree_on(self, clients: list[bytes]) -> bool:
        seen = [at_lines(self.herd.port(name), clients) for name in NAMES]
        return all(views == seen[0] for views in seen)

    def event_views(self, events: list[EventModel]) -> dict[str, list[bytes]]:
        views: dict[str, list[bytes]] = {}
        for name in NAMES:
            with Client(self.herd.port(name), REPLY_SECONDS) as client:
                user = None
                replies = []
                for event in events:
                    if user != event.organiser:
                        user = event.organiser
                        login = f"AUTH {user} {self.stage.tokens[user]}".encode()
                        assert client.request(login).startswith(b"USER ")
                    assert event.id is not None
                    replies.append(client.request(b"EVENT " + event.id.encode()))
                views[name] = replies
        return views

    def events_agree(self, events: list[EventModel]) -> bool:
        views = self.event_views(events)
        if any(replies != views[NAMES[0]] for replies in views.values()):
            return False
        for event, reply in zip(events, views[NAMES[0]], strict=True):
            if not reply.startswith(b"EVENT "):
                return False
            if event.certain and event_view(document_of(reply, b"EVENT")) != event.snapshot():
                return False
        return True


@pytest.mark.timeout(600)
def test_hostile_interleavings_keep_every_promise(stage: Stage) -> None:
    HostileHerd.stage = stage
    phases = (Phase.generate, Phase.shrink) if SHRINK else (Phase.generate,)
    run_state_machine_as_test(
        HostileHerd,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            phases=phases,
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
            database=None,  # each example depends on the live herd: replaying one later is moot
        ),
    )
