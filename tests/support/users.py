"""Users made as an operator makes them: `herd user add` on a herd's config, and its token."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.herd import REPO

CLI_SECONDS = 30.0


def herd_cli(
    config: Path, *arguments: str, timeout: float = CLI_SECONDS
) -> subprocess.CompletedProcess[str]:
    """`herd ARGUMENTS --config CONFIG` as an operator types it: no secret inherited from the
    environment (`HERD_SECRET`, `RENGA_XMPP_PASSWORD`), only what the config says."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("HERD_SECRET", "RENGA_XMPP_PASSWORD")
    }
    return subprocess.run(
        [sys.executable, "-m", "herd", *arguments, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
        check=False,
    )


def add_user(config: Path, user: str, address: str, server: str | None = None) -> str:
    """`herd user add USER --email ADDRESS [--server SERVER]`; the token it prints once."""
    where = () if server is None else ("--server", server)
    done = herd_cli(config, "user", "add", user, "--email", address, *where)
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(rf"^user {re.escape(user)}: token (\S+)$", done.stdout, re.MULTILINE)
    assert match is not None, done.stdout + done.stderr
    return match[1]
