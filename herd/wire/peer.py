"""Peer-link lines, sans I/O: the handshake (HERD-CHALLENGE, HERD-AUTH), SYNC, flooded
updates (U), keepalive (PING/PONG), anti-entropy (DIGEST, DIGEST-END, R) and LEASE."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from herd.wire.client import At, parse_at
from herd.wire.grammar import SEQ, WireError, hex_field, one_field


@dataclass(frozen=True, slots=True)
class Challenge:
    """`HERD-CHALLENGE <nonce> <mac>`: the answering server's own challenge, and its proof of
    the herd secret over both nonces."""

    nonce: bytes
    mac: bytes

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> Challenge:
        if len(fields) != 3:
            raise WireError("not a peer message")
        return cls(hex_field(fields[1]), hex_field(fields[2]))

    def to_line(self) -> bytes:
        return b"HERD-CHALLENGE %s %s\n" % (hex_field(self.nonce), hex_field(self.mac))


@dataclass(frozen=True, slots=True)
class Auth:
    """`HERD-AUTH <mac>`: the dialer's proof of the herd secret over both nonces."""

    mac: bytes

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> Auth:
        if len(fields) != 2:
            raise WireError("not a peer message")
        return cls(hex_field(fields[1]))

    def to_line(self) -> bytes:
        return b"HERD-AUTH %s\n" % hex_field(self.mac)


@dataclass(frozen=True, slots=True)
class Sync:
    """`SYNC <instance> <known> <seq>`: sent by both sides once a link is up.

    "I am store `instance`; I have everything of your store `known` up to your sequence number
    `seq`: send me what is newer."  The answer is the missing updates, then live ones.
    """

    instance: bytes
    known: bytes
    seq: int

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> Sync:
        if len(fields) != 4 or SEQ.match(fields[3]) is None:
            raise WireError("not a peer message")
        return cls(fields[1], fields[2], int(fields[3]))

    def to_line(self) -> bytes:
        return b"SYNC %s %s %d\n" % (one_field(self.instance), one_field(self.known), self.seq)


@dataclass(frozen=True, slots=True)
class Update:
    """`U <seq> AT <server> <diff> <client> <position> <time>`: a location update flooded between
    peers, tagged with the sender's sequence number (for catch-up)."""

    seq: int
    at: At

    def to_line(self) -> bytes:
        return update_line(self.seq, self.at)


def update_line(seq: int, at: At) -> bytes:
    """`Update(seq, at).to_line()` without the object, for the IAMAT path."""
    return b"U %d %s\n" % (seq, at.line)


@dataclass(frozen=True, slots=True)
class OpUpdate:
    """`U <seq> OP <json>`: a planning operation flooded between peers, tagged with the sender's
    sequence number; `json` is one field (the operation's JSON has no whitespace)."""

    seq: int
    payload: bytes

    def to_line(self) -> bytes:
        return b"U %d OP %s\n" % (self.seq, one_field(self.payload))


@dataclass(frozen=True, slots=True)
class Ping:
    """`PING`: keepalive on a peer link; answered with `PONG`."""

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> Ping:
        if len(fields) != 1:
            raise WireError("not a peer message")
        return cls()

    def to_line(self) -> bytes:
        return b"PING\n"


@dataclass(frozen=True, slots=True)
class Pong:
    """`PONG`: the answer to `PING`."""

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> Pong:
        if len(fields) != 1:
            raise WireError("not a peer message")
        return cls()

    def to_line(self) -> bytes:
        return b"PONG\n"


SEQ_DIGITS: Final = 19
_UPDATE_HEAD: Final = re.compile(rb"[ \t]*U[ \t]+([0-9]{1,19})[ \t]")
_DIGEST_KINDS: Final = (b"AT", b"OP")
_DIGEST_SUM: Final = re.compile(rb"[0-9a-f]{16}\Z")


def max_at_line(max_line: int) -> int:
    """The longest AT line that a peer can take as `U <seq> <AT line>` whatever the sequence
    number: a report making a longer one is refused, as nothing could flood it."""
    return max_line - len(b"U  ") - SEQ_DIGITS


def max_op_payload(max_line: int) -> int:
    """The longest operation JSON that a peer can take as `U <seq> OP <json>`."""
    return max_line - len(b"U  OP ") - SEQ_DIGITS


def update_seq(head: bytes) -> int | None:
    """The sequence number at the head of a `U <seq> ...` line too long to be read whole (so
    the catch-up mark can move past it); None if the head is not that of an update."""
    match = _UPDATE_HEAD.match(head)
    return None if match is None else int(match[1])


