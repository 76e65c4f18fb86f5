"""`herd chat USER`: a terminal chat with the Jabber bot, as a demo user of the running `herd up`.

It finds the Jabber server in the derived config that `herd up` writes while it runs
(`<config dir>/.<stem>.up.toml`), or else in the given config's own `[xmpp]` table, logs in as
`USER@<the bot's domain>` (password `USER-demo` unless given) with slixmpp, sends presence and
accepts the bot's request to see it (so notices come over Jabber rather than by mail).

What it prints (stdout): each message as `<who>: <first line>`, its further lines indented to
line up under the first; `<who>` is the bot's local part (`renga`) for the bot, the bare JID for
anyone else.  Notes about the session (connected, a subscription accepted, no reply) go to
stderr, so stdout holds only the conversation.

- On a terminal: a prompt (history, line editing; Ctrl-D or Ctrl-C leaves) while messages print
  as they arrive (`patch_stdout`).
- From a pipe: each stdin line is sent in order, each after the bot answered the one before
  (its reply carries the thread the line was sent with; at most `REPLY_SECONDS` each), every
  message printed; at EOF it waits until the bot has been quiet for `QUIET_SECONDS` (at most
  `LINGER_SECONDS`), then exits: 0, or 1 if a line got no reply or was too long to send.

Lines are made sendable first: invalid UTF-8 replaced, characters XML cannot carry dropped; a
line over `MAX_MESSAGE_BYTES` is not sent.

Exit 1 with one line on stderr when there is no server to talk to, it cannot be reached or the
login is refused.  The pure parts (where the server is, the JID, the output format, when to stop
waiting) come first; the slixmpp session and the two modes after them.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from slixmpp import JID, ClientXMPP, InvalidJID
from slixmpp.stanza import Message, Presence

from herd.config import ConfigError, HerdConfig, XmppConfig, load_config

LOGIN_SECONDS = 10.0  # connect and log in
REPLY_SECONDS = 15.0  # pipe mode: the bot's answer to one line
QUIET_SECONDS = 2.0  # pipe mode, after EOF: the bot said nothing for this long
LINGER_SECONDS = 10.0  # pipe mode, after EOF: at most this long in all
CLOSE_SECONDS = 2.0
MAX_MESSAGE_BYTES = 16 * 1024  # the bot reads 2,500 characters at most and says so; Prosody
# closes a stream on a stanza over 256 KiB: longer lines are not sent at all
# What XML 1.0 forbids even escaped (C0 controls but tab, LF, CR; lone surrogates; U+FFFE/U+FFFF):
# one in a message would make the server close the stream.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

# --- pure: where, who, what is printed, when to stop -----------------------------------------


@dataclass(frozen=True, slots=True)
class ChatServer:
    """The Jabber server to log in to, and the bot to chat with."""

    host: str
    port: int
    tls: str  # "starttls", "direct" or "none"
    bot: str  # the bot's bare JID
    source: Path  # the config it was read from

    @property
    def domain(self) -> str:
        return self.bot.partition("@")[2]


class ChatSetupError(Exception):
    """Nothing to chat with, or a USER that makes no JID: the one line to print."""


def derived_config_path(config: Path) -> Path:
    """The config `herd up` writes beside `config` while it runs."""
    return config.with_name(f".{config.stem}.up.toml")


def chat_server(xmpp: XmppConfig, source: Path) -> ChatServer:
    """The server of a config's `[xmpp]` table (no host: the bot's domain)."""
    domain = xmpp.jid.partition("@")[2]
    return ChatServer(xmpp.host or domain, xmpp.port, xmpp.tls, xmpp.jid, source)


def find_server(config: HerdConfig, derived: HerdConfig | None) -> ChatServer:
    """`herd up`'s derived config first (its local Prosody), else the config's own `[xmpp]`."""
    for found in (derived, config):
        if found is not None and found.xmpp is not None:
            return chat_server(found.xmpp, found.path)
    raise ChatSetupError(
        f"herd chat: no Jabber server: {config.path} has no [xmpp] and "
        f"{derived_config_path(config.path)} does not exist. Is `herd up` running?"
    )


def user_jid(user: str, domain: str) -> str:
    """`alice` → `alice@<domain>`; a bare JID is taken as it is."""
    text = user if "@" in user else f"{user}@{domain}"
    try:
        jid = JID(text)
    except InvalidJID as error:
        raise ChatSetupError(f"herd chat: {user!r} makes no Jabber address ({error})") from None
    if not jid.user or jid.resource:
        raise ChatSetupError(f"herd chat: {user!r} makes no Jabber address")
    return jid.bare


def sendable(line: bytes | str) -> str:
    """A typed or piped line as a message: invalid UTF-8 replaced, characters XML cannot carry
    dropped, outer whitespace trimmed (the bot reads the words; it refuses what it cannot)."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    return _NOT_XML.sub("", text).strip()


