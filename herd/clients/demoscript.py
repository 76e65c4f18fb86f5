"""The script of `herd demo`, as data (pure): a get-together of the demo users alice, bob and
carol, one step after another (who, on which server, which lines, what to say before and where
to look after), built from the time passed in; what the replies so far taught (`Known`: the
event, its options, the venue suggested), which later lines refer to; and the closing summary.

Lines are wire objects (`herd.wire`), formatted by their own `to_line`.  The runner
(`herd.clients.demo`) sends them and feeds each reply back through `Known.learn`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from typing import Any, Final, Protocol
from zoneinfo import ZoneInfo

from herd.ops import Choice, client_bytes
from herd.wire.client import IAmAt
from herd.wire.planning import (
    AddDevice,
    CommentOn,
    DecideEvent,
    InviteUsers,
    PlanEvent,
    ProposePlace,
    ProposeTime,
    ShowEvent,
    Subscribe,
    Suggest,
    VoteOn,
)

ZONE: Final = "Europe/Paris"
"""alice's zone: the one at the positions below (every friend is in Paris)."""
TITLE: Final = "Dinner with friends"
COMMENT: Final = "Saturday suits me. I will book a table for three."
MIN_AHEAD: Final = timedelta(hours=3)
"""A proposed time is at least this far ahead of the demo's start, or a week later."""
SHOWN_CHARACTERS: Final = 200
"""A reply longer than this is cut when shown (the rest is counted)."""


