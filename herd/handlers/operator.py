"""Operator commands (`herd user`): USER-ADD and USER-TOKEN on a connection that proved it
knows the herd secret as the operator (the handshake happens before, on the client port)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.python.failure import Failure

from herd.handlers.core import Core
from herd.ops import Op
from herd.protocol import LineConnection
from herd.rules import execute_operator
from herd.wire.client import error_reply
from herd.wire.grammar import WireError
from herd.wire.operator import OperatorLineError, parse_operator_line
from herd.wire.planning import PlanningError, user_ok


class OperatorLines(Protocol):
    """Where an operator connection's lines go (the server)."""

    def operator_line(self, connection: LineConnection, line: bytes) -> None: ...


class OperatorHandler:
    """A connection that proved it knows the herd secret as the operator (`herd user`)."""

    def __init__(self, server: OperatorLines) -> None:
        self.server = server

    def line_received(self, connection: LineConnection, line: bytes) -> None:
        self.server.operator_line(connection, line)

    def connection_lost(self, connection: LineConnection, reason: Failure) -> None:
        return


class OperatorCommands:
    """What the operator's lines do: users made and tokens reset, as ops like any other."""

    def __init__(
        self, core: Core, accept_op: Callable[[Op], None], new_op_id: Callable[[], str]
    ) -> None:
        self.core = core
        self.accept_op = accept_op
        self.new_op_id = new_op_id

    def line(self, connection: LineConnection, line: bytes) -> None:
        """`USER-ADD <user> <token hash> [email=E] [jid=J]` / `USER-TOKEN <user> <token hash>`:
        answered `OK <user>` or `ERR <code>: <message>` (a bad field included: then nothing
        changes); any other line `? <line>`."""
        core = self.core
        try:
            command = parse_operator_line(line)
        except OperatorLineError as error:
            core.reply(connection, error.line())
            return
        except WireError:
            core.reply(connection, error_reply(line))
            return
        if command is None:
            return
        result = execute_operator(core.planning, command, core.clock.now_ns(), self.new_op_id)
        if isinstance(result, PlanningError):
            core.reply(connection, result.line())
            return
        for op in result:
            self.accept_op(op)
        core.reply(connection, user_ok(command.user))
