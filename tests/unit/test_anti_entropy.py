"""The pure core of anti-entropy: incremental digests, differing buckets, the merge."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from herd.records import BUCKETS, DigestIndex, LocationTable, OpLog, Sequencer, bucket_of
from herd.wire.client import At, IAmAt, format_at

SERVERS = (b"A", b"B", b"C")


def at(server: bytes, client: bytes, seconds: int, received: int = 0) -> At:
    report = IAmAt(client, b"+1.0+1.0", b"%d.5" % seconds, 1.0, 1.0)
    return format_at(server, received, report)


records = st.lists(
    st.tuples(
        st.sampled_from(SERVERS),
        st.integers(0, 40).map(lambda n: b"client-%d" % n),
        st.integers(1, 5),
        st.integers(0, 3),
    ),
    max_size=60,
)


def table_of(entries: list[tuple[bytes, bytes, int, int]]) -> LocationTable:
    table = LocationTable()
    for server, client, seconds, received in entries:
        table.offer(at(server, client, seconds, received))
    return table


def exchange(sender: LocationTable, receiver: LocationTable) -> int:
    """`receiver` sent its digests; `sender` answers with the records of the buckets where
    its own differ, which the receiver merges.  How many records were sent."""
    sent = 0
    for origin, bucket in sender.digests.differing(receiver.digests.digests()):
        for location in sender.in_bucket(origin, bucket):
            receiver.offer(location.at)
            sent += 1
    return sent


def contents(table: LocationTable) -> dict[bytes, bytes]:
    return {location.at.client: location.at.line for location in table}


@settings(max_examples=300, deadline=None)
@given(common=records, only_a=records, only_b=records)
def test_after_one_exchange_each_way_two_replicas_hold_the_same_records(
    common: list[tuple[bytes, bytes, int, int]],
    only_a: list[tuple[bytes, bytes, int, int]],
    only_b: list[tuple[bytes, bytes, int, int]],
) -> None:
    a, b = table_of(common + only_a), table_of(common + only_b)
    union = table_of(common + only_a + only_b)
    exchange(b, a)
    exchange(a, b)
    assert contents(a) == contents(b) == contents(union)
    assert a.digests.digests() == b.digests.digests()
    assert exchange(a, b) == exchange(b, a) == 0, "in agreement: nothing more is sent"


@settings(max_examples=200, deadline=None)
@given(entries=records, order=st.randoms(use_true_random=False))
def test_digests_depend_on_what_is_held_not_on_the_order_it_came(
    entries: list[tuple[bytes, bytes, int, int]], order: object
) -> None:
    shuffled = list(entries)
    order.shuffle(shuffled)  # type: ignore[attr-defined]
    a, b = table_of(entries), table_of(shuffled)
    assert a.digests.digests() == b.digests.digests()
    fresh = DigestIndex()
    for location in a:
        fresh.toggle(location.at.server, location.at.client, location.at.line)
    assert fresh.digests() == a.digests.digests(), "incremental equals computed from scratch"


def test_a_truncated_record_differs_and_the_whole_one_replaces_it() -> None:
    whole = at(b"A", b"c", 1796600000)
    cut = At(
        *whole[:4], b"179660000", *whole[5:7], whole.line.replace(b"1796600000.5", b"179660000")
    )
    good, bad = LocationTable(), LocationTable()
    good.offer(whole)
    bad.offer(cut)
    assert list(good.digests.differing(bad.digests.digests())) == [(b"A", bucket_of(b"c"))]
    exchange(good, bad)
    assert contents(bad) == contents(good)


def test_a_record_over_the_limit_is_left_out_of_the_digests() -> None:
    table = LocationTable(max_record=60)
    table.offer(at(b"A", b"x" * 60, 1))
    assert len(table) == 1
    assert table.digests.digests() == {}
    table.offer(at(b"A", b"x" * 60, 2))  # replaced: nothing to take out either
    table.offer(at(b"A", b"short", 1))
    only_short = LocationTable()
    only_short.offer(at(b"A", b"short", 1))
    assert table.digests.digests() == only_short.digests.digests() != {}


def test_replacing_by_a_record_of_another_origin_moves_it_between_digests() -> None:
    table = LocationTable()
    table.offer(at(b"A", b"c", 1))
    table.offer(at(b"B", b"c", 2))
    assert set(table.digests.digests()) == {b"B"}
    assert table.in_bucket(b"A", bucket_of(b"c")) == []


@settings(max_examples=200, deadline=None)
@given(
    a_ids=st.sets(st.integers(0, 50), max_size=30),
    b_ids=st.sets(st.integers(0, 50), max_size=30),
)
def test_operations_missing_on_either_side_are_found(a_ids: set[int], b_ids: set[int]) -> None:
    def log_of(ids: set[int]) -> OpLog:
        log = OpLog(Sequencer())
        for n in sorted(ids):
            origin = SERVERS[n % len(SERVERS)].decode()
            log.add(f"{origin}.inst.{n}", b"{}")
        return log

    a, b = log_of(a_ids), log_of(b_ids)
    for sender, receiver in ((a, b), (b, a)):
        for origin, bucket in sender.digests.differing(receiver.digests.digests()):
            for logged in sender.in_bucket(origin, bucket):
                if logged.op_id not in receiver:
                    receiver.add(logged.op_id, logged.line)
    assert (
        set(a.ids())
        == set(b.ids())
        == {f"{SERVERS[n % 3].decode()}.inst.{n}" for n in a_ids | b_ids}
    )
    assert a.digests.digests() == b.digests.digests()
    assert all(len(sums) == BUCKETS for sums in a.digests.digests().values())
