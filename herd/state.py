"""Users and event planning as replicated state, pure: `PlanningState` merges ops (`herd.ops`)
and builds the views (`herd.views`).

Every change is an `Op` with a globally unique id and a stamp `(time_ns, op_id)`, a total order.
The state is a function of the *set* of ops applied, whatever their order or repetition:

- last-writer-wins registers, where the op with the larger stamp wins: each user field, the
  owner of each client id, each (event, user) invitation, each (event, option, voter) vote, and
  each event's status together with its decision (so a decision is never half applied);
- add-only sets keyed by op id: users, events, proposed options and comments (an event's id and
  an option's id are the id of the op that created it, so they need no coordination);
- max registers: when each user's digest was last sent and the newest change it covered; each
  user's web link generation.

`apply` never refuses a well-formed op: a rule checked on arrival would depend on what had
arrived first, and replicas would diverge.  Rules are checked before an op exists (in
`herd.rules`, on the state of the server that accepts the command); views then read the merged
state through the rules that must hold whatever the order, e.g. only the votes of the current
participants count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, TypeVar

from herd.changes import Change, ChangeKind
from herd.ops import (
    AddComment,
    AddPlace,
    AddTime,
    AddUser,
    Cancel,
    CastVote,
    Choice,
    CreateEvent,
    Decide,
    DigestSent,
    Invite,
    LinksRevoked,
    Op,
    Reopen,
    SetDevice,
    SetUserField,
    Stamp,
    Uninvite,
    UserField,
)
from herd.views import Comment, Event, PlaceOption, Status, TimeOption, User

__all__ = ["DEFAULT_CHANNELS", "DEFAULT_DIGEST", "PlanningState"]

DEFAULT_CHANNELS: Final = ("email", "line", "xmpp")
DEFAULT_DIGEST: Final = "daily"

_K = TypeVar("_K")
_V = TypeVar("_V")
_StatusValue = tuple[Status, str | None, str | None]


def _lww(registers: dict[_K, tuple[Stamp, _V]], key: _K, stamp: Stamp, value: _V) -> bool:
    """Write `value` if `stamp` is newer than the register's; whether it was written."""
    current = registers.get(key)
    if current is not None and current[0] >= stamp:
        return False
    registers[key] = stamp, value
    return True


@dataclass(slots=True)
class _EventRecord:
    created: tuple[str, str, Stamp] | None = None  # title, organiser, stamp
    invitations: dict[str, tuple[Stamp, bool]] = field(default_factory=dict)
    times: dict[str, TimeOption] = field(default_factory=dict)
    places: dict[str, PlaceOption] = field(default_factory=dict)
    votes: dict[tuple[str, str], tuple[Stamp, Choice]] = field(default_factory=dict)
    comments: dict[str, Comment] = field(default_factory=dict)
    status: tuple[Stamp, _StatusValue] | None = None

    def involves(self, user: str) -> bool:
        if self.created is not None and self.created[1] == user:
            return True
        invitation = self.invitations.get(user)
        return invitation is not None and invitation[1]

    def participants(self) -> tuple[str, ...]:
        invited = {user for user, (_, on) in self.invitations.items() if on}
        if self.created is not None:
            invited.add(self.created[1])
        return tuple(sorted(invited))


