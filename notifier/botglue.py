"""The Jabber bot's glue to one herd server: what the XMPP session's callbacks do.

The bot speaks the line protocol for the people it talks to (`run_as`): a linked user's chat is
interpreted (`notifier.chat`) into the same planning lines a client would send, so every rule,
permission and replication path is the line protocol's.  Presence is remembered here for the
notifier's routing; positions (`here …`, XEP-0080) become IAMATs of the user's XMPP device.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed

from herd.api import Clock, Position, StateView, User, timezone_of
from notifier.chat.commands import interpret
from notifier.chat.linking import interpret_stranger, user_of_jid
from notifier.chat.phrases import iso6709
from notifier.chat.replies import render_reply
from notifier.chat.steps import Conversation, LinkJid, Reply, RunLine, SetPosition
from notifier.render import Templates

RunAs = Callable[[str, bytes], Deferred[bytes]]
MAX_CONVERSATIONS = 10_000


class BotGlue:
    """Callbacks for `XmppChannel`, bound to one server's state."""

    def __init__(
        self,
        state: StateView,
        run_as: RunAs,
        position_of: Callable[[str], Position | None],
        secret: bytes,
        clock: Clock,
        templates: Templates,
    ) -> None:
        self._state = state
        self._templates = templates
        self._run_as = run_as
        self._position_of = position_of
        self._secret = secret
        self._clock = clock
        self._conversations: OrderedDict[str, Conversation] = OrderedDict()
        self._presence: dict[str, str] = {}

    # --- who may talk ------------------------------------------------------------------------

    def is_known(self, jid: str) -> bool:
        return user_of_jid(self._state, jid) is not None

    def presence(self, jid: str) -> str | None:
        """The last presence a user's JID showed the bot (for the notifier's routing)."""
        return self._presence.get(jid.casefold())

    def on_presence(self, jid: str, state: str) -> None:
        self._presence[jid.casefold()] = state

    # --- conversation ------------------------------------------------------------------------

    def on_command(self, jid: str, text: str) -> Deferred[str]:
        user = user_of_jid(self._state, jid)
        if user is None:
            return succeed("")
        zone = self._zone(user)
        conversation = self._conversations.get(user.id, Conversation())
        step = interpret(
            self._templates, text, user, self._state, conversation, zone, self._clock.now_ns()
        )
        if isinstance(step, Reply):
            return succeed(step.text)
        if isinstance(step, SetPosition):
            return self._here(user, jid, step.position).addCallback(lambda _: step.reply)
        return self._run(user, step, conversation, zone)

    def on_stranger(self, jid: str, text: str) -> Deferred[str]:
        step = interpret_stranger(
            self._templates, text, jid, self._secret, self._clock.now_ns(), self._state
        )
        if isinstance(step, Reply):
            return succeed(step.text)
        assert isinstance(step, LinkJid)
        user = self._state.user(step.user)
        if user is None:
            return succeed("")
        run = step.run
        zone = self._zone(user)
        return self._run_as(step.user, run.line).addCallback(
            lambda reply: render_reply(
                self._templates,
                run,
                reply,
                self._state,
                self._state.user(step.user) or user,
                zone,
                self._clock.now_ns(),
            )
        )

    def on_location(self, jid: str, latitude: float, longitude: float, when: float) -> None:
        """XEP-0080: the user's client published where it is."""
        user = user_of_jid(self._state, jid)
        if user is not None:
            self._here(user, jid, iso6709(latitude, longitude), when)

    def _run(
        self, user: User, step: RunLine, conversation: Conversation, zone: str
    ) -> Deferred[str]:
        def answered(reply: bytes) -> str:
            self._remember(user.id, conversation.remember(reply))
            current = self._state.user(user.id) or user
            return render_reply(
                self._templates, step, reply, self._state, current, zone, self._clock.now_ns()
            )

        return self._run_as(user.id, step.line).addCallback(answered)

    def _here(
        self, user: User, jid: str, position: str, when: float | None = None
    ) -> Deferred[bytes]:
        """An IAMAT for the user's XMPP device (`xmpp:<jid>`), registered as theirs first."""
        device = f"xmpp:{jid.casefold()}".encode()
        seconds = self._clock.seconds() if when is None else when
        report = b"IAMAT %s %s %.6f" % (device, position.encode(), seconds)
        registered = self._run_as(user.id, b"DEVICE ADD " + device)
        return registered.addCallback(lambda _: self._run_as(user.id, report))

    def _zone(self, user: User) -> str:
        return timezone_of(user.tz, self._position_of(user.id))

    def _remember(self, user: str, conversation: Conversation) -> None:
        self._conversations[user] = conversation
        self._conversations.move_to_end(user)
        while len(self._conversations) > MAX_CONVERSATIONS:
            self._conversations.popitem(last=False)
