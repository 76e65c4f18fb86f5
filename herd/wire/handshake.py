"""The peer handshake (`HERD-HELLO`, `HERD-CHALLENGE`, `HERD-AUTH`, docs/protocol.md §7.1) as one
sans-IO state machine for both ends: lines in, small frozen events out, no sockets, no clock.

The dialer is a server dialing a peer, or an operator client (`herd user`, the tests, the
benchmarks); the acceptor is the server that answers `HERD-HELLO`.  Nonces come in from the
caller, and the secret never comes in at all: only a `Signer` that MACs with it.  What to do
with an outcome (log it, hold a connection off, time out, fall back to a client) is the
adapters' business.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import Enum
from typing import Final

from herd.wire.client import Hello
from herd.wire.grammar import WireError
from herd.wire.peer import Auth, Challenge, parse_peer_line

Signer = Callable[[bytes, bytes, bytes, bytes, bytes], bytes]
"""`(role, dialer, acceptor, nonce_d, nonce_a) -> mac`: the herd secret's HMAC over one
handshake (`herd.peers.peer_mac` with the secret bound)."""

ACCEPTOR: Final = b"acceptor"
DIALER: Final = b"dialer"


class Role(Enum):
    """Which end: the one that says `HERD-HELLO`, or the one that answers it."""

    DIALER = "dialer"
    ACCEPTOR = "acceptor"


class HandshakeState(Enum):
    """Where a handshake is; each state names what may happen next."""

    START = "start"
    """Nothing yet: the dialer may send `HERD-HELLO`; the acceptor may receive one."""
    AWAITING_CHALLENGE = "awaiting challenge"
    """The dialer sent `HERD-HELLO`: the next line must be the acceptor's challenge."""
    AWAITING_AUTH = "awaiting auth"
    """The acceptor sent its challenge: the next non-blank line must be the dialer's proof."""
    LINKED = "linked"
    """Both ends proved they know the secret: the connection is a link.  Nothing more here."""
    REFUSED = "refused"
    """The handshake failed: no link.  Nothing more here."""


class HandshakeError(Exception):
    """An adapter asked for a step its role or the handshake's state does not allow (a bug
    here, never something a remote end can cause)."""


# --- the dialer's events ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proven:
    """The acceptor proved the secret: `auth` (the `HERD-AUTH` line) is to be sent, and the
    link is up on this side."""

    auth: bytes


@dataclass(frozen=True, slots=True)
class NotChallenged:
    """The answer to `HERD-HELLO` was not a challenge (`? HERD-HELLO …`, anything else)."""

    line: bytes


@dataclass(frozen=True, slots=True)
class WrongProof:
    """The challenge's proof is wrong: the acceptor does not know the secret."""

    challenge: Challenge


DialerEvent = Proven | NotChallenged | WrongProof


# --- the acceptor's events -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenged:
    """The `HERD-HELLO` is for this server from a known dialer: `challenge` (the
    `HERD-CHALLENGE` line) is to be sent."""

    dialer: str
    challenge: bytes


