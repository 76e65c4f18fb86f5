"""The one clock: a scheduler and its time in nanoseconds, from one source."""

from __future__ import annotations

from twisted.internet.task import Clock as Scheduler

from herd.clock import Clock


def test_a_clock_following_a_scheduler_reads_its_seconds_in_nanoseconds() -> None:
    scheduler = Scheduler()
    clock = Clock.following(scheduler)
    assert (clock.seconds(), clock.now_ns()) == (0.0, 0)
    scheduler.advance(1.5)
    assert (clock.seconds(), clock.now_ns()) == (1.5, 1_500_000_000)


def test_calls_run_on_the_scheduler_when_it_reaches_them() -> None:
    scheduler = Scheduler()
    clock = Clock.following(scheduler)
    ran: list[tuple[str, float]] = []
    clock.callLater(2, lambda word: ran.append((word, clock.seconds())), "due")
    scheduler.advance(1)
    assert ran == []
    scheduler.advance(1)
    assert ran == [("due", 2.0)]


def test_nanoseconds_from_their_own_source_stay_exact() -> None:
    """A real server's: `time.time_ns`, which a float of seconds cannot carry."""
    exact = 1_700_000_000_123_456_789
    clock = Clock(Scheduler(), lambda: exact)
    assert clock.now_ns() == exact
    assert round(exact / 10**9 * 10**9) != exact
