"""The location table's merge rule and replication log (docs/protocol.md §7).

Pure.  The oracle for "newer" is (client time as an exact `Decimal`, AT text as bytes).
"""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from herd.changes import op_server
from herd.records import Location, LocationTable, Outcome, location_key, op_origin
from herd.wire.client import At, IAmAt, format_at, parse_client_line

POSITION = b"+34.068930-118.445127"


def at(
    client: bytes,
    time: bytes,
    server: bytes = b"Bailey",
    received_ns: int = 1621464828_000000000,
    position: bytes = POSITION,
) -> At:
    report = parse_client_line(b"IAMAT %s %s %s" % (client, position, time))
    assert isinstance(report, IAmAt)
    return format_at(server, received_ns, report)


def newest(updates: list[At]) -> dict[bytes, bytes]:
    """The oracle: per client, the AT line of the update with the largest (time, line)."""
    best: dict[bytes, At] = {}
    for update in updates:
        current = best.get(update.client)
        if current is None or (Decimal(update.time.decode()), update.line) > (
            Decimal(current.time.decode()),
            current.line,
        ):
            best[update.client] = update
    return {client: update.line for client, update in best.items()}


def contents(table: LocationTable) -> dict[bytes, bytes]:
    return {location.at.client: location.at.line for location in table}


# Few clients, servers and times (some equal as numbers, spelled differently), so that
# collisions on the client and on the time are frequent.
updates = st.builds(
    at,
    client=st.sampled_from([b"kiwi", b"lemon", b"\xff\xfe"]),
    time=st.sampled_from([b"9", b"10", b"10.0", b"010", b"10.5", b"10.50", b"10.49", b"11"]),
    server=st.sampled_from([b"Bailey", b"Bona", b"Campbell"]),
    received_ns=st.sampled_from([9_000000000, 10_500000000, 11_000000000]),
    position=st.sampled_from([POSITION, b"-90.0+180.0"]),
)


# --- the merge rule --------------------------------------------------------------------------


def test_first_update_is_stored() -> None:
    table = LocationTable()
    update = at(b"kiwi", b"10")
    outcome, location = table.offer(update)
    assert outcome is Outcome.STORED
    assert location == Location(update, location_key(update), 1)
    assert table.get(b"kiwi") == location
    assert table.get(b"lemon") is None
    assert len(table) == 1
    assert table.last_seq == 1


def test_newer_time_wins_older_is_stale() -> None:
    table = LocationTable()
    old, new = at(b"kiwi", b"10"), at(b"kiwi", b"11")
    table.offer(old)
    outcome, location = table.offer(new)
    assert outcome is Outcome.STORED
    assert location.at == new
    outcome, location = table.offer(old)
    assert outcome is Outcome.STALE
    assert location.at == new  # the stale offer returns what is stored
    assert table.last_seq == 2  # a stale offer takes no sequence number


def test_time_is_compared_as_a_number_not_as_text() -> None:
    table = LocationTable()
    # b"9" > b"10" as text; 10 > 9 as numbers.
    table.offer(at(b"kiwi", b"10"))
    assert table.offer(at(b"kiwi", b"9"))[0] is Outcome.STALE
    # b"10.5" > b"10.49" both ways; b"10.5" < b"10.51" as numbers.
    table.offer(at(b"kiwi", b"10.5"))
    assert table.offer(at(b"kiwi", b"10.49"))[0] is Outcome.STALE
    assert table.offer(at(b"kiwi", b"10.51"))[0] is Outcome.STORED
    # Exact, even where floats would blur the two times into one.
    table = LocationTable()
    table.offer(at(b"kiwi", b"1621464827.0000000000000000002"))
    assert table.offer(at(b"kiwi", b"1621464827.0000000000000000001"))[0] is Outcome.STALE


def test_equal_time_larger_text_wins_either_way() -> None:
    a = at(b"kiwi", b"10", server=b"Bailey")
    b = at(b"kiwi", b"10", server=b"Bona")
    assert a.line < b.line
    for first, second in ((a, b), (b, a)):
        table = LocationTable()
        table.offer(first)
        table.offer(second)
        stored = table.get(b"kiwi")
        assert stored is not None
        assert stored.at == b


def test_equal_time_spelled_differently_larger_text_wins() -> None:
    a, b = at(b"kiwi", b"10.5"), at(b"kiwi", b"10.50")
    assert a.line < b.line
    for first, second in ((a, b), (b, a)):
        table = LocationTable()
        table.offer(first)
        table.offer(second)
        assert contents(table) == {b"kiwi": b.line}


def test_duplicate_is_stale() -> None:
    table = LocationTable()
    update = at(b"kiwi", b"10")
    table.offer(update)
    outcome, location = table.offer(update)
    assert outcome is Outcome.STALE
    assert location.seq == 1
    assert table.last_seq == 1


def test_is_newer_report_compares_time_only() -> None:
    table = LocationTable()
    assert table.is_newer_report(b"kiwi", b"10")  # unknown client
    table.offer(at(b"kiwi", b"10.5", server=b"Bailey"))
    assert table.is_newer_report(b"kiwi", b"10.51")
    assert table.is_newer_report(b"kiwi", b"11")
    assert not table.is_newer_report(b"kiwi", b"10.5")  # equal time: stale for its client
    assert not table.is_newer_report(b"kiwi", b"10.50")  # equal as a number
    assert not table.is_newer_report(b"kiwi", b"010.5")
    assert not table.is_newer_report(b"kiwi", b"10.49")
    assert not table.is_newer_report(b"kiwi", b"9")
    assert table.is_newer_report(b"lemon", b"0")


