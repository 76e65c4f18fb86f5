"""100,000 random and mutated lines against one running server, checked reply by reply.

The lines go to Bailey over a few pipelined connections (a writer and a reader thread each).
Replies come in request order, so reply i answers line i.  An independent oracle, written from
docs/protocol.md §1-§5 rather than from herd/wire/, says what each line is:

- not a valid command: the reply must be exactly `? <line as received>`;
- a valid IAMAT: an AT line for that client; a new report's AT line has Bailey's name, a diff
  that is Bailey's receive time (between our write and our read) minus the client time, and the
  client's fields verbatim; a report not newer gets the stored AT line, byte for byte;
- a valid WHATSAT: the stored AT line and a places JSON, or `?` for an unknown client;
- STATUS: Bailey's STATUS line.

Each connection has client ids of its own (a prefix no few-byte mutation turns into another
connection's), whose state the oracle tracks exactly; other ids (made by mutations) are checked
as loosely as concurrency requires.  Bailey floods to Bona: at the end Bona holds the same lines.
"""

from __future__ import annotations

import json
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from fractions import Fraction
from pathlib import Path

import pytest

from tests.support.herd import Herd, running_herd
from tests.support.lines import Client, connect, exchange

SEED = 0x5EED_2024
LINES = 100_000
CONNECTIONS = 4
MAX_LINE = 65536
FUZZ_LINE = 1000  # every fuzzed line is shorter than this (and than max_line)
CHUNK = 32 * 1024
PREFIXES = (b"kqzvmwpx", b"bjhtrfly", b"ncgdsoua", b"wyeilkxq")
BASE_CLIENTS = 40

_DIGITS = re.compile(rb"[0-9]+\Z")
_DECIMAL = re.compile(rb"[0-9]+(?:\.[0-9]+)?\Z")
_POSITION = re.compile(rb"([+-][0-9]+\.[0-9]+)([+-][0-9]+\.[0-9]+)\Z")
_AT = re.compile(rb"AT (\S+) ([+-](?:0|[1-9][0-9]*)\.[0-9]{9}) (\S+) (\S+) (\S+)\Z")


# --- the oracle --------------------------------------------------------------------------------


class Kind(Enum):
    INVALID = "invalid"
    IAMAT = "iamat"
    WHATSAT = "whatsat"
    STATUS = "status"


@dataclass(frozen=True, slots=True)
class Expect:
    kind: Kind
    fields: tuple[bytes, ...] = ()
    # True where the server may refuse a line the contract calls valid (a known, pinned
    # deviation): then `? <line>` passes too.
    either: bool = False


def _in_range(text: bytes, bound: int) -> bool:
    """Whether the signed decimal `text` is within ±bound, exactly (no float rounding)."""
    return abs(Decimal(text.decode())) <= bound


def classify(line: bytes) -> Expect:
    """What docs/protocol.md says `line` (as the server received it) is."""
    fields = tuple(line.split())
    command, count = fields[0], len(fields)
    if command == b"STATUS" and count == 1:
        return Expect(Kind.STATUS, fields)
    if command == b"IAMAT" and count == 4:
        position = _POSITION.match(fields[2])
        if position is None or _DECIMAL.match(fields[3]) is None:
            return Expect(Kind.INVALID)
        valid = _in_range(position[1], 90) and _in_range(position[2], 180)
        if not valid:
            return Expect(Kind.INVALID)
        # herd/wire/ refuses a time of more than 19 whole digits, which the contract does
        # not (see test_times_of_more_than_19_digits_are_valid): either answer passes here.
        huge = len(fields[3].partition(b".")[0].lstrip(b"0")) > 19
        return Expect(Kind.IAMAT, fields, either=huge)
    if command == b"WHATSAT" and count == 4:
        if _DECIMAL.match(fields[2]) is None or _DIGITS.match(fields[3]) is None:
            return Expect(Kind.INVALID)
        if int(fields[3]) > 20:
            return Expect(Kind.INVALID)
        radius = Decimal(fields[2].decode())
        return Expect(Kind.WHATSAT if 0 < radius <= 50 else Kind.INVALID, fields)
    return Expect(Kind.INVALID)


def time_value(text: bytes) -> Fraction:
    return Fraction(text.decode())


# --- the line generator ------------------------------------------------------------------------

