"""The line protocol, sans I/O: bytes in, commands out; values in, bytes out.

Every command type documents its exact wire format.  Parsing never raises anything but
`WireError`; formatting goes through functions that validate their fields, so nothing the
server writes can be malformed by construction.  Client fields (client id, position, time) are
kept as the exact bytes the client sent, because replies must echo them verbatim.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import ClassVar, Final, NamedTuple

__all__ = [
    "CLIENT_WORDS",
    "At",
    "Auth",
    "Challenge",
    "Digest",
    "DigestEnd",
    "Hello",
    "IAmAt",
    "Lease",
    "OpRecord",
    "OpUpdate",
    "OperatorCommand",
    "OperatorLineError",
    "Ping",
    "Pong",
    "Record",
    "Status",
    "Sync",
    "Update",
    "UserAdd",
    "UserToken",
    "WhatsAt",
    "WireError",
    "diff_field",
    "error_reply",
    "format_at",
    "format_whatsat_reply",
    "is_email",
    "is_jid",
    "max_at_line",
    "max_op_payload",
    "parse_at",
    "parse_client_fields",
    "parse_client_line",
    "parse_operator_line",
    "parse_peer_line",
    "redact_secrets",
    "time_key",
    "time_ns",
    "update_seq",
]


class WireError(ValueError):
    """A line that is not a valid command; the server answers it with `? <line>`."""


_POSITION: Final = re.compile(rb"([+-])([0-9]+)\.([0-9]+)([+-])([0-9]+)\.([0-9]+)\Z")
_DECIMAL: Final = re.compile(rb"([0-9]+)(?:\.([0-9]+))?\Z")
_COUNT: Final = re.compile(rb"[0-9]+\Z")
_SEQ: Final = re.compile(rb"[0-9]{1,19}\Z")
_DIFF: Final = re.compile(rb"[+-][0-9]+\.[0-9]{9}\Z")
_TOKEN: Final = re.compile(rb"[!-~]+\Z")
_HEX: Final = re.compile(rb"[0-9a-f]{16,128}\Z")

MAX_RADIUS_KM: Final = 50
MAX_ITEMS: Final = 20
INT_TIME_DIGITS: Final = 18
_NANO: Final = Decimal("1e-9")


def _at_most(whole: bytes, fraction: bytes, bound: int) -> bool:
    """Whether the decimal `whole.fraction` is <= `bound`, exactly (no float rounding, and no
    int() of an unbounded digit string)."""
    whole = whole.lstrip(b"0")
    if len(whole) > len(str(bound)):
        return False
    value = int(whole or b"0")
    return value < bound or (value == bound and not fraction.strip(b"0"))


def _position(field: bytes) -> tuple[float, float]:
    match = _POSITION.match(field)
    if match is None:
        raise WireError("position must be ISO 6709 +DD.DDD-DDD.DDD")
    lat_sign, lat_whole, lat_fraction, lon_sign, lon_whole, lon_fraction = match.groups()
    if not (_at_most(lat_whole, lat_fraction, 90) and _at_most(lon_whole, lon_fraction, 180)):
        raise WireError("position out of range")
    latitude = float(lat_sign + lat_whole + b"." + lat_fraction)
    longitude = float(lon_sign + lon_whole + b"." + lon_fraction)
    return latitude, longitude


def _time(field: bytes) -> bytes:
    if _DECIMAL.match(field) is None:
        raise WireError("time must be POSIX seconds: digits with an optional fraction")
    return field


def time_key(time: bytes) -> tuple[int, bytes, bytes]:
    """An exact, cheap sort key for a validated POSIX time of any length: (number of whole
    digits, whole digits, fraction digits), leading and trailing zeros stripped.

    Comparing equal-length digit strings is comparing the numbers, and so is comparing fraction
    digit strings once trailing zeros are gone: `1.5`, `1.50` and `01.5` are equal, `1.49` <
    `1.5`, with no float rounding and no int() of an unbounded string.
    """
    whole, _, fraction = time.partition(b".")
    whole = whole.lstrip(b"0")
    return len(whole), whole, fraction.rstrip(b"0")


def time_ns(time: bytes) -> int:
    """A validated POSIX time of at most 18 whole digits in integer nanoseconds, rounded half
    up at the 10th digit."""
    whole, _, fraction = time.partition(b".")
    nanos = int(whole.lstrip(b"0") or b"0") * 1_000_000_000 + int((fraction + b"000000000")[:9])
    if fraction[9:10] >= b"5":
        nanos += 1
    return nanos


def diff_field(received_ns: int, client_time: bytes) -> bytes:
    """`<diff>` of an AT line: receive time minus client time, sign always shown, 9 decimals.

    Integer nanoseconds for any time a clock can show; exact decimal arithmetic (linear in the
    length, which `max_line` bounds) for the absurdly large times the grammar also allows.
    """
    if len(client_time.partition(b".")[0].lstrip(b"0")) > INT_TIME_DIGITS:
        return _long_diff(received_ns, client_time)
    delta = received_ns - time_ns(client_time)
    sign = b"-" if delta < 0 else b"+"
    seconds, nanos = divmod(abs(delta), 1_000_000_000)
    return b"%s%d.%09d" % (sign, seconds, nanos)


def _long_diff(received_ns: int, client_time: bytes) -> bytes:
    with localcontext() as context:
        context.prec = len(client_time) + 40
        client = Decimal(client_time.decode()).quantize(_NANO, rounding=ROUND_HALF_UP)
        delta = Decimal(received_ns).scaleb(-9) - client
        sign = b"-" if delta < 0 else b"+"
        return sign + format(abs(delta).quantize(_NANO), "f").encode()


# --- client commands -----------------------------------------------------------------------


class IAmAt(NamedTuple):
    """`IAMAT <client> <position> <time>`: a client reports where it is.

    `position` is ISO 6709 latitude then longitude, each signed with a decimal point
    (`+34.068930-118.445127`, |lat| <= 90, |lon| <= 180); `time` is POSIX seconds, plain digits
    with an optional fraction (`1621464827.959498503`).  Fields are kept verbatim.
    """

    client: bytes
    position: bytes
    time: bytes
    latitude: float
    longitude: float

    @classmethod
    def from_fields(cls, fields: list[bytes]) -> IAmAt:
        if len(fields) != 4:
            raise WireError("IAMAT takes 3 fields")
        latitude, longitude = _position(fields[2])
        return cls(fields[1], fields[2], _time(fields[3]), latitude, longitude)


@dataclass(frozen=True, slots=True)
class WhatsAt:
    """`WHATSAT <client> <radius_km> <max_items>`: places near a known client.

    radius: digits with an optional fraction, 0 < r <= 50; max_items: digits, 0 <= n <= 20.
    """

    client: bytes
    radius_km: float
    max_items: int

    @classmethod
    def from_fields(cls, fields: list[bytes]) -> WhatsAt:
        if len(fields) != 4:
            raise WireError("WHATSAT takes 3 fields")
        radius = _DECIMAL.match(fields[2])
        if radius is None or _COUNT.match(fields[3]) is None:
            raise WireError("WHATSAT radius and count must be plain numbers")
        whole, fraction = radius[1], radius[2] or b""
        positive = bool(whole.strip(b"0") or fraction.strip(b"0"))
        if not positive or not _at_most(whole, fraction, MAX_RADIUS_KM):
            raise WireError("WHATSAT radius out of range")
        if not _at_most(fields[3], b"", MAX_ITEMS):
            raise WireError("WHATSAT count out of range")
        return cls(fields[1], float(fields[2]), int(fields[3].lstrip(b"0") or b"0"))


@dataclass(frozen=True, slots=True)
class Status:
    """`STATUS`: the server's name and its peer links, answered with one line
    `STATUS <json>` where json is `{"server": NAME, "peers": {PEER: "up"|"down"}}`."""

    @classmethod
    def from_fields(cls, fields: list[bytes]) -> Status:
        if len(fields) != 1:
            raise WireError("STATUS takes no fields")
        return cls()


@dataclass(frozen=True, slots=True)
class Hello:
    """`HERD-HELLO <from> <to> <nonce>`: a server dialing a peer asks to turn the connection
    into a peer link.  `nonce` is the dialer's random challenge, lowercase hex."""

    sender: bytes
    receiver: bytes
    nonce: bytes

    @classmethod
    def from_fields(cls, fields: list[bytes]) -> Hello:
        if len(fields) != 4 or _HEX.match(fields[3]) is None:
            raise WireError("HERD-HELLO takes <from> <to> <hex nonce>")
        return cls(fields[1], fields[2], fields[3])

    def to_line(self) -> bytes:
        return b"HERD-HELLO %s %s %s\n" % (
            _token(self.sender),
            _token(self.receiver),
            _hex(self.nonce),
        )


