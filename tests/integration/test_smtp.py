"""SmtpChannel against a real aiosmtpd server on a free loopback port, on the reactor's loop
(the kit's sink, `tests.support.smtp`, as the `smtp` fixture).

The server refuses `bad@…` with 550 and `busy@…` with 451 at RCPT, stalls on `slow@…` at DATA,
and can be stopped (closing its sessions, as a dying server does) and started again on the same
port.  No part of aiosmtplib is mocked.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from email.utils import formatdate
from pathlib import Path
from typing import TypeVar

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import capturedLogs
from twisted.python.threadpool import ThreadPool

from notifier.channels.smtp import SmtpChannel, enhanced_status
from notifier.errors import PermanentDeliveryError, TransientDeliveryError
from notifier.message import Attachment, Outgoing
from notifier.outbox import Outbox, OutboxSettings
from notifier.outbox_table import OUTBOX_SCHEMA, enqueue
from tests.support.smtp import SmtpServer
from tests.unit.test_mime import HOSTILE_TITLE, TRICKY, check_mail

pytestmark = pytest.mark.timeout(30)
T = TypeVar("T")

NOW = 1_700_000_000.0
SENDER = "Renga Bot <renga@example.org>"
ICS = b"BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n"
UNSUBSCRIBE = (
    "<https://renga.example.org/unsubscribe?token=" + "t" * 90 + ">, <mailto:u@example.org>"
)


def _reactor():  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    return reactor


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `condition` on the reactor until it holds."""
    reactor = _reactor()
    deadline = reactor.seconds() + timeout
    while not condition():
        assert reactor.seconds() < deadline, "condition not met in time"
        await deferLater(reactor, 0.005, lambda: None)


async def failure_of(delivery: Deferred[None]) -> BaseException:
    try:
        await delivery
    except Exception as error:
        return error
    raise AssertionError("the delivery succeeded")


ChannelFactory = Callable[..., SmtpChannel]


@pytest_twisted.async_yield_fixture
async def make_channel(smtp: SmtpServer) -> AsyncIterator[ChannelFactory]:
    made: list[SmtpChannel] = []

    def make(port: int | None = None, **options: object) -> SmtpChannel:
        settings: dict[str, object] = {"tls": "none", "pool_size": 2, "timeout": 5.0}
        clock = Clock()
        clock.advance(NOW)  # the Date header's time
        channel = SmtpChannel(
            "127.0.0.1",
            smtp.port if port is None else port,
            SENDER,
            clock=clock,
            local_hostname="renga.test",
            **{**settings, **options},  # type: ignore[arg-type]
        )
        made.append(channel)
        return channel

    yield make
    for channel in made:
        await channel.close()


def lines(text: str) -> list[str]:
    """Text as received: SMTP carries line breaks as CRLF."""
    return text.splitlines()


