"""The `herd` command: `run`, `up`, `status` (wiring; blocking code lives only in `up`/`status`,
which run no reactor)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from herd.config import ConfigError, HerdConfig, default_config_path, dial_host, load_config
from herd.probe import STATUS_TIMEOUT, ask_status
from herd.reach import client_context

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

HARD_STOP_SECONDS = 8.0  # below `herd up`'s grace, above the outbox's 5 s for deliveries


DESCRIPTION = """\
Renga: a herd of servers that share where people are and plan get-togethers.

Start with `herd up` (the whole herd of the config, a mail sink and a Jabber server), then
`herd talk` to type lines to a server.  Each command has its own --help."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="herd", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=summary, description=description)

    run = command(
        "run",
        "run one server in the foreground",
        "Run one server of the config until SIGTERM or Ctrl-C; its log goes to stderr and to "
        "<data_dir>/<NAME>.log.",
    )
    run.add_argument("name", metavar="NAME", help="the server's name in the config")
    run.add_argument(
        "--quiet",
        action="store_true",
        help="log to <data_dir>/NAME.log only, not also to stderr (as `herd up` runs servers)",
    )
    up = command(
        "up",
        "run the whole herd of a config",
        "Run every server of the config as its own process, with a mail sink and a Prosody "
        "with demo users when the config names none; Ctrl-C stops them all.",
    )
    up.add_argument(
        "--verbose", action="store_true", help="also follow the servers' logs in the terminal"
    )
    up.add_argument(
        "--smtp-port",
        type=int,
        metavar="PORT",
        help="the local mail sink's port when free, else a free one; 0: any (default 2525)",
    )
    up.add_argument(
        "--xmpp-port",
        type=int,
        metavar="PORT",
        help="the local Prosody's client port when free, else a free one; 0: any (default 5222)",
    )
    up.add_argument(
        "--web-port",
        type=int,
        metavar="PORT",
        help="the first server's web port when the config has no [web]; the next servers take "
        "the next free ones; 0: any (default 8001)",
    )
    status = command(
        "status",
        "show each server and its peer links",
        "Ask each server of the config for its peer links: one line per server (down when it "
        "does not answer).",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    user = command(
        "user",
        "create users and issue their tokens",
        "Create a user or issue a new token, through any running server of the config.",
    )
    user_commands = user.add_subparsers(
        dest="user_command", metavar="ACTION", title="actions", required=True
    )
    user_add = user_commands.add_parser(
        "add",
        help="create a user and print their token",
        description="Create a user and print their token, once (only its hash is stored).",
    )
    user_add.add_argument("user", metavar="USER", help="the new user's id (letters, digits, .-_)")
    user_add.add_argument("--email", default=None, help="their email address, for notices")
    user_add.add_argument("--jid", default=None, help="their Jabber ID, for chat notices")
    user_token = user_commands.add_parser(
        "token",
        help="issue a new token (the old one stops)",
        description="Issue a new token for a user and print it, once; the old one stops working.",
    )
    user_token.add_argument("user", metavar="USER", help="the user's id")
    for each in (user_add, user_token):
        each.add_argument("--server", default=None, help="ask this server (default: any)")
    box = command(
        "outbox",
        "see and replay undelivered notifications",
        "Each server's pending and dead notifications, read from its database (whether it runs "
        "or not), and replaying dead letters.",
    )
    box.add_argument(
        "what",
        choices=("list", "dead", "retry"),
        help="list: pending; dead: given up; retry: queue dead letters again",
    )
    box.add_argument("keys", nargs="*", help="retry: these dead letters (default: all)")
    box.add_argument("--server", default=None, help="this server's outbox (default: all)")
    mail_command = command(
        "mail",
        "read the mails `herd up`'s mail sink kept",
        "Without ID: a list of the mails the local mail sink kept. With ID: that mail's "
        "headers and text, or its HTML part (--html) or calendar file (--ics).",
    )
    mail_command.add_argument("id", nargs="?", default=None, metavar="ID", help="show this one")
    parts = mail_command.add_mutually_exclusive_group()
    parts.add_argument(
        "--html",
        nargs="?",
        const="",
        default=None,
        metavar="FILE",
        help="write the HTML part to FILE (- for stdout); without FILE, to "
        "<data_dir>/mail/ID.html, opened in a browser if there is one",
    )
    parts.add_argument(
        "--ics",
        nargs="?",
        const="",
        default=None,
        metavar="FILE",
        help="write the calendar attachment to FILE (- for stdout); without FILE, to "
        "<data_dir>/mail/ID.ics",
    )
    talk_command = command(
        "talk",
        "type lines to a server (a line-protocol client)",
        "Connect to a server's client port. On a terminal: a prompt with history and line "
        "editing, every line the server sends shown as it arrives. From a pipe: sends stdin, "
        "half-closes at its end and copies every byte received to stdout until the server "
        "closes. With [tls] in the config, over TLS, trusting the herd's CA only.",
    )
    talk_command.add_argument(
        "server",
        nargs="?",
        default=None,
        metavar="SERVER",
        help="a server's name in the config (default: the first) or HOST:PORT",
    )
    demo = command(
        "demo",
        "play a narrated get-together on the running `herd up`",
        "Play a short get-together through the line protocol against the running `herd up` "
        "(positions, a plan, times and a place, votes, a decision), narrating each step and "
        "where its notices show. It gives alice, bob and carol new tokens: the ones `herd up` "
        "printed stop working; the new ones are printed at the end.",
    )
    demo.add_argument(
        "--pace", type=float, default=1.5, metavar="SECONDS", help="seconds between steps (1.5)"
    )
    chat_command = command(
        "chat",
        "chat with the Jabber bot as a demo user of the running `herd up`",
        "Log in to `herd up`'s Jabber server as USER@<the bot's domain> (password USER-demo) "
        "and chat with the bot: a prompt on a terminal; from a pipe, each line is sent in turn "
        "and the bot's replies printed. See docs/chat.md.",
    )
    chat_command.add_argument(
        "user", metavar="USER", help="the demo user (alice, bob, carol) or a bare JID"
    )
    chat_command.add_argument("--password", default=None, help="default: USER-demo")
    for each in (
        run,
        up,
        status,
        user_add,
        user_token,
        box,
        mail_command,
        talk_command,
        demo,
        chat_command,
    ):
        each.add_argument(
            "--config",
            type=Path,
            default=None,
            metavar="PATH",
            help="the herd's config file (TOML; default: config/herd.toml)",
        )
    return parser


def _load(path: Path | None) -> HerdConfig:
    return load_config(path if path is not None else default_config_path(), os.environ)


def main(argv: list[str]) -> int:
    parser = _parser()
    arguments = parser.parse_args(argv)
    if arguments.command is None:  # `herd` alone: what it can do
        parser.print_help()
        return 0
    try:
        config = _load(arguments.config)
        if arguments.command == "run":
            config.server(arguments.name)
            return run(config, arguments.name, arguments.quiet)
        if arguments.command == "up":
            from herd.up import up

            return up(
                config,
                arguments.verbose,
                arguments.smtp_port,
                arguments.xmpp_port,
                arguments.web_port,
            )
        if arguments.command == "outbox":
            return outbox(config, arguments)
        if arguments.command == "mail":
            return mail(config, arguments.id, arguments.html, arguments.ics)
        if arguments.command == "talk":
            from herd.clients.talk import talk

            return talk(config, arguments.server)
        if arguments.command == "user":
            return user(config, arguments)
        if arguments.command == "demo":
            from herd.clients.demo import play_demo

            return play_demo(arguments.config, arguments.pace)
        if arguments.command == "chat":
            from herd.clients.chat import chat  # slixmpp: imported only when chatting

            return chat(config, arguments.user, arguments.password)
        return status(config, as_json=arguments.json)
    except ConfigError as error:
        print(f"herd: bad config: {error}", file=sys.stderr)
        return 2


# --- herd run ------------------------------------------------------------------------------


def run(config: HerdConfig, name: str, quiet: bool = False) -> int:
    """One server until SIGTERM/SIGINT, or until it cannot go on (its store cannot write): then
    it says why on stderr and exits 1.  Its log goes to its file and, unless `quiet`, to stderr.
    However the stop goes, the process is gone within
    `HARD_STOP_SECONDS` of it starting.  The asyncio reactor is already installed."""
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    from herd.service import HerdService

    service = HerdService(config, name, reactor, None if quiet else sys.stderr.buffer)
    globalLogBeginner.beginLoggingTo([service.log.observer()], redirectStandardIO=False)
    outcome: dict[str, Any] = {"code": 0}

    def fail(message: str) -> None:
        outcome["code"] = 1
        _say(f"herd: {message}")
        if reactor.running:
            reactor.stop()

    def failed_to_start(failure: Any) -> None:
        fail(f"{name} could not start: {failure.getErrorMessage()}")

    def stop_within_bound() -> Deferred[None]:
        watchdog = threading.Timer(HARD_STOP_SECONDS, _hard_exit, (name, outcome))
        watchdog.daemon = True
        watchdog.start()
        return service.stopService()

    service.started.addErrback(failed_to_start)
    service.failed.addCallback(fail)
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", stop_within_bound)
    reactor.run()
    return int(outcome["code"])


def _hard_exit(name: str, outcome: dict[str, Any]) -> None:
    """The stop did not finish in time (a step or a worker thread is stuck): leave anyway."""
    _say(f"herd: {name} did not stop within {HARD_STOP_SECONDS:g} s: exiting")
    os._exit(int(outcome["code"]) or 1)


def _say(message: str) -> None:
    """A line on stderr, if stderr can take it (it may be on the disk that is full)."""
    with contextlib.suppress(OSError):
        print(message, file=sys.stderr, flush=True)


# --- herd status ---------------------------------------------------------------------------


def status(config: HerdConfig, as_json: bool) -> int:
    servers = list(config.servers.values())
    tls = client_context(config)
    with ThreadPoolExecutor(max_workers=len(servers)) as pool:
        answers = list(
            pool.map(
                lambda s: ask_status(dial_host(s.host), s.port, STATUS_TIMEOUT, tls),
                servers,
            )
        )
    report: dict[str, dict[str, Any]] = {}
    for server, peers in zip(servers, answers, strict=True):
        entry: dict[str, Any] = {"port": server.port, "up": peers is not None}
        if peers is not None:
            entry["peers"] = peers
        report[server.name] = entry
    if as_json:
        print(json.dumps({"servers": report}))
    else:
        for name, entry in report.items():
            state = "up" if entry["up"] else "down"
            links = ", ".join(f"{peer} {link}" for peer, link in entry.get("peers", {}).items())
            print(f"{name:10} {entry['port']:>5}  {state:4}  {links}")
    return 0


# --- herd user -----------------------------------------------------------------------------


def user(config: HerdConfig, arguments: argparse.Namespace) -> int:
    """Create a user or issue a new token, through any running server; prints the token once
    (only its hash is sent and stored).  Every field is checked before anything is sent, and
    the secret is the configured one or the one the servers generated under data_dir."""
    from herd.operator import OperatorError, operator_command
    from herd.secretfile import SecretFileError, choose_secret, read_secret
    from herd.tokens import hash_token, new_token
    from herd.wire.operator import OperatorCommand, OperatorLineError, UserAdd, UserToken

    token = new_token(secrets.token_bytes(32))
    digest = hash_token(token, os.urandom(16))
    command: OperatorCommand
    if arguments.user_command == "add":
        command = UserAdd(arguments.user, digest, arguments.email, arguments.jid)
    else:
        command = UserToken(arguments.user, digest)
    try:
        command.check()
    except OperatorLineError as error:
        print(f"herd: {error.code}: {error.message} (nothing was sent)", file=sys.stderr)
        return 2
    names = [arguments.server] if arguments.server else list(config.servers)
    try:
        reply = operator_command(choose_secret(config, read_secret), names, command)
    except (OperatorError, SecretFileError) as error:
        print(f"herd: {error}", file=sys.stderr)
        return 1
    if not reply.startswith("OK "):
        print(f"herd: {reply}", file=sys.stderr)
        return 1
    print(f"user {arguments.user}: token {token}")
    print("(shown once: give it to the user; they send `AUTH <user> <token>` on the line port)")
    return 0


# --- herd outbox / herd mail ---------------------------------------------------------------


def outbox(config: HerdConfig, arguments: argparse.Namespace) -> int:
    """Pending and dead notifications of each server (read from its database file; works
    whether the server runs or not), and replaying dead letters."""
    from notifier.outbox_admin import format_entries, list_dead, list_pending, retry_dead

    names = [arguments.server] if arguments.server else list(config.servers)
    for name in names:
        config.server(name)
        path = config.data_dir / f"{name}.sqlite"
        if not path.exists():
            continue
        if arguments.what == "retry":
            replayed = retry_dead(path, arguments.keys or None, time.time())
            print(f"{name}: {len(replayed)} dead letters queued again")
            continue
        entries = list_pending(path) if arguments.what == "list" else list_dead(path)
        print(f"{name}: {len(entries)} {'pending' if arguments.what == 'list' else 'dead'}")
        for line in format_entries(entries):
            print(f"  {line}")
    return 0


def mail(
    config: HerdConfig, mail_id: str | None, html: str | None = None, ics: str | None = None
) -> int:
    """The kept mails, one of them, or one's HTML part or calendar file (`html`, `ics`: None
    for no, "" for the default file beside the mail, "-" for stdout, else a file)."""
    from notifier.mailsink import calendar_part, format_mail_list, html_part, list_mail, show_mail

    if mail_id is None:
        if html is not None or ics is not None:
            print("herd: --html and --ics need a mail ID (`herd mail` lists them)", file=sys.stderr)
            return 2
        for line in format_mail_list(list_mail(config.data_dir)):
            print(line)
        return 0
    try:
        if html is not None:
            return _write_part(config, mail_id, "html", html_part(config.data_dir, mail_id), html)
        if ics is not None:
            data = calendar_part(config.data_dir, mail_id)
            return _write_part(config, mail_id, "ics", data, ics)
        print(show_mail(config.data_dir, mail_id))
    except KeyError:
        print(f"herd: no mail {mail_id!r}", file=sys.stderr)
        return 1
    return 0


_PART_NAMES = {"html": "HTML part", "ics": "calendar attachment (.ics)"}


def _write_part(
    config: HerdConfig, mail_id: str, kind: str, data: bytes | None, target: str
) -> int:
    """Write a mail's part to stdout ("-"), to a file, or ("") to `<data_dir>/mail/<ID>.<kind>`
    (printing its path, and opening an HTML file there in a browser, when there is one)."""
    if data is None:
        print(f"herd: mail {mail_id} has no {_PART_NAMES[kind]}", file=sys.stderr)
        return 1
    if target == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return 0
    path = Path(target) if target else config.data_dir / "mail" / f"{mail_id}.{kind}"
    try:
        path.write_bytes(data)
    except OSError as error:
        print(f"herd: cannot write {path}: {error.strerror or error}", file=sys.stderr)
        return 1
    print(path, flush=True)
    if kind == "html" and not target:
        _open_in_browser(path)
    return 0


def _open_in_browser(path: Path) -> None:
    import webbrowser

    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        print("herd: no browser here: open that file in one", file=sys.stderr)
        return
    if not browser.open(path.resolve().as_uri()):
        print("herd: the browser did not start: open that file in one", file=sys.stderr)
