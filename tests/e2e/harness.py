"""Run real `herd run` processes on loopback, as a user starts them, and talk to them.

Blocking code only (these tests run no reactor): `subprocess` for the servers, plain sockets for
the clients.  Every wait is a poll with a deadline; nothing sleeps for a fixed time except the
short pause between two polls.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"

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
POLL_SECONDS = 0.02
START_SECONDS = 20.0
LINK_SECONDS = 10.0
STOP_SECONDS = 5.0


class HerdError(AssertionError):
    """A wait that ran out, with what the servers said on stderr."""


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports, random and checked by binding them.

    They are taken below the kernel's ephemeral range when there is room: a server's port is
    free while the server is down between a kill and a restart, and a port from the ephemeral
    range could meanwhile become the local end of some outgoing connection (a peer redialing,
    a test client), making the restart fail with EADDRINUSE.
    """
    low, _ = _ephemeral_range()
    candidates = list(range(20000, low)) if low - 20000 >= 1000 else []
    random.SystemRandom().shuffle(candidates)
    chosen: list[socket.socket] = []
    try:
        for port in candidates:
            if len(chosen) == count:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((HOST, port))
            except OSError:
                sock.close()
                continue
            chosen.append(sock)
        while len(chosen) < count:  # no room below the ephemeral range: let the kernel pick
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            chosen.append(sock)
        return [sock.getsockname()[1] for sock in chosen]
    finally:
        for sock in chosen:
            sock.close()


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


def wait_until(
    condition: Callable[[], T | None],
    timeout: float,
    what: str | Callable[[], str],
) -> T:
    """Poll `condition` until it returns something truthy; raise HerdError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            message = what() if callable(what) else what
            raise HerdError(f"timed out after {timeout} s: {message}")
        time.sleep(POLL_SECONDS)


def stays_false(condition: Callable[[], bool], seconds: float) -> bool:
    """True if `condition` stays false for `seconds` (polled), False as soon as it holds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return False
        time.sleep(POLL_SECONDS)
    return not condition()


# --- clients -----------------------------------------------------------------------------------


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_to_eof(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server writes until it closes (within `timeout`)."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
        except TimeoutError:
            received = b"".join(chunks)
            raise HerdError(
                f"no EOF within {timeout} s; got {len(received)} bytes: ...{received[-300:]!r}"
            ) from None
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data`, half-close, and return every byte of the answer up to the server's close."""
    with connect(port, timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return read_to_eof(sock, timeout)


class Client:
    """An interactive line client: one connection, replies read as they come."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = connect(port, timeout)
        self.timeout = timeout
        self.buffer = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read more into the buffer; False on EOF."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HerdError(f"no reply within {self.timeout} s; buffered {self.buffer[-300:]!r}")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise HerdError(
                f"no reply within {self.timeout} s; buffered {self.buffer[-300:]!r}"
            ) from None
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def read_until(self, terminator: bytes) -> bytes:
        """Up to and including `terminator`; HerdError on timeout or EOF."""
        deadline = time.monotonic() + self.timeout
        while terminator not in self.buffer:
            if not self._fill(deadline):
                raise HerdError(f"EOF before {terminator!r}; buffered {self.buffer!r}")
        end = self.buffer.index(terminator) + len(terminator)
        data, self.buffer = self.buffer[:end], self.buffer[end:]
        return data

    def line(self) -> bytes:
        """One reply line, with its newline."""
        return self.read_until(b"\n")

    def request(self, line: bytes) -> bytes:
        """Send one line (newline added) and read one reply line."""
        self.send(line + b"\n")
        return self.line()

    def whatsat(self, line: bytes) -> bytes:
        """Send a WHATSAT (newline added) and read the whole reply (to `\\n\\n`, or a `?` line)."""
        self.send(line + b"\n")
        first = self.line()
        if first.startswith(b"? "):
            return first
        return first + self.read_until(b"\n\n")

    def at_eof(self, timeout: float = 5.0) -> bool:
        """Whether the server closes the connection (nothing more arrives) within `timeout`."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
        except HerdError:
            return False
        except ConnectionResetError:
            return True
        return True


def at_line(port: int, client: bytes) -> bytes | None:
    """The AT line a server has stored for `client` (without newline), None if it does not know
    the client, by `WHATSAT client 1 0`.  No answer in time counts as not known yet (a first
    WHATSAT waits for the places index to be built, seconds on a busy machine)."""
    try:
        reply = exchange(port, b"WHATSAT " + client + b" 1 0\n")
    except HerdError:
        return None
    first, _, _ = reply.partition(b"\n")
    if first.startswith(b"? "):
        return None
    if not first.startswith(b"AT "):
        raise HerdError(f"unexpected WHATSAT reply: {reply!r}")
    return first


def at_lines(port: int, clients: Iterable[bytes], batch: int = 200) -> dict[bytes, bytes | None]:
    """`at_line` for many clients over one interactive connection, pipelined in batches."""
    wanted = list(clients)
    result: dict[bytes, bytes | None] = {}
    with Client(port) as connection:
        for start in range(0, len(wanted), batch):
            chunk = wanted[start : start + batch]
            connection.send(b"".join(b"WHATSAT " + client + b" 1 0\n" for client in chunk))
            for client in chunk:
                first = connection.line()[:-1]
                if first.startswith(b"? "):
                    result[client] = None
                    continue
                assert first.startswith(b"AT "), first
                result[client] = first
                connection.read_until(b"\n\n")
    return result


def pipeline(port: int, lines: list[bytes], batch: int = 500) -> list[bytes]:
    """One-line replies (IAMAT, STATUS, errors) to many lines over one interactive connection,
    in batches (a batch's replies are read before the next is sent)."""
    replies: list[bytes] = []
    with Client(port) as connection:
        for start in range(0, len(lines), batch):
            chunk = lines[start : start + batch]
            connection.send(b"".join(line + b"\n" for line in chunk))
            replies += [connection.line()[:-1] for _ in chunk]
    return replies


def status(port: int, timeout: float = 2.0) -> dict[str, object] | None:
    """A server's STATUS answer as JSON, or None if it does not answer (yet)."""
    try:
        reply = exchange(port, b"STATUS\n", timeout)
    except (OSError, HerdError):
        return None
    if not reply.startswith(b"STATUS ") or not reply.endswith(b"\n"):
        return None
    decoded = json.loads(reply[len(b"STATUS ") :])
    assert isinstance(decoded, dict)
    return decoded


def peer_states(port: int) -> dict[str, str] | None:
    """The peer links a server's STATUS shows (`{"Bona": "up", ...}`), or None if it does not
    answer."""
    answer = status(port)
    if answer is None:
        return None
    peers = answer["peers"]
    assert isinstance(peers, dict)
    return {str(peer): str(state) for peer, state in peers.items()}


def now_time() -> bytes:
    """The current POSIX time as an IAMAT time field, 9 decimals."""
    return b"%d.%09d" % divmod(time.time_ns(), 1_000_000_000)


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
    ) -> None:
        self.root = root
        self.names = names
        self.links = links
        self.max_line = max_line
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
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
