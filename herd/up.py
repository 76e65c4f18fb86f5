"""`herd up`: every server of a config as its own `herd run --quiet` process, plus the local
services it lacks (`herd.localdev`), supervised until Ctrl-C or SIGTERM (wiring, blocking code:
it runs no reactor).

The servers log to `<data_dir>/<NAME>.log` only; what else they write (a traceback, `herd: …
cannot write …`) goes to `<data_dir>/<NAME>.stderr`, whose last lines are shown when the server
exits. On the terminal: the banner (`herd.upview`), then one status line per server, polled by
STATUS every `POLL_SECONDS` and redrawn in place; problems get lines of their own. When stdout
is not a terminal, a status line is printed only when it changes. `--verbose` follows the logs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import TextIO

from herd.config import HerdConfig, dial_host
from herd.localdev import (
    BOT_USER,
    SMTP_PORT,
    WEB_PORT,
    XMPP_PORT,
    LocalServices,
    create_demo_users,
    demo_accounts,
    start_local_services,
)
from herd.probe import ask_status
from herd.processes import die_with_parent
from herd.reach import client_context
from herd.upview import (
    Banner,
    Board,
    ServerInfo,
    banner_lines,
    printable,
    redraw,
    stop_lines,
)

STOP_GRACE_SECONDS = 10.0
POLL_SECONDS = 2.0
TICK_SECONDS = 0.2
ANSWER_SECONDS = 10.0  # how long the demo users wait for a first server to answer
POLL_TIMEOUT = 1.0
TAIL_BYTES = 16384


def up(
    config: HerdConfig,
    verbose: bool = False,
    smtp_port: int | None = None,
    xmpp_port: int | None = None,
    web_port: int | None = None,
) -> int:
    """Run the herd until Ctrl-C, SIGTERM or SIGHUP (exit 0), or until every server has exited; exit
    1 if any server exited on its own.  However it ends, everything it started is stopped.  The
    local mail sink and Prosody take the given ports (default 2525 and 5222) when they are free;
    without a `[web]` in the config, the servers' sites take the free ports from `web_port`
    (default 8001) up."""
    out = sys.stdout
    stopping: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal closed
        signal.signal(signum, stop)
    _prepare_places(config, out)
    if stopping:
        _print(out, ["herd up: stopped before anything started"])
        return 0
    try:
        services = start_local_services(
            config,
            SMTP_PORT if smtp_port is None else smtp_port,
            XMPP_PORT if xmpp_port is None else xmpp_port,
            WEB_PORT if web_port is None else web_port,
        )
    except (OSError, RuntimeError) as error:
        print(f"herd: the local services could not start: {error}", file=sys.stderr)
        return 1
    children: dict[str, subprocess.Popen[bytes]] = {}
    exited: set[str] = set()
    code = 0
    screen = Screen(out, out.isatty())
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        followers = _followers(config) if verbose else []  # from before the servers start
        for name in config.servers:
            children[name] = _start_server(config, services.config_path, name)
        tokens: list[tuple[str, str]] = []
        note: str | None = None
        if services.prosody is not None:
            if _wait_answering(config, lambda: bool(stopping)):
                tokens, note = create_demo_users(config)
            else:
                note = "not created (no server answered)"
        if not stopping:
            _print(out, banner_lines(_banner(config, services, tokens, note, verbose)))
            code = _supervise(
                config, children, exited, services, screen, followers, lambda: bool(stopping)
            )
    finally:
        screen.close()
        if stopping or code == 0:
            _print(out, ["herd up: stopping..."])
        stopped, killed = _stop_all({n: c for n, c in children.items() if n not in exited})
        others = services.stop(shown)
        if exited:
            others.insert(0, f"(exited before: {', '.join(sorted(exited))})")
        _print(out, stop_lines(stopped, killed, others))
    return code


def _supervise(
    config: HerdConfig,
    children: dict[str, subprocess.Popen[bytes]],
    exited: set[str],
    services: LocalServices,
    screen: Screen,
    followers: list[Follower],
    stopping: Callable[[], bool],
) -> int:
    """Watch the servers until a stop is asked for or none is left; 1 if any exited."""
    servers = [
        ServerInfo(s.name, dial_host(s.host), s.port, s.peers) for s in config.servers.values()
    ]
    board = Board(servers, time.monotonic())
    tls = client_context(config)
    code = 0
    next_poll = 0.0
    with ThreadPoolExecutor(max_workers=len(servers)) as pool:
        while not stopping():
            above: list[str] = []
            for name, child in children.items():
                if name not in exited and child.poll() is not None:
                    exited.add(name)
                    code = 1
                    tail = _tail(config.data_dir / f"{name}.stderr")
                    above += board.exited(name, child.returncode, tail)
            above += [f"herd: {what}" for what in services.exited()]
            for follower in followers:
                above += follower.lines()
            now = time.monotonic()
            if now >= next_poll:
                alive = [s for s in servers if s.name not in exited]
                answers = list(
                    pool.map(lambda s: ask_status(s.host, s.port, POLL_TIMEOUT, tls), alive)
                )
                now = time.monotonic()
                for server, peers in zip(alive, answers, strict=True):
                    above += board.answered(server.name, peers, now)
                next_poll = now + POLL_SECONDS
            if len(exited) == len(children):
                above.append("herd: every server has exited")
                screen.show(above, [], board.changes(now))
                break
            screen.show(above, board.lines(now), board.changes(now))
            time.sleep(TICK_SECONDS)
    return code


def _followers(config: HerdConfig) -> list[Follower]:
    """For --verbose: each server's log (its lines name it) and its stderr."""
    followers = []
    for name in config.servers:
        followers.append(Follower(config.data_dir / f"{name}.log", ""))
        followers.append(Follower(config.data_dir / f"{name}.stderr", f"{name} stderr: "))
    return followers


