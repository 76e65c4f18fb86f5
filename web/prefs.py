"""Unsubscribing and preferences on the web, the pure part: the links mails carry to them, what
the preferences page shows, and the page's form read into line commands (pure: no Twisted).

- The **one-click unsubscribe** URL (RFC 8058) is the sending server's
  `<base_url>/unsubscribe?u=<user>&t=<token>`, with the user's unsubscribe token
  (`herd.tokens.unsubscribe_token`, the one `OPTOUT` checks): the notifier fills it per
  recipient (`notifier.render.Unsubscribe.web`).
- The **preferences link** is a personal link like an event's, with the user scope instead of
  an event (`herd.tokens.USER_SCOPE`): `<base_url>/prefs?t=<token>`, good for `link_days`, until
  the user revokes their links.
- The **form** becomes `USER SET` / `USER UNSET` lines (`herd.wire` classes, never pasted text)
  for the fields that changed, after checks that catch what a person gets wrong with a message
  that says how to put it right; the line protocol's rules still judge every line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import time
from typing import Final
from urllib.parse import parse_qs

from herd.api import USER_SCOPE, SetUser, UnsetUser, User, UserField, is_id, link_token
from herd.config import NotificationsConfig
from web.links import DAY, PersonalLinks

__all__ = [
    "CHANNELS",
    "DIGESTS",
    "FIELD_LABELS",
    "HERD_DIGEST_AT",
    "MAX_VALUE",
    "ONE_CLICK",
    "PREFS_PATH",
    "UNSUBSCRIBE_PATH",
    "PrefsPage",
    "UserCommand",
    "is_one_click",
    "prefs_changes",
    "prefs_link",
    "prefs_page",
    "result_message",
    "unsubscribe_query",
    "unsubscribe_url",
]

PREFS_PATH: Final = "/prefs"
UNSUBSCRIBE_PATH: Final = "/unsubscribe"
ONE_CLICK: Final = ("List-Unsubscribe", "One-Click")
"""The one field of an RFC 8058 one-click POST body: `List-Unsubscribe=One-Click`."""

CHANNELS: Final = (
    ("email", "Email"),
    ("xmpp", "Jabber (XMPP) messages"),
    ("line", "The Renga app (line pushes)"),
)
DIGESTS: Final = (
    ("daily", "Daily"),
    ("weekly", "Weekly"),
    ("off", "Off: every notice on its own"),
)
FIELD_LABELS: Final[Mapping[UserField, str]] = {
    UserField.CHANNELS: "channels",
    UserField.DIGEST: "digest",
    UserField.DIGEST_AT: "digest time",
    UserField.QUIET: "quiet hours",
    UserField.TZ: "time zone",
    UserField.EMAIL: "email address",
    UserField.JID: "Jabber address",
}
HERD_DIGEST_AT: Final = NotificationsConfig().digest_at
"""The herd's digest hour unless `[notifications] digest_at` says otherwise."""
MAX_VALUE: Final = 254
"""The longest value a field of the form may hold (an email address or a JID, at most)."""

_TIME: Final = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])(:[0-5][0-9](\.[0-9]{1,3})?)?\Z")
_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")  # base64url, as unsubscribe tokens are

UserCommand = SetUser | UnsetUser


# --- links ---------------------------------------------------------------------------------------


def unsubscribe_url(base_url: str) -> str:
    """The one-click unsubscribe URL of a site, with the `{user}` and `{token}` placeholders
    `notifier.render.Unsubscribe` fills (user ids and tokens need no escaping in a URL)."""
    return f"{base_url}{UNSUBSCRIBE_PATH}?u={{user}}&t={{token}}"


def prefs_link(links: PersonalLinks, user: str) -> str | None:
    """`<base_url>/prefs?t=<token>` for `user`: a personal link with the user scope, made
    like an event's (same key, lifetime and link generation), or None for an unknown user."""
    found = links.state.user(user)
    if found is None:
        return None
    expires = links.clock.now_ns() // 10**9 + links.link_days * DAY
    token = link_token(links.secret, user, USER_SCOPE, expires, found.link_generation)
    return f"{links.base_url}{PREFS_PATH}?t={token}"


