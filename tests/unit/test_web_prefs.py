"""Unsubscribing and preferences on the web, the pure parts (`web.prefs`, the notifier's
`Unsubscribe` with a web page, the mail footer's link, the pages' templates): the URLs and
tokens mails carry, the one-click request read, and the settings form read into `USER SET` /
`USER UNSET` commands, bad input refused with a sentence and nothing to run."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import replace
from datetime import time
from html.parser import HTMLParser

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herd.api import Clock, SetUser, UnsetUser, User, UserField
from herd.ops import OPERATOR, AddComment, AddUser, LinksRevoked, Op
from herd.state import PlanningState
from herd.tokens import USER_SCOPE, link_token, open_link, unsubscribe_token, verify_unsubscribe
from herd.wire.grammar import redact_secrets
from herd.wire.planning import parse_user
from notifier.digest import compose_digest
from notifier.message import Kind, Medium
from notifier.render import RenderCache, Templates, Unsubscribe, render
from tests.unit.test_digest import digest_story, folded
from tests.unit.test_render import T0, UNSUBSCRIBE, scene
from web.links import PersonalLinks
from web.prefs import (
    CHANNELS,
    DIGESTS,
    ONE_CLICK,
    is_one_click,
    prefs_changes,
    prefs_link,
    prefs_page,
    result_message,
    unsubscribe_query,
    unsubscribe_url,
)
from web.templates import WebTemplates

SECRET = b"prefs secret"
NOW = 1_796_385_600
NOT_TEXT = "holds a line break or another character that is not text."
BAD_DIGEST_AT = "the digest time is a time like 19:30 (or empty for the usual hour)."
MAILTO = "mailto:renga@example.org?subject=OPTOUT%20{user}%20{token}"


class _Fixed:
    def seconds(self) -> float:
        return float(NOW)


def links(state: PlanningState, base_url: str = "https://renga.example.org") -> PersonalLinks:
    clock = Clock(_Fixed(), lambda: NOW * 10**9)  # type: ignore[arg-type]
    return PersonalLinks(SECRET, base_url, 30, state, clock)


def generation_of(state: PlanningState) -> Callable[[str], int | None]:
    def generation(user: str) -> int | None:
        found = state.user(user)
        return None if found is None else found.link_generation

    return generation


BOB = User(
    id="bob",
    jid=None,
    email="bob@example.org",
    channels=("email", "line", "xmpp"),
    digest="daily",
    quiet=None,
    tz=None,
    clients=(),
    token_hash=None,
)


# --- the unsubscribe URL and the mail's headers ------------------------------------------------


def test_the_web_unsubscribe_url_is_the_sites_with_the_users_token() -> None:
    template = unsubscribe_url("https://bailey.renga.example")
    unsubscribe = Unsubscribe(SECRET, MAILTO, web=template)
    token = unsubscribe_token(SECRET, "bob")
    page = f"https://bailey.renga.example/unsubscribe?u=bob&t={token}"
    assert unsubscribe.link("bob") == page  # the mail's text links to the page
    assert unsubscribe.headers("bob") == (
        (
            "List-Unsubscribe",
            f"<{page}>, <mailto:renga@example.org?subject=OPTOUT%20bob%20{token}>",
        ),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    )
    url = urllib.parse.urlsplit(page)
    assert unsubscribe_query(f"{url.path}?{url.query}".encode()) == ("bob", token)
    assert verify_unsubscribe(SECRET, "bob", token)


def test_an_http_site_is_listed_without_the_one_click_header() -> None:
    """RFC 8058 §3.1: the one-click header field MUST contain an HTTPS URI; an http page (a
    herd on loopback) is an RFC 2369 link like any other, and no one-click is claimed."""
    unsubscribe = Unsubscribe(SECRET, MAILTO, web=unsubscribe_url("http://127.0.0.1:8001"))
    token = unsubscribe_token(SECRET, "bob")
    assert unsubscribe.headers("bob") == (
        (
            "List-Unsubscribe",
            f"<http://127.0.0.1:8001/unsubscribe?u=bob&t={token}>, "
            f"<mailto:renga@example.org?subject=OPTOUT%20bob%20{token}>",
        ),
    )


def test_without_a_web_the_headers_are_as_before() -> None:
    token = unsubscribe_token(SECRET, "bob")
    assert Unsubscribe(SECRET, MAILTO).headers("bob") == (
        ("List-Unsubscribe", f"<mailto:renga@example.org?subject=OPTOUT%20bob%20{token}>"),
    )


@pytest.mark.parametrize(
    "bad",
    ["ftp://x.org/{token}", "https://x.org/unsubscribe", "https://x.org/{token}/{other}", ""],
)
def test_a_bad_web_unsubscribe_url_is_refused_at_start(bad: str) -> None:
    with pytest.raises(ValueError, match="unsubscribe URL"):
        Unsubscribe(SECRET, MAILTO, web=bad)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (b"/unsubscribe?u=bob&t=abc_-9", ("bob", "abc_-9")),
        (b"/unsubscribe?t=abc&u=b.o-b_1", ("b.o-b_1", "abc")),
        (b"/unsubscribe", None),
        (b"/unsubscribe?u=bob", None),
        (b"/unsubscribe?u=bob&u=carol&t=abc", None),  # which one? neither
        (b"/unsubscribe?u=bob&t=abc&t=def", None),
        (b"/unsubscribe?u=.bob&t=abc", None),  # not a user id
        (b"/unsubscribe?u=bob&t=a%20b", None),
        (b"/unsubscribe?u=bob&t=a%0Ab", None),
        (b"/unsubscribe?u=b%C3%B6b&t=abc", None),
        (b"/unsubscribe?u=bob&t=\xff", None),
        (b"/unsubscribe?u=bob&t=" + b"a" * 2000, None),
    ],
)
def test_the_user_and_token_come_from_the_url_alone(
    uri: bytes, expected: tuple[str, str] | None
) -> None:
    assert unsubscribe_query(uri) == expected


def test_a_one_click_body_says_so_exactly() -> None:
    name, value = ONE_CLICK
    assert is_one_click({name.encode(): [value.encode()]})
    assert not is_one_click({})
    assert not is_one_click({name.encode(): [b"one-click"]})
    assert not is_one_click({name.encode(): [value.encode(), value.encode()]})
    assert not is_one_click({b"list-unsubscribe": [value.encode()]})


def test_the_line_an_opt_out_runs_keeps_its_token_out_of_the_log() -> None:
    token = unsubscribe_token(SECRET, "bob")
    assert redact_secrets(f"OPTOUT bob {token}".encode()) == b"OPTOUT bob <redacted>"


# --- the preferences link ----------------------------------------------------------------------


def user_state(*users: str) -> PlanningState:
    state = PlanningState()
    for n, user in enumerate(users):
        state.apply(Op(f"u{n}", (n + 1) * 10**9, OPERATOR, AddUser(user)))
    return state


def test_the_prefs_link_is_a_personal_link_with_the_user_scope() -> None:
    state = user_state("bob", "carol")
    link = prefs_link(links(state), "bob")
    assert link is not None and link.startswith("https://renga.example.org/prefs?t=")
    token = link.split("?t=", 1)[1]
    claim = open_link(SECRET, token, USER_SCOPE, NOW, generation_of(state))
    assert claim is not None and (claim.user, claim.scope) == ("bob", USER_SCOPE)
    assert claim.expires == NOW + 30 * 86400
    # it opens no event, and an event's link does not open the preferences
    assert open_link(SECRET, token, "B.1", NOW, generation_of(state)) is None
    event_token = link_token(SECRET, "bob", "B.1", NOW + 60, 0)
    assert open_link(SECRET, event_token, USER_SCOPE, NOW, generation_of(state)) is None
    assert prefs_link(links(state), "nobody") is None


def test_revoking_the_links_ends_the_prefs_link() -> None:
    state = user_state("bob")
    token = (prefs_link(links(state), "bob") or "").split("?t=", 1)[1]
    state.apply(Op("revoke", 10**19, "bob", LinksRevoked("bob", 1)))
    assert open_link(SECRET, token, USER_SCOPE, NOW, generation_of(state)) is None
    fresh_token = (prefs_link(links(state), "bob") or "").split("?t=", 1)[1]
    assert open_link(SECRET, fresh_token, USER_SCOPE, NOW, generation_of(state)) is not None


def fake_prefs(user: str) -> str:
    return f"https://renga.example.org/prefs?t=PREFS-{user}"


@pytest.mark.parametrize("kind", list(Kind))
def test_every_mail_carries_its_recipients_prefs_link(kind: Kind) -> None:
    state, routed = scene(kind)
    templates = Templates(prefs_link=fake_prefs)
    messages = render(routed, state, UNSUBSCRIBE, RenderCache(templates, state, T0))
    email = next(m for m in messages if m.channel == Medium.EMAIL.value)
    link = fake_prefs(routed.notification.recipient.user)
    assert f"Your settings (channels, quiet hours, digest): {link}" in email.text
    assert email.html is not None and f'<a href="{link}">Your settings</a>' in email.html
    for other in messages:
        if other is not email:
            assert "PREFS" not in other.text  # chat and line pushes: not asked for


def test_the_digest_carries_the_prefs_link_too() -> None:
    story, bob = digest_story()
    story.apply("dave", AddComment("e1", "Fine by me"), "c9")
    items = folded(story)
    assert items
    templates = Templates(prefs_link=fake_prefs)
    digest = compose_digest(
        bob, story.state, items, story.clock, UNSUBSCRIBE, RenderCache(templates, story.state, T0)
    )
    assert digest is not None
    assert fake_prefs("bob") in digest.text
    assert digest.html is not None and fake_prefs("bob") in digest.html


# --- the form ----------------------------------------------------------------------------------


def lines(commands: object) -> list[bytes]:
    assert isinstance(commands, list), commands
    return [command.to_line() for command in commands]


def test_the_page_shows_the_users_fields() -> None:
    user = replace(BOB, jid="bob@chat.example.org", quiet="22:30-07:00", tz="Europe/Paris")
    page = prefs_page(user, "Europe/Paris")
    assert (page.email, page.jid, page.digest) == (
        "bob@example.org",
        "bob@chat.example.org",
        "daily",
    )
    assert (page.quiet_from, page.quiet_to, page.tz) == ("22:30", "07:00", "Europe/Paris")
    assert page.channels == {"email", "line", "xmpp"}
    empty = prefs_page(replace(BOB, email=None), "UTC")
    assert (empty.email, empty.jid, empty.quiet_from, empty.quiet_to, empty.tz) == ("",) * 5


def as_sent(page_user: User, **changes: list[str]) -> dict[str, list[str]]:
    """The form as the page sends it unchanged, with `changes`."""
    page = prefs_page(page_user, "UTC")
    form = {
        "channels": ["", *sorted(page.channels)],
        "digest": [page.digest],
        "digest_at": [page.digest_at],
        "quiet_from": [page.quiet_from],
        "quiet_to": [page.quiet_to],
        "tz": [page.tz],
        "email": [page.email],
        "jid": [page.jid],
    }
    return {**form, **changes}


def test_an_unchanged_form_changes_nothing() -> None:
    assert prefs_changes(BOB, as_sent(BOB)) == []
    assert result_message([], None) == "Nothing to change."


def test_each_changed_field_is_one_line_in_a_fixed_order() -> None:
    form = as_sent(
        BOB,
        channels=["", "xmpp", "email"],
        digest=["weekly"],
        digest_at=["19:30"],
        quiet_from=["22:00"],
        quiet_to=["07:00:00"],
        tz=["Europe/Paris"],
        email=[""],
        jid=["bob@chat.example.org"],
    )
    assert lines(prefs_changes(BOB, form)) == [
        b"USER SET channels email,xmpp\n",
        b"USER SET digest weekly\n",
        b"USER SET digest_at 19:30\n",
        b"USER SET quiet 22:00-07:00\n",
        b"USER SET tz Europe/Paris\n",
        b"USER UNSET email\n",
        b"USER SET jid bob@chat.example.org\n",
    ]


def test_the_digest_time_is_the_users_own_or_empty_for_the_herds() -> None:
    page = prefs_page(BOB, "Europe/Paris", time(7, 30, 15))
    assert (page.digest_at, page.herd_digest_at) == ("", "07:30")
    assert prefs_page(BOB, "UTC").herd_digest_at == "08:00"  # the configuration's default
    own = replace(BOB, digest_at="19:30")
    assert prefs_page(own, "UTC").digest_at == "19:30"
    assert prefs_changes(own, as_sent(own)) == []
    assert prefs_changes(own, as_sent(own, digest_at=[""])) == [UnsetUser(UserField.DIGEST_AT)]
    assert prefs_changes(own, as_sent(own, digest_at=["06:05:00"])) == [
        SetUser(UserField.DIGEST_AT, "06:05")  # a browser's seconds dropped
    ]
    assert prefs_changes(BOB, as_sent(BOB, digest_at=["00:00"])) == [
        SetUser(UserField.DIGEST_AT, "00:00")
    ]
    assert prefs_changes(BOB, as_sent(BOB, digest_at=[" "])) == []


def test_no_channel_ticked_is_channels_none_and_empty_fields_unset() -> None:
    user = replace(BOB, quiet="22:00-07:00", tz="Europe/Paris", jid="b@chat.example.org")
    form = as_sent(user, channels=[""], quiet_from=[""], quiet_to=[""], tz=[""], jid=[" "])
    assert prefs_changes(user, form) == [
        SetUser(UserField.CHANNELS, "none"),
        UnsetUser(UserField.QUIET),
        UnsetUser(UserField.TZ),
        UnsetUser(UserField.JID),
    ]


def test_a_form_without_a_field_leaves_it_alone() -> None:
    assert lines(prefs_changes(BOB, {"digest": ["off"]})) == [b"USER SET digest off\n"]
    assert prefs_changes(BOB, {}) == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"channels": ["", "email", "sms"]},
            "Not saved: the channels are some of email, xmpp and line.",
        ),
        ({"digest": ["hourly"]}, "Not saved: the digest is daily, weekly or off."),
        ({"digest": ["daily", "off"]}, "Not saved: the form sent digest 2 times."),
        (
            {"quiet_from": ["22:00"], "quiet_to": [""]},
            "Not saved: give the quiet hours a start and an end, or leave both empty.",
        ),
        (
            {"quiet_from": ["22:00"], "quiet_to": ["22:00"]},
            "Not saved: the quiet hours start and end at different times.",
        ),
        (
            {"quiet_from": ["10pm"], "quiet_to": ["07:00"]},
            "Not saved: quiet hours are two times like 22:00 and 07:00.",
        ),
        (
            {"quiet_from": ["24:00"], "quiet_to": ["07:00"]},
            "Not saved: quiet hours are two times like 22:00 and 07:00.",
        ),
        (
            {"email": ["a@b.org\nAUTH x y"]},
            f"Not saved: the email address {NOT_TEXT}",
        ),
        (
            {"tz": ["Europe/\u2028Paris"]},
            f"Not saved: the time zone {NOT_TEXT}",
        ),
        ({"jid": ["x" * 255]}, "Not saved: the Jabber address is at most 254 characters."),
        *(
            ({"digest_at": [bad]}, f"Not saved: {BAD_DIGEST_AT}")
            for bad in ("7pm", "24:00", "7:30", "19:60", "19:30+01:00", "19h30", "\u0661\u0669:30")
        ),
        ({"digest_at": ["19:30", "20:00"]}, "Not saved: the form sent digest_at 2 times."),
        ({"digest_at": ["19:30\x00"]}, f"Not saved: the digest time {NOT_TEXT}"),
    ],
)
def test_bad_input_is_refused_with_a_message_and_nothing_to_run(
    changes: dict[str, list[str]], message: str
) -> None:
    assert prefs_changes(BOB, as_sent(BOB, **changes)) == message


@given(
    st.dictionaries(
        st.sampled_from(
            ["channels", "digest", "digest_at", "quiet_from", "quiet_to", "tz", "email", "jid"]
        ),
        st.lists(st.text(max_size=40), min_size=0, max_size=3),
    )
)
def test_whatever_the_form_holds_each_command_is_one_valid_line(
    form: dict[str, list[str]],
) -> None:
    """No form, however hostile, yields a line with a break in it or one the protocol's
    grammar reads as anything but the `USER` command it was built as."""
    commands = prefs_changes(BOB, form)
    if isinstance(commands, str):
        assert commands.startswith("Not saved: ")
        return
    for command in commands:
        line = command.to_line()
        assert line.endswith(b"\n") and line.count(b"\n") == 1 and b"\r" not in line
        fields = line.rstrip(b"\n").split(b" ")
        parsed = parse_user(fields, line.rstrip(b"\n"))
        assert parsed == command or (
            isinstance(command, SetUser) and parsed == SetUser(command.field, command.value)
        )


def test_what_the_page_says_after_the_lines_ran() -> None:
    assert result_message([UserField.CHANNELS, UserField.QUIET], None) == (
        "Saved: channels, quiet hours."
    )
    refused = (UserField.TZ, "Mars/Olympus is not a time zone like Europe/Paris")
    assert result_message([UserField.CHANNELS], refused) == (
        "Not saved: the time zone: Mars/Olympus is not a time zone like Europe/Paris. "
        "Saved before it: channels."
    )
    assert result_message([], refused).endswith("Europe/Paris.")


# --- the pages ---------------------------------------------------------------------------------


class _Inputs(HTMLParser):
    """Every form control of a page, and the ids labels point at."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.labelled: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag in ("input", "select", "textarea"):
            self.controls.append(found)
        elif tag == "label" and found.get("for"):
            self.labelled.add(found["for"] or "")


