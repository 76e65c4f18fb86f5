"""The bot and the XMPP channel against a real Prosody, with real slixmpp clients as the people.

Each test builds its bots and people through the ``scene`` fixture, which closes them all and then
checks that no slixmpp task was left behind on the shared loop.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from slixmpp import JID, ClientXMPP
from slixmpp.plugins.xep_0080 import Geoloc
from slixmpp.stanza import Message, Presence
from slixmpp.xmlstream import ET
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.task import deferLater

from notifier.channels.xmpp import MAX_BODY_BYTES, STRANGER_REPLY, XmppChannel, XmppLoginError
from notifier.errors import PermanentDeliveryError, TransientDeliveryError
from notifier.localxmpp import LocalProsody
from notifier.message import Outgoing
from tests.support.fixtures import BOT_USER, XMPP_PASSWORD

# Bailey as a separate process, so that it can really die (SIGKILL) with its socket open.
BOT_PROCESS = """
import asyncio, sys
loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)
from twisted.internet import asyncioreactor
asyncioreactor.install(loop)
from twisted.internet import reactor
from twisted.internet.defer import succeed
from notifier.channels.xmpp import XmppChannel
jid, password, host, port, resource, priority = sys.argv[1:]
XmppChannel(
    jid=jid, password=password, resource=resource, priority=int(priority), loop=loop,
    clock=reactor, is_known=lambda who: True, jitter=lambda: 0.5, host=host, port=int(port),
    tls="none", on_command=lambda who, text: succeed(f"{resource}: {text}"),
).start()
reactor.run()
"""


def _d(awaitable: Awaitable[Any]) -> Deferred[Any]:
    return Deferred.fromFuture(asyncio.ensure_future(awaitable))


async def until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll a condition on the reactor (no bare sleeps); fail with ``what`` after ``timeout``."""
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await deferLater(reactor, 0.02)


def chat(key: str, to: str, text: str) -> Outgoing:
    return Outgoing(key=key, channel="xmpp", recipient=to, subject="", text=text)


class Person:
    """A real slixmpp client on one account, recording what it receives."""

    def __init__(self, server: LocalProsody, jid: str) -> None:
        self.server = server
        self.jid = jid
        xmpp = ClientXMPP(
            f"{jid}/phone",
            XMPP_PASSWORD,
            loop=asyncio.get_event_loop(),
            plugin_config={"feature_mechanisms": {"unencrypted_plain": True}},
        )
        xmpp.enable_plaintext, xmpp.enable_starttls, xmpp.enable_direct_tls = True, False, False
        for plugin in ("xep_0030", "xep_0184", "xep_0199", "xep_0080"):
            xmpp.register_plugin(plugin)
        xmpp.del_event_handler("entity_caps", xmpp.plugin["xep_0115"]._process_caps)
        self.xmpp = xmpp
        self.chats: list[Message] = []
        self.presences: list[Presence] = []
        self.receipts: list[str] = []
        xmpp.add_event_handler("message", self._message)
        xmpp.add_event_handler("receipt_received", lambda msg: self.receipts.append(msg["receipt"]))
        xmpp.add_event_handler("presence", self.presences.append)

    def _message(self, msg: Message) -> None:
        if msg["type"] in ("chat", "normal") and msg["body"]:
            self.chats.append(msg)

    def bodies(self) -> list[str]:
        return [msg["body"] for msg in self.chats]

    async def login(self) -> None:
        started: asyncio.Future[None] = asyncio.get_event_loop().create_future()

        def session_start(_event: object) -> None:
            if not started.done():
                started.set_result(None)

        self.xmpp.add_event_handler("session_start", session_start)  # armed before connecting
        self.xmpp.connect(self.server.host, self.server.port)
        await _d(asyncio.wait_for(started, 10))
        await _d(self.xmpp.get_roster())
        self.xmpp.send_presence()

    async def befriend(self, bot: str) -> None:
        """Subscribe to the bot and wait until it subscribed back (this client accepts)."""
        self.xmpp.send_presence_subscription(pto=bot)
        item = self.xmpp.client_roster[bot]
        await until(lambda: item["to"] and item["from"], "a mutual subscription with the bot")

    def bot_resources(self, bot: str) -> set[str]:
        """The bot's resources (herd servers) this person sees online."""
        return set(self.xmpp.client_roster[bot].resources)

    def say(self, to: str, text: str, receipt: str = "") -> None:
        """Send a chat; with ``receipt`` (a message id), ask for a delivery receipt."""
        msg = self.xmpp.make_message(mto=JID(to), mbody=text, mtype="chat")
        if receipt:
            msg["id"] = receipt
            msg["request_receipt"] = True
        msg.send()

    async def ask(self, bot: str, text: str, resource: str) -> None:
        """Send a command; the answer must come from ``resource``."""
        self.say(bot, text)
        await until(lambda: any(text in body for body in self.bodies()), f"the answer to {text}")
        answer = next(msg for msg in self.chats if text in msg["body"])
        assert (answer["from"].resource, answer["body"]) == (resource, f"{resource}: {text}")

    async def logout(self) -> None:
        await _d(self.xmpp.disconnect())
        task = self.xmpp._run_out_filters  # slixmpp leaves it running (see runtime notes)
        if task is not None:
            task.cancel()
            await _d(asyncio.gather(task, return_exceptions=True))


