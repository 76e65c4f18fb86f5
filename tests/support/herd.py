"""A herd of real `herd run` processes on loopback, started as a user starts them: its config
(names, ports, links), its processes, and waits for it to answer and link up.

Blocking code only: `subprocess` for the servers, plain sockets for the clients.  Every wait is a
poll with a deadline; nothing sleeps for a fixed time except the short pause between two polls.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.lines import at_line, at_lines, exchange, now_time, status
from tests.support.polling import HerdError, wait_until
from tests.support.ports import free_ports

REPO = Path(__file__).resolve().parents[2]

NAMES: tuple[str, ...] = ("Bailey", "Bona", "Campbell", "Clark", "Jaquez")
LINKS: tuple[tuple[str, str], ...] = (
    ("Clark", "Jaquez"),
    ("Clark", "Bona"),
    ("Campbell", "Bailey"),
    ("Campbell", "Bona"),
    ("Campbell", "Jaquez"),
    ("Bona", "Bailey"),
)
SECRET = "e2e-herd-secret"
START_SECONDS = 20.0
LINK_SECONDS = 10.0
STOP_SECONDS = 5.0


def neighbours(links: Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    result: dict[str, set[str]] = {}
    for a, b in links:
        result.setdefault(a, set()).add(b)
        result.setdefault(b, set()).add(a)
    return result


def components(names: Iterable[str], links: Iterable[tuple[str, str]]) -> list[set[str]]:
    """The connected components of the graph restricted to `names`."""
    alive = set(names)
    graph = neighbours(links)
    seen: set[str] = set()
    result: list[set[str]] = []
    for start in sorted(alive):
        if start in seen:
            continue
        component = {start}
        todo = [start]
        while todo:
            for peer in graph.get(todo.pop(), set()):
                if peer in alive and peer not in component:
                    component.add(peer)
                    todo.append(peer)
        seen |= component
        result.append(component)
    return result


def config_text(
    ports: dict[str, int],
    links: Iterable[tuple[str, str]],
    *,
    data_dir: str = "var",
    secret: str = SECRET,
    max_line: int = 1024,
) -> str:
    """A herd config: each link listed once, on the side of its first server."""
    listed: dict[str, list[str]] = {name: [] for name in ports}
    for a, b in links:
        listed[a].append(b)
    lines = [
        "[herd]",
        f"data_dir = {json.dumps(data_dir)}",
        f"secret = {json.dumps(secret)}",
        f"max_line = {max_line}",
        "",
    ]
    for name, port in ports.items():
        lines += [
            f"[servers.{name}]",
            f"port = {port}",
            f"peers = {json.dumps(listed[name])}",
            "",
        ]
    return "\n".join(lines)


# --- the herd ----------------------------------------------------------------------------------


class Herd:
    """One herd config in a temporary folder, and its `herd run` processes."""

    def __init__(
        self,
        root: Path,
        names: tuple[str, ...] = NAMES,
        links: tuple[tuple[str, str], ...] = LINKS,
        max_line: int = 1024,
        seed: Path | None = None,
        ports: dict[str, int] | None = None,
    ) -> None:
        self.root = root
        self.names = names
        self.links = links
        self.max_line = max_line
        chosen = dict(zip(names, free_ports(len(names)), strict=True)) if ports is None else ports
        self.ports = chosen
        self.peers = {name: neighbours(links).get(name, set()) for name in names}
        self.data_dir = root / "var"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if seed is not None:
            # A places index another herd already built (WHATSAT waits for it, and building
            # it takes seconds); if its name no longer matches, the server builds its own.
            for index in seed.glob("places-*.sqlite"):
                shutil.copyfile(index, self.data_dir / index.name)
        self.config_path = root / "herd.toml"
        self.write_config(self.config_path, links)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.starts: dict[str, int] = dict.fromkeys(names, 0)
        self.warm_ups = 0

    def write_config(self, path: Path, links: Iterable[tuple[str, str]]) -> Path:
        path.write_text(config_text(self.ports, links, max_line=self.max_line))
        return path

    # --- processes -----------------------------------------------------------------------------

    def stderr_path(self, name: str) -> Path:
        return self.root / f"{name}.stderr"

    def log_path(self, name: str) -> Path:
        return self.data_dir / f"{name}.log"

    def start(self, *names: str, config: Path | None = None) -> None:
        """Start `herd run NAME --config PATH` for each name (all of them by default)."""
        config_path = config or self.config_path
        env = {key: value for key, value in os.environ.items() if key != "HERD_SECRET"}
        for name in names or self.names:
            running = self.procs.get(name)
            assert running is None or running.poll() is not None, f"{name} is running"
            self.starts[name] += 1
            with self.stderr_path(name).open("ab") as stderr:
                stderr.write(b"=== start %d ===\n" % self.starts[name])
                stderr.flush()
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "herd", "run", name, "--config", str(config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=stderr,
                    stderr=stderr,
                    cwd=REPO,
                    env=env,
                )

    def running(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is None]

    def port(self, name: str) -> int:
        return self.ports[name]

    def wait_answering(self, *names: str, timeout: float = START_SECONDS) -> None:
        """Until each server answers STATUS (and is still running)."""
        for name in names or self.names:
            proc = self.procs[name]

            def answered(name: str = name, proc: subprocess.Popen[bytes] = proc) -> bool:
                if proc.poll() is not None:
                    raise HerdError(f"{name} exited with {proc.returncode}\n{self.diagnose(name)}")
                return status(self.ports[name]) is not None

            def what(name: str = name) -> str:
                return f"{name} answers\n{self.diagnose()}"

            wait_until(answered, timeout, what)

    def links_up(self) -> bool:
        """Whether every running server shows every running neighbour `up`."""
        alive = set(self.running())
        for name in alive:
            answer = status(self.ports[name])
            if answer is None:
                return False
            peers = answer["peers"]
            assert isinstance(peers, dict)
            for peer in self.peers[name] & alive:
                if peers.get(peer) != "up":
                    return False
        return True

    def wait_links(self, timeout: float = LINK_SECONDS) -> None:
        wait_until(self.links_up, timeout, lambda: f"links up\n{self.diagnose()}")

    def up(self, *names: str) -> None:
        """Start servers and wait until they answer and all links between running ones are up."""
        self.start(*names)
        self.wait_answering(*names)
        self.wait_links()

    def warm_up(self, timeout: float = 30.0) -> None:
        """Until a report made at one running server is answered by WHATSAT at all of them: the
        flood works and each server's places index is open."""
        alive = self.running()
        self.warm_ups += 1
        client = b"e2e-warm-up-%d" % self.warm_ups
        line = self.iamat(alive[0], client, b"+34.068930-118.445127", now_time())
        self.wait_knows(alive, client, line, timeout)

    def signal(self, name: str, signum: int, timeout: float = STOP_SECONDS) -> int:
        """Send `signum` and wait for the exit; its exit code."""
        proc = self.procs[name]
        proc.send_signal(signum)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise HerdError(
                f"{name} did not exit within {timeout} s of signal {signum}\n{self.diagnose(name)}"
            ) from None

    def pause(self, name: str) -> None:
        """SIGSTOP: the process keeps its sockets but does nothing (a hung or very slow peer)."""
        self.procs[name].send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGCONT)

    def terminate(self, name: str, timeout: float = STOP_SECONDS) -> int:
        return self.signal(name, signal.SIGTERM, timeout)

    def kill(self, *names: str) -> None:
        """SIGKILL each (all at once), then reap them."""
        targets = [self.procs[name] for name in names or self.names]
        for proc in targets:
            if proc.poll() is None:
                proc.kill()
        for proc in targets:
            proc.wait(STOP_SECONDS)

    def close(self) -> None:
        """Fixture teardown: no process of this herd survives."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait(STOP_SECONDS)

    def diagnose(self, *names: str, tail: int = 3000) -> str:
        """The end of each server's stderr, for failure messages."""
        parts = []
        for name in names or self.names:
            path = self.stderr_path(name)
            text = path.read_bytes()[-tail:].decode("utf-8", "replace") if path.exists() else ""
            proc = self.procs.get(name)
            state = "not started" if proc is None else f"returncode={proc.poll()}"
            parts.append(f"--- {name} ({state}) stderr tail:\n{text}")
        return "\n".join(parts)

    # --- queries -------------------------------------------------------------------------------

    def herd_status(self) -> dict[str, Any]:
        """`herd status --json` for this herd's config, decoded."""
        result = subprocess.run(
            [sys.executable, "-m", "herd", "status", "--json", "--config", str(self.config_path)],
            capture_output=True,
            timeout=30,
            cwd=REPO,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        decoded = json.loads(result.stdout)
        assert isinstance(decoded, dict)
        return decoded

    def iamat(self, name: str, client: bytes, position: bytes, when: bytes) -> bytes:
        """Send one IAMAT to `name`; its AT reply without newline."""
        reply = exchange(self.ports[name], b"IAMAT %s %s %s\n" % (client, position, when))
        assert reply.startswith(b"AT ") and reply.endswith(b"\n"), reply
        assert reply.count(b"\n") == 1, reply
        return reply[:-1]

    def at_line(self, name: str, client: bytes) -> bytes | None:
        return at_line(self.ports[name], client)

    def wait_knows(self, names: Iterable[str], client: bytes, line: bytes, timeout: float) -> None:
        """Until every server in `names` has stored exactly `line` for `client`."""
        pending = list(names)

        def done() -> bool:
            pending[:] = [name for name in pending if self.at_line(name, client) != line]
            return not pending

        wait_until(
            done,
            timeout,
            lambda: (
                f"{pending} to store {line!r}: "
                + ", ".join(f"{name} has {self.at_line(name, client)!r}" for name in pending)
            ),
        )

    def wait_converged(
        self, names: Iterable[str], expected: dict[bytes, bytes], timeout: float
    ) -> None:
        """Until every server in `names` stores exactly `expected[client]` for every client."""
        pending = list(names)
        differences: dict[str, dict[bytes, bytes | None]] = {}

        def done() -> bool:
            for name in list(pending):
                stored = at_lines(self.ports[name], expected)
                wrong = {c: line for c, line in stored.items() if line != expected[c]}
                if wrong:
                    differences[name] = wrong
                else:
                    pending.remove(name)
                    differences.pop(name, None)
            return not pending

        wait_until(
            done,
            timeout,
            lambda: (
                f"{pending} to converge; first differences: "
                + ", ".join(
                    f"{name}: {list(wrong.items())[:3]}" for name, wrong in differences.items()
                )
            ),
        )


@contextmanager
def running_herd(
    root: Path,
    names: tuple[str, ...] = NAMES,
    links: tuple[tuple[str, str], ...] = LINKS,
    max_line: int = 1024,
    seed: Path | None = None,
) -> Iterator[Herd]:
    """A herd (not started yet) that is always torn down, whatever happens."""
    herd = Herd(root, names, links, max_line, seed)
    try:
        yield herd
    finally:
        herd.close()