def test_the_prefs_page_labels_every_control_and_escapes_every_value() -> None:
    templates = WebTemplates()
    user = replace(BOB, email='x"><script>@example.org', jid=None, quiet="22:00-07:00")
    body = templates.page(
        "prefs",
        {
            "page": prefs_page(user, "UTC"),
            "channels": CHANNELS,
            "digests": DIGESTS,
            "csrf": "CSRF",
            "flash": "<b>Saved</b>",
            "server": "Bailey",
        },
    ).decode()
    assert "<script>" not in body and "&lt;b&gt;Saved&lt;/b&gt;" in body
    parser = _Inputs()
    parser.feed(body)
    visible = [c for c in parser.controls if c.get("type") != "hidden"]
    assert len(visible) == len(CHANNELS) + len(DIGESTS) + 6
    [digest_at] = [c for c in visible if c.get("name") == "digest_at"]
    assert digest_at.get("type") == "time" and digest_at.get("value") == ""
    assert "Empty: the usual hour, 08:00." in body
    for control in visible:
        assert control.get("id") in parser.labelled, control
    assert sum(1 for c in parser.controls if c.get("name") == "csrf") == 2  # save and revoke
    assert 'name="viewport"' in body


@pytest.mark.parametrize("state", ["ask", "bad", "done", "later"])
def test_the_unsubscribe_page_has_a_button_only_when_asking(state: str) -> None:
    body = (
        WebTemplates()
        .page(
            "unsubscribe",
            {
                "state": state,
                "user": "bob",
                "email_on": True,
                "one_click": ONE_CLICK,
                "server": "B",
            },
        )
        .decode()
    )
    has_form = '<form method="post">' in body
    assert has_form is (state in ("ask", "bad"))
    if has_form:
        assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in body