ClientCommand = IAmAt | WhatsAt | Status | Hello

_CLIENT_COMMANDS: Final[dict[bytes, type[IAmAt] | type[WhatsAt] | type[Status] | type[Hello]]] = {
    b"IAMAT": IAmAt,
    b"WHATSAT": WhatsAt,
    b"STATUS": Status,
    b"HERD-HELLO": Hello,
}


CLIENT_WORDS: Final = frozenset(_CLIENT_COMMANDS)


def parse_client_line(line: bytes) -> ClientCommand | None:
    """One line from a client (without its terminator) to a command; None for a blank line."""
    fields = line.split()
    return parse_client_fields(fields) if fields else None


def parse_client_fields(fields: list[bytes]) -> ClientCommand:
    """A client line already split into (at least one) fields."""
    command = _CLIENT_COMMANDS.get(fields[0])
    if command is None:
        raise WireError("unknown command")
    return command.from_fields(fields)


_SECRET_WORDS: Final = frozenset(("AUTH", "USER-ADD", "USER-TOKEN"))
# Whitespace as any reader of the line might split it: ASCII whitespace (a line holds no \n),
# \x1c-\x1f and Unicode's spaces (in UTF-8), so no spelling of the gaps hides a secret word.
SECRET_LINE_START: Final = (
    rb"(?:[\t\x0b\x0c\r \x1c-\x1f]|\xc2[\x85\xa0]|\xe1\x9a\x80|\xe2\x80[\x80-\x8a\xa8\xa9\xaf]"
    rb"|\xe2\x81\x9f|\xe3\x80\x80)*(?i:auth|user-add|user-token)"
)
_SECRET_START: Final = re.compile(SECRET_LINE_START)
REDACTED: Final = b"<redacted>"


