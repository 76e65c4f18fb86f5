"""`herd up` as a newcomer runs it, as a subprocess on free ports: the five servers of a test
config, its mail sink and Prosody on ports the test chose (`--smtp-port`, `--xmpp-port`), its
terminal output in a file.  `running_up` yields a `RunningUp` once the banner is out; however the
block ends, `herd up` is stopped (SIGINT, then SIGKILL) and so is everything it started.

Blocking code only (subprocess, sockets, psutil); every wait is a poll with a deadline.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.support.herd import LINKS, NAMES, REPO, config_text
from tests.support.polling import wait_until
from tests.support.ports import free_ports

BANNER_SECONDS = 60.0  # the banner waits for Prosody, the servers and the demo users
STOP_SECONDS = 30.0


@dataclass
class RunningUp:
    process: subprocess.Popen[bytes]
    config: Path  # the user's config
    derived: Path  # the config `herd up` writes for its servers while it runs
    data_dir: Path
    ports: dict[str, int]  # server name -> client port
    smtp_port: int
    xmpp_port: int
    output: Path  # stdout and stderr of `herd up`, as a terminal would show them
    started: float  # time.monotonic() when it was started
    web_port: int = 0  # the first server's web port, when it was free (the next take the next)

    def web_url(self, name: str) -> str:
        """The server's site as the banner shows it."""
        found = re.search(rf"^  {re.escape(name)} +\S+ +web (\S+)", self.text(), re.MULTILINE)
        assert found is not None, self.text()
        return found[1]

    def text(self) -> str:
        return self.output.read_bytes().decode("utf-8", "replace")

    def token(self, user: str) -> str:
        """The line-protocol token the banner shows for a demo user."""
        found = re.search(rf"^  AUTH {re.escape(user)} (\S+)$", self.text(), re.MULTILINE)
        assert found is not None, f"no token for {user} in:\n{self.text()}"
        return found[1]

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        """The output once it contains `text`."""
        return wait_until(
            lambda: (lambda out: out if text in out else None)(self.text()),
            timeout,
            lambda: f"{text!r} in the output of herd up:\n{self.text()[-3000:]}",
        )

    def server_process(self, name: str) -> psutil.Process:
        """The `herd run NAME` child of `herd up`."""
        for child in psutil.Process(self.process.pid).children():
            if child.cmdline()[3:5] == ["run", name]:
                return child
        raise AssertionError(f"no `herd run {name}` under herd up")

    def descendants(self) -> list[psutil.Process]:
        children: list[psutil.Process] = psutil.Process(self.process.pid).children(recursive=True)
        return children

    def listening_ports(self) -> list[int]:
        """Every port `herd up` said it would use."""
        return [*self.ports.values(), self.smtp_port, self.xmpp_port]

    def herd(self, *arguments: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Another `herd` command against this herd, as a user would run it beside `herd up`:
        `herd ARGUMENTS --config <the user's config>`."""
        return subprocess.run(
            [sys.executable, "-m", "herd", *arguments, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.config.parent,
        )

    def stop(self, signum: int = signal.SIGINT) -> int:
        """Stop it as Ctrl-C does; its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(STOP_SECONDS)


def up_config(folder: Path) -> tuple[Path, dict[str, int], tuple[int, int]]:
    """The five-server config of the end-to-end tests, on free ports, data under folder/var;
    and two more free ports, for the mail sink and Prosody."""
    *chosen, smtp_port, xmpp_port = free_ports(len(NAMES) + 2)
    ports = dict(zip(NAMES, chosen, strict=True))
    config = folder / "herd.toml"
    config.write_text(config_text(ports, LINKS))
    return config, ports, (smtp_port, xmpp_port)


@contextmanager
def running_up(folder: Path, *extra: str) -> Iterator[RunningUp]:
    """`herd up --config folder/herd.toml` (plus `extra` arguments) until the block ends."""
    config, ports, (smtp_port, xmpp_port) = up_config(folder)
    taken = {*ports.values(), smtp_port, xmpp_port}
    web_port = next(port for port in free_ports(len(taken) + 1) if port not in taken)
    output = folder / "up.out"
    command = [
        sys.executable,
        "-m",
        "herd",
        "up",
        "--config",
        str(config),
        "--smtp-port",
        str(smtp_port),
        "--xmpp-port",
        str(xmpp_port),
        "--web-port",
        str(web_port),
        *extra,
    ]
    with output.open("wb") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=REPO
        )
    up = RunningUp(
        process,
        config,
        folder / ".herd.up.toml",
        folder / "var",
        ports,
        smtp_port,
        xmpp_port,
        output,
        time.monotonic(),
        web_port,
    )
    try:
        up.wait_for("Ctrl-C stops everything", BANNER_SECONDS)
        yield up
    finally:
        if process.poll() is None:  # a failed test still stops what herd up started
            left = up.descendants()
            process.send_signal(signal.SIGINT)
            try:
                process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            for child in left:
                if child.is_running():
                    child.kill()
