"""A newcomer's first minutes, run for real: `herd up` as a subprocess (five servers, its mail
sink and Prosody on ports the test chose), what it shows, what it says when a server dies, and
that Ctrl-C stops everything it started and says so.

The `newcomer_up` fixture yields a running `herd up` (`tests.support.up.RunningUp`: its config,
ports, output, the demo users' tokens, and `herd(...)` to run other `herd` commands beside it),
so tests of `herd talk`, `herd chat`, `herd demo`, `herd mail` can run against the same thing a
newcomer gets."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.lines import Client, status
from tests.support.polling import wait_until
from tests.support.up import RunningUp, running_up

pytestmark = pytest.mark.timeout(180)

FIRST_SECONDS = 10.0
FIRST_LINES = 60


@pytest.fixture
def newcomer_up(tmp_path: Path) -> Iterator[RunningUp]:
    """A running `herd up` of the test's own, its banner out."""
    with running_up(tmp_path) as up:
        yield up


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def test_herd_up_shows_a_short_banner_a_problem_and_what_ctrl_c_stopped(
    newcomer_up: RunningUp,
) -> None:
    up = newcomer_up
    banner = up.text()
    assert f"mail sink   127.0.0.1:{up.smtp_port}  keeps every mail in" in banner
    assert f"jabber      127.0.0.1:{up.xmpp_port}  Prosody, plain connection (no TLS)\n" in banner
    assert "alice@localhost / alice-demo" in banner
    for user in ("alice", "bob", "carol"):
        assert len(up.token(user)) > 20
    for name, port in up.ports.items():
        assert f"  {name:8}  127.0.0.1:{port}" in banner
    for command in ("herd talk Bailey", "herd chat alice", "herd demo", "herd mail"):
        assert command in banner
    assert up.derived.exists()
    assert f"port = {up.xmpp_port}" in up.derived.read_text()

    # The first seconds stay short: the servers' traffic goes to their logs only.
    time.sleep(max(0.0, up.started + FIRST_SECONDS - time.monotonic()))
    first = up.text().splitlines()
    assert len(first) < FIRST_LINES, "\n".join(first)
    assert not any(" recv " in line or " sent " in line for line in first), "\n".join(first)

    # Every server links up and its status line says so.
    for name, port in up.ports.items():
        up.wait_for(f"  {name:8}  {port:>5}  up    peers: ", 30.0)
    with Client(up.ports["Campbell"]) as client:
        reply = client.request(f"AUTH alice {up.token('alice')}".encode())
    assert reply.startswith(b"USER ") and b'"jid":"alice@localhost"' in reply
    assert " Bailey recv " in (up.data_dir / "Bailey.log").read_text(errors="replace")
    assert " recv " not in (up.data_dir / "Bailey.stderr").read_text(errors="replace")

    # A server killed is reported, with the last lines of its stderr.
    clark = up.server_process("Clark")
    clark.kill()
    up.wait_for("herd: Clark exited (killed by SIGKILL); the last lines of its stderr:")
    up.wait_for(f"  Clark     {up.ports['Clark']:>5}  EXITED (killed by SIGKILL)")

    # Ctrl-C: what was stopped is said, and nothing is left behind.
    left = up.descendants()
    assert len(left) >= 5  # four servers, the mail sink, Prosody (and what they run)
    assert up.stop() == 1, up.text()  # a server exited on its own
    out = up.text()
    summary = out[out.index("herd up: stopped") :]
    assert "  servers: Bailey, Bona, Campbell, Jaquez" in summary
    assert "(exited before: Clark)" in summary
    assert f"the mail sink on 127.0.0.1:{up.smtp_port}" in summary
    assert f"Prosody on 127.0.0.1:{up.xmpp_port}" in summary
    assert f"removed {up.derived}" in summary
    assert not up.derived.exists()
    assert [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    assert [port for port in up.listening_ports() if _listening(port)] == []


def test_sigterm_stops_everything_and_a_clean_stop_exits_0(newcomer_up: RunningUp) -> None:
    up = newcomer_up
    wait_until(lambda: all(status(port) for port in up.ports.values()), 20.0, "servers up")
    left = up.descendants()
    assert up.stop(signal.SIGTERM) == 0, up.text()
    out = up.text()
    assert "  servers: Bailey, Bona, Campbell, Clark, Jaquez" in out
    assert not up.derived.exists()
    assert [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    assert [port for port in up.listening_ports() if _listening(port)] == []


def test_verbose_follows_the_server_logs(tmp_path: Path) -> None:
    with running_up(tmp_path, "--verbose") as up:
        assert "followed below" in up.text()
        up.wait_for(" Bailey recv ")  # the servers' traffic, as their logs have it
        up.wait_for(" Bailey note - Bailey listening on ")  # from before the banner too
        assert up.stop() == 0, up.text()


def _herd(up: RunningUp, *arguments: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """`herd ARGUMENTS --config <the user's config>` beside the running `herd up`, stdin piped."""
    return subprocess.run(
        [sys.executable, "-m", "herd", *arguments, "--config", str(up.config)],
        input=stdin,
        capture_output=True,
        timeout=90,
        check=False,
        cwd=up.config.parent,
    )


def test_the_tour_talk_chat_demo_and_mail_then_ctrl_c(newcomer_up: RunningUp) -> None:
    """The README's tour as a newcomer takes it, each channel through its own `herd` command."""
    up = newcomer_up
    wait_until(lambda: all(status(port) for port in up.ports.values()), 30.0, "servers up")

    # The line protocol: a report on Bailey, known on Bona.
    iamat = b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503\n"
    talk = _herd(up, "talk", "Bailey", stdin=iamat)
    assert talk.returncode == 0, talk.stderr
    assert talk.stdout.startswith(b"AT Bailey "), talk.stdout
    assert talk.stdout.endswith(b" kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503\n")

    def known_on_bona() -> bool:
        answer = _herd(up, "talk", "Bona", stdin=b"WHATSAT kiwi.cs.ucla.edu 5 1\n")
        return answer.stdout.startswith(talk.stdout)

    wait_until(known_on_bona, 10.0, "Bona to know kiwi's report")

    # Jabber: alice chats with the bot.
    chat = _herd(up, "chat", "alice", stdin=b"help\n")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.startswith(b"renga: Planning (on your current event"), chat.stdout

    # All three at once: the demo plays a get-together to its decision.
    demo = _herd(up, "demo", "--pace", "0")
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr
    decided = re.search(rb'The event (\S+) "Dinner with friends" is decided\.', demo.stdout)
    assert decided is not None, demo.stdout[-2000:]

    # Mail: carol's decision is listed, readable, and carries its calendar file.
    def carols_decision() -> bytes | None:
        listing = _herd(up, "mail").stdout
        for line in listing.splitlines():
            if b"carol@example.org" in line and b"Decided: Dinner with friends" in line:
                return line.split()[0]
        return None

    mail_id = wait_until(carols_decision, 15.0, "the decision's mail to carol").decode()
    shown = _herd(up, "mail", mail_id)
    assert shown.returncode == 0 and b"Subject: Decided: Dinner with friends" in shown.stdout
    ics = _herd(up, "mail", mail_id, "--ics", "-")
    assert ics.returncode == 0, ics.stderr
    assert ics.stdout.startswith(b"BEGIN:VCALENDAR") and b"Dinner with friends" in ics.stdout
    head = subprocess.run(  # a reader that stops early ends `herd mail` quietly
        f"{sys.executable} -m herd mail --config {up.config} | head -1",
        shell=True,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert head.stdout.startswith(b"ID ") and b"Traceback" not in head.stderr, head.stderr

    # Ctrl-C stops everything it started, and nothing is left.
    left = up.descendants()
    assert up.stop() == 0, up.text()
    assert "herd up: stopped" in up.text()
    assert [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    assert [port for port in up.listening_ports() if _listening(port)] == []
    assert not up.derived.exists()