@given(updates, st.sampled_from([b"9", b"10", b"10.0", b"10.5", b"10.50", b"11", b"12"]))
def test_is_newer_report_is_time_greater(stored: At, time: bytes) -> None:
    table = LocationTable()
    table.offer(stored)
    expected = Decimal(time.decode()) > Decimal(stored.time.decode())
    assert table.is_newer_report(stored.client, time) == expected


@given(st.lists(updates, max_size=12), st.data())
def test_merge_in_any_order_gives_the_same_table(batch: list[At], data: st.DataObject) -> None:
    with_duplicates = batch + data.draw(
        st.lists(st.sampled_from(batch), max_size=4) if batch else st.just([])
    )
    first = data.draw(st.permutations(with_duplicates))
    second = data.draw(st.permutations(with_duplicates))
    tables = []
    for order in (first, second):
        table = LocationTable()
        for update in order:
            table.offer(update)
        tables.append(contents(table))
    assert tables[0] == tables[1] == newest(with_duplicates)


@given(st.lists(updates, max_size=12))
def test_offer_outcome_is_newer(batch: list[At]) -> None:
    table = LocationTable()
    seen: list[At] = []
    for update in batch:
        before = newest(seen).get(update.client)
        seen.append(update)
        outcome, location = table.offer(update)
        stored = outcome is Outcome.STORED
        assert stored == (before != update.line and newest(seen)[update.client] == update.line)
        assert location.at.line == newest(seen)[update.client]


# --- the replication log ---------------------------------------------------------------------


def _check_since(table: LocationTable) -> None:
    current = list(table)
    for seq in range(-1, table.last_seq + 2):
        expected = sorted((loc for loc in current if loc.seq > seq), key=lambda loc: loc.seq)
        assert table.since(seq) == expected


@given(st.lists(updates, max_size=20))
def test_since_gives_current_entries_newer_than_seq_oldest_first(batch: list[At]) -> None:
    table = LocationTable()
    last_stored: dict[bytes, int] = {}
    for update in batch:
        outcome, location = table.offer(update)
        if outcome is Outcome.STORED:
            assert location.seq == table.last_seq
            last_stored[update.client] = location.seq
        _check_since(table)
    assert {loc.at.client: loc.seq for loc in table} == last_stored
    assert table.since(0) == sorted(table, key=lambda loc: loc.seq)
    assert table.since(table.last_seq) == []
    if len(table):
        assert max(loc.seq for loc in table) == table.last_seq


def test_since_example_interleaved() -> None:
    table = LocationTable()
    table.offer(at(b"kiwi", b"1"))  # seq 1, superseded by 4
    table.offer(at(b"lemon", b"1"))  # seq 2
    table.offer(at(b"lime", b"1"))  # seq 3, superseded by 5
    table.offer(at(b"kiwi", b"2"))  # seq 4
    table.offer(at(b"lime", b"2"))  # seq 5
    table.offer(at(b"kiwi", b"1.5"))  # stale
    assert [(loc.at.client, loc.seq) for loc in table.since(0)] == [
        (b"lemon", 2),
        (b"kiwi", 4),
        (b"lime", 5),
    ]
    assert [(loc.at.client, loc.seq) for loc in table.since(2)] == [(b"kiwi", 4), (b"lime", 5)]
    assert [(loc.at.client, loc.seq) for loc in table.since(4)] == [(b"lime", 5)]
    assert table.since(5) == []


@given(st.lists(updates, max_size=20), st.data())
def test_restore_and_reorder_rebuild_the_same_log(batch: list[At], data: st.DataObject) -> None:
    original = LocationTable()
    history: list[Location] = []  # every location ever stored, superseded ones too
    for update in batch:
        outcome, location = original.offer(update)
        if outcome is Outcome.STORED:
            history.append(location)
    rows = data.draw(st.permutations(history))
    restored = LocationTable()
    for location in rows:
        restored.restore(location)
    restored.reorder()
    assert list(restored) == list(original)
    assert restored.last_seq == original.last_seq
    for seq in range(original.last_seq + 1):
        assert restored.since(seq) == original.since(seq)
    # New changes after a restart continue the sequence.
    outcome, location = restored.offer(at(b"fresh", b"1"))
    assert outcome is Outcome.STORED
    assert location.seq == original.last_seq + 1
    _check_since(restored)


def test_restore_of_current_rows_only() -> None:
    original = LocationTable()
    for client, time in ((b"kiwi", b"1"), (b"lemon", b"1"), (b"kiwi", b"2"), (b"lime", b"1")):
        original.offer(at(client, time))
    restored = LocationTable()
    for location in reversed(list(original)):
        restored.restore(location)
    restored.reorder()
    assert [loc.seq for loc in restored] == [2, 3, 4]
    assert restored.since(2) == original.since(2)
    assert restored.last_seq == 4


def test_an_ops_origin_is_the_server_that_made_it_even_when_its_name_has_dots() -> None:
    assert op_origin("A.abcdef.12") == b"A"
    assert op_origin("eu.west.q1w2e3.7") == b"eu.west"
    assert op_origin("eu.west.q1w2e3.7").decode() == op_server("eu.west.q1w2e3.7")
