"""The live stream's rules, pure (no Twisted, no I/O): checkpoints, the Server-Sent Events
framing, what an event's frame says, and where a reconnecting stream resumes.

Checkpoints.  Each change the herd applies comes from one operation, and an operation's
`(time_ns, op id)` orders every change of the herd totally and is the same on every server.
A stream's `id:` is that pair as the line push writes it (`<20-digit ns>.<op id>`, see
`notifier/channels/line.py`), so its text order is its time order and a page can resume on
any server from the last id it saw.

Resuming.  A server keeps the newest `[web] stream_history` changes of each event (and after a
start, the changes of the newest operations the herd replayed).  A stream that comes back with
`Last-Event-ID` gets, in order, every retained change after it; when the id is older than what
is retained (or not a checkpoint at all), it gets one `reset` event instead: the page reloads.

Frames.  Every change is one `change` event whose data is one JSON object (`change_data`):
the event's id, what changed (`change`: for a vote, who said what to which option; a comment
in full), and, on live frames and the last frame of a resume, a summary of the event now
(`state`, see `event_state`: tallies and the leading options, no list of names, so a frame
stays small however many are invited): the page applies the change to itself and checks it
against the summary.  Both are the same for every viewer (what depends on the viewer — their
own answers, their clock — the page works out), so a change is serialised once and the same
bytes go to every stream.  A stream the server ends gets a last `end` event (`end_frame`: why,
and the sentence the page shows) and a properly ended response; only a reader that stalled is
dropped without one.
"""

from __future__ import annotations

import json
import re
import zoneinfo
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from heapq import merge
from typing import Final

from herd.api import AddComment, AddPlace, AddTime, CastVote, Change, Choice, Event
from web.model import option_rows

__all__ = [
    "HEARTBEAT",
    "RESET",
    "RETRY_MS",
    "EventHistory",
    "Resume",
    "change_data",
    "change_record",
    "checkpoint",
    "chunk",
    "end_frame",
    "event_state",
    "frame",
    "is_checkpoint",
    "resume",
    "start_frame",
]

RETRY_MS: Final = 2000
"""How long a browser waits before it reconnects a dropped stream (the `retry:` field)."""
HEARTBEAT: Final = b": \n\n"
"""A comment line: nothing for the page, but bytes on the wire so proxies keep the stream."""
_CHECKPOINT: Final = re.compile(r"[0-9]{20}\.[A-Za-z0-9._-]{1,200}\Z")
_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")
_NAME: Final = re.compile(r"[a-z][a-z_]{0,31}\Z")
_MARKS: Final = {Choice.YES: "yes", Choice.MAYBE: "maybe", Choice.NO: "no"}
_UTC: Final = zoneinfo.ZoneInfo("UTC")


def checkpoint(time_ns: int, op_id: str) -> str:
    """`<20-digit ns>.<op id>`, as `notifier.channels.line.checkpoint` writes it."""
    return f"{time_ns:020d}.{op_id}"


def is_checkpoint(text: str) -> bool:
    return _CHECKPOINT.match(text) is not None


def frame(name: str, data: str, event_id: str | None = None) -> bytes:
    """One SSE event: `id:` (a checkpoint), `event:` and the data, each of its lines on a
    `data:` line of its own (so no line break in the data can end the event early or start a
    field), then the blank line that dispatches it."""
    if _NAME.match(name) is None:
        raise ValueError(f"not an event name: {name!r}")
    parts: list[str] = []
    if event_id is not None:
        if not is_checkpoint(event_id):
            raise ValueError(f"not a checkpoint: {event_id!r}")
        parts.append(f"id: {event_id}\n")
    parts.append(f"event: {name}\n")
    parts.extend(f"data: {line}\n" for line in _LINE_BREAK.split(data))
    parts.append("\n")
    return "".join(parts).encode("utf-8", "surrogateescape")


def chunk(data: bytes) -> bytes:
    """`data` as one HTTP/1.1 chunk (RFC 9112 7.1: its size in hex, CRLF, the data, CRLF), as
    `twisted.web`'s `Request.write` frames it: made once per change for every stream."""
    if not data:
        raise ValueError("an empty chunk ends the body")
    return b"%x\r\n%b\r\n" % (len(data), data)


def start_frame() -> bytes:
    """The first bytes of every stream: the reconnect delay and a `hello` event (the page
    shows it is live)."""
    return f"retry: {RETRY_MS}\n\n".encode() + frame("hello", "{}")


def reset_frame() -> bytes:
    """Sent instead of a backlog the server no longer has: the page reloads (and so gets the
    whole current state and a fresh checkpoint)."""
    return frame("reset", '{"reload":true}')


RESET: Final = reset_frame()

END_REASONS: Final[Mapping[str, str]] = {
    "session": (
        "This page no longer updates itself: your session is over (the links were revoked, "
        "the session expired, or you no longer take part). Open the link in your most recent "
        "Renga message."
    ),
    "stopping": "The server is restarting: this page reconnects by itself.",
}
"""Why the server ends a stream, and what the page tells the reader (`end` events)."""


def end_frame(reason: str) -> bytes:
    """The last event of a stream the server ends: `reason` (a key of `END_REASONS`) and the
    sentence the page shows.  After "session" the page stops following (a new stream would be
    refused); after "stopping" the browser reconnects, as after any dropped stream."""
    message = END_REASONS[reason]
    return frame("end", json.dumps({"reason": reason, "message": message}, sort_keys=True))


