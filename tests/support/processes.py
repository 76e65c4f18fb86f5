"""Child processes that are always stopped: started in a `Processes` block, each is stopped
(SIGTERM, then SIGKILL) when the block ends, however it ends."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TextIO

STOP_GRACE_SECONDS = 10.0


def log(message: str) -> None:
    """Progress to stderr, so stdout stays for results."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path | None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_bytes().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])


class Processes:
    """Children started in a `with` block; all are stopped when it ends, however it ends."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        command: Sequence[str],
        log_path: Path | None = None,
        stdout: int | TextIO | None = subprocess.DEVNULL,
        stdin: int | None = subprocess.DEVNULL,
        env: dict[str, str] | None = None,
    ) -> Child:
        log_file = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115
        try:
            process = subprocess.Popen(
                list(command),
                stdin=stdin,
                stdout=stdout,
                stderr=log_file if log_file is not None else subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        finally:
            if log_file is not None:
                log_file.close()
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def stop(self, child: Child, grace: float = STOP_GRACE_SECONDS) -> int:
        """SIGTERM, then SIGKILL after `grace` seconds; returns the exit code."""
        if child.alive():
            child.process.send_signal(signal.SIGTERM)
            try:
                child.process.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"{child.name} did not stop in {grace:.0f} s: killed")
                child.process.kill()
                child.process.wait()
        if child in self.children:
            self.children.remove(child)
        return child.process.returncode

    def kill(self, child: Child) -> None:
        """SIGKILL, as a crash would."""
        if child.alive():
            child.process.kill()
        child.process.wait()
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        children = list(reversed(self.children))
        for child in children:
            if child.alive():
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in children:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{child.name} did not stop in time: killed")
                child.process.kill()
                child.process.wait()
        self.children.clear()
