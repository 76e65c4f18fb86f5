"""How an extension adds line commands to a server: it names the wire classes it serves and
the handler of each (`Extension.handlers`), given what it may use of the server (`Host`).  The
notifier's three are here: line pushes (SUBSCRIBE), JID links (LINK) and opt-out (OPTOUT); a
command no extension registered is answered `? <line>`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from herd.api import LinePush
from herd.clock import Clock
from herd.handlers.sessions import ClientHandler
from herd.ops import UserField
from herd.protocol import LineConnection
from herd.state import PlanningState
from herd.wire.client import error_reply
from herd.wire.planning import (
    Link,
    OptOut,
    PlanningError,
    SetUser,
    Subscribe,
    linkcode_reply,
    optout_reply,
    subscribed_reply,
)

CommandHandler = Callable[[LineConnection, ClientHandler, Any, bytes], Deferred[None] | None]
"""Serves one parsed command: (connection, session, command, the line as received)."""


class Host(Protocol):
    """What an extension may use of the server."""

    planning: PlanningState

    clock: Clock

    def reply(self, connection: LineConnection, data: bytes) -> None: ...

    def after_commit(self, callback: Callable[[], None]) -> None: ...

    def run_as(self, user: str, line: bytes) -> Deferred[bytes]: ...


class Extension(Protocol):
    """Something that serves line commands of its own on the client port."""

    def handlers(self, host: Host) -> Iterable[tuple[type, CommandHandler]]:
        """Each wire command class it serves, with its handler."""
        ...


_NOT_AUTHENTICATED = PlanningError("not-authenticated", "AUTH first").line()


class LinePushes:
    """`SUBSCRIBE [<checkpoint>]`, served by a `LinePush`."""

    def __init__(self, push: LinePush) -> None:
        self.push = push

    def handlers(self, host: Host) -> Iterable[tuple[type, CommandHandler]]:
        push = self.push

        def subscribe(
            connection: LineConnection, session: ClientHandler, command: Subscribe, line: bytes
        ) -> None:
            if session.user is None:
                host.reply(connection, _NOT_AUTHENTICATED)
                return
            session.unsubscribe()
            user = session.user
            host.reply(connection, subscribed_reply(user, push.latest(user)))
            starting = session.starting = object()

            def start() -> None:
                # After the reply is out (it may wait for a commit), so no PUSH line overtakes
                # it; unless a later line (UNSUBSCRIBE, AUTH as another user, HERD-HELLO)
                # ended it.
                if not connection.disconnected and session.starting is starting:
                    session.starting = None
                    session.stop_push = push.subscribe(user, command.since, connection.push)

            host.after_commit(start)

        return [(Subscribe, subscribe)]


class JidLinks:
    """`LINK <jid>`: `codes(user, jid, now_ns)` gives the one-time code and its expiry."""

    def __init__(self, codes: Callable[[str, str, int], tuple[str, int]]) -> None:
        self.codes = codes

    def handlers(self, host: Host) -> Iterable[tuple[type, CommandHandler]]:
        codes = self.codes

        def link(
            connection: LineConnection, session: ClientHandler, command: Link, line: bytes
        ) -> None:
            if session.user is None:
                host.reply(connection, _NOT_AUTHENTICATED)
                return
            code, expires = codes(session.user, command.jid.lower(), host.clock.now_ns())
            host.reply(connection, linkcode_reply(code, expires))

        return [(Link, link)]


class OptOuts:
    """`OPTOUT <user> <token>`: `verify(user, token)` checks the mail's unsubscribe token; the
    user's channels then lose `email`, as a `USER SET channels` run as them."""

    def __init__(self, verify: Callable[[str, str], bool]) -> None:
        self.verify = verify

    def handlers(self, host: Host) -> Iterable[tuple[type, CommandHandler]]:
        verify = self.verify

        def opt_out(
            connection: LineConnection, session: ClientHandler, command: OptOut, line: bytes
        ) -> None:
            user = host.planning.user(command.user)
            if user is None or not verify(command.user, command.token):
                host.reply(connection, error_reply(line))
                return
            kept = sorted(set(user.channels) - {"email"}) or ["none"]
            unset_email = SetUser(UserField.CHANNELS, ",".join(kept)).to_line().rstrip(b"\n")
            reply = host.run_as(command.user, unset_email)
            slot = connection.reserve()
            reply.addCallback(
                lambda answer: connection.fill(
                    slot, optout_reply(command.user) if answer.startswith(b"USER") else answer
                )
            )

        return [(OptOut, opt_out)]