def change_record(change: Change) -> dict[str, object]:
    """What one change says, for the page: its kind, who made it, and what it is about (the
    option voted on and the choice, the comment in full, the new option's id)."""
    op = change.op
    record: dict[str, object] = {"kind": change.kind.value, "by": op.actor}
    body = op.body
    if isinstance(body, CastVote):
        record["option"] = body.option
        record["choice"] = _MARKS[body.choice]
    elif isinstance(body, AddComment):
        record["comment"] = {
            "id": op.op_id,
            "by": op.actor,
            "iso": _iso(op.time_ns // 10**9),
            "text": body.text,
        }
    elif isinstance(body, AddTime | AddPlace):
        record["option"] = op.op_id
    return record


def event_state(event: Event) -> dict[str, object]:
    """What a page needs, beside the change itself, to bring itself up to date — the same for
    every viewer, and as small for 10,000 invitees as for 5 (no list of names): the title and
    status, the number of participants, of those who answered and of comments, every option's
    tallies (`[yes, maybe, no]` by option id), the leading time (with its instant) and place
    (with its name), the decided options.  Only participants' answers count
    (`herd.api.Event.votes`), and each has a row in the page's grid, from which the page
    rebuilds an option's "who said what"; a page that finds an option it does not show, a
    participant count it does not list, or a grid that does not add up to the tallies of an
    option it was told about reloads."""
    times, places = option_rows(event, "", _UTC)  # not the whole page: no grid of answers
    options = times + places
    leading_time = next((row for row in times if row.leading), None)
    leading_place = next((row for row in places if row.leading), None)
    said = {voter for votes in event.votes.values() for voter in votes}
    return {
        "title": event.title,
        "status": event.status.value,
        "participants": len(event.participants),
        "answered": len(said),
        "comments": len(event.comments),
        "tallies": {row.id: [len(row.yes), len(row.maybe), len(row.no)] for row in options},
        "leading_time": None if leading_time is None else leading_time.id,
        "leading_time_at": None if leading_time is None else leading_time.iso,
        "leading_place": None if leading_place is None else leading_place.id,
        "leading_place_name": None if leading_place is None else leading_place.label,
        "decided": [row.id for row in options if row.decided],
    }


def change_data(
    event_id: str, record: Mapping[str, object], state: Mapping[str, object] | None
) -> str:
    """The data of one `change` event: one line of JSON (non-ASCII escaped)."""
    data: dict[str, object] = {"event": event_id, "change": record}
    if state is not None:
        data["state"] = state
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def _iso(posix: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(posix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class EventHistory:
    """One event's newest changes, sorted by checkpoint (a late one, flooded after a partition
    healed, is filed in its place); `floor`: the greatest checkpoint no longer known (dropped
    for room, or older than what a start replayed), None while nothing was lost."""

    limit: int
    floor: str | None = None
    checkpoints: list[str] = field(default_factory=list)
    records: list[dict[str, object]] = field(default_factory=list)

    def add(self, mark: str, record: dict[str, object]) -> bool:
        """File one change; False when it was already held (or is older than the floor)."""
        if self.floor is not None and mark <= self.floor:
            return False
        index = bisect_left(self.checkpoints, mark)
        if index < len(self.checkpoints) and self.checkpoints[index] == mark:
            return False
        self.checkpoints.insert(index, mark)
        self.records.insert(index, record)
        while len(self.checkpoints) > self.limit:
            self.floor = self.checkpoints.pop(0)
            self.records.pop(0)
        return True

    def latest(self) -> str | None:
        return self.checkpoints[-1] if self.checkpoints else self.floor

    def after(self, since: str) -> list[tuple[str, dict[str, object]]]:
        start = bisect_right(self.checkpoints, since)
        return list(zip(self.checkpoints[start:], self.records[start:], strict=True))

    def knows(self, since: str) -> bool:
        """Whether every change after `since` is here."""
        return self.floor is None or since >= self.floor


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a reconnecting stream starts: `reset` (the page must reload), or the missed
    changes in checkpoint order as (checkpoint, event id, record)."""

    reset: bool
    missed: Sequence[tuple[str, str, dict[str, object]]] = ()


def resume(
    since: str | None, histories: Mapping[str, EventHistory], restart_floor: str | None
) -> Resume:
    """What a stream over the events of `histories` (by id) gets before the live changes.

    `since` None: nothing (a first connection starts live).  Not a checkpoint, older than a
    history's floor, or older than `restart_floor` (the oldest change this server replayed at
    its start, when it could not replay them all): a reset.  Else every retained change after
    it, merged across the events in checkpoint order."""
    if since is None:
        return Resume(False)
    if not is_checkpoint(since):
        return Resume(True)
    if restart_floor is not None and since < restart_floor:
        return Resume(True)
    lists: list[Iterable[tuple[str, str, dict[str, object]]]] = []
    for event_id, history in histories.items():
        if not history.knows(since):
            return Resume(True)
        lists.append([(mark, event_id, record) for mark, record in history.after(since)])
    return Resume(False, list(merge(*lists, key=lambda item: item[0])))