def demo_password(jid: str) -> str:
    """The demo accounts' password: `alice-demo` for alice."""
    return f"{jid.partition('@')[0]}-demo"


def shown(who: str, body: str) -> str:
    """A message as printed: `who: first line`, further lines indented under the first."""
    lines = body.rstrip().splitlines() or [""]
    indent = "\n" + " " * (len(who) + 2)
    return f"{who}: " + indent.join(line.rstrip() for line in lines)


def sender_label(sender: str, bot: str) -> str:
    """The bot by its local part, anyone else by bare JID."""
    return bot.partition("@")[0] if sender == bot else sender


def done_lingering(now: float, eof_at: float, last_heard: float) -> bool:
    """After EOF: stop once the bot has been quiet long enough, or waiting took too long."""
    return now - max(eof_at, last_heard) >= QUIET_SECONDS or now - eof_at >= LINGER_SECONDS


# --- the slixmpp session ---------------------------------------------------------------------


class ChatSession:
    """One logged-in person: prints what arrives, sends what they type."""

    def __init__(
        self,
        server: ChatServer,
        jid: str,
        password: str,
        loop: asyncio.AbstractEventLoop,
        out: Callable[[str], None],
        note: Callable[[str], None],
    ) -> None:
        self.server = server
        self.jid = jid
        self._out = out
        self._note = note
        self._loop = loop
        self.last_heard = time.monotonic()
        self._answers: dict[str, asyncio.Event] = {}
        plain = server.tls == "none"
        self.xmpp = ClientXMPP(
            f"{jid}/herd-chat-{secrets.token_hex(3)}",
            password,
            loop=loop,
            plugin_config={
                "feature_mechanisms": {"unencrypted_plain": plain, "unencrypted_scram": plain},
                "xep_0184": {"auto_ack": True, "auto_request": False},
            },
        )
        xmpp = self.xmpp
        xmpp.enable_starttls = server.tls == "starttls"
        xmpp.enable_direct_tls = server.tls == "direct"
        xmpp.enable_plaintext = plain
        xmpp.auto_authorize = None  # the bot's request is accepted below; anyone else's waits
        xmpp.auto_subscribe = False
        for plugin in ("xep_0030", "xep_0184", "xep_0199", "xep_0203"):
            xmpp.register_plugin(plugin)
        xmpp.add_event_handler("message", self._message)
        xmpp.add_event_handler("presence_subscribe", self._subscribe_request)

    async def open(self) -> None:
        """Connect, log in, load the roster, send presence; `ChatSetupError` if that fails."""
        outcome: asyncio.Future[str | None] = self._loop.create_future()

        def settle(problem: str | None) -> None:
            if not outcome.done():
                outcome.set_result(problem)

        where = f"{self.server.host}:{self.server.port}"
        handlers: list[tuple[str, Callable[[object], None]]] = [
            ("session_start", lambda _: settle(None)),
            ("failed_all_auth", lambda _: settle(f"{where} refused the login of {self.jid}")),
            ("connection_failed", lambda error: settle(f"cannot reach {where}: {error}")),
            ("disconnected", lambda _: settle(f"{where} closed the connection")),
        ]
        for event, handler in handlers:
            self.xmpp.add_event_handler(event, handler)
        self.xmpp.connect(self.server.host, self.server.port)
        try:
            problem = await asyncio.wait_for(outcome, LOGIN_SECONDS)
        except TimeoutError:
            problem = f"no session with {where} within {LOGIN_SECONDS:g} s"
        finally:
            for event, handler in handlers:
                self.xmpp.del_event_handler(event, handler)
        if problem is not None:
            self.xmpp.cancel_connection_attempt()
            raise ChatSetupError(f"herd chat: {problem}. Is `herd up` running?")
        with suppress(Exception):  # no roster: still chat; the bot's request still arrives
            await self.xmpp.get_roster(timeout=LOGIN_SECONDS)
        self.xmpp.send_presence()
        self._note(f"herd chat: {self.jid} on {where}; chatting with {self.server.bot}")

    def say(self, text: str, thread: str | None = None) -> asyncio.Event:
        """Send `text` to the bot; the event is set when a message in the same thread comes."""
        answered = asyncio.Event()
        message = self.xmpp.make_message(mto=JID(self.server.bot), mbody=text, mtype="chat")
        if thread is not None:
            message["thread"] = thread
            self._answers[thread] = answered
        message.send()
        return answered

    async def close(self) -> None:
        self.xmpp.cancel_connection_attempt()
        if self.xmpp.is_connected():
            await self.xmpp.disconnect(wait=CLOSE_SECONDS)
        task = self.xmpp._run_out_filters  # slixmpp leaves its send queue task running
        if task is not None and not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    def _message(self, msg: Message) -> None:
        body = msg["body"]
        if msg["type"] == "error":
            self._note(f"herd chat: {msg['from']} bounced a message: {msg['error']['condition']}")
            return
        if not body:
            return  # chat states, receipts
        sender = msg["from"].bare
        if sender == self.server.bot:
            self.last_heard = time.monotonic()
            answered = self._answers.pop(msg["thread"], None) if msg["thread"] else None
            if answered is not None:
                answered.set()
        self._out(shown(sender_label(sender, self.server.bot), body))

    def _subscribe_request(self, presence: Presence) -> None:
        """The bot asks to see when we are online: yes, and we follow it back."""
        sender = presence["from"].bare
        if sender != self.server.bot:
            self._note(f"herd chat: {sender} asks to see when you are online (not answered)")
            return
        item = self.xmpp.client_roster[sender]
        item.authorize()
        if not item["to"] and not item["pending_out"]:
            item.subscribe()
        self._note(f"herd chat: {sender} asked to see when you are online: accepted")


