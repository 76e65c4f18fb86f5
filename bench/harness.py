"""What every benchmark shares beyond the test kit (`tests.support`: ports, processes, herd
configs, line clients): a herd of `herd run` processes pinned to CPUs and started through a
`Processes`, CPU and memory readings from /proc, percentiles and saved results.

Everything here is bounded: every wait has a deadline, and every process started through a
`Processes` is stopped (SIGTERM, then SIGKILL) when its `with` block ends, however it ends.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.herd import LINKS, NAMES, config_text
from tests.support.herd import Herd as KitHerd
from tests.support.lines import peer_states
from tests.support.ports import HOST, free_ports
from tests.support.processes import Child, Processes

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
OFFLINE_PLACES = '[places]\nprovider = "offline"\n'


class BenchError(RuntimeError):
    """A benchmark could not run as planned (a server did not start, a deadline passed)."""


# --- ports and limits ------------------------------------------------------------------------


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def pinned(command: Sequence[str], cpu: int | None) -> list[str]:
    """`command` run under `taskset -c CPU` (taskset execs it: the pid stays the command's)."""
    if cpu is None:
        return list(command)
    taskset = shutil.which("taskset")
    if taskset is None:
        raise BenchError("taskset is not installed (util-linux)")
    return [taskset, "-c", str(cpu), *command]


def herd_command() -> str:
    """The `herd` console script of this environment."""
    beside = Path(sys.executable).parent / "herd"
    if beside.exists():
        return str(beside)
    found = shutil.which("herd")
    if found is None:
        raise BenchError("no `herd` command: install the project (pip install -e .)")
    return found


# --- /proc readings --------------------------------------------------------------------------


def profiled_herd(profile: Path) -> list[str]:
    """The command that runs `herd` under cProfile, writing its profile to `profile`."""
    return [sys.executable, "-m", "cProfile", "-o", str(profile.resolve()), "-m", "herd"]


def bailey_profiled(profile: Path | None) -> dict[str, list[str]]:
    """Launchers for a herd whose Bailey runs under cProfile (none without a path)."""
    return {} if profile is None else {"Bailey": profiled_herd(profile)}


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU of a process, all its threads (live and exited), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as file:
        stat = file.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads (live and exited), in seconds."""
    user, system = cpu_times(pid)
    return user + system


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU of each live thread of a process, by thread id (the main thread's id is
    the pid)."""
    result = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return {}
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/stat", "rb") as file:
                stat = file.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        result[int(task)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return result


def run_ns(pid: int) -> int:
    """Time on CPU of a process's live threads, in nanoseconds (scheduler accounting: exact,
    unlike the clock-tick counts of /proc/PID/stat; used to see whether a process is quiet)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return 0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat", "rb") as file:
                total += int(file.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as file:
        return int(file.read().split()[1]) * PAGE_SIZE


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_quiet(
    pids: Iterable[int],
    window: float = 0.5,
    threshold: float = 0.01,
    timeout: float = 60.0,
) -> float:
    """Wait until every process uses less than `threshold` of a CPU over `window` seconds (so
    deferred work — stores, floods, logs — is done). Returns the seconds waited."""
    pids = list(pids)
    start = time.monotonic()
    deadline = start + timeout
    before = {pid: run_ns(pid) for pid in pids}
    while True:
        time.sleep(window)
        after = {pid: run_ns(pid) for pid in pids}
        busy = max((after[pid] - before[pid]) / 1e9 / window for pid in pids)
        if busy < threshold:
            return time.monotonic() - start
        if time.monotonic() > deadline:
            raise BenchError(f"processes {pids} still busy ({busy:.0%} CPU) after {timeout:.0f} s")
        before = after


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.01
) -> float:
    """Poll `predicate()` until true; returns the seconds it took."""
    start = time.monotonic()
    deadline = start + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


def port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def ask(port: int, data: bytes, timeout: float = 2.0, host: str = HOST) -> bytes:
    """Send `data`, half-close, read everything until the server closes."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


# --- a herd of `herd run` processes ----------------------------------------------------------


@dataclass
class HerdLayout:
    """Names, ports and links of a herd to write into a config."""

    ports: dict[str, int]
    links: tuple[tuple[str, str], ...]

    @classmethod
    def default(cls) -> HerdLayout:
        return cls(dict(zip(NAMES, free_ports(len(NAMES)), strict=True)), LINKS)

    @classmethod
    def single(cls, name: str = "Bailey") -> HerdLayout:
        return cls({name: free_ports(1)[0]}, ())


class Herd(KitHerd):
    """The kit's herd (`tests.support.herd.Herd`: a config in `directory`, one `herd run` per
    server) started the benchmarks' way: each server through `processes` (stopped when its
    block ends), pinned to its core in `cpus` and run by its command in `launchers` (e.g.
    python -m cProfile ... -m herd) if given; a fresh secret, 64 KiB lines, offline places."""

    def __init__(
        self,
        processes: Processes,
        layout: HerdLayout,
        directory: Path,
        cpus: dict[str, int | None] | None = None,
        launchers: dict[str, list[str]] | None = None,
    ) -> None:
        self.processes = processes
        self.directory = directory
        self.cpus = cpus or {}
        self.launchers = launchers or {}
        self.children: dict[str, Child] = {}
        self.spawned_at: dict[str, float] = {}
        self.secret = secrets.token_hex(16)
        names = tuple(layout.ports)
        super().__init__(directory, names, layout.links, max_line=65536, ports=layout.ports)

    def write_config(self, path: Path, links: Iterable[tuple[str, str]]) -> Path:
        text = config_text(self.ports, links, secret=self.secret, max_line=self.max_line)
        path.write_text(
            "# Written by bench/ for one benchmark run.\n" + text + OFFLINE_PLACES,
        )
        return path

    def command(self, name: str, config: Path) -> list[str]:
        launcher = self.launchers.get(name, [herd_command()])
        return pinned([*launcher, "run", name, "--config", str(config)], self.cpus.get(name))

    def start(self, *names: str, config: Path | None = None) -> None:
        """Spawn `herd run NAME` for each name (all by default); returns at once (see
        `wait_ready`)."""
        for name in names or self.names:
            self.spawned_at[name] = time.monotonic()
            command = self.command(name, config or self.config_path)
            child = self.processes.start(name, command, log_path=self.stderr_path(name))
            self.children[name] = child
            self.procs[name] = child.process

    def kill(self, *names: str) -> None:
        """SIGKILL, as a crash would (all the running servers by default)."""
        for name in names or list(self.children):
            self.processes.kill(self.children.pop(name))

    def pid(self, name: str) -> int:
        return self.children[name].pid

    def pids(self) -> dict[str, int]:
        return {name: child.pid for name, child in self.children.items()}

    def check_alive(self) -> None:
        for name, child in self.children.items():
            if not child.alive():
                raise BenchError(f"{name} exited with {child.process.returncode}:\n{child.tail()}")

    def linked(self, name: str) -> bool:
        peers = peer_states(self.port(name), timeout=1.0)
        return peers is not None and all(peers.get(peer) == "up" for peer in self.peers[name])

    def wait_ready(self, names: Iterable[str] | None = None, timeout: float = 20.0) -> float:
        """Wait until each server answers STATUS with every link up; the seconds it took."""
        pending = list(self.names if names is None else names)
        start = time.monotonic()

        def ready() -> bool:
            self.check_alive()
            while pending and self.linked(pending[0]):
                pending.pop(0)
            return not pending

        wait_for(ready, timeout, "the herd's links", interval=0.05)
        return time.monotonic() - start


@contextmanager
def temp_directory(prefix: str) -> Iterator[Path]:
    """A fresh directory under the system temp dir, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        yield Path(name)


# --- numbers ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of `values` (need not be sorted)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-fraction * len(ordered) // 1))))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "commit": _git("rev-parse", "--short", "HEAD"),
        "worktree_changes": bool(_git("status", "--porcelain", "--", "herd", "notifier")),
        "load_average": os.getloadavg(),
        "cpus": cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "open_files_hard_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
    }


def _git(*arguments: str) -> str:
    try:
        done = subprocess.run(
            ["git", *arguments],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def save_results(name: str, results: dict[str, Any]) -> Path:
    """Write `results` as JSON under bench/results/ (git-ignored); returns the path."""
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    results = {"benchmark": name, "when": stamp, "machine": machine(), **results}
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return path
