"""The shared field grammar of every line, sans I/O: `WireError`, numbers, POSIX times, ISO
6709 positions, single fields, hex, user ids, addresses, and what a log must not show.

Parsing never raises anything but `WireError`; formatters validate their fields through the
checks here, so nothing the server writes can be malformed by construction.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Final

from herd.errors import HerdError


class WireError(HerdError, ValueError):
    """A line that is not a valid command; the server answers it with `? <line>`."""


ISO6709: Final = re.compile(rb"([+-])([0-9]+)\.([0-9]+)([+-])([0-9]+)\.([0-9]+)\Z")
DECIMAL: Final = re.compile(rb"([0-9]+)(?:\.([0-9]+))?\Z")
COUNT: Final = re.compile(rb"[0-9]+\Z")
SEQ: Final = re.compile(rb"[0-9]{1,19}\Z")
DIFF: Final = re.compile(rb"[+-][0-9]+\.[0-9]{9}\Z")
TOKEN: Final = re.compile(rb"[!-~]+\Z")
HEX: Final = re.compile(rb"[0-9a-f]{16,128}\Z")

MAX_RADIUS_KM: Final = 50
MAX_ITEMS: Final = 20
INT_TIME_DIGITS: Final = 18
_NANO: Final = Decimal("1e-9")


def at_most(whole: bytes, fraction: bytes, bound: int) -> bool:
    """Whether the decimal `whole.fraction` is <= `bound`, exactly (no float rounding, and no
    int() of an unbounded digit string)."""
    whole = whole.lstrip(b"0")
    if len(whole) > len(str(bound)):
        return False
    value = int(whole or b"0")
    return value < bound or (value == bound and not fraction.strip(b"0"))


def looks_like_iso6709(field: bytes) -> bool:
    """Whether `field` has the shape of an ISO 6709 position, in range or not (PROPOSE PLACE
    reads such a field as the position, and the rules refuse it if it is out of range)."""
    return ISO6709.match(field) is not None


def iso6709_position(field: bytes) -> tuple[float, float]:
    """The one parser of an ISO 6709 position (`+34.068930-118.445127`): IAMAT, AT lines (from
    peers and the store) and PROPOSE PLACE all read it here.  Each coordinate is signed, with a
    decimal point, and in range exactly (`+90.00…01` is out: no float rounding decides)."""
    match = ISO6709.match(field)
    if match is None:
        raise WireError("position must be ISO 6709 +DD.DDD-DDD.DDD")
    lat_sign, lat_whole, lat_fraction, lon_sign, lon_whole, lon_fraction = match.groups()
    if not (at_most(lat_whole, lat_fraction, 90) and at_most(lon_whole, lon_fraction, 180)):
        raise WireError("position out of range")
    latitude = float(lat_sign + lat_whole + b"." + lat_fraction)
    longitude = float(lon_sign + lon_whole + b"." + lon_fraction)
    return latitude, longitude


def time_field(field: bytes) -> bytes:
    if DECIMAL.match(field) is None:
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


def one_field(value: bytes) -> bytes:
    if TOKEN.match(value) is None:
        raise WireError(f"not a single printable ASCII field: {value!r}")
    return value


def hex_field(value: bytes) -> bytes:
    if HEX.match(value) is None:
        raise WireError(f"not lowercase hex of 16-128 digits: {value!r}")
    return value


_SECRET_WORDS: Final = frozenset(("AUTH", "USER-ADD", "USER-TOKEN", "OPTOUT"))
# Whitespace as any reader of the line might split it: ASCII whitespace (a line holds no \n),
# \x1c-\x1f and Unicode's spaces (in UTF-8), so no spelling of the gaps hides a secret word.
SECRET_LINE_START: Final = (
    rb"(?:[\t\x0b\x0c\r \x1c-\x1f]|\xc2[\x85\xa0]|\xe1\x9a\x80|\xe2\x80[\x80-\x8a\xa8\xa9\xaf]"
    rb"|\xe2\x81\x9f|\xe3\x80\x80)*(?i:auth|user-add|user-token|optout)"
)
_SECRET_START: Final = re.compile(SECRET_LINE_START)
REDACTED: Final = b"<redacted>"


def redact_secrets(line: bytes) -> bytes:
    """A line as logged.  A line whose first field is `AUTH`, `USER-ADD`, `USER-TOKEN` or
    `OPTOUT` (its token, like a login's, works for whoever reads it) in any case shows nothing
    after its user field (with a single field after the word, not that one either), whatever
    whitespace separates the fields and however many there are: a malformed login or
    operator command carries its token or hash as well as a valid one does."""
    if _SECRET_START.match(line) is None:
        return line
    fields = line.decode("utf-8", "surrogateescape").split()
    word = fields[0]
    if not (word.isascii() and word.upper() in _SECRET_WORDS) or len(fields) == 1:
        return line
    shown = fields[:2] if len(fields) >= 3 else fields[:1]
    return b" ".join([*(field.encode("utf-8", "surrogateescape") for field in shown), REDACTED])


USER_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
"""The user id grammar (the same as `herd.ops.is_id`), ASCII so it is one field."""

TOKEN_HASH: Final = re.compile(
    r"scrypt\$(?:1024|2048|4096|8192|16384)\$[1-8]\$[12]\$(?:[0-9a-f]{2}){8,32}\$[0-9a-f]{64}\Z"
)
"""`scrypt$<n>$<r>$<p>$<salt hex>$<hash hex>` with the bounded parameters a server checks."""

NOT_A_USER_ID: Final = "is not a user id: 1-64 letters, digits, '.', '_', '-'"

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
