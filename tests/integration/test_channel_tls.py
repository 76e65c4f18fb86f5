"""The notification channels over TLS, as a real deployment runs them: the Jabber bot against a
real Prosody with STARTTLS and with direct TLS, mail against a real aiosmtpd with STARTTLS + AUTH
and with implicit TLS, each holding a certificate from a CA the test makes
(`tests.support.testca`) and the channel trusting that CA through its `ca_file`.

The certificates name `localhost` only.  The bot connects to 127.0.0.1 and must check the
certificate against the JID's domain; a certificate from another CA, or one that names only the
IP address, must be refused: the bot does not log in, says why in the log, and tries again on its
backoff only.  Mail connects to `localhost`, the name the certificate gives.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock, deferLater
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from zope.interface import provider

from notifier.channels.smtp import SmtpChannel
from notifier.channels.xmpp import TlsMode, XmppChannel, tls_context
from notifier.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from notifier.localxmpp import LocalProsody
from notifier.message import Outgoing
from tests.support.fixtures import BOT_USER, XMPP_PASSWORD
from tests.support.prosody import running_prosody
from tests.support.smtp import SmtpServer
from tests.support.testca import CertAuthority

pytestmark = pytest.mark.timeout(60)

SENDER = "Renga <renga@example.org>"
MAIL_USER = "renga-mail"
MAIL_PASSWORD = "relay-secret"
_serial = itertools.count(1)


@dataclass(frozen=True)
class Authorities:
    """The test's CA (the one the channels trust) and a stranger's CA (one they do not)."""

    ours: CertAuthority
    theirs: CertAuthority


@pytest.fixture(scope="module")
def authorities(tmp_path_factory: pytest.TempPathFactory) -> Authorities:
    folder = tmp_path_factory.mktemp("ca")
    return Authorities(
        CertAuthority(folder, "ours", "Renga Test CA"),
        CertAuthority(folder, "theirs", "Somebody Else's CA"),
    )


@pytest.fixture(scope="module")
def tls_prosody(
    tmp_path_factory: pytest.TempPathFactory, authorities: Authorities
) -> Iterator[LocalProsody]:
    """Prosody with a certificate for `localhost` from our CA: STARTTLS required on its c2s
    port, direct TLS on another; the bot's account and two people's."""
    issued = authorities.ours.issue("localhost")
    accounts = {BOT_USER: XMPP_PASSWORD, "alice": XMPP_PASSWORD, "bob": XMPP_PASSWORD}
    with running_prosody(
        tmp_path_factory.mktemp("prosody-tls"),
        accounts,
        certificate=issued.cert_file,
        key=issued.key_file,
        direct_tls=True,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def ip_named_prosody(
    tmp_path_factory: pytest.TempPathFactory, authorities: Authorities
) -> Iterator[LocalProsody]:
    """Prosody whose certificate, from our CA, names 127.0.0.1 (where the bot connects) but
    not `localhost` (the bot's domain)."""
    issued = authorities.ours.issue("127.0.0.1")
    with running_prosody(
        tmp_path_factory.mktemp("prosody-ip"),
        {BOT_USER: XMPP_PASSWORD},
        certificate=issued.cert_file,
        key=issued.key_file,
        direct_tls=True,
    ) as server:
        yield server


class Log:
    """The formatted text of every Twisted log event while a test runs."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, event: LogEvent) -> None:
        self.lines.append(formatEvent(event))

    def having(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]


@pytest.fixture
def log() -> Iterator[Log]:
    seen = Log()
    observer = provider(ILogObserver)(seen)
    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


async def until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await deferLater(reactor, 0.02)


async def quiet(seconds: float) -> None:
    await deferLater(reactor, seconds)


async def failure_of(delivery: Deferred[None]) -> DeliveryError:
    try:
        await delivery
    except DeliveryError as error:
        return error
    raise AssertionError("the delivery succeeded")


# --- the Jabber bot ---------------------------------------------------------------------------


class Bots:
    """The XMPP channels of one test, all closed at its end."""

    def __init__(self) -> None:
        self.made: list[XmppChannel] = []

    def bot(
        self,
        server: LocalProsody,
        user: str,
        tls: TlsMode,
        ca_file: Path | None,
        on_command: Callable[[str, str], Deferred[str]] = lambda who, text: Deferred(),
        **options: Any,
    ) -> XmppChannel:
        port = server.direct_tls_port if tls == "direct" else server.port
        assert port is not None
        channel = XmppChannel(
            jid=server.jid(user),
            password=XMPP_PASSWORD,
            resource=f"tls{next(_serial)}",
            priority=0,
            loop=asyncio.get_event_loop(),
            clock=options.pop("clock", reactor),
            is_known=lambda who: True,
            on_command=on_command,
            jitter=lambda: 0.5,
            host=server.host,  # 127.0.0.1: the certificate names localhost only
            port=port,
            tls=tls,
            ca_file=ca_file,
            **options,
        )
        self.made.append(channel)
        return channel


@pytest_twisted.async_yield_fixture
async def bots() -> AsyncIterator[Bots]:
    made = Bots()
    yield made
    for channel in made.made:
        await channel.close()


@pytest.mark.parametrize("tls", ["starttls", "direct"])
@pytest_twisted.ensureDeferred
async def test_the_bot_logs_in_over_verified_tls_and_delivers(
    tls: TlsMode,
    tls_prosody: LocalProsody,
    authorities: Authorities,
    bots: Bots,
    log: Log,
) -> None:
    heard: list[tuple[str, str]] = []

    def on_command(who: str, text: str) -> Deferred[str]:
        heard.append((who, text))
        return succeed("")

    sender = bots.bot(tls_prosody, "alice", tls, authorities.ours.ca_file)
    receiver = bots.bot(tls_prosody, "bob", tls, authorities.ours.ca_file, on_command)
    await sender.start()
    await receiver.start()
    assert sender.encryption is not None and sender.encryption.startswith("TLSv1.")
    assert log.having(f"XMPP: session up as {tls_prosody.jid('alice')}/")[0].endswith(
        f"({sender.encryption})"
    )
    key = f"tls-{tls}"
    message = Outgoing(key, "xmpp", tls_prosody.jid("bob"), "", f"over {tls}")
    assert await sender.deliver(message) is None
    await until(lambda: heard, "the message at the receiving bot")
    assert heard == [(tls_prosody.jid("alice"), f"over {tls}")]


@pytest.mark.parametrize("tls", ["starttls", "direct"])
@pytest_twisted.ensureDeferred
async def test_a_certificate_from_another_ca_is_refused_and_retried_on_the_backoff(
    tls: TlsMode,
    tls_prosody: LocalProsody,
    authorities: Authorities,
    bots: Bots,
    log: Log,
) -> None:
    clock = Clock()  # the backoff's: nothing is retried until the test moves it
    bot = bots.bot(tls_prosody, BOT_USER, tls, authorities.theirs.ca_file, clock=clock)
    started = bot.start()
    refused = "XMPP: TLS with 127.0.0.1:"
    await until(lambda: log.having(refused), "the refusal in the log")
    [line] = log.having(refused)
    assert "(for localhost) failed" in line
    assert "CERTIFICATE_VERIFY_FAILED" in line
    assert "unable to get local issuer certificate" in line
    await until(lambda: clock.getDelayedCalls(), "the reconnection on the backoff")
    [retry] = clock.getDelayedCalls()
    assert 0 < retry.getTime() <= 1.0
    await quiet(0.3)  # no other attempt without the backoff's clock
    assert len(log.having(refused)) == 1
    assert not bot.session_up and not started.called
    error = await failure_of(bot.deliver(Outgoing("k", "xmpp", "x@localhost", "", "text")))
    assert isinstance(error, TransientDeliveryError)

    clock.advance(retry.getTime())
    await until(lambda: len(log.having(refused)) == 2, "the second attempt, refused too")
    await until(lambda: clock.getDelayedCalls(), "the next reconnection")
    [again] = clock.getDelayedCalls()
    assert again.getTime() - clock.seconds() > retry.getTime()  # backing off
    assert not bot.session_up
    assert not log.having("session up")
    assert "renga@localhost" not in _authenticated(tls_prosody)


def _authenticated(server: LocalProsody) -> str:
    """The lines of Prosody's log that record a login."""
    text = server.log_path.read_text(encoding="utf-8", errors="replace")
    return "\n".join(line for line in text.splitlines() if "Authenticated as" in line)


@pytest.mark.parametrize("tls", ["starttls", "direct"])
@pytest_twisted.ensureDeferred
async def test_the_certificate_must_name_the_domain_not_the_address(
    tls: TlsMode,
    ip_named_prosody: LocalProsody,
    authorities: Authorities,
    bots: Bots,
    log: Log,
) -> None:
    bot = bots.bot(ip_named_prosody, BOT_USER, tls, authorities.ours.ca_file, clock=Clock())
    started = bot.start()
    await until(lambda: log.having("XMPP: TLS with"), "the refusal in the log")
    [line] = log.having("XMPP: TLS with")
    assert "CERTIFICATE_VERIFY_FAILED" in line
    assert "mismatch" in line and "localhost" in line
    assert not bot.session_up and not started.called


@pytest_twisted.ensureDeferred
async def test_starttls_never_logs_in_where_the_server_offers_no_tls(
    prosody: LocalProsody, xmpp_account: Callable[[str], str], bots: Bots, log: Log
) -> None:
    """The session's plain Prosody: the bot does not fall back to sending its password."""
    user = xmpp_account("plain").partition("@")[0]
    clock = Clock()
    bot = bots.bot(prosody, user, "starttls", None, clock=clock)
    started = bot.start()
    await until(lambda: log.having("offered no STARTTLS"), "the refusal in the log")
    [line] = log.having("offered no STARTTLS")
    assert f"127.0.0.1:{prosody.port} (for localhost)" in line
    await until(lambda: clock.getDelayedCalls(), "the reconnection on the backoff")
    assert not bot.session_up and not started.called
    assert f"{user}@localhost" not in _authenticated(prosody)


# --- mail -------------------------------------------------------------------------------------


class Relays:
    """The SMTP servers and channels of one test, all stopped at its end."""

    def __init__(self, authorities: Authorities) -> None:
        self.authorities = authorities
        self.servers: list[SmtpServer] = []
        self.channels: list[SmtpChannel] = []

    async def relay(self, implicit_tls: bool, certificate_names: tuple[str, ...]) -> SmtpServer:
        issued = self.authorities.ours.issue(*certificate_names, stem=f"smtp{next(_serial)}")
        server = SmtpServer(
            tls_context=issued.server_context(),
            implicit_tls=implicit_tls,
            accounts={MAIL_USER: MAIL_PASSWORD},
        )
        self.servers.append(server)
        await server.start()
        return server

    def channel(self, server: SmtpServer, tls: str, **options: Any) -> SmtpChannel:
        clock = Clock()
        clock.advance(1_700_000_000.0)
        settings: dict[str, Any] = {
            "host": "localhost",
            "username": MAIL_USER,
            "password": MAIL_PASSWORD,
            "ca_file": self.authorities.ours.ca_file,
        }
        settings.update(options)
        channel = SmtpChannel(
            settings.pop("host"),
            server.port,
            SENDER,
            tls=tls,  # type: ignore[arg-type]
            pool_size=1,
            timeout=5.0,
            clock=clock,
            local_hostname="renga.test",
            **settings,
        )
        self.channels.append(channel)
        return channel


@pytest_twisted.async_yield_fixture
async def relays(authorities: Authorities) -> AsyncIterator[Relays]:
    made = Relays(authorities)
    yield made
    for channel in made.channels:
        await channel.close()
    for server in made.servers:
        if server.listening:
            await server.stop()


MAIL_MODES = [("starttls", False), ("direct", True)]


def mail(recipient: str = "alice@example.org") -> Outgoing:
    key = f"tls-mail-{next(_serial)}"
    return Outgoing(key, "email", recipient, f"About {key}", f"The text of {key}.\n")


@pytest.mark.parametrize(("tls", "implicit"), MAIL_MODES)
@pytest_twisted.ensureDeferred
async def test_mail_goes_through_tls_and_auth(tls: str, implicit: bool, relays: Relays) -> None:
    server = await relays.relay(implicit, ("localhost",))
    channel = relays.channel(server, tls)
    sent = [mail(), mail("bob@example.org")]
    for message in sent:
        await channel.deliver(message)
    got = server.mailbox.received
    assert [(rcpts, str(m["Subject"])) for rcpts, m in got] == [
        ([message.recipient], message.subject) for message in sent
    ]
    [login] = server.logins  # one pooled connection, one AUTH
    assert login.user == MAIL_USER and login.accepted
    assert login.tls is not None and login.tls.startswith("TLSv1.")
    refused = await failure_of(channel.deliver(mail("bad@example.org")))
    assert isinstance(refused, PermanentDeliveryError) and refused.code == 550


@pytest.mark.parametrize(("tls", "implicit"), MAIL_MODES)
@pytest_twisted.ensureDeferred
async def test_a_wrong_password_is_a_transient_session_failure(
    tls: str, implicit: bool, relays: Relays
) -> None:
    """As the channel's rules say: a failure to set up the session is the relay's or our
    configuration's, not the message's, so the outbox retries rather than dead-letters."""
    server = await relays.relay(implicit, ("localhost",))
    channel = relays.channel(server, tls, password="not-it")
    error = await failure_of(channel.deliver(mail()))
    assert isinstance(error, TransientDeliveryError)
    assert error.code == 535 and error.enhanced_status == "5.7.8"
    assert server.logins  # aiosmtplib tries each mechanism the server offers (PLAIN, LOGIN)
    for login in server.logins:
        assert (login.user, login.accepted) == (MAIL_USER, False)
        assert login.tls is not None  # the password went over TLS only
    assert server.mailbox.received == []


@pytest.mark.parametrize(("tls", "implicit"), MAIL_MODES)
@pytest_twisted.ensureDeferred
async def test_a_certificate_from_another_ca_is_refused(
    tls: str, implicit: bool, relays: Relays, authorities: Authorities
) -> None:
    server = await relays.relay(implicit, ("localhost",))
    channel = relays.channel(server, tls, ca_file=authorities.theirs.ca_file)
    error = await failure_of(channel.deliver(mail()))
    assert isinstance(error, TransientDeliveryError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(error)
    assert server.logins == [] and server.mailbox.received == []


@pytest.mark.parametrize(("tls", "implicit"), MAIL_MODES)
@pytest_twisted.ensureDeferred
async def test_the_certificate_must_name_the_host(tls: str, implicit: bool, relays: Relays) -> None:
    server = await relays.relay(implicit, ("mail.example.org",))
    channel = relays.channel(server, tls)
    error = await failure_of(channel.deliver(mail()))
    assert isinstance(error, TransientDeliveryError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(error) and "mismatch" in str(error)
    assert server.logins == [] and server.mailbox.received == []


@pytest_twisted.ensureDeferred
async def test_starttls_is_required_not_hoped_for(relays: Relays) -> None:
    """A plain server (or someone stripping STARTTLS from its answer): no AUTH, no mail."""
    server = SmtpServer(accounts={MAIL_USER: MAIL_PASSWORD})
    relays.servers.append(server)
    await server.start()
    channel = relays.channel(server, "starttls")
    error = await failure_of(channel.deliver(mail()))
    assert isinstance(error, TransientDeliveryError)
    assert "STARTTLS" in str(error)
    assert server.logins == [] and server.mailbox.received == []


# --- what the channels refuse to be built with ------------------------------------------------


def test_a_ca_file_without_tls_is_refused(authorities: Authorities) -> None:
    ca_file = authorities.ours.ca_file
    with pytest.raises(ValueError, match="ca_file"):
        SmtpChannel("localhost", 25, SENDER, tls="none", clock=Clock(), ca_file=ca_file)
    with pytest.raises(ValueError, match="ca_file"):
        XmppChannel(
            jid="renga@localhost",
            password="pw",
            resource="r",
            priority=0,
            loop=asyncio.get_event_loop(),
            clock=Clock(),
            is_known=lambda who: True,
            on_command=lambda who, text: Deferred(),
            jitter=lambda: 0.5,
            host="127.0.0.1",
            tls="none",
            ca_file=ca_file,
        )


def test_the_channels_context_verifies_against_the_ca_file_only(authorities: Authorities) -> None:
    context = tls_context(authorities.ours.ca_file)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [cert["subject"] for cert in context.get_ca_certs()] == [
        ((("commonName", "Renga Test CA"),),)
    ]
    assert len(tls_context(None).get_ca_certs()) != 1  # the system's store (empty, or many)
