"""The log's rules (blank lines, long lines, lines per second per connection), its rotation,
and what happens when it cannot be written."""

from __future__ import annotations

import errno
import io
import re
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from herd.config import LogConfig
from herd.logrules import LineBudget, cut
from herd.traffic import RotatingFile, TrafficLog
from tests.protocol.harness import inline

SUMMARY = re.compile(r"(\d+) more lines from (\S+) not logged")


def test_blank_lines_are_not_logged_and_long_ones_are_cut() -> None:
    budget = LineBudget(lines_per_second=100, line_bytes=10)
    kept, summary = budget.admit("c", [b"", b"  ", b"\r", b"STATUS", b"x" * 11], 5.0)
    assert kept == [b"STATUS", b"x" * 10 + b"... (11 bytes, cut)"]
    assert summary == ""
    assert cut(b"x" * 10, 10) == b"x" * 10


def test_lines_over_the_budget_are_counted_in_one_line_once_the_second_is_over() -> None:
    budget = LineBudget(lines_per_second=100, line_bytes=1024)
    kept, _ = budget.admit("a", [b"STATUS"] * 250, 7.0)
    assert len(kept) == 100
    assert budget.admit("b", [b"STATUS"], 7.5) == ([b"STATUS"], "")  # a budget per source
    assert budget.admit("a", [b"STATUS"], 7.9) == ([], "")
    assert budget.ended(7.99) == []
    kept, summary = budget.admit("a", [b"STATUS"], 8.0)
    assert kept == [b"STATUS"]
    assert summary == "151 more lines from a not logged (over 100 a second)"
    budget.admit("a", [b"STATUS"] * 101, 8.5)
    assert budget.ended(9.2) == ["2 more lines from a not logged (over 100 a second)"]
    assert budget.ended(9.3) == []


SOURCES = st.sampled_from(["a", "b", "-"])
LINES = st.lists(st.sampled_from([b"", b" ", b"STATUS", b"IAMAT x +1+1 1", b"y" * 40]))


@given(
    st.lists(st.tuples(SOURCES, LINES, st.floats(0, 0.7)), max_size=60),
    st.integers(1, 5),
)
def test_every_line_is_logged_or_counted_and_no_second_logs_more_than_the_budget(
    steps: list[tuple[str, list[bytes], float]], rate: int
) -> None:
    budget = LineBudget(lines_per_second=rate, line_bytes=16)
    now = 100.0
    logged: dict[tuple[str, int], int] = {}
    counted: dict[str, int] = {}
    sent: dict[str, int] = {}

    def count(summaries: list[str]) -> None:
        for summary in summaries:
            match = SUMMARY.fullmatch(summary.split(" (")[0])
            assert match is not None
            counted[match[2]] = counted.get(match[2], 0) + int(match[1])

    for who, lines, step in steps:
        now += step
        kept, summary = budget.admit(who, lines, now)
        count([summary] if summary else [])
        assert all(len(line) <= 16 + len(b"... (40 bytes, cut)") for line in kept)
        key = (who, int(now))
        logged[key] = logged.get(key, 0) + len(kept)
        assert logged[key] <= rate
        sent[who] = sent.get(who, 0) + sum(1 for line in lines if line.strip())
    count(budget.ended(now + 1))
    for who, total in sent.items():
        shown = sum(n for (source, _), n in logged.items() if source == who)
        assert shown + counted.get(who, 0) == total


def test_rotation_keeps_whole_lines_and_at_most_the_backups(tmp_path: Path) -> None:
    path = tmp_path / "Bailey.log"
    log = RotatingFile(path, max_bytes=1000, backups=2)
    log.open()
    lines = [b"line %04d %s\n" % (number, b"z" * (number % 50)) for number in range(400)]
    for start in range(0, len(lines), 7):
        log.write(b"".join(lines[start : start + 7]))
    log.close()
    files = [Path(f"{path}.2"), Path(f"{path}.1"), path]
    assert not Path(f"{path}.3").exists()
    assert all(0 < file.stat().st_size <= 1000 for file in files)
    kept = b"".join(file.read_bytes() for file in files)
    assert kept.endswith(lines[-1]) and b"".join(lines).endswith(kept)  # the newest, in order
    assert all(file.read_bytes().endswith(b"\n") for file in files)


class FullDisk(io.BytesIO):
    """A stream whose writes fail as on a full disk, until `room` is set."""

    room = False

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if not self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def test_a_log_output_that_cannot_be_written_is_noted_on_the_other(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(1_700_000_000)
    stderr = FullDisk()
    log = TrafficLog("Bailey", tmp_path / "Bailey.log", stderr, clock, inline, LogConfig())
    log.start()
    log.received("127.0.0.1:5", [b"STATUS"])
    log.flush()
    log.received("127.0.0.1:5", [b"WHOAMI"])
    log.flush()
    stderr.room = True
    log.received("127.0.0.1:5", [b"IAMAT"])
    log.stop()
    text = (tmp_path / "Bailey.log").read_bytes()
    assert b"recv 127.0.0.1:5 STATUS\n" in text and b"recv 127.0.0.1:5 WHOAMI\n" in text
    assert text.count(b"the log cannot be written to stderr (") == 1
    assert b"No space left on device" in text
    assert b"note - the log is written to stderr again; " in text
    assert b"recv 127.0.0.1:5 IAMAT\n" in stderr.getvalue()
    assert b"STATUS" not in stderr.getvalue()