def redact_secrets(line: bytes) -> bytes:
    """A line as logged.  A line whose first field is `AUTH`, `USER-ADD` or `USER-TOKEN` in any
    case shows nothing after its user field (with a single field after the word, not that one
    either), whatever whitespace separates the fields and however many there are: a malformed
    login or operator command carries its token or hash as well as a valid one does."""
    if _SECRET_START.match(line) is None:
        return line
    fields = line.decode("utf-8", "surrogateescape").split()
    word = fields[0]
    if not (word.isascii() and word.upper() in _SECRET_WORDS) or len(fields) == 1:
        return line
    shown = fields[:2] if len(fields) >= 3 else fields[:1]
    return b" ".join([*(field.encode("utf-8", "surrogateescape") for field in shown), REDACTED])


def error_reply(line: bytes) -> bytes:
    """`? <line>`: the answer to anything invalid, echoing the line as received."""
    return b"? " + line + b"\n"


# --- AT lines --------------------------------------------------------------------------------


class At(NamedTuple):
    """`AT <server> <diff> <client> <position> <time>`: a stored location report.

    `server` received it; `diff` is its receive time minus `time` (signed, 9 decimals); the last
    three fields are the IAMAT's, verbatim.  `line` is the whole AT line without its newline,
    kept because replies must repeat it byte for byte.
    """

    server: bytes
    diff: bytes
    client: bytes
    position: bytes
    time: bytes
    latitude: float
    longitude: float
    line: bytes


def format_at(server: bytes, received_ns: int, report: IAmAt) -> At:
    """The AT record for a report received at `received_ns` by `server`."""
    diff = diff_field(received_ns, report.time)
    line = b"AT %s %s %s %s %s" % (
        _token(server),
        diff,
        report.client,
        report.position,
        report.time,
    )
    return At(
        server,
        diff,
        report.client,
        report.position,
        report.time,
        report.latitude,
        report.longitude,
        line,
    )


def parse_at(fields: list[bytes]) -> At:
    """An AT line split into fields (from a peer, or from the store); validates every field."""
    if len(fields) != 6 or fields[0] != b"AT":
        raise WireError("AT takes 5 fields")
    if _DIFF.match(fields[2]) is None:
        raise WireError("AT diff must be signed with 9 decimals")
    latitude, longitude = _position(fields[4])
    _time(fields[5])
    return At(
        fields[1],
        fields[2],
        fields[3],
        fields[4],
        fields[5],
        latitude,
        longitude,
        b" ".join(fields),
    )


