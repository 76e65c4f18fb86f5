"""The `herd` command: `run`, `up`, `status` (wiring; blocking code lives only in `up`/`status`,
which run no reactor)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from herd.config import ConfigError, HerdConfig, default_config_path, load_config
from herd.processes import die_with_parent

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

STATUS_TIMEOUT = 1.0
STOP_GRACE_SECONDS = 10.0
HARD_STOP_SECONDS = 8.0  # below `herd up`'s grace, above the outbox's 5 s for deliveries


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="herd", description="Renga herd servers")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one server in the foreground")
    run.add_argument("name")
    up = commands.add_parser("up", help="run the whole herd of a config")
    status = commands.add_parser("status", help="show each server and its peer links")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    user = commands.add_parser("user", help="create users and issue their tokens")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    user_add = user_commands.add_parser("add", help="create a user and print their token")
    user_add.add_argument("user")
    user_add.add_argument("--email", default=None)
    user_add.add_argument("--jid", default=None)
    user_token = user_commands.add_parser("token", help="issue a new token (the old one stops)")
    user_token.add_argument("user")
    for command in (user_add, user_token):
        command.add_argument("--server", default=None, help="ask this server (default: any)")
    box = commands.add_parser("outbox", help="see and replay undelivered notifications")
    box.add_argument("what", choices=("list", "dead", "retry"))
    box.add_argument("keys", nargs="*", help="retry: these dead letters (default: all)")
    box.add_argument("--server", default=None, help="this server's outbox (default: all)")
    mail_command = commands.add_parser("mail", help="the mails `herd up`'s mail sink kept")
    mail_command.add_argument("id", nargs="?", default=None, help="show this one")
    chat_command = commands.add_parser(
        "chat",
        help="chat with the Jabber bot as a demo user of the running `herd up`",
        description="Log in to `herd up`'s Jabber server as USER@<the bot's domain> (password "
        "USER-demo) and chat with the bot: a prompt on a terminal; from a pipe, each line is "
        "sent in turn and the bot's replies printed. See docs/chat.md.",
    )
    chat_command.add_argument("user", help="the demo user (alice, bob, carol) or a bare JID")
    chat_command.add_argument("--password", default=None, help="default: USER-demo")
    for command in (run, up, status, user_add, user_token, box, mail_command, chat_command):
        command.add_argument("--config", type=Path, default=None, help="config file (TOML)")
    return parser


def _load(path: Path | None) -> HerdConfig:
    return load_config(path if path is not None else default_config_path(), os.environ)


def main(argv: list[str]) -> int:
    arguments = _parser().parse_args(argv)
    try:
        config = _load(arguments.config)
        if arguments.command == "run":
            config.server(arguments.name)
            return run(config, arguments.name)
        if arguments.command == "up":
            return up(config)
        if arguments.command == "outbox":
            return outbox(config, arguments)
        if arguments.command == "mail":
            return mail(config, arguments.id)
        if arguments.command == "user":
            return user(config, arguments)
        if arguments.command == "chat":
            from herd.clients.chat import chat  # slixmpp: imported only when chatting

            return chat(config, arguments.user, arguments.password)
        return status(config, as_json=arguments.json)
    except ConfigError as error:
        print(f"herd: bad config: {error}", file=sys.stderr)
        return 2


# --- herd run ------------------------------------------------------------------------------


def run(config: HerdConfig, name: str) -> int:
    """One server until SIGTERM/SIGINT, or until it cannot go on (its store cannot write): then
    it says why on stderr and exits 1.  However the stop goes, the process is gone within
    `HARD_STOP_SECONDS` of it starting.  The asyncio reactor is already installed."""
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    from herd.service import HerdService

    service = HerdService(config, name, reactor, sys.stderr.buffer)
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


# --- herd up -------------------------------------------------------------------------------


def up(config: HerdConfig) -> int:
    """Every server of the config as its own process, plus the local services it lacks (a mail
    sink, a Prosody with demo users); all stopped on Ctrl-C or SIGTERM."""
    from herd.localdev import create_demo_users, start_local_services

    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    _prepare_places(config)
    services = start_local_services(config)
    try:
        for name in config.servers:
            children[name] = subprocess.Popen(
                [sys.executable, "-m", "herd", "run", name, "--config", str(services.config_path)],
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        notes = services.notes
        if services.prosody is not None and _wait_answering(config, lambda: stopping):
            notes = [*notes, *create_demo_users(config)]
        print(_up_banner(config, notes), file=sys.stderr, flush=True)
        code = 0
        while not stopping:
            for name, child in list(children.items()):
                if child.poll() is not None:
                    print(f"herd: {name} exited with {child.returncode}", file=sys.stderr)
                    del children[name]
                    code = 1
            if not children:
                break
            time.sleep(0.2)
        return code
    finally:
        _stop_all(children)
        services.stop()


def _wait_answering(config: HerdConfig, stopping: Callable[[], bool]) -> bool:
    """Wait until some server answers (they start in well under a second)."""
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and not stopping():
        if any(ask_status(_dial_host(s.host), s.port, 0.2) for s in config.servers.values()):
            return True
        time.sleep(0.1)
    return False


def _dial_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _prepare_places(config: HerdConfig) -> None:
    """Build the shared offline places index once, before the servers start, so that none of
    them waits for it on its first WHATSAT."""
    if config.places.provider != "offline":
        return
    from herd.places.index import DEFAULT_MIN_POPULATION, open_index

    print("herd: preparing the offline places index...", file=sys.stderr, flush=True)
    open_index(config.data_dir, config.places.files, DEFAULT_MIN_POPULATION).close()


def _up_banner(config: HerdConfig, notes: list[str]) -> str:
    lines = [f"herd: {len(config.servers)} servers from {config.path}:"]
    for server in config.servers.values():
        lines.append(
            f"  {server.name:10} {server.host}:{server.port}  peers {', '.join(server.peers)}"
        )
    lines.append(f"  data and logs in {config.data_dir}; Ctrl-C stops them all")
    lines.extend(notes)
    return "\n".join(lines)


def _stop_all(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for name, child in children.items():
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"herd: {name} did not stop in time: killed", file=sys.stderr)
            child.kill()
            child.wait()


# --- herd status ---------------------------------------------------------------------------


def ask_status(host: str, port: int, timeout: float = STATUS_TIMEOUT) -> dict[str, str] | None:
    """A server's peer links by its STATUS command, or None if it does not answer."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            connection.sendall(b"STATUS\n")
            connection.shutdown(socket.SHUT_WR)
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = connection.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return None
    if not reply.startswith(b"STATUS "):
        return None
    try:
        peers = json.loads(reply[len(b"STATUS ") :])["peers"]
    except (ValueError, KeyError, TypeError):
        return None
    return {str(peer): str(state) for peer, state in peers.items()}


def status(config: HerdConfig, as_json: bool) -> int:
    servers = list(config.servers.values())
    with ThreadPoolExecutor(max_workers=len(servers)) as pool:
        answers = list(
            pool.map(
                lambda s: ask_status(_dial_host(s.host), s.port),
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


def mail(config: HerdConfig, mail_id: str | None) -> int:
    from notifier.mailsink import format_mail_list, list_mail, show_mail

    if mail_id is None:
        for line in format_mail_list(list_mail(config.data_dir)):
            print(line)
        return 0
    try:
        print(show_mail(config.data_dir, mail_id))
    except KeyError:
        print(f"herd: no mail {mail_id!r}", file=sys.stderr)
        return 1
    return 0