_WHITESPACE = (b" ", b"  ", b"\t", b" \t ", b"\x0b", b"\x0c", b"   \t\t")
_ODD_FIELDS = (
    b"",
    b"+",
    b"-",
    b"0",
    b"00",
    b"-0",
    b"1e5",
    b"inf",
    b"nan",
    b"NaN",
    b"+0.0",
    b".5",
    b"5.",
    b"0x1f",
    b"1_000",
    b"\x00",
    b"\x00\x00",
    b"\xff\xfe",
    b"\xc3\xa9",
    b"\xe2\x80\x8b",
    b"\xc2\xa0",
    b"\xc2\x85",
    b"\xed\xa0\x80",
    b"IAMAT",
    b"WHATSAT",
    b"STATUS",
    b"AT",
    b"?",
    b"U",
    b"SYNC",
    b"50",
    b"50.0",
    b"50.000001",
    b"0.0",
    b"0.000001",
    b"20",
    b"21",
    b"020",
    b"-1",
    b"+90.0+180.0",
    b"-90.0-180.0",
    b"+90.000001+0.0",
    b"+0.0-180.000001",
    b"+90.00000000000000001+0.0",
    b"+0.0+180.00000000000000001",
    b"+0090.0000-0180.0000",
    b"+1.0+1.0+1.0",
    b"++1.0+1.0",
    b"+1.0 +1.0",
    b"-0.0-0.0",
)


def _number(rng: random.Random) -> bytes:
    """A number, often huge, sometimes signed or with an exponent."""
    whole = b"".join(b"%d" % rng.randrange(10) for _ in range(rng.choice((1, 2, 5, 12, 40, 300))))
    text = whole
    if rng.random() < 0.5:
        text += b"." + b"".join(b"%d" % rng.randrange(10) for _ in range(rng.randrange(1, 30)))
    if rng.random() < 0.15:
        text = rng.choice((b"+", b"-")) + text
    if rng.random() < 0.05:
        text += rng.choice((b"e10", b"E-3", b"e"))
    return text


def _position(rng: random.Random) -> bytes:
    def part(limit: int) -> bytes:
        value = (
            rng.uniform(-limit - 2, limit + 2) if rng.random() < 0.2 else rng.uniform(-limit, limit)
        )
        digits = rng.randrange(0, 12)
        text = b"%+.*f" % (digits, value)
        if b"." not in text:
            text += b".0"
        if rng.random() < 0.1:
            text = text[:1] + b"0" * rng.randrange(1, 4) + text[1:]
        return text

    return part(90) + part(180)


def _time(rng: random.Random, base: int, index: int) -> tuple[bytes, bool]:
    """A time, and whether it is far from now (huge, or tiny)."""
    roll = rng.random()
    if roll < 0.4:
        # later than every other near time here: a new report for its client
        moment = b"%d.%03d%03d" % (base + 600 + index // 1000, index % 1000, rng.randrange(1000))
        return moment, False
    if roll < 0.7:
        return b"%d.%09d" % (base + rng.randrange(-50, 500), rng.randrange(10**9)), False
    if roll < 0.8:
        return b"%d" % (base + rng.randrange(-50, 500)), False
    if roll < 0.9:
        return _number(rng).lstrip(b"+-").split(b"e")[0].split(b"E")[0] or b"0", True
    return b"%d.%d" % (rng.randrange(10**12), rng.randrange(10**30)), True


def _client(rng: random.Random, prefix: bytes, far: bool = False) -> bytes:
    # clients that got a far-future time would make every later report of theirs stale
    return prefix + (b"-far-%d" if far else b"-%d") % rng.randrange(BASE_CLIENTS)


def _valid_line(rng: random.Random, prefix: bytes, base: int, index: int) -> bytes:
    roll = rng.random()
    if roll < 0.55:
        when, far = _time(rng, base, index)
        return b"IAMAT %s %s %s" % (_client(rng, prefix, far), _position(rng), when)
    if roll < 0.9:
        radius = rng.choice(
            (b"%d" % rng.randint(1, 50), b"%.3f" % rng.uniform(0.001, 50), b"0.5", b"050")
        )
        count = rng.choice((b"%d" % rng.randint(0, 20), b"0", b"00", b"20"))
        return b"WHATSAT %s %s %s" % (_client(rng, prefix), radius, count)
    if roll < 0.95:
        return b"STATUS"
    return bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 60)))


