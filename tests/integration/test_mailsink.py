"""The local mail sink, fed by the real SmtpChannel: in-process on the reactor's loop, and
standalone as `herd up` runs it."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread

from notifier.aio import as_deferred
from notifier.channels.smtp import SmtpChannel
from notifier.errors import PermanentDeliveryError, TransientDeliveryError
from notifier.mailsink import MailSink, format_mail_list, list_mail, show_mail
from notifier.message import Attachment, Outgoing

pytestmark = pytest.mark.timeout(30)

START = 1_700_000_000.25
ICS = b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n"


def ticking(start: float = START) -> Callable[[], float]:
    """A clock that moves one millisecond per reading."""
    counter = itertools.count()
    return lambda: start + next(counter) / 1000


def mail(key: str, recipient: str = "alice@example.org", **fields: object) -> Outgoing:
    defaults: dict[str, object] = {"subject": f"About {key}", "text": f"Text of {key}\n"}
    return Outgoing(key=key, channel="email", recipient=recipient, **{**defaults, **fields})  # type: ignore[arg-type]


def channel_to(port: int) -> SmtpChannel:
    clock = Clock()
    clock.advance(START)  # the Date header's time
    return SmtpChannel(
        "127.0.0.1",
        port,
        "Renga <renga@example.org>",
        tls="none",
        pool_size=1,
        timeout=5.0,
        clock=clock,
        local_hostname="renga.test",
    )


@pytest_twisted.async_yield_fixture
async def sink(tmp_path: Path) -> AsyncIterator[MailSink]:
    started = MailSink(tmp_path, ticking(), max_size=64 * 1024)
    await as_deferred(started.start())
    yield started
    await as_deferred(started.stop())


@pytest_twisted.ensureDeferred
async def test_keeps_every_mail_as_a_file(sink: MailSink, tmp_path: Path) -> None:
    channel = channel_to(sink.port)
    try:
        await channel.deliver(mail("n1", subject="Réunion samedi"))
        await channel.deliver(
            mail(
                "n2",
                recipient="jöran@example.org",
                html="<p>Hi</p>",
                attachments=(Attachment("invite.ics", "text/calendar; method=REQUEST", ICS),),
            )
        )
        await channel.deliver(mail("n3"))
    finally:
        await channel.close()

    summaries = list_mail(tmp_path)
    assert [s.subject for s in summaries] == ["Réunion samedi", "About n2", "About n3"]
    assert [s.to for s in summaries] == [
        "alice@example.org",
        "jöran@example.org",
        "alice@example.org",
    ]
    assert {s.mail_from for s in summaries} == {"renga@example.org"}
    assert [s.id for s in summaries] == [
        "20231114T221320.250000Z-1",
        "20231114T221320.251000Z-2",
        "20231114T221320.252000Z-3",
    ]
    assert summaries[0].received == "2023-11-14T22:13:20Z"
    assert sorted(p.name for p in (tmp_path / "mail").iterdir()) == [
        f"{s.id}.eml" for s in summaries
    ]
    table = format_mail_list(summaries)
    assert table[0].split() == ["ID", "RECEIVED", "TO", "SUBJECT"]
    assert table[1].endswith("alice@example.org  Réunion samedi")

    shown = show_mail(tmp_path, summaries[1].id)
    assert "Subject: About n2\n" in shown
    assert "To: jöran@example.org\n" in shown
    assert "\nText of n2\n" in shown
    assert "[text/html, " in shown
    assert f"[invite.ics, text/calendar, {len(ICS)} bytes]" in shown
    raw = show_mail(tmp_path, summaries[0].id, raw=True)
    assert raw.startswith("X-MailFrom: renga@example.org\r\nX-RcptTo: alice@example.org\r\n")
    assert "Message-ID: <renga.n1@example.org>" in raw


def test_show_refuses_unknown_and_crafted_ids(tmp_path: Path) -> None:
    assert list_mail(tmp_path) == []
    for bad in ("20231114T221320.250000Z-1", "../../etc/passwd", "x"):
        with pytest.raises(KeyError):
            show_mail(tmp_path, bad)


@pytest_twisted.ensureDeferred
async def test_a_restarted_sink_numbers_on(tmp_path: Path) -> None:
    for key in ("n1", "n2"):
        sink = MailSink(tmp_path, lambda: START)  # the same instant twice: names must differ
        await as_deferred(sink.start())
        channel = channel_to(sink.port)
        try:
            await channel.deliver(mail(key))
        finally:
            await channel.close()
            await as_deferred(sink.stop())
    assert [s.id.rpartition("-")[2] for s in list_mail(tmp_path)] == ["1", "2"]


@pytest_twisted.ensureDeferred
async def test_stop_closes_open_sessions(sink: MailSink) -> None:
    channel = channel_to(sink.port)
    try:
        await channel.deliver(mail("n1"))  # its connection stays open in the pool
        assert len(sink.sessions) == 1
        await as_deferred(sink.stop())
        assert sink.sessions == set()
        failed = channel.deliver(mail("n2"))
        with pytest.raises(TransientDeliveryError):
            await failed
    finally:
        await channel.close()


@pytest_twisted.ensureDeferred
async def test_oversized_mail_is_refused(sink: MailSink) -> None:
    channel = channel_to(sink.port)
    try:
        with pytest.raises(PermanentDeliveryError, match="552"):
            await channel.deliver(mail("n1", text="x" * 100 + "\n" * 70_000))
    finally:
        await channel.close()


@pytest_twisted.ensureDeferred
async def test_a_write_failure_asks_the_client_to_retry(sink: MailSink) -> None:
    sink.directory.rmdir()
    sink.directory.write_bytes(b"not a directory")
    channel = channel_to(sink.port)
    try:
        with pytest.raises(TransientDeliveryError, match="451"):
            await channel.deliver(mail("n1"))
    finally:
        await channel.close()


def test_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loopback"):
        MailSink(tmp_path, ticking(), host="0.0.0.0")


@pytest_twisted.ensureDeferred
async def test_standalone(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "notifier.mailsink", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    ) as process:
        assert process.stdout is not None
        try:
            ready = await deferToThread(process.stdout.readline)
            assert ready.startswith("mailsink listening on 127.0.0.1:")
            port = int(ready.split(":")[1].split(",")[0])
            channel = channel_to(port)
            try:
                await channel.deliver(mail("n1"))
            finally:
                await channel.close()
        finally:
            process.send_signal(signal.SIGTERM)
            code = await deferToThread(process.wait, 10)
    assert code == 0
    assert [s.subject for s in list_mail(tmp_path)] == ["About n1"]
