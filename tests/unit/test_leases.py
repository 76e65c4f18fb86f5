"""Leases and duties: who holds a user's held notifications, on an injected clock."""

from __future__ import annotations

from herd.leases import Leases, LeaseSettings, duty_order

S = 10**9
SERVERS = ("Bailey", "Bona", "Campbell")
SETTINGS = LeaseSettings(renew=1.0, valid=3.0)


def view(own: str = "Campbell", at: int = 0) -> Leases:
    return Leases(own, SERVERS, SETTINGS, at)


def test_the_order_starts_at_home_and_wraps_around_the_config() -> None:
    assert duty_order(SERVERS, "Bona") == ("Bona", "Campbell", "Bailey")
    assert duty_order(SERVERS, "Bailey") == SERVERS
    assert duty_order(SERVERS, "Gone") == ("Gone", *SERVERS)


def test_every_server_is_deemed_alive_at_start_and_no_duty_is_taken_up_before_the_grace() -> None:
    leases = view()
    assert leases.responsible("Bona", 0) == "Bona"
    assert not leases.mine("Campbell", 0)  # its own users wait for the grace too
    assert leases.mine("Campbell", 3 * S)


def test_a_silent_home_hands_its_duties_to_the_next_alive_server() -> None:
    leases = view()
    assert leases.offer("Bona", 5, 1 * S)
    assert leases.responsible("Bona", 3 * S + S - 1) == "Bona"  # renewed at 1 s: valid to 4 s
    assert leases.responsible("Bona", 4 * S) == "Campbell"
    assert leases.mine("Bona", 4 * S)
    assert leases.responsible("Bailey", 4 * S) == "Campbell"  # Bailey silent since the start
    other = view("Bailey")
    assert other.responsible("Bona", 4 * S) == "Bailey"  # Campbell silent in Bailey's view
    assert other.offer("Campbell", 7, 4 * S)
    assert other.responsible("Bona", 4 * S) == "Campbell"  # both agree once leases cross


def test_a_returning_home_takes_its_duties_back_on_its_first_newer_lease() -> None:
    leases = view()
    leases.offer("Bona", 5, 0)
    assert leases.mine("Bona", 10 * S)
    assert not leases.offer("Bona", 5, 10 * S)  # the same value again (relayed): no news
    assert leases.mine("Bona", 10 * S)
    assert leases.offer("Bona", 6, 10 * S)
    assert not leases.mine("Bona", 10 * S)
    assert leases.responsible("Bona", 12 * S) == "Bona"


def test_only_newer_values_of_known_servers_are_taken_and_passed_on() -> None:
    leases = view()
    assert leases.offer("Bona", 9, 0)
    assert not leases.offer("Bona", 8, S)
    assert not leases.offer("Stranger", 1, 0)
    assert leases.entries() == [("Bona", 9)]


def test_a_previous_runs_value_for_this_server_makes_its_next_renewal_larger() -> None:
    leases = view()
    assert leases.renew(100) == 100
    assert not leases.offer("Campbell", 500, 0)  # never forwarded: this server speaks for itself
    assert leases.renew(200) == 501
    assert leases.renew(1000) == 1000
