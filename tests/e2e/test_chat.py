"""`herd chat` and the bot's presence requests, end to end: `herd up` (servers, Prosody, mail
sink, demo users) with `herd chat alice` as a subprocess; and a herd with both `[xmpp]` and
`[smtp]` where a user links their JID, is asked for their presence, accepts, and gets the next
notice over Jabber instead of by mail.  Real processes, real Prosody, real slixmpp; no mocks."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from notifier.channels.xmpp import STRANGER_REPLY
from tests.support.herd import NAMES, REPO, config_text
from tests.support.polling import wait_until
from tests.support.ports import free_ports
from tests.support.smtp import SmtpProcess
from tests.support.up import running_up

from .bot_harness import NOTICE_SECONDS, PASSWORD, bot_scene
from .notify_harness import smtp_table

pytestmark = pytest.mark.timeout(120)

UP_SECONDS = 60.0
CHAT_SECONDS = 60.0


@contextmanager
def herd_up(root: Path) -> Iterator[Path]:
    """`herd up` on free ports (its sink and Prosody too), once its banner is out; stopped with
    SIGINT however the test ends.  Yields the user's config path."""
    with running_up(root) as up:
        yield up.config


def herd_chat(config: Path, *words: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "herd", "chat", *words, "--config", str(config)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CHAT_SECONDS,
        cwd=REPO,
        check=False,
    )


def test_herd_chat_from_a_pipe_prints_the_bots_help(tmp_path: Path) -> None:
    with herd_up(tmp_path) as config:
        done = herd_chat(config, "alice", stdin="help\nhelp time\n")
        assert done.returncode == 0, done.stderr
        out = done.stdout
        assert out.startswith("renga: Planning (on your current event; status shows it): "), out
        assert "\n       Settings: " in out and "help <command> tells more" in out, out
        # the replies in the order of the lines
        assert out.index("Planning (on") < out.index("renga: time <when>: propose a time."), out
        assert "alice@localhost on 127.0.0.1:" in done.stderr, done.stderr
        # the bot heard from alice without seeing her presence: it asked, herd chat accepted
        assert "renga@localhost asked to see when you are online: accepted" in done.stderr

        # bytes XML cannot carry and bad UTF-8 in a line: dropped or replaced, the session lives
        again = subprocess.run(
            [sys.executable, "-m", "herd", "chat", "alice", "--config", str(config)],
            input=b"sta\x00tus\x1b 1\xff\n" + b"x" * 20_000 + b"\nhello\n",
            capture_output=True,
            timeout=CHAT_SECONDS,
            cwd=REPO,
            check=False,
        )
        out, err = again.stdout.decode(), again.stderr.decode()
        assert again.returncode == 1, err  # the long line was not sent
        assert "herd chat: a line over 16384 bytes, not sent" in err, err
        assert out.startswith("renga: "), out
        assert "\nrenga: Hi alice! Try plan Dinner" in out, out
        assert "asked to see" not in err  # once, not on every visit

        wrong = herd_chat(config, "alice", "--password", "not-hers", stdin="help\n")
        assert wrong.returncode == 1
        assert "refused the login of alice@localhost" in wrong.stderr, wrong.stderr
        assert wrong.stdout == ""


def test_herd_chat_without_herd_up_says_so(tmp_path: Path) -> None:
    config = tmp_path / "herd.toml"
    config.write_text(config_text(dict(zip(NAMES, free_ports(len(NAMES)), strict=True)), []))
    done = herd_chat(config, "alice", stdin="help\n")
    assert done.returncode == 1
    assert "Is `herd up` running?" in done.stderr and done.stdout == ""
    # a derived config left behind by a herd up that died: the server is not there
    derived = tmp_path / ".herd.up.toml"
    (tmp_path / "bot.secret").write_text("x\n")
    port = free_ports(1)[0]
    derived.write_text(
        config.read_text() + '\n[xmpp]\njid = "renga@localhost"\n'
        f'password_file = "bot.secret"\nhost = "127.0.0.1"\nport = {port}\ntls = "none"\n'
    )
    done = herd_chat(config, "alice", stdin="help\n")
    assert done.returncode == 1
    assert f"cannot reach 127.0.0.1:{port}" in done.stderr, done.stderr
    assert "Is `herd up` running?" in done.stderr


_TOKEN = re.compile(r"user (\S+): token (\S+)")


