"""What one chat message comes to, and what the bot remembers between messages: the steps the
wiring carries out (`RunLine`, `Reply`, `SetPosition`, `LinkJid`) and a user's `Conversation`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

from herd.api import client_bytes, client_text

__all__ = [
    "BotStep",
    "Conversation",
    "LinkJid",
    "Reply",
    "RunLine",
    "Say",
    "SetPosition",
    "StrangerStep",
]


class Say(StrEnum):
    """How the reply to a line is told: the template `templates/xmpp/reply/<value>.txt.j2`."""

    PLANNED = "planned"
    INVITED = "invited"
    UNINVITED = "uninvited"
    PROPOSED = "proposed"
    VOTED = "voted"
    COMMENTED = "commented"
    DECIDED = "decided"
    REOPENED = "reopened"
    CANCELLED = "cancelled"
    STATUS = "status"
    WHERE = "where"
    EVENTS = "events"
    SETTINGS = "settings"
    LINKED = "linked"


@dataclass(frozen=True, slots=True)
class RunLine:
    """Run `line` (one planning line, no terminator) as the user, then answer with
    `render_reply`.  `event` is the event it is about, if known before the reply; `subject`
    what the reply should point at: the users invited, `("time", <posix>)` or `("place",
    <name>)` proposed, `(<option id>,)` voted on, `(<field>,)` set; `note` is said last."""

    line: bytes
    say: Say
    event: str | None = None
    subject: tuple[str, ...] = ()
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer with `text`; nothing to run."""

    text: str


@dataclass(frozen=True, slots=True)
class SetPosition:
    """The user says where they are: record `position` (ISO 6709, as IAMAT takes it) for
    their XMPP device, then answer with `reply`."""

    lat: float
    lon: float
    position: str
    reply: str


BotStep = RunLine | Reply | SetPosition


@dataclass(frozen=True, slots=True)
class LinkJid:
    """A stranger proved that `jid` is theirs and `user`'s: run `run` as `user` (it sets the
    user's JID) and answer with `render_reply`."""

    user: str
    jid: str

    @property
    def run(self) -> RunLine:
        return RunLine(b"USER SET jid " + client_bytes(self.jid), Say.LINKED)


StrangerStep = LinkJid | Reply


@dataclass(frozen=True, slots=True)
class Conversation:
    """What the bot remembers of one user between messages: their current event."""

    event: str | None = None

    def remember(self, reply: bytes) -> Conversation:
        """After a line's reply: an `EVENT` or `SUGGEST` makes its event the current one."""
        word, _, body = reply.partition(b" ")
        if word not in (b"EVENT", b"SUGGEST"):
            return self
        document = json.loads(client_text(body))
        event = document.get("id", document.get("event"))
        return Conversation(event) if isinstance(event, str) else self
