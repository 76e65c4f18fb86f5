"""Read-only views of the merged state: `User`, `Event` and its options and comments.

Built by `PlanningState` from its registers and frozen: the state hands out the same object until
an op changes it, so callers may cache what they derive from one by identity.  Their `to_json` is
what line replies show.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from herd.ops import Choice, Stamp

__all__ = ["Comment", "Event", "PlaceOption", "Status", "TimeOption", "User", "format_utc"]


def format_utc(posix: int) -> str:
    """POSIX seconds as ISO 8601 in UTC, the form every view shows: `2099-12-05T18:00:00Z`."""
    return datetime.fromtimestamp(posix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Status(StrEnum):
    PLANNING = "planning"
    DECIDED = "decided"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class User:
    """A user as the merged registers say, defaults filled in."""

    id: str
    jid: str | None
    email: str | None
    channels: tuple[str, ...]
    digest: str
    quiet: str | None
    tz: str | None
    clients: tuple[str, ...]
    token_hash: str | None
    link_generation: int = 0  # personal web links made under an older one are revoked
    web_quiet: bool = True  # no mail or chat message for a change the user watches live
    digest_at: str | None = None  # "HH:MM" local; None: the herd's `[notifications] digest_at`

    def to_json(self, timezone: str) -> dict[str, object]:
        """The user as a line reply shows it: no token hash; `timezone` is the effective one
        (set, or derived from the position by the caller)."""
        return {
            "id": self.id,
            "jid": self.jid,
            "email": self.email,
            "channels": list(self.channels),
            "digest": self.digest,
            "digest_at": self.digest_at,
            "quiet": self.quiet,
            "tz": timezone,
            "tz_set": self.tz is not None,
            "web_quiet": self.web_quiet,
            "clients": list(self.clients),
        }


@dataclass(frozen=True, slots=True)
class TimeOption:
    id: str
    at: int
    by: str
    stamp: Stamp


@dataclass(frozen=True, slots=True)
class PlaceOption:
    id: str
    name: str
    lat: float | None
    lon: float | None
    by: str
    stamp: Stamp


@dataclass(frozen=True, slots=True)
class Comment:
    id: str
    by: str
    text: str
    stamp: Stamp


@dataclass(frozen=True, slots=True)
class Event:
    """One event as the merged state says.  `invitees` excludes the organiser; `votes` holds
    only the votes of current participants on options that exist; options and comments are in
    stamp order."""

    id: str
    title: str
    organiser: str
    status: Status
    decision: tuple[str, str] | None
    invitees: tuple[str, ...]
    times: tuple[TimeOption, ...]
    places: tuple[PlaceOption, ...]
    votes: Mapping[str, Mapping[str, Choice]]
    comments: tuple[Comment, ...]

    @property
    def participants(self) -> frozenset[str]:
        """Who may see the event and vote on it: the organiser and the invitees."""
        return frozenset((self.organiser, *self.invitees))

    def time(self, option_id: str) -> TimeOption | None:
        return next((option for option in self.times if option.id == option_id), None)

    def place(self, option_id: str) -> PlaceOption | None:
        return next((option for option in self.places if option.id == option_id), None)

    def tally(self, option_id: str) -> dict[Choice, tuple[str, ...]]:
        """Who voted what on an option, each list sorted."""
        votes = self.votes.get(option_id, {})
        return {
            choice: tuple(sorted(voter for voter, vote in votes.items() if vote is choice))
            for choice in Choice
        }

    def to_json(self) -> dict[str, object]:
        """The compact view every `EVENT` reply carries."""
        decision = self.decision
        return {
            "id": self.id,
            "title": self.title,
            "organiser": self.organiser,
            "status": self.status.value,
            "invitees": list(self.invitees),
            "times": [
                {"id": o.id, "at": format_utc(o.at), "by": o.by, **self._tally_json(o.id)}
                for o in self.times
            ],
            "places": [
                {
                    "id": o.id,
                    "name": o.name,
                    "lat": o.lat,
                    "lon": o.lon,
                    "by": o.by,
                    **self._tally_json(o.id),
                }
                for o in self.places
            ],
            "decision": None if decision is None else {"time": decision[0], "place": decision[1]},
            "comments": [
                {"id": c.id, "by": c.by, "at": format_utc(c.stamp[0] // 10**9), "text": c.text}
                for c in self.comments
            ],
        }

    def _tally_json(self, option_id: str) -> dict[str, list[str]]:
        return {choice.value: list(voters) for choice, voters in self.tally(option_id).items()}
