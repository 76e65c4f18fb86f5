"""The operator's door on real `herd run` processes: `herd user` cannot be made to send another
field or another line, a malformed operator line changes nothing, a herd without a configured
secret keeps the operator and peers to whoever can read its data directory, and free text
keeps out C1 controls and line separators."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from herd.operator import dial_handshake
from herd.ops import OPERATOR
from herd.tokens import hash_token, new_nonce, peer_mac
from herd.wire.handshake import Handshake, WrongProof
from herd.wire.peer import Auth
from tests.support.herd import NAMES, REPO, SECRET, Herd, config_text, running_herd
from tests.support.lines import Client, now_time
from tests.support.polling import wait_until

pytestmark = pytest.mark.timeout(120)

PAIR = ("Bailey", "Bona")
KNOWN_TOKEN = "a-token-the-attacker-chose-0123456789abcdef"


def herd_user(herd: Herd, *arguments: str) -> subprocess.CompletedProcess[str]:
    """`herd user ARGUMENTS` as an operator types it (no HERD_SECRET inherited)."""
    env = {key: value for key, value in os.environ.items() if key != "HERD_SECRET"}
    return subprocess.run(
        [sys.executable, "-m", "herd", "user", *arguments, "--config", str(herd.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=env,
        check=False,
    )


def add_user(herd: Herd, user: str) -> str:
    done = herd_user(herd, "add", user)
    assert done.returncode == 0, done.stderr
    match = re.search(r"token (\S+)", done.stdout)
    assert match is not None, done.stdout + done.stderr
    return match[1]


def logs_in(herd: Herd, server: str, user: str, token: str) -> bool:
    with Client(herd.port(server)) as client:
        return client.request(f"AUTH {user} {token}".encode()).startswith(b"USER ")


def invite_reply(herd: Herd, user: str, token: str, invitee: str) -> bytes:
    """What `INVITE <event> <invitee>` answers: `ERR no-such-user` unless the invitee exists."""
    with Client(herd.port("Bailey")) as client:
        assert client.request(f"AUTH {user} {token}".encode()).startswith(b"USER ")
        reply = client.request(b"PLAN who is there")
        event = json.loads(reply[len(b"EVENT ") :])["id"]
        return client.request(f"INVITE {event} {invitee}".encode())


def operator_handshake(port: int, server: str) -> Client:
    """A connection that has done `herd user`'s handshake with the herd secret."""
    client = Client(port)
    me, them = OPERATOR.encode(), server.encode()
    client.send(dial_handshake(SECRET.encode(), me, them, client.send, client.line))
    return client


def forged_proof(client: Client, dialer: bytes, server: bytes, guess: bytes) -> bytes:
    """The handshake of someone who does not know the secret and guesses `guess`: the
    server's proof shows the guess is wrong; the `HERD-AUTH` made with it anyway, to send."""
    nonce = new_nonce()
    handshake = Handshake.dialer(partial(peer_mac, guess), dialer, server, nonce)
    client.send(handshake.send_hello())
    outcome = handshake.receive_challenge(client.line().rstrip(b"\n"))
    assert isinstance(outcome, WrongProof), outcome
    return Auth(
        peer_mac(guess, b"dialer", dialer, server, nonce, outcome.challenge.nonce)
    ).to_line()


def hello_count(herd: Herd) -> int:
    return sum(
        herd.log_path(name).read_bytes().count(b"HERD-HELLO @operator")
        for name in herd.names
        if herd.log_path(name).exists()
    )


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    """Two linked servers with a configured secret."""
    root = tmp_path_factory.mktemp("operator")
    with running_herd(root, names=PAIR, links=(PAIR,)) as started:
        started.up()
        yield started


# --- defect 9: herd user cannot be injected ------------------------------------------------------


def test_herd_user_refuses_fields_that_would_split_and_sends_nothing(pair: Herd) -> None:
    before = hello_count(pair)
    alice = add_user(pair, "alice")
    # The log is written in batches: count from once alice's handshake is in it.
    wait_until(lambda: hello_count(pair) > before, 5, "alice's handshake in the log")
    hellos = hello_count(pair)
    refused = {
        "a space in the id": ("add", "bad id"),
        "a field in the email": ("add", "mallory", "--email", "e@example.org jid=evil@localhost"),
        "a line in the id": ("add", "x\nUSER-TOKEN alice"),
        "a line in the token's id": ("token", "alice\nUSER-ADD bad2"),
        "a C1 line break in the JID": ("add", "nel", "--jid", "nel@localhost\x85"),
    }
    problems = []
    for what, arguments in refused.items():
        done = herd_user(pair, *arguments)
        if done.returncode != 2 or "nothing was sent" not in done.stderr or "token" in done.stdout:
            problems.append(f"{what}: exit {done.returncode}, {done.stdout!r}, {done.stderr!r}")
    # A valid command afterwards: once its line is in the log, any earlier one would be too.
    zed = add_user(pair, "zed")
    wait_until(lambda: hello_count(pair) > hellos, 5, "zed's handshake in the log")
    if hello_count(pair) != hellos + 1:
        problems.append(f"{hello_count(pair) - hellos - 1} refused commands reached a server")
    for server in PAIR:
        if not logs_in(pair, server, "alice", alice):
            problems.append(f"alice's token no longer works on {server}")
    for ghost in ("bad", "mallory", "x", "bad2", "nel"):
        reply = invite_reply(pair, "zed", zed, ghost)
        if reply != f"ERR no-such-user: no user {ghost}\n".encode():
            problems.append(f"user {ghost} exists: INVITE answered {reply!r}")
    assert not problems, "\n".join(problems)