class Command(Protocol):
    """A wire object: one command line, formatted by the wire module that parses it."""

    def to_line(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Friend:
    """A demo user, the device that reports for them and where it is."""

    user: str
    device: str
    position: str  # ISO 6709, as IAMAT takes it
    where: str

    @property
    def degrees(self) -> tuple[float, float]:
        return _degrees(self.position)


FRIENDS: Final = (
    Friend("alice", "alice-phone", "+48.8566+002.3522", "by the Hôtel de Ville"),
    Friend("bob", "bob-phone", "+48.8606+002.3376", "near the Louvre"),
    Friend("carol", "carol-phone", "+48.8530+002.3499", "in the Latin Quarter"),
)


@dataclass(frozen=True, slots=True)
class Venue:
    name: str
    lat: float
    lon: float

    @property
    def position(self) -> str:
        return f"{self.lat:+.4f}{self.lon:+09.4f}"


FALLBACK_VENUE: Final = Venue("Chez Paul", 48.8530, 2.3499)
"""The place alice proposes when SUGGEST names no venue (a places provider that failed)."""


class NotKnownYet(LookupError):
    """A line refers to something no reply has told yet (an earlier step went wrong)."""


@dataclass(frozen=True, slots=True)
class Known:
    """What the replies so far told: the event's id, its time and place options in the order
    they were made, the first venue SUGGEST named, and the event as last shown."""

    event: str | None = None
    times: tuple[str, ...] = ()
    places: tuple[str, ...] = ()
    venue: Venue | None = None
    document: Mapping[str, Any] | None = None

    def learn(self, reply: bytes) -> Known:
        """This, plus what one reply line tells (`EVENT {…}`, `SUGGEST {…}`; others teach
        nothing)."""
        word, _, body = reply.rstrip(b"\r\n").partition(b" ")
        if word not in (b"EVENT", b"SUGGEST"):
            return self
        try:
            document = json.loads(body)
        except ValueError:
            return self
        if not isinstance(document, dict):
            return self
        if word == b"SUGGEST":
            return replace(self, venue=_first_venue(document.get("venues")))
        return replace(
            self,
            event=str(document.get("id")),
            times=_ids(document.get("times")),
            places=_ids(document.get("places")),
            document=document,
        )

    def event_id(self) -> str:
        if self.event is None:
            raise NotKnownYet("the event's id")
        return self.event

    def time(self, index: int) -> str:
        if index >= len(self.times):
            raise NotKnownYet(f"time option {index + 1}")
        return self.times[index]

    def place(self, index: int) -> str:
        if index >= len(self.places):
            raise NotKnownYet(f"place option {index + 1}")
        return self.places[index]

    def place_to_propose(self) -> Venue:
        return self.venue if self.venue is not None else FALLBACK_VENUE


Line = Callable[[Known], Command]
"""A line of a step: a wire object, made from what earlier replies told."""


@dataclass(frozen=True, slots=True)
class Step:
    """One step: `user` sends `lines` to `server`, each waiting for its reply.  `says` is told
    before, `look` after (where the step's effects show).  A `follow` step has a connection of
    its own that stays open to the end, every line it gets afterwards shown as it comes."""

    user: str
    server: str
    title: str
    says: str
    lines: tuple[Line, ...]
    look: str = ""
    follow: bool = False


@dataclass(frozen=True, slots=True)
class Setting:
    """Where the demo plays: alice's, bob's and carol's servers and the one checked at the end;
    whether the herd sends mail (a sink or a relay) and Jabber messages."""

    alice: str
    bob: str
    carol: str
    checked: str
    mail: bool = True
    jabber: bool = True
    zone: str = ZONE
    friends: tuple[Friend, ...] = field(default=FRIENDS)


def choose_servers(names: Sequence[str], peers: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """alice's server, bob's and carol's (alice's neighbours first, so her changes reach them
    by one link), and a fourth for the last look (one nobody used, if there is one)."""
    if not names:
        raise ValueError("a herd has at least one server")
    first = names[0]
    neighbours = [name for name in names if name != first and name in peers.get(first, ())]
    others = [name for name in names if name != first and name not in neighbours]
    order = [first, *neighbours, *others]
    bob = order[1 % len(order)]
    carol = order[2 % len(order)]
    unused = [name for name in order if name not in (first, bob, carol)]
    return first, bob, carol, unused[-1] if unused else order[-1]


def peers_of(links: Sequence[frozenset[str]]) -> dict[str, list[str]]:
    """Each server's neighbours, from the config's links."""
    result: dict[str, list[str]] = {}
    for link in links:
        for name in link:
            result.setdefault(name, []).extend(sorted(link - {name}))
    return result


def next_at(now: datetime, zone: ZoneInfo, weekday: int, at: time) -> datetime:
    """The next `weekday` (Monday 0) at `at` in `zone`, at least `MIN_AHEAD` after `now`."""
    local = now.astimezone(zone)
    day = local.date() + timedelta(days=(weekday - local.weekday()) % 7)
    chosen = datetime.combine(day, at, tzinfo=zone)
    if chosen - now < MIN_AHEAD:
        chosen = datetime.combine(day + timedelta(days=7), at, tzinfo=zone)
    return chosen


def iso_minutes(moment: datetime) -> str:
    """`2026-12-12T19:00+01:00`: what PROPOSE … TIME takes."""
    return moment.isoformat(timespec="minutes")


def label(moment: datetime) -> str:
    """`Saturday 12 December 19:00` (in the moment's own zone)."""
    return f"{moment:%A} {moment.day} {moment:%B %H:%M}"


def posix(now_ns: int) -> bytes:
    """An IAMAT time: POSIX seconds with nanoseconds."""
    return b"%d.%09d" % divmod(now_ns, 10**9)


def get_together(now_ns: int, setting: Setting) -> list[Step]:
    """The script: positions, a subscription, a plan, times and a place, votes, a comment, a
    decision, and a look at the event on another server.  `now_ns`: the demo's start."""
    now = datetime.fromtimestamp(now_ns / 10**9, UTC)
    zone = ZoneInfo(setting.zone)
    friday = next_at(now, zone, 4, time(19, 30))
    saturday = next_at(now, zone, 5, time(19, 0))
    servers = {"alice": setting.alice, "bob": setting.bob, "carol": setting.carol}
    steps = [_report(friend, servers[friend.user], setting, now_ns) for friend in setting.friends]
    steps += [
        Step(
            "bob",
            setting.bob,
            "bob's program subscribes to his notifications",
            "SUBSCRIBE makes this connection bob's feed: each notice for bob arrives as a PUSH "
            "line, at once. It stays open to the end; what it gets is shown as it comes.",
            (lambda k: Subscribe(None),),
            follow=True,
        ),
        Step(
            "alice",
            setting.alice,
            "alice plans a dinner",
            "PLAN makes an event organised by alice; its id is the reply's first field.",
            (lambda k: PlanEvent(TITLE),),
            "The event's id names it on every server of the herd.",
        ),
        Step(
            "alice",
            setting.alice,
            "alice invites bob and carol",
            "INVITE names the event and the friends.",
            (lambda k: InviteUsers(k.event_id(), ("bob", "carol")),),
            "An invitation is urgent: each is told at once. "
            + _told("bob", setting)
            + " "
            + _told("carol", setting)
            + " bob's line client gets a PUSH too.",
        ),
        Step(
            "alice",
            setting.alice,
            "alice proposes two times",
            f"Times are relative to today, in alice's zone ({setting.zone}): "
            f"{label(friday)} and {label(saturday)}.",
            (
                lambda k: ProposeTime(k.event_id(), iso_minutes(friday)),
                lambda k: ProposeTime(k.event_id(), iso_minutes(saturday)),
            ),
            "bob's line client gets a PUSH new_option for each; by mail, new options wait for "
            "the daily digest.",
        ),
        Step(
            "alice",
            setting.alice,
            "alice asks where to meet",
            "SUGGEST ranks venues near the three friends by the trips everyone would make.",
            (lambda k: Suggest(k.event_id(), "2"),),
            "alice proposes the first venue of the reply next: the one with the shortest trips "
            "in all.",
        ),
        Step(
            "alice",
            setting.alice,
            "alice proposes the place",
            "PROPOSE … PLACE with a position: every server's places provider knows it then.",
            (
                lambda k: ProposePlace(
                    k.event_id(), k.place_to_propose().position, k.place_to_propose().name
                ),
            ),
            "bob's line client gets a PUSH new_option.",
        ),
        Step(
            "bob",
            setting.bob,
            f"bob votes, on {setting.bob}",
            f"YES for {label(saturday)}, MAYBE for {label(friday)}, YES for the place.",
            (
                lambda k: VoteOn(k.event_id(), k.time(1), Choice.YES),
                lambda k: VoteOn(k.event_id(), k.time(0), Choice.MAYBE),
                lambda k: VoteOn(k.event_id(), k.place(0), Choice.YES),
            ),
            "alice, the organiser, hears of votes bundled (a minute's worth on Jabber, "
            "the daily digest by mail).",
        ),
        Step(
            "carol",
            setting.carol,
            f"carol votes, on {setting.carol}",
            f"YES for {label(saturday)}, NO for {label(friday)}, YES for the place.",
            (
                lambda k: VoteOn(k.event_id(), k.time(1), Choice.YES),
                lambda k: VoteOn(k.event_id(), k.time(0), Choice.NO),
                lambda k: VoteOn(k.event_id(), k.place(0), Choice.YES),
            ),
            "Two of three say YES to Saturday: a majority, and alice is told at once. "
            + _told("alice", setting),
        ),
        Step(
            "carol",
            setting.carol,
            "carol comments",
            "COMMENT adds free text to the event.",
            (lambda k: CommentOn(k.event_id(), COMMENT),),
            "bob's line client gets a PUSH comment; by mail, comments wait for the digest.",
        ),
        Step(
            "alice",
            setting.alice,
            "alice decides: Saturday, at the place proposed",
            "DECIDE names a time option and a place option.",
            (lambda k: DecideEvent(k.event_id(), k.time(1), k.place(0)),),
            "Everyone is told at once. "
            + _told("bob", setting)
            + " "
            + _told("carol", setting)
            + (" The mail carries a calendar file: `herd mail ID --ics`." if setting.mail else "")
            + " bob's line client gets a PUSH decided.",
        ),
        Step(
            "carol",
            setting.checked,
            f"carol looks at the event on {setting.checked}",
            f"Every server holds every change: {setting.checked} got them by flooding.",
            (lambda k: ShowEvent(k.event_id()),),
            'The event is "decided" here too.',
        ),
    ]
    return steps


def _report(friend: Friend, server: str, setting: Setting, now_ns: int) -> Step:
    lat, lon = friend.degrees
    report = IAmAt(client_bytes(friend.device), friend.position.encode(), posix(now_ns), lat, lon)
    return Step(
        friend.user,
        server,
        f"{friend.user}'s phone reports where {_pronoun(friend.user)} is, to {server}",
        f"DEVICE ADD makes {friend.device} {friend.user}'s; its IAMAT says {friend.where}.",
        (lambda k: AddDevice(friend.device), lambda k: report),
        f"{server} floods the AT line to every server: on any of them, "
        f"`WHATSAT {friend.device} 1 3` finds it.",
    )


def _pronoun(user: str) -> str:
    return "he" if user == "bob" else "she"


def _told(user: str, setting: Setting) -> str:
    """Where `user` reads an urgent notice, with the channels this herd has."""
    ways = []
    if setting.jabber:
        ways.append(
            f"in {_possessive(user)} Jabber client if {_pronoun(user)} chats with the bot "
            f"(`herd chat {user}`)"
        )
    if setting.mail:
        ways.append(f"in a mail to {user}@example.org (`herd mail` lists it)")
    if not ways:
        return f"{user} only on the line: this herd sends no mail and no Jabber message."
    return f"{user} reads it " + ", else ".join(ways) + "."


def _possessive(user: str) -> str:
    return "his" if user == "bob" else "her"


def _ids(options: object) -> tuple[str, ...]:
    if not isinstance(options, list):
        return ()
    return tuple(str(o["id"]) for o in options if isinstance(o, dict) and "id" in o)


def _first_venue(venues: object) -> Venue | None:
    if not isinstance(venues, list) or not venues or not isinstance(venues[0], dict):
        return None
    first = venues[0]
    try:
        return Venue(str(first["name"]), float(first["lat"]), float(first["lon"]))
    except (KeyError, TypeError, ValueError):
        return None


def _degrees(position: str) -> tuple[float, float]:
    cut = max(position.rfind("+"), position.rfind("-"))
    return float(position[:cut]), float(position[cut:])


# --- what is shown ---------------------------------------------------------------------------


def shown(line: bytes) -> str:
    """A line as shown: its text without the newline, cut at `SHOWN_CHARACTERS`."""
    text = line.rstrip(b"\r\n").decode("utf-8", "replace")
    if len(text) <= SHOWN_CHARACTERS:
        return text
    return f"{text[:SHOWN_CHARACTERS]}… ({len(text) - SHOWN_CHARACTERS} more characters)"


def summary(
    known: Known, tokens: Mapping[str, str], setting: Setting, config_option: str
) -> list[str]:
    """The closing lines: the event, who voted what, the new tokens, where to look further."""
    document = known.document or {}
    zone = ZoneInfo(setting.zone)
    times = {str(t["id"]): _local(str(t["at"]), zone) for t in document.get("times", [])}
    places = {str(p["id"]): str(p["name"]) for p in document.get("places", [])}
    lines = [f'The event {known.event} "{document.get("title")}" is {document.get("status")}.']
    decision = document.get("decision")
    if isinstance(decision, dict):
        chosen = times.get(str(decision.get("time")), "?")
        lines.append(f"  when: {chosen} ({setting.zone}); where: {places.get(decision['place'])}")
    lines.append("  votes:")
    for option in [*document.get("times", []), *document.get("places", [])]:
        name = times.get(option["id"]) or places.get(option["id"], option["id"])
        votes = "; ".join(
            f"{choice} {', '.join(option[choice]) or '-'}" for choice in ("yes", "maybe", "no")
        )
        lines.append(f"    {name:32} {votes}")
    lines.append("New tokens (the ones `herd up` printed no longer work):")
    lines += [f"  AUTH {user} {token}" for user, token in tokens.items()]
    further = []
    if setting.mail:
        further.append((f"herd mail{config_option}", "the mails the sink kept"))
        further.append((f"herd mail ID --ics FILE{config_option}", "a mail's calendar file"))
    further.append(
        (
            f"herd talk {setting.bob}{config_option}",
            f"then `AUTH bob <token>` and `EVENT {known.event}`",
        )
    )
    if setting.jabber:
        further.append((f"herd chat carol{config_option}", "the bot, as carol (type `help`)"))
    width = max(len(command) for command, _ in further)
    lines.append("Look further:")
    lines += [f"  {command:{width}}  {what}" for command, what in further]
    return lines


def _local(at: str, zone: ZoneInfo) -> str:
    try:
        moment = datetime.strptime(at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return at
    return label(moment.astimezone(zone))
