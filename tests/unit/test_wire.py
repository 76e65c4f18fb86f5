"""The line protocol's parsers and formatters (docs/protocol.md): examples, rejections, round
trips.

Pure: bytes in, commands out.  Numeric oracles use `Decimal` (exact), never floats.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from decimal import ROUND_CEILING, Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herd.ops import Choice, UserField, client_bytes, client_text
from herd.wire.client import (
    At,
    Hello,
    IAmAt,
    Status,
    WhatsAt,
    error_reply,
    format_at,
    format_whatsat_reply,
    parse_at,
    parse_client_line,
    status_reply,
)
from herd.wire.commands import CLIENT_PORT, OPERATOR, PEER_LINK, parse_client_port_line
from herd.wire.grammar import (
    WireError,
    diff_field,
    iso6709_position,
    looks_like_iso6709,
    time_key,
)
from herd.wire.peer import (
    Auth,
    Challenge,
    Digest,
    DigestEnd,
    Lease,
    OpRecord,
    OpUpdate,
    PeerMessage,
    Ping,
    Pong,
    Record,
    Sync,
    Update,
    parse_peer_line,
    update_line,
)
from herd.wire.planning import (
    PLANNING_WORDS,
    UNSUBSCRIBED,
    AddDevice,
    CancelEvent,
    CommentOn,
    DecideEvent,
    InviteUsers,
    Link,
    ListEvents,
    Login,
    OptOut,
    PlanEvent,
    ProposePlace,
    ProposeTime,
    RemoveDevice,
    ReopenEvent,
    SetUser,
    ShowEvent,
    ShowUser,
    Subscribe,
    Suggest,
    UninviteUsers,
    UnsetUser,
    Unsubscribe,
    VoteOn,
    WhoAmI,
    linkcode_reply,
    optout_reply,
    subscribed_reply,
    user_ok,
)

WHITESPACE = b" \t\n\r\x0b\x0c"  # what `bytes.split()` separates on
DIFF = re.compile(rb"[+-][0-9]+\.[0-9]{9}\Z")

# --- strategies ------------------------------------------------------------------------------

digits = st.text("0123456789", min_size=1, max_size=12).map(str.encode)
fractions = st.text("0123456789", min_size=1, max_size=20).map(str.encode)
separators = st.lists(st.sampled_from([b" ", b"\t", b"\x0b", b"\x0c", b"\r"]), min_size=1).map(
    b"".join
)
leading_zeros = st.integers(0, 3).map(lambda n: b"0" * n)


def _no_whitespace(value: bytes) -> bytes:
    return bytes(byte for byte in value if byte not in WHITESPACE)


# A client id: any bytes without whitespace, not necessarily UTF-8.
client_ids = st.binary(min_size=1, max_size=24).map(_no_whitespace).filter(bool)
tokens = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=16)
token_bytes = tokens.map(str.encode)
hex_fields = st.text("0123456789abcdef", min_size=16, max_size=128).map(str.encode)


@st.composite
def times(draw: st.DrawFn) -> bytes:
    """A valid POSIX time: digits, optionally a point and more digits (leading zeros too)."""
    whole = draw(leading_zeros) + draw(digits)
    if draw(st.booleans()):
        return whole + b"." + draw(fractions)
    return whole


@st.composite
def coordinates(draw: st.DrawFn, limit: int) -> bytes:
    """One signed ISO 6709 coordinate with |value| <= limit, e.g. `-118.445127`, `+090.0`."""
    whole = draw(st.integers(0, limit))
    fraction = draw(fractions)
    if whole == limit:
        fraction = b"0" * len(fraction)
    sign = draw(st.sampled_from([b"+", b"-"]))
    return sign + draw(leading_zeros) + b"%d" % whole + b"." + fraction


positions = st.builds(lambda lat, lon: lat + lon, coordinates(90), coordinates(180))
servers = token_bytes


def iamat(client: bytes, position: bytes, time: bytes) -> IAmAt:
    report = parse_client_line(b"IAMAT %s %s %s" % (client, position, time))
    assert isinstance(report, IAmAt)
    return report


def whatsat(radius: bytes, count: bytes) -> WhatsAt:
    query = parse_client_line(b"WHATSAT kiwi " + radius + b" " + count)
    assert isinstance(query, WhatsAt)
    return query


def exact_diff(received_ns: int, time: bytes) -> bytes:
    """The oracle for `<diff>`: received - time, exactly, rounded to the nanosecond (a tie, a
    client time ending in a lone 5 at the 10th decimal, rounds the client time up), sign always
    shown, zero as `+0.000000000`."""
    with localcontext() as context:
        context.prec = 200
        exact_ns = (Decimal(received_ns) - Decimal(time.decode()).scaleb(9)).normalize()
        rounded = int((exact_ns - Decimal("0.5")).to_integral_value(rounding=ROUND_CEILING))
    sign = "-" if rounded < 0 else "+"
    seconds, nanos = divmod(abs(rounded), 10**9)
    return f"{sign}{seconds}.{nanos:09d}".encode()


# --- IAMAT -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("position", "latitude", "longitude"),
    [
        (b"+34.068930-118.445127", 34.068930, -118.445127),
        (b"+034.068930-0118.445127", 34.068930, -118.445127),
        (b"+0034.5+0000.0", 34.5, 0.0),
        (b"-90.0+180.0", -90.0, 180.0),
        (b"+90.000000-180.000000000", 90.0, -180.0),
        (b"-0.0-0.0", 0.0, 0.0),
        (b"+1.123456789012345678901234567890-2.5", 1.1234567890123457, -2.5),
    ],
)
def test_iamat_valid_positions(position: bytes, latitude: float, longitude: float) -> None:
    report = iamat(b"kiwi.cs.ucla.edu", position, b"1621464827.959498503")
    assert report.position == position
    assert (report.latitude, report.longitude) == pytest.approx((latitude, longitude))


@pytest.mark.parametrize(
    "time",
    [
        b"1621464827.959498503",
        b"1621464827",
        b"0",
        b"0.0",
        b"0001621464827.5",
        b"1621464827.000000000000000000000000000001",
        b"1621464827." + b"9" * 100,
    ],
)
def test_iamat_valid_times(time: bytes) -> None:
    assert iamat(b"kiwi", b"+34.068930-118.445127", time).time == time


def test_iamat_example() -> None:
    line = b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503"
    assert parse_client_line(line) == IAmAt(
        b"kiwi.cs.ucla.edu",
        b"+34.068930-118.445127",
        b"1621464827.959498503",
        34.068930,
        -118.445127,
    )


@pytest.mark.parametrize(
    "position",
    [
        b"34.068930-118.445127",  # latitude without a sign
        b"+34.068930118.445127",  # longitude without a sign
        b"+34-118",  # no decimal points
        b"+34.068930-118",
        b"+34-118.445127",
        b"+34.-118.4",  # a point needs a digit after it
        b"+34.0-118.",
        b"+.5-118.4",  # ... and before it
        b"+34.0-.4",
        b"+90.000001+0.0",  # |lat| > 90
        b"-91.0+0.0",
        b"+0.0+180.000001",  # |lon| > 180
        b"+0.0-181.0",
        b"+3.4e1-118.4",  # no exponent
        b"+34.0-1.184E2",
        b"++34.0-118.4",
        b"+34.0--118.4",
        b"+34.0-118.4+1.0",  # a third coordinate
        b"+34.0",  # only one
        b"+34.0-118.4x",
        b"+34,0-118,4",
        b"+34.0\xe2\x88\x92118.4",  # U+2212 MINUS SIGN
        b"+\xd9\xa3\xd9\xa4.0-118.4",  # Arabic-Indic digits
        b"+inf-118.4",
        b"+nan+nan",
        b"+3_4.0-118.4",
    ],
)
def test_iamat_rejects_positions(position: bytes) -> None:
    with pytest.raises(WireError):
        parse_client_line(b"IAMAT kiwi " + position + b" 1621464827")


@pytest.mark.parametrize(
    "time",
    [
        b"+1621464827",  # no sign
        b"-1621464827",
        b"1.6e9",  # no exponent
        b"16E8",
        b"1.",  # a digit on each side of the point
        b".5",
        b"1..5",
        b"1.5.5",
        b"0x10",
        b"1_000",
        b"inf",
        b"nan",
        b"1,5",
        b"\xd9\xa1",  # ARABIC-INDIC DIGIT ONE
        b"\xef\xbc\x91",  # FULLWIDTH DIGIT ONE
    ],
)
def test_iamat_rejects_times(time: bytes) -> None:
    with pytest.raises(WireError):
        parse_client_line(b"IAMAT kiwi +34.068930-118.445127 " + time)


@pytest.mark.parametrize(
    "line",
    [
        b"IAMAT",
        b"IAMAT kiwi",
        b"IAMAT kiwi +34.068930-118.445127",
        b"IAMAT kiwi +34.068930-118.445127 1621464827 extra",
        b"IAMAT kiwi +34.068930 -118.445127 1621464827",
        b"iamat kiwi +34.068930-118.445127 1621464827",  # command words are in capitals
        b"IAMATkiwi +34.068930-118.445127 1621464827",
        b"AT Bailey +0.263873497 kiwi +34.068930-118.445127 1621464827",  # not a client command
    ],
)
def test_iamat_rejects_field_counts_and_words(line: bytes) -> None:
    with pytest.raises(WireError):
        parse_client_line(line)


@pytest.mark.parametrize(
    "line",
    [
        b"IAMAT  kiwi   +34.068930-118.445127    1621464827.5",
        b"IAMAT\tkiwi\t+34.068930-118.445127\t1621464827.5",
        b"  \t IAMAT \t\t kiwi \x0b +34.068930-118.445127\x0c1621464827.5 \t ",
        b"IAMAT kiwi +34.068930-118.445127 1621464827.5\r",
        b"IAMAT kiwi\r+34.068930-118.445127 1621464827.5",
    ],
)
def test_iamat_whitespace_runs_and_tabs(line: bytes) -> None:
    assert iamat(b"kiwi", b"+34.068930-118.445127", b"1621464827.5") == parse_client_line(line)


@pytest.mark.parametrize(
    "client", [b"\xff\xfe\x80", b"caf\xc3\xa9", b"\xc3", b"\xe2\x98\x83\x00\x01", b"a?b:c/#"]
)
def test_iamat_client_ids_are_kept_verbatim(client: bytes) -> None:
    report = iamat(client, b"+34.068930-118.445127", b"1621464827")
    assert report.client == client
    at = format_at(b"Bailey", 1621464828_000000000, report)
    assert at.line == b"AT Bailey +1.000000000 " + client + b" +34.068930-118.445127 1621464827"


@given(client_ids, positions, times(), separators, separators, separators)
def test_iamat_any_valid_fields_parse(
    client: bytes, position: bytes, time: bytes, sep1: bytes, sep2: bytes, sep3: bytes
) -> None:
    line = b"IAMAT" + sep1 + client + sep2 + position + sep3 + time
    report = parse_client_line(line)
    assert isinstance(report, IAmAt)
    assert (report.client, report.position, report.time) == (client, position, time)
    assert -90.0 <= report.latitude <= 90.0
    assert -180.0 <= report.longitude <= 180.0


@pytest.mark.parametrize("line", [b"", b" ", b"\t \t", b"\r", b"\x0b\x0c  "])
def test_blank_lines_are_ignored(line: bytes) -> None:
    assert parse_client_line(line) is None
    assert parse_peer_line(line) is None


@pytest.mark.parametrize(
    "position",
    [b"+90.00000000000000001+0.0", b"-90.0000000000000000001+0.0", b"+0.0-180.00000000000001"],
)
def test_iamat_rejects_positions_just_out_of_range(position: bytes) -> None:
    with pytest.raises(WireError):
        parse_client_line(b"IAMAT kiwi " + position + b" 1621464827")


# The three grammars ISO 6709 positions had before there was one parser: IAMAT's (bytes, range
# checked digit by digit), PROPOSE PLACE's shape (text) and the planning rules' range (Decimal).
_FORMER_IAMAT = re.compile(rb"([+-])([0-9]+)\.([0-9]+)([+-])([0-9]+)\.([0-9]+)\Z")
_FORMER_PLANNING = re.compile(r"([+-][0-9]+\.[0-9]+)([+-][0-9]+\.[0-9]+)\Z")


def _former_rules(text: str) -> tuple[float, float] | None:
    match = _FORMER_PLANNING.match(text)
    if match is not None and abs(Decimal(match[1])) <= 90 and abs(Decimal(match[2])) <= 180:
        return float(match[1]), float(match[2])
    return None


near_positions = st.one_of(
    positions,
    st.builds(lambda lat, lon: lat + lon, coordinates(180), coordinates(400)),
    st.binary(max_size=24).map(lambda junk: junk.replace(b"\n", b"")),
    st.lists(st.sampled_from(b"+-.0123456789e\xd9\xa3 "), max_size=24).map(bytes),
)


@given(near_positions)
def test_one_iso6709_parser_accepts_what_each_former_grammar_did(field: bytes) -> None:
    """IAMAT, PROPOSE PLACE's shape and the rules' range: same accepts, same coordinates."""
    text = client_text(field)
    assert looks_like_iso6709(field) == (_FORMER_PLANNING.match(text) is not None)
    assert looks_like_iso6709(field) == (_FORMER_IAMAT.match(field) is not None)
    try:
        parsed: tuple[float, float] | None = iso6709_position(field)
    except WireError:
        parsed = None
    assert parsed == _former_rules(text)
    if parsed is not None:
        assert looks_like_iso6709(field)


# --- WHATSAT ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("radius", "radius_km"),
    [
        (b"50", 50.0),
        (b"50.0", 50.0),
        (b"050.000", 50.0),
        (b"10", 10.0),
        (b"0.5", 0.5),
        (b"0.0001", 0.0001),
        (b"49.99999", 49.99999),
    ],
)
def test_whatsat_valid_radius(radius: bytes, radius_km: float) -> None:
    assert whatsat(radius, b"5").radius_km == radius_km


@pytest.mark.parametrize(
    "radius",
    [
        b"0",
        b"0.0",
        b"000",
        b"50.0001",
        b"50.000000001",
        b"51",
        b"100",
        b"+10",
        b"-10",
        b"1e1",
        b"1E1",
        b"10.",
        b".5",
        b"0x10",
        b"inf",
        b"nan",
        b"1_0",
    ],
)
def test_whatsat_rejects_radius(radius: bytes) -> None:
    with pytest.raises(WireError):
        parse_client_line(b"WHATSAT kiwi " + radius + b" 5")


@pytest.mark.parametrize(
    ("count", "max_items"),
    [(b"0", 0), (b"00", 0), (b"5", 5), (b"05", 5), (b"020", 20), (b"20", 20), (b"0000019", 19)],
)
def test_whatsat_valid_count(count: bytes, max_items: int) -> None:
    assert whatsat(b"10", count).max_items == max_items


@pytest.mark.parametrize(
    "count", [b"21", b"021", b"100", b"+5", b"-0", b"5.0", b"5.", b"1e1", b"0x5", b"\xd9\xa5"]
)
def test_whatsat_rejects_count(count: bytes) -> None:
    with pytest.raises(WireError):
        parse_client_line(b"WHATSAT kiwi 10 " + count)


@given(st.integers(0, 20), leading_zeros, st.integers(1, 50000), st.integers(0, 4))
def test_whatsat_accepts_every_value_in_range(
    count: int, zeros: bytes, milli: int, decimals: int
) -> None:
    whole, fraction = divmod(milli, 1000)
    radius = b"%d.%03d" % (whole, fraction) + b"0" * decimals
    query = whatsat(radius, zeros + b"%d" % count)
    assert query.max_items == count
    assert query.radius_km == pytest.approx(milli / 1000)


@pytest.mark.parametrize(
    "line",
    [
        b"WHATSAT",
        b"WHATSAT kiwi",
        b"WHATSAT kiwi 10",
        b"WHATSAT kiwi 10 5 extra",
        b"whatsat kiwi 10 5",
    ],
)
def test_whatsat_rejects_field_counts(line: bytes) -> None:
    with pytest.raises(WireError):
        parse_client_line(line)


def test_whatsat_example() -> None:
    assert parse_client_line(b"WHATSAT\tkiwi.cs.ucla.edu  10 5") == WhatsAt(
        b"kiwi.cs.ucla.edu", 10.0, 5
    )


@pytest.mark.parametrize(
    ("radius", "valid"), [(b"50.000000000000000001", False), (b"0." + b"0" * 400 + b"1", True)]
)
def test_whatsat_radius_bounds_are_exact(radius: bytes, valid: bool) -> None:
    line = b"WHATSAT kiwi " + radius + b" 5"
    if valid:
        assert isinstance(parse_client_line(line), WhatsAt)
    else:
        with pytest.raises(WireError):
            parse_client_line(line)


# --- STATUS and HERD-HELLO -------------------------------------------------------------------


def test_status() -> None:
    assert parse_client_line(b"STATUS") == Status()
    assert parse_client_line(b" STATUS \r") == Status()
    with pytest.raises(WireError):
        parse_client_line(b"STATUS Bailey")


@given(token_bytes, token_bytes, hex_fields)
def test_hello_round_trip(sender: bytes, receiver: bytes, nonce: bytes) -> None:
    hello = Hello(sender, receiver, nonce)
    line = hello.to_line()
    assert line.endswith(b"\n")
    assert b"\n" not in line[:-1]
    assert parse_client_line(line[:-1]) == hello


@pytest.mark.parametrize(
    "line",
    [
        b"HERD-HELLO Bailey Bona",
        b"HERD-HELLO Bailey Bona 0123456789ABCDEF",  # lowercase hex only
        b"HERD-HELLO Bailey Bona 0123456789abcde",  # 16 digits at least
        b"HERD-HELLO Bailey Bona " + b"a" * 129,
        b"HERD-HELLO Bailey Bona 0123456789abcdeg",
        b"HERD-HELLO Bailey Bona 0123456789abcdef extra",
    ],
)
def test_hello_rejects(line: bytes) -> None:
    with pytest.raises(WireError):
        parse_client_line(line)


@pytest.mark.parametrize(
    "hello",
    [
        Hello(b"Bai ley", b"Bona", b"0123456789abcdef"),
        Hello(b"Bailey", b"", b"0123456789abcdef"),
        Hello(b"Bailey", b"Bon\xc3\xa1", b"0123456789abcdef"),
        Hello(b"Bailey", b"Bona", b"0123456789ABCDEF"),
    ],
)
def test_hello_to_line_validates(hello: Hello) -> None:
    with pytest.raises(WireError):
        hello.to_line()


def test_peer_words_are_not_client_commands() -> None:
    for line in (b"PING", b"PONG", b"SYNC a b 0", b"HERD-AUTH " + b"a" * 64):
        with pytest.raises(WireError):
            parse_client_line(line)


# --- diff_field ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("received_ns", "time", "diff"),
    [
        (1621464828_223372000, b"1621464827.959498503", b"+0.263873497"),
        (1621464828_223372000, b"1621464827.959498614", b"+0.263873386"),
        (1621464827_000000000, b"1621464839.000000001", b"-12.000000001"),
        (1621464827_000000000, b"1621464827", b"+0.000000000"),
        (1621464827_000000000, b"1621464827.000000000000", b"+0.000000000"),
        (1621464827_500000000, b"1621464827", b"+0.500000000"),
        (1621464827_500000000, b"0001621464827", b"+0.500000000"),
        (5_000000000, b"1621464827", b"-1621464822.000000000"),
        (1621464827_000000000, b"0", b"+1621464827.000000000"),
        (1, b"0.000000002", b"-0.000000001"),
        # rounding at the 10th decimal: the exact difference to the nearest nanosecond
        (1_000000000, b"0.0000000004", b"+1.000000000"),
        (1_000000000, b"0.00000000049999999", b"+1.000000000"),
        (1_000000000, b"0.0000000006", b"+0.999999999"),
        (1_000000000, b"0.00000000050000001", b"+0.999999999"),
        (1_000000000, b"0.0000000005", b"+0.999999999"),  # a tie rounds the client time up
        (0, b"0.0000000004", b"+0.000000000"),  # never "-0.000000000"
        (0, b"0.0000000006", b"-0.000000001"),
        (0, b"0.0000000005", b"-0.000000001"),
        (0, b"1.9999999999", b"-2.000000000"),
    ],
)
def test_diff_field_examples(received_ns: int, time: bytes, diff: bytes) -> None:
    assert diff_field(received_ns, time) == diff
    assert exact_diff(received_ns, time) == diff


@given(st.integers(0, 10**20), times())
def test_diff_field_is_exact(received_ns: int, time: bytes) -> None:
    diff = diff_field(received_ns, time)
    assert DIFF.match(diff) is not None  # sign always shown, 9 decimals, never an exponent
    assert diff != b"-0.000000000"
    assert diff == exact_diff(received_ns, time)


@given(st.integers(0, 10**19), st.integers(0, 10**19))
def test_diff_field_of_whole_nanoseconds(received_ns: int, client_ns: int) -> None:
    time = b"%d.%09d" % divmod(client_ns, 10**9)
    delta = received_ns - client_ns
    expected = b"%s%d.%09d" % ((b"-" if delta < 0 else b"+"), *divmod(abs(delta), 10**9))
    assert diff_field(received_ns, time) == expected


# --- time_key --------------------------------------------------------------------------------


@st.composite
def time_pairs(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """Two times, often equal as numbers but spelled differently (leading and trailing zeros)."""
    small = st.text("0159", min_size=1, max_size=4).map(str.encode)
    first_whole, first_fraction = draw(small), draw(st.none() | small)
    if draw(st.booleans()):
        second_whole, second_fraction = first_whole, first_fraction
    else:
        second_whole, second_fraction = draw(small), draw(st.none() | small)
    second_whole = draw(leading_zeros) + second_whole
    if second_fraction is not None or draw(st.booleans()):
        second_fraction = (second_fraction or b"0") + draw(leading_zeros)

    def spell(whole: bytes, fraction: bytes | None) -> bytes:
        return whole if fraction is None else whole + b"." + fraction

    return spell(first_whole, first_fraction), spell(second_whole, second_fraction)


def _decimal(time: bytes) -> Decimal:
    return Decimal(time.decode())


@given(time_pairs())
def test_time_key_orders_like_numbers(pair: tuple[bytes, bytes]) -> None:
    a, b = pair
    assert (time_key(a) < time_key(b)) == (_decimal(a) < _decimal(b))
    assert (time_key(a) == time_key(b)) == (_decimal(a) == _decimal(b))
    assert (time_key(a) > time_key(b)) == (_decimal(a) > _decimal(b))


@given(times(), times())
def test_time_key_orders_like_numbers_wide(a: bytes, b: bytes) -> None:
    assert (time_key(a) < time_key(b)) == (_decimal(a) < _decimal(b))
    assert (time_key(a) == time_key(b)) == (_decimal(a) == _decimal(b))


@pytest.mark.parametrize(
    ("smaller", "larger"),
    [
        (b"9", b"10"),
        (b"1.49", b"1.5"),
        (b"1.5", b"1.51"),
        (b"1.09", b"1.1"),
        (b"1621464827.959498503", b"1621464827.9594985031"),
        (b"1621464827.99999999999", b"1621464828"),
    ],
)
def test_time_key_examples(smaller: bytes, larger: bytes) -> None:
    assert time_key(smaller) < time_key(larger)


def test_time_key_equal_spellings() -> None:
    assert time_key(b"1.5") == time_key(b"1.50") == time_key(b"01.5") == time_key(b"001.500")
    assert time_key(b"7") == time_key(b"7.0") == time_key(b"07.000")


# --- AT lines: round trips -------------------------------------------------------------------


@given(servers, st.integers(0, 10**20), client_ids, positions, times())
def test_format_at_parse_at_round_trip(
    server: bytes, received_ns: int, client: bytes, position: bytes, time: bytes
) -> None:
    report = iamat(client, position, time)
    at = format_at(server, received_ns, report)
    assert at.line == b"AT %s %s %s %s %s" % (
        server,
        diff_field(received_ns, time),
        client,
        position,
        time,
    )
    parsed = parse_at(at.line.split())
    assert parsed == at
    assert parsed.line == at.line
    assert (parsed.client, parsed.position, parsed.time) == (client, position, time)


def test_format_at_example() -> None:
    report = iamat(b"kiwi.cs.ucla.edu", b"+34.068930-118.445127", b"1621464827.959498503")
    at = format_at(b"Bailey", 1621464828_223372000, report)
    assert at == At(
        b"Bailey",
        b"+0.263873497",
        b"kiwi.cs.ucla.edu",
        b"+34.068930-118.445127",
        b"1621464827.959498503",
        34.068930,
        -118.445127,
        b"AT Bailey +0.263873497 kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503",
    )


@pytest.mark.parametrize("server", [b"", b"Bai ley", b"Bail\xc3\xa9y", b"Bailey\n"])
def test_format_at_validates_server(server: bytes) -> None:
    report = iamat(b"kiwi", b"+34.068930-118.445127", b"1621464827")
    with pytest.raises(WireError):
        format_at(server, 0, report)


@pytest.mark.parametrize(
    "line",
    [
        b"AT Bailey +0.263873497 kiwi +34.068930-118.445127",
        b"AT Bailey +0.263873497 kiwi +34.068930-118.445127 1621464827 x",
        b"XT Bailey +0.263873497 kiwi +34.068930-118.445127 1621464827",
        b"AT Bailey 0.263873497 kiwi +34.068930-118.445127 1621464827",
        b"AT Bailey +0.26387349 kiwi +34.068930-118.445127 1621464827",
        b"AT Bailey +0.2638734970 kiwi +34.068930-118.445127 1621464827",
        b"AT Bailey +2.6e-1 kiwi +34.068930-118.445127 1621464827",
        b"AT Bailey +0.263873497 kiwi +94.068930-118.445127 1621464827",
        b"AT Bailey +0.263873497 kiwi +34.068930-118.445127 -1621464827",
    ],
)
def test_parse_at_rejects(line: bytes) -> None:
    with pytest.raises(WireError):
        parse_at(line.split())


# --- peer lines: round trips -----------------------------------------------------------------


@given(st.integers(0, 2**63), servers, st.integers(0, 10**20), client_ids, positions, times())
def test_update_round_trip(
    seq: int, server: bytes, received_ns: int, client: bytes, position: bytes, time: bytes
) -> None:
    update = Update(seq, format_at(server, received_ns, iamat(client, position, time)))
    line = update.to_line()
    assert line == b"U %d %s\n" % (seq, update.at.line)
    assert parse_peer_line(line[:-1]) == update


@given(token_bytes, token_bytes, st.integers(0, 2**63))
def test_sync_round_trip(instance: bytes, known: bytes, seq: int) -> None:
    sync = Sync(instance, known, seq)
    line = sync.to_line()
    assert line.endswith(b"\n")
    assert parse_peer_line(line[:-1]) == sync


@given(hex_fields, hex_fields)
def test_challenge_and_auth_round_trip(nonce: bytes, mac: bytes) -> None:
    challenge = Challenge(nonce, mac)
    assert challenge.to_line() == b"HERD-CHALLENGE %s %s\n" % (nonce, mac)
    assert parse_peer_line(challenge.to_line()[:-1]) == challenge
    auth = Auth(mac)
    assert auth.to_line() == b"HERD-AUTH %s\n" % mac
    assert parse_peer_line(auth.to_line()[:-1]) == auth


def test_ping_pong_round_trip() -> None:
    assert Ping().to_line() == b"PING\n"
    assert Pong().to_line() == b"PONG\n"
    assert parse_peer_line(b"PING") == Ping()
    assert parse_peer_line(b"PONG\r") == Pong()


def test_lease_round_trip() -> None:
    lease = Lease(b"Bona", 1_796_555_722_165_310_982)
    assert lease.to_line() == b"LEASE Bona 1796555722165310982\n"
    assert parse_peer_line(lease.to_line()[:-1]) == lease


@pytest.mark.parametrize(
    "line", [b"LEASE", b"LEASE Bona", b"LEASE Bona -1", b"LEASE Bona 1.5", b"LEASE Bona 1 2"]
)
def test_parse_peer_line_rejects_a_bad_lease(line: bytes) -> None:
    with pytest.raises(WireError):
        parse_peer_line(line)


def test_peer_line_examples() -> None:
    at = b"AT Bailey +0.263873497 kiwi +34.068930-118.445127 1621464827.959498503"
    update = parse_peer_line(b"U 42 " + at)
    assert isinstance(update, Update)
    assert (update.seq, update.at.line) == (42, at)
    assert parse_peer_line(b"SYNC 9f3a77c2e1d04b56 - 0") == Sync(b"9f3a77c2e1d04b56", b"-", 0)


@pytest.mark.parametrize(
    "line",
    [
        b"U",
        b"U 1",
        b"U -1 AT Bailey +0.263873497 kiwi +34.068930-118.445127 1621464827",
        b"U x AT Bailey +0.263873497 kiwi +34.068930-118.445127 1621464827",
        b"U 1 AT Bailey +0.263873497 kiwi +34.068930-118.445127",
        b"SYNC a b",
        b"SYNC a b -1",
        b"SYNC a b 1.0",
        b"SYNC a b 1 2",
        b"HERD-CHALLENGE 0123456789abcdef",
        b"HERD-CHALLENGE 0123456789abcdef 0123456789ABCDEF",
        b"HERD-AUTH 0123",
        b"HERD-AUTH",
        b"PING x",
        b"PONG x",
        b"IAMAT kiwi +34.068930-118.445127 1621464827",
        b"ping",
    ],
)
def test_parse_peer_line_rejects(line: bytes) -> None:
    with pytest.raises(WireError):
        parse_peer_line(line)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Sync(b"a b", b"c", 0).to_line(),
        lambda: Sync(b"a", b"", 0).to_line(),
        lambda: Challenge(b"0123", b"0123456789abcdef").to_line(),
        lambda: Auth(b"0123456789abcdeF").to_line(),
    ],
)
def test_peer_to_line_validates(make: Callable[[], bytes]) -> None:
    with pytest.raises(WireError):
        make()


# --- robustness: any bytes give a command, None, or WireError --------------------------------

words = st.sampled_from(
    [
        b"IAMAT",
        b"WHATSAT",
        b"STATUS",
        b"HERD-HELLO",
        b"U",
        b"AT",
        b"SYNC",
        b"HERD-CHALLENGE",
        b"HERD-AUTH",
        b"PING",
        b"PONG",
        b"+34.068930-118.445127",
        b"+0.263873497",
        b"1621464827.959498503",
        b"50",
        b"020",
        b"0123456789abcdef",
        b"-",
        b".",
        b"+",
        b"1e5",
    ]
)
lines = st.binary(max_size=200).map(lambda data: data.replace(b"\n", b"")) | st.lists(
    words | st.binary(max_size=12), max_size=10
).map(b" ".join).map(lambda data: data.replace(b"\n", b""))


@given(lines)
def test_parse_client_line_never_raises_anything_else(line: bytes) -> None:
    try:
        command = parse_client_line(line)
    except WireError:
        return
    assert command is None or isinstance(command, IAmAt | WhatsAt | Status | Hello)
    assert (command is None) == (not line.split())


@given(lines)
def test_parse_peer_line_never_raises_anything_else(line: bytes) -> None:
    try:
        message = parse_peer_line(line)
    except WireError:
        return
    assert message is None or isinstance(message, PeerMessage)  # every peer line, DIGEST-END too
    assert (message is None) == (not line.split())


HUGE = b"0" * 4300 + b"5"  # plain digits, 4301 of them (Python's int() limit is 4300)


@pytest.mark.parametrize(
    ("parse", "line"),
    [
        (parse_client_line, b"WHATSAT kiwi 10 " + HUGE),
        (parse_peer_line, b"U " + HUGE + b" AT Bailey +0.000000000 kiwi +1.0+1.0 1"),
        (parse_peer_line, b"SYNC a b " + HUGE),
    ],
)
def test_huge_numbers_raise_only_wire_error(parse: Callable[[bytes], object], line: bytes) -> None:
    with contextlib.suppress(WireError):
        parse(line)


@pytest.mark.parametrize("time", [HUGE, b"1" * 4301, b"1" * 4301 + b".5"])
def test_huge_valid_time_is_rejected_or_handled(time: bytes) -> None:
    try:
        report = parse_client_line(b"IAMAT kiwi +34.068930-118.445127 " + time)
    except WireError:
        return
    assert isinstance(report, IAmAt)
    time_key(report.time)
    assert DIFF.match(diff_field(1621464827_000000000, report.time)) is not None


# --- replies ---------------------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_error_reply_echoes_exactly(line: bytes) -> None:
    assert error_reply(line) == b"? " + line + b"\n"


def test_error_reply_examples() -> None:
    assert error_reply(b"IAMAT kiwi") == b"? IAMAT kiwi\n"
    assert error_reply(b"  hello\tworld \r") == b"?   hello\tworld \r\n"
    assert error_reply(b"\xff\xfe") == b"? \xff\xfe\n"
    assert error_reply(b"") == b"? \n"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
answers = st.fixed_dictionaries(
    {
        "html_attributions": st.lists(st.text(), max_size=2),
        "results": st.lists(st.dictionaries(st.text(max_size=8), json_values), max_size=4),
        "status": st.sampled_from(["OK", "ZERO_RESULTS"]),
    }
)


@given(servers, st.integers(0, 10**20), client_ids, positions, times(), answers)
def test_format_whatsat_reply_shape(
    server: bytes,
    received_ns: int,
    client: bytes,
    position: bytes,
    time: bytes,
    answer: dict[str, object],
) -> None:
    at_line = format_at(server, received_ns, iamat(client, position, time)).line
    reply = format_whatsat_reply(at_line, answer)
    assert reply.startswith(at_line + b"\n{")
    assert reply.endswith(b"}\n\n")
    body = reply[len(at_line) + 1 : -2]
    assert b"\n\n" not in body
    assert json.loads(body) == answer


def test_format_whatsat_reply_example() -> None:
    at_line = b"AT Bailey +0.263873497 kiwi +34.068930-118.445127 1621464827.959498503"
    answer = {
        "html_attributions": [],
        "results": [{"name": "Café\nBleu", "types": ["cafe"]}],
        "status": "OK",
    }
    assert format_whatsat_reply(at_line, answer) == (
        at_line + b"\n"
        b"{\n"
        b'   "html_attributions": [],\n'
        b'   "results": [\n'
        b"      {\n"
        b'         "name": "Caf\xc3\xa9\\nBleu",\n'
        b'         "types": [\n'
        b'            "cafe"\n'
        b"         ]\n"
        b"      }\n"
        b"   ],\n"
        b'   "status": "OK"\n'
        b"}\n"
        b"\n"
    )


def test_format_whatsat_reply_empty() -> None:
    answer = {"html_attributions": [], "results": [], "status": "ZERO_RESULTS"}
    reply = format_whatsat_reply(b"AT x +0.000000000 k +1.0+1.0 1", answer)
    assert reply == (
        b"AT x +0.000000000 k +1.0+1.0 1\n"
        b'{\n   "html_attributions": [],\n   "results": [],\n   "status": "ZERO_RESULTS"\n}\n\n'
    )


def test_iamat_field_order_is_fixed() -> None:
    # The same fields in another order are not an IAMAT.
    with pytest.raises(WireError):
        parse_client_line(b"IAMAT +34.068930-118.445127 kiwi 1621464827")
    with pytest.raises(WireError):
        parse_client_line(b"IAMAT kiwi 1621464827 +34.068930-118.445127")


def test_format_whatsat_reply_survives_any_decoded_json() -> None:
    answer = json.loads(
        '{"html_attributions": [], "results": [{"name": "\\ud800"}], "status": "OK"}'
    )
    reply = format_whatsat_reply(b"AT x +0.000000000 k +1.0+1.0 1", answer)
    assert reply.endswith(b"}\n\n")


# --- every command of the client port: parse(to_line(x)) == x --------------------------------

# A field as text: what a client id decodes to (any bytes without whitespace round-trip).
text_fields = client_ids.map(client_text)
# Free text: fields joined by single spaces (inner runs of whitespace are kept too, but a
# parser cannot tell leading or trailing whitespace from the gaps around the text).
free_texts = st.lists(text_fields, min_size=1, max_size=4).map(" ".join)
events = text_fields
radii = st.decimals(min_value=Decimal("0.001"), max_value=50, places=3).map(str)


def port_round_trip(command: object) -> None:
    line = command.to_line()  # type: ignore[attr-defined]
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_client_port_line(line[:-1]) == command


@given(client_ids, positions, times())
def test_iamat_round_trip(client: bytes, position: bytes, time: bytes) -> None:
    report = iamat(client, position, time)
    assert report.to_line() == b"IAMAT %s %s %s\n" % (client, position, time)
    port_round_trip(report)


@given(
    client_ids,
    st.decimals(min_value=Decimal("0.000001"), max_value=50, places=6),
    st.integers(0, 20),
)
def test_whatsat_round_trip(client: bytes, radius: Decimal, count: int) -> None:
    query = parse_client_line(b"WHATSAT %s %s %d" % (client, str(radius).encode(), count))
    assert isinstance(query, WhatsAt)
    port_round_trip(query)


def test_status_round_trip() -> None:
    assert Status().to_line() == b"STATUS\n"
    port_round_trip(Status())


@given(client_ids, client_ids)
def test_login_round_trip(user: bytes, token: bytes) -> None:
    port_round_trip(Login(client_text(user), client_text(token)))


@pytest.mark.parametrize(
    "command",
    [WhoAmI(), ShowUser(), ListEvents(), Unsubscribe(), Subscribe(None)],
)
def test_commands_without_fields_round_trip(command: object) -> None:
    port_round_trip(command)


@given(st.sampled_from([field for field in UserField if field is not UserField.TOKEN]), free_texts)
def test_user_set_and_unset_round_trip(field: UserField, value: str) -> None:
    port_round_trip(SetUser(field, value))
    port_round_trip(UnsetUser(field))


@given(text_fields)
def test_device_round_trip(client: str) -> None:
    port_round_trip(AddDevice(client))
    port_round_trip(RemoveDevice(client))


@given(events, free_texts, st.lists(text_fields, min_size=1, max_size=4).map(tuple))
def test_event_commands_round_trip(event: str, text: str, users: tuple[str, ...]) -> None:
    for command in (
        PlanEvent(text),
        InviteUsers(event, users),
        UninviteUsers(event, users),
        CommentOn(event, text),
        ReopenEvent(event),
        CancelEvent(event),
        ShowEvent(event),
        Suggest(event, None),
    ):
        port_round_trip(command)


@given(events, text_fields, text_fields, st.sampled_from(list(Choice)), radii)
def test_option_commands_round_trip(
    event: str, first: str, second: str, choice: Choice, radius: str
) -> None:
    port_round_trip(ProposeTime(event, first))
    port_round_trip(VoteOn(event, first, choice))
    port_round_trip(DecideEvent(event, first, second))
    port_round_trip(Suggest(event, radius))


@given(events, positions, free_texts)
def test_propose_place_round_trip(event: str, position: bytes, name: str) -> None:
    port_round_trip(ProposePlace(event, position.decode(), name))
    if parse_client_port_line(b"PROPOSE e PLACE " + client_bytes(name)) == ProposePlace(
        "e", None, name
    ):  # a name whose first word is not a position
        port_round_trip(ProposePlace(event, None, name))


printable = st.text(
    st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), min_size=1, max_size=16
).filter(lambda value: value == value.strip() and len(value.encode().split()) == 1)


@given(tokens, printable, tokens)
def test_notifier_commands_round_trip(since: str, jid: str, token: str) -> None:
    port_round_trip(Subscribe(since))
    port_round_trip(Link(jid))
    port_round_trip(OptOut(jid, token))


def test_notifier_commands_keep_their_shapes() -> None:
    for line in (b"SUBSCRIBE a b", b"UNSUBSCRIBE now", b"LINK", b"LINK a b", b"OPTOUT alice"):
        with pytest.raises(WireError):
            parse_client_port_line(line)


def test_the_client_port_table_holds_every_word() -> None:
    assert set(CLIENT_PORT) == {
        *(b"IAMAT WHATSAT STATUS HERD-HELLO".split()),
        *PLANNING_WORDS,
        *(b"SUBSCRIBE UNSUBSCRIBE LINK OPTOUT".split()),
    }


def test_replies() -> None:
    assert status_reply("Bailey", {"Bona": "up"}) == (
        b'STATUS {"server":"Bailey","peers":{"Bona":"up"}}\n'
    )
    assert subscribed_reply("alice", None) == b"SUBSCRIBED alice -\n"
    assert subscribed_reply("alice", "0001.n") == b"SUBSCRIBED alice 0001.n\n"
    assert linkcode_reply("ABCD-EFGH", 1700000000) == b"LINKCODE ABCD-EFGH 1700000000\n"
    assert optout_reply("alice") == b"OPTOUT alice\n"
    assert user_ok("alice") == b"OK alice\n"
    assert UNSUBSCRIBED == b"UNSUBSCRIBED\n"
    at = format_at(b"Bailey", 5_000_000_000, iamat(b"kiwi", b"+1.0-2.0", b"4"))
    assert at.to_line() == b"AT Bailey +1.000000000 kiwi +1.0-2.0 4\n"


# --- the peer link's anti-entropy lines, and its table ---------------------------------------

op_payloads = token_bytes


@given(
    st.sampled_from([b"AT", b"OP"]),
    servers,
    st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=64),
)
def test_digest_round_trip(kind: bytes, origin: bytes, sums: list[int]) -> None:
    digest = Digest(kind, origin, tuple(sums))
    assert parse_peer_line(digest.to_line()[:-1]) == digest


@given(st.integers(0, 10**19 - 1), servers, client_ids, positions, times(), op_payloads)
def test_records_and_updates_round_trip(
    seq: int, server: bytes, client: bytes, position: bytes, time: bytes, payload: bytes
) -> None:
    at = format_at(server, 1_621_464_827_000_000_000, iamat(client, position, time))
    for message in (
        Update(seq, at),
        OpUpdate(seq, payload),
        Record(at),
        OpRecord(payload),
        DigestEnd(),
    ):
        assert parse_peer_line(message.to_line()[:-1]) == message
    assert update_line(seq, at) == Update(seq, at).to_line()


def test_the_peer_link_table_holds_every_word() -> None:
    assert set(PEER_LINK) == set(
        b"U R DIGEST DIGEST-END SYNC HERD-CHALLENGE HERD-AUTH LEASE PING PONG".split()
    )
    assert set(OPERATOR) == {b"USER-ADD", b"USER-TOKEN"}
