"""Client-port lines of the location service, sans I/O: IAMAT, WHATSAT, STATUS, HERD-HELLO,
and the replies AT, `? <line>` and the WHATSAT answer.

Client fields (client id, position, time) are kept as the exact bytes the client sent, because
replies must echo them verbatim.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, NamedTuple

from herd.wire.grammar import (
    COUNT,
    DECIMAL,
    DIFF,
    HEX,
    MAX_ITEMS,
    MAX_RADIUS_KM,
    WireError,
    at_most,
    diff_field,
    hex_field,
    iso6709_position,
    one_field,
    time_field,
)


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
    def parse(cls, fields: list[bytes], line: bytes) -> IAmAt:
        if len(fields) != 4:
            raise WireError("IAMAT takes 3 fields")
        latitude, longitude = iso6709_position(fields[2])
        return cls(fields[1], fields[2], time_field(fields[3]), latitude, longitude)

    def to_line(self) -> bytes:
        return b"IAMAT %s %s %s\n" % (self.client, self.position, self.time)


@dataclass(frozen=True, slots=True)
class WhatsAt:
    """`WHATSAT <client> <radius_km> <max_items>`: places near a known client.

    radius: digits with an optional fraction, 0 < r <= 50; max_items: digits, 0 <= n <= 20.
    """

    client: bytes
    radius_km: float
    max_items: int

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> WhatsAt:
        if len(fields) != 4:
            raise WireError("WHATSAT takes 3 fields")
        radius = DECIMAL.match(fields[2])
        if radius is None or COUNT.match(fields[3]) is None:
            raise WireError("WHATSAT radius and count must be plain numbers")
        whole, fraction = radius[1], radius[2] or b""
        positive = bool(whole.strip(b"0") or fraction.strip(b"0"))
        if not positive or not at_most(whole, fraction, MAX_RADIUS_KM):
            raise WireError("WHATSAT radius out of range")
        if not at_most(fields[3], b"", MAX_ITEMS):
            raise WireError("WHATSAT count out of range")
        return cls(fields[1], float(fields[2]), int(fields[3].lstrip(b"0") or b"0"))

    def to_line(self) -> bytes:
        radius = format(Decimal(repr(self.radius_km)), "f").encode()
        return b"WHATSAT %s %s %d\n" % (self.client, radius, self.max_items)


@dataclass(frozen=True, slots=True)
class Status:
    """`STATUS`: the server's name and its peer links, answered with one line
    `STATUS <json>` where json is `{"server": NAME, "peers": {PEER: "up"|"down"}}`."""

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> Status:
        if len(fields) != 1:
            raise WireError("STATUS takes no fields")
        return cls()

    def to_line(self) -> bytes:
        return b"STATUS\n"


@dataclass(frozen=True, slots=True)
class Hello:
    """`HERD-HELLO <from> <to> <nonce>`: a server dialing a peer asks to turn the connection
    into a peer link.  `nonce` is the dialer's random challenge, lowercase hex."""

    sender: bytes
    receiver: bytes
    nonce: bytes

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> Hello:
        if len(fields) != 4 or HEX.match(fields[3]) is None:
            raise WireError("HERD-HELLO takes <from> <to> <hex nonce>")
        return cls(fields[1], fields[2], fields[3])

    def to_line(self) -> bytes:
        return b"HERD-HELLO %s %s %s\n" % (
            one_field(self.sender),
            one_field(self.receiver),
            hex_field(self.nonce),
        )


ClientCommand = IAmAt | WhatsAt | Status | Hello

CLIENT_PARSERS: Final[dict[bytes, Callable[[list[bytes], bytes], ClientCommand]]] = {
    b"IAMAT": IAmAt.parse,
    b"WHATSAT": WhatsAt.parse,
    b"STATUS": Status.parse,
    b"HERD-HELLO": Hello.parse,
}
"""The location service's words, each with the parser of its fields."""


def parse_client_line(line: bytes) -> ClientCommand | None:
    """One line of the location service (without its terminator) to a command; None for a
    blank line."""
    fields = line.split()
    if not fields:
        return None
    parse = CLIENT_PARSERS.get(fields[0])
    if parse is None:
        raise WireError("unknown command")
    return parse(fields, line)


def status_reply(server: str, peers: dict[str, str]) -> bytes:
    """`STATUS <json>`: `{"server": NAME, "peers": {PEER: "up"|"down"}}`, compact."""
    body = json.dumps({"server": server, "peers": peers}, separators=(",", ":"))
    return b"STATUS " + body.encode() + b"\n"


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

    def to_line(self) -> bytes:
        """The AT line as a reply."""
        return self.line + b"\n"


def format_at(server: bytes, received_ns: int, report: IAmAt) -> At:
    """The AT record for a report received at `received_ns` by `server`."""
    diff = diff_field(received_ns, report.time)
    line = b"AT %s %s %s %s %s" % (
        one_field(server),
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
    if DIFF.match(fields[2]) is None:
        raise WireError("AT diff must be signed with 9 decimals")
    latitude, longitude = iso6709_position(fields[4])
    time_field(fields[5])
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
