"""The operator's side of the peer handshake: `herd user` talks to a running server as
`@operator`, proving it knows the herd secret, then sends one command (blocking code: it runs in
the CLI, never in a server).  `dial_handshake` is the dialer's half on any blocking line
connection, shared with the tests and tools that act as the operator or as a peer."""

from __future__ import annotations

import socket
from collections.abc import Callable
from functools import partial

from herd.config import HerdConfig
from herd.errors import HerdError
from herd.ops import OPERATOR
from herd.tokens import new_nonce, peer_mac
from herd.wire.handshake import Handshake, NotChallenged, WrongProof
from herd.wire.operator import OperatorCommand

TIMEOUT = 5.0


class OperatorError(HerdError):
    """No server could be asked, or one did not prove it knows the herd secret."""


def operator_command(config: HerdConfig, names: list[str], command: OperatorCommand) -> str:
    """Send `command` to the first of `names` that answers; its one-line reply.  `config` has
    the secret the servers use (herd.secretfile.choose_secret); `command` is checked before
    anything is sent (`OperatorLineError`)."""
    line = command.to_line()
    if not config.secret:
        raise OperatorError("no herd secret to prove")
    failures = []
    for name in names:
        server = config.server(name)
        host = "127.0.0.1" if server.host in ("0.0.0.0", "") else server.host
        try:
            return _ask(config.secret, name, host, server.port, line)
        except OSError as error:
            failures.append(f"{name}: {error}")
    raise OperatorError("no server answered (" + "; ".join(failures) + ")")


def dial_handshake(
    secret: bytes,
    dialer: bytes,
    acceptor: bytes,
    send: Callable[[bytes], None],
    read_line: Callable[[], bytes],
) -> bytes:
    """Say `HERD-HELLO` as `dialer` with `send` and check the challenge `read_line` brings;
    the `HERD-AUTH` line, for the caller to send with whatever follows it.  OperatorError if
    `acceptor` refused or does not know the secret."""
    handshake = Handshake.dialer(partial(peer_mac, secret), dialer, acceptor, new_nonce())
    send(handshake.send_hello())
    outcome = handshake.receive_challenge(read_line().rstrip(b"\r\n"))
    name = acceptor.decode("utf-8", "replace")
    if isinstance(outcome, NotChallenged):
        raise OperatorError(f"{name} refused the operator handshake")
    if isinstance(outcome, WrongProof):
        raise OperatorError(f"{name} does not know the herd secret")
    return outcome.auth


def _ask(secret: bytes, name: str, host: str, port: int, line: bytes) -> str:
    with socket.create_connection((host, port), timeout=TIMEOUT) as connection:
        lines = connection.makefile("rb")
        auth = dial_handshake(
            secret, OPERATOR.encode(), name.encode(), connection.sendall, lines.readline
        )
        connection.sendall(auth + line)
        reply = lines.readline().decode("utf-8", "replace").rstrip("\r\n")
        lines.close()
    if not reply:
        raise OperatorError(f"{name} closed the connection without answering")
    return reply
