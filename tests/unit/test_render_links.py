"""Personal web links in notifications: with a link function from the wiring, every mail and
Jabber message about an event carries the recipient's own link (never another's), the uninvited
none; without one (no `[web]`), the messages are exactly the golden ones."""

from __future__ import annotations

import pytest

from herd.api import Clock
from herd.ops import OPERATOR, AddUser, LinksRevoked, Op
from herd.state import PlanningState
from herd.tokens import open_link
from notifier.message import Kind, Medium
from notifier.render import RenderCache, Templates, render
from tests.unit.test_render import T0, UNSUBSCRIBE, scene
from web.links import PersonalLinks

SECRET = b"link secret"


class _Fixed:
    def seconds(self) -> float:
        return 1_796_385_600.0


def links(state: PlanningState) -> PersonalLinks:
    clock = Clock(_Fixed(), lambda: 1_796_385_600 * 10**9)  # type: ignore[arg-type]
    return PersonalLinks(SECRET, "https://renga.example.org", 30, state, clock)


def fake_link(user: str, event_id: str) -> str:
    return f"https://renga.example.org/e/{event_id}?t=TOKEN-{user}"


@pytest.mark.parametrize("kind", [k for k in Kind if k not in (Kind.UNINVITED, Kind.CANCELLED)])
def test_every_message_about_an_event_carries_the_recipients_link(kind: Kind) -> None:
    state, routed = scene(kind)
    templates = Templates(event_link=fake_link)
    messages = render(routed, state, UNSUBSCRIBE, RenderCache(templates, state, T0))
    user = routed.notification.recipient.user
    link = fake_link(user, "e1")
    by_channel = {m.channel: m for m in messages}
    email = by_channel[Medium.EMAIL.value]
    assert link in email.text
    assert email.html is not None and link in email.html
    assert link in by_channel[Medium.XMPP.value].text
    assert (
        "TOKEN" not in by_channel[Medium.LINE.value].text
    )  # a line push goes to the user's own client


@pytest.mark.parametrize("kind", [Kind.UNINVITED, Kind.CANCELLED])
def test_the_uninvited_and_the_cancelled_get_no_link(kind: Kind) -> None:
    state, routed = scene(kind)
    templates = Templates(event_link=fake_link)
    for message in render(routed, state, UNSUBSCRIBE, RenderCache(templates, state, T0)):
        assert "TOKEN" not in message.text and "TOKEN" not in (message.html or "")


def test_a_link_in_a_mail_opens_the_event_for_that_user_until_revoked() -> None:
    state, routed = scene(Kind.INVITED)
    made = links(state)
    templates = Templates(event_link=made.event_link)
    email = render(routed, state, UNSUBSCRIBE, RenderCache(templates, state, T0))[0]
    line = next(line for line in email.text.splitlines() if "/e/e1?t=" in line)
    token = line.rsplit("?t=", 1)[1]
    now = 1_796_385_600

    def generation(user: str) -> int | None:
        found = state.user(user)
        return None if found is None else found.link_generation

    claim = open_link(SECRET, token, "e1", now, generation)
    assert claim is not None and claim.user == "bob"
    assert claim.expires == now + 30 * 86400
    state.apply(Op("revoke", 10**19, "bob", LinksRevoked("bob", 1)))
    assert open_link(SECRET, token, "e1", now, generation) is None


def test_no_link_for_an_unknown_user() -> None:
    state = PlanningState()
    state.apply(Op("u", 1, OPERATOR, AddUser("alice")))
    assert links(state).event_link("nobody", "e1") is None
    assert links(state).event_link("alice", "e1") is not None


def test_one_change_makes_each_link_once_and_anew_after_a_revoke() -> None:
    """A mail's text and HTML and the Jabber message of one change carry one link, made once
    for the `RenderCache` (signing is most of what a link costs); after the user revoked their
    links, the same cache makes a new one (of the new generation), never the old."""
    state, routed = scene(Kind.VOTES)
    made = links(state)
    calls: list[tuple[str, str | None]] = []

    def event_link(user: str, event_id: str) -> str | None:
        calls.append((user, event_id))
        return made.event_link(user, event_id)

    def prefs_link(user: str) -> str | None:
        calls.append((user, None))
        return f"https://renga.example.org/prefs?t=P-{user}"

    cache = RenderCache(Templates(event_link=event_link, prefs_link=prefs_link), state, T0)
    messages = render(routed, state, UNSUBSCRIBE, cache)
    user = routed.notification.recipient.user
    assert sorted(calls, key=repr) == sorted([(user, None), (user, "e1")], key=repr)
    first = made.event_link(user, "e1")
    assert first is not None
    by_channel = {m.channel: m for m in messages}
    for message in (by_channel["email"], by_channel["xmpp"]):
        assert first in message.text
    assert first in (by_channel["email"].html or "")
    render(routed, state, UNSUBSCRIBE, cache)
    assert len(calls) == 2  # the same cache: nothing made again
    state.apply(Op("revoke", 10**19, user, LinksRevoked(user, 1)))
    again = render(routed, state, UNSUBSCRIBE, cache)
    assert len(calls) == 4
    token = next(m for m in again if m.channel == "xmpp").text.rsplit("?t=", 1)[1].strip()
    claim = open_link(SECRET, token, "e1", 1_796_385_600, lambda _: 1)
    assert claim is not None and claim.generation == 1


def test_the_jabber_link_line_is_the_templates() -> None:
    """`Templates.link_text` (the template rendered once around a marker) says exactly what
    rendering `xmpp/_link.txt.j2` for the link says."""
    templates = Templates()
    for link in ("https://renga.example.org/e/B.1?t=abc", "http://h:1/e/x?t=a&b<c>"):
        expected = templates.get_template("xmpp/_link.txt.j2").render(link=link)
        assert templates.link_text(link) == expected
