"""`herd demo` as a newcomer runs it: against a real `herd up` (its servers, mail sink and
Prosody), as a process of its own; the get-together is played to its decision, which every
server then shows, carol's mail reaches the sink, and the narration names every step.  With
no herd running it refuses and says what to do."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from herd.clients.demoscript import Setting, choose_servers, get_together, peers_of
from tests.support.herd import LINKS, NAMES, REPO, config_text
from tests.support.lines import Client, status
from tests.support.polling import wait_until
from tests.support.ports import free_ports
from tests.support.smtp import read_mails
from tests.support.up import running_up

pytestmark = pytest.mark.timeout(120)

UP_SECONDS = 60.0


def _run_demo(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "herd", "demo", "--pace", "0", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


@pytest.fixture
def herd_up(tmp_path: Path) -> Iterator[tuple[Path, dict[str, int]]]:
    """`herd up` on free ports (its sink and Prosody too), once its banner is out."""
    with running_up(tmp_path) as up:
        yield up.config, up.ports


def test_the_demo_plays_a_get_together_to_its_decision(
    herd_up: tuple[Path, dict[str, int]],
) -> None:
    config, ports = herd_up
    started = time.monotonic()
    demo = _run_demo(config)
    took = time.monotonic() - started
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr
    assert took < 20, took
    out = demo.stdout

    links = [frozenset(link) for link in LINKS]
    setting = Setting(*choose_servers(list(NAMES), peers_of(links)))
    for number, step in enumerate(get_together(time.time_ns(), setting), 1):
        assert f"== {number}. {step.title}\n" in out, step.title
    assert "== 0. the operator gives alice, bob and carol new tokens" in out
    assert "the ones `herd up` printed stop working" in " ".join(out.split())
    assert re.search(r"\[bob's line client got\] PUSH \S+ invited ", out)
    assert re.search(r"\[bob's line client got\] PUSH \S+ decided ", out)
    assert "herd chat carol" in out and "herd mail" in out
    mails = out.split("== The mails the sink got meanwhile")[1].split("== Summary")[0]
    assert re.search(r"carol@example\.org +Decided: Dinner with friends", mails), mails

    event = re.search(r'The event (\S+) "Dinner with friends" is decided\.', out)
    token = re.search(r"AUTH carol (\S{43})", out.split("== Summary")[1])
    assert event is not None and token is not None, out[-2000:]
    for name, port in ports.items():

        def decided(port: int = port) -> bool:
            with Client(port) as client:
                login = client.request(f"AUTH carol {token[1]}".encode())
                assert login.startswith(b"USER "), login
                reply = client.request(f"EVENT {event[1]}".encode())
            return reply.startswith(b"EVENT ") and b'"status":"decided"' in reply

        wait_until(decided, 10.0, f"{name} to show {event[1]} decided")

    def carols_decision() -> bool:
        return any(
            "carol@example.org" in mail.rcpt_to
            and str(mail.message["Subject"]).startswith("Decided: Dinner with friends")
            for mail in read_mails(config.parent / "var")
        )

    wait_until(carols_decision, 10.0, "the decision's mail to carol in the sink")

    # A step the herd refuses stops the demo with the server's answer: bob takes alice's phone.
    tokens = dict(re.findall(r"AUTH (alice|bob) (\S{43})", out.split("== Summary")[1]))
    with Client(ports[setting.alice]) as client:
        assert client.request(f"AUTH alice {tokens['alice']}".encode()).startswith(b"USER ")
        assert client.request(b"DEVICE REMOVE alice-phone").startswith(b"USER ")
        assert client.request(f"AUTH bob {tokens['bob']}".encode()).startswith(b"USER ")
        assert client.request(b"DEVICE ADD alice-phone").startswith(b"USER ")
    again = _run_demo(config)
    assert again.returncode == 1, again.stdout[-2000:]
    assert "< ERR device-taken: alice-phone reports for another user" in again.stdout
    assert again.stderr.startswith(f"herd demo: {setting.alice} refused `DEVICE ADD alice-phone`")
    assert "ERR device-taken" in again.stderr and "== 2." not in again.stdout


def test_without_a_running_herd_it_says_to_start_herd_up(tmp_path: Path) -> None:
    ports = dict(zip(NAMES, free_ports(len(NAMES)), strict=True))
    config = tmp_path / "herd.toml"
    config.write_text(config_text(ports, LINKS))
    assert all(status(port, timeout=0.5) is None for port in ports.values())
    demo = _run_demo(config)
    assert demo.returncode == 1
    assert demo.stdout == ""
    assert "start `herd up` first" in demo.stderr
    assert demo.stderr.count("\n") == 1