def mail(key: str, recipient: str = "alice@example.org", **fields: object) -> Outgoing:
    defaults: dict[str, object] = {"subject": f"About {key}", "text": f"Text of {key}\n"}
    return Outgoing(key=key, channel="email", recipient=recipient, **{**defaults, **fields})  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_mail_arrives_with_its_headers_and_parts(
    smtp: SmtpServer, make_channel: ChannelFactory
) -> None:
    channel = make_channel()
    sent = mail(
        "n1.email",
        subject="Réunion : pique-nique samedi",
        text="Bonjour Alice,\nvotez : oui / si besoin / non\n",
        html="<p>Bonjour <b>Alice</b></p>",
        thread="ev-7",
        headers=(
            ("List-Unsubscribe", UNSUBSCRIBE),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ),
        attachments=(Attachment("invite.ics", "text/calendar; method=REQUEST", ICS),),
    )
    await channel.deliver(sent)

    [(recipients, got)] = smtp.mailbox.received
    assert recipients == ["alice@example.org"]
    assert got["From"] == SENDER
    assert got["To"] == "alice@example.org"
    assert got["Subject"] == "Réunion : pique-nique samedi"
    assert got["Date"] == formatdate(NOW)
    assert got["Message-ID"] == "<renga.n1.email@example.org>"
    assert got["In-Reply-To"] == got["References"] == "<renga.event.ev-7@example.org>"
    assert got["Auto-Submitted"] == "auto-generated"
    assert got["List-Unsubscribe"] == UNSUBSCRIBE
    assert got["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    assert got.get_content_type() == "multipart/mixed"
    body, invite = got.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    plain, html = body.iter_parts()
    assert (plain.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
    assert lines(plain.get_content()) == lines(sent.text)
    assert lines(html.get_content()) == ["<p>Bonjour <b>Alice</b></p>"]
    assert invite.get_content_type() == "text/calendar"
    assert invite.get_param("method") == "REQUEST"
    assert invite.get_filename() == "invite.ics"
    assert invite.get_payload(decode=True) == ICS


@pytest_twisted.ensureDeferred
async def test_threading_and_retries_keep_their_ids(
    smtp: SmtpServer, make_channel: ChannelFactory
) -> None:
    channel = make_channel()
    first = mail("n1", thread="ev:7 with spaces")
    await channel.deliver(first)
    await channel.deliver(first)  # a retry after a lost answer
    await channel.deliver(mail("n2", thread="ev:7 with spaces"))
    await channel.deliver(mail("n3"))
    ids = smtp.mailbox.ids()
    assert ids[0] == ids[1] != ids[2]
    roots = [str(got["References"]) for _, got in smtp.mailbox.received[:3]]
    assert roots[0] == roots[1] == roots[2]
    assert roots[0].startswith("<renga.event.") and roots[0].endswith("@example.org>")
    assert " " not in roots[0]
    assert smtp.mailbox.received[3][1]["References"] is None


@pytest_twisted.ensureDeferred
async def test_hostile_subject_and_header_values_stay_in_their_header(
    smtp: SmtpServer, make_channel: ChannelFactory
) -> None:
    channel = make_channel()
    await channel.deliver(
        mail(
            "n1",
            subject="Hi\r\nBcc: evil@x.org <script>",
            headers=(("X-Renga-Note", "fine\nBcc: evil2@x.org\r\n\r\nbody"),),
            text="line one\r\n.\r\nBcc: not a header\n",
        )
    )
    [(recipients, got)] = smtp.mailbox.received
    assert recipients == ["alice@example.org"]
    assert got["Bcc"] is None
    assert got["Subject"] == "Hi Bcc: evil@x.org <script>"
    assert got["X-Renga-Note"] == "fine Bcc: evil2@x.org body"
    assert [name.lower() for name in got] == [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "auto-submitted",
        "x-renga-note",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    ]
    assert lines(got.get_content()) == ["line one", ".", "Bcc: not a header"]


@pytest_twisted.ensureDeferred
async def test_unusable_messages_are_permanent_without_a_connection(
    smtp: SmtpServer, make_channel: ChannelFactory
) -> None:
    channel = make_channel()
    for bad in (
        mail("n1", recipient="alice@example.org\r\nRCPT TO:<evil@x.org>"),
        mail("n2", recipient="not an address"),
        mail("n3", headers=(("Bcc", "evil@x.org"),)),
        mail("n4", headers=(("Bad:Name", "x"),)),
        mail("n5", attachments=(Attachment("x", "nonsense", b""),)),
    ):
        assert isinstance(await failure_of(channel.deliver(bad)), PermanentDeliveryError)
    assert smtp.connections == 0


@pytest_twisted.ensureDeferred
async def test_refused_recipient_is_permanent_and_others_pass(
    smtp: SmtpServer, make_channel: ChannelFactory
) -> None:
    channel = make_channel(pool_size=1)
    await channel.deliver(mail("n1"))
    error = await failure_of(channel.deliver(mail("n2", recipient="bad@example.org")))
    assert isinstance(error, PermanentDeliveryError)
    assert "550" in str(error) and "no such user" in str(error)
    assert (error.code, error.enhanced_status, error.server_message) == (
        550,
        "5.1.1",
        "5.1.1 no such user",
    )
    await channel.deliver(mail("n3", recipient="bob@example.org"))
    assert [rcpts for rcpts, _ in smtp.mailbox.received] == [
        ["alice@example.org"],
        ["bob@example.org"],
    ]
    assert smtp.connections == 1  # the refusal did not cost the pooled connection


@pytest_twisted.ensureDeferred
async def test_4xx_is_transient(smtp: SmtpServer, make_channel: ChannelFactory) -> None:
    error = await failure_of(make_channel().deliver(mail("n1", recipient="busy@example.org")))
    assert isinstance(error, TransientDeliveryError)
    assert "451" in str(error)
    assert (error.code, error.enhanced_status) == (451, "4.3.2")


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        ("5.1.1 no such user", "5.1.1"),
        ("4.7.0 greylisted, try later", "4.7.0"),
        ("2.0.0 Ok", "2.0.0"),
        ("no such user", None),
        ("5.1.1x no such user", None),
        ("3.1.1 not a class", None),
        ("see 5.1.1", None),
    ],
)
def test_the_enhanced_status_is_read_from_the_start_of_a_reply(
    reply: str, status: str | None
) -> None:
    assert enhanced_status(reply) == status


