"""What the bot says, from `templates/xmpp/reply/`: the message for a planning line's reply
(`render_reply`, the event's options numbered, times in the user's zone) and the texts that need
no server (`chat_text`, `mistake`)."""

from __future__ import annotations

import json
from typing import Final

from herd.api import StateView, User, client_text
from notifier.chat.steps import Reply, RunLine, Say
from notifier.event_views import OptionView, event_view
from notifier.message import Recipient
from notifier.render import Templates

__all__ = ["chat_text", "mistake", "render_reply"]

_LISTED: Final = 20  # `my events` shows the newest ones, with their numbers


def render_reply(
    templates: Templates,
    step: RunLine,
    reply: bytes,
    state: StateView,
    user: User,
    zone: str,
    now_ns: int,
) -> str:
    """The message for the reply to `step.line` (one line, with or without its terminator)."""
    word, _, body = reply.rstrip(b"\r\n").partition(b" ")
    if word == b"ERR":
        return _error(templates, step, client_text(body), state)
    if word == b"?":
        return chat_text(templates, "confused")
    if word not in (b"EVENT", b"EVENTS", b"SUGGEST", b"USER"):
        raise ValueError(f"no rendering for a {word!r} reply")
    document = json.loads(client_text(body))
    context: dict[str, object] = {"user": user.id, "subject": list(step.subject), "note": step.note}
    if word == b"EVENT":
        context.update(_event_context(step, document["id"], state, user, zone, now_ns))
    elif word == b"EVENTS":
        numbered = [{"n": n, **event} for n, event in enumerate(document, start=1)]
        context["events"] = numbered[-_LISTED:]
        context["total"] = len(numbered)
        context["current"] = step.event
    elif word == b"SUGGEST":
        event = state.event(document["event"])
        context["title"] = document["event"] if event is None else event.title
        context["suggestion"] = document
        context["venues"] = document["venues"][:5]
    else:
        context["me"] = document
    return chat_text(templates, step.say.value, **context)


def _event_context(
    step: RunLine, event_id: str, state: StateView, user: User, zone: str, now_ns: int
) -> dict[str, object]:
    """The event as it is now, its options numbered, and the option the step is about."""
    event = state.event(event_id)
    if event is None:
        raise ValueError(f"the server answered with event {event_id}, which the state lacks")
    view = event_view(event, Recipient.of(user, zone), now_ns)
    options = [*view["times"], *view["places"]]
    numbers = {option["id"]: n for n, option in enumerate(options, start=1)}
    past = {o["id"] for o in view["times"] if o["at"] is not None and o["at"] * 10**9 < now_ns}
    option = None
    if step.say is Say.VOTED:
        option = next((o for o in options if o["id"] == step.subject[0]), None)
    elif step.say is Say.PROPOSED and step.subject[0] == "time":
        option = next((o for o in view["times"] if o["at"] == int(step.subject[1])), None)
    elif step.say is Say.PROPOSED:
        option = next((o for o in reversed(view["places"]) if o["label"] == step.subject[1]), None)
    mine = {o["id"]: _choice_of(user.id, o) for o in options}
    return {
        "event": view,
        "numbers": numbers,
        "past": past,
        "option": option,
        "mine": mine,
        "comments": [{"by": c.by, "text": c.text} for c in event.comments[-3:]],
        "organiser": event.organiser == user.id,
    }


def _choice_of(user: str, option: OptionView) -> str | None:
    if user in option["yes"]:
        return "yes"
    if user in option["maybe"]:
        return "maybe"
    return "no" if user in option["no"] else None


def _error(templates: Templates, step: RunLine, body: str, state: StateView) -> str:
    """`ERR <code>: <message>` as one line of explanation and an example."""
    code, _, message = body.partition(": ")
    event = state.event(step.event) if step.event is not None else None
    return chat_text(
        templates,
        "error",
        code=code,
        message=message,
        title=None if event is None else event.title,
        organiser=None if event is None else event.organiser,
    )


def chat_text(templates: Templates, template: str, /, **context: object) -> str:
    return templates.text("xmpp", f"reply/{template}", "txt", context).strip()


def mistake(templates: Templates, problem: str, example: str | None = None) -> Reply:
    """A mistake explained, with an example of what works."""
    return Reply(chat_text(templates, "mistake", problem=problem, example=example))
