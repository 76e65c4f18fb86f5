"""The bot's bookkeeping of strangers and presence, on times the test gives."""

from __future__ import annotations

import pytest

from notifier.contacts import LINK_ATTEMPTS, REMEMBERED, PresenceState, Strangers, presence_of


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
