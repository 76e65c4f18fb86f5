"""Every HMAC and scrypt use (`herd.tokens`): line tokens, peer MACs, unsubscribe tokens and link
codes.  Known answers pin each format to the byte: a token made before a change must still check
out after it."""

import hashlib
import hmac

import pytest

from herd.tokens import (
    LINK_WINDOW,
    auth_delay,
    check_link_code,
    hash_token,
    issue_link_code,
    link_code,
    new_nonce,
    new_token,
    peer_mac,
    unsubscribe_token,
    verify_token,
    verify_unsubscribe,
)

NOW = 1_796_400_000  # 2026-12-04T16:00:00Z, as in test_bot
NOW_NS = NOW * 10**9
SECRET = b"herd secret"


# --- line tokens ---------------------------------------------------------------------------------


def test_tokens_hash_and_verify() -> None:
    token = new_token(bytes(range(32)))
    assert token == "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
    stored = hash_token(token, b"salt" * 4)
    assert stored.startswith("scrypt$1024$8$1$73616c74")
    assert verify_token(stored, token)
    assert not verify_token(stored, token + "x")
    assert not verify_token(None, token)
    for broken in ("", "scrypt$1024$8$1$zz$00", "bcrypt$1$1$1$00$00", stored[:-2]):
        assert not verify_token(broken, token)
    greedy = stored.replace("scrypt$1024$", "scrypt$1048576$")  # a peer cannot make us slow
    assert not verify_token(greedy, token)
    with pytest.raises(ValueError):
        new_token(bytes(15))


def test_auth_delay_grows_then_stays() -> None:
    assert [auth_delay(n) for n in range(7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert auth_delay(10**6) == 8.0


# --- peer MACs -----------------------------------------------------------------------------------


def test_peer_macs_sign_the_role_both_names_and_both_nonces() -> None:
    mac = peer_mac(b"secret", b"dialer", b"Bona", b"Bailey", b"n" * 32, b"m" * 32)
    assert mac == b"575de2f50102ffde645d764c869f33ea6f34bb91208765404b6b6c8c3b2ba42c"
    message = b"renga-peer-v1|dialer|Bona|Bailey|" + b"n" * 32 + b"|" + b"m" * 32
    assert mac == hmac.new(b"secret", message, hashlib.sha256).hexdigest().encode()
    assert mac != peer_mac(b"secret", b"acceptor", b"Bona", b"Bailey", b"n" * 32, b"m" * 32)
    assert mac != peer_mac(b"other", b"dialer", b"Bona", b"Bailey", b"n" * 32, b"m" * 32)


def test_nonces_are_fresh_hex_fields() -> None:
    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(len(nonce) == 32 and int(nonce, 16) >= 0 for nonce in nonces)


# --- unsubscribe tokens --------------------------------------------------------------------------


def test_unsubscribe_tokens_are_bound_to_the_user_and_the_secret() -> None:
    token = unsubscribe_token(b"secret", "bob")
    assert token == "3l0Z7PDmLyLmZx1lnaM8ag"
    assert len(token) == 22 and token.isascii()
    assert verify_unsubscribe(b"secret", "bob", token)
    assert not verify_unsubscribe(b"secret", "alice", token)
    assert not verify_unsubscribe(b"other", "bob", token)
    assert not verify_unsubscribe(b"secret", "bob", token[:-1] + "A")


# --- link codes ----------------------------------------------------------------------------------


def test_link_codes_are_a_known_hmac() -> None:
    assert link_code(SECRET, "bob", "bob@example.org", 2948316) == "yr2d9yyg"


def test_link_codes_last_one_to_two_windows() -> None:
    start = (NOW // LINK_WINDOW) * LINK_WINDOW * 10**9
    code, expires = issue_link_code(SECRET, "bob", "bob@example.org", start)
    for offset_s in (0, LINK_WINDOW, 2 * LINK_WINDOW - 1):
        assert check_link_code(SECRET, "bob", "bob@example.org", code, start + offset_s * 10**9)
    assert expires * 10**9 == start + 2 * LINK_WINDOW * 10**9
    assert not check_link_code(SECRET, "bob", "bob@example.org", code, expires * 10**9)
    assert not check_link_code(b"other secret", "bob", "bob@example.org", code, start)


def test_link_codes_forgive_case_dashes_and_lookalikes() -> None:
    window = NOW // LINK_WINDOW
    code = link_code(SECRET, "bob", "Bob@Example.org", window)
    assert code == link_code(SECRET, "bob", "bob@example.org", window)
    typed = f"{code[:4]}-{code[4:]}".upper().replace("1", "l").replace("0", "O")
    assert check_link_code(SECRET, "bob", "bob@example.org", typed, NOW_NS)
    assert not check_link_code(SECRET, "bob", "bob@example.org", code[:7], NOW_NS)
