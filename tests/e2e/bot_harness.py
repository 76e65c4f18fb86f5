"""The Jabber bot end to end: a real Prosody, real `herd run` processes logged in as the bot, and
real slixmpp clients as the people who chat with it.

The tests themselves are blocking code, like the rest of tests/e2e: the people's XMPP clients
live on an asyncio loop of their own in a helper thread (`ChatLoop`), and the test thread talks
to them through `run_coroutine_threadsafe` with hard timeouts.  What a client receives is
recorded under a lock; every wait is a poll with a deadline (`harness.wait_until`).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from slixmpp import JID, ClientXMPP
from slixmpp.stanza import Message, Presence

from notifier.localxmpp import LocalProsody
from tests.support.herd import Herd, config_text
from tests.support.lines import LineUser
from tests.support.polling import HerdError, wait_until
from tests.support.prosody import running_prosody
from tests.support.users import herd_cli

T = TypeVar("T")

BOT_USER = "renga"
BOT_PASSWORD = "bot-password-e2e"
PASSWORD = "people-password-e2e"
CALL_SECONDS = 10.0  # hard limit on one call into the chat loop
REPLY_SECONDS = 10.0  # a chat command's answer
NOTICE_SECONDS = 20.0  # a notification through the outbox
_TOKEN = re.compile(r"user (\S+): token (\S+)")


# --- the people's XMPP clients ------------------------------------------------------------------


class ChatLoop:
    """An asyncio loop in a thread of its own, for the people's slixmpp clients.

    `run(coro)` runs a coroutine there and waits for it (at most `timeout`); `call(fn)` runs a
    plain function there.  Exceptions the loop reports (a task destroyed while pending, a failing
    callback) are kept in `errors`; `close()` ends every task, stops and closes the loop.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.errors: list[str] = []
        self.loop.set_exception_handler(self._exception)
        self._thread = threading.Thread(target=self._main, name="xmpp-people", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def _exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.errors.append(f"{context.get('message')}: {context.get('exception')!r}")

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_SECONDS) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise HerdError(f"the chat loop did not finish a call within {timeout} s") from None

    def call(self, function: Callable[[], T], timeout: float = CALL_SECONDS) -> T:
        async def on_loop() -> T:
            return function()

        return self.run(on_loop(), timeout)

    def close(self) -> None:
        if self.loop.is_closed():
            return

        async def end_tasks() -> None:
            current = asyncio.current_task()
            left = [task for task in asyncio.all_tasks() if task is not current]
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        try:
            self.run(end_tasks(), 5.0)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5.0)


@dataclass(frozen=True, slots=True)
class Received:
    """One message a person's client received."""

    sender: str  # full JID
    kind: str  # the message type: chat, normal, error...
    body: str
    id: str
    delayed: bool  # XEP-0203: it waited in the server's offline storage

    @property
    def resource(self) -> str:
        return JID(self.sender).resource


