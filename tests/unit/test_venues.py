"""Venue ranking and who is near, pure, against hand computation: on the equator (or a
meridian) a great-circle distance is R·Δ in radians, R = 6 371 008.8 m, so one degree is
111 195.0802 m.
"""

from __future__ import annotations

import math

import pytest

from herd.ops import Choice
from herd.venues import Venue, coming, leading_place, rank_venues, who_is_near
from herd.views import Event, PlaceOption, Status, TimeOption

DEGREE_M = 111_195.0802  # one degree of a great circle, by hand: 6371008.8 * pi / 180


def test_one_degree_by_hand() -> None:
    assert math.isclose(DEGREE_M, 6_371_008.8 * math.pi / 180, abs_tol=1e-4)


def test_rank_venues_against_hand_computed_distances() -> None:
    # Two people at 0°E and 4°E on the equator, and one more at 0°E.
    people = [(0.0, 0.0), (0.0, 0.0), (0.0, 4.0)]
    near_two = Venue("Near two", 0.0, 0.0)  # trips 0, 0, 4 degrees
    middle = Venue("Middle", 0.0, 2.0)  # trips 2, 2, 2 degrees
    far = Venue("Far", 0.0, 5.0)  # trips 5, 5, 1 degrees
    ranked = rank_venues([far, middle, near_two], people)
    assert [r.venue for r in ranked] == [near_two, middle, far]
    assert [r.total_m for r in ranked] == pytest.approx(
        [4 * DEGREE_M, 6 * DEGREE_M, 11 * DEGREE_M], abs=0.01
    )
    assert [r.max_m for r in ranked] == pytest.approx(
        [4 * DEGREE_M, 2 * DEGREE_M, 5 * DEGREE_M], abs=0.01
    )
    assert [r.rank_max for r in ranked] == [2, 1, 3]
    with pytest.raises(ValueError):
        rank_venues([far], [])


def test_rank_ties_are_deterministic() -> None:
    # Along a meridian: both venues are one degree from the single person.
    north, south = Venue("B", 1.0, 0.0), Venue("A", -1.0, 0.0)
    ranked = rank_venues([north, south], [(0.0, 0.0)])
    assert [r.venue for r in ranked] == [south, north]
    assert [r.rank_max for r in ranked] == [1, 2]
    assert ranked[0].total_m == pytest.approx(DEGREE_M, abs=0.01)


def test_who_is_near() -> None:
    positions = {"bob": (0.0, 0.01), "carol": (0.0, 0.02), "alice": (0.0, 0.0)}
    # 0.01 degree is 1.111951 km.
    assert who_is_near((0.0, 0.0), positions, 1.12) == ["alice", "bob"]
    assert who_is_near((0.0, 0.0), positions, 1.11) == ["alice"]


def event(votes: dict[str, dict[str, Choice]], decision: tuple[str, str] | None = None) -> Event:
    """Two times t1, t2 and three places p1-p3 (stamp order), voted on by bob, carol and dave."""
    times = tuple(TimeOption(f"t{n}", 1_796_493_600 + n, "alice", (n, f"t{n}")) for n in (1, 2))
    places = tuple(
        PlaceOption(f"p{n}", f"Place {n}", None, None, "alice", (10 + n, f"p{n}"))
        for n in (1, 2, 3)
    )
    status = Status.PLANNING if decision is None else Status.DECIDED
    invitees = ("bob", "carol", "dave")
    return Event("e1", "Dinner", "alice", status, decision, invitees, times, places, votes, ())


YES, MAYBE, NO = Choice.YES, Choice.MAYBE, Choice.NO


def test_coming_are_the_yes_of_the_decided_time_else_of_the_most_wanted() -> None:
    votes = {"t1": {"bob": YES}, "t2": {"bob": YES, "carol": YES, "dave": NO}}
    assert coming(event(votes)) == ("bob", "carol")
    assert coming(event(votes, decision=("t1", "p1"))) == ("bob",)
    assert coming(event({"t1": {"bob": YES}, "t2": {"carol": YES}})) == ("bob",)  # first of equals
    assert coming(event({})) == ()


def test_the_leading_place_by_yes_then_maybe_then_fewest_no() -> None:
    assert leading_place(event({"p2": {"bob": YES}, "p3": {"carol": YES, "dave": YES}})) == (
        event({}).place("p3")
    )
    tie_on_yes = {"p1": {"bob": YES, "dave": NO}, "p2": {"bob": YES, "carol": MAYBE}}
    assert leading_place(event(tie_on_yes)) == event({}).place("p2")
    fewer_no = {"p1": {"bob": NO, "carol": NO}, "p2": {"bob": NO}, "p3": {"bob": NO, "dave": NO}}
    assert leading_place(event(fewer_no)) == event({}).place("p2")
    assert leading_place(event({})) == event({}).place("p1")  # proposed first
    decided = event({"p3": {"bob": YES}}, decision=("t1", "p1"))
    assert leading_place(decided) == decided.place("p1")
