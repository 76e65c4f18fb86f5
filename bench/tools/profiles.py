"""Profiles of a server under load, summarised as the functions where the time goes.

- py-spy (`pip install py-spy`) samples a running server without touching it: shares per
  thread, self time (the sampled frame itself) and inclusive time (anywhere on the stack).
- cProfile (`python -m cProfile -o FILE -m herd run NAME`) counts every call of the reactor
  thread: calls and microseconds per request, exact counts but inflated times.
"""

from __future__ import annotations

import pstats
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from bench.harness import BenchError, pinned

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy_command() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


class Recording:
    """`with Recording(pid, path):` samples `pid` while the block runs (raw collapsed stacks).

    Only samples of the thread holding the GIL are kept (`--gil`): py-spy's idle detection
    does not work here (every thread of a blocked-in-epoll process shows as busy), and the GIL
    holder is what runs Python code.  C code that releases the GIL (SQLite, socket calls,
    epoll) is therefore not in these samples; /proc's per-thread CPU counts it.
    `--nonblocking` keeps the server running at speed while it is sampled.
    """

    def __init__(
        self,
        pid: int,
        path: Path,
        cpu: int | None = None,
        rate: int = 500,
        gil: bool = True,
    ) -> None:
        command = py_spy_command()
        if command is None:
            raise BenchError("py-spy is not installed: pip install py-spy")
        self.path = path
        self.command = pinned(
            [
                command,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--nonblocking",
                "--threads",
                *(["--gil"] if gil else []),
                "--output",
                str(path),
            ],
            cpu,
        )
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Recording:
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        time.sleep(0.5)  # py-spy attaches
        if self.process.poll() is not None:
            error = self.process.stderr.read() if self.process.stderr else b""
            raise BenchError(f"py-spy failed: {error.decode(errors='replace')}")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def thread_names(pid: int) -> dict[int, str]:
    """Python thread names by OS thread id (from `py-spy dump`); empty without py-spy."""
    command = py_spy_command()
    if command is None:
        return {}
    try:
        done = subprocess.run(
            [command, "dump", "--pid", str(pid)],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {}
    return {
        int(match[1]): match[2]
        for match in re.finditer(r'Thread (\d+) \([^)]*\): "([^"]*)"', done.stdout)
    }


@dataclass
class Summary:
    samples: int
    threads: list[tuple[str, float]]
    self_time: list[tuple[str, float]]
    inclusive: list[tuple[str, float]]

    def table(self, top: int = 25) -> str:
        lines = [f"{self.samples} samples", "", "share    thread"]
        lines += [f"{share:6.1%}   {name}" for name, share in self.threads]
        lines += ["", "self %   function"]
        lines += [f"{share:6.1%}   {name}" for name, share in self.self_time[:top]]
        lines += ["", "incl %   function"]
        lines += [f"{share:6.1%}   {name}" for name, share in self.inclusive[:top]]
        return "\n".join(lines)


def _frame_name(frame: str) -> str:
    """`function (path/to/file.py:123)` -> `path/to/file.py:function`, without the line."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    return f"{match['file']}:{match['function']}"


def _thread_name(frame: str) -> str | None:
    """`thread (123): PoolThread-Bailey-store-0` -> `PoolThread-Bailey-store-0`."""
    if frame.startswith("thread ("):
        return frame.partition(": ")[2] or frame
    if frame.startswith("process "):
        return ""
    return None


def summarise(path: Path) -> Summary:
    """Shares per thread, and self and inclusive shares per function, from a py-spy raw
    (collapsed stacks) file."""
    threads: Counter[str] = Counter()
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread = "?"
        frames = []
        for frame in stack.split(";"):
            name = _thread_name(frame)
            if name is None:
                frames.append(_frame_name(frame))
            elif name:
                thread = name
        if not frames:
            continue
        samples += count
        threads[thread] += count
        self_counts[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if not samples:
        return Summary(0, [], [], [])
    return Summary(
        samples,
        [(name, n / samples) for name, n in threads.most_common()],
        [(name, n / samples) for name, n in self_counts.most_common()],
        [(name, n / samples) for name, n in inclusive.most_common()],
    )


def cprofile_table(path: Path, requests: int, top: int = 30, min_calls: float = 0.04) -> str:
    """The hot functions of a cProfile dump, per request: calls, own time, time with callees.

    Only functions called at least `min_calls` times per request are listed, which leaves out
    the start-up (imports) that the dump also holds.  Times include the profiler's overhead:
    compare them with each other, not with unprofiled figures.
    """
    stats = pstats.Stats(str(path))
    rows = []
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    raw = stats.stats  # type: ignore[attr-defined]
    for (file, line, function), (_, calls, own, total, _) in raw.items():
        if calls < min_calls * requests:
            continue
        short = file
        for marker in ("/site-packages/", "/lib/python3.11/"):
            if marker in short:
                short = short.split(marker, 1)[1]
        for marker in ("/herd/", "/bench/"):
            if marker in short:
                short = marker.strip("/") + "/" + short.rsplit(marker, 1)[1]
        name = f"{short}:{line}:{function}" if file != "~" else function
        rows.append((own, total, calls, name))
    rows.sort(reverse=True)
    lines = ["calls/req  own us/req  total us/req  function"]
    for own, total, calls, name in rows[:top]:
        lines.append(
            f"{calls / requests:9.2f}  {own / requests * 1e6:10.2f}  "
            f"{total / requests * 1e6:12.2f}  {name}"
        )
    return "\n".join(lines)
