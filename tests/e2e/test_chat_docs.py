"""Every example session of docs/chat.md, run against a real herd, Prosody and bot as alice
through a real slixmpp client: each `> ` line is sent (with a thread of its own, which the bot's
reply carries back), and the reply must match the `< ` lines after it, `…` standing for any
text.  The sessions run in the page's order on one herd (alice, bob and carol are users with
their JIDs, like `herd up`'s demo users).

The parser and matcher here are deliberately small (fenced blocks, `> `/`< ` lines, `…`); the
shared one for all docs is `tests/support/doc_sessions.py`."""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from slixmpp import JID
from slixmpp.stanza import Message

from tests.support.herd import REPO
from tests.support.polling import wait_until

from .bot_harness import REPLY_SECONDS, ChatUser, Scene, bot_scene

pytestmark = pytest.mark.timeout(300)

DOC = REPO / "docs" / "chat.md"
PEOPLE = ("alice", "bob", "carol")
WILDCARD = "…"


# --- the docs' sessions (pure) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exchange:
    """One line the user sends and the reply lines the doc shows for it."""

    said: str
    reply: tuple[str, ...]


def sessions(markdown: str) -> list[tuple[int, list[Exchange]]]:
    """The fenced blocks made of `> `/`< ` lines, with the line each starts on."""
    found: list[tuple[int, list[Exchange]]] = []
    block: list[str] | None = None
    start = 0
    for number, line in enumerate(markdown.splitlines(), start=1):
        if line.startswith("```"):
            if block is None:
                block, start = [], number
                continue
            if block and all(text.startswith(("> ", "< ")) for text in block):
                found.append((start, _exchanges(block)))
            block = None
        elif block is not None:
            block.append(line)
    return found


def _exchanges(lines: list[str]) -> list[Exchange]:
    exchanges: list[Exchange] = []
    for line in lines:
        if line.startswith("> "):
            exchanges.append(Exchange(line[2:], ()))
        else:
            assert exchanges, f"a reply before anything was said: {line!r}"
            last = exchanges[-1]
            exchanges[-1] = Exchange(last.said, (*last.reply, line[2:]))
    return exchanges


def matches(expected: tuple[str, ...], text: str) -> bool:
    """The reply's text against the doc's lines; `…` is any text, across lines too."""
    pieces = "\n".join(expected).split(WILDCARD)
    return re.fullmatch(".*".join(map(re.escape, pieces)), text, re.DOTALL) is not None


def test_the_parser_and_matcher() -> None:
    text = "x\n```\n> a\n< b …\n< c\n> d\n< e\n```\n```console\n$ herd up\n```\n```\n```\n"
    assert sessions(text) == [(2, [Exchange("a", ("b …", "c")), Exchange("d", ("e",))])]
    assert matches(("b …", "c"), "b 12\nc")
    assert matches(("b …", "c"), "b \nc")
    assert matches(("1. …", "end"), "1. x\n2. y\nend")
    assert not matches(("b …", "c"), "b 12\nc!")
    assert not matches(("b",), "b\nmore")
    assert matches(("(…) [x]",), "(id.1) [x]")  # regex characters are literal


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


SESSIONS = sessions(DOC.read_text(encoding="utf-8"))


def test_the_page_has_sessions() -> None:
    assert len(SESSIONS) >= 6, SESSIONS


@pytest.mark.parametrize(
    "exchanges", [exchanges for _, exchanges in SESSIONS], ids=[f"line{n}" for n, _ in SESSIONS]
)
def test_a_session_of_the_chat_docs(talk: Talk, exchanges: list[Exchange]) -> None:
    for exchange in exchanges:
        reply = talk.send(exchange.said)
        assert matches(exchange.reply, reply), (
            f"> {exchange.said}\nexpected:\n"
            + "\n".join(f"< {line}" for line in exchange.reply)
            + "\ngot:\n"
            + "\n".join(f"< {line}" for line in reply.splitlines())
        )
