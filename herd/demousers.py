"""The demo users alice, bob and carol that `herd up` creates and `herd demo` plays: their
addresses (the local Prosody's demo JIDs, example.org mail) and a fresh token for one of them,
issued as the local operator (wiring, blocking: it runs in the CLI, never in a server).

A token is shown once and never stored, so whoever needs one issues a new one; that replaces
the user's old token on every server."""

from __future__ import annotations

import secrets

from herd.config import HerdConfig
from herd.operator import operator_command
from herd.tokens import hash_token, new_token
from herd.wire.operator import UserAdd, UserToken

DEMO_USERS = ("alice", "bob", "carol")
DEMO_DOMAIN = "localhost"
"""The domain of the demo Jabber accounts (`herd up`'s Prosody serves `localhost`)."""


def demo_jid(user: str) -> str:
    return f"{user}@{DEMO_DOMAIN}"


def demo_email(user: str) -> str:
    return f"{user}@example.org"


def issue_demo_token(config: HerdConfig, user: str, names: list[str]) -> tuple[str, str]:
    """A fresh token for demo user `user` and the reply of the first of `names` that answered
    (`OK <user>` when it took effect, else `ERR …`): the user is created with its JID and mail
    address if it does not exist, else given the new token (the old one stops working).
    `config` holds the herd secret (`herd.secretfile.choose_secret`); `OperatorError` if no
    server could be asked."""
    token = new_token(secrets.token_bytes(32))
    digest = hash_token(token, secrets.token_bytes(16))
    add = UserAdd(user, digest, email=demo_email(user), jid=demo_jid(user))
    reply = operator_command(config, names, add)
    if reply.startswith("ERR user-exists"):
        reply = operator_command(config, names, UserToken(user, digest))
    return token, reply