class Scene:
    """The bots and people of one test; ``close()`` ends them all."""

    def __init__(self, prosody: LocalProsody, account: Callable[[str], str]) -> None:
        self.prosody = prosody
        self.account = account
        self.bot_jid = prosody.jid(BOT_USER)
        self.bots: list[XmppChannel] = []
        self.people: list[Person] = []

    def person(self, name: str, server: LocalProsody | None = None) -> Person:
        """A fresh account on the session's Prosody, or ``name`` itself on ``server``."""
        if server is None:
            person = Person(self.prosody, self.account(name))
        else:
            person = Person(server, server.register(name, XMPP_PASSWORD))
        self.people.append(person)
        return person

    def bot(
        self,
        known: Iterable[str],
        resource: str = "Bailey",
        priority: int = 10,
        server: LocalProsody | None = None,
        **options: Any,
    ) -> XmppChannel:
        server = server or self.prosody
        options.setdefault("on_command", lambda who, text: succeed(f"{resource}: {text}"))
        bot = XmppChannel(
            jid=server.jid(BOT_USER),
            password=options.pop("password", XMPP_PASSWORD),
            resource=resource,
            priority=priority,
            loop=asyncio.get_event_loop(),
            clock=reactor,
            is_known=set(known).__contains__,
            jitter=lambda: 0.5,
            host=server.host,
            port=server.port,
            tls="none",
            **options,
        )
        self.bots.append(bot)
        return bot

    async def close(self) -> None:
        for person in self.people:
            await person.logout()
        for bot in self.bots:
            await bot.close()


