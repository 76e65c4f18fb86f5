"""The operator's side of the peer handshake: `herd user` talks to a running server as
`@operator`, proving it knows the herd secret, then sends one command (blocking code: it runs in
the CLI, never in a server)."""

from __future__ import annotations

import hmac
import socket

from herd.config import HerdConfig
from herd.errors import HerdError
from herd.ops import OPERATOR
from herd.tokens import new_nonce, peer_mac
from herd.wire.client import Hello
from herd.wire.grammar import WireError
from herd.wire.operator import OperatorCommand
from herd.wire.peer import Challenge, parse_peer_line

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


def _ask(secret: bytes, name: str, host: str, port: int, line: bytes) -> str:
    me, them = OPERATOR.encode(), name.encode()
    nonce = new_nonce()
    with socket.create_connection((host, port), timeout=TIMEOUT) as connection:
        lines = connection.makefile("rb")
        connection.sendall(Hello(me, them, nonce).to_line())
        try:
            challenge = parse_peer_line(lines.readline().rstrip(b"\r\n"))
        except WireError:
            challenge = None
        if not isinstance(challenge, Challenge):
            raise OperatorError(f"{name} refused the operator handshake")
        expected = peer_mac(secret, b"acceptor", me, them, nonce, challenge.nonce)
        if not hmac.compare_digest(expected, challenge.mac):
            raise OperatorError(f"{name} does not know the herd secret")
        proof = peer_mac(secret, b"dialer", me, them, nonce, challenge.nonce)
        connection.sendall(b"HERD-AUTH " + proof + b"\n" + line)
        reply = lines.readline().decode("utf-8", "replace").rstrip("\r\n")
        lines.close()
    if not reply:
        raise OperatorError(f"{name} closed the connection without answering")
    return reply
