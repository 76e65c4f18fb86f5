"""`herd up` as a newcomer runs it: the servers, a mail sink and a Prosody with demo users,
all stopped by Ctrl-C (what it shows: tests/e2e/test_newcomer.py)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.herd import REPO
from tests.support.lines import Client
from tests.support.polling import wait_until
from tests.support.up import running_up, up_config

pytestmark = pytest.mark.timeout(120)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_herd_up_starts_everything_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    with running_up(tmp_path) as up:
        token = up.token("alice")

        def alice_at_campbell() -> bytes | None:
            with Client(up.ports["Campbell"]) as client:
                reply = client.request(f"AUTH alice {token}".encode())
            return reply if reply.startswith(b"USER ") else None

        reply = wait_until(alice_at_campbell, 10.0, "the demo users to reach Campbell")
        assert b'"jid":"alice@localhost"' in reply and b'"email":"alice@example.org"' in reply
        prosody_pid = int((up.data_dir / "prosody" / "prosody.pid").read_text())
        assert _alive(prosody_pid)
        assert up.stop() == 0
        deadline = time.monotonic() + 10
        while _alive(prosody_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(prosody_pid)
        mail = up.herd("mail")
        assert mail.returncode == 0 and mail.stdout.startswith("ID"), mail


def test_taken_ports_give_way_to_free_ones_and_a_server_that_cannot_start_says_why(
    tmp_path: Path,
) -> None:
    """The mail sink's and Prosody's ports are preferences: when something listens there,
    `herd up` takes free ports and its banner and derived config say which.  A server's port
    is not: that server exits, and `herd up` shows what it said on stderr."""
    config, ports, (smtp_port, xmpp_port) = up_config(tmp_path)
    with (
        socket.create_server(("127.0.0.1", smtp_port)),
        socket.create_server(("127.0.0.1", xmpp_port)),
        socket.create_server(("127.0.0.1", ports["Clark"])),
    ):
        output = tmp_path / "up.out"
        with output.open("wb") as out:
            process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "herd", "up", "--config", str(config)),
                    *("--smtp-port", str(smtp_port), "--xmpp-port", str(xmpp_port)),
                ],
                stdout=out,
                stderr=out,
                cwd=REPO,
            )
        try:
            wait_until(
                lambda: "Ctrl-C stops everything" in output.read_text(errors="replace"),
                60.0,
                lambda: output.read_text(errors="replace"),
            )
            text = output.read_text(errors="replace")
            sink = re.search(r"^mail sink   127\.0\.0\.1:(\d+) ", text, re.MULTILINE)
            jabber = re.search(r"^jabber      127\.0\.0\.1:(\d+) ", text, re.MULTILINE)
            assert sink is not None and jabber is not None, text
            assert int(sink[1]) != smtp_port and int(jabber[1]) != xmpp_port
            derived = (tmp_path / ".herd.up.toml").read_text()
            assert f"port = {sink[1]}\n" in derived and f"port = {jabber[1]}\n" in derived
            wait_until(
                lambda: "  | herd: Clark could not start" in output.read_text(errors="replace"),
                30.0,
                lambda: output.read_text(errors="replace"),
            )
            assert "herd: Clark exited (exit code 1)" in output.read_text(errors="replace")
        finally:
            process.send_signal(signal.SIGINT)
            assert process.wait(30) == 1  # a server exited
