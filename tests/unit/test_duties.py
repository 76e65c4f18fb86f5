"""Which server sends what is held for a user (pure): the one holding their duties, home first;
a server back from a crash leaves to the others what fell to them while it was away."""

from __future__ import annotations

from herd.leases import Leases, LeaseSettings
from herd.ops import OPERATOR, AddUser, Op
from notifier.duties import Duties

S = 10**9
SETTINGS = LeaseSettings(renew=10.0, valid=30.0)
START = 1_000 * S
SERVERS = ("A", "B")


def added(user: str, server: str, time_ns: int) -> Op:
    return Op(f"{server}.x.1", time_ns, OPERATOR, AddUser(user))


def duties_of(own: str, alive_ns: int | None = None, *ops: Op, peer_seen_ns: int = 0) -> Duties:
    """This server's duties; the other server's lease was last renewed at `peer_seen_ns` (0:
    not since the start)."""
    leases = Leases(own, SERVERS, SETTINGS, START)
    if peer_seen_ns:
        (peer,) = set(SERVERS) - {own}
        leases.offer(peer, peer_seen_ns, peer_seen_ns)
    return Duties(own, leases, START, alive_ns, ops)


def test_the_home_server_owes_its_users_notices_and_the_other_does_not() -> None:
    later = START + 31 * S
    a = duties_of("A", None, added("ann", "A", 1))
    b = duties_of("B", None, added("ann", "A", 1), peer_seen_ns=later - S)
    assert a.owes("ann", later, later) and not b.owes("ann", later, later)
    assert a.mine("ann", later) and not b.mine("ann", later)


def test_a_silent_home_leaves_its_users_to_the_next_server() -> None:
    later = START + 31 * S
    b = duties_of("B", None, added("ann", "A", 1))
    assert b.owes("ann", later, later) and b.mine("ann", later)


def test_no_duty_before_the_start_grace() -> None:
    a = duties_of("A", None, added("ann", "A", 1))
    assert not a.mine("ann", START + 29 * S)


def test_the_earliest_user_add_names_the_home() -> None:
    later = START + 31 * S
    b = duties_of("B", None, added("ann", "A", 2), peer_seen_ns=later - S)
    assert not b.mine("ann", later)
    b.learn_user(added("ann", "B", 1))
    b.learn_user(added("ann", "A", 3))
    assert b.mine("ann", later)


def test_what_fell_to_another_server_while_this_one_was_away_is_left_to_it() -> None:
    alive = START - 300 * S  # renewed last five minutes before this start
    a = duties_of("A", alive, added("ann", "A", 1))
    away_from = alive + 40 * S  # the lease ran out, one renewal later
    now = START + 31 * S
    assert a.owes("ann", away_from, now)
    assert not a.owes("ann", away_from + 1, now)
    assert not a.owes("ann", START, now)
    assert a.owes("ann", START + 1, now)