def test_a_linked_user_who_accepts_gets_notices_by_chat_not_mail(
    tmp_path: Path, places_seed: Path
) -> None:
    with bot_scene(tmp_path, ("Bailey",), (), places_seed, ("alice", "dave")) as scene:
        herd = scene.herd
        port = next(p for p in free_ports(2) if p not in herd.ports.values())
        herd.config_path.write_text(herd.config_path.read_text() + smtp_table(port))
        smtp = SmtpProcess(tmp_path / "smtp", port)
        try:
            smtp.start()
            herd.up()
            herd.add_user("alice", jid=scene.prosody.jid("alice"))
            match = _TOKEN.search(herd.cli("user", "add", "dave", "--email", "dave@example.org"))
            assert match is not None
            herd.tokens["dave"] = match[2]
            for name in herd.running():
                wait_until(lambda name=name: herd.knows_user(name, "dave"), 10.0, "dave known")

            def mails_to_dave() -> list[str]:
                return [
                    str(m.message["Subject"])
                    for m in smtp.mails()
                    if m.rcpt_to == ("dave@example.org",)
                ]

            # before linking: dave's notices go by mail
            with herd.line("Bailey", "alice") as line:
                event = line.event("PLAN Picnic")["id"]
                line.event(f"INVITE {event} dave")
            wait_until(mails_to_dave, NOTICE_SECONDS, "the invitation by mail")

            dave = scene.person("dave", login=False)
            scene.chat.call(lambda: setattr(dave.xmpp, "auto_authorize", None))  # asks us
            dave.login()
            with herd.line("Bailey", "dave") as line:
                word, body = line.call(f"LINK {dave.jid}")
            assert word == "LINKCODE", body
            dave.ask(f"link dave {body.split()[0]}", "Linked: this address is dave's")
            asked = (scene.bot, "subscribe")
            wait_until(
                lambda: asked in dave.presences(),
                10.0,
                lambda: f"the bot's subscription request: {dave.presences()}",
            )
            dave.ask("help", "help <command> tells more")
            dave.ask("settings", "Settings for dave")
            dave.ping(f"{scene.bot}/Bailey")
            assert dave.presences().count(asked) == 1, dave.presences()  # once, not per message

            bot = scene.bot
            scene.chat.call(lambda: dave.xmpp.client_roster[bot].authorize())  # dave accepts
            dave.ping(f"{scene.bot}/Bailey")  # the bot has had dave's presence by now
            mailed = len(mails_to_dave())
            before = len(dave.from_bot())
            with herd.line("Bailey", "alice") as line:  # an urgent kind: never in a digest
                tea = line.event("PLAN Tea")["id"]
                line.event(f"INVITE {tea} dave")
            notice = dave.wait_message(
                lambda m: 'alice invited you to "Tea"' in m.body,
                "the invitation over Jabber",
                after=before,
            )
            assert notice.kind == "chat"
            dave.ping(f"{scene.bot}/Bailey")
            assert len(mails_to_dave()) == mailed, mails_to_dave()  # and not by mail
        finally:
            smtp.close()


class Terminal:
    """A child process on a pseudo-terminal: what it wrote so far, and keys typed into it."""

    def __init__(self, argv: list[str]) -> None:
        leader, follower = pty.openpty()
        env = {**os.environ, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1", "COLUMNS": "200"}
        self.proc = subprocess.Popen(
            argv, stdin=follower, stdout=follower, stderr=follower, cwd=REPO, env=env
        )
        os.close(follower)
        self.leader = leader
        self.seen = b""

    def read(self) -> str:
        while select.select([self.leader], [], [], 0.05)[0]:
            try:
                chunk = os.read(self.leader, 65536)
            except OSError:  # the child is gone: EIO
                break
            if not chunk:
                break
            self.seen += chunk
        return self.seen.decode(errors="replace")

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        wait_until(lambda: text in self.read(), timeout, lambda: f"{text!r} in {self.read()!r}")

    def type(self, keys: str) -> None:
        os.write(self.leader, keys.encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.leader)


def test_herd_chat_on_a_terminal_prints_notices_as_they_come(
    tmp_path: Path, places_seed: Path
) -> None:
    with bot_scene(tmp_path, ("Bailey",), (), places_seed, ("alice", "eve")) as scene:
        herd = scene.herd
        herd.up()
        herd.add_user("alice", jid=scene.prosody.jid("alice"))
        herd.add_user("bob")
        # first, from a pipe, someone the bot does not know: one polite line, in the thread
        eve = herd_chat(herd.config_path, "eve", "--password", PASSWORD, stdin="hi\n")
        assert eve.stdout == f"renga: {STRANGER_REPLY}\n", eve
        assert eve.returncode == 0, eve.stderr
        argv = [sys.executable, "-m", "herd", "chat", "alice", "--password", PASSWORD]
        terminal = Terminal([*argv, "--config", str(herd.config_path)])
        try:
            terminal.wait_for("alice>")
            terminal.type("hello\r")
            terminal.wait_for("renga: Hi alice! Try plan Dinner")
            with herd.line("Bailey", "bob") as line:  # a notice while alice sits at the prompt
                event = line.event("PLAN Quiz night")["id"]
                line.event(f"INVITE {event} alice")
            terminal.wait_for('renga: bob invited you to "Quiz night"')
            terminal.type("\x04")  # Ctrl-D
            assert terminal.proc.wait(10) == 0, terminal.read()
        finally:
            terminal.close()
