"""Notifications rendered into the exact messages each channel sends, from `templates/`.

One Jinja environment (`Templates`), built once by the wiring and passed in: `StrictUndefined` (a
misspelt variable is an error, not an empty string), autoescape for `.html.j2` only, times shown
in the recipient's zone (with the year when it is not the current one: the `RenderCache` holds
the time it renders at).  Every template of a kind gets the same context (see `_context`), so any
template may use any of it.

Recipients share renderings (`RenderCache`): a template that reads neither `user` nor
`unsubscribe` is rendered once per time zone for all the recipients of a change, and the block
of an event is rendered once per zone with `{{ partial("<channel>/_event.body.<part>.j2",
event) }}`, which gives what `{% include %}` on a line of its own would.  So a template must not
depend on the recipient in any other way.

Whatever a title contains, an email subject and a line push come out as one line (runs of
whitespace and control characters become one space), HTML is escaped, and plain text is kept as
it is.  Mails carry `List-Unsubscribe` with a token that only the server can make
(`unsubscribe_token`), and the mail of a decided event an `.ics` that names no attendees.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import icalendar
from jinja2 import Environment, FileSystemLoader, StrictUndefined, meta, select_autoescape
from markupsafe import Markup

from herd.api import Event, StateView, User, unsubscribe_token
from notifier.event_views import EventView, event_view, local_time
from notifier.message import Attachment, Kind, Medium, Notification, Outgoing, Recipient, Routed

__all__ = [
    "EVENT_DURATION",
    "NAMES_SHOWN",
    "TEMPLATES",
    "EventLink",
    "PrefsLink",
    "RenderCache",
    "Templates",
    "Unsubscribe",
    "names",
    "no_event_link",
    "no_prefs_link",
    "one_line",
    "render",
    "render_email",
]

TEMPLATES: Final = Path(__file__).resolve().parent.parent / "templates"
EVENT_DURATION: Final = timedelta(hours=2)
"""Events have a start only; calendars get this length so they show a block, not a line."""

_NO_LINK: Final = frozenset({Kind.UNINVITED, Kind.CANCELLED})  # nothing left to answer there
_NOT_ONE_LINE: Final = re.compile(r"[\s\x00-\x1f\x7f]+")
_ICS_EPOCH: Final = 1_577_836_800  # 2020-01-01: SEQUENCE counts seconds from here (fits 32 bits)


NAMES_SHOWN: Final = 20
"""Names a message lists before it says how many more: nobody reads 1,000 names in a chat."""


def names(users: Sequence[str], none: str = "") -> str:
    """`a, b, c`, or `none` for nobody, or the first `NAMES_SHOWN` and `and N more`: `join`
    and `or` in one filter, so that HTML escapes the list once rather than each name."""
    if len(users) > NAMES_SHOWN:
        return f"{', '.join(users[:NAMES_SHOWN])} and {len(users) - NAMES_SHOWN} more"
    return ", ".join(users) or none


def one_line(text: str) -> str:
    """Runs of whitespace and control characters (CR, LF, U+2028, ...) as one space, trimmed:
    what goes into a header or onto the line protocol."""
    return _NOT_ONE_LINE.sub(" ", text).strip()


EventLink = Callable[[str, str], str | None]
"""A personal web link to an event for a user, `(user, event id) -> URL`, or None (no web)."""


def no_event_link(user: str, event_id: str) -> str | None:
    return None


PrefsLink = Callable[[str], str | None]
"""A personal web link to a user's preferences page, `user -> URL`, or None (no web)."""


def no_prefs_link(user: str) -> str | None:
    return None


_LINK_MARK: Final = "\x00renga-link\x00"


