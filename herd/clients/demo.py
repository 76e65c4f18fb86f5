"""`herd demo`: plays the get-together of `herd.clients.demoscript` against a running herd (the
one `herd up` runs) over the real line protocol, narrating each step on stdout (wiring and
asyncio client code, in a CLI process of its own).

It reads the config `herd up` derived (`<config dir>/.<stem>.up.toml`) when there is one, else
the config.  alice, bob and carol get fresh tokens from the local operator (the herd secret
from the config or the data dir), which replaces the tokens `herd up` printed; a demo user
that does not exist is created as `herd up` creates them.  Each line waits for its reply, each
wait is bounded, and a refused line stops the demo with the server's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from herd.clients.demoscript import (
    Known,
    NotKnownYet,
    Setting,
    Step,
    choose_servers,
    get_together,
    peers_of,
    shown,
    summary,
)
from herd.config import HerdConfig, default_config_path, load_config
from herd.demousers import DEMO_USERS, issue_demo_token
from herd.operator import OperatorError
from herd.secretfile import SecretFileError, choose_secret, read_secret
from herd.wire.client import Status
from herd.wire.planning import Login

CONNECT_SECONDS: Final = 2.0
REPLY_SECONDS: Final = 10.0
CATCH_UP_SECONDS: Final = 5.0
"""How long a server may take to hear of a change another server accepted (a token, an event)."""
RETRY_PAUSE: Final = 0.2
MAIL_SECONDS: Final = 5.0
MAIL_QUIET_SECONDS: Final = 1.0
"""The end waits for the sink's mails until none came for this long (at most MAIL_SECONDS)."""
LAST_PUSH_SECONDS: Final = 5.0
"""How long the end waits for bob's line client to get the decision."""
READ_LIMIT: Final = 1 << 20
WIDTH: Final = 96
NOT_HERE_YET: Final = (b"ERR no-such-event", b"ERR no-such-option", b"ERR not-invited")
"""Replies that mean the server has not heard of an earlier step yet: asked again a moment on."""


class DemoFailed(Exception):
    """A step could not be played: the message says which and what the server answered."""


def up_config_path(path: Path) -> Path:
    """The config `herd up` derives from `path` while it runs."""
    return path.with_name(f".{path.stem}.up.toml")