def format_whatsat_reply(at_line: bytes, answer: object) -> bytes:
    """The whole WHATSAT reply: the stored AT line, then the places JSON with runs of newlines
    squeezed to one, then an empty line."""
    # A lone surrogate (from a provider's "\ud800") is written back as its JSON escape.
    body = json.dumps(answer, indent=3, ensure_ascii=False).encode("utf-8", "backslashreplace")
    body = re.sub(rb"\n+", b"\n", body).strip(b"\n")
    return at_line + b"\n" + body + b"\n\n"


# --- peer lines ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge:
    """`HERD-CHALLENGE <nonce> <mac>`: the answering server's own challenge, and its proof of
    the herd secret over both nonces."""

    nonce: bytes
    mac: bytes

    def to_line(self) -> bytes:
        return b"HERD-CHALLENGE %s %s\n" % (_hex(self.nonce), _hex(self.mac))


@dataclass(frozen=True, slots=True)
class Auth:
    """`HERD-AUTH <mac>`: the dialer's proof of the herd secret over both nonces."""

    mac: bytes

    def to_line(self) -> bytes:
        return b"HERD-AUTH %s\n" % _hex(self.mac)


@dataclass(frozen=True, slots=True)
class Sync:
    """`SYNC <instance> <known> <seq>`: sent by both sides once a link is up.

    "I am store `instance`; I have everything of your store `known` up to your sequence number
    `seq`: send me what is newer."  The answer is the missing updates, then live ones.
    """

    instance: bytes
    known: bytes
    seq: int

    def to_line(self) -> bytes:
        return b"SYNC %s %s %d\n" % (_token(self.instance), _token(self.known), self.seq)


@dataclass(frozen=True, slots=True)
class Update:
    """`U <seq> AT <server> <diff> <client> <position> <time>`: a location update flooded between
    peers, tagged with the sender's sequence number (for catch-up)."""

    seq: int
    at: At

    def to_line(self) -> bytes:
        return b"U %d %s\n" % (self.seq, self.at.line)


@dataclass(frozen=True, slots=True)
class OpUpdate:
    """`U <seq> OP <json>`: a planning operation flooded between peers, tagged with the sender's
    sequence number; `json` is one field (the operation's JSON has no whitespace)."""

    seq: int
    payload: bytes

    def to_line(self) -> bytes:
        return b"U %d OP %s\n" % (self.seq, _token(self.payload))


@dataclass(frozen=True, slots=True)
class Ping:
    """`PING`: keepalive on a peer link; answered with `PONG`."""

    def to_line(self) -> bytes:
        return b"PING\n"


@dataclass(frozen=True, slots=True)
class Pong:
    """`PONG`: the answer to `PING`."""

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

    def to_line(self) -> bytes:
        if self.kind not in _DIGEST_KINDS:
            raise WireError(f"not a digest kind: {self.kind!r}")
        sums = b" ".join(b"%016x" % value for value in self.sums)
        return b"DIGEST %s %s %s\n" % (self.kind, _token(self.origin), sums)


@dataclass(frozen=True, slots=True)
class DigestEnd:
    """`DIGEST-END`: the sender's digests are complete (an origin not listed: it holds none)."""

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
        return b"R OP %s\n" % _token(self.payload)


@dataclass(frozen=True, slots=True)
class Lease:
    """`LEASE <server> <ns>`: `server` was running when its clock read `ns`; flooded when newer
    and sent whole on each new link, so every server knows whose notification duties it holds
    (see `herd.leases`).  A server that does not know the line ignores it."""

    server: bytes
    ns: int

    def to_line(self) -> bytes:
        return b"LEASE %s %d\n" % (_token(self.server), self.ns)


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


