"""`herd chat`'s pure parts: which server, which JID, what is printed, when a pipe is done."""

from __future__ import annotations

from pathlib import Path

import pytest

from herd.clients.chat import (
    LINGER_SECONDS,
    QUIET_SECONDS,
    ChatSetupError,
    chat_server,
    demo_password,
    derived_config_path,
    done_lingering,
    sendable,
    sender_label,
    shown,
    user_jid,
)
from herd.config import XmppConfig


def test_the_derived_config_sits_beside_the_config() -> None:
    assert derived_config_path(Path("config/herd.toml")) == Path("config/.herd.up.toml")


def test_the_server_comes_from_the_xmpp_table() -> None:
    local = XmppConfig("renga@localhost", "secret", "127.0.0.1", 5222, "none")
    server = chat_server(local, Path("x.toml"))
    assert (server.host, server.port, server.tls, server.bot) == (
        "127.0.0.1",
        5222,
        "none",
        "renga@localhost",
    )
    assert server.domain == "localhost"
    remote = chat_server(XmppConfig("bot@example.org", "s", None, 5223, "direct"), Path("x"))
    assert remote.host == "example.org"  # no host: the bot's domain


def test_a_user_name_becomes_a_jid_of_the_bots_domain() -> None:
    assert user_jid("alice", "localhost") == "alice@localhost"
    assert user_jid("Alice", "localhost") == "alice@localhost"  # JIDs fold their local part
    assert user_jid("dave@example.org", "localhost") == "dave@example.org"
    assert demo_password("alice@localhost") == "alice-demo"


@pytest.mark.parametrize("bad", ["", "a b", "alice@localhost/phone", "@localhost", "x@"])
def test_a_user_that_makes_no_jid_is_refused(bad: str) -> None:
    with pytest.raises(ChatSetupError, match="herd chat: "):
        user_jid(bad, "localhost")


def test_a_message_is_printed_with_its_lines_lined_up() -> None:
    assert shown("renga", "Planned “Dinner”.") == "renga: Planned “Dinner”."
    assert shown("renga", "Times:\n1. Fri 19:00  \n\n") == "renga: Times:\n       1. Fri 19:00"
    assert shown("bob@localhost", "") == "bob@localhost: "
    assert sender_label("renga@localhost", "renga@localhost") == "renga"
    assert sender_label("bob@localhost", "renga@localhost") == "bob@localhost"


def test_a_pipe_waits_for_a_quiet_bot_but_not_forever() -> None:
    eof = 100.0
    assert not done_lingering(eof, eof, last_heard=50.0)
    assert done_lingering(eof + QUIET_SECONDS, eof, last_heard=50.0)
    assert not done_lingering(eof + QUIET_SECONDS, eof, last_heard=eof + 1.0)  # still talking
    assert done_lingering(eof + 1.0 + QUIET_SECONDS, eof, last_heard=eof + 1.0)
    chatty = eof + LINGER_SECONDS - 0.1
    assert done_lingering(eof + LINGER_SECONDS, eof, last_heard=chatty)  # bounded in all


def test_a_line_is_made_sendable() -> None:
    assert sendable(b"  plan Tea\r\n") == "plan Tea"
    # characters XML forbids are dropped, bad UTF-8 replaced
    assert sendable(b"he\x00l\x1bp\xff\n") == "help\ufffd"
    assert sendable("tab\there\ud800\uffff") == "tab\there"
    assert sendable(b"\x01\x02\n") == ""