def play_demo(config_path: Path | None, pace: float) -> int:
    """`herd demo`: 0 when every step was played, 1 (with a message on stderr) if not."""
    if pace < 0:
        print("herd demo: --pace is a number of seconds, 0 or more", file=sys.stderr)
        return 2
    path = config_path if config_path is not None else default_config_path()
    derived = up_config_path(path)
    chosen = derived if derived.exists() else path
    config = load_config(chosen, os.environ)
    answering = asyncio.run(_answering(config))
    if not answering:
        print(f"herd demo: no server of {chosen} answers: start `herd up` first", file=sys.stderr)
        return 1
    try:
        config = choose_secret(config, read_secret)
    except SecretFileError as error:
        print(f"herd demo: {error}", file=sys.stderr)
        return 1
    links = sorted(config.links, key=sorted)
    alice, bob, carol, checked = choose_servers(answering, peers_of(links))
    setting = Setting(
        alice, bob, carol, checked, mail=config.smtp is not None, jabber=config.xmpp is not None
    )
    option = "" if config_path is None else f" --config {config_path}"
    mail_dir = config.data_dir / "mail"
    # Only `herd up`'s own sink keeps mail there; a herd may mail through a relay, or not at all.
    sink = mail_dir if chosen == derived and mail_dir.is_dir() else None
    try:
        _introduce(chosen, setting)
        kept = _kept(sink)
        tokens = _issue_tokens(config, setting, answering)
        steps = get_together(time.time_ns(), setting)
        play = Play(config, tokens, pace)
        known = asyncio.run(play.run(steps))
        if sink is not None:
            _show_new_mail(sink, kept)
    except DemoFailed as error:
        print(f"herd demo: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("herd demo: interrupted", file=sys.stderr)
        return 130
    _say("")
    _say("== Summary")
    for line in summary(known, tokens, setting, option):
        _say(line)
    return 0


def _kept(sink: Path | None) -> set[str]:
    """The ids of the mails `herd up`'s sink holds now."""
    if sink is None:
        return set()
    from notifier.mailsink import list_mail

    return {mail.id for mail in list_mail(sink.parent)}


def _show_new_mail(sink: Path, before: set[str]) -> None:
    """The mails the sink got during the demo, once no more come (a second without one)."""
    from notifier.mailsink import format_mail_list, list_mail

    deadline = time.monotonic() + MAIL_SECONDS
    new = [mail for mail in list_mail(sink.parent) if mail.id not in before]
    quiet_since = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - quiet_since < MAIL_QUIET_SECONDS:
        time.sleep(RETRY_PAUSE)
        now = [mail for mail in list_mail(sink.parent) if mail.id not in before]
        if len(now) != len(new):
            new, quiet_since = now, time.monotonic()
    _say("")
    _say("== The mails the sink got meanwhile (`herd mail ID` shows one)")
    if not new:
        _say("   none (whoever chats with the bot gets Jabber messages instead)")
    for line in format_mail_list(new) if new else []:
        _say(f"   {line}")


async def _answering(config: HerdConfig) -> list[str]:
    """The servers that answer STATUS, in config order."""
    names = list(config.servers)
    answers = await asyncio.gather(*(_answers(config, name) for name in names))
    return [name for name, answer in zip(names, answers, strict=True) if answer]


async def _answers(config: HerdConfig, name: str) -> bool:
    try:
        connection = await _Connection.open(config, name)
    except (OSError, TimeoutError):
        return False
    try:
        reply = await connection.ask(Status().to_line())
    except (OSError, TimeoutError, DemoFailed):
        return False
    finally:
        connection.close()
    return reply.startswith(b"STATUS ")


def _introduce(path: Path, setting: Setting) -> None:
    _say(
        textwrap.fill(
            f"herd demo: alice, bob and carol plan a dinner on the herd of {path}. alice plays "
            f"on {setting.alice}, bob on {setting.bob}, carol on {setting.carol}.",
            WIDTH,
            subsequent_indent="   ",
        )
    )
    _tell(
        "Lines sent are marked `>`, replies `<`. Each friend gets a new token first: the ones "
        "`herd up` printed stop working (the new ones are listed at the end)."
    )


def _issue_tokens(config: HerdConfig, setting: Setting, answering: list[str]) -> dict[str, str]:
    """A fresh token per demo user, asked of the server the user plays on first (so it knows
    the token before the user logs in there)."""
    _heading(0, "the operator gives alice, bob and carol new tokens")
    _tell(
        "As `herd user token` does: USER-TOKEN (USER-ADD for a user that does not exist yet) "
        "over the operator's handshake, proven with the herd secret."
    )
    homes = {"alice": setting.alice, "bob": setting.bob, "carol": setting.carol}
    tokens = {}
    for user in DEMO_USERS:
        names = [homes[user], *(name for name in answering if name != homes[user])]
        try:
            token, reply = issue_demo_token(config, user, names)
        except OperatorError as error:
            raise DemoFailed(f"could not issue {user}'s token: {error}") from None
        _say(f"   < {reply}")
        if not reply.startswith("OK "):
            raise DemoFailed(f"could not issue {user}'s token: {reply}")
        tokens[user] = token
    return tokens


@dataclass
class Play:
    """The steps played in order, one connection per user and server, and bob's line client."""

    config: HerdConfig
    tokens: dict[str, str]
    pace: float
    known: Known = field(default_factory=Known)
    sessions: dict[tuple[str, str], _Connection] = field(default_factory=dict)
    followed: list[_Connection] = field(default_factory=list)
    followers: list[asyncio.Task[None]] = field(default_factory=list)
    decided: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, steps: list[Step]) -> Known:
        try:
            for number, step in enumerate(steps, 1):
                if number > 1 and self.pace:
                    await asyncio.sleep(self.pace)
                await self.play(number, step)
            if self.followers:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.decided.wait(), LAST_PUSH_SECONDS)
                if not self.decided.is_set():
                    _say(f"   (bob's line client got no decision within {LAST_PUSH_SECONDS:g} s)")
            return self.known
        finally:
            for task in self.followers:
                task.cancel()
            for connection in [*self.sessions.values(), *self.followed]:
                connection.close()

    async def play(self, number: int, step: Step) -> None:
        _heading(number, step.title)
        _tell(step.says)
        try:
            if step.follow:
                connection = await self.login(step.user, step.server)
            else:
                connection = self.sessions.get((step.user, step.server)) or await self.login(
                    step.user, step.server
                )
                self.sessions[(step.user, step.server)] = connection
            for make in step.lines:
                try:
                    command = make(self.known)
                except NotKnownYet as missing:
                    raise DemoFailed(f"step {number}: {missing} is not known") from None
                reply = await self.ask(connection, step, command.to_line())
                self.known = self.known.learn(reply)
        except (OSError, TimeoutError) as error:
            raise DemoFailed(
                f"step {number} ({step.title}): {step.server} did not answer ({error!r})"
            ) from None
        if step.follow:
            self.followed.append(connection)
            self.followers.append(asyncio.create_task(self.follow(step.user, connection)))
        if step.look:
            _tell("→ " + step.look)

    async def ask(self, connection: _Connection, step: Step, line: bytes) -> bytes:
        """Send one line and wait for its reply; ask again while the server has not heard of
        an earlier step; a refusal stops the demo."""
        _say(f"   > {shown(line)}")
        reply = await connection.ask(line)
        deadline = time.monotonic() + CATCH_UP_SECONDS
        while reply.startswith(NOT_HERE_YET) and time.monotonic() < deadline:
            _say(f"   < {shown(reply)}  ({step.server} has not heard of it yet: asking again)")
            await asyncio.sleep(RETRY_PAUSE)
            reply = await connection.ask(line)
        _say(f"   < {shown(reply)}")
        if reply.startswith((b"ERR ", b"? ")):
            raise DemoFailed(
                f"{step.server} refused `{shown(line)}` ({step.title}): {shown(reply)}"
            )
        return reply

    async def login(self, user: str, server: str) -> _Connection:
        """A new connection to `server`, logged in as `user`.  A server that has not heard of
        the new token yet refuses it: asked again on a new connection (a refused AUTH makes
        the next one on the same connection wait longer)."""
        line = Login(user, self.tokens[user]).to_line()
        deadline = time.monotonic() + CATCH_UP_SECONDS
        while True:
            connection = await _Connection.open(self.config, server)
            _say(f"   > {shown(line)}")
            reply = await connection.ask(line)
            _say(f"   < {shown(reply)}")
            if reply.startswith(b"USER "):
                return connection
            connection.close()
            if not reply.startswith(b"ERR auth-failed") or time.monotonic() > deadline:
                raise DemoFailed(f"{server} refused {user}'s login: {shown(reply)}")
            _say(f"   ({server} has not heard of {user}'s new token yet: logging in again)")
            await asyncio.sleep(RETRY_PAUSE)

    async def follow(self, user: str, connection: _Connection) -> None:
        """Show every line the subscribed connection gets, as it comes."""
        while True:
            try:
                line = await connection.reader.readline()
            except (OSError, ValueError) as error:  # ValueError: a line over READ_LIMIT
                _say(f"   [{user}'s line client] (the connection failed: {error!r})")
                return
            if not line:
                _say(f"   [{user}'s line client] (the server closed the connection)")
                return
            _say(f"   [{user}'s line client got] {shown(line)}")
            fields = line.split(None, 3)
            if len(fields) > 2 and fields[0] == b"PUSH" and fields[2] == b"decided":
                self.decided.set()


class _Connection:
    """One line-protocol connection: a line out, its one-line reply in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, config: HerdConfig, name: str) -> _Connection:
        server = config.server(name)
        host = "127.0.0.1" if server.host in ("0.0.0.0", "") else server.host
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, server.port, limit=READ_LIMIT), CONNECT_SECONDS
        )
        return cls(reader, writer)

    async def ask(self, line: bytes) -> bytes:
        self.writer.write(line)
        await self.writer.drain()
        reply = await asyncio.wait_for(self.reader.readline(), REPLY_SECONDS)
        if not reply.endswith(b"\n"):
            raise DemoFailed(f"the server closed the connection instead of answering {line!r}")
        return reply

    def close(self) -> None:
        self.writer.close()


def _heading(number: int, title: str) -> None:
    _say("")
    _say(f"== {number}. {title}")


def _tell(text: str) -> None:
    _say(textwrap.fill(text, WIDTH, initial_indent="   ", subsequent_indent="   "))


def _say(text: str) -> None:
    print(text, flush=True)