class Templates(Environment):
    """The Jinja environment over `templates/`, built once by the wiring and passed to whatever
    renders: `StrictUndefined`, autoescape for `.html.j2` only, the `local` and `names`
    filters, and the `event_link(user, event_id)` and `prefs_link(user)` functions the wiring
    passes in (a personal link to the event's web page or to the user's preferences page, or
    None: templates then show no link).  It also keeps what
    it works out once per template (`names_recipient`), since
    templates do not change while the process runs (`auto_reload` is off)."""

    def __init__(
        self,
        directory: Path = TEMPLATES,
        event_link: EventLink = no_event_link,
        prefs_link: PrefsLink = no_prefs_link,
    ) -> None:
        super().__init__(
            loader=FileSystemLoader(directory),
            undefined=StrictUndefined,
            autoescape=select_autoescape(
                enabled_extensions=("html.j2",), default_for_string=False, default=False
            ),
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            auto_reload=False,  # else every render stats the template's file
        )
        self.filters["local"] = local_time
        self.filters["names"] = names
        self.globals["event_link"] = event_link
        self.globals["prefs_link"] = prefs_link
        self.event_link = event_link
        self.prefs_link = prefs_link
        self._names_recipient: dict[str, bool] = {}
        self._link_parts: tuple[str, ...] | None = None

    def link_text(self, link: str) -> str:
        """`xmpp/_link.txt.j2` for `link`: rendered once around a marker and then joined with
        each link, as the template only puts the link in (a text template: nothing escaped);
        were the link ever transformed there, so that the marker does not come out, the
        template is rendered for each link."""
        parts = self._link_parts
        if parts is None:
            rendered = self.get_template("xmpp/_link.txt.j2").render(link=_LINK_MARK)
            parts = self._link_parts = (
                tuple(rendered.split(_LINK_MARK)) if _LINK_MARK in rendered else ()
            )
        if not parts:
            return self.get_template("xmpp/_link.txt.j2").render(link=link)
        return link.join(parts)

    def getattr(self, obj: Any, attribute: str) -> Any:
        """Looks up `a.b` on a dict as `a["b"]` first.  Templates see views as dicts, and
        Jinja's own order (the attribute, then the key) raised and caught an AttributeError
        for every field shown: a sixth of a digest's rendering.  No view has a key named like
        a dict method, so the answer is the same."""
        if type(obj) is dict:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)

    def text(self, channel: str, name: str, part: str, context: Mapping[str, object]) -> str:
        """`templates/<channel>/<name>.<part>.j2` with `context`."""
        return self.get_template(f"{channel}/{name}.{part}.j2").render(context)

    def names_recipient(self, name: str) -> bool:
        """Whether the template (with what it extends, includes or imports) reads `user` or
        `unsubscribe`, the per-recipient parts of a context."""
        known = self._names_recipient.get(name)
        if known is None:
            assert self.loader is not None
            source, _, _ = self.loader.get_source(self, name)
            tree = self.parse(source)
            others = meta.find_referenced_templates(tree)
            known = bool(meta.find_undeclared_variables(tree) & {"user", "unsubscribe"}) or any(
                other is None or self.names_recipient(other) for other in others
            )
            self._names_recipient[name] = known
        return known


