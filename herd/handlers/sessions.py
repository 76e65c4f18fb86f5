"""Client sessions: who a client connection has authenticated as (`ClientHandler`), `AUTH`
with its fair, off-reactor token checks (`AuthChecks`), and `UNSUBSCRIBE`."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Protocol as TypingProtocol
from typing import TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from herd.fairness import FairQueue
from herd.handlers.core import Core
from herd.offload import RunBlocking
from herd.protocol import LineConnection, LineTooLong
from herd.replies import respond
from herd.tokens import auth_delay, verify_token
from herd.wire.planning import UNSUBSCRIBED, Login, PlanningError, Unsubscribe
from herd.zones import PositionOf

_log = Logger()
T = TypeVar("T")


def _nothing() -> None:
    return


class ClientLines(TypingProtocol):
    """Where a client connection's lines go (the server's dispatch)."""

    def client_line(
        self, connection: LineConnection, session: ClientHandler, line: bytes
    ) -> Deferred[None] | None: ...


class ClientHandler:
    """Lines from an ordinary client connection, and who it has authenticated as."""

    def __init__(self, server: ClientLines) -> None:
        self.server = server
        self.user: str | None = None
        self.auth_failures = 0
        self.stop_push: Callable[[], None] = _nothing
        self.starting: object = None  # a SUBSCRIBE whose pushes start after its reply

    def line_received(self, connection: LineConnection, line: bytes) -> Deferred[None] | None:
        return self.server.client_line(connection, self, line)

    def unsubscribe(self) -> None:
        self.starting = None
        self.stop_push()
        self.stop_push = _nothing

    def connection_lost(self, connection: LineConnection, reason: Failure) -> None:
        self.unsubscribe()
        if reason.check(LineTooLong):
            _log.warn(
                "closed {client}: {why}", client=connection.label, why=reason.getErrorMessage()
            )


class AuthChecks:
    """Token checks (scrypt) on the CPU thread one at a time, taken round robin over client
    addresses: a flood of `AUTH` lines from one address (whose connections each have one
    check at a time) delays another address's login by at most one check per flooding
    address, and an address has at most `per_address` checks waiting."""

    def __init__(self, run_cpu: RunBlocking, per_address: int) -> None:
        self.run_cpu = run_cpu
        self._queue: FairQueue[tuple[Callable[[], bool], str | None, str, Deferred[bool]]] = (
            FairQueue(per_address)
        )
        self._running = False

    def check(
        self, address: str, wanted: Callable[[], bool], stored: str | None, token: str
    ) -> Deferred[bool] | None:
        """Whether `token` matches `stored`, once its turn comes (skipped if `wanted()` is
        false by then: the connection is gone); None if `address` has its share waiting."""
        result: Deferred[bool] = Deferred()
        if not self._queue.push(address, (wanted, stored, token, result)):
            return None
        self._next()
        return result

    def _next(self) -> None:
        while not self._running:
            item = self._queue.pop()
            if item is None:
                return
            wanted, stored, token, result = item
            if not wanted():
                continue
            self._running = True
            checking = self.run_cpu(partial(verify_token, stored, token))
            checking.addBoth(self._finished).addCallbacks(result.callback, result.errback)

    def _finished(self, outcome: T) -> T:
        self._running = False
        self._next()
        return outcome


def _address(connection: LineConnection) -> str:
    """The client's IP address (the unit of fairness for logins); the label for others."""
    peer = connection.transport.getPeer()  # type: ignore[union-attr]
    host = getattr(peer, "host", None)
    return host if isinstance(host, str) else connection.label


class Sessions:
    """`AUTH` and `UNSUBSCRIBE`: what changes who a connection is and what it listens to."""

    def __init__(self, core: Core, auth_checks: AuthChecks, position_of: PositionOf) -> None:
        self.core = core
        self.auth_checks = auth_checks
        self.position_of = position_of

    def login(
        self, connection: LineConnection, session: ClientHandler, command: Login, line: bytes
    ) -> Deferred[None]:
        """Check the token off the reactor (scrypt costs milliseconds), in a fair turn among
        client addresses (`AuthChecks`); a wrong one is answered after a delay that grows with
        each failure on this connection.  The connection's next line runs once the session is
        changed (or, for a refusal, once the delay is over), so lines after `AUTH` run as the
        user it logged in, and a connection has one check at a time."""
        core = self.core
        user = core.planning.user(command.user)
        stored = None if user is None else user.token_hash
        slot = connection.reserve()
        done: Deferred[None] = Deferred()

        def checked(valid: bool) -> None:
            if valid:
                if session.user != command.user:
                    session.unsubscribe()
                session.user = command.user
                session.auth_failures = 0
                reply = respond(core.planning, command.user, command, [], self.position_of)
                core.reply_later(connection, slot, reply)
                done.callback(None)
                return
            refuse("unknown user or wrong token")

        def refuse(why: str) -> None:
            session.auth_failures += 1

            def answer() -> None:
                core.reply_later(connection, slot, PlanningError("auth-failed", why).line())
                done.callback(None)

            core.clock.callLater(auth_delay(session.auth_failures), answer)

        def failed(failure: Failure) -> None:
            _log.failure("token check failed", failure)
            connection.fill(slot, PlanningError("auth-failed", "try again later").line())
            done.callback(None)

        check = self.auth_checks.check(
            _address(connection), lambda: not connection.disconnected, stored, command.token
        )
        if check is None:
            refuse("too many logins waiting from your address; try again later")
        else:
            check.addCallback(checked).addErrback(failed)
        return done

    def unsubscribe(
        self, connection: LineConnection, session: ClientHandler, command: Unsubscribe, line: bytes
    ) -> None:
        """Served with or without a line push: a session that never subscribed is told so."""
        session.unsubscribe()
        self.core.reply(connection, UNSUBSCRIBED)
