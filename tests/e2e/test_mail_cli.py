"""`herd mail` on real mails: a server with `[smtp]` sends a plan's notices to the project's mail
sink (`notifier.mailsink`, as `herd up` runs it), and `herd mail` reads the sink's files: the
list, a mail, a decided event's calendar file (`--ics`), a mail's HTML part (`--html`, to a
file, to stdout, or beside the mail and opened in a browser), and a reader that goes away
(`herd mail | head -2`) ending it quietly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import icalendar
import pytest

from tests.support.lines import Session, option_ids
from tests.support.polling import wait_until
from tests.support.smtp import Mail
from tests.support.users import add_user

from .notify_harness import notify_setup

pytestmark = pytest.mark.timeout(90)

CLI_SECONDS = 30.0
DELIVERY_SECONDS = 30.0


@dataclass(frozen=True)
class Kept:
    """The sink's folder as `herd mail` sees it, through a config of its own."""

    config: Path
    data_dir: Path
    invited: Mail  # no calendar file
    decided: Mail  # with the event's .ics
    when: int


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory, places_seed: Path) -> Iterator[Kept]:
    """ann plans a picnic with ben and decides it: ben is mailed the invitation and the
    decision (with its .ics) through the real sink.  Then the herd and the sink stop."""
    root = tmp_path_factory.mktemp("mail")
    with notify_setup(root, places_seed, names=("Bailey",), links=()) as (herd, smtp):
        herd.start()
        smtp.start()
        herd.wait_answering()
        tokens = {u: add_user(herd.config_path, u, f"{u}@example.net") for u in ("ann", "ben")}
        when = (int(time.time()) // 3600 + 24 * 9) * 3600
        at = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with Session(herd.port("Bailey"), "ann", tokens["ann"]) as ann:
            event_id = str(ann.event("PLAN Picnic <by the river>")["id"])
            ann.event(f"INVITE {event_id} ben")
            (time_id,) = option_ids(ann.event(f"PROPOSE {event_id} TIME {at}"), "times")
            (place_id,) = option_ids(ann.event(f"PROPOSE {event_id} PLACE The park"), "places")
            assert ann.event(f"DECIDE {event_id} {time_id} {place_id}")["status"] == "decided"

        def both() -> tuple[Mail, Mail] | None:
            subjects = {str(m.message["Subject"]): m for m in smtp.mails()}
            invited = next((m for s, m in subjects.items() if s.startswith("ann invited")), None)
            decided = next((m for s, m in subjects.items() if s.startswith("Decided")), None)
            return (invited, decided) if invited and decided else None

        invited, decided = wait_until(both, DELIVERY_SECONDS, lambda: "the invitation and decision")
    config = root / "mail.toml"
    config.write_text(
        f"[herd]\ndata_dir = {json.dumps(str(smtp.directory))}\n\n[servers.Bailey]\nport = 1\n"
    )
    yield Kept(config, smtp.directory, invited, decided, when)


def herd_mail(
    kept: Kept, *arguments: str, env: dict[str, str] | None = None, stdout: int | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "herd", "mail", *arguments, "--config", str(kept.config)],
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE,
        timeout=CLI_SECONDS,
        env=env,
        check=False,
    )


def part(message: EmailMessage, content_type: str) -> bytes:
    (found,) = [p for p in message.walk() if p.get_content_type() == content_type]
    payload = found.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload


def test_the_list_and_one_mail(kept: Kept) -> None:
    listed = herd_mail(kept)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.decode().splitlines()
    assert lines[0].split() == ["ID", "RECEIVED", "TO", "SUBJECT"]
    assert {line.split()[0] for line in lines[1:]} >= {kept.invited.name, kept.decided.name}
    shown = herd_mail(kept, kept.decided.name)
    assert shown.returncode == 0, shown.stderr
    assert b"Subject: Decided: Picnic <by the river>" in shown.stdout
    assert b"[event.ics, text/calendar, " in shown.stdout


