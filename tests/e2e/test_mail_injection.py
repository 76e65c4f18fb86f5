"""Header injection into other users' mail (issue 9, defect 6), end to end: the default herd of
`herd run` processes mailing through the project's SMTP sink, an organiser with hostile free
text, and the mails her invitee receives, read with the stdlib parser as a mail client would.

An event title made of an RFC 2047 encoded word that holds CR LF used to come out of the
builder's header parser decoded, as `Reply-To:` and `From:` headers and body text of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import cast

import icalendar
import pytest

from tests.support.lines import Session
from tests.support.smtp import SmtpProcess
from tests.support.users import add_user

from .notify_harness import SENDER, NotifyHerd, notify_setup
from .test_notify import ADDRESS, attachments, bodies, future_time, iso, start, wait_mails

pytestmark = pytest.mark.timeout(120)

# A Reply-To, a second From, then a blank line and text that would open the body.
TITLE = (
    "=?utf-8?q?Lunch=0D=0AReply-To:_attacker@evil.example"
    "=0D=0AFrom:_boss@evil.example=0D=0A=0D=0APay_now?="
)
PLACE = "=?utf-8?q?Cafe=0D=0ABcc:_spy@evil.example?="
INJECTED = ("Reply-To", "Bcc", "Cc", "Sender")


@pytest.fixture
def notify(tmp_path: Path, places_seed: Path) -> Iterator[tuple[NotifyHerd, SmtpProcess]]:
    with notify_setup(tmp_path, places_seed) as setup:
        yield setup


def check_clean(message: EmailMessage) -> None:
    """The headers a notification has and no other: one From (Renga's), no Reply-To, Bcc."""
    assert message.get_all("From") == [SENDER]
    for name in INJECTED:
        assert message[name] is None, (name, message[name])
    assert str(message["To"]) == ADDRESS["bob"]
    assert [name.lower() for name in message.keys()] == [  # noqa: SIM118 (values not parsed)
        "x-mailfrom",  # the sink's envelope record
        "x-rcptto",
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "auto-submitted",
        "list-unsubscribe",
        "mime-version",
        "content-type",
    ]


def test_a_hostile_title_and_place_reach_the_invitee_as_text_only(
    notify: tuple[NotifyHerd, SmtpProcess],
) -> None:
    herd, smtp = notify
    start(herd, smtp)
    tokens = {user: add_user(herd.config_path, user, ADDRESS[user]) for user in ("alice", "bob")}
    # bob keeps the daily digest: new options wait for it; the invitation and decision do not.
    with Session(herd.port("Bailey"), "alice", tokens["alice"]) as alice:
        event_id = str(alice.event(f"PLAN {TITLE}")["id"])
        alice.event(f"INVITE {event_id} bob")

    (invitation,) = wait_mails(smtp, 1)
    assert invitation.rcpt_to == (ADDRESS["bob"],)
    message = invitation.message
    check_clean(message)
    assert str(message["Subject"]) == f"alice invited you to {TITLE}"
    text, html = bodies(message)
    assert TITLE in text and TITLE in html  # shown as typed, nowhere decoded
    for line in text.splitlines():
        assert line.strip() != "Pay now" and not line.startswith(INJECTED), line

    # The decision: the title and the place also go into the subject and the .ics.
    when = future_time(days=3)
    with Session(herd.port("Bailey"), "alice", tokens["alice"]) as alice:
        event = alice.event(f"PROPOSE {event_id} TIME {iso(when)}")
        time_id = str(event["times"][0]["id"])
        event = alice.event(f"PROPOSE {event_id} PLACE +48.8530+002.3389 {PLACE}")
        place_id = str(event["places"][0]["id"])
        alice.event(f"DECIDE {event_id} {time_id} {place_id}")
    mails = wait_mails(smtp, 2)
    (decided,) = [mail for mail in mails if mail.name != invitation.name]
    message = decided.message
    check_clean(message)
    subject = str(message["Subject"])
    assert subject.startswith(f"Decided: {TITLE}, ") and subject.endswith(f", {PLACE}"), subject
    (ics,) = attachments(message)
    assert ics.get_filename() == "event.ics"
    calendar = icalendar.Calendar.from_ical(cast(bytes, ics.get_payload(decode=True)))
    (entry,) = calendar.walk("VEVENT")
    assert (str(entry["SUMMARY"]), str(entry["LOCATION"])) == (TITLE, PLACE)