@pytest_twisted.ensureDeferred
async def test_connections_are_reused_and_bounded(
    smtp: SmtpServer, make_channel: ChannelFactory
) -> None:
    channel = make_channel(pool_size=3)
    for i in range(5):
        await channel.deliver(mail(f"a{i}"))
    assert smtp.connections == 1
    await gatherResults([channel.deliver(mail(f"b{i}")) for i in range(12)])
    assert smtp.connections == 3
    assert len(smtp.mailbox.received) == 17


@pytest_twisted.ensureDeferred
async def test_server_down_is_transient_and_the_pool_reconnects(
    smtp: SmtpServer, make_channel: ChannelFactory
) -> None:
    channel = make_channel(pool_size=1)
    await channel.deliver(mail("n1"))
    await smtp.stop()
    error = await failure_of(channel.deliver(mail("n2")))
    assert isinstance(error, TransientDeliveryError)
    assert "no SMTP session" in str(error)
    assert error.code is None  # no server answered
    await smtp.start()
    await channel.deliver(mail("n3"))
    assert smtp.mailbox.ids() == ["<renga.n1@example.org>", "<renga.n3@example.org>"]
    assert smtp.connections == 2


@pytest_twisted.ensureDeferred
async def test_a_dropped_idle_connection_is_replaced_at_once(
    smtp: SmtpServer, make_channel: ChannelFactory
) -> None:
    channel = make_channel(pool_size=1)
    await channel.deliver(mail("n1"))
    for session in list(smtp.sessions):  # the server drops the idle connection; the client
        assert session.transport is not None  # has not read the end of it yet
        session.transport.close()
    with capturedLogs() as events:
        await channel.deliver(mail("n2"))
    assert any("was dropped" in str(event.get("log_format")) for event in events)
    assert smtp.mailbox.ids() == ["<renga.n1@example.org>", "<renga.n2@example.org>"]
    assert smtp.connections == 2


@pytest_twisted.ensureDeferred
async def test_a_silent_server_times_out_as_transient(
    smtp: SmtpServer, make_channel: ChannelFactory
) -> None:
    channel = make_channel(timeout=0.3)
    error = await failure_of(channel.deliver(mail("n1", recipient="slow@example.org")))
    assert isinstance(error, TransientDeliveryError)
    smtp.mailbox.release.set()
    await channel.deliver(mail("n2"))


@pytest_twisted.ensureDeferred
async def test_a_cancelled_send_does_not_poison_the_pool(
    smtp: SmtpServer, make_channel: ChannelFactory
) -> None:
    channel = make_channel(pool_size=1)
    stuck = channel.deliver(mail("n1", recipient="slow@example.org"))
    await until(lambda: bool(smtp.sessions))
    stuck.cancel()
    assert isinstance(await failure_of(stuck), CancelledError)
    await channel.deliver(mail("n2"))  # on a new connection, not the desynchronised one
    assert smtp.mailbox.ids() == ["<renga.n2@example.org>"]
    assert smtp.connections == 2


@pytest_twisted.ensureDeferred
async def test_a_closed_channel_refuses_mail_as_transient(
    smtp: SmtpServer, make_channel: ChannelFactory
) -> None:
    channel = make_channel()
    await channel.deliver(mail("n1"))
    await channel.close()
    await channel.close()  # closing again is harmless
    error = await failure_of(channel.deliver(mail("n2")))
    assert isinstance(error, TransientDeliveryError)
    assert str(error) == "the email channel is closed"
    assert smtp.mailbox.ids() == ["<renga.n1@example.org>"]


@pytest_twisted.ensureDeferred
async def test_non_ascii_address_needs_smtputf8(
    smtp: SmtpServer, make_channel: ChannelFactory
) -> None:
    error = await failure_of(make_channel().deliver(mail("n1", recipient="jöran@example.org")))
    assert isinstance(error, PermanentDeliveryError)
    assert "SMTPUTF8" in str(error)

    modern = SmtpServer(smtputf8=True)
    await modern.start()
    try:
        await make_channel(port=modern.port).deliver(mail("n2", recipient="jöran@example.org"))
        [(recipients, got)] = modern.mailbox.received
        assert recipients == ["jöran@example.org"]
        assert got["To"] == "jöran@example.org"
    finally:
        await modern.stop()


