"""Notifications end to end: the default five-server herd of `herd run` processes with an `[smtp]`
table, a real SMTP server in its own process on loopback (stopped and started again by the
tests), users made with `herd user add`, plans made on the line protocol.

Votes to the organiser are held 60 s to be coalesced, so the tests check those in the outbox
(`herd outbox list`) and look at the mails that go out at once: invitations, new options for
users without digests, a quorum, decisions.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import cast
from zoneinfo import ZoneInfo

import icalendar
import pytest

from tests.support.herd import NAMES
from tests.support.lines import Client, Session, option_ids
from tests.support.polling import stays_false, wait_until
from tests.support.smtp import Mail, SmtpProcess
from tests.support.users import add_user, herd_cli

from .notify_harness import NotifyHerd, notify_setup, outbox_rows

pytestmark = pytest.mark.timeout(90)

DELIVERY_SECONDS = 30.0  # the outbox retries after 1, 2, 4, 8 s (±jitter): well within this
SETTLE_SECONDS = 1.0  # nothing more may arrive during this after the expected mails
LA = "America/Los_Angeles"
ADDRESS = {user: f"{user}@example.net" for user in ("alice", "bob", "carol")}
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_UNSUBSCRIBE = re.compile(r"<mailto:renga@example\.org\?subject=OPTOUT%20(\w+)%20([\w-]+)>")


@pytest.fixture
def notify(tmp_path: Path, places_seed: Path) -> Iterator[tuple[NotifyHerd, SmtpProcess]]:
    """A herd config with `[smtp]` and an SMTP server on its port, neither started yet."""
    with notify_setup(tmp_path, places_seed) as setup:
        yield setup


# --- helpers ------------------------------------------------------------------------------------


def start(
    herd: NotifyHerd, smtp: SmtpProcess, refuse: tuple[str, ...] = (), stall: bool = False
) -> None:
    """The herd and the SMTP server, started side by side; returns once the links are up."""
    herd.start()
    smtp.start(refuse=refuse, stall=stall)
    herd.wait_answering()
    herd.wait_links()


def make_users(herd: NotifyHerd, *users: str) -> dict[str, str]:
    """`herd user add` for each (side by side); their tokens."""
    with ThreadPoolExecutor(len(users)) as pool:
        tokens = pool.map(lambda user: add_user(herd.config_path, user, ADDRESS[user]), users)
        return dict(zip(users, tokens, strict=True))


def future_time(days: int) -> int:
    """A whole hour `days` from now, POSIX seconds."""
    return (int(time.time()) // 3600 + 24 * days) * 3600


def iso(posix: int) -> str:
    return datetime.fromtimestamp(posix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def local_label(posix: int, zone: str) -> str:
    """How a time should read in `zone` (`Sat 5 Dec 11:00 PST`, with the year when it is not
    this year there), spelt here independently."""
    moment = datetime.fromtimestamp(posix, ZoneInfo(zone))
    day, month = _DAYS[moment.weekday()], _MONTHS[moment.month - 1]
    this_year = datetime.now(ZoneInfo(zone)).year
    year = "" if moment.year == this_year else f" {moment.year}"
    return f"{day} {moment.day} {month}{year} {moment:%H:%M} {moment.tzname()}"


def wait_mails(smtp: SmtpProcess, count: int, timeout: float = DELIVERY_SECONDS) -> list[Mail]:
    """Until at least `count` mails are kept; then (after a settling pause) all of them."""
    wait_until(
        lambda: len(smtp.mails()) >= count,
        timeout,
        lambda: f"{count} mails; have {[m.message['Subject'] for m in smtp.mails()]}",
    )
    assert stays_false(lambda: len(smtp.mails()) > count, SETTLE_SECONDS), [
        (m.rcpt_to, m.message["Subject"]) for m in smtp.mails()
    ]
    return smtp.mails()


def by_recipient(mails: list[Mail]) -> dict[str, list[str]]:
    """Envelope recipient -> subjects, sorted."""
    result: dict[str, list[str]] = {}
    for mail in mails:
        assert len(mail.rcpt_to) == 1, mail.rcpt_to
        result.setdefault(mail.rcpt_to[0], []).append(str(mail.message["Subject"]))
    return {address: sorted(subjects) for address, subjects in result.items()}


def bodies(message: EmailMessage) -> tuple[str, str]:
    """(text, html) of a notification mail: `multipart/alternative`, text then HTML, alone or
    first in a `multipart/mixed` with attachments."""
    alternative = message
    if message.get_content_type() == "multipart/mixed":
        alternative = cast(list[EmailMessage], message.get_payload())[0]
    assert alternative.get_content_type() == "multipart/alternative", message.get_content_type()
    text, html = cast(list[EmailMessage], alternative.get_payload())
    assert (text.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
    return str(text.get_content()), str(html.get_content())


def attachments(message: EmailMessage) -> list[EmailMessage]:
    if message.get_content_type() != "multipart/mixed":
        return []
    return cast(list[EmailMessage], message.get_payload())[1:]


def check_headers(mail: Mail, user: str) -> str:
    """The headers every notification mail has; returns its thread root."""
    message = mail.message
    assert mail.rcpt_to == (ADDRESS[user],)
    assert str(message["To"]) == ADDRESS[user]
    assert str(message["From"]) == "Renga <renga@example.org>"
    assert message["Bcc"] is None and message["Cc"] is None
    subject = str(message["Subject"])
    assert "\n" not in subject and "\r" not in subject and subject
    assert re.fullmatch(r"<[^<>@\s]+@[^<>@\s]+>", str(message["Message-ID"])), message["Message-ID"]
    root = str(message["In-Reply-To"])
    assert re.fullmatch(r"<[^<>@\s]+@[^<>@\s]+>", root), root
    assert str(message["References"]) == root
    assert str(message["Auto-Submitted"]) == "auto-generated"
    unsubscribe = _UNSUBSCRIBE.fullmatch(str(message["List-Unsubscribe"]))
    assert unsubscribe is not None, message["List-Unsubscribe"]
    assert unsubscribe[1] == user
    for name in ("Subject", "Message-ID", "From", "To", "Date"):
        assert len(message.get_all(name) or []) == 1, name
    return root


def pending_by_server(herd: NotifyHerd) -> dict[str, list[str]]:
    """`herd outbox list`: server -> its pending rows' lines."""
    done = herd_cli(herd.config_path, "outbox", "list")
    assert done.returncode == 0, done.stderr
    return _outbox_listing(done.stdout, "pending")