def parse_peer_line(line: bytes) -> PeerMessage | None:
    """One line on a peer link; None for a blank line."""
    fields = line.split()
    if not fields:
        return None
    kind = fields[0]
    if kind == b"R" and len(fields) >= 2:
        if fields[1] == b"OP":
            if len(fields) != 3:
                raise WireError("R OP takes one JSON field")
            return OpRecord(fields[2])
        return Record(parse_at(fields[1:]))
    if kind == b"DIGEST" and len(fields) >= 4 and fields[1] in _DIGEST_KINDS:
        sums = fields[3:]
        if len(sums) > 64 or not all(_DIGEST_SUM.match(value) for value in sums):
            raise WireError("DIGEST sums are 16 hex digits each")
        return Digest(fields[1], fields[2], tuple(int(value, 16) for value in sums))
    if kind == b"DIGEST-END" and len(fields) == 1:
        return DigestEnd()
    if kind == b"U":
        if len(fields) < 3 or _SEQ.match(fields[1]) is None:
            raise WireError("U takes <seq> AT ... or <seq> OP <json>")
        if fields[2] == b"OP":
            if len(fields) != 4:
                raise WireError("U <seq> OP takes one JSON field")
            return OpUpdate(int(fields[1]), fields[3])
        return Update(int(fields[1]), parse_at(fields[2:]))
    if kind == b"SYNC" and len(fields) == 4 and _SEQ.match(fields[3]) is not None:
        return Sync(fields[1], fields[2], int(fields[3]))
    if kind == b"HERD-CHALLENGE" and len(fields) == 3:
        return Challenge(_hex(fields[1]), _hex(fields[2]))
    if kind == b"HERD-AUTH" and len(fields) == 2:
        return Auth(_hex(fields[1]))
    if kind == b"LEASE" and len(fields) == 3 and _SEQ.match(fields[2]) is not None:
        return Lease(_token(fields[1]), int(fields[2]))
    if kind == b"PING" and len(fields) == 1:
        return Ping()
    if kind == b"PONG" and len(fields) == 1:
        return Pong()
    raise WireError("not a peer message")


def _token(value: bytes) -> bytes:
    if _TOKEN.match(value) is None:
        raise WireError(f"not a single printable ASCII field: {value!r}")
    return value


def _hex(value: bytes) -> bytes:
    if _HEX.match(value) is None:
        raise WireError(f"not lowercase hex of 16-128 digits: {value!r}")
    return value


# --- operator commands (`herd user`) ---------------------------------------------------------

USER_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
"""The user id grammar (the same as `herd.events.is_id`), ASCII so it is one field."""

TOKEN_HASH: Final = re.compile(
    r"scrypt\$(?:1024|2048|4096|8192|16384)\$[1-8]\$[12]\$(?:[0-9a-f]{2}){8,32}\$[0-9a-f]{64}\Z"
)
"""`scrypt$<n>$<r>$<p>$<salt hex>$<hash hex>` with the bounded parameters a server checks."""

NOT_A_USER_ID: Final = "is not a user id: 1-64 letters, digits, '.', '_', '-'"
BAD_HASH: Final = "the token hash is not scrypt$<n>$<r>$<p>$<salt hex>$<hash hex>"

MAX_ADDRESS: Final = 254
_ATEXT: Final = r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f])"
_ALNUM: Final = r"[^\W_]"
_LABEL: Final = rf"{_ALNUM}(?:(?:{_ALNUM}|-){{0,61}}{_ALNUM})?"
_DOMAIN: Final = rf"{_LABEL}(?:\.{_LABEL})+"
_EMAIL: Final = re.compile(rf"({_ATEXT}+(?:\.{_ATEXT}+)*)@{_DOMAIN}\Z")
_JID: Final = re.compile(rf"[^\"&'/:<>@]+@{_LABEL}(?:\.{_LABEL})*\Z")


def _printable(value: str) -> bool:
    """No control, format, surrogate or unassigned character and no space or separator of any
    kind (Unicode categories C* and Z*): nothing that could end a field or a line anywhere."""
    return all(unicodedata.category(char)[0] not in "CZ" for char in value)


def is_email(value: str) -> bool:
    """An addr-spec with a dot-atom local part (UTF-8 allowed, RFC 6532) and a domain of at
    least two labels: one field, one recipient, nothing a mail header could misread."""
    if len(value) > MAX_ADDRESS:
        return False
    match = _EMAIL.match(value)
    return match is not None and len(match[1]) <= 64 and _printable(value)


def is_jid(value: str) -> bool:
    """A bare JID `local@domain` (RFC 7622 without a resource): one field, no markup."""
    return len(value) <= MAX_ADDRESS and _JID.match(value) is not None and _printable(value)