def hostile_mails(count: int, seed: int) -> list[Outgoing]:
    """Mails whose every text is made of the unit property's tricky pieces (encoded-word
    lookalikes with CR LF, controls, NUL, long words, non-ASCII) and lines a dot starts."""
    rng = random.Random(seed)
    pieces = (*TRICKY, ".", "\r\n.\r\n", "plain words", "Bcc: x@evil.example")

    def text() -> str:
        return "".join(rng.choice(pieces) for _ in range(rng.randrange(6)))

    return [
        Outgoing(
            key=f"h{number}",
            channel="email",
            recipient=rng.choice(["alice@example.org", "jöran@example.org"]),
            subject=HOSTILE_TITLE if number == 0 else text(),
            text=text(),
            html=rng.choice([None, text()]),
            thread=rng.choice([None, text()]),
            headers=(("List-Unsubscribe", text()), ("X-Note", text()))[: rng.randrange(3)],
            attachments=tuple(
                Attachment(text(), "text/calendar; method=REQUEST", text().encode())
                for _ in range(rng.randrange(2))
            ),
        )
        for number in range(count)
    ]


@pytest_twisted.ensureDeferred
async def test_hostile_text_reads_back_as_itself_through_a_real_server(
    make_channel: ChannelFactory,
) -> None:
    """The unit property's check on what an SMTP server received (dot-stuffed and unstuffed,
    SMTPUTF8 when the address needs it), not on the builder's bytes."""
    server = SmtpServer(smtputf8=True)
    await server.start()
    try:
        channel = make_channel(port=server.port)
        sent = hostile_mails(40, seed=6)
        for message in sent:
            await channel.deliver(message)
        assert len(server.mailbox.raw) == len(sent)
        for message, data in zip(sent, server.mailbox.raw, strict=True):
            check_mail(data, message, SENDER)
    finally:
        await server.stop()


@pytest.fixture
def outbox_thread() -> Iterator[ThreadPool]:
    pool = ThreadPool(minthreads=1, maxthreads=1, name="outbox")
    pool.start()
    yield pool
    pool.stop()


@pytest_twisted.ensureDeferred
async def test_outbox_delivers_each_mail_once_across_an_outage(
    smtp: SmtpServer, make_channel: ChannelFactory, tmp_path: Path, outbox_thread: ThreadPool
) -> None:
    reactor = _reactor()
    path = tmp_path / "Bailey.sqlite"
    channel = make_channel(pool_size=4)

    def run_blocking(work: Callable[[], T]) -> Deferred[T]:
        return deferToThreadPool(reactor, outbox_thread, work)

    outbox = Outbox(
        path,
        {"email": channel},
        reactor,
        run_blocking,
        lambda: 0.5,
        OutboxSettings(base_delay=0.05, max_delay=0.2, poll_interval=1.0),
    )
    await outbox.start()
    try:
        await smtp.stop()
        store = sqlite3.connect(path, isolation_level=None)
        try:
            store.executescript(OUTBOX_SCHEMA)
            store.execute("BEGIN")
            enqueue(store, [mail(f"n{i:02}") for i in range(20)], reactor.seconds())
            store.execute("COMMIT")
            outbox.wake()

            def errors() -> list[str]:
                return [e for (e,) in store.execute("SELECT last_error FROM outbox") if e]

            await until(lambda: len(errors()) == 20)  # every one tried, and failed
            await smtp.start()

            def delivered() -> int:
                query = "SELECT COUNT(*) FROM outbox WHERE state = 'delivered'"
                return int(store.execute(query).fetchone()[0])

            await until(lambda: delivered() == 20)
        finally:
            store.close()
    finally:
        await outbox.stop()
    ids = smtp.mailbox.ids()
    assert sorted(ids) == [f"<renga.n{i:02}@example.org>" for i in range(20)]


@pytest_twisted.ensureDeferred
async def test_outbox_gives_up_on_a_silent_relay_and_retries(
    smtp: SmtpServer, make_channel: ChannelFactory, tmp_path: Path, outbox_thread: ThreadPool
) -> None:
    reactor = _reactor()
    path = tmp_path / "Bailey.sqlite"

    def run_blocking(work: Callable[[], T]) -> Deferred[T]:
        return deferToThreadPool(reactor, outbox_thread, work)

    outbox = Outbox(
        path,
        {"email": make_channel(timeout=30.0)},
        reactor,
        run_blocking,
        lambda: 1.0,
        OutboxSettings(deliver_timeout=0.2, base_delay=60),
    )
    await outbox.start()
    store = sqlite3.connect(path, isolation_level=None)
    try:
        store.execute("BEGIN")
        enqueue(store, [mail("n1", recipient="slow@example.org")], reactor.seconds())
        store.execute("COMMIT")
        outbox.wake()

        def row() -> tuple[str, int, str]:
            query = "SELECT state, possible_duplicate, last_error FROM outbox"
            state, duplicate, error = store.execute(query).fetchone()
            return state, duplicate, error

        await until(lambda: row()[0] == "pending" and row()[2] != "")
        assert row() == ("pending", 1, "no outcome within 0.2 s")
    finally:
        store.close()
        await outbox.stop()
