"""What every `Channel` promises, checked on the in-memory channel the unit and protocol tests use
(`tests.support.channels.RecordingChannel`) and on the real ones against real servers:
`SmtpChannel` against the kit's aiosmtpd sink and `XmppChannel` against Prosody, each plain and
over TLS as a deployment runs them (mail with STARTTLS and AUTH, the bot with STARTTLS, both
verifying a certificate from a CA the test makes: `tests.support.testca`).

A delivery that the far end takes fires; a recipient the far end can never reach fails with
`PermanentDeliveryError`; a channel that cannot reach the far end for now fails with
`TransientDeliveryError`.  The line push is not here: it is not an outbox `Channel` (every server
publishes to its own `LineHub`, see `notifier.channels.line`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater

from notifier.channels import Channel
from notifier.channels.smtp import SmtpChannel
from notifier.channels.xmpp import XmppChannel
from notifier.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from notifier.localxmpp import LocalProsody
from notifier.message import Outgoing
from tests.support.channels import RecordingChannel
from tests.support.fixtures import XMPP_PASSWORD
from tests.support.prosody import running_prosody
from tests.support.smtp import SmtpServer
from tests.support.testca import CertAuthority

pytestmark = pytest.mark.timeout(30)

SENDER = "Renga <renga@example.org>"
_keys = itertools.count(1)


@dataclass
class FarEnd:
    """One channel and what its far end knows: whom it reaches, whom it never will, how to
    cut the channel off from it, and whether a message (by its text) arrived."""

    channel: Channel
    recipient: str
    unreachable: str
    cut_off: Callable[[], Deferred[None]]
    arrived: Callable[[Outgoing], bool]


async def _memory() -> AsyncIterator[FarEnd]:
    channel = RecordingChannel("email")
    channel.refuse("nobody@example.org")

    def cut_off() -> Deferred[None]:
        return channel.close()

    def arrived(sent: Outgoing) -> bool:
        return sent in channel.sent

    yield FarEnd(channel, "alice@example.org", "nobody@example.org", cut_off, arrived)


def _clock_at(seconds: float) -> Clock:
    """A clock that stands at `seconds` (the Date header's time)."""
    clock = Clock()
    clock.advance(seconds)
    return clock


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return CertAuthority(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def tls_prosody(
    tmp_path_factory: pytest.TempPathFactory, authority: CertAuthority
) -> Iterator[LocalProsody]:
    """A Prosody requiring STARTTLS, with a certificate for localhost from the test's CA."""
    issued = authority.issue("localhost", stem="prosody")
    accounts = {"sender": XMPP_PASSWORD, "receiver": XMPP_PASSWORD}
    with running_prosody(
        tmp_path_factory.mktemp("prosody-tls"),
        accounts,
        certificate=issued.cert_file,
        key=issued.key_file,
    ) as server:
        yield server


async def _smtp(authority: CertAuthority | None = None) -> AsyncIterator[FarEnd]:
    """The sink, plain; or with `authority`, requiring STARTTLS and AUTH (as a relay does)."""
    if authority is None:
        server = SmtpServer()
        host, tls, login, ca_file = "127.0.0.1", "none", {}, None
    else:
        issued = authority.issue("localhost", stem=f"smtp{next(_keys)}")
        server = SmtpServer(tls_context=issued.server_context(), accounts={"renga": "pw"})
        host, tls, ca_file = "localhost", "starttls", authority.ca_file
        login = {"username": "renga", "password": "pw"}
    await server.start()
    channel = SmtpChannel(
        host,
        server.port,
        SENDER,
        clock=_clock_at(1_700_000_000.0),
        local_hostname="renga.test",
        tls=tls,  # type: ignore[arg-type]
        pool_size=1,
        timeout=5.0,
        ca_file=ca_file,
        **login,
    )

    def arrived(sent: Outgoing) -> bool:
        return any(mail["Subject"] == sent.subject for _, mail in server.mailbox.received)

    try:
        yield FarEnd(channel, "alice@example.org", "bad@example.org", server.stop, arrived)
    finally:
        await channel.close()
        if server.listening:
            await server.stop()


async def _xmpp(
    prosody: LocalProsody, account: Callable[[str], str], ca_file: Path | None = None
) -> AsyncIterator[FarEnd]:
    """Two bots on `prosody`: plain, or with `ca_file`, over STARTTLS verified against it."""
    got: list[str] = []

    def bot(jid: str, on_command: Callable[[str, str], Deferred[str]]) -> XmppChannel:
        return XmppChannel(
            jid=jid,
            password=XMPP_PASSWORD,
            resource="contract",
            priority=0,
            loop=asyncio.get_event_loop(),
            clock=reactor,
            is_known=lambda who: True,
            on_command=on_command,
            jitter=lambda: 0.5,
            host=prosody.host,
            port=prosody.port,
            tls="none" if ca_file is None else "starttls",
            ca_file=ca_file,
        )

    def heard(who: str, text: str) -> Deferred[str]:
        got.append(text)
        return Deferred()  # no answer: the sending bot must not get a reply to handle

    receiver_jid = account("receiver")
    sender = bot(account("sender"), lambda who, text: Deferred())
    receiver = bot(receiver_jid, heard)
    await sender.start()
    await receiver.start()
    try:
        yield FarEnd(
            sender,
            receiver_jid,
            prosody.jid("nobody"),
            sender.close,
            lambda sent: sent.text.strip() in got,
        )
    finally:
        await sender.close()
        await receiver.close()


@pytest_twisted.async_yield_fixture(params=["memory", "smtp", "smtp-tls", "xmpp", "xmpp-tls"])
async def far_end(request: pytest.FixtureRequest) -> AsyncIterator[FarEnd]:
    if request.param == "memory":
        ends = _memory()
    elif request.param == "smtp":
        ends = _smtp()
    elif request.param == "smtp-tls":
        ends = _smtp(request.getfixturevalue("authority"))
    elif request.param == "xmpp":
        ends = _xmpp(request.getfixturevalue("prosody"), request.getfixturevalue("xmpp_account"))
    else:
        prosody: LocalProsody = request.getfixturevalue("tls_prosody")
        authority: CertAuthority = request.getfixturevalue("authority")

        def account(name: str) -> str:
            return prosody.jid(name)  # registered with the Prosody: "sender", "receiver"

        ends = _xmpp(prosody, account, authority.ca_file)
    end = await ends.__anext__()
    yield end
    await ends.aclose()


def message(end: FarEnd, recipient: str) -> Outgoing:
    key = f"contract-{next(_keys)}"
    channel = end.channel.name
    return Outgoing(key, channel, recipient, f"About {key}", f"The text of {key}.\n")


async def failure_of(delivery: Deferred[None]) -> BaseException:
    try:
        await delivery
    except DeliveryError as error:
        return error
    raise AssertionError("the delivery succeeded")


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = reactor.seconds() + timeout
    while not condition():
        assert reactor.seconds() < deadline, f"timed out after {timeout} s waiting for {what}"
        await deferLater(reactor, 0.01, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_delivery_the_far_end_takes_fires_and_arrives(far_end: FarEnd) -> None:
    sent = message(far_end, far_end.recipient)
    assert await far_end.channel.deliver(sent) is None
    await until(lambda: far_end.arrived(sent), f"{sent.key} to arrive")


@pytest_twisted.ensureDeferred
async def test_a_recipient_the_far_end_never_reaches_fails_permanently(far_end: FarEnd) -> None:
    error = await failure_of(far_end.channel.deliver(message(far_end, far_end.unreachable)))
    assert isinstance(error, PermanentDeliveryError)


@pytest_twisted.ensureDeferred
async def test_a_channel_cut_off_from_the_far_end_fails_transiently(far_end: FarEnd) -> None:
    await far_end.cut_off()
    sent = message(far_end, far_end.recipient)
    error = await failure_of(far_end.channel.deliver(sent))
    assert isinstance(error, TransientDeliveryError)
    assert not far_end.arrived(sent)
