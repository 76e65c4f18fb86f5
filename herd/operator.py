"""The operator's side of the peer handshake: `herd user` talks to a running server as
`@operator`, proving it knows the herd secret, then sends one command (blocking code: it runs in
the CLI, never in a server).  `dial_handshake` is the dialer's half on any blocking line
connection, shared with the tests and tools that act as the operator or as a peer."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from functools import partial

from herd.config import HerdConfig, ServerConfig
from herd.errors import HerdError
from herd.ops import OPERATOR
from herd.reach import LineStream, client_context, open_stream
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
    tls = client_context(config)  # ConfigError if the herd's CA cannot be read
    for name in names:
        server = config.server(name)
        try:
            return _ask(config, server, tls, line)
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


def _ask(config: HerdConfig, server: ServerConfig, tls: ssl.SSLContext | None, line: bytes) -> str:
    name = server.name
    with open_stream(config, server, TIMEOUT, tls) as connection:
        lines = _Lines(connection)
        auth = dial_handshake(
            config.secret, OPERATOR.encode(), name.encode(), connection.sendall, lines.readline
        )
        connection.sendall(auth + line)
        reply = lines.readline().decode("utf-8", "replace").rstrip("\r\n")
    if not reply:
        raise OperatorError(f"{name} closed the connection without answering")
    return reply


class _Lines:
    """Lines read from a stream, one at a time."""

    def __init__(self, stream: LineStream) -> None:
        self.stream = stream
        self.buffer = b""

    def readline(self) -> bytes:
        """The next line with its LF; what is left (maybe b"") when the server closes."""
        while b"\n" not in self.buffer:
            chunk = self.stream.recv()
            if not chunk:
                line, self.buffer = self.buffer, b""
                return line
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"
