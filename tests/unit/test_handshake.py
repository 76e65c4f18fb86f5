"""The peer handshake state machine (docs/protocol.md §7.1): every transition of both ends,
refusals, replays, and the documented worked example byte for byte.  Pure: lines in, events out."""

from __future__ import annotations

from functools import partial

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herd.tokens import peer_mac
from herd.wire.client import Hello
from herd.wire.handshake import (
    Authenticated,
    Challenged,
    Handshake,
    HandshakeError,
    HandshakeState,
    NotAuthenticated,
    NotChallenged,
    NotForUs,
    Proven,
    Signer,
    WrongProof,
)
from herd.wire.peer import Auth, Challenge, parse_peer_line

SECRET = b"doc-secret"
SIGN = partial(peer_mac, SECRET)
NONCE_D = b"5f1c0e7a9b3d42e88c6a1f0d2b4e6a90"
NONCE_A = b"97deb5bed26d765a89dbe32d9bad0224"
MAC_A = b"758f140417e6ef07871d9cfbc2de0922ee9cf995012bfa2a89c539b6e36b9935"
MAC_D = b"986c09c1fcbc28d475eaf9f9eaff2818c9b3a9446bd4c8a9cb9ca0d77a138e2c"
PEERS = ("Bailey", "Campbell", "@operator")


def dialer(sign: Signer = SIGN, nonce: bytes = NONCE_D) -> Handshake:
    return Handshake.dialer(sign, b"Campbell", b"Bona", nonce)


def acceptor(sign: Signer = SIGN, nonce: bytes = NONCE_A) -> Handshake:
    return Handshake.acceptor(sign, b"Bona", PEERS, nonce)


def challenged(hand: Handshake, hello: bytes) -> bytes:
    """The acceptor's challenge line for the dialer's `hello` line."""
    message = Hello.parse(hello.split(), hello)
    outcome = hand.receive_hello(message)
    assert isinstance(outcome, Challenged)
    return outcome.challenge


# --- the documented example, both ends --------------------------------------------------------


def test_the_worked_example_of_the_protocol_document() -> None:
    dial, accept = dialer(), acceptor()
    hello = dial.send_hello()
    assert hello == b"HERD-HELLO Campbell Bona " + NONCE_D + b"\n"
    assert dial.state is HandshakeState.AWAITING_CHALLENGE
    outcome = accept.receive_hello(Hello.parse(hello.split(), hello))
    assert outcome == Challenged("Campbell", b"HERD-CHALLENGE " + NONCE_A + b" " + MAC_A + b"\n")
    assert accept.state is HandshakeState.AWAITING_AUTH
    proven = dial.receive_challenge(outcome.challenge.rstrip(b"\n"))
    assert proven == Proven(b"HERD-AUTH " + MAC_D + b"\n")
    assert dial.state is HandshakeState.LINKED
    assert accept.receive_auth(proven.auth.rstrip(b"\n")) == Authenticated("Campbell")
    assert accept.state is HandshakeState.LINKED


@given(
    st.binary(min_size=16, max_size=16).map(lambda raw: raw.hex().encode()),
    st.binary(min_size=16, max_size=64).map(lambda raw: raw.hex().encode()),
)
def test_both_ends_agree_for_any_nonces(nonce_d: bytes, nonce_a: bytes) -> None:
    dial, accept = dialer(nonce=nonce_d), acceptor(nonce=nonce_a)
    proven = dial.receive_challenge(challenged(accept, dial.send_hello()).rstrip(b"\n"))
    assert isinstance(proven, Proven)
    assert accept.receive_auth(proven.auth.rstrip(b"\n")) == Authenticated("Campbell")


# --- the dialer ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        b"? HERD-HELLO Campbell Bona " + NONCE_D,
        b"",
        b"HERD-CHALLENGE " + NONCE_A,
        b"HERD-CHALLENGE " + NONCE_A.upper() + b" " + MAC_A,
        b"HERD-AUTH " + MAC_A,
        b"SYNC 0123456789abcdef - 0",
        b"\xff\xfe",
    ],
)
def test_the_dialer_refuses_anything_but_a_challenge(answer: bytes) -> None:
    dial = dialer()
    dial.send_hello()
    assert dial.receive_challenge(answer) == NotChallenged(answer)
    assert dial.state is HandshakeState.REFUSED


def test_the_dialer_refuses_an_acceptor_without_the_secret() -> None:
    dial, accept = dialer(), acceptor(sign=partial(peer_mac, b"another secret"))
    line = challenged(accept, dial.send_hello()).rstrip(b"\n")
    outcome = dial.receive_challenge(line)
    assert isinstance(outcome, WrongProof)
    assert outcome.challenge == parse_peer_line(line)
    assert dial.state is HandshakeState.REFUSED


def test_the_dialer_refuses_a_replayed_challenge() -> None:
    """The documented challenge proves nothing to a dialer with a fresh nonce."""
    dial = dialer(nonce=b"ab" * 16)
    dial.send_hello()
    outcome = dial.receive_challenge(b"HERD-CHALLENGE " + NONCE_A + b" " + MAC_A)
    assert outcome == WrongProof(Challenge(NONCE_A, MAC_A))


def test_the_dialer_refuses_its_own_proof_reflected() -> None:
    """A challenge carrying the dialer's own MAC (role "dialer") is not the acceptor's."""
    dial = dialer()
    dial.send_hello()
    assert isinstance(
        dial.receive_challenge(b"HERD-CHALLENGE " + NONCE_A + b" " + MAC_D), WrongProof
    )


