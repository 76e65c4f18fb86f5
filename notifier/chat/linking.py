"""Who may talk to the bot: the user a JID is linked to (`user_of_jid`), and strangers, who prove
a JID is theirs with `link <user> <code>` (`interpret_stranger`).  The code came from `LINK <jid>`
on the line protocol as that user: an HMAC of (user, JID, 10-minute window) under the herd's
secret, so any server can check it and it is good for 10 to 20 minutes."""

from __future__ import annotations

from herd.api import StateView, User, check_link_code
from notifier.chat.phrases import user_id_as_typed
from notifier.chat.replies import chat_text
from notifier.chat.steps import LinkJid, Reply, StrangerStep
from notifier.render import Templates

__all__ = ["interpret_stranger", "user_of_jid"]


def interpret_stranger(
    templates: Templates, text: str, bare_jid: str, secret: bytes, now_ns: int, state: StateView
) -> StrangerStep:
    """A message from a JID linked to no user: `link <user> <code>` links it when the code was
    made for that user and this JID; anything else gets the line saying how to get linked.
    Whether the user exists is not told apart from a wrong code."""
    words = text.split()
    if len(words) != 3 or words[0].lower() != "link":
        return Reply(chat_text(templates, "stranger"))
    user = user_id_as_typed(state, words[1])
    if state.user(user) is None or not check_link_code(secret, user, bare_jid, words[2], now_ns):
        return Reply(chat_text(templates, "bad_code"))
    return LinkJid(user, bare_jid)


def user_of_jid(state: StateView, jid: str) -> User | None:
    """The user whose JID this bare JID is (case-insensitively), if any: only they may command
    the bot from it."""
    user_id = state.user_of_jid(jid)
    return None if user_id is None else state.user(user_id)
