"""The Jabber bot: one long-lived slixmpp session per herd server, and the XMPP delivery channel.

Every server logs in as the same bot JID with its own resource (the server name) and its own
presence priority, so Prosody hands chats sent to the bare JID to exactly one server, the highest
available; when that one goes away, the next one gets them. Only this module imports slixmpp.

Delivery. ``deliver()`` sends a ``chat`` message (offline users get it from Prosody's offline
storage) whose id is the outbox key, then waits for a *barrier*: an XEP-0199 ping to our own server,
shared by all messages written in the same loop turn. The server handles a session's stanzas in
order, so an error bounced for a local recipient (unknown user: ``service-unavailable``) arrives
before the ping's answer and is matched by (recipient, id): ``PermanentDeliveryError``, or
``TransientDeliveryError`` for ``wait`` errors and unreachable remote servers. Once the barrier
answers, the message is with the server: delivered. Errors from remote domains come later and are
only logged. Session down, a lost connection or no answer in ``confirm_timeout`` seconds is
transient (the outbox retries; at-least-once, and the stable id lets clients drop duplicates).

Deliveries are serialized by ``notifier.stanza`` and the stanzas of one loop turn written together
with ``send_raw``: building them with slixmpp (``make_message``, the ElementBase plugins, a
generator per character in ``escape``) and its send queue cost ~90 µs of CPU per message, ~460 µs
for an 8 KB body; this way ~15 and ~27 µs. Characters that XML 1.0 forbids are dropped from every
text we send: one would make the server close the stream (``not-well-formed``), failing everything
in flight, and the retried message would do it again.

TLS. With ``starttls`` or ``direct`` the server's certificate is verified against ``ca_file``
(or the system's store) and for the JID's domain, which slixmpp passes as the TLS server name
whatever ``host`` we connect to; a failed handshake, or a server that offers no STARTTLS, is
logged and retried like an unreachable server, and no password is sent without TLS.

Reconnection. slixmpp retries a failing *connect*, but does nothing when an established session
drops (a Prosody restart): this channel reconnects itself on the injected clock, with exponential
backoff and jitter (``RECONNECT_BACKOFF``), for both cases. XEP-0199 keepalive pings detect dead
connections that TCP does not report.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Callable
from contextlib import suppress
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from slixmpp import JID, ClientXMPP, InvalidJID
from slixmpp.exceptions import IqTimeout
from slixmpp.plugins.xep_0080 import Geoloc
from slixmpp.stanza import Iq, Message, Presence, StreamError
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from herd.api import Backoff
from notifier.aio import as_deferred
from notifier.contacts import ASK_AGAIN_AFTER, PresenceAsks, PresenceState, Strangers, presence_of
from notifier.errors import NotifierError, PermanentDeliveryError, TransientDeliveryError
from notifier.message import Outgoing
from notifier.stanza import NOT_XML, chat_stanza, posix_time, xml_attr, xml_text

TlsMode = Literal["starttls", "direct", "none"]

# 0.5 s doubling to 30 s, each delay between half and one and a half times that.
RECONNECT_BACKOFF = Backoff(initial=0.25, factor=2.0, cap=15.0, jitter=2.0)
LASTING_SESSION = 30.0  # seconds up after which a lost session starts the backoff afresh
STRANGER_REPLY = (
    "Hi! I only talk to Renga users. Ask for a code with `LINK <your jid>` on the line port, "
    "then send me `link <user> <code>`."
)
APOLOGY = "Sorry, something went wrong on my side with that command; please try again later."
# Prosody closes a stream on a stanza over 256 KiB; keep well below it.
MAX_BODY_BYTES = 64 * 1024
_GEOLOC_TIMESTAMP = f"{{{Geoloc.namespace}}}timestamp"
_TRANSIENT_CONDITIONS = frozenset({"remote-server-not-found", "remote-server-timeout"})

_log = Logger()


class SessionState(Enum):
    """Where the bot's session is: what `deliver` and a lost connection do depends on it."""

    DOWN = "down"  # connecting, or waiting to reconnect: deliveries fail as transient
    UP = "up"  # logged in with presence sent: deliveries go out
    CLOSED = "closed"  # `close()` was called: never reconnects