def unsubscribe_query(uri: bytes) -> tuple[str, str] | None:
    """The user and token of an unsubscribe URL, read from the request's own query string
    (never from a form body, which could name someone else): exactly one `u` and one `t`, each
    of the characters user ids and tokens are made of.  None for anything else."""
    _, question, query = uri.partition(b"?")
    if not question or len(query) > 1024:
        return None
    try:
        fields = parse_qs(query.decode("ascii"), strict_parsing=False, max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        return None
    users, tokens = fields.get("u", []), fields.get("t", [])
    if len(users) != 1 or len(tokens) != 1:
        return None
    user, token = users[0], tokens[0]
    if not (is_id(user) and _TOKEN.match(token)):
        return None
    return user, token


def is_one_click(form: Mapping[bytes, Sequence[bytes]]) -> bool:
    """Whether a POST body says `List-Unsubscribe=One-Click` (RFC 8058 §3.2), as a mail
    provider's one-click request and the page's own button send it."""
    name, value = ONE_CLICK
    return list(form.get(name.encode(), [])) == [value.encode()]


# --- the page ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrefsPage:
    """What the preferences form shows: the user's fields as they are now."""

    user: str
    email: str
    jid: str
    channels: frozenset[str]
    digest: str
    digest_at: str  # the user's own digest hour, or "" (then the herd's, `herd_digest_at`)
    quiet_from: str
    quiet_to: str
    tz: str  # the zone the user set, or "" (then `zone` comes from their position)
    zone: str  # the zone their times are shown in now
    herd_digest_at: str  # `[notifications] digest_at`, HH:MM: the hour of users without one


def prefs_page(user: User, zone: str, herd_digest_at: time = HERD_DIGEST_AT) -> PrefsPage:
    """The form's values for `user`; `herd_digest_at` is the herd's digest hour, shown as what
    an empty digest time means."""
    quiet_from, _, quiet_to = (user.quiet or "").partition("-")
    return PrefsPage(
        user=user.id,
        email=user.email or "",
        jid=user.jid or "",
        channels=frozenset(user.channels),
        digest=user.digest,
        digest_at=user.digest_at or "",
        quiet_from=quiet_from,
        quiet_to=quiet_to,
        tz=user.tz or "",
        zone=zone,
        herd_digest_at=herd_digest_at.strftime("%H:%M"),
    )


# --- the form ------------------------------------------------------------------------------------


def prefs_changes(user: User, form: Mapping[str, Sequence[str]]) -> list[UserCommand] | str:
    """The `USER SET` / `USER UNSET` commands that make `user`'s fields what the form says, in
    a fixed order, only for the fields that change; or why the form cannot be saved (a
    sentence for the person who filled it in).  A field the form does not carry is left as it
    is; `channels` is carried by a hidden empty value beside its checkboxes, so that no box
    ticked (no channel) differs from a form without the field."""
    values: dict[str, str] = {}
    for name in ("email", "jid", "digest", "digest_at", "quiet_from", "quiet_to", "tz"):
        given = form.get(name)
        if given is None:
            continue
        if len(given) != 1:
            return f"Not saved: the form sent {name} {len(given)} times."
        text = given[0].strip()
        problem = _text_problem(text)
        if problem:
            return f"Not saved: the {_label(name)} {problem}."
        values[name] = text
    commands: list[UserCommand] = []
    channels = form.get("channels")
    if channels is not None:
        chosen = {value for value in channels if value}
        known = {name for name, _ in CHANNELS}
        if not chosen <= known:
            return "Not saved: the channels are some of email, xmpp and line."
        if chosen != set(user.channels):
            value = ",".join(sorted(chosen)) or "none"
            commands.append(SetUser(UserField.CHANNELS, value))
    if "digest" in values:
        digest = values["digest"]
        if digest not in {name for name, _ in DIGESTS}:
            return "Not saved: the digest is daily, weekly or off."
        if digest != user.digest:
            commands.append(SetUser(UserField.DIGEST, digest))
    if "digest_at" in values:
        digest_at, problem = _digest_at(values["digest_at"])
        if problem is not None:
            return f"Not saved: {problem}."
        commands.extend(_register(UserField.DIGEST_AT, user.digest_at, digest_at))
    if "quiet_from" in values or "quiet_to" in values:
        quiet, problem = _quiet(values.get("quiet_from", ""), values.get("quiet_to", ""))
        if problem is not None:
            return f"Not saved: {problem}."
        commands.extend(_register(UserField.QUIET, user.quiet, quiet))
    for name, field, now in (
        ("tz", UserField.TZ, user.tz),
        ("email", UserField.EMAIL, user.email),
        ("jid", UserField.JID, user.jid),
    ):
        if name in values:
            commands.extend(_register(field, now, values[name] or None))
    return commands


def _register(field: UserField, now: str | None, wanted: str | None) -> list[UserCommand]:
    if wanted == now:
        return []
    return [UnsetUser(field) if wanted is None else SetUser(field, wanted)]


def _quiet(start: str, end: str) -> tuple[str | None, str | None]:
    """(`HH:MM-HH:MM` or None for no quiet hours, None) or (None, what is wrong).  A browser's
    time field sends `HH:MM` (seconds only if asked for): those are dropped."""
    if not start and not end:
        return None, None
    if not start or not end:
        return None, "give the quiet hours a start and an end, or leave both empty"
    first, last = _TIME.match(start), _TIME.match(end)
    if first is None or last is None:
        return None, "quiet hours are two times like 22:00 and 07:00"
    if first.group(1, 2) == last.group(1, 2):
        return None, "the quiet hours start and end at different times"
    return f"{first[1]}:{first[2]}-{last[1]}:{last[2]}", None


def _digest_at(text: str) -> tuple[str | None, str | None]:
    """(`HH:MM` or None for the herd's hour, None) or (None, what is wrong).  Empty is the
    herd's hour; seconds a browser may add are dropped, as for quiet hours."""
    if not text:
        return None, None
    match = _TIME.match(text)
    if match is None:
        return None, "the digest time is a time like 19:30 (or empty for the usual hour)"
    return f"{match[1]}:{match[2]}", None


def _text_problem(text: str) -> str | None:
    if len(text) > MAX_VALUE:
        return f"is at most {MAX_VALUE} characters"
    if any(not ch.isprintable() for ch in text):
        return "holds a line break or another character that is not text"
    return None


def _label(name: str) -> str:
    return {
        "email": "email address",
        "jid": "Jabber address",
        "digest_at": "digest time",
        "quiet_from": "start of the quiet hours",
        "quiet_to": "end of the quiet hours",
        "tz": "time zone",
    }.get(name, name)


def result_message(done: Sequence[UserField], refused: tuple[UserField, str] | None) -> str:
    """What the page says after the lines ran: what was saved, and what was refused and why
    (the line protocol's own words)."""
    saved = ", ".join(FIELD_LABELS[field] for field in done)
    if refused is None:
        return f"Saved: {saved}." if saved else "Nothing to change."
    field, why = refused
    message = f"Not saved: the {FIELD_LABELS[field]}: {why}"
    if not message.endswith("."):
        message += "."
    return message + (f" Saved before it: {saved}." if saved else "")