@dataclass(frozen=True, slots=True)
class Digest:
    """`DIGEST <kind> <origin> <sum>...`: anti-entropy, what the sender holds of one origin.

    `kind` is `AT` (locations) or `OP` (planning operations); each `sum` is 16 lowercase hex
    digits, the XOR of a 64-bit hash of every record of that origin in one bucket."""

    kind: bytes
    origin: bytes
    sums: tuple[int, ...]

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> Digest:
        if len(fields) < 4 or fields[1] not in _DIGEST_KINDS:
            raise WireError("not a peer message")
        sums = fields[3:]
        if len(sums) > 64 or not all(_DIGEST_SUM.match(value) for value in sums):
            raise WireError("DIGEST sums are 16 hex digits each")
        return cls(fields[1], fields[2], tuple(int(value, 16) for value in sums))

    def to_line(self) -> bytes:
        if self.kind not in _DIGEST_KINDS:
            raise WireError(f"not a digest kind: {self.kind!r}")
        sums = b" ".join(b"%016x" % value for value in self.sums)
        return b"DIGEST %s %s %s\n" % (self.kind, one_field(self.origin), sums)


@dataclass(frozen=True, slots=True)
class DigestEnd:
    """`DIGEST-END`: the sender's digests are complete (an origin not listed: it holds none)."""

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> DigestEnd:
        if len(fields) != 1:
            raise WireError("not a peer message")
        return cls()

    def to_line(self) -> bytes:
        return b"DIGEST-END\n"


@dataclass(frozen=True, slots=True)
class Record:
    """`R AT <server> <diff> <client> <position> <time>`: a location sent by anti-entropy.
    Unsequenced: it moves no catch-up mark; the receiver merges it by the usual rule."""

    at: At

    def to_line(self) -> bytes:
        return b"R %s\n" % self.at.line


@dataclass(frozen=True, slots=True)
class OpRecord:
    """`R OP <json>`: a planning operation sent by anti-entropy (unsequenced)."""

    payload: bytes

    def to_line(self) -> bytes:
        return b"R OP %s\n" % one_field(self.payload)


@dataclass(frozen=True, slots=True)
class Lease:
    """`LEASE <server> <ns>`: `server` was running when its clock read `ns`; flooded when newer
    and sent whole on each new link, so every server knows whose notification duties it holds
    (see `herd.leases`).  A server that does not know the line ignores it."""

    server: bytes
    ns: int

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> Lease:
        if len(fields) != 3 or SEQ.match(fields[2]) is None:
            raise WireError("not a peer message")
        return cls(one_field(fields[1]), int(fields[2]))

    def to_line(self) -> bytes:
        return b"LEASE %s %d\n" % (one_field(self.server), self.ns)


PeerMessage = (
    Challenge
    | Auth
    | Sync
    | Update
    | OpUpdate
    | Ping
    | Pong
    | Digest
    | DigestEnd
    | Record
    | OpRecord
    | Lease
)


def parse_update(fields: list[bytes], line: bytes) -> Update | OpUpdate:
    """`U <seq> AT ...` or `U <seq> OP <json>`."""
    if len(fields) < 3 or SEQ.match(fields[1]) is None:
        raise WireError("U takes <seq> AT ... or <seq> OP <json>")
    if fields[2] == b"OP":
        if len(fields) != 4:
            raise WireError("U <seq> OP takes one JSON field")
        return OpUpdate(int(fields[1]), fields[3])
    return Update(int(fields[1]), parse_at(fields[2:]))


def parse_record(fields: list[bytes], line: bytes) -> Record | OpRecord:
    """`R AT ...` or `R OP <json>`."""
    if len(fields) < 2:
        raise WireError("not a peer message")
    if fields[1] == b"OP":
        if len(fields) != 3:
            raise WireError("R OP takes one JSON field")
        return OpRecord(fields[2])
    return Record(parse_at(fields[1:]))


PEER_PARSERS: Final[dict[bytes, Callable[[list[bytes], bytes], PeerMessage]]] = {
    b"U": parse_update,
    b"R": parse_record,
    b"DIGEST": Digest.parse,
    b"DIGEST-END": DigestEnd.parse,
    b"SYNC": Sync.parse,
    b"HERD-CHALLENGE": Challenge.parse,
    b"HERD-AUTH": Auth.parse,
    b"LEASE": Lease.parse,
    b"PING": Ping.parse,
    b"PONG": Pong.parse,
}
"""The peer link's words, each with the parser of its fields."""


def parse_peer_line(line: bytes) -> PeerMessage | None:
    """One line on a peer link; None for a blank line."""
    fields = line.split()
    if not fields:
        return None
    parse = PEER_PARSERS.get(fields[0])
    if parse is None:
        raise WireError("not a peer message")
    return parse(fields, line)