class ChatUser:
    """One person's slixmpp client (resource `phone`), driven from the test thread."""

    def __init__(self, chat: ChatLoop, prosody: LocalProsody, user: str) -> None:
        self.chat = chat
        self.prosody = prosody
        self.jid = prosody.jid(user)
        self.bot = prosody.jid(BOT_USER)
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._presences: list[tuple[str, str]] = []
        self.xmpp: ClientXMPP = chat.call(self._build)

    def _build(self) -> ClientXMPP:
        xmpp = ClientXMPP(
            f"{self.jid}/phone",
            PASSWORD,
            loop=self.chat.loop,
            plugin_config={"feature_mechanisms": {"unencrypted_plain": True}},
        )
        xmpp.enable_plaintext, xmpp.enable_starttls, xmpp.enable_direct_tls = True, False, False
        for plugin in ("xep_0030", "xep_0199", "xep_0203"):
            xmpp.register_plugin(plugin)
        xmpp.add_event_handler("message", self._message)
        xmpp.add_event_handler("presence", self._presence)
        return xmpp

    # --- on the chat loop --------------------------------------------------------------------

    def _message(self, msg: Message) -> None:
        if not msg["body"]:
            return  # chat states, receipts
        delayed = msg.xml.find("{urn:xmpp:delay}delay") is not None
        got = Received(str(msg["from"]), msg["type"], msg["body"], msg["id"], delayed)
        with self._lock:
            self._messages.append(got)

    def _presence(self, presence: Presence) -> None:
        with self._lock:
            self._presences.append((str(presence["from"]), presence["type"]))

    async def _login(self) -> None:
        started: asyncio.Future[None] = self.chat.loop.create_future()

        def session_start(_event: object) -> None:
            if not started.done():
                started.set_result(None)

        def refused(_event: object) -> None:
            if not started.done():
                started.set_exception(HerdError(f"{self.jid} could not log in"))

        self.xmpp.add_event_handler("session_start", session_start, disposable=True)
        self.xmpp.add_event_handler("failed_all_auth", refused, disposable=True)
        self.xmpp.connect(self.prosody.host, self.prosody.port)
        await asyncio.wait_for(started, 8.0)
        await self.xmpp.get_roster(timeout=5)
        self.xmpp.send_presence()

    async def _logout(self) -> None:
        self.xmpp.cancel_connection_attempt()
        if self.xmpp.is_connected():
            await self.xmpp.disconnect(wait=2.0)
        task = self.xmpp._run_out_filters  # slixmpp leaves it running (see runtime notes)
        if task is not None and not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    # --- from the test thread ----------------------------------------------------------------

    def login(self) -> None:
        self.chat.run(self._login())

    def logout(self) -> None:
        self.chat.run(self._logout())

    def say(self, text: str, to: str | None = None) -> None:
        """Send a chat message (to the bot's bare JID by default)."""
        target = JID(to or self.bot)
        self.chat.call(lambda: self.xmpp.make_message(mto=target, mbody=text, mtype="chat").send())

    def subscribe(self, to: str | None = None) -> None:
        target = to or self.bot
        self.chat.call(lambda: self.xmpp.send_presence_subscription(pto=target))

    def subscribed(self, to: str | None = None) -> bool:
        """Whether the subscription with `to` is mutual (the bot accepted and subscribed back)."""
        target = to or self.bot

        def mutual() -> bool:
            item = self.xmpp.client_roster[target]
            return bool(item["to"] and item["from"])

        return self.chat.call(mutual)

    def befriend(self, timeout: float = REPLY_SECONDS) -> None:
        """Subscribe to the bot and wait until it subscribed back (this client accepts)."""
        self.subscribe()
        wait_until(self.subscribed, timeout, f"{self.jid} and the bot to subscribe each other")

    def bot_resources(self) -> set[str]:
        """The bot's resources (herd servers) this person sees online."""
        return self.chat.call(lambda: set(self.xmpp.client_roster[self.bot].resources))

    def wait_bot_resources(self, expected: set[str], timeout: float = 20.0) -> None:
        wait_until(
            lambda: self.bot_resources() == expected,
            timeout,
            lambda: f"{self.jid} to see the bot as {expected}, sees {self.bot_resources()}",
        )

    def ping(self, to: str, timeout: float = 5.0) -> None:
        """An XEP-0199 ping answered: whatever `to` sent before its pong has arrived."""
        target = JID(to)
        self.chat.run(self.xmpp.plugin["xep_0199"].ping(target, timeout=timeout), timeout + 1)

    def messages(self) -> list[Received]:
        with self._lock:
            return list(self._messages)

    def presences(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._presences)

    def from_bot(self) -> list[Received]:
        return [m for m in self.messages() if JID(m.sender).bare == self.bot]

    def wait_message(
        self,
        matches: Callable[[Received], bool],
        what: str,
        timeout: float = NOTICE_SECONDS,
        after: int = 0,
    ) -> Received:
        """The first message from the bot (from index `after` on) that `matches`."""

        def found() -> Received | None:
            return next((m for m in self.from_bot()[after:] if matches(m)), None)

        return wait_until(
            found,
            timeout,
            lambda: f"{self.jid} to receive {what}; from the bot: {self.bodies()}",
        )

    def ask(self, text: str, expect: str, timeout: float = REPLY_SECONDS) -> Received:
        """Send a command to the bot; its answer is the first new message containing `expect`."""
        before = len(self.from_bot())
        self.say(text)
        return self.wait_message(
            lambda m: expect in m.body, f"the answer to {text!r}", timeout, before
        )

    def bodies(self) -> list[str]:
        return [m.body for m in self.from_bot()]

    def count(self, text: str) -> int:
        """How many messages from the bot contain `text`."""
        return sum(text in body for body in self.bodies())


# --- the herd, logged in as the bot ---------------------------------------------------------