# --- the two modes -------------------------------------------------------------------------


async def _pipe(session: ChatSession, lines: BinaryIO) -> int:
    """Each line in turn, each after the previous one's reply; then wait for a quiet bot."""
    loop = asyncio.get_running_loop()
    missed = 0
    while True:
        line = await loop.run_in_executor(None, lines.readline)
        if not line:
            break
        text = sendable(line)
        if not text:
            continue
        if len(text.encode()) > MAX_MESSAGE_BYTES:
            missed += 1
            print(f"herd chat: a line over {MAX_MESSAGE_BYTES} bytes, not sent", file=sys.stderr)
            continue
        answered = session.say(text, thread=f"herd-chat-{secrets.token_hex(6)}")
        try:
            await asyncio.wait_for(answered.wait(), REPLY_SECONDS)
        except TimeoutError:
            missed += 1
            print(f"herd chat: no reply to {text[:60]!r} in {REPLY_SECONDS:g} s", file=sys.stderr)
    eof_at = time.monotonic()
    while not done_lingering(time.monotonic(), eof_at, session.last_heard):
        await asyncio.sleep(0.1)
    return 1 if missed else 0


async def _terminal(session: ChatSession, user: str) -> int:
    """A prompt with history; messages print above it as they arrive."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.patch_stdout import patch_stdout

    prompt: PromptSession[str] = PromptSession()
    print("herd chat: type to the bot (help lists its commands); Ctrl-D leaves", file=sys.stderr)
    with patch_stdout(raw=True):
        while True:
            try:
                text = sendable(await prompt.prompt_async(f"{user}> "))
            except (EOFError, KeyboardInterrupt):
                return 0
            if len(text.encode()) > MAX_MESSAGE_BYTES:
                print(f"herd chat: over {MAX_MESSAGE_BYTES} bytes, not sent", file=sys.stderr)
            elif text:
                session.say(text)


async def _run(server: ChatServer, jid: str, password: str, interactive: bool) -> int:
    loop = asyncio.get_running_loop()

    def out(text: str) -> None:
        print(text, flush=True)

    def note(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    session = ChatSession(server, jid, password, loop, out, note)
    try:
        await session.open()
        if interactive:
            return await _terminal(session, jid.partition("@")[0])
        return await _pipe(session, sys.stdin.buffer)
    finally:
        await session.close()


def chat(config: HerdConfig, user: str, password: str | None) -> int:
    """`herd chat USER`: see the module docstring."""
    derived_path = derived_config_path(config.path)
    try:
        derived = load_config(derived_path, os.environ) if derived_path.exists() else None
        server = find_server(config, derived)
        jid = user_jid(user, server.domain)
    except ConfigError as error:
        print(f"herd chat: {derived_path}: {error}. Is `herd up` running?", file=sys.stderr)
        return 1
    except ChatSetupError as error:
        print(error, file=sys.stderr)
        return 1
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    try:
        return asyncio.run(_run(server, jid, password or demo_password(jid), interactive))
    except ChatSetupError as error:
        print(error, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
