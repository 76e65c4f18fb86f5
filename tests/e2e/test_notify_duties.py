"""Who sends what is held for a user, on real `herd run` processes with a real SMTP server: a
user's digest still goes out while their home server is down, is not sent again when it comes
back, and votes cast at two servers give the organiser one mail.

Three servers, all linked to each other, with short leases (`[notifications]`): a server
silent for 4 s hands its users' duties to the next one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support.lines import Session, option_ids
from tests.support.polling import stays_false, wait_until
from tests.support.smtp import SmtpProcess
from tests.support.users import add_user

from .notify_harness import NotifyHerd, notify_setup, outbox_rows

pytestmark = pytest.mark.timeout(120)

NAMES = ("Bailey", "Bona", "Campbell")
LINKS = (("Bailey", "Bona"), ("Bona", "Campbell"), ("Campbell", "Bailey"))
LEASE_VALID = 4.0  # generous: a loaded machine may delay a 0.5 s renewal by seconds
DIGEST_IN = 25.0  # seconds from writing the config to the digest hour: the setup fits in it
SETTLE_SECONDS = 4.0
ADDRESS = {user: f"{user}@example.net" for user in ("alice", "bob", "carol")}
DIGEST = "Your daily Renga digest"


def notifications(digest_at: str = "08:00", coalesce_window: float = 60.0) -> str:
    return "\n".join(
        [
            "",
            "[notifications]",
            "lease_renew = 0.5",
            f"lease_valid = {LEASE_VALID}",
            "look_every = 0.5",
            f"coalesce_window = {coalesce_window}",
            f'digest_at = "{digest_at}"',
            "",
        ]
    )


@pytest.fixture
def duties(tmp_path: Path) -> Iterator[tuple[NotifyHerd, SmtpProcess]]:
    """No places index seeded: these tests never ask for places."""
    with notify_setup(tmp_path, None, names=NAMES, links=LINKS) as setup:
        yield setup


def start(herd: NotifyHerd, smtp: SmtpProcess, settings: str) -> None:
    herd.notifications = settings
    herd.write_config(herd.config_path, herd.links)
    herd.start()
    smtp.start()
    herd.wait_answering()
    herd.wait_links()


def subjects_to(smtp: SmtpProcess, user: str) -> list[str]:
    return [str(m.message["Subject"]) for m in smtp.mails() if m.rcpt_to == (ADDRESS[user],)]


def senders_of(herd: NotifyHerd, prefix: str) -> dict[str, int]:
    """Server -> how many rows of its outbox have a subject starting with `prefix`."""
    counts = {
        name: sum(row.subject.startswith(prefix) for row in outbox_rows(herd.database(name)))
        for name in herd.names
    }
    return {name: count for name, count in counts.items() if count}


def test_a_digest_goes_out_while_its_home_server_is_down_and_once_only(
    duties: tuple[NotifyHerd, SmtpProcess],
) -> None:
    herd, smtp = duties
    due = time.time() + DIGEST_IN
    start(herd, smtp, notifications(digest_at=datetime.fromtimestamp(due, UTC).strftime("%T")))
    alice = add_user(herd.config_path, "alice", ADDRESS["alice"], server="Bailey")
    carol = add_user(herd.config_path, "carol", ADDRESS["carol"], server="Bona")  # her home
    with Session(herd.port("Bailey"), "alice", alice) as session:
        session.user_set("digest", "off")
        event_id = str(session.event("PLAN Picnic")["id"])
        session.event(f"INVITE {event_id} carol")  # urgent: mailed at once
        session.event(f"PROPOSE {event_id} PLACE +48.8530+002.3389 Le Parc")  # for the digest
    with Session(herd.port("Campbell"), "carol", carol) as session:
        session.wait_event(event_id, lambda e: len(e["places"]) == 1)
    wait_until(lambda: subjects_to(smtp, "carol") != [], 30.0, lambda: "carol's invitation")

    herd.terminate("Bona")
    stopped = time.time()
    assert stopped + LEASE_VALID < due, f"the setup took too long: {due - stopped:.1f} s left"
    wait_until(
        lambda: any(s.startswith(DIGEST) for s in subjects_to(smtp, "carol")),
        due - time.time() + 15.0,
        lambda: f"carol's digest; she has {subjects_to(smtp, 'carol')}",
    )
    assert senders_of(herd, DIGEST) == {"Campbell": 1}  # the next server after Bona

    herd.start("Bona")
    herd.wait_answering("Bona")
    herd.wait_links()
    assert stays_false(
        lambda: len([s for s in subjects_to(smtp, "carol") if s.startswith(DIGEST)]) > 1,
        LEASE_VALID + SETTLE_SECONDS,
    ), subjects_to(smtp, "carol")
    assert senders_of(herd, DIGEST) == {"Campbell": 1}


def test_votes_cast_at_two_servers_give_the_organiser_one_mail(
    duties: tuple[NotifyHerd, SmtpProcess],
) -> None:
    herd, smtp = duties
    start(herd, smtp, notifications(coalesce_window=3.0))
    tokens = {
        user: add_user(herd.config_path, user, ADDRESS[user], server="Bailey")
        for user in ("alice", "bob", "carol")
    }
    with Session(herd.port("Bailey"), "alice", tokens["alice"]) as session:
        session.user_set("digest", "off")
        event_id = str(session.event("PLAN Picnic")["id"])
        session.event(f"INVITE {event_id} bob carol")
        (place,) = option_ids(
            session.event(f"PROPOSE {event_id} PLACE +48.8530+002.3389 Le Parc"), "places"
        )
    for user, server in (("bob", "Bona"), ("carol", "Campbell")):
        with Session(herd.port(server), user, tokens[user]) as session:
            session.wait_event(event_id, lambda e: len(e["places"]) == 1)
            session.event(f"VOTE {event_id} {place} YES")
    wait_until(
        lambda: any(s.startswith("Votes on") for s in subjects_to(smtp, "alice")),
        30.0,
        lambda: f"alice's votes mail; she has {subjects_to(smtp, 'alice')}",
    )
    assert stays_false(
        lambda: len([s for s in subjects_to(smtp, "alice") if s.startswith("Votes on")]) > 1,
        SETTLE_SECONDS,
    ), subjects_to(smtp, "alice")
    assert senders_of(herd, "Votes on") == {"Bailey": 1}  # alice's home
