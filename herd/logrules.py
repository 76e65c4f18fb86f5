"""Which lines reach the log, and how much of each (pure: the time is passed in).

The log must not grow faster than the information it carries: a blank line carries none, the
ten-thousandth `STATUS` of a second from one connection very little, and past its first
kilobyte a line is mostly what its length says.  So blank lines are not logged, long lines are
cut with their length noted, and each connection (each peer link, and the server's own notes)
gets at most `lines_per_second` lines a second; the lines over that are counted and the count is
logged once the second is over, as one line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


def cut(line: bytes, line_bytes: int) -> bytes:
    """`line`, or its first `line_bytes` bytes and its length when it is longer."""
    if len(line) <= line_bytes:
        return line
    return line[:line_bytes] + b"... (%d bytes, cut)" % len(line)


def is_blank(line: bytes) -> bool:
    return not line or line.isspace()


@dataclass(slots=True)
class _Second:
    second: int
    logged: int = 0
    over: int = 0


class LineBudget:
    """Each source's lines per whole second of the clock: the first `lines_per_second`
    non-blank ones are logged (cut to `line_bytes`), the rest counted for a summary."""

    def __init__(self, lines_per_second: int, line_bytes: int) -> None:
        self.lines_per_second = lines_per_second
        self.line_bytes = line_bytes
        self._seconds: dict[str, _Second] = {}

    def admit(self, who: str, lines: Iterable[bytes], now: float) -> tuple[list[bytes], str]:
        """The lines of `who` to log now, and the summary of its last second if that second
        is over and had lines not logged ("" if none)."""
        second = int(now)
        current = self._seconds.get(who)
        summary = ""
        if current is None or current.second != second:
            if current is not None and current.over:
                summary = self.summary(who, current.over)
            current = self._seconds[who] = _Second(second)
        kept: list[bytes] = []
        room = self.lines_per_second - current.logged
        for line in lines:
            if is_blank(line):
                continue
            if room > 0:
                room -= 1
                kept.append(cut(line, self.line_bytes))
            else:
                current.over += 1
        current.logged = self.lines_per_second - room
        return kept, summary

    def ended(self, now: float | None) -> list[str]:
        """Summaries of the seconds that are over (each once), forgetting those seconds: a
        source that went quiet still gets its count, and memory holds only recent sources.
        With `now` None, every second is over (the log is closing)."""
        second = None if now is None else int(now)
        summaries: list[str] = []
        for who, current in list(self._seconds.items()):
            if current.second != second:
                if current.over:
                    summaries.append(self.summary(who, current.over))
                del self._seconds[who]
        return summaries

    def summary(self, who: str, over: int) -> str:
        return f"{over} more lines from {who} not logged (over {self.lines_per_second} a second)"
