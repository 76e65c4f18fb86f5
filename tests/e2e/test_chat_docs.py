"""Every example session of docs/chat.md, run against a real herd, Prosody and bot as alice
through a real slixmpp client: each `> ` line is sent (with a thread of its own, which the bot's
reply carries back), and the reply must match the `< ` lines after it, `…` standing for any
text.  The sessions run in the page's order on one herd (alice, bob and carol are users with
their JIDs, like `herd up`'s demo users).

The sessions are read and matched by `tests/support/doc_sessions.py`, as protocol.md's are."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from slixmpp import JID
from slixmpp.stanza import Message

from tests.support.doc_sessions import Expect, Send, Session, match, sessions
from tests.support.herd import REPO
from tests.support.polling import wait_until

from .bot_harness import REPLY_SECONDS, ChatUser, Scene, bot_scene

pytestmark = pytest.mark.timeout(300)

DOC = REPO / "docs" / "chat.md"
PEOPLE = ("alice", "bob", "carol")


# --- the docs' sessions ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exchange:
    """One line the user sends and the reply the doc shows for it (its `< ` lines)."""

    said: str
    reply: bytes


def exchanges(session: Session) -> list[Exchange]:
    """A session's `> ` lines, each with the `< ` lines after it."""
    found: list[Exchange] = []
    for step in session.steps:
        if isinstance(step, Send):
            found.append(Exchange(step.data.decode().rstrip("\n"), b""))
        elif isinstance(step, Expect):
            assert found, f"{session.where}: a reply before anything was said"
            found[-1] = Exchange(found[-1].said, found[-1].reply + step.line)
        else:
            raise AssertionError(f"{session.where}: a chat session has only > and < lines")
    return found


# --- running them --------------------------------------------------------------------------------


class Replies:
    """alice's messages from the bot, by the thread they answer."""

    def __init__(self, bot: str) -> None:
        self.bot = bot
        self._lock = threading.Lock()
        self._by_thread: dict[str, str] = {}

    def record(self, msg: Message) -> None:
        if msg["body"] and msg["thread"] and msg["from"].bare == self.bot:
            with self._lock:
                self._by_thread[msg["thread"]] = msg["body"]

    def answer(self, thread: str) -> str | None:
        with self._lock:
            return self._by_thread.get(thread)


@dataclass
class Talk:
    scene: Scene
    alice: ChatUser
    replies: Replies

    def send(self, text: str) -> str:
        """Send one line as alice in a thread of its own; the bot's reply in that thread."""
        thread = f"doc-{secrets.token_hex(6)}"
        xmpp, bot = self.alice.xmpp, JID(self.scene.bot)

        def send() -> None:
            message = xmpp.make_message(mto=bot, mbody=text, mtype="chat")
            message["thread"] = thread
            message.send()

        self.scene.chat.call(send)
        return wait_until(
            lambda: self.replies.answer(thread),
            REPLY_SECONDS,
            f"the bot's reply to {text!r}",
        )


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory, places_seed: Path) -> Iterator[Talk]:
    root = tmp_path_factory.mktemp("chat-docs")
    with bot_scene(root, ("Bailey", "Bona"), (("Bailey", "Bona"),), places_seed, PEOPLE) as scene:
        scene.herd.up()
        for name in PEOPLE:
            scene.herd.add_user(name, jid=scene.prosody.jid(name))
        alice = scene.friend("alice")
        replies = Replies(scene.bot)
        scene.chat.call(lambda: alice.xmpp.add_event_handler("message", replies.record))
        yield Talk(scene, alice, replies)


SESSIONS = sessions(DOC)


def test_the_page_has_sessions() -> None:
    assert len(SESSIONS) >= 6, SESSIONS


@pytest.mark.parametrize("session", SESSIONS, ids=[f"line{s.line}" for s in SESSIONS])
def test_a_session_of_the_chat_docs(talk: Talk, session: Session) -> None:
    for exchange in exchanges(session):
        reply = talk.send(exchange.said)
        mismatch = match(exchange.reply, reply.encode() + b"\n")
        assert mismatch is None, f"{session.where}: > {exchange.said}\n{mismatch}"