def dead_by_server(herd: NotifyHerd) -> dict[str, list[str]]:
    done = herd_cli(herd.config_path, "outbox", "dead")
    assert done.returncode == 0, done.stderr
    return _outbox_listing(done.stdout, "dead")


def _outbox_listing(output: str, what: str) -> dict[str, list[str]]:
    """Server -> the table lines under its `<server>: <n> <what>` line (header dropped)."""
    result: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    current: list[str] = []
    for line in output.splitlines():
        match = re.fullmatch(rf"(\w+): (\d+) {what}", line)
        if match is not None:
            current = result[match[1]] = []
            counts[match[1]] = int(match[2])
        elif line.startswith("  ") and line.split()[0] != "KEY":
            current.append(line.strip())
    assert {name: len(lines) for name, lines in result.items()} == counts, output
    return result


def outbox_fields(line: str) -> tuple[str, str, str, str, int, bool, str]:
    """(key, channel, recipient, state, tries, possible duplicate, when) of one listed row."""
    key, channel, recipient, state, tries, when = line.split()[:6]
    return key, channel, recipient, state, int(tries.split("+")[0]), "+dup" in tries, when


def count_lines(listing: dict[str, list[str]]) -> int:
    return sum(len(lines) for lines in listing.values())


def plan(herd: NotifyHerd, tokens: dict[str, str], title: str, *invitees: str) -> str:
    """alice plans at Bailey and invites; the event's id, once every server has it."""
    with Session(herd.port("Bailey"), "alice", tokens["alice"]) as alice:
        event_id = str(alice.event(f"PLAN {title}")["id"])
        if invitees:
            alice.event(f"INVITE {event_id} {' '.join(invitees)}")
    for name in NAMES:
        with Session(herd.port(name), "alice", tokens["alice"]) as alice:
            alice.wait_event(event_id, lambda e: sorted(e["invitees"]) == sorted(invitees))
    return event_id


# --- 1. a plan from start to decision -----------------------------------------------------------