# --- unsubscribing ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """How mails offer unsubscribing: `url` is a `mailto:` or `https:` URL with `{user}` and
    `{token}` placeholders, filled per recipient (user ids are URL-safe, tokens base64url).
    `web`, when the herd has a web, is the sending server's one-click page
    (`<base_url>/unsubscribe?u={user}&t={token}`, docs/web.md): `https://`, or `http://` for a
    site only reached on a trusted network (`herd up` on loopback)."""

    secret: bytes
    url: str
    web: str | None = None

    def __post_init__(self) -> None:
        _check_url(self.url, ("mailto:", "https://"), "mailto: or https://")
        if self.web is not None:
            _check_url(self.web, ("https://", "http://"), "https:// or http://")

    def link(self, user: str) -> str:
        """The link a mail's text shows: the web page when there is one (a person clicking it
        gets a page with a button: opening a link changes nothing), else `url`."""
        return self._fill(self.web or self.url, user)

    def headers(self, user: str) -> tuple[tuple[str, str], ...]:
        """RFC 2369 `List-Unsubscribe` with the web page first, then `url`; and RFC 8058's
        `List-Unsubscribe-Post: List-Unsubscribe=One-Click` when one of them is https (RFC
        8058 §3.1: the one-click header field MUST contain an HTTPS URI, so an http page is
        offered as a plain RFC 2369 link, without the one-click header)."""
        links = [self._fill(url, user) for url in (self.web, self.url) if url is not None]
        listed = ("List-Unsubscribe", ", ".join(f"<{link}>" for link in links))
        if any(link.startswith("https://") for link in links):
            return listed, ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
        return (listed,)

    def _fill(self, url: str, user: str) -> str:
        return url.format(user=user, token=unsubscribe_token(self.secret, user))


def _check_url(url: str, schemes: tuple[str, ...], spelt: str) -> None:
    if "{token}" not in url or not url.startswith(schemes):
        raise ValueError(f"the unsubscribe URL is {spelt} and has a {{token}}")
    try:
        url.format(user="u", token="t")  # any other placeholder fails now, not per mail
    except (KeyError, IndexError) as error:
        raise ValueError(f"the unsubscribe URL has an unknown placeholder {error}") from None


# --- messages ---------------------------------------------------------------------------------


class RenderCache:
    """What the notifications of one change, or the digests of one run, share: each event's
    view per time zone, each event's block of text or HTML per time zone (`partial`), and a
    template's output for every recipient in one zone when it does not name the recipient.
    Building them per recipient made a change to an event of n people cost O(n²), and a
    digest run render each event once per participant.

    Entries are checked against the event the state holds now (`StateView.event` returns
    the same object until an op changes it), so a cache may outlive a reactor turn.  It is
    bounded, so that a run over every event does not keep them all: at `views` views (which
    hold many small objects) those start again, at `block_chars` characters of blocks the
    blocks do.  Times are shown as at `now_ns` (a year other than its own is spelt out)."""

    def __init__(
        self,
        templates: Templates,
        state: StateView,
        now_ns: int,
        views: int = 5000,
        block_chars: int = 16_000_000,
    ) -> None:
        self.templates = templates
        self._state = state
        self.now_ns = now_ns
        self._most_views = views
        self._most_chars = block_chars
        self._views: dict[tuple[str, str], tuple[Event, EventView]] = {}
        self._blocks: dict[tuple[str, str, str], tuple[Event, str]] = {}
        self._block_chars = 0
        self._contexts: dict[_ContextKey, tuple[Event, dict[str, object]]] = {}
        self._texts: dict[tuple[str, _ContextKey], tuple[Event, str]] = {}
        self._links: dict[tuple[str, str | None], tuple[User | None, str | None]] = {}

    def event_link(self, user: str, event_id: str) -> str | None:
        """`templates.event_link`, once per (user, event) for this cache: a mail's text and
        HTML and its Jabber message carry the same link.  A link is made anew when the user
        changed since (a revoked generation gives a new token)."""
        return self._link(user, event_id)

    def prefs_link(self, user: str) -> str | None:
        """`templates.prefs_link`, once per user for this cache (as `event_link`)."""
        return self._link(user, None)

    def _link(self, user: str, event_id: str | None) -> str | None:
        found = self._state.user(user)
        held = self._links.get((user, event_id))
        if held is not None and held[0] is found:
            return held[1]
        if len(self._links) >= self._most_views:
            self._links.clear()
        templates = self.templates
        link = (
            templates.prefs_link(user) if event_id is None else templates.event_link(user, event_id)
        )
        self._links[(user, event_id)] = found, link
        return link

    def view(self, event: Event, recipient: Recipient) -> EventView:
        held = self._views.get((event.id, recipient.tz))
        if held is None or held[0] is not event:
            if len(self._views) >= self._most_views:
                self._views.clear()
                self._contexts.clear()
                self._texts.clear()
            view = event_view(event, recipient, self.now_ns)
            held = self._views[(event.id, recipient.tz)] = event, view
        return held[1]

    def partial(self, name: str, view: EventView) -> str:
        """`name` rendered for the event `view` alone, as `{{ partial(name, event) }}` in a
        template: what `{% include name %}` on a line of its own gives (its final newline is
        the template's), once per event and zone.  HTML comes back as `Markup`, so it is not
        escaped twice."""
        key = (name, view["id"], view["tz"])
        event = self._state.event(view["id"])
        held = self._blocks.get(key)
        if held is not None and held[0] is event:
            text = held[1]
        else:
            text = self.templates.get_template(name).render(event=view).removesuffix("\n")
            if self._block_chars + len(text) > self._most_chars:
                self._blocks.clear()
                self._block_chars = 0
            if event is not None:
                self._blocks[key] = event, text
                self._block_chars += len(text)
        return Markup(text) if name.endswith(".html.j2") else text

    def context(self, notification: Notification, event: Event) -> dict[str, object]:
        """The context every template of the notification gets, shared by the recipients
        in one zone; `user` is the first recipient's (`text` swaps in each one's)."""
        key = _context_key(notification)
        held = self._contexts.get(key)
        if held is None or held[0] is not event:
            view = self.view(event, notification.recipient)
            held = self._contexts[key] = event, _context(notification, event, view, self)
        return held[1]

    def text(self, notification: Notification, event: Event, template: str) -> str:
        """`template` for the notification's recipient: rendered once per zone when the
        template does not name the recipient (`user`), else for each of them."""
        context = self.context(notification, event)
        if not self.templates.names_recipient(template):
            key = (template, _context_key(notification))
            held = self._texts.get(key)
            if held is None or held[0] is not event:
                rendered = self.templates.get_template(template).render(context)
                held = self._texts[key] = event, rendered
            return held[1]
        personal = {**context, "user": notification.recipient.user}
        return self.templates.get_template(template).render(personal)


_ContextKey = tuple[Kind, str, str, str | None, str | None, str]


def _context_key(notification: Notification) -> _ContextKey:
    """All a notification's context depends on besides the event and the recipient's id."""
    n = notification
    return n.kind, n.event_id, n.cause, n.actor, n.option_id, n.recipient.tz


def render(
    routed: Routed,
    state: StateView,
    unsubscribe: Unsubscribe,
    cache: RenderCache,
) -> list[Outgoing]:
    """The messages of one routed notification, one per channel, as the state is now (so a
    coalesced message rendered later shows the later tally).  Nothing if the event is gone.
    Pass one `cache` for all the notifications of one change."""
    if routed.digest:
        raise ValueError("a folded notification is a DigestItem for compose_digest")
    notification = routed.notification
    event = state.event(notification.event_id)
    if event is None:
        return []
    recipient, kind = notification.recipient, notification.kind
    messages: list[Outgoing] = []
    for medium in routed.channels:
        key = f"{notification.id}.{medium}"
        if medium is Medium.EMAIL and recipient.email is not None:
            calendar = (_calendar(event, notification),) if kind is Kind.DECIDED else ()
            context = {**cache.context(notification, event), "user": recipient.user}
            email = render_email(
                cache.templates,
                key,
                recipient.user,
                recipient.email,
                kind,
                context,
                unsubscribe,
                event.id,
                calendar,
            )
            messages.append(email)
        elif medium is Medium.XMPP and recipient.jid is not None:
            text = cache.text(notification, event, f"xmpp/{kind}.body.txt.j2")
            link = None if kind in _NO_LINK else cache.event_link(recipient.user, event.id)
            if link is not None:  # rendered apart, so the message stays shared by a zone
                text += cache.templates.link_text(link)
            messages.append(Outgoing(key, medium.value, recipient.jid, "", text, thread=event.id))
        elif medium is Medium.LINE:
            line = one_line(cache.text(notification, event, f"line/{kind}.line.txt.j2"))
            messages.append(Outgoing(key, medium.value, recipient.user, "", line))
    return messages


def render_email(
    templates: Templates,
    key: str,
    user: str,
    address: str,
    name: str,
    context: Mapping[str, object],
    unsubscribe: Unsubscribe,
    thread: str | None,
    attachments: tuple[Attachment, ...] = (),
) -> Outgoing:
    """An email from `templates/email/<name>.{subject.txt,body.txt,body.html}.j2`, with the
    unsubscribe link in its context; `thread` (an event id) threads mails about one event."""
    full = {**context, "unsubscribe": unsubscribe.link(user)}
    return Outgoing(
        key=key,
        channel=Medium.EMAIL.value,
        recipient=address,
        subject=one_line(templates.text("email", name, "subject.txt", full)),
        text=templates.text("email", name, "body.txt", full),
        html=templates.text("email", name, "body.html", full),
        thread=thread,
        headers=unsubscribe.headers(user),
        attachments=attachments,
    )


def _context(
    notification: Notification, event: Event, view: EventView, cache: RenderCache
) -> dict[str, object]:
    recipient = notification.recipient
    option_id = notification.option_id
    option = next((o for o in (*view["times"], *view["places"]) if o["id"] == option_id), None)
    choice = None
    if option_id is not None and notification.actor is not None:
        vote = event.votes.get(option_id, {}).get(notification.actor)
        choice = None if vote is None else vote.value
    said = next((c for c in event.comments if c.id == notification.cause), None)
    at = None if said is None else said.stamp[0] // 10**9
    comment = None if said is None else {"by": said.by, "text": said.text, "at": at}
    return {
        "kind": notification.kind.value,
        "user": recipient.user,
        "tz": recipient.tz,
        "actor": notification.actor,
        "event": view,
        "option": option,
        "choice": choice,
        "comment": comment,
        "now": cache.now_ns // 10**9,  # for `local`
        "partial": cache.partial,
        # the links, made once per (user, event) for the cache (they shadow the globals)
        "event_link": cache.event_link,
        "prefs_link": cache.prefs_link,
    }


def _calendar(event: Event, notification: Notification) -> Attachment:
    """The decided event as iCalendar (PUBLISH: no organiser or attendee addresses, so nobody's
    address is shown to the others).  UID is per event and SEQUENCE grows with the decision's
    time, so a later decision updates the entry the calendar holds."""
    assert event.decision is not None
    time, place = event.time(event.decision[0]), event.place(event.decision[1])
    assert time is not None and place is not None
    start = datetime.fromtimestamp(time.at, UTC)
    stamp = datetime.fromtimestamp(notification.at_ns // 10**9, UTC)
    entry = icalendar.Event()
    entry.add("uid", f"{event.id}@renga")
    entry.add("sequence", max(0, notification.at_ns // 10**9 - _ICS_EPOCH))
    entry.add("dtstamp", stamp)
    entry.add("dtstart", start)
    entry.add("dtend", start + EVENT_DURATION)
    entry.add("summary", one_line(event.title))
    entry.add("location", place.name)
    if place.lat is not None and place.lon is not None:
        entry.add("geo", (place.lat, place.lon))
    entry.add("description", f"Organised by {event.organiser} on Renga (event {event.id}).")
    entry.add("status", "CONFIRMED")
    calendar = icalendar.Calendar()
    calendar.add("prodid", "-//Renga//Renga notifier//EN")
    calendar.add("version", "2.0")
    calendar.add("method", "PUBLISH")
    calendar.add_component(entry)
    return Attachment(
        "event.ics", 'text/calendar; charset="utf-8"; method=PUBLISH', calendar.to_ical()
    )