class PlanningState:
    """Users, devices and events of one server, merged from ops.

    `apply` is idempotent (an op id seen before changes nothing) and commutative (any order of
    the same ops gives an equal `snapshot()`).
    """

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._latest_ns = 0
        self._users: set[str] = set()
        self._user_fields: dict[tuple[str, UserField], tuple[Stamp, str | None]] = {}
        self._jid_users: dict[str, set[str]] = {}  # casefolded JID -> users it is set on
        self._devices: dict[str, tuple[Stamp, str | None]] = {}
        self._clients_of: dict[str, set[str]] = {}
        self._events: dict[str, _EventRecord] = {}
        self._digests: dict[str, tuple[int, int]] = {}  # user -> (last sent, items up to), ns
        self._link_generations: dict[str, int] = {}  # user -> their web links' generation
        self._involved: dict[str, set[str]] = {}  # user -> events they organise or are invited to
        # Built on read and dropped when an op touches them: the notifier reads one event and
        # its participants once per recipient of a change, and a digest run reads each event
        # once per participant, so building them anew each time dominated fan-outs.
        self._built_events: dict[str, Event] = {}
        self._built_users: dict[str, User] = {}

    def knows(self, op_id: str) -> bool:
        """Whether this op was applied already: store and flood an op only when it was not."""
        return op_id in self._seen

    def next_time(self, now_ns: int) -> int:
        """The time for a new op: the clock, but after every op seen (a hybrid logical clock),
        so that a change made after seeing another wins over it even across skewed clocks."""
        return max(now_ns, self._latest_ns + 1)

    def apply(self, op: Op) -> list[Change]:
        """Merge one op; the changes it made (none for a duplicate or an overwritten write)."""
        if op.op_id in self._seen:
            return []
        self._seen.add(op.op_id)
        self._latest_ns = max(self._latest_ns, op.time_ns)
        merged = self._merge(op)
        if merged is None:
            return []
        kind, users = merged
        for user in users:
            self._built_users.pop(user, None)
        event_id = _event_of(op)
        if event_id is not None:
            self._built_events.pop(event_id, None)
            users.update(self._events[event_id].participants())
        return [Change(kind, event_id, tuple(sorted(users)), op)]

    def _merge(self, op: Op) -> tuple[ChangeKind, set[str]] | None:
        """Write the op into its register or set.  None if it lost to a newer write; else the
        kind of change and who it touched beyond an event's participants (who are added)."""
        stamp, body = op.stamp, op.body
        match body:
            case AddUser(user=user):
                if user in self._users:
                    return None
                self._users.add(user)
                return ChangeKind.USER_ADDED, {user}
            case SetUserField(user=user, field=name, value=text):
                before = self._user_fields.get((user, name))
                if not _lww(self._user_fields, (user, name), stamp, text):
                    return None
                if name is UserField.JID:
                    if before is not None and before[1] is not None:
                        self._jid_users[before[1].casefold()].discard(user)
                    if text is not None:
                        self._jid_users.setdefault(text.casefold(), set()).add(user)
                return ChangeKind.USER_UPDATED, {user}
            case SetDevice(client=client, user=user):
                before = self._devices.get(client)
                if not _lww(self._devices, client, stamp, user):
                    return None
                owners: set[str] = set()
                if before is not None and before[1] is not None:
                    self._clients_of[before[1]].discard(client)
                    owners.add(before[1])
                if user is not None:
                    self._clients_of.setdefault(user, set()).add(client)
                    owners.add(user)
                return ChangeKind.USER_UPDATED, owners
            case CreateEvent(title=title):
                self._event(op.op_id).created = title, op.actor, stamp
                self._involved.setdefault(op.actor, set()).add(op.op_id)
                return ChangeKind.CREATED, set()
            case Invite(event=event_id, users=users) | Uninvite(event=event_id, users=users):
                invited = isinstance(body, Invite)
                record = self._event(event_id)
                written = [u for u in users if _lww(record.invitations, u, stamp, invited)]
                for user in written:
                    involved = self._involved.setdefault(user, set())
                    if record.involves(user):
                        involved.add(event_id)
                    else:
                        involved.discard(event_id)
                if not written:
                    return None
                if invited:
                    return ChangeKind.INVITED, set()
                return ChangeKind.UNINVITED, set(written)
            case AddTime(event=event_id, at=at):
                option = TimeOption(op.op_id, at, op.actor, stamp)
                self._event(event_id).times[op.op_id] = option
                return ChangeKind.OPTION_ADDED, set()
            case AddPlace(event=event_id, name=name, lat=lat, lon=lon):
                place = PlaceOption(op.op_id, name, lat, lon, op.actor, stamp)
                self._event(event_id).places[op.op_id] = place
                return ChangeKind.OPTION_ADDED, set()
            case CastVote(event=event_id, option=option_id, choice=choice):
                votes = self._event(event_id).votes
                if not _lww(votes, (option_id, op.actor), stamp, choice):
                    return None
                return ChangeKind.VOTED, set()
            case AddComment(event=event_id, text=text):
                comment = Comment(op.op_id, op.actor, text, stamp)
                self._event(event_id).comments[op.op_id] = comment
                return ChangeKind.COMMENTED, set()
            case Decide(event=event_id, time=time, place=place):
                decided: _StatusValue = Status.DECIDED, time, place
                return self._set_status(event_id, stamp, decided, ChangeKind.DECIDED)
            case Reopen(event=event_id):
                reopened: _StatusValue = Status.PLANNING, None, None
                return self._set_status(event_id, stamp, reopened, ChangeKind.REOPENED)
            case Cancel(event=event_id):
                cancelled: _StatusValue = Status.CANCELLED, None, None
                return self._set_status(event_id, stamp, cancelled, ChangeKind.CANCELLED)
            case LinksRevoked(user=user, generation=generation):
                if generation <= self._link_generations.get(user, 0):
                    return None
                self._link_generations[user] = generation
                return ChangeKind.USER_UPDATED, {user}
            case DigestSent(user=user, upto=upto):
                sent, held = self._digests.get(user, (0, 0))
                merged = max(sent, op.time_ns), max(held, upto)
                if merged == (sent, held):
                    return None
                self._digests[user] = merged
                return ChangeKind.DIGEST_SENT, {user}

    def _set_status(
        self, event_id: str, stamp: Stamp, value: _StatusValue, kind: ChangeKind
    ) -> tuple[ChangeKind, set[str]] | None:
        record = self._event(event_id)
        if record.status is not None and record.status[0] >= stamp:
            return None
        record.status = stamp, value
        return kind, set()

    def _event(self, event_id: str) -> _EventRecord:
        record = self._events.get(event_id)
        if record is None:
            record = self._events[event_id] = _EventRecord()
        return record

    # --- reads -------------------------------------------------------------------------------

    def user(self, user_id: str) -> User | None:
        built = self._built_users.get(user_id)
        if built is not None:
            return built
        if user_id not in self._users:
            return None
        fields = {
            name: register[1]
            for name in UserField
            if (register := self._user_fields.get((user_id, name))) is not None
        }
        channels = fields.get(UserField.CHANNELS)
        built = self._built_users[user_id] = User(
            id=user_id,
            jid=fields.get(UserField.JID),
            email=fields.get(UserField.EMAIL),
            channels=DEFAULT_CHANNELS
            if channels is None
            else tuple(filter(None, channels.split(","))),
            digest=fields.get(UserField.DIGEST) or DEFAULT_DIGEST,
            digest_at=fields.get(UserField.DIGEST_AT),
            quiet=fields.get(UserField.QUIET),
            tz=fields.get(UserField.TZ),
            clients=self.clients_of(user_id),
            token_hash=fields.get(UserField.TOKEN),
            link_generation=self._link_generations.get(user_id, 0),
            web_quiet=fields.get(UserField.WEB_QUIET) != "no",
        )
        return built

    def users(self) -> list[str]:
        return sorted(self._users)

    def digest_sent(self, user_id: str) -> tuple[int, int]:
        """(when the user's last digest was sent, the newest change it covered), ns; both 0
        before the first.  Maxima over every `digest` op, so the same on every server that has
        seen the same ops."""
        return self._digests.get(user_id, (0, 0))

    def user_of_jid(self, jid: str) -> str | None:
        """The user whose JID this is (case-insensitively; the first by id should two have set
        the same one): an index, because the bot asks for every chat message."""
        users = self._jid_users.get(jid.casefold(), set()) & self._users
        return min(users) if users else None

    def user_of_client(self, client: str) -> str | None:
        """The user a client id reports for (`client_text` of the IAMAT's field), if any."""
        register = self._devices.get(client)
        return None if register is None else register[1]

    def clients_of(self, user_id: str) -> tuple[str, ...]:
        return tuple(sorted(self._clients_of.get(user_id, ())))

    def event(self, event_id: str) -> Event | None:
        """The event, or None until its `create` op has arrived.  The same object until an op
        changes the event, so callers may cache what they derive from it by identity."""
        built = self._built_events.get(event_id)
        if built is not None:
            return built
        record = self._events.get(event_id)
        if record is None or record.created is None:
            return None
        title, organiser, _ = record.created
        participants = set(record.participants())
        votes: dict[str, dict[str, Choice]] = {}
        for (option_id, voter), (_, choice) in sorted(record.votes.items()):
            if voter in participants and (option_id in record.times or option_id in record.places):
                votes.setdefault(option_id, {})[voter] = choice
        status, decision = Status.PLANNING, None
        if record.status is not None:
            status, time, place = record.status[1]
            if time is not None and place is not None:
                decision = time, place
        built = self._built_events[event_id] = Event(
            id=event_id,
            title=title,
            organiser=organiser,
            status=status,
            decision=decision,
            invitees=tuple(user for user in sorted(participants) if user != organiser),
            times=tuple(sorted(record.times.values(), key=lambda o: o.stamp)),
            places=tuple(sorted(record.places.values(), key=lambda o: o.stamp)),
            votes=votes,
            comments=tuple(sorted(record.comments.values(), key=lambda c: c.stamp)),
        )
        return built

    def event_ids(self) -> list[str]:
        """Every event created so far, in id order (for the reminder loop: one pass over the
        events, not one per participant)."""
        return sorted(
            event_id for event_id, record in self._events.items() if record.created is not None
        )

    def places(self) -> list[PlaceOption]:
        """Every place proposed in any event (for the places provider's venues)."""
        return [place for record in self._events.values() for place in record.places.values()]

    def event_view(self, event_id: str) -> dict[str, object] | None:
        event = self.event(event_id)
        return None if event is None else event.to_json()

    def events_of(self, user_id: str) -> list[Event]:
        """The events a user organises or is invited to, oldest first."""
        events = [self.event(event_id) for event_id in self._involved.get(user_id, ())]
        found = [event for event in events if event is not None]
        return sorted(found, key=lambda event: self._created_stamp(event.id))

    def _created_stamp(self, event_id: str) -> Stamp:
        created = self._events[event_id].created
        assert created is not None
        return created[2]

    def snapshot(self) -> dict[str, object]:
        """Everything that merging decides, in a form where equal states compare equal (for
        tests and diagnostics; not a wire format)."""
        return {
            "users": frozenset(self._users),
            "user_fields": dict(self._user_fields),
            "devices": dict(self._devices),
            "events": {event_id: _record_snapshot(r) for event_id, r in self._events.items()},
            "digests": dict(self._digests),
            "link_generations": dict(self._link_generations),
        }


def _record_snapshot(record: _EventRecord) -> dict[str, object]:
    return {
        "created": record.created,
        "invitations": dict(record.invitations),
        "times": dict(record.times),
        "places": dict(record.places),
        "votes": dict(record.votes),
        "comments": dict(record.comments),
        "status": record.status,
    }


def _event_of(op: Op) -> str | None:
    match op.body:
        case AddUser() | SetUserField() | SetDevice() | DigestSent() | LinksRevoked():
            return None
        case CreateEvent():
            return op.op_id
        case _:
            return op.body.event
