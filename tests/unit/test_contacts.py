"""The bot's bookkeeping of strangers and presence, on times the test gives."""

from __future__ import annotations

import pytest

from notifier.contacts import (
    LINK_ATTEMPTS,
    REMEMBERED,
    PresenceAsks,
    PresenceState,
    Strangers,
    presence_of,
)


def test_a_stranger_is_answered_once_per_cooldown() -> None:
    strangers = Strangers(cooldown=600.0)
    assert strangers.should_answer("eve@example.org", 0.0)
    assert not strangers.should_answer("eve@example.org", 1.0)
    assert not strangers.should_answer("eve@example.org", 599.0)
    assert strangers.should_answer("mallory@example.org", 599.0)  # each stranger on their own
    assert strangers.should_answer("eve@example.org", 600.0)
    assert not strangers.should_answer("eve@example.org", 1199.0)  # the cooldown began anew


def test_a_stranger_gets_a_few_link_attempts_per_cooldown() -> None:
    strangers = Strangers(cooldown=600.0)
    tries = [strangers.may_try_link("eve@example.org", float(n)) for n in range(LINK_ATTEMPTS + 2)]
    assert tries == [True] * LINK_ATTEMPTS + [False, False]
    assert strangers.may_try_link("mallory@example.org", 10.0)
    assert strangers.may_try_link("eve@example.org", 600.0)  # counted from the first attempt


def test_only_the_most_recently_seen_strangers_are_remembered() -> None:
    strangers = Strangers(cooldown=600.0)
    for n in range(REMEMBERED + 1):
        assert strangers.should_answer(f"bot{n}@example.org", 0.0)
    assert strangers.should_answer("bot0@example.org", 1.0)  # forgotten: answered again
    assert not strangers.should_answer(f"bot{REMEMBERED}@example.org", 1.0)


@pytest.mark.parametrize(
    ("shows", "state"),
    [
        ([], "unavailable"),
        ([""], "available"),
        (["chat"], "available"),
        (["away", "xa", "dnd"], "away"),
        (["dnd", ""], "available"),
    ],
)
def test_presence_is_the_most_available_device(shows: list[str], state: PresenceState) -> None:
    assert presence_of(shows) == state


def test_a_user_is_asked_for_their_presence_once_per_cooldown() -> None:
    asks = PresenceAsks(cooldown=100.0)
    assert asks.should_ask("alice@x", 0.0, receiving=False, pending=False)
    assert not asks.should_ask("alice@x", 1.0, receiving=False, pending=False)  # not every message
    assert not asks.should_ask("alice@x", 99.0, receiving=False, pending=False)
    assert asks.should_ask("bob@x", 1.0, receiving=False, pending=False)  # each user on their own
    assert asks.should_ask("alice@x", 100.0, receiving=False, pending=False)  # declined: once more


def test_no_ask_when_the_presence_is_seen_or_a_request_waits() -> None:
    asks = PresenceAsks(cooldown=100.0)
    assert not asks.should_ask("alice@x", 0.0, receiving=True, pending=False)
    assert not asks.should_ask("alice@x", 0.0, receiving=False, pending=True)
    # neither counted as asking: once they unsubscribe, they are asked at the next message
    assert asks.should_ask("alice@x", 1.0, receiving=False, pending=False)


def test_presence_asks_forget_the_oldest_beyond_their_bound() -> None:
    asks = PresenceAsks(cooldown=100.0)
    for n in range(REMEMBERED + 1):
        assert asks.should_ask(f"u{n}@x", 0.0, receiving=False, pending=False)
    assert asks.should_ask("u0@x", 1.0, receiving=False, pending=False)  # forgotten: asked again
    assert not asks.should_ask(f"u{REMEMBERED}@x", 1.0, receiving=False, pending=False)