class OperatorLineError(WireError):
    """An operator command with a field that is not what it must be: answered
    `ERR <code>: <message>`, and nothing is changed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def line(self) -> bytes:
        return f"ERR {self.code}: {self.message}\n".encode()


def _check_user(user: str) -> None:
    if USER_ID.match(user) is None:
        raise OperatorLineError("bad-user", f"{user!r} {NOT_A_USER_ID}")


def _check_hash(token_hash: str) -> None:
    if TOKEN_HASH.match(token_hash) is None:
        raise OperatorLineError("bad-hash", BAD_HASH)


def _operator_fields(line: bytes, word: bytes, usage: str) -> list[str]:
    """The fields after `word`, split at ASCII whitespace (as every line is) and each decoded
    as strict UTF-8, so no character inside a field can become a separator later."""
    fields = line.split()
    if not fields or fields[0] != word:
        raise WireError(f"not {word.decode()}")
    try:
        return [field.decode() for field in fields[1:]]
    except UnicodeDecodeError:
        raise OperatorLineError("bad-field", f"{usage}: fields must be UTF-8") from None


@dataclass(frozen=True, slots=True)
class UserAdd:
    """`USER-ADD <user> <token hash> [email=<address>] [jid=<jid>]`: the operator creates a
    user.  Each optional field at most once, in any order; `to_line` writes email first."""

    user: str
    token_hash: str
    email: str | None = None
    jid: str | None = None

    USAGE: ClassVar[str] = "USER-ADD <user> <token hash> [email=<address>] [jid=<jid>]"

    def check(self) -> None:
        """Raise `OperatorLineError` unless every field is valid (and so is one field)."""
        _check_user(self.user)
        _check_hash(self.token_hash)
        if self.email is not None and not is_email(self.email):
            raise OperatorLineError("bad-value", f"{self.email!r} is not an email address")
        if self.jid is not None and not is_jid(self.jid):
            raise OperatorLineError(
                "bad-value", f"{self.jid!r} is not a bare JID like name@example.org"
            )

    @classmethod
    def parse(cls, line: bytes) -> UserAdd:
        fields = _operator_fields(line, b"USER-ADD", cls.USAGE)
        if len(fields) < 2:
            raise OperatorLineError("bad-field", f"{cls.USAGE}: the user and hash are missing")
        options: dict[str, str] = {}
        for field in fields[2:]:
            key, equals, value = field.partition("=")
            if not equals or key not in ("email", "jid"):
                raise OperatorLineError("bad-field", f"{cls.USAGE}: unknown field {field!r}")
            if key in options:
                raise OperatorLineError("bad-field", f"{cls.USAGE}: {key}= given twice")
            options[key] = value
        command = cls(fields[0], fields[1], options.get("email"), options.get("jid"))
        command.check()
        return command

    def to_line(self) -> bytes:
        self.check()
        words = ["USER-ADD", self.user, self.token_hash]
        for key, value in (("email", self.email), ("jid", self.jid)):
            if value is not None:
                words.append(f"{key}={value}")
        return " ".join(words).encode() + b"\n"


@dataclass(frozen=True, slots=True)
class UserToken:
    """`USER-TOKEN <user> <token hash>`: the operator gives a user a new token."""

    user: str
    token_hash: str

    USAGE: ClassVar[str] = "USER-TOKEN <user> <token hash>"

    def check(self) -> None:
        _check_user(self.user)
        _check_hash(self.token_hash)

    @classmethod
    def parse(cls, line: bytes) -> UserToken:
        fields = _operator_fields(line, b"USER-TOKEN", cls.USAGE)
        if len(fields) != 2:
            raise OperatorLineError("bad-field", f"{cls.USAGE}: takes exactly two fields")
        command = cls(fields[0], fields[1])
        command.check()
        return command

    def to_line(self) -> bytes:
        self.check()
        return f"USER-TOKEN {self.user} {self.token_hash}\n".encode()


OperatorCommand = UserAdd | UserToken


def parse_operator_line(line: bytes) -> OperatorCommand | None:
    """One line on an authenticated operator connection; None if blank.  `OperatorLineError`
    for a USER-ADD/USER-TOKEN with a bad field, `WireError` for any other command."""
    fields = line.split(None, 1)
    if not fields:
        return None
    if fields[0] == b"USER-ADD":
        return UserAdd.parse(line)
    if fields[0] == b"USER-TOKEN":
        return UserToken.parse(line)
    raise WireError("not an operator command")