def _ours(task: asyncio.Task[Any]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    filename = code.co_filename if code is not None else ""
    return "slixmpp" in filename or filename.endswith("channels/xmpp.py")


@pytest_twisted.async_yield_fixture
async def scene(prosody: LocalProsody, xmpp_account: Callable[[str], str]) -> AsyncIterator[Scene]:
    built = Scene(prosody, xmpp_account)
    yield built
    await built.close()
    left = lambda: [t for t in asyncio.all_tasks() if not t.done() and _ours(t)]  # noqa: E731
    await until(lambda: not left(), "slixmpp tasks to end", timeout=3)


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_known_user_gets_the_command_answer(scene: Scene) -> None:
    alice = scene.person("alice")
    seen: list[tuple[str, str]] = []

    def on_command(who: str, text: str) -> Deferred[str]:
        seen.append((who, text))
        if text == "boom":
            raise RuntimeError("kaboom")
        return succeed(f"you said {text}")

    receipts: list[tuple[str, str]] = []
    bot = scene.bot(
        [alice.jid], on_command=on_command, on_receipt=lambda *got: receipts.append(got)
    )
    await bot.start()
    await alice.login()
    alice.say(scene.bot_jid, "  hello  ", receipt="m1")
    await until(lambda: alice.chats, "the answer")
    assert alice.bodies() == ["you said hello"]
    await until(lambda: alice.receipts, "the bot's receipt")
    assert alice.receipts == ["m1"]
    await until(lambda: receipts, "alice's receipt for the answer")
    assert receipts == [(alice.jid, alice.chats[0]["id"])]
    assert str(alice.chats[0]["from"]) == f"{scene.bot_jid}/Bailey"
    assert seen == [(alice.jid, "hello")]
    alice.say(scene.bot_jid, "boom")
    await until(lambda: len(alice.chats) == 2, "the apology")
    assert alice.bodies()[1].startswith("Sorry")
    assert "\n" not in alice.bodies()[1]


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_stranger_gets_one_polite_line_and_no_subscription(scene: Scene) -> None:
    eve = scene.person("eve")
    commands: list[str] = []

    def on_command(who: str, text: str) -> Deferred[str]:
        commands.append(text)
        return succeed("secret plans")

    bot = scene.bot([], on_command=on_command)
    await bot.start()
    await eve.login()
    eve.say(scene.bot_jid, "hi")
    eve.say(scene.bot_jid, "hi again")
    eve.xmpp.send_presence_subscription(pto=scene.bot_jid)
    refused = lambda: [p for p in eve.presences if p["type"] == "unsubscribed"]  # noqa: E731
    await until(refused, "the refused subscription")
    # The bot answers a ping after what it sent before: every reply has arrived by the pong.
    await _d(eve.xmpp.plugin["xep_0199"].ping(JID(f"{scene.bot_jid}/Bailey")))
    assert eve.bodies() == [STRANGER_REPLY]
    assert commands == []
    assert not eve.xmpp.client_roster[scene.bot_jid]["to"]


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_a_known_user_is_asked_for_presence_once_and_every_server_accepts_the_answer(
    scene: Scene,
) -> None:
    alice = scene.person("alice")  # slixmpp's defaults: accepts requests and subscribes back
    bailey = scene.bot([alice.jid], resource="Bailey", priority=10)
    bona = scene.bot([], resource="Bona", priority=5)  # alice's link has not reached it yet
    await bailey.start()
    await bona.start()
    await alice.login()
    alice.say(scene.bot_jid, "one")
    alice.say(scene.bot_jid, "two")
    await until(lambda: len(alice.chats) == 2, "both answers")
    item = alice.xmpp.client_roster[scene.bot_jid]
    await until(lambda: item["to"] and item["from"], "a mutual subscription with the bot")
    await until(lambda: alice.bot_resources(scene.bot_jid) == {"Bailey", "Bona"}, "both servers")
    alice.say(scene.bot_jid, "three")
    await until(lambda: len(alice.chats) == 3, "the third answer")
    await _d(alice.xmpp.plugin["xep_0199"].ping(JID(f"{scene.bot_jid}/Bailey")))
    await _d(alice.xmpp.plugin["xep_0199"].ping(JID(f"{scene.bot_jid}/Bona")))
    kinds = [p["type"] for p in alice.presences if p["from"].bare == scene.bot_jid]
    assert kinds.count("subscribe") == 1, kinds  # asked once, not at every message
    assert "unsubscribed" not in kinds, kinds  # Bona did not refuse her answer


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_delivery_to_an_offline_user_arrives_at_login_with_receipt(scene: Scene) -> None:
    carol = scene.person("carol")
    receipts: list[tuple[str, str]] = []
    bot = scene.bot([carol.jid], on_receipt=lambda who, key: receipts.append((who, key)))
    with pytest.raises(TransientDeliveryError):
        await bot.deliver(chat("n1/xmpp", carol.jid, "too early"))  # not started
    await bot.start()
    await bot.deliver(chat("n2/xmpp", carol.jid, "Dinner moved to 8pm"))
    await carol.login()
    await until(lambda: carol.chats, "the offline message")
    assert carol.bodies() == ["Dinner moved to 8pm"]
    assert carol.chats[0]["id"] == "n2/xmpp"
    await until(lambda: receipts, "the receipt from carol's client")
    assert receipts == [(carol.jid, "n2/xmpp")]


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_delivery_to_unknown_accounts_fails_permanently(scene: Scene) -> None:
    bot = scene.bot([])
    await bot.start()
    for recipient in (scene.prosody.jid("nobody"), "someone@elsewhere.example", "no jid"):
        with pytest.raises(PermanentDeliveryError):
            await bot.deliver(chat(f"n3/{recipient}", recipient, "hello?"))


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_wrong_password_fails_start(scene: Scene) -> None:
    with pytest.raises(XmppLoginError):
        await scene.bot([], password="wrong").start()


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_failover_when_the_highest_priority_server_closes(scene: Scene) -> None:
    alice = scene.person("alice")
    bailey = scene.bot([alice.jid], "Bailey", 10)
    bona = scene.bot([alice.jid], "Bona", 5)
    await bailey.start()
    await bona.start()
    await alice.login()
    await alice.befriend(scene.bot_jid)
    await until(lambda: alice.bot_resources(scene.bot_jid) == {"Bailey", "Bona"}, "both bots")
    await alice.ask(scene.bot_jid, "who first", "Bailey")
    await bailey.close()
    await until(lambda: alice.bot_resources(scene.bot_jid) == {"Bona"}, "Bailey gone")
    await alice.ask(scene.bot_jid, "who now", "Bona")


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_failover_when_the_highest_priority_server_is_killed(scene: Scene) -> None:
    alice = scene.person("alice")
    bona = scene.bot([alice.jid], "Bona", 5)
    server = scene.prosody
    argv = [scene.bot_jid, XMPP_PASSWORD, server.host, str(server.port), "Bailey", "10"]
    bailey = subprocess.Popen([sys.executable, "-c", BOT_PROCESS, *argv])
    try:
        await bona.start()
        await alice.login()
        await alice.befriend(scene.bot_jid)
        both = lambda: alice.bot_resources(scene.bot_jid) == {"Bailey", "Bona"}  # noqa: E731
        await until(both, "both bots", timeout=20)
        await alice.ask(scene.bot_jid, "who first", "Bailey")
        bailey.kill()  # SIGKILL: no goodbye; the kernel closes its socket
        killed = reactor.seconds()
        await until(lambda: alice.bot_resources(scene.bot_jid) == {"Bona"}, "Bailey gone")
        await alice.ask(scene.bot_jid, "who now", "Bona")
        assert reactor.seconds() - killed < 3
    finally:
        bailey.kill()
        bailey.wait()


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_bot_reconnects_after_prosody_restarts(scene: Scene, tmp_path: Path) -> None:
    own = LocalProsody(tmp_path)  # its own: the shared one stays up for the other tests
    own.start()
    try:
        own.register(BOT_USER, XMPP_PASSWORD)
        dave = scene.person("dave", server=own)
        bot = scene.bot([dave.jid], server=own)
        await bot.start()
        await threads.deferToThread(own.stop)
        await until(lambda: not bot.session_up, "the bot to see Prosody gone")
        with pytest.raises(TransientDeliveryError):
            await bot.deliver(chat("n5/xmpp", dave.jid, "while down"))
        await threads.deferToThread(own.start)
        await until(lambda: bot.session_up, "the bot to log in again", timeout=15)
        await bot.deliver(chat("n6/xmpp", dave.jid, "after the restart"))
        await dave.login()
        await until(lambda: dave.chats, "the message sent after the restart")
        assert dave.bodies() == ["after the restart"]
        await scene.close()  # before its Prosody goes
    finally:
        own.stop()


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_presence_and_published_location_of_a_known_user(scene: Scene) -> None:
    alice = scene.person("alice")
    places: list[tuple[str, float, float, float]] = []
    states: list[tuple[str, str]] = []
    bot = scene.bot(
        [alice.jid],
        on_location=lambda *where: places.append(where),
        on_presence=lambda who, state: states.append((who, state)),
    )
    await bot.start()
    await alice.login()
    await alice.befriend(scene.bot_jid)
    await until(lambda: states, "alice's presence")
    alice.xmpp.send_presence(pshow="xa")
    await until(lambda: len(states) == 2, "alice away")
    geoloc = Geoloc()
    geoloc["lat"] = 34.06893
    geoloc["lon"] = -118.445127
    ET.SubElement(geoloc.xml, f"{{{Geoloc.namespace}}}timestamp").text = "2021-05-19T22:53:47Z"
    await _d(alice.xmpp.plugin["xep_0163"].publish(geoloc))
    await until(lambda: places, "the location")
    assert places == [(alice.jid, 34.06893, -118.445127, 1621464827.0)]
    await alice.logout()
    await until(lambda: len(states) == 3, "alice gone")
    assert states == [(alice.jid, "available"), (alice.jid, "away"), (alice.jid, "unavailable")]


# Texts that slixmpp's serializer and ours must both get through intact.
SPECIAL_TEXTS = (
    "less < greater > amp & quote \" apostrophe ' and a fake </body></message> end tag",
    "Zoë, naïve café, 日本語, Ελληνικά, עברית",
    "emoji 🍕🎉, a family 👩‍👩‍👧 and a flag 🇫🇷",
    "  leading and trailing spaces, a\ttab and\nnewlines  ",
    ("A long digest line with <tags>, &amp; 'quotes' and émojis 🍕.\n" * 150)[:8100],
)


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_deliveries_arrive_intact_with_thread_and_receipt_request(scene: Scene) -> None:
    alice = scene.person("alice")
    receipts: list[str] = []
    bot = scene.bot([alice.jid], on_receipt=lambda who, key: receipts.append(key))
    await bot.start()
    await alice.login()
    thread_ids = ("event-42", None, "ev <&> \"'", None, "ünïcode 🍕")
    keys = [f"s{i}/xmpp&<\"'" for i in range(len(SPECIAL_TEXTS))]
    # All in one loop turn, as the outbox hands them over: one write, one barrier, one bounce.
    sent = [
        bot.deliver(Outgoing(key, "xmpp", alice.jid, "", text, thread=thread))
        for key, text, thread in zip(keys, SPECIAL_TEXTS, thread_ids, strict=True)
    ]
    bounced = bot.deliver(chat("s-nobody/xmpp", scene.prosody.jid("nobody"), "hello?"))
    await gatherResults(sent)
    with pytest.raises(PermanentDeliveryError):
        await bounced
    await until(lambda: len(alice.chats) == len(SPECIAL_TEXTS), "all special messages")
    for msg, key, text, thread in zip(alice.chats, keys, SPECIAL_TEXTS, thread_ids, strict=True):
        assert (msg["id"], msg["type"], msg["body"], msg["thread"]) == (
            key,
            "chat",
            text,
            thread or "",
        )
        assert msg["request_receipt"]
        assert str(msg["from"]) == f"{scene.bot_jid}/Bailey"
    await until(lambda: len(receipts) == len(keys), "alice's receipts")
    assert receipts == keys


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_characters_xml_forbids_are_dropped_and_the_stream_survives(scene: Scene) -> None:
    """A stray control character (pasted into a comment) would make Prosody close the bot's
    stream (not-well-formed), and the outbox would retry that message forever."""
    alice = scene.person("alice")
    bot = scene.bot([alice.jid])
    await bot.start()
    await alice.login()
    dirty = "a\x00b\x01c\x08d\x0b\x0ce\x1b[1mbold\x1f \x7f\x85 \ud800x\udfff y\ufffe\uffff z\t\nend"
    clean = "abcde[1mbold \x7f\x85 x y z\t\nend"
    message = Outgoing("d1/xmpp", "xmpp", alice.jid, "", dirty, thread="ev\x02ent\ufffe")
    await bot.deliver(message)  # confirmed by the barrier: the stream took it
    await bot.deliver(chat("d2/xmpp", alice.jid, "\x01\x02"))  # nothing left: no body
    await bot.deliver(chat("d3/xmpp", alice.jid, "still here"))
    await until(lambda: len(alice.chats) == 2, "the cleaned message and the next one")
    assert [(msg["body"], msg["thread"]) for msg in alice.chats] == [
        (clean, "event"),
        ("still here", ""),
    ]
    assert bot.session_up


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_unsendable_deliveries_fail_permanently_and_the_stream_survives(
    scene: Scene,
) -> None:
    alice = scene.person("alice")
    bot = scene.bot([alice.jid])
    await bot.start()
    await alice.login()
    refused = (
        chat("r1/xmpp", "alice\ud800@localhost", "a lone surrogate in the JID"),
        chat("r2/xmpp\x00", alice.jid, "a key XML cannot carry"),
        chat("r3/xmpp", alice.jid, "x" * (MAX_BODY_BYTES + 1)),
        # Under the limit as text, but 5x that once escaped: Prosody would close the stream.
        chat("r4/xmpp", alice.jid, "&" * (MAX_BODY_BYTES - 1)),
    )
    for message in refused:
        with pytest.raises(PermanentDeliveryError):
            await bot.deliver(message)
    await bot.deliver(chat("r5/xmpp", alice.jid, "x" * MAX_BODY_BYTES))
    await until(lambda: alice.chats, "the message at the size limit")
    assert [msg["id"] for msg in alice.chats] == ["r5/xmpp"]
    assert alice.bodies() == ["x" * MAX_BODY_BYTES]
    assert bot.session_up


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_no_outgoing_filter_would_change_a_delivery(scene: Scene) -> None:
    """Deliveries are written past slixmpp's send() and so its outgoing filters. These leave a
    chat message alone (see ``notifier.stanza.chat_stanza``); a plugin that adds another must be
    looked at."""
    bot = scene.bot([])
    await bot.start()
    filters = bot._xmpp._XMLStream__filters
    assert {mode: {f.__qualname__ for f in found} for mode, found in filters.items()} == {
        "in": set(),
        "out": {
            "Roster._save_last_status",
            "XEP_0184._filter_add_receipt_request",
            "XEP_0115._filter_add_caps",
        },
        "out_sync": set(),
        "out_sce": set(),
    }