def _banner(
    config: HerdConfig,
    services: LocalServices,
    tokens: list[tuple[str, str]],
    note: str | None,
    verbose: bool,
) -> Banner:
    prosody = services.prosody
    bot = config.xmpp.jid if config.xmpp is not None else f"{BOT_USER}@localhost"
    return Banner(
        config=shown(config.path),
        data_dir=shown(config.data_dir),
        servers=tuple(
            ServerInfo(s.name, s.host, s.port, s.peers, services.web.get(s.name))
            for s in config.servers.values()
        ),
        mail=f"127.0.0.1:{services.sink_port}" if services.sink is not None else None,
        mail_dir=shown(config.data_dir / "mail"),
        jabber=f"{prosody.host}:{prosody.port}" if prosody is not None else None,
        bot=bot,
        demo_accounts=tuple(demo_accounts()) if prosody is not None else (),
        tokens=tuple(tokens),
        demo_note=note,
        verbose=verbose,
    )


def shown(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _start_server(config: HerdConfig, config_path: Path, name: str) -> subprocess.Popen[bytes]:
    with (config.data_dir / f"{name}.stderr").open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "herd", "run", name, "--config", str(config_path), "--quiet"],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            start_new_session=True,  # a Ctrl-C is for `herd up`, which stops them in order
            preexec_fn=die_with_parent,
        )


def _wait_answering(config: HerdConfig, stopping: Callable[[], bool]) -> bool:
    """Wait until some server answers (they start in well under a second)."""
    deadline = time.monotonic() + ANSWER_SECONDS
    tls = client_context(config)
    while time.monotonic() < deadline and not stopping():
        if any(ask_status(dial_host(s.host), s.port, 0.2, tls) for s in config.servers.values()):
            return True
        time.sleep(0.1)
    return False


def _prepare_places(config: HerdConfig, out: TextIO) -> None:
    """Build the shared offline places index once, before the servers start, so that none of
    them waits for it on its first WHATSAT."""
    if config.places.provider != "offline":
        return
    from herd.places.index import DEFAULT_MIN_POPULATION, open_index

    _print(out, ["herd up: preparing the offline places index..."])
    open_index(config.data_dir, config.places.files, DEFAULT_MIN_POPULATION).close()


def _stop_all(children: dict[str, subprocess.Popen[bytes]]) -> tuple[list[str], list[str]]:
    """SIGTERM to each server, SIGKILL to those still there after the grace: (stopped, killed)."""
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    stopped: list[str] = []
    killed: list[str] = []
    for name, child in children.items():
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
            stopped.append(name)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            killed.append(name)
    return stopped, killed


def _tail(path: Path) -> list[str]:
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - TAIL_BYTES))
            data = file.read()
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()


def _print(out: TextIO, lines: list[str]) -> None:
    """Best-effort: a closed terminal or pipe must not keep `herd up` from stopping its herd."""
    with contextlib.suppress(OSError, ValueError):
        out.write("".join(f"{line}\n" for line in lines))
        out.flush()


def _write(out: TextIO, text: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        out.write(text)
        out.flush()


class Follower:
    """New lines of a file that another process appends to (a server's log, which rotates)."""

    def __init__(self, path: Path, prefix: str) -> None:
        self.path = path
        self.prefix = prefix
        self._inode: int | None = None
        self._position = 0
        self._partial = b""
        try:
            status = os.stat(path)
        except OSError:
            return
        self._inode, self._position = status.st_ino, status.st_size

    def lines(self) -> list[str]:
        try:
            status = os.stat(self.path)
            if status.st_ino != self._inode or status.st_size < self._position:
                self._inode, self._position, self._partial = status.st_ino, 0, b""
            if status.st_size == self._position:
                return []
            with self.path.open("rb") as file:
                file.seek(self._position)
                data = file.read(status.st_size - self._position)
        except OSError:
            return []
        self._position += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        return [self.prefix + printable(line.decode("utf-8", "replace")) for line in complete]


class Screen:
    """Where `herd up` writes: on a terminal, the status block redrawn in place below what
    scrolled; elsewhere, plain lines."""

    def __init__(self, out: TextIO, terminal: bool) -> None:
        self.out = out
        self.terminal = terminal
        self._height = 0
        self._drawn: list[str] = []

    def show(self, above: list[str], block: list[str], changed: list[str]) -> None:
        """`above`: lines that stay; `block`: the status (a terminal); `changed`: the status
        lines that changed (not a terminal)."""
        if not self.terminal:
            if above or changed:
                _print(self.out, above + changed)
            return
        if not above and block == self._drawn:
            return
        width = shutil.get_terminal_size((100, 24)).columns
        _write(self.out, redraw(self._height, above, block, width))
        self._height, self._drawn = len(block), block

    def close(self) -> None:
        """Erase the status block (the stop summary follows)."""
        if self.terminal and self._height:
            _write(self.out, redraw(self._height, [], [], 80))
        self._height, self._drawn = 0, []
