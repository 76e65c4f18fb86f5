"""The one retry policy: figures, caps and where jitter may put a delay."""

from __future__ import annotations

import pytest

from herd.backoff import Backoff


def test_the_delay_grows_by_the_factor_up_to_the_cap() -> None:
    backoff = Backoff(initial=0.5, factor=3.0, cap=10.0, jitter=0.0)
    assert [backoff.delay(n, 0.7) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10.0, 10.0]


def test_jitter_lengthens_a_delay_by_up_to_its_fraction() -> None:
    backoff = Backoff(initial=1.0, factor=2.0, cap=8.0, jitter=0.25)
    assert backoff.delay(2, 0.0) == 2.0
    assert backoff.delay(2, 0.5) == 2.25
    assert backoff.delay(2, 1.0) == 2.5
    assert backoff.delay(9, 1.0) == backoff.longest == 10.0


def test_a_first_delay_over_the_cap_is_capped() -> None:
    assert Backoff(initial=60.0, factor=2.0, cap=30.0, jitter=0.0).delay(1, 0.0) == 30.0


def test_no_failure_yet_counts_as_the_first() -> None:
    backoff = Backoff(initial=0.1, factor=2.0, cap=1.0, jitter=0.25)
    assert backoff.delay(0, 0.0) == backoff.delay(1, 0.0) == 0.1


def test_a_very_long_run_of_failures_stays_at_the_cap() -> None:
    backoff = Backoff(initial=1.0, factor=2.0, cap=300.0, jitter=1.0)
    assert backoff.delay(10**6, 1.0) == 600.0


@pytest.mark.parametrize(
    ("initial", "factor", "cap", "jitter"),
    [(-1.0, 2.0, 1.0, 0.0), (0.1, 2.0, -1.0, 0.0), (0.1, 0.5, 1.0, 0.0), (0.1, 2.0, 1.0, -0.1)],
)
def test_an_unusable_policy_is_refused(
    initial: float, factor: float, cap: float, jitter: float
) -> None:
    with pytest.raises(ValueError, match="not a usable backoff"):
        Backoff(initial=initial, factor=factor, cap=cap, jitter=jitter)


def test_each_caller_keeps_its_documented_figures() -> None:
    from herd.peers import DIAL_BACKOFF
    from notifier.channels.xmpp import RECONNECT_BACKOFF
    from notifier.outbox import OutboxSettings

    # Dialing a peer: 0.1 s doubling to 1 s, plus up to a quarter (docs/protocol.md §7.2).
    assert [DIAL_BACKOFF.delay(n, 0.0) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert DIAL_BACKOFF.longest == 1.25
    # The outbox: 1 s doubling to 5 min, never sooner than half of that (docs/operations.md).
    outbox = OutboxSettings().backoff
    assert [outbox.delay(n, 0.0) for n in (1, 2, 20)] == [0.5, 1.0, 150.0]
    assert [outbox.delay(n, 1.0) for n in (1, 2, 20)] == [1.0, 2.0, 300.0]
    # The Jabber bot: 0.5 s doubling to 30 s, between half and one and a half times that.
    assert [RECONNECT_BACKOFF.delay(n, 0.0) for n in (1, 2, 20)] == [0.25, 0.5, 15.0]
    assert [RECONNECT_BACKOFF.delay(n, 1.0) for n in (1, 2, 20)] == [0.75, 1.5, 45.0]
