"""`herd up` as a newcomer runs it: the servers, a mail sink and a Prosody with demo users,
all stopped by Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.herd import NAMES, config_text
from tests.support.lines import Client, status
from tests.support.polling import wait_until
from tests.support.ports import free_ports

pytestmark = pytest.mark.timeout(120)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_herd_up_starts_everything_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    ports = dict(zip(NAMES, free_ports(len(NAMES)), strict=True))
    config = tmp_path / "herd.toml"
    config.write_text(config_text(ports, [("Bailey", "Bona"), ("Bona", "Campbell")]))
    banner = tmp_path / "up.stderr"
    with banner.open("wb") as stderr:
        up = subprocess.Popen(
            [sys.executable, "-m", "herd", "up", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_until(
            lambda: b"AUTH carol " in banner.read_bytes(),
            60.0,
            lambda: banner.read_text(errors="replace")[-2000:],
        )
        text = banner.read_text(errors="replace")
        assert "jabber: a local Prosody on 127.0.0.1:" in text
        assert "mail: kept under" in text
        token = re.search(r"AUTH alice (\S+)", text)
        assert token is not None
        for name, port in ports.items():
            wait_until(lambda port=port: status(port), 10.0, f"{name} to answer")  # type: ignore[misc]

        def alice_at_campbell() -> bytes | None:
            with Client(ports["Campbell"]) as client:
                reply = client.request(f"AUTH alice {token[1]}".encode())
            return reply if reply.startswith(b"USER ") else None

        reply = wait_until(alice_at_campbell, 10.0, "the demo users to reach Campbell")
        assert b'"jid":"alice@localhost"' in reply and b'"email":"alice@example.org"' in reply
        prosody_pid = int((tmp_path / "var" / "prosody" / "prosody.pid").read_text())
        assert _alive(prosody_pid)
        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 0
        deadline = time.monotonic() + 10
        while _alive(prosody_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(prosody_pid)
        assert all(status(port, timeout=0.5) is None for port in ports.values())
        mail = subprocess.run(
            [sys.executable, "-m", "herd", "mail", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert mail.stdout.startswith("ID")
    finally:
        if up.poll() is None:  # a failed test still stops what herd up started
            up.send_signal(signal.SIGINT)
            try:
                up.wait(30)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()