class BotHerd(Herd):
    """A herd whose config has an `[xmpp]` section (plain, loopback) and no `[smtp]`."""

    def __init__(
        self,
        root: Path,
        prosody: LocalProsody,
        names: tuple[str, ...],
        links: tuple[tuple[str, str], ...],
        seed: Path | None,
    ) -> None:
        self.prosody = prosody
        root.mkdir(parents=True, exist_ok=True)
        (root / "renga.password").write_text(BOT_PASSWORD + "\n")
        super().__init__(root, names, links, seed=seed)
        self.tokens: dict[str, str] = {}

    def write_config(self, path: Path, links: Any) -> Path:
        text = config_text(self.ports, links, max_line=self.max_line)
        text += "\n".join(
            [
                "[xmpp]",
                f"jid = {json.dumps(self.prosody.jid(BOT_USER))}",
                'password_file = "renga.password"',
                f"host = {json.dumps(self.prosody.host)}",
                f"port = {self.prosody.port}",
                'tls = "none"',
                "",
            ]
        )
        path.write_text(text)
        return path

    def cli(self, *words: str, timeout: float = 30.0) -> str:
        """`herd <words> --config <this herd's config>`; its stdout (it must succeed)."""
        done = herd_cli(self.config_path, *words, timeout=timeout)
        assert done.returncode == 0, f"herd {' '.join(words)}: {done.stdout}{done.stderr}"
        return done.stdout

    def add_user(self, name: str, jid: str | None = None) -> str:
        """`herd user add NAME [--jid J]` (no email: XMPP is their only personal channel);
        waits until every running server knows the user. Returns the token."""
        words = ["user", "add", name] + (["--jid", jid] if jid else [])
        match = _TOKEN.search(self.cli(*words))
        assert match is not None and match[1] == name
        self.tokens[name] = match[2]
        for server in self.running():
            wait_until(partial(self.knows_user, server, name), 10.0, f"{server} to know {name}")
        return match[2]

    def knows_user(self, server: str, name: str) -> dict[str, Any] | None:
        """The user's `USER` document at `server` (by `AUTH` with their token), None if not yet."""
        with LineUser(self.ports[server]) as line:
            word, document = line.call(f"AUTH {name} {self.tokens[name]}")
        return document if word == "USER" else None

    def line(self, server: str, name: str) -> LineUser:
        """A line-protocol connection to `server`, authenticated as `name`."""
        line = LineUser(self.ports[server])
        word, document = line.call(f"AUTH {name} {self.tokens[name]}")
        if word != "USER":
            line.close()
            raise HerdError(f"AUTH {name} at {server}: {word} {document}")
        return line

    def pending(self, server: str) -> list[tuple[str, str, str, int]]:
        """`herd outbox list --server S`: (channel, recipient, state, tries) of each row."""
        rows = []
        for line in self.cli("outbox", "list", "--server", server).splitlines()[2:]:
            fields = line.split()
            if len(fields) >= 5:
                tries = int(fields[4].removesuffix("+dup"))
                rows.append((fields[1], fields[2], fields[3], tries))
        return rows


# --- one whole scene ---------------------------------------------------------------------------


class Scene:
    """Prosody, the herd (not started) and the people of one test."""

    def __init__(self, prosody: LocalProsody, herd: BotHerd, chat: ChatLoop) -> None:
        self.prosody = prosody
        self.herd = herd
        self.chat = chat
        self.people: list[ChatUser] = []

    @property
    def bot(self) -> str:
        return self.prosody.jid(BOT_USER)

    def account(self, name: str) -> None:
        self.prosody.register(name, PASSWORD)

    def person(self, name: str, login: bool = True) -> ChatUser:
        """A client for the account `name` (registered already), logged in unless told not."""
        person = ChatUser(self.chat, self.prosody, name)
        self.people.append(person)
        if login:
            person.login()
        return person

    def friend(self, name: str) -> ChatUser:
        """A Renga user's client, logged in and subscribed to the bot, seeing every server."""
        person = self.person(name)
        try:
            person.befriend()
            person.wait_bot_resources(set(self.herd.running()))
        except HerdError as error:
            raise HerdError(f"{error}\n{self.herd.diagnose()}") from None
        return person

    def close(self) -> None:
        try:
            for person in self.people:
                with suppress(HerdError):
                    person.logout()
        finally:
            self.chat.close()


@contextmanager
def bot_scene(
    root: Path,
    names: tuple[str, ...],
    links: tuple[tuple[str, str], ...],
    seed: Path | None,
    accounts: tuple[str, ...],
) -> Iterator[Scene]:
    """A Prosody with the bot's account and `accounts`, and a herd config using it; everything
    (clients, servers, Prosody) is torn down whatever happens."""
    chat: ChatLoop | None = None
    logins = {BOT_USER: BOT_PASSWORD, **dict.fromkeys(accounts, PASSWORD)}
    with running_prosody(root / "prosody", logins) as prosody:
        herd: BotHerd | None = None
        scene: Scene | None = None
        try:
            herd = BotHerd(root / "herd", prosody, names, links, seed)
            chat = ChatLoop()
            scene = Scene(prosody, herd, chat)
            yield scene
        finally:
            try:
                if scene is not None:
                    scene.close()
                elif chat is not None:
                    chat.close()
            finally:
                if herd is not None:
                    herd.close()
    assert chat is not None
    if chat.errors:  # only after a test that passed: a failure's own message comes first
        raise AssertionError(f"the people's chat loop reported errors: {chat.errors}")