def _mutate(rng: random.Random, line: bytes) -> bytes:
    data = bytearray(line)
    for _ in range(rng.randint(1, 3)):
        roll = rng.random()
        where = rng.randrange(len(data) + 1)
        if roll < 0.15 and data:
            data[min(where, len(data) - 1)] ^= rng.randrange(1, 256)
        elif roll < 0.3:
            data[where:where] = bytes([rng.randrange(256)])
        elif roll < 0.4 and data:
            del data[min(where, len(data) - 1)]
        elif roll < 0.65:
            fields = bytes(data).split(b" ")
            index = rng.randrange(len(fields))
            fields[index] = rng.choice(_ODD_FIELDS) if rng.random() < 0.6 else _number(rng)
            data = bytearray(b" ".join(fields))
        elif roll < 0.75:
            fields = bytes(data).split(b" ")
            if rng.random() < 0.5 and len(fields) > 1:
                del fields[rng.randrange(len(fields))]
            else:
                fields.insert(rng.randrange(len(fields) + 1), rng.choice(_ODD_FIELDS))
            data = bytearray(b" ".join(fields))
        elif roll < 0.88:
            parts = bytes(data).split(b" ")
            data = bytearray(b"".join(p + rng.choice(_WHITESPACE) for p in parts[:-1]) + parts[-1])
            if rng.random() < 0.5:
                data[0:0] = rng.choice(_WHITESPACE)
            if rng.random() < 0.5:
                data += rng.choice(_WHITESPACE)
        elif roll < 0.94:
            data = bytearray(bytes(data).lower() if rng.random() < 0.5 else bytes(data).swapcase())
        else:
            data = data[: rng.randrange(len(data) + 1)]
    return bytes(data)


@dataclass(slots=True)
class Request:
    wire: bytes  # the bytes sent, terminator included
    received: bytes  # the line as the server sees it (terminator stripped)
    expect: Expect


def generate(rng: random.Random, prefix: bytes, count: int, base: int) -> list[Request]:
    requests: list[Request] = []
    # the connection's clients exist before the mutations start
    for index in range(BASE_CLIENTS):
        line = b"IAMAT %s-%d +34.068930-118.445127 %d.5" % (prefix, index, base - 1000)
        requests.append(Request(line + b"\n", line, classify(line)))
    while len(requests) < count:
        line = _valid_line(rng, prefix, base, len(requests))
        if rng.random() < 0.6:
            line = _mutate(rng, line)
        line = line.replace(b"\n", b"")
        line = line[:FUZZ_LINE]
        raw = line + b"\r" if rng.random() < 0.1 else line
        received = raw[:-1] if raw.endswith(b"\r") else raw
        fields = received.split()
        if not fields or fields[0] == b"HERD-HELLO":
            continue
        requests.append(Request(raw + b"\n", received, classify(received)))
    return requests


# --- running one connection --------------------------------------------------------------------


