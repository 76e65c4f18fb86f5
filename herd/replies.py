"""Planning replies, pure: what an accepted command answers, read from the state once its ops
are applied (`USER {...}`, `LINKS {...}`, `EVENT {...}`, `EVENTS [...]`, `SUGGEST {...}`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from herd.ops import Op
from herd.state import PlanningState
from herd.venues import SuggestionQuery, Venue, rank_venues, who_is_near
from herd.wire.planning import (
    AddDevice,
    CancelEvent,
    CommentOn,
    DecideEvent,
    InviteUsers,
    ListEvents,
    Login,
    PlanEvent,
    PlanningError,
    ProposePlace,
    ProposeTime,
    RemoveDevice,
    ReopenEvent,
    RevokeLinks,
    SetUser,
    ShowEvent,
    ShowLinks,
    ShowUser,
    StateCommand,
    UninviteUsers,
    UnsetUser,
    VoteOn,
    WhoAmI,
    format_reply,
)
from herd.zones import PositionOf, timezone_of


def respond(
    state: PlanningState,
    actor: str,
    command: StateCommand,
    ops: Sequence[Op],
    position_of: PositionOf,
) -> bytes:
    """The reply to a command `execute` accepted, once its ops are applied; `actor` is the
    authenticated user (for `AUTH`, the user just authenticated)."""
    match command:
        case Login(user=user):
            return _user_reply(state, user, position_of)
        case WhoAmI() | ShowUser() | SetUser() | UnsetUser() | AddDevice() | RemoveDevice():
            return _user_reply(state, actor, position_of)
        case ShowLinks() | RevokeLinks():
            found = state.user(actor)
            generation = 0 if found is None else found.link_generation
            return format_reply(b"LINKS", {"user": actor, "generation": generation})
        case ListEvents():
            summaries = [
                {"id": e.id, "title": e.title, "organiser": e.organiser, "status": e.status.value}
                for e in state.events_of(actor)
            ]
            return format_reply(b"EVENTS", summaries)
        case PlanEvent():
            return _event_reply(state, ops[0].op_id)
        case (
            InviteUsers(event=event_id)
            | UninviteUsers(event=event_id)
            | ProposeTime(event=event_id)
            | ProposePlace(event=event_id)
            | VoteOn(event=event_id)
            | CommentOn(event=event_id)
            | DecideEvent(event=event_id)
            | ReopenEvent(event=event_id)
            | CancelEvent(event=event_id)
            | ShowEvent(event=event_id)
        ):
            return _event_reply(state, event_id)


def _user_reply(state: PlanningState, user_id: str, position_of: PositionOf) -> bytes:
    user = state.user(user_id)
    if user is None:
        return PlanningError("no-such-user", f"no user {user_id}").line()
    return format_reply(b"USER", user.to_json(timezone_of(user.tz, position_of(user_id))))


def _event_reply(state: PlanningState, event_id: str) -> bytes:
    event = state.event(event_id)
    if event is None:
        return PlanningError("no-such-event", f"no event {event_id}").line()
    return format_reply(b"EVENT", event.to_json())


def suggest_reply(query: SuggestionQuery, venues: Iterable[Venue]) -> bytes:
    """`SUGGEST <json>`: venues by total trip with their `rank_max` (rank by longest trip), and
    who is near the leading place now."""
    ranked = rank_venues(venues, [query.positions[user] for user in query.people])
    leading = query.leading
    document = {
        "event": query.event_id,
        "center": {"lat": round(query.center[0], 6), "lon": round(query.center[1], 6)},
        "radius_km": query.radius_km,
        "people": list(query.people),
        "venues": [
            {
                "name": r.venue.name,
                "lat": r.venue.lat,
                "lon": r.venue.lon,
                "total_km": round(r.total_m / 1000.0, 3),
                "max_km": round(r.max_m / 1000.0, 3),
                "rank_max": r.rank_max,
            }
            for r in ranked
        ],
        "leading": None
        if leading is None
        else {
            "id": leading.id,
            "name": leading.name,
            "near": None
            if leading.lat is None or leading.lon is None
            else who_is_near((leading.lat, leading.lon), query.positions, query.radius_km),
        },
    }
    return format_reply(b"SUGGEST", document)