def test_the_dialer_takes_its_steps_in_order_once() -> None:
    dial = dialer()
    with pytest.raises(HandshakeError):
        dial.receive_challenge(b"HERD-CHALLENGE " + NONCE_A + b" " + MAC_A)
    dial.send_hello()
    with pytest.raises(HandshakeError):
        dial.send_hello()
    dial.receive_challenge(b"HERD-CHALLENGE " + NONCE_A + b" " + MAC_A)
    with pytest.raises(HandshakeError):
        dial.receive_challenge(b"HERD-CHALLENGE " + NONCE_A + b" " + MAC_A)
    for step in (
        lambda: dial.receive_hello(Hello(b"A", b"B", NONCE_D)),
        lambda: dial.receive_auth(b""),
    ):
        with pytest.raises(HandshakeError):
            step()


def test_a_refused_dialer_is_done() -> None:
    dial = dialer()
    dial.send_hello()
    dial.receive_challenge(b"")
    with pytest.raises(HandshakeError):
        dial.receive_challenge(b"HERD-CHALLENGE " + NONCE_A + b" " + MAC_A)


# --- the acceptor -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hello",
    [
        Hello(b"Mallory", b"Bona", NONCE_D),  # a stranger
        Hello(b"Campbell", b"Clark", NONCE_D),  # for another server
        Hello(b"Bona", b"Bona", NONCE_D),  # itself, not its own peer
        Hello(b"Campbell\xff", b"Bona", NONCE_D),  # not a name at all
    ],
)
def test_the_acceptor_refuses_a_hello_not_for_it(hello: Hello) -> None:
    accept = acceptor()
    assert accept.receive_hello(hello) == NotForUs()
    assert accept.state is HandshakeState.REFUSED
    with pytest.raises(HandshakeError):
        accept.receive_auth(b"HERD-AUTH " + MAC_D)


def test_the_acceptor_challenges_the_operator() -> None:
    accept = acceptor()
    outcome = accept.receive_hello(Hello(b"@operator", b"Bona", NONCE_D))
    assert isinstance(outcome, Challenged)
    assert outcome.dialer == "@operator"
    mac = peer_mac(SECRET, b"dialer", b"@operator", b"Bona", NONCE_D, NONCE_A)
    assert accept.receive_auth(Auth(mac).to_line().rstrip(b"\n")) == Authenticated("@operator")


def test_blank_lines_before_the_proof_change_nothing() -> None:
    accept = acceptor()
    accept.receive_hello(Hello(b"Campbell", b"Bona", NONCE_D))
    for blank in (b"", b"   ", b"\t"):
        assert accept.receive_auth(blank) is None
        assert accept.state is HandshakeState.AWAITING_AUTH
    assert accept.receive_auth(b"HERD-AUTH " + MAC_D) == Authenticated("Campbell")


@pytest.mark.parametrize(
    ("line", "wrong_proof"),
    [
        (b"HERD-AUTH " + b"00" * 32, True),
        (b"HERD-AUTH " + MAC_A, True),  # the acceptor's own proof reflected
        (b"HERD-AUTH " + MAC_D.upper(), False),  # not a proof: uppercase is not the grammar
        (b"HERD-AUTH " + MAC_D + b" x", False),
        (b"STATUS", False),
        (b"SYNC 0123456789abcdef - 0", False),
        (b"HERD-HELLO Campbell Bona " + NONCE_D, False),
        (b"\xff", False),
    ],
)
def test_anything_but_the_right_proof_leaves_a_client(line: bytes, wrong_proof: bool) -> None:
    accept = acceptor()
    accept.receive_hello(Hello(b"Campbell", b"Bona", NONCE_D))
    assert accept.receive_auth(line) == NotAuthenticated(wrong_proof=wrong_proof)
    assert accept.state is HandshakeState.REFUSED
    with pytest.raises(HandshakeError):
        accept.receive_auth(b"HERD-AUTH " + MAC_D)


def test_a_proof_replayed_to_a_new_challenge_is_refused() -> None:
    """The documented `HERD-AUTH` is good for the documented challenge only."""
    accept = acceptor(nonce=b"cd" * 16)
    accept.receive_hello(Hello(b"Campbell", b"Bona", NONCE_D))
    assert accept.receive_auth(b"HERD-AUTH " + MAC_D) == NotAuthenticated(wrong_proof=True)


@given(st.binary(min_size=16, max_size=16).map(lambda raw: raw.hex().encode()))
def test_a_proof_for_another_dialer_is_refused(nonce_a: bytes) -> None:
    accept = acceptor(nonce=nonce_a)
    accept.receive_hello(Hello(b"Campbell", b"Bona", NONCE_D))
    as_bailey = peer_mac(SECRET, b"dialer", b"Bailey", b"Bona", NONCE_D, nonce_a)
    assert accept.receive_auth(b"HERD-AUTH " + as_bailey) == NotAuthenticated(wrong_proof=True)


def test_the_acceptor_takes_its_steps_in_order_once() -> None:
    accept = acceptor()
    with pytest.raises(HandshakeError):
        accept.receive_auth(b"HERD-AUTH " + MAC_D)
    with pytest.raises(HandshakeError):
        accept.send_hello()
    accept.receive_hello(Hello(b"Campbell", b"Bona", NONCE_D))
    with pytest.raises(HandshakeError):
        accept.receive_hello(Hello(b"Campbell", b"Bona", NONCE_D))
    with pytest.raises(HandshakeError):
        accept.receive_challenge(b"HERD-CHALLENGE " + NONCE_A + b" " + MAC_A)
    accept.receive_auth(b"HERD-AUTH " + MAC_D)
    with pytest.raises(HandshakeError):
        accept.receive_auth(b"HERD-AUTH " + MAC_D)