def test_a_plan_across_the_herd_mails_the_right_people_once_each(
    notify: tuple[NotifyHerd, SmtpProcess],
) -> None:
    herd, smtp = notify
    start(herd, smtp)
    tokens = make_users(herd, "alice", "bob", "carol")
    with Session(herd.port("Bailey"), "bob", tokens["bob"]) as bob:
        bob.user_set("tz", LA)
        bob.user_set("digest", "off")  # new options by mail at once
    with Session(herd.port("Bailey"), "alice", tokens["alice"]) as alice:
        alice.user_set("digest", "off")
        # carol keeps the daily digest: only urgent notices reach her at once.
        event_id = str(alice.event("PLAN Dinner at Paul's")["id"])
        alice.event(f"INVITE {event_id} bob carol")
    when = future_time(days=10)
    with Session(herd.port("Bona"), "alice", tokens["alice"]) as alice:
        alice.wait_event(event_id, lambda e: len(e["invitees"]) == 2)
        (time_id,) = option_ids(alice.event(f"PROPOSE {event_id} TIME {iso(when)}"), "times")
    with Session(herd.port("Bona"), "bob", tokens["bob"]) as bob:
        (place_id,) = option_ids(
            bob.event(f"PROPOSE {event_id} PLACE +48.8530+002.3389 Le Procope"), "places"
        )
    with Session(herd.port("Jaquez"), "bob", tokens["bob"]) as bob:
        bob.wait_event(event_id, lambda e: len(e["places"]) == 1 == len(e["times"]))
        bob.event(f"VOTE {event_id} {time_id} YES")
        bob.event(f"VOTE {event_id} {place_id} YES")
    with Session(herd.port("Clark"), "carol", tokens["carol"]) as carol:
        carol.wait_event(event_id, lambda e: len(e["places"]) == 1 == len(e["times"]))
        carol.event(f"VOTE {event_id} {time_id} YES")  # a majority: the organiser is told now
        carol.event(f"VOTE {event_id} {place_id} MAYBE")
    with Session(herd.port("Campbell"), "alice", tokens["alice"]) as alice:
        alice.wait_event(
            event_id,
            lambda e: e["places"][0]["maybe"] == ["carol"],
        )
        decided_at = time.time()
        decided = alice.event(f"DECIDE {event_id} {time_id} {place_id}")
    assert decided["status"] == "decided"

    utc_label, la_label = local_label(when, "UTC"), local_label(when, LA)
    expected = {
        ADDRESS["alice"]: sorted(
            [
                "New place for Dinner at Paul's: Le Procope",
                f"Dinner at Paul's: a majority can make {utc_label}",
            ]
        ),
        ADDRESS["bob"]: sorted(
            [
                "alice invited you to Dinner at Paul's",
                f"New time for Dinner at Paul's: {la_label}",
                f"Decided: Dinner at Paul's, {la_label}, Le Procope",
            ]
        ),
        ADDRESS["carol"]: sorted(
            [
                "alice invited you to Dinner at Paul's",
                f"Decided: Dinner at Paul's, {utc_label}, Le Procope",
            ]
        ),
    }
    mails = wait_mails(smtp, sum(len(subjects) for subjects in expected.values()))
    assert by_recipient(mails) == expected

    # Every mail once, all threaded to one root, with the headers a mail client needs.
    assert len({mail.message_id for mail in mails}) == len(mails)
    user_of = {address: user for user, address in ADDRESS.items()}
    roots = {check_headers(mail, user_of[mail.rcpt_to[0]]) for mail in mails}
    assert len(roots) == 1, roots
    for mail in mails:
        text, html = bodies(mail.message)
        user = user_of[mail.rcpt_to[0]]
        zone = LA if user == "bob" else "UTC"
        assert f"times in {zone}" in text and f"times in {zone}" in html
        assert event_id in text
        if "invited" not in str(mail.message["Subject"]):
            assert local_label(when, zone) in text and local_label(when, zone) in html
        subject = str(mail.message["Subject"])
        if subject.startswith("Decided"):
            check_calendar(mail, when, event_id)
        else:
            assert attachments(mail.message) == []

    # The votes wait 60 s for more, not mailed yet: bob's two (accepted at Jaquez) and carol's
    # (at Clark) are one message, held by the one server that holds alice's duties.
    pending = pending_by_server(herd)
    votes = {
        name: held
        for name, lines in pending.items()
        if (held := [line for line in lines if "Votes on" in line])
    }
    assert [len(held) for held in votes.values()] == [1], pending
    assert all(ADDRESS["alice"] in line for lines in votes.values() for line in lines)
    assert count_lines(pending) == count_lines(votes), pending
    for lines in votes.values():
        due = outbox_fields(lines[0])[6]
        due_at = datetime.strptime(due, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert due_at >= datetime.fromtimestamp(decided_at, UTC) + timedelta(seconds=30)

    # Each notice sent by the server that accepted its change, and by no other.
    accepted_by = {
        "alice invited you": "Bailey",
        "New ": "Bona",
        "Votes on": None,  # alice's home, checked above
        "Dinner at Paul's: a majority": "Clark",
        "Decided:": "Campbell",
    }
    for name in NAMES:
        for row in outbox_rows(herd.database(name)):
            assert row.channel == "email", row
            (prefix,) = [p for p in accepted_by if row.subject.startswith(p)]
            if accepted_by[prefix] is not None:
                assert name == accepted_by[prefix], (name, row)


def check_calendar(mail: Mail, when: int, event_id: str) -> None:
    """The decided mail's `.ics`: one VEVENT starting at the decided time (UTC), no attendees,
    no other person's address."""
    (ics,) = attachments(mail.message)
    assert ics.get_content_type() == "text/calendar"
    assert ics.get_filename() == "event.ics"
    data = ics.get_payload(decode=True)
    assert isinstance(data, bytes)
    calendar = icalendar.Calendar.from_ical(data)
    events = list(calendar.walk("VEVENT"))
    assert len(events) == 1
    (entry,) = events
    start = entry.decoded("DTSTART")
    assert isinstance(start, datetime) and start.utcoffset() == timedelta(0)
    assert start == datetime.fromtimestamp(when, UTC)
    assert entry.get("ATTENDEE") is None
    assert event_id in str(entry.get("UID"))
    for address in ADDRESS.values():
        assert address.encode() not in data


# --- 2. the SMTP server down for a while ----------------------------------------------------------


def test_notices_made_while_smtp_is_down_arrive_once_it_is_back(
    notify: tuple[NotifyHerd, SmtpProcess],
) -> None:
    herd, smtp = notify
    start(herd, smtp)
    tokens = make_users(herd, "alice", "bob", "carol")
    event_id = plan(herd, tokens, "Picnic")
    when = future_time(days=3)
    assert smtp.mails() == []  # nobody invited yet
    smtp.stop()
    with Session(herd.port("Bailey"), "alice", tokens["alice"]) as alice:
        alice.event(f"INVITE {event_id} bob carol")
    with Session(herd.port("Bona"), "alice", tokens["alice"]) as alice:
        alice.wait_event(event_id, lambda e: len(e["invitees"]) == 2)
        (time_id,) = option_ids(alice.event(f"PROPOSE {event_id} TIME {iso(when)}"), "times")
        (place_id,) = option_ids(alice.event(f"PROPOSE {event_id} PLACE The park"), "places")
    with Session(herd.port("Campbell"), "alice", tokens["alice"]) as alice:
        alice.wait_event(event_id, lambda e: len(e["places"]) == 1)
        alice.event(f"DECIDE {event_id} {time_id} {place_id}")

    def retried() -> bool:
        lines = [line for lines in pending_by_server(herd).values() for line in lines]
        return len(lines) == 4 and all(outbox_fields(line)[4] >= 2 for line in lines)

    wait_until(retried, 10.0, lambda: f"two failed attempts each: {pending_by_server(herd)}")
    assert smtp.mails() == []
    smtp.start()
    mails = wait_mails(smtp, 4)
    decided = f"Decided: Picnic, {local_label(when, 'UTC')}, The park"
    assert by_recipient(mails) == {
        ADDRESS[user]: sorted(["alice invited you to Picnic", decided]) for user in ("bob", "carol")
    }
    assert len({mail.message_id for mail in mails}) == 4
    wait_until(lambda: count_lines(pending_by_server(herd)) == 0, 5.0, "an empty outbox")


# --- 3. a recipient refused for good ------------------------------------------------------------


def test_a_refused_recipient_is_a_dead_letter_until_the_operator_retries_it(
    notify: tuple[NotifyHerd, SmtpProcess],
) -> None:
    herd, smtp = notify
    start(herd, smtp, refuse=(ADDRESS["bob"],))
    tokens = make_users(herd, "alice", "bob", "carol")
    plan(herd, tokens, "Brunch", "bob", "carol")
    mails = wait_mails(smtp, 1)
    assert by_recipient(mails) == {ADDRESS["carol"]: ["alice invited you to Brunch"]}

    def one_dead() -> dict[str, list[str]] | None:
        listing = dead_by_server(herd)
        return listing if count_lines(listing) else None

    dead = wait_until(one_dead, 10.0, "a dead letter")
    assert {name: len(lines) for name, lines in dead.items() if lines} == {"Bailey": 1}
    (line,) = dead["Bailey"]
    _, channel, recipient, state, _, _, _ = outbox_fields(line)
    assert (channel, recipient, state) == ("email", ADDRESS["bob"], "dead")
    assert "550" in line
    assert count_lines(pending_by_server(herd)) == 0  # a 5xx is not retried by itself

    smtp.stop()  # the relay learns about bob; the operator replays the dead letter
    smtp.start()
    done = herd_cli(herd.config_path, "outbox", "retry")
    assert done.returncode == 0, done.stderr
    assert "Bailey: 1 dead letters queued again" in done.stdout, done.stdout
    mails = wait_mails(smtp, 2, timeout=15.0)  # picked up at the outbox's next poll (5 s)
    assert by_recipient(mails) == {
        ADDRESS[user]: ["alice invited you to Brunch"] for user in ("bob", "carol")
    }
    assert len({mail.message_id for mail in mails}) == 2
    assert count_lines(dead_by_server(herd)) == 0
    assert count_lines(pending_by_server(herd)) == 0


# --- 4. the whole herd SIGKILLed while mails are on their way -----------------------------------


def test_sigkill_mid_delivery_loses_nothing_and_repeats_only_flagged_mails(
    notify: tuple[NotifyHerd, SmtpProcess],
) -> None:
    herd, smtp = notify
    start(herd, smtp, stall=True)  # keeps each message, never answers its DATA
    tokens = make_users(herd, "alice", "bob", "carol")
    event_id = plan(herd, tokens, "Party", "bob", "carol")
    wait_until(lambda: len(smtp.mails()) == 2, 10.0, "the two invitations at the SMTP server")
    stalled = {mail.message_id for mail in smtp.mails()}

    def sending() -> bool:
        lines = [line for lines in pending_by_server(herd).values() for line in lines]
        return len(lines) == 2 and all(outbox_fields(line)[3] == "sending" for line in lines)

    wait_until(sending, 5.0, lambda: f"two rows sending: {pending_by_server(herd)}")
    herd.kill()  # mid-delivery: the message is there, the herd never heard 250
    smtp.stop()
    herd.up()  # SMTP is down now: what the herd does is queued
    when = future_time(days=4)
    with Session(herd.port("Bona"), "alice", tokens["alice"]) as alice:
        (time_id,) = option_ids(alice.event(f"PROPOSE {event_id} TIME {iso(when)}"), "times")
        (place_id,) = option_ids(alice.event(f"PROPOSE {event_id} PLACE Home"), "places")
        alice.event(f"DECIDE {event_id} {time_id} {place_id}")

    def queued() -> list[str] | None:
        lines = [line for lines in pending_by_server(herd).values() for line in lines]
        ready = len(lines) == 4 and all(outbox_fields(line)[4] >= 1 for line in lines)
        return lines if ready else None

    lines = wait_until(queued, 10.0, lambda: f"four rows tried: {pending_by_server(herd)}")
    # The operator sees which ones may reach their recipient twice: those cut off mid-delivery.
    interrupted = {outbox_fields(line)[2] for line in lines if "invited" in line}
    assert interrupted == {ADDRESS["bob"], ADDRESS["carol"]}
    assert all(outbox_fields(line)[5] for line in lines if "invited" in line), lines
    herd.kill()
    smtp.start()
    herd.up()

    mails = wait_mails(smtp, 6)
    decided = f"Decided: Party, {local_label(when, 'UTC')}, Home"
    counts = Counter(
        (mail.rcpt_to, str(mail.message["Subject"]), mail.message_id) for mail in mails
    )
    notices = {(rcpt, subject) for rcpt, subject, _ in counts}
    assert notices == {
        ((ADDRESS[user],), subject)
        for user in ("bob", "carol")
        for subject in ("alice invited you to Party", decided)
    }
    assert len({message_id for _, _, message_id in counts}) == 4  # one Message-ID per notice
    # The herd never heard that the stalled two arrived, so it sent them again (at least
    # once); nothing else twice.
    assert {message_id: count for (_, _, message_id), count in counts.items()} == {
        message_id: 2 if message_id in stalled else 1 for _, _, message_id in counts
    }
    flagged = {
        (row.recipient, row.subject)
        for name in NAMES
        for row in outbox_rows(herd.database(name))
        if row.possible_duplicate
    }
    repeated = {(rcpt[0], subject) for (rcpt, subject, _), count in counts.items() if count > 1}
    assert repeated <= flagged, "every repeated mail is flagged possible_duplicate"
    wait_until(lambda: count_lines(pending_by_server(herd)) == 0, 5.0, "an empty outbox")


def test_a_mail_resent_after_smtp_died_mid_data_is_flagged_possible_duplicate(
    notify: tuple[NotifyHerd, SmtpProcess],
) -> None:
    herd, smtp = notify
    start(herd, smtp, stall=True)
    tokens = make_users(herd, "alice", "bob")
    plan(herd, tokens, "Supper", "bob")
    wait_until(lambda: len(smtp.mails()) == 1, 10.0, "the invitation at the SMTP server")
    smtp.stop()  # the server kept the message and dies before answering its DATA
    smtp.start()
    mails = wait_mails(smtp, 2)
    assert len({mail.message_id for mail in mails}) == 1  # the same mail, twice
    (row,) = outbox_rows(herd.database("Bailey"))
    assert row.state == "delivered"
    assert row.possible_duplicate, "a repeated mail must be flagged possible_duplicate"


# --- 5. line pushes -----------------------------------------------------------------------------


def quiet(client: Client, seconds: float) -> bytes:
    """What arrives on `client` within `seconds` (its buffer included): b"" if nothing does."""
    data, client.buffer = client.buffer, b""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        client.sock.settimeout(remaining)
        try:
            chunk = client.sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data


_PUSH = re.compile(rb"PUSH (\S+) (\w+) (\S+) (.*)\n")


def read_push(client: Client, event_id: str) -> tuple[bytes, bytes]:
    """(checkpoint, kind) of the next line, which must be a push about `event_id`."""
    line = client.line()
    match = _PUSH.fullmatch(line)
    assert match is not None, line
    assert match[3] == event_id.encode(), line
    return match[1], match[2]


def test_line_subscribers_get_pushes_live_and_resume_without_gaps_or_repeats(
    notify: tuple[NotifyHerd, SmtpProcess],
) -> None:
    herd, smtp = notify
    start(herd, smtp)
    tokens = make_users(herd, "alice", "bob", "carol")
    event_id = plan(herd, tokens, "Games night", "bob", "carol")
    with Session(herd.port("Bailey"), "alice", tokens["alice"]) as alice:
        (time_id,) = option_ids(
            alice.event(f"PROPOSE {event_id} TIME {iso(future_time(5))}"), "times"
        )
        (place_id,) = option_ids(alice.event(f"PROPOSE {event_id} PLACE Upstairs"), "places")
    for name in ("Bailey", "Clark", "Jaquez", "Campbell"):
        with Session(herd.port(name), "alice", tokens["alice"]) as alice:
            alice.wait_event(event_id, lambda e: len(e["places"]) == 1)

    with Session(herd.port("Jaquez"), "alice", tokens["alice"]) as subscriber:
        subscribed = subscriber.request(b"SUBSCRIBE")
        assert re.fullmatch(rb"SUBSCRIBED alice \S+\n", subscribed), subscribed
        with Session(herd.port("Bailey"), "bob", tokens["bob"]) as bob:
            voted = time.monotonic()
            bob.event(f"VOTE {event_id} {place_id} YES")
        first, kind = read_push(subscriber, event_id)
        assert time.monotonic() - voted < 2.0
        assert kind == b"votes"
        assert quiet(subscriber, 0.5) == b""  # once

    # While alice is away: carol votes at Clark, bob at Bailey.
    with Session(herd.port("Clark"), "carol", tokens["carol"]) as carol:
        carol.event(f"VOTE {event_id} {place_id} MAYBE")
    with Session(herd.port("Bailey"), "bob", tokens["bob"]) as bob:
        bob.event(f"VOTE {event_id} {time_id} NO")
    with Session(herd.port("Jaquez"), "alice", tokens["alice"]) as alice:
        alice.wait_event(
            event_id,
            lambda e: e["places"][0]["maybe"] == ["carol"] and e["times"][0]["no"] == ["bob"],
        )

    with Session(herd.port("Jaquez"), "alice", tokens["alice"]) as subscriber:
        subscribed = subscriber.request(b"SUBSCRIBE " + first)
        match = re.fullmatch(rb"SUBSCRIBED alice (\S+)\n", subscribed)
        assert match is not None, subscribed
        missed = [read_push(subscriber, event_id) for _ in range(2)]
        assert [kind for _, kind in missed] == [b"votes", b"votes"]
        checkpoints = [checkpoint for checkpoint, _ in missed]
        assert first < checkpoints[0] < checkpoints[1]  # in order, none seen before
        assert match[1] == checkpoints[1]
        assert quiet(subscriber, 0.5) == b""  # nothing repeated
        with Session(herd.port("Bailey"), "bob", tokens["bob"]) as bob:
            bob.event(f"VOTE {event_id} {place_id} NO")
        live, _ = read_push(subscriber, event_id)
        assert live > checkpoints[1]
        assert quiet(subscriber, 0.5) == b""

    # Checkpoints are the same on every server: resuming elsewhere gives the same feed.
    with Session(herd.port("Campbell"), "alice", tokens["alice"]) as subscriber:
        subscriber.request(b"SUBSCRIBE " + first)
        again = [read_push(subscriber, event_id)[0] for _ in range(3)]
        assert again == [*checkpoints, live]
        assert quiet(subscriber, 0.5) == b""


def test_a_subscriber_resuming_at_a_restarted_server_gets_what_it_missed(
    notify: tuple[NotifyHerd, SmtpProcess],
) -> None:
    herd, smtp = notify
    start(herd, smtp)
    tokens = make_users(herd, "alice", "bob")
    event_id = plan(herd, tokens, "Quiz", "bob")
    with Session(herd.port("Bailey"), "alice", tokens["alice"]) as alice:
        (place_id,) = option_ids(alice.event(f"PROPOSE {event_id} PLACE The pub"), "places")
    with Session(herd.port("Jaquez"), "alice", tokens["alice"]) as subscriber:
        subscriber.wait_event(event_id, lambda e: len(e["places"]) == 1)
        assert subscriber.request(b"SUBSCRIBE").startswith(b"SUBSCRIBED alice ")
        with Session(herd.port("Bailey"), "bob", tokens["bob"]) as bob:
            bob.event(f"VOTE {event_id} {place_id} YES")
        first, _ = read_push(subscriber, event_id)
    with Session(herd.port("Bailey"), "bob", tokens["bob"]) as bob:  # alice is away
        bob.event(f"VOTE {event_id} {place_id} NO")
    with Session(herd.port("Jaquez"), "alice", tokens["alice"]) as alice:
        alice.wait_event(event_id, lambda e: e["places"][0]["no"] == ["bob"])
    assert herd.terminate("Jaquez") == 0  # a clean restart of alice's server
    herd.start("Jaquez")
    herd.wait_answering("Jaquez")
    herd.wait_links()
    with Session(herd.port("Jaquez"), "alice", tokens["alice"]) as subscriber:
        subscribed = subscriber.request(b"SUBSCRIBE " + first)
        replayed = quiet(subscriber, 1.0)
    match = _PUSH.fullmatch(replayed)
    assert match is not None, (subscribed, replayed)
    assert (match[2], match[3]) == (b"votes", event_id.encode())
    assert match[1] > first
    assert subscribed == b"SUBSCRIBED alice " + match[1] + b"\n"


# --- 6. hostile titles --------------------------------------------------------------------------


def test_hostile_titles_add_no_header_and_no_markup(
    notify: tuple[NotifyHerd, SmtpProcess],
) -> None:
    herd, smtp = notify
    start(herd, smtp)
    tokens = make_users(herd, "alice", "bob")
    with Session(herd.port("Bailey"), "bob", tokens["bob"]) as bob:
        bob.user_set("digest", "off")
    title = "F\u00eate \u2615 <script>alert(1)</script> Bcc: evil@x.org"
    place = "<img src=x onerror=alert(2)> Bcc: evil@x.org Cc: evil@x.org"
    with Session(herd.port("Bailey"), "alice", tokens["alice"]) as alice:
        # CR LF ends the line: the rest is a line of its own, and not a command.
        alice.send(b"PLAN Party\r\nBcc: evil@x.org <script>alert(1)</script>\n")
        assert alice.line().startswith(b"EVENT ")
        assert alice.line() == b"? Bcc: evil@x.org <script>alert(1)</script>\n"
        # A CR inside a line is a control character: no title has one.
        refused = alice.request(b"PLAN Party\rBcc: evil@x.org <script>alert(1)</script>")
        assert refused.startswith(b"ERR "), refused
        event_id = str(alice.event(f"PLAN {title}")["id"])
        assert alice.event(f"INVITE {event_id} bob")["title"] == title
        # U+2028 and U+0085 end a line for some readers: no free text has one.
        for separator in ("\u2028", "\u0085"):
            broken = place.replace(" Cc:", separator + "Cc:")
            refused = alice.request(f"PROPOSE {event_id} PLACE {broken}".encode())
            assert refused.startswith(b"ERR bad-text: "), refused
        alice.event(f"PROPOSE {event_id} PLACE {place}".encode())
    mails = wait_mails(smtp, 2)
    assert by_recipient(mails) == {
        ADDRESS["bob"]: sorted(
            [
                f"alice invited you to {title}",
                f"New place for {title}: {place}",
            ]
        )
    }
    for mail in mails:
        check_headers(mail, "bob")
        raw = (smtp.directory / "mail" / f"{mail.name}.eml").read_bytes()
        head = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        for line in head:
            assert re.match(rb"[!-9;-~]+: |[ \t]", line), line  # a header or its continuation
            assert not line.lower().startswith(b"bcc"), line
        text, html = bodies(mail.message)
        assert title in text
        assert "<script" not in html and "<img" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    (new_place,) = [m for m in mails if str(m.message["Subject"]).startswith("New place")]
    assert "&lt;img src=x onerror=alert(2)&gt;" in bodies(new_place.message)[1]


# --- 7. unsubscribing -----------------------------------------------------------------------------


def unsubscribe_line(mail: Mail) -> str:
    """The line command a `mailto:` List-Unsubscribe asks to send: its subject, decoded."""
    header = str(mail.message["List-Unsubscribe"])
    assert header.startswith("<mailto:") and header.endswith(">"), header
    url = urllib.parse.urlsplit(header[1:-1])
    (subject,) = urllib.parse.parse_qs(url.query)["subject"]
    return subject


def test_the_unsubscribe_token_of_a_mail_stops_email_for_its_user(
    notify: tuple[NotifyHerd, SmtpProcess],
) -> None:
    herd, smtp = notify
    start(herd, smtp)
    tokens = make_users(herd, "alice", "bob", "carol")
    event_id = plan(herd, tokens, "Drinks", "bob", "carol")
    mails = wait_mails(smtp, 2)
    (to_bob,) = [mail for mail in mails if mail.rcpt_to == (ADDRESS["bob"],)]
    (to_carol,) = [mail for mail in mails if mail.rcpt_to == (ADDRESS["carol"],)]
    command = unsubscribe_line(to_bob)
    word, user, token = command.split()
    assert (word, user) == ("OPTOUT", "bob")
    carol_token = unsubscribe_line(to_carol).split()[2]
    with Client(herd.port("Jaquez")) as stranger:  # no AUTH: the token is the proof
        for wrong in (
            f"OPTOUT bob {token[:-1]}{'A' if token[-1] != 'A' else 'B'}",
            f"OPTOUT bob {carol_token}",
            f"OPTOUT carol {token}",
            f"OPTOUT nobody {token}",
            "OPTOUT bob",
        ):
            assert stranger.request(wrong.encode()) == b"? " + wrong.encode() + b"\n"
        assert stranger.request(command.encode()) == b"OPTOUT bob\n"

    def email_off(server: str) -> bool:
        with Session(herd.port(server), "bob", tokens["bob"]) as bob:
            reply = bob.request(b"USER")
        return b'"email"' not in reply.split(b'"channels":', 1)[1].split(b"]", 1)[0]

    wait_until(lambda: email_off("Campbell"), 5.0, "bob's channels without email at Campbell")
    with Session(herd.port("Campbell"), "carol", tokens["carol"]) as carol:
        carol_view = carol.request(b"USER")
    assert b'"email"' in carol_view.split(b'"channels":', 1)[1].split(b"]", 1)[0]
    when = future_time(days=6)
    with Session(herd.port("Campbell"), "alice", tokens["alice"]) as alice:
        (time_id,) = option_ids(alice.event(f"PROPOSE {event_id} TIME {iso(when)}"), "times")
        (place_id,) = option_ids(alice.event(f"PROPOSE {event_id} PLACE The bar"), "places")
        alice.event(f"DECIDE {event_id} {time_id} {place_id}")
    mails = wait_mails(smtp, 3)
    assert by_recipient(mails) == {
        ADDRESS["bob"]: ["alice invited you to Drinks"],
        ADDRESS["carol"]: sorted(
            ["alice invited you to Drinks", f"Decided: Drinks, {local_label(when, 'UTC')}, The bar"]
        ),
    }