@dataclass(frozen=True, slots=True)
class NotForUs:
    """The `HERD-HELLO` is for another server or from a stranger: refused, nothing sent."""


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The dialer proved the secret: the connection is its link."""

    dialer: str


@dataclass(frozen=True, slots=True)
class NotAuthenticated:
    """The line after the challenge was not a right proof: `wrong_proof` if it was a
    `HERD-AUTH` (worth logging), else any other line.  Either way that line is the
    connection's again, as an ordinary client's."""

    wrong_proof: bool


HelloEvent = Challenged | NotForUs
AuthEvent = Authenticated | NotAuthenticated


class Handshake:
    """One end of one handshake.  Build it with `dialer()` or `acceptor()`; each step
    checks the role and the state and raises `HandshakeError` where neither allows it."""

    def __init__(
        self,
        role: Role,
        sign: Signer,
        dialer: bytes,
        acceptor: bytes,
        nonce: bytes,
        known_dialers: Collection[str] = (),
    ) -> None:
        self.role = role
        self.state = HandshakeState.START
        self._sign = sign
        self._dialer = dialer
        self._acceptor = acceptor
        self._nonce = nonce
        self._known_dialers = known_dialers
        self._dialer_nonce = b""

    @classmethod
    def dialer(cls, sign: Signer, me: bytes, them: bytes, nonce: bytes) -> Handshake:
        """`me` dials `them`; `nonce` is the dialer's fresh random challenge (hex)."""
        return cls(Role.DIALER, sign, me, them, nonce)

    @classmethod
    def acceptor(
        cls, sign: Signer, me: bytes, known_dialers: Collection[str], nonce: bytes
    ) -> Handshake:
        """`me` answers a `HERD-HELLO` from any of `known_dialers`; `nonce` is its own fresh
        random challenge (hex)."""
        return cls(Role.ACCEPTOR, sign, b"", me, nonce, known_dialers)

    def send_hello(self) -> bytes:
        """The dialer's first line."""
        self._expect(Role.DIALER, HandshakeState.START)
        self.state = HandshakeState.AWAITING_CHALLENGE
        return Hello(self._dialer, self._acceptor, self._nonce).to_line()

    def receive_challenge(self, line: bytes) -> DialerEvent:
        """The acceptor's answer to `HERD-HELLO` (without its terminator)."""
        self._expect(Role.DIALER, HandshakeState.AWAITING_CHALLENGE)
        try:
            message = parse_peer_line(line)
        except WireError:
            message = None
        if not isinstance(message, Challenge):
            self.state = HandshakeState.REFUSED
            return NotChallenged(line)
        if not hmac.compare_digest(self._mac(ACCEPTOR, self._nonce, message.nonce), message.mac):
            self.state = HandshakeState.REFUSED
            return WrongProof(message)
        self.state = HandshakeState.LINKED
        return Proven(Auth(self._mac(DIALER, self._nonce, message.nonce)).to_line())

    def receive_hello(self, hello: Hello) -> HelloEvent:
        """A `HERD-HELLO`, parsed where every client line is (it arrives on the client port)."""
        self._expect(Role.ACCEPTOR, HandshakeState.START)
        dialer = hello.sender.decode("utf-8", "replace")
        if hello.receiver != self._acceptor or dialer not in self._known_dialers:
            self.state = HandshakeState.REFUSED
            return NotForUs()
        self._dialer, self._dialer_nonce = hello.sender, hello.nonce
        self.state = HandshakeState.AWAITING_AUTH
        mac = self._mac(ACCEPTOR, hello.nonce, self._nonce)
        return Challenged(dialer, Challenge(self._nonce, mac).to_line())

    def receive_auth(self, line: bytes) -> AuthEvent | None:
        """The dialer's line after the challenge (without its terminator); None for a blank
        line, which changes nothing."""
        self._expect(Role.ACCEPTOR, HandshakeState.AWAITING_AUTH)
        try:
            message = parse_peer_line(line)
        except WireError:
            message = None
        else:
            if message is None:
                return None
        if isinstance(message, Auth):
            expected = self._mac(DIALER, self._dialer_nonce, self._nonce)
            if hmac.compare_digest(expected, message.mac):
                self.state = HandshakeState.LINKED
                return Authenticated(self._dialer.decode("utf-8", "replace"))
        self.state = HandshakeState.REFUSED
        return NotAuthenticated(wrong_proof=isinstance(message, Auth))

    def _mac(self, role: bytes, dialer_nonce: bytes, acceptor_nonce: bytes) -> bytes:
        return self._sign(role, self._dialer, self._acceptor, dialer_nonce, acceptor_nonce)

    def _expect(self, role: Role, state: HandshakeState) -> None:
        if self.role is not role or self.state is not state:
            raise HandshakeError(
                f"a {self.role.value} in state {self.state.value!r} cannot do that"
            )
