"""Personal link tokens, web sessions and CSRF tokens (`herd.tokens`): whatever is changed in a
token, or whoever, whichever event or generation it is tried for, it opens nothing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herd.tokens import (
    MAX_SIGNED_TOKEN,
    USER_SCOPE,
    WebClaim,
    check_csrf,
    csrf_token,
    link_token,
    open_link,
    open_session,
    peer_mac,
    session_token,
    unsubscribe_token,
)

SECRET = b"the herd secret"
NOW = 1_796_000_000
LATER = NOW + 3600
ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)


def generations(**known: int) -> object:
    return lambda user: known.get(user)


def test_a_link_opens_its_event_for_its_user() -> None:
    token = link_token(SECRET, "bob", "B.1", LATER, 0)
    assert open_link(SECRET, token, "B.1", NOW, generations(bob=0)) == WebClaim(
        "bob", "B.1", LATER, 0
    )


@given(ids, ids, st.integers(0, 2**40), st.data())
def test_changing_any_character_of_a_link_breaks_it(
    user: str, event: str, generation: int, data: st.DataObject
) -> None:
    token = link_token(SECRET, user, event, LATER, generation)
    index = data.draw(st.integers(0, len(token) - 1))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_="
    replacement = data.draw(st.sampled_from(alphabet).filter(lambda c: c != token[index]))
    tampered = token[:index] + replacement + token[index + 1 :]
    assert open_link(SECRET, tampered, event, NOW, generations(**{user: generation})) is None


@given(ids, ids, st.binary(min_size=1, max_size=200))
def test_changing_any_byte_of_a_link_breaks_it(user: str, event: str, noise: bytes) -> None:
    import base64

    token = link_token(SECRET, user, event, LATER, 0)
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for position, flip in enumerate(noise):
        if flip:
            raw[position % len(raw)] ^= flip
    tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    if tampered != token:
        assert open_link(SECRET, tampered, event, NOW, generations(**{user: 0})) is None


def test_an_expired_link_opens_nothing() -> None:
    token = link_token(SECRET, "bob", "B.1", LATER, 0)
    assert open_link(SECRET, token, "B.1", LATER, generations(bob=0)) is None
    assert open_link(SECRET, token, "B.1", LATER - 1, generations(bob=0)) is not None


def test_a_link_for_another_event_or_unknown_user_opens_nothing() -> None:
    token = link_token(SECRET, "bob", "B.1", LATER, 0)
    assert open_link(SECRET, token, "B.2", NOW, generations(bob=0)) is None
    assert open_link(SECRET, token, "B.1", NOW, generations(alice=0)) is None


def test_a_revoked_link_opens_nothing() -> None:
    old = link_token(SECRET, "bob", "B.1", LATER, 0)
    assert open_link(SECRET, old, "B.1", NOW, generations(bob=1)) is None
    new = link_token(SECRET, "bob", "B.1", LATER, 1)
    assert open_link(SECRET, new, "B.1", NOW, generations(bob=1)) is not None


def test_another_secret_opens_nothing() -> None:
    token = link_token(SECRET, "bob", "B.1", LATER, 0)
    assert open_link(b"another secret", token, "B.1", NOW, generations(bob=0)) is None


def test_the_kinds_of_token_do_not_stand_in_for_each_other() -> None:
    claim = WebClaim("bob", "B.1", LATER, 0)
    link = link_token(SECRET, "bob", "B.1", LATER, 0)
    session = session_token(SECRET, claim)
    assert link != session
    assert open_session(SECRET, link, NOW) is None
    assert open_link(SECRET, session, "B.1", NOW, generations(bob=0)) is None
    assert open_session(SECRET, session, NOW) == claim
    # and none is another HMAC of the herd's (unsubscribe, peer handshake)
    assert unsubscribe_token(SECRET, "bob") not in (link, session)
    assert peer_mac(SECRET, b"dialer", b"A", b"B", b"1", b"2").decode() not in (link, session)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a",
        "=",
        "A" * (MAX_SIGNED_TOKEN + 1),
        "ÿÿÿÿ",
        "Ym9i",
        "Ym9iOkIuMTo5OTk5OTk5OTk5OjA",
        "%%%%",
    ],
)
def test_garbage_opens_nothing(token: str) -> None:
    assert open_link(SECRET, token, "B.1", NOW, generations(bob=0)) is None
    assert open_session(SECRET, token, NOW) is None


def test_a_user_scoped_session_allows_every_event() -> None:
    claim = WebClaim("bob", USER_SCOPE, LATER, 0)
    opened = open_session(SECRET, session_token(SECRET, claim), NOW)
    assert opened is not None and opened.allows("B.1") and opened.allows("C.7")
    assert not WebClaim("bob", "B.1", LATER, 0).allows("B.2")


def test_signing_refuses_what_would_not_parse_back() -> None:
    for user, scope in (("bo:b", "B.1"), ("bob", "B:1"), ("", "B.1"), ("bob", "")):
        with pytest.raises(ValueError):
            link_token(SECRET, user, scope, LATER, 0)
    with pytest.raises(ValueError):
        link_token(SECRET, "bob", "B.1", LATER, -1)


def test_the_csrf_token_is_bound_to_its_session() -> None:
    one = session_token(SECRET, WebClaim("bob", "B.1", LATER, 0))
    two = session_token(SECRET, WebClaim("bob", "B.1", LATER + 1, 0))
    token = csrf_token(SECRET, one)
    assert check_csrf(SECRET, one, token)
    assert not check_csrf(SECRET, two, token)
    assert not check_csrf(SECRET, one, "")
    assert not check_csrf(SECRET, one, token[:-1])
    assert not check_csrf(SECRET, one, token + "A")
    assert not check_csrf(SECRET, one, "é" * len(token))
    assert not check_csrf(b"another", one, token)