@dataclass(slots=True)
class Stream:
    prefix: bytes
    requests: list[Request]
    sent_ns: list[int] = field(default_factory=list)
    replies: list[tuple[bytes, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    done: bool = False


def _write(sock: socket.socket, stream: Stream) -> None:
    try:
        batch = bytearray()
        for request in stream.requests:
            stream.sent_ns.append(time.time_ns())
            batch += request.wire
            if len(batch) >= CHUNK:
                sock.sendall(batch)
                batch.clear()
        if batch:
            sock.sendall(batch)
    except OSError as error:
        stream.errors.append(f"writing: {error!r}")


def _read(sock: socket.socket, stream: Stream) -> None:
    """Split the reply stream by request: one line, or a whole WHATSAT reply.  Once every reply
    is in, nothing more may come (the connection stays open: no half-close here, see
    test_herd.py for that)."""
    buffer = b""
    start = 0
    index = 0
    requests = stream.requests
    try:
        while index < len(requests):
            chunk = sock.recv(1 << 16)
            now = time.time_ns()
            if not chunk:
                stream.errors.append(f"the server closed after {index} replies")
                return
            buffer = buffer[start:] + chunk
            start = 0
            while index < len(requests):
                end = buffer.find(b"\n", start)
                if end < 0:
                    break
                if requests[index].expect.kind is Kind.WHATSAT and buffer.startswith(b"AT ", start):
                    end = buffer.find(b"\n\n", end)
                    if end < 0:
                        break
                    end += 1
                stream.replies.append((buffer[start : end + 1], now))
                start = end + 1
                index += 1
        sock.settimeout(0.2)
        try:
            extra = buffer[start:] + sock.recv(1 << 16)
        except TimeoutError:
            extra = buffer[start:]
        if extra:
            stream.errors.append(f"bytes after the last reply: {extra[:200]!r}")
        stream.done = True
    except OSError as error:
        stream.errors.append(f"reading after {index} replies: {error!r}")


def run_streams(port: int, streams: list[Stream], timeout: float) -> None:
    sockets = [connect(port, timeout) for _ in streams]
    threads: list[threading.Thread] = []
    try:
        for sock, stream in zip(sockets, streams, strict=True):
            for target in (_write, _read):
                thread = threading.Thread(target=target, args=(sock, stream), daemon=True)
                thread.start()
                threads.append(thread)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(thread.is_alive() for thread in threads), "the streams did not finish"
    finally:
        for sock in sockets:
            sock.close()


# --- checking ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Checker:
    """Checks one stream's replies; `stored` is that stream's own clients' AT lines."""

    stream: Stream
    stored: dict[bytes, bytes] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def own(self, client: bytes) -> bool:
        return client.startswith(self.stream.prefix)

    def fail(self, index: int, why: str) -> None:
        request = self.stream.requests[index]
        reply = self.stream.replies[index][0] if index < len(self.stream.replies) else None
        self.problems.append(f"#{index} {request.wire!r} -> {reply!r}: {why}")

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def check(self) -> None:
        stream = self.stream
        for index, request in enumerate(stream.requests):
            if index >= len(stream.replies):
                self.fail(index, f"no reply (and {len(stream.requests) - index - 1} more)")
                return
            reply, received_ns = stream.replies[index]
            expect = request.expect
            error = b"? " + request.received + b"\n"
            if reply.startswith(b"? "):
                if reply != error:
                    self.fail(index, "an error reply must echo the line exactly")
                elif expect.kind is Kind.INVALID or expect.either:
                    self.count("error")
                elif expect.kind is Kind.WHATSAT and not self._known(expect.fields[1]):
                    self.count("whatsat-unknown")
                else:
                    self.fail(index, f"a valid {expect.kind.value} was refused")
                continue
            if expect.kind is Kind.INVALID:
                self.fail(index, "an invalid line must get `? <line>`")
            elif expect.kind is Kind.STATUS:
                self._status(index, reply)
            elif expect.kind is Kind.IAMAT:
                self._iamat(index, reply, stream.sent_ns[index], received_ns)
            else:
                self._whatsat(index, reply)
            if len(self.problems) > 30:
                return

    def _known(self, client: bytes) -> bool:
        """Whether the client must be known: only this connection's own ids are tracked (another
        connection may have made any other id, or not)."""
        return self.own(client) and client in self.stored

    def _status(self, index: int, reply: bytes) -> None:
        if not reply.startswith(b"STATUS ") or reply.count(b"\n") != 1:
            self.fail(index, "not a STATUS line")
            return
        answer = json.loads(reply[len(b"STATUS ") :])
        if answer.get("server") != "Bailey" or set(answer.get("peers", {})) != {"Bona"}:
            self.fail(index, "STATUS names the wrong server or peers")
        self.count("status")

    def _iamat(self, index: int, reply: bytes, sent_ns: int, received_ns: int) -> None:
        _, client, position, when = self.stream.requests[index].expect.fields
        match = _AT.match(reply[:-1]) if reply.endswith(b"\n") else None
        if match is None or match[3] != client:
            self.fail(index, "not an AT line for this client")
            return
        server, diff, _, stored_position, stored_time = match.groups()
        previous = self.stored.get(client)
        fresh = (server, stored_position, stored_time) == (b"Bailey", position, when)
        if self.own(client):
            newer = previous is None or time_value(when) > time_value(previous.split()[5])
            if not newer:
                if reply[:-1] != previous:
                    self.fail(index, f"a stale report must get the stored line {previous!r}")
                self.count("iamat-stale")
                return
            if not fresh:
                self.fail(index, "a newer report must get a new AT line with its own fields")
                return
        elif not fresh:
            if time_value(stored_time) < time_value(when):
                self.fail(index, "answered with an older stored line")
            self.count("iamat-foreign-stale")
            return
        # a new AT line: diff = Bailey's receive time - client time, to the nanosecond
        received = time_value(diff) + time_value(when)
        slack = Fraction(1, 10**9)
        if not (
            Fraction(sent_ns, 10**9) - slack <= received <= Fraction(received_ns, 10**9) + slack
        ):
            self.fail(index, f"diff {diff!r} is not receive time - client time")
        if self.own(client):
            self.stored[client] = reply[:-1]
        self.count("iamat-new")

    def _whatsat(self, index: int, reply: bytes) -> None:
        _, client, _, count = self.stream.requests[index].expect.fields
        first, _, body = reply.partition(b"\n")
        match = _AT.match(first)
        if match is None or match[3] != client:
            self.fail(index, "a WHATSAT reply must start with the client's AT line")
            return
        if self.own(client) and first != self.stored.get(client):
            self.fail(index, f"WHATSAT must repeat the stored line {self.stored.get(client)!r}")
            return
        if not body.endswith(b"}\n\n") or b"\n\n" in body[:-2]:
            self.fail(index, "the JSON must end the reply with an empty line, no blank lines in it")
            return
        try:
            answer = json.loads(body)
        except ValueError:
            self.fail(index, "the places answer is not JSON")
            return
        results = answer.get("results")
        if (
            set(answer) != {"html_attributions", "results", "status"}
            or not isinstance(results, list)
            or len(results) > int(count)
            or answer["status"] not in ("OK", "ZERO_RESULTS")
            or (results and answer["status"] != "OK")
        ):
            self.fail(index, "not a Nearby Search answer cut to max_items")
            return
        self.count("whatsat")


# --- the test ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, places_seed: Path) -> Iterator[Herd]:
    """Bailey and Bona, linked: the fuzz goes to Bailey, the flood to Bona."""
    with running_herd(
        tmp_path_factory.mktemp("fuzz"),
        names=("Bailey", "Bona"),
        links=(("Bailey", "Bona"),),
        max_line=MAX_LINE,
        seed=places_seed,
    ) as herd:
        herd.up()
        herd.warm_up()
        yield herd


@pytest.mark.timeout(60)
def test_fuzzed_lines_get_a_valid_reply_or_their_echo_and_never_take_the_server_down(
    pair: Herd,
) -> None:
    rng = random.Random(SEED)
    base = int(time.time())
    per_stream = LINES // CONNECTIONS
    streams = [Stream(prefix, generate(rng, prefix, per_stream, base)) for prefix in PREFIXES]
    assert sum(len(stream.requests) for stream in streams) == LINES

    run_streams(pair.port("Bailey"), streams, timeout=45.0)

    problems: list[str] = []
    counts: dict[str, int] = {}
    checkers = []
    for stream in streams:
        problems += [f"{stream.prefix!r}: {error}" for error in stream.errors]
        if not stream.done:
            problems.append(f"{stream.prefix!r}: the replies did not all come")
        checker = Checker(stream)
        checker.check()
        checkers.append(checker)
        problems += [f"{stream.prefix!r} {problem}" for problem in checker.problems]
        for what, number in checker.counts.items():
            counts[what] = counts.get(what, 0) + number
    assert not problems, "\n".join(problems[:40])
    # the mix really exercised every kind of reply
    assert counts["error"] > 10_000 and counts["iamat-new"] > 5_000, counts
    assert counts["iamat-stale"] > 1_000 and counts["whatsat"] > 5_000, counts
    assert counts.get("status", 0) > 100, counts

    # still up, still whole, and the flood of every odd client id reached Bona byte for byte
    assert pair.running() == ["Bailey", "Bona"]
    assert exchange(pair.port("Bailey"), b"STATUS\n") == (
        b'STATUS {"server":"Bailey","peers":{"Bona":"up"}}\n'
    )
    expected = {client: line for checker in checkers for client, line in checker.stored.items()}
    pair.wait_converged(["Bailey", "Bona"], expected, timeout=10.0)
    for name in ("Bailey", "Bona"):
        assert b"Traceback" not in pair.stderr_path(name).read_bytes(), pair.diagnose(name)


@pytest.mark.timeout(30)
def test_numbers_of_thousands_of_digits_get_an_answer_not_a_dropped_connection(
    pair: Herd,
) -> None:
    """Fields far beyond Python's 4300-digit int() limit (max_line allows them here)."""
    herd = pair
    herd.iamat("Bailey", b"long-known", b"+1.0+1.0", b"1")
    lines = [
        b"IAMAT long-time +1.0+1.0 " + b"1" * 5000,
        b"IAMAT long-zeros +1.0+1.0 " + b"0" * 5000 + b"1",
        b"IAMAT long-fraction +1.0+1.0 1." + b"9" * 5000,
        b"IAMAT long-position +" + b"0" * 5000 + b"1.0+1.0 1",
        b"WHATSAT long-known 10 " + b"0" * 5000,
        b"WHATSAT long-known 10 " + b"1" * 5000,
        b"WHATSAT long-known 1" + b"0" * 5000 + b" 1",
    ]
    with Client(herd.port("Bailey")) as client:
        for line in lines:
            client.send(line + b"\n")
            first = client.line()
            if first.startswith(b"AT "):
                if line.startswith(b"WHATSAT"):
                    client.read_until(b"\n\n")
            else:
                assert first == b"? " + line + b"\n"
        assert client.request(b"STATUS").startswith(b"STATUS ")