def test_ics_to_a_file_to_stdout_and_beside_the_mail(kept: Kept, tmp_path: Path) -> None:
    expected = part(kept.decided.message, "text/calendar")
    target = tmp_path / "picnic.ics"
    written = herd_mail(kept, kept.decided.name, "--ics", str(target))
    assert written.returncode == 0, written.stderr
    assert written.stdout.decode() == f"{target}\n"
    assert target.read_bytes() == expected
    (event,) = icalendar.Calendar.from_ical(expected).walk("VEVENT")
    assert event.decoded("DTSTART") == datetime.fromtimestamp(kept.when, UTC)

    to_stdout = herd_mail(kept, kept.decided.name, "--ics", "-")
    assert to_stdout.returncode == 0, to_stdout.stderr
    assert to_stdout.stdout == expected

    beside = herd_mail(kept, kept.decided.name, "--ics")
    assert beside.returncode == 0, beside.stderr
    default = kept.data_dir / "mail" / f"{kept.decided.name}.ics"
    assert beside.stdout.decode() == f"{default}\n"
    assert default.read_bytes() == expected


def test_a_mail_without_a_calendar_file(kept: Kept, tmp_path: Path) -> None:
    done = herd_mail(kept, kept.invited.name, "--ics", str(tmp_path / "none.ics"))
    assert done.returncode == 1
    assert done.stdout == b""
    assert done.stderr.decode() == (
        f"herd: mail {kept.invited.name} has no calendar attachment (.ics)\n"
    )
    assert not (tmp_path / "none.ics").exists()


def test_html_to_a_file_and_to_stdout(kept: Kept, tmp_path: Path) -> None:
    expected = part(kept.invited.message, "text/html")
    assert b"Picnic &lt;by the river&gt;" in expected
    target = tmp_path / "invited.html"
    done = herd_mail(kept, kept.invited.name, "--html", str(target))
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == expected
    to_stdout = herd_mail(kept, kept.invited.name, "--html", "-")
    assert to_stdout.stdout == expected


def test_html_beside_the_mail_opened_in_the_browser(kept: Kept, tmp_path: Path) -> None:
    """With a browser (here a command that notes what it was asked to open): the file beside
    the mail, its path printed, and the browser given its file: URL."""
    opened = tmp_path / "opened"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {opened}\n')
    browser.chmod(0o755)
    env = {**os.environ, "BROWSER": str(browser)}
    done = herd_mail(kept, kept.decided.name, "--html", env=env)
    assert done.returncode == 0, done.stderr
    default = kept.data_dir / "mail" / f"{kept.decided.name}.html"
    assert done.stdout.decode() == f"{default}\n"
    assert default.read_bytes() == part(kept.decided.message, "text/html")
    assert opened.read_text() == default.resolve().as_uri()

    missing = {**os.environ, "BROWSER": str(tmp_path / "no-such-browser")}
    without = herd_mail(kept, kept.decided.name, "--html", env=missing)
    assert without.returncode == 0, without.stderr
    assert without.stdout.decode() == f"{default}\n"  # the path, to open by hand
    assert b"open that file in one" in without.stderr


def test_refusals(kept: Kept) -> None:
    unknown = herd_mail(kept, "20990101T000000.000000Z-1", "--html", "-")
    assert unknown.returncode == 1
    assert b"no mail '20990101T000000.000000Z-1'" in unknown.stderr
    no_id = herd_mail(kept, "--ics")
    assert no_id.returncode == 2
    assert b"need a mail ID" in no_id.stderr


@pytest.mark.parametrize("arguments", [(), ("ID",), ("ID", "--ics", "-")])
def test_a_reader_that_goes_away_ends_it_quietly(kept: Kept, arguments: tuple[str, ...]) -> None:
    """`herd mail | head -2` once head has read its lines: stdout is a pipe nobody reads.
    No traceback, and the exit of a process that SIGPIPE ended, as `cat` has."""
    argv = [kept.decided.name if word == "ID" else word for word in arguments]
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = herd_mail(kept, *argv, stdout=write_end)
    finally:
        os.close(write_end)
    assert done.stderr == b""
    assert done.returncode == 128 + signal.SIGPIPE


def test_head_in_a_shell_pipeline(kept: Kept) -> None:
    command = f"{sys.executable} -m herd mail {kept.decided.name} --config {kept.config} | head -2"
    done = subprocess.run(
        ["bash", "-c", command], capture_output=True, timeout=CLI_SECONDS, check=False
    )
    assert done.returncode == 0
    assert done.stdout.decode().startswith("From: ")
    assert done.stdout.count(b"\n") == 2
    assert b"Traceback" not in done.stderr and b"BrokenPipe" not in done.stderr