def test_a_malformed_operator_line_is_refused_and_changes_nothing(pair: Herd) -> None:
    carol = add_user(pair, "carol")
    forged = hash_token(KNOWN_TOKEN, bytes(16))
    refusals = [
        (b"USER-ADD bad id", b"ERR bad-hash: "),
        (
            b"USER-ADD eve " + forged.encode() + b" email=e@example.org email=f@example.org",
            b"ERR bad-field: ",
        ),
        (b"USER-ADD eve " + forged.encode() + b" nick=eve", b"ERR bad-field: "),
        (b"USER-ADD eve " + forged.encode() + b" jid=eve@localhost\xc2\x85", b"ERR bad-value: "),
        (
            b"USER-ADD eve " + forged.encode() + b" email=e@example.org,x@example.org",
            b"ERR bad-value: ",
        ),
        (b"USER-ADD eve\xff " + forged.encode(), b"ERR bad-field: "),
        (b"USER-TOKEN carol " + forged.encode() + b" extra", b"ERR bad-field: "),
        (b"USER-TOKEN carol scrypt$1$1$1$00$00", b"ERR bad-hash: "),
    ]
    with operator_handshake(pair.port("Bailey"), "Bailey") as operator:
        for line, expected in refusals:
            reply = operator.request(line)
            assert reply.startswith(expected) and reply.count(b"\n") == 1, (line, reply)
        assert operator.request(b"USER-TOKEN nobody " + forged.encode()) == (
            b"ERR no-such-user: no user nobody\n"
        )
    assert logs_in(pair, "Bona", "carol", carol)
    assert not logs_in(pair, "Bona", "carol", KNOWN_TOKEN)
    assert invite_reply(pair, "carol", carol, "eve") == b"ERR no-such-user: no user eve\n"


# --- defect 11: free text keeps out C1 controls and line separators -------------------------------


def test_free_text_with_c1_controls_or_line_separators_is_refused(pair: Herd) -> None:
    dave = add_user(pair, "dave")
    with Client(pair.port("Bona")) as client:
        assert client.request(f"AUTH dave {dave}".encode()).startswith(b"USER ")
        event = json.loads(client.request(b"PLAN Lunch")[len(b"EVENT ") :])["id"]
        before = client.request(f"EVENT {event}".encode())
        user_before = client.request(b"USER")
        for line in [
            b"PLAN Lunch\xc2\x85Reply-To: x",
            b"PLAN caf\xe2\x80\xa8e",
            b"COMMENT " + event.encode() + b" \xc2\x9b31mred",
            b"COMMENT " + event.encode() + b" one\xe2\x80\xa9two",
            b"PROPOSE " + event.encode() + b" PLACE Chez\xc2\x85Paul",
            b"USER SET tz Europe/Paris\xc2\x85",
            b"USER SET email d\xc2\x9b@example.org",
        ]:
            reply = client.request(line)
            assert reply.startswith(b"ERR bad-text: "), (line, reply)
        assert client.request(f"EVENT {event}".encode()) == before
        assert client.request(b"USER") == user_before
        events = client.request(b"EVENTS")
        assert b"\xc2\x85" not in events and b"\xe2\x80\xa8" not in events, events


# --- defect 10: no configured secret ---------------------------------------------------------


def test_without_a_secret_the_operator_and_peers_need_the_data_dir(tmp_path: Path) -> None:
    with running_herd(tmp_path) as herd:
        herd.config_path.write_text(config_text(herd.ports, herd.links, secret=""))
        herd.start()  # all five at once: they must agree on one generated secret
        herd.wait_answering()
        herd.wait_links()
        alice = add_user(herd, "alice")
        assert logs_in(herd, "Jaquez", "alice", alice)

        # Anyone who cannot read the secret file is left with the empty secret.
        forged = hash_token(KNOWN_TOKEN, bytes(16))
        with Client(herd.port("Bailey")) as intruder:
            intruder.send(forged_proof(intruder, OPERATOR.encode(), b"Bailey", b""))
            assert intruder.line().startswith(b"? HERD-AUTH ")
            assert intruder.request(b"USER-TOKEN alice " + forged.encode()) == (
                b"? USER-TOKEN alice " + forged.encode() + b"\n"
            )
        with Client(herd.port("Bailey")) as peer:
            auth = forged_proof(peer, b"Bona", b"Bailey", b"")
            update = b"U 999 AT Bona +0.000000001 forged-client +10.0+10.0 " + now_time()
            peer.send(auth + b"SYNC 0123456789abcdef - 0\n" + update + b"\n")
            assert peer.line().startswith(b"? HERD-AUTH ")
        # (An unknown client is answered at once; a known one would wait for the places index.)
        assert herd.at_line("Bailey", b"forged-client") is None
        assert logs_in(herd, "Bailey", "alice", alice)
        assert not logs_in(herd, "Bailey", "alice", KNOWN_TOKEN)

        secret_file = herd.data_dir / "herd.secret"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        assert re.fullmatch(rb"[0-9a-f]{64}\n", secret_file.read_bytes())
        assert not list(herd.data_dir.glob(".herd.secret.*"))
        assert "herd.secret" in herd.stderr_path("Bailey").read_text()


def test_herd_user_without_a_secret_or_a_secret_file_says_why(tmp_path: Path) -> None:
    with running_herd(tmp_path, names=NAMES[:1], links=()) as herd:
        herd.config_path.write_text(config_text(herd.ports, (), secret=""))
        done = herd_user(herd, "add", "alice")
        assert done.returncode == 1
        assert "herd.secret does not exist yet" in done.stderr, done.stderr
