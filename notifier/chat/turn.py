"""One message being read, and what its words refer to: the current event (the one a command
without an event name is about), an event by number, title or id, an option by number or id.

Current event: the last event whose `EVENT` or `SUGGEST` reply the user got (they planned,
changed or looked at it), kept in their `Conversation`.  Before there is one, it is the user's
newest event that is not cancelled.  Option numbers: an event's times then its places, in the
order of the event view, from 1; full option ids work too, and pick their own event."""

from __future__ import annotations

from dataclasses import dataclass

from herd.api import Event, PlaceOption, StateView, Status, TimeOption, User, is_id
from notifier.chat.replies import mistake
from notifier.chat.steps import Conversation, Reply
from notifier.render import Templates

__all__ = ["Turn"]


@dataclass(frozen=True, slots=True)
class Turn:
    """One message being interpreted, with what it is read against (and answered with)."""

    templates: Templates
    user: User
    state: StateView
    conversation: Conversation
    zone: str
    now_ns: int

    def current(self) -> Event | Reply:
        """The event a command without an event name is about."""
        current = self.state.event(self.conversation.event or "")
        if current is not None and self.user.id in current.participants:
            return current
        events = self.state.events_of(self.user.id)
        open_events = [event for event in events if event.status is not Status.CANCELLED]
        if open_events:
            return open_events[-1]
        return mistake(self.templates, "You have no event going on yet.", "plan Dinner on Friday")

    def event_id(self, ref: str) -> str | Reply:
        """An event by its number in `my events`, its id (any case), or its title (or the start of
        it); none: the current one.  An unknown id goes to the server, which says why not."""
        if not ref:
            current = self.current()
            return current if isinstance(current, Reply) else current.id
        events = self.state.events_of(self.user.id)
        ref = ref.lstrip("#")
        if ref.isdigit():
            if 1 <= int(ref) <= len(events):
                return events[int(ref) - 1].id
            count = {0: "no events", 1: "one event"}.get(len(events), f"{len(events)} events")
            return mistake(self.templates, f"You have {count}; my events lists them.", "status 1")
        folded = ref.casefold()
        for matches in (
            [event for event in events if event.id.casefold() == folded],
            [event for event in events if event.title.casefold() == folded],
            [event for event in events if event.title.casefold().startswith(folded)],
        ):
            if matches:
                return matches[-1].id
        if is_id(ref):
            return ref
        return mistake(
            self.templates, f"I can't find an event “{ref}”; my events lists yours.", "status 1"
        )

    def without_event_ids(self, refs: list[str]) -> list[str]:
        """Drop event ids, so the line form a notification shows (`VOTE <event> <option> YES`,
        `DECIDE <event> <time> <place>`) works in the chat too: an option id names its event."""
        ids = {event.id.casefold() for event in self.state.events_of(self.user.id)}
        return [ref for ref in refs if ref.lstrip("#").casefold() not in ids]

    def option(self, ref: str) -> tuple[Event, TimeOption | PlaceOption] | Reply:
        """An option by its number in the current event, or by its id in any of the user's."""
        ref = ref.lstrip("#")
        if ref.isdigit():
            event = self.current()
            if isinstance(event, Reply):
                return event
            options: tuple[TimeOption | PlaceOption, ...] = (*event.times, *event.places)
            if 1 <= int(ref) <= len(options):
                return event, options[int(ref) - 1]
            if not options:
                return mistake(
                    self.templates, f"“{event.title}” has no options yet.", "time fri 19:00"
                )
            return mistake(
                self.templates, f"“{event.title}” has options 1 to {len(options)}.", "status"
            )
        events = self.state.events_of(self.user.id)
        current = self.state.event(self.conversation.event or "")
        for event in (current, *events) if current is not None else events:
            choices: tuple[TimeOption | PlaceOption, ...] = (*event.times, *event.places)
            for option in choices:
                if option.id.casefold() == ref.casefold():
                    return event, option
        return mistake(
            self.templates, f"I can't find option “{ref}”; status shows the numbers.", "vote yes 2"
        )