class XmppLoginError(NotifierError):
    """The server refused the bot's credentials (wrong password, missing account)."""


def _ignore(*_args: object) -> None:
    """Default for optional callbacks."""


class _Client(ClientXMPP):
    """slixmpp's client, with its own retry of failed connects handed to the channel's backoff."""

    def __init__(
        self, jid: str, password: str, *, on_connect_failed: Callable[[], None], **kwargs: Any
    ) -> None:
        super().__init__(jid, password, **kwargs)
        self._on_connect_failed = on_connect_failed

    def reschedule_connection_attempt(self) -> None:
        """slixmpp would sleep 3, 9, 21 ... up to 300 s on its own timer; we back off instead."""
        self._current_connection_attempt = None
        self._on_connect_failed()

    async def stop_sending(self) -> None:
        """Cancel the send-queue task that slixmpp leaves running after a disconnect."""
        task = self._run_out_filters
        if task is not None and not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task


class XmppChannel:
    """The bot session of one herd server and the ``xmpp`` channel of its outbox.

    ``jid`` is the bot's bare JID, ``resource`` the server's name, ``priority`` distinct per server
    (the highest available one gets the chats; keep them >= 0, or offline messages wait).
    ``host``/``port`` skip the domain's SRV lookup; ``tls="none"`` is refused unless ``host`` is
    loopback. With ``"starttls"`` or ``"direct"`` the server's certificate must chain to
    ``ca_file`` (PEM; the system trust store when None) and name the JID's domain, whatever
    ``host`` is (an IP address, say); a certificate that fails, or a server that offers no TLS,
    is logged and retried with the backoff, and the password is never sent. Callbacks get
    normalised bare JIDs (``user@domain``) and run on the reactor:

    - ``is_known(jid)``: may this JID command the bot and subscribe to it?
    - ``on_command(jid, text) -> Deferred[str]``: a known user's chat; the result is the reply,
      a failure becomes ``apology``. Strangers get ``stranger_reply`` (once per cooldown) only,
      except that a stranger's ``link …`` message goes to ``on_stranger(jid, text)`` (at most
      ``LINK_ATTEMPTS`` per JID per cooldown), whose result is the reply: that is how a person
      proves they own the JID and gets it linked to their Renga user.
    - ``on_presence(jid, state)``: a known contact's state over all their devices, on change.
    - ``on_location(jid, lat, lon, when)``: XEP-0080 positions from known contacts; ``when`` is
      POSIX time, the clock's time if the publication has none. Every server whose session is up
      gets each publication (PEP notifies all our resources).
    - ``on_receipt(jid, id)``: an XEP-0184 receipt; for deliveries the id is the outbox key.

    A user who links, or who chats while the bot does not see their presence, is asked for it (a
    ``subscribe`` after the reply; once, and again after ``presence_ask_cooldown`` only if they
    did not accept), so notices reach them here while they are online. Their own request is
    accepted, and the bot subscribes back.
    """

    name = "xmpp"

    def __init__(
        self,
        *,
        jid: str,
        password: str,
        resource: str,
        priority: int,
        loop: asyncio.AbstractEventLoop,
        clock: IReactorTime,
        is_known: Callable[[str], bool],
        on_command: Callable[[str, str], Deferred[str]],
        jitter: Callable[[], float],
        on_presence: Callable[[str, PresenceState], None] = _ignore,
        on_location: Callable[[str, float, float, float], None] = _ignore,
        on_receipt: Callable[[str, str], None] = _ignore,
        on_stranger: Callable[[str, str], Deferred[str]] | None = None,
        host: str | None = None,
        port: int = 5222,
        tls: TlsMode = "starttls",
        ca_file: Path | str | None = None,
        stranger_reply: str = STRANGER_REPLY,
        apology: str = APOLOGY,
        stranger_cooldown: float = 600.0,
        presence_ask_cooldown: float = ASK_AGAIN_AFTER,
        keepalive_interval: float = 60.0,
        confirm_timeout: float = 10.0,
        reconnect: Backoff = RECONNECT_BACKOFF,
    ) -> None:
        bare = JID(jid)
        if bare.resource or not bare.user:
            raise ValueError(f"the bot JID must be a bare user JID: {jid!r}")
        if tls not in ("starttls", "direct", "none"):
            raise ValueError(f"tls must be starttls, direct or none, not {tls!r}")
        if tls == "none" and not _is_loopback(host):
            raise ValueError("tls = 'none' is allowed only with a loopback host")
        if tls == "none" and ca_file is not None:
            raise ValueError("a ca_file is for TLS; tls = 'none' has none")
        self._loop = loop
        self._clock = clock
        self._priority = priority
        self._host = host
        self._port = port
        self._tls = tls
        self._is_known = is_known
        self._on_command = on_command
        self._on_presence = on_presence
        self._on_location = on_location
        self._on_receipt = on_receipt
        self._on_stranger = on_stranger
        self._jitter = jitter
        self._stranger_reply = NOT_XML.sub("", stranger_reply)
        self._apology = apology
        self._strangers = Strangers(stranger_cooldown)
        self._asks = PresenceAsks(presence_ask_cooldown)
        self._confirm_timeout = confirm_timeout
        self._reconnect = reconnect

        self._state = SessionState.DOWN
        self._generation = 0  # bumped per session, so a roster answer from an old one is ignored
        self._failures = 0  # reconnections since the last session that lasted
        self._up_since = 0.0
        self._reconnect_call: IDelayedCall | None = None
        self._started: Deferred[None] = Deferred()
        # Deliveries waiting for their barrier: (bare recipient, id) -> bounce seen, if any.
        self._pending: dict[tuple[str, str], Exception | None] = {}
        self._barrier_next: list[Deferred[None]] | None = None
        # Their stanzas, written together just before that barrier: one write, not hundreds.
        self._unsent: list[bytes] = []
        self._barriers: list[list[Deferred[None]]] = []
        self._states: dict[str, PresenceState] = {}  # known contacts' last reported state

        plain = tls == "none"
        self._xmpp = _Client(
            f"{bare.bare}/{resource}",
            password,
            on_connect_failed=self._schedule_reconnect,
            loop=loop,
            ssl_context=tls_context(ca_file),
            plugin_config={
                "feature_mechanisms": {"unencrypted_plain": plain, "unencrypted_scram": plain},
                "xep_0199": {"keepalive": True, "interval": keepalive_interval, "timeout": 30},
                "xep_0184": {"auto_ack": False, "auto_request": False},
            },
        )
        xmpp = self._xmpp
        xmpp.enable_starttls = tls == "starttls"
        xmpp.enable_direct_tls = tls == "direct"
        xmpp.enable_plaintext = plain
        xmpp.auto_authorize = None  # strangers are refused, known users accepted, by us
        xmpp.auto_subscribe = False
        # slixmpp's Message() sets xml:lang from default_lang; so does ``chat_stanza``.
        self._lang = b' xml:lang="%s"' % xml_attr(xmpp.default_lang) if xmpp.default_lang else b""
        for plugin in ("xep_0030", "xep_0199", "xep_0184", "xep_0115", "xep_0163", "xep_0080"):
            xmpp.register_plugin(plugin)
        xmpp.plugin["xep_0030"].add_identity(category="client", itype="bot", name="Renga")
        # We advertise our caps (PEP's +notify needs them) but need no one else's: learning them
        # costs a disco query per new contact, whose task hangs forever if the session drops.
        xmpp.del_event_handler("entity_caps", xmpp.plugin["xep_0115"]._process_caps)
        xmpp.add_event_handler("session_start", self._session_started)
        xmpp.add_event_handler("disconnected", self._disconnected)
        xmpp.add_event_handler("failed_all_auth", self._login_failed)
        xmpp.add_event_handler("connection_failed", self._connection_failed)
        xmpp.add_event_handler("ssl_invalid_chain", self._tls_refused)
        xmpp.add_event_handler("stream_error", self._stream_error)
        xmpp.add_event_handler("message", self._message)
        xmpp.add_event_handler("message_error", self._message_error)
        xmpp.add_event_handler("receipt_received", self._receipt)
        xmpp.add_event_handler("presence_subscribe", self._subscribe_request)
        for show in ("available", "chat", "away", "xa", "dnd", "unavailable"):
            xmpp.add_event_handler(f"presence_{show}", self._presence)
        xmpp.add_event_handler("user_location_publish", self._location)

    @property
    def session_up(self) -> bool:
        """Logged in with presence sent: deliveries are accepted."""
        return self._state is SessionState.UP

    @property
    def encryption(self) -> str | None:
        """The TLS version of the connection (``"TLSv1.3"``), None if not connected or plain."""
        transport = self._xmpp.transport
        if transport is None:
            return None
        tls = transport.get_extra_info("ssl_object")
        return tls.version() if isinstance(tls, ssl.SSLObject | ssl.SSLSocket) else None

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Connect; fires on the first session start, fails with ``XmppLoginError`` if refused.

        Unreachable servers are retried forever with backoff, so this may wait a long time: the
        wiring should not hold the herd server's start on it.
        """
        self._connect()
        return self._started

    def close(self) -> Deferred[None]:
        """Close the stream (the server learns at once, so another server takes the chats)."""
        self._state = SessionState.CLOSED
        if self._reconnect_call is not None and self._reconnect_call.active():
            self._reconnect_call.cancel()
        self._reconnect_call = None
        self._session_lost(TransientDeliveryError("XMPP channel closed"))
        return as_deferred(self._shutdown())

    async def _shutdown(self) -> None:
        self._xmpp.cancel_connection_attempt()
        if self._xmpp.is_connected():
            await self._xmpp.disconnect(wait=2.0)
        await self._xmpp.stop_sending()

    def _connect(self) -> None:
        self._reconnect_call = None
        if (
            self._state is SessionState.CLOSED
            or self._xmpp.is_connected()
            or self._xmpp.is_connecting()
        ):
            return
        self._xmpp.connect(self._host, self._port)

    def _schedule_reconnect(self) -> None:
        """Exponential backoff with jitter on the injected clock."""
        if self._state is SessionState.CLOSED or self._reconnect_call is not None:
            return
        self._failures += 1
        delay = self._reconnect.delay(self._failures, self._jitter())
        _log.info("XMPP: reconnecting in {delay:.1f} s", delay=delay)
        self._reconnect_call = self._clock.callLater(delay, self._connect)

    def _session_started(self, _event: object) -> None:
        """Fetch the roster (so subscription requests reach us), then send presence."""
        self._generation += 1
        generation = self._generation
        roster = self._xmpp.get_roster(timeout=self._confirm_timeout)
        roster.add_done_callback(lambda done: self._roster_loaded(generation, done))

    def _roster_loaded(self, generation: int, done: asyncio.Future[Iq | None]) -> None:
        stale = done.cancelled() or generation != self._generation
        if stale or self._state is SessionState.CLOSED:
            return
        if done.exception() is not None:
            _log.warn("XMPP: roster not loaded: {error!r}", error=done.exception())
        self._xmpp.send_presence(ppriority=self._priority)
        self._state = SessionState.UP
        self._up_since = self._clock.seconds()
        _log.info(
            "XMPP: session up as {jid} ({tls})",
            jid=str(self._xmpp.boundjid),
            tls=self.encryption or "no TLS",
        )
        if not self._started.called:
            self._started.callback(None)

    def _disconnected(self, reason: object) -> None:
        was_up = self._state is SessionState.UP
        if was_up and self._clock.seconds() - self._up_since >= LASTING_SESSION:
            self._failures = 0  # a session that lasted resets the backoff; flapping ones do not
        self._session_lost(TransientDeliveryError("XMPP session lost"))
        if self._state is not SessionState.CLOSED:
            if was_up:
                _log.warn("XMPP: session lost ({reason}); reconnecting", reason=reason)
            self._schedule_reconnect()

    def _session_lost(self, error: Exception) -> None:
        if self._state is SessionState.UP:
            self._state = SessionState.DOWN
        self._generation += 1
        self._states.clear()  # the next session's presence flood reports everyone afresh
        self._unsent.clear()
        barriers, self._barriers = self._barriers, []
        if self._barrier_next is not None:
            barriers.append(self._barrier_next)
            self._barrier_next = None
        for waiters in barriers:
            _fire(waiters, error)

    def _stream_error(self, error: StreamError) -> None:
        """E.g. ``conflict``: another server logged in with our resource (two servers, one name)."""
        _log.warn(
            "XMPP: stream error {condition}: {text}",
            condition=error["condition"],
            text=error["text"],
        )

    def _login_failed(self, _event: object) -> None:
        if self._tls != "none" and self.encryption is None:
            # slixmpp found no mechanism it may use without TLS: the password was not sent.
            _log.error(
                "XMPP: {where} offered no STARTTLS; not logging in without TLS",
                where=self._where(),
            )
            return  # slixmpp disconnects; retried with the backoff (the server may be fixed)
        _log.error("XMPP: login refused for {jid}", jid=str(self._xmpp.boundjid))
        if not self._started.called:
            self._started.errback(XmppLoginError(f"login refused for {self._xmpp.boundjid}"))

    def _connection_failed(self, error: object) -> None:
        """A connect that failed: refused, unreachable, or (direct TLS) a certificate refused."""
        if isinstance(error, ssl.SSLError):
            _log.error("XMPP: TLS with {where} failed: {error}", where=self._where(), error=error)
        else:
            _log.info("XMPP: cannot connect to {where}: {error}", where=self._where(), error=error)

    def _tls_refused(self, error: ssl.SSLError) -> None:
        """STARTTLS: the handshake failed (the server's certificate was refused, say).  slixmpp
        keeps the failed handshake as its connection attempt (``is_connecting()`` would stay
        true, and it would never connect again) and, since we handle this event, leaves the
        connection to us: we drop both.  The disconnect starts the backoff."""
        _log.error("XMPP: TLS with {where} failed: {error}", where=self._where(), error=error)
        self._xmpp.cancel_connection_attempt()
        self._xmpp.abort()

    def _where(self) -> str:
        domain = self._xmpp.boundjid.domain
        if self._host is None:
            return domain
        return f"{self._host}:{self._port} (for {domain})"

    # -- delivery ------------------------------------------------------------------------------

    def deliver(self, message: Outgoing) -> Deferred[None]:
        """Send one ``chat`` message; fires once the server has taken it (see the module doc).

        ``subject``, ``html``, ``headers`` and ``attachments`` are not used: XMPP gets text only.
        Characters XML forbids are dropped from the text and thread: a stray control character in
        a comment should not cost the notification. A key XML cannot carry is refused instead, as
        bounces are matched by it.
        """
        if self._state is not SessionState.UP:
            return fail(TransientDeliveryError("XMPP session is down"))
        try:
            to = JID(message.recipient)  # slixmpp's JID is compiled (~0.2 µs): no cache needed
        except (InvalidJID, UnicodeEncodeError) as error:  # lone surrogates fail in encode()
            return fail(PermanentDeliveryError(f"not a JID: {message.recipient!r} ({error})"))
        if not to.user:
            return fail(PermanentDeliveryError(f"not a user's JID: {message.recipient!r}"))
        if NOT_XML.search(message.key):
            return fail(PermanentDeliveryError(f"key not valid in XML: {message.key!r}"))
        body = xml_text(message.text)
        if len(body) > MAX_BODY_BYTES:  # escaped: 64 KiB of "&" are 320 KiB on the wire
            return fail(PermanentDeliveryError(f"body over {MAX_BODY_BYTES} bytes as XML"))
        pending = (to.bare, message.key)
        if pending in self._pending:
            return fail(TransientDeliveryError(f"{message.key} is already in flight"))
        self._pending[pending] = None
        thread = xml_text(message.thread) if message.thread else b""
        self._unsent.append(
            chat_stanza(xml_attr(to.full), xml_attr(message.key), body, thread, self._lang)
        )
        confirmed = self._barrier()
        confirmed.addBoth(self._settle, pending)
        return confirmed

    def _settle(self, result: Failure | None, pending: tuple[str, str]) -> Failure | None:
        bounce = self._pending.pop(pending, None)
        if isinstance(result, Failure):
            return result
        if bounce is not None:
            raise bounce
        return None

    def _barrier(self) -> Deferred[None]:
        """A Deferred that fires once the server has answered everything sent so far; the
        stanzas of this loop turn are written with its ping."""
        waiter: Deferred[None] = Deferred()
        if self._barrier_next is None:
            self._barrier_next = []
            self._loop.call_soon(self._send_barrier)
        self._barrier_next.append(waiter)
        return waiter

    def _send_barrier(self) -> None:
        waiters, self._barrier_next = self._barrier_next, None
        if not waiters:
            return
        # Still the same session (_session_lost empties both), so slixmpp has a transport.
        unsent, self._unsent = self._unsent, []
        self._xmpp.send_raw(b"".join(unsent))
        self._barriers.append(waiters)
        ping = self._xmpp.plugin["xep_0199"].send_ping(
            JID(self._xmpp.boundjid.host), timeout=self._confirm_timeout
        )
        ping.add_done_callback(lambda done: self._barrier_answered(waiters, done))

    def _barrier_answered(self, waiters: list[Deferred[None]], done: asyncio.Future[Iq]) -> None:
        if waiters not in self._barriers:
            return  # the session ended first and failed them
        self._barriers.remove(waiters)
        error = None if done.cancelled() else done.exception()
        if isinstance(error, IqTimeout):
            _fire(waiters, TransientDeliveryError("no answer from the XMPP server"))
        else:  # a result, or an error reply: either way the server got this far
            _fire(waiters, None)

    def _message_error(self, msg: Message) -> None:
        pending = (msg["from"].bare, msg["id"])
        condition = msg["error"]["condition"]
        text = f"{msg['from']} bounced {msg['id']!r}: {msg['error']['type']}/{condition}"
        if pending not in self._pending:
            _log.warn("XMPP: {text}", text=text)
            return
        transient = msg["error"]["type"] == "wait" or condition in _TRANSIENT_CONDITIONS
        self._pending[pending] = (TransientDeliveryError if transient else PermanentDeliveryError)(
            text
        )

    def _receipt(self, msg: Message) -> None:
        self._call(self._on_receipt, msg["from"].bare, msg["receipt"])

    # -- the bot -------------------------------------------------------------------------------

    def _message(self, msg: Message) -> None:
        if msg["type"] not in ("chat", "normal"):
            return
        body = msg["body"].strip()
        sender: JID = msg["from"]
        if not body or sender.bare == self._xmpp.boundjid.bare:
            return  # chat states, receipts, PEP events; or another server of the herd
        if not self._is_known(sender.bare):
            if self._on_stranger is not None and body[:4].lower() == "link":
                if self._strangers.may_try_link(sender.bare, self._clock.seconds()):
                    answer = maybeDeferred(self._on_stranger, sender.bare, body)
                    answer.addErrback(self._command_failed, sender.bare)
                    answer.addCallback(self._reply, sender, msg["thread"])
                    answer.addCallback(lambda _: self._ask_presence(sender.bare))
                    answer.addErrback(lambda failure: _log.failure("XMPP: not sent", failure))
                return
            self._answer_stranger(sender, msg["thread"])
            return
        if msg["request_receipt"] and msg["id"]:
            receipt = self._xmpp.make_message(mto=sender)
            receipt["receipt"] = msg["id"]
            receipt.send()
        answer = maybeDeferred(self._on_command, sender.bare, body)
        answer.addErrback(self._command_failed, sender.bare)
        answer.addCallback(self._reply, sender, msg["thread"])
        answer.addCallback(lambda _: self._ask_presence(sender.bare))
        answer.addErrback(lambda failure: _log.failure("XMPP: reply not sent", failure))

    def _command_failed(self, failure: Failure, bare: str) -> str:
        _log.failure("XMPP: command from {who} failed", failure, who=bare)
        return self._apology

    def _reply(self, text: str, to: JID, thread: str) -> None:
        text = NOT_XML.sub("", text)
        if not text:
            return
        data = text.encode()
        if len(data) > MAX_BODY_BYTES:
            text = data[: MAX_BODY_BYTES - 3].decode(errors="ignore") + "…"
        reply = self._xmpp.make_message(mto=to, mbody=text, mtype="chat")
        if thread:
            reply["thread"] = thread
        reply["id"] = self._xmpp.new_id()  # a receipt names the message it acknowledges
        reply["request_receipt"] = True
        reply.send()

    def _answer_stranger(self, sender: JID, thread: str) -> None:
        """One polite line per stranger per cooldown: never a bot-to-bot loop, bounded memory.
        In the message's thread, like every reply (a client may wait for its answer by it)."""
        if not self._strangers.should_answer(sender.bare, self._clock.seconds()):
            return
        reply = self._xmpp.make_message(mto=sender, mbody=self._stranger_reply, mtype="chat")
        if thread:
            reply["thread"] = thread
        reply.send()

    def _ask_presence(self, bare: str) -> None:
        """A known user whose presence we do not get: ask for it (see ``PresenceAsks``)."""
        if self._state is not SessionState.UP or not self._is_known(bare):
            return  # a stranger whose link failed; or no session to send on
        item = self._xmpp.client_roster[bare]
        now = self._clock.seconds()
        if self._asks.should_ask(
            bare, now, receiving=bool(item["to"]), pending=bool(item["pending_out"])
        ):
            _log.info("XMPP: asking {who} to share their presence", who=bare)
            item.subscribe()

    def _subscribe_request(self, presence: Presence) -> None:
        """Known users: accept and subscribe back (for their presence and location); others: no.

        One the bot asked already (the roster, shared by all its resources, shows our request
        pending or granted) is accepted even if this server does not know them yet: they just
        linked at another server, and their client answers our request with its own before the
        link has reached every server; a refusal from this one would cancel the subscription.
        """
        bare = presence["from"].bare
        item = self._xmpp.client_roster[bare]
        if not self._is_known(bare) and not (item["to"] or item["pending_out"]):
            _log.info("XMPP: refused a subscription from stranger {who}", who=bare)
            item.unauthorize()
            return
        item.authorize()
        if not item["to"]:
            item.subscribe()

    def _presence(self, presence: Presence) -> None:
        bare = presence["from"].bare
        if bare == self._xmpp.boundjid.bare or not self._is_known(bare):
            return
        shows = [r.get("show", "") for r in self._xmpp.client_roster[bare].resources.values()]
        state = presence_of(shows)
        if self._states.get(bare, "unavailable") != state:
            self._states[bare] = state
            self._call(self._on_presence, bare, state)

    def _location(self, msg: Message) -> None:
        bare = msg["from"].bare
        if not self._is_known(bare):
            return
        geoloc = msg["pubsub_event"]["items"]["item"]["geoloc"]
        lat, lon = geoloc["lat"], geoloc["lon"]
        if lat is None or lon is None or not (abs(lat) <= 90 and abs(lon) <= 180):
            return  # a retraction (empty geoloc) or nonsense
        stamp = geoloc.xml.find(_GEOLOC_TIMESTAMP)
        when = posix_time(stamp.text if stamp is not None else None)
        self._call(
            self._on_location, bare, lat, lon, when if when is not None else self._clock.seconds()
        )

    def _call(self, callback: Callable[..., None], *args: object) -> None:
        """Run a callback; its failure is logged, never allowed into slixmpp's dispatch."""
        try:
            callback(*args)
        except Exception:
            _log.failure("XMPP: callback {name} failed", name=getattr(callback, "__name__", "?"))


def tls_context(ca_file: Path | str | None) -> ssl.SSLContext:
    """A client context that verifies the server: chain to ``ca_file`` (PEM) only, or to the
    system trust store when None, and the name checked (by the caller's ``server_hostname``)."""
    return ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))


def _fire(waiters: list[Deferred[None]], error: Exception | None) -> None:
    for waiter in waiters:
        if waiter.called:  # cancelled by its caller
            continue
        if error is None:
            waiter.callback(None)
        else:
            waiter.errback(error)


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
