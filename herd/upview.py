"""What `herd up` shows (pure: no I/O, the time is passed in): the banner, the live status of
each server and its peer links, the problems worth a line of their own, the stop summary, and
the ANSI text that redraws the status block in place on a terminal.

`herd.up` polls the servers and feeds what it learns to a `Board`; the board says what to print.
"""

from __future__ import annotations

import signal
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

LINK_DOWN_SECONDS = 10.0  # a link down longer than this is a problem worth a line
SILENT_SECONDS = 5.0  # a server that answered and then did not for this long "does not answer"
START_SECONDS = 30.0  # a server that never answered after this long "does not answer"
INDENT = " " * 12
STDERR_TAIL = 10  # lines of a server's stderr shown when it exits


@dataclass(frozen=True)
class ServerInfo:
    name: str
    host: str
    port: int
    peers: tuple[str, ...]
    web: str | None = None  # the server's web site, when it has one


@dataclass(frozen=True)
class Banner:
    """Everything the banner says (paths already in the form to show)."""

    config: str
    data_dir: str
    servers: tuple[ServerInfo, ...]
    mail: str | None  # "127.0.0.1:2525" for the local sink; None: the config's own [smtp]
    mail_dir: str
    jabber: str | None  # "127.0.0.1:5222" for the local Prosody; None: the config's own [xmpp]
    bot: str
    demo_accounts: tuple[tuple[str, str], ...]  # (jid, password)
    tokens: tuple[tuple[str, str], ...]  # (user, token) for the line protocol
    demo_note: str | None  # why there are no tokens, if there are none
    verbose: bool


def printable(text: str) -> str:
    """No control characters: a logged line or a stderr line must not drive the terminal."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def banner_lines(banner: Banner) -> list[str]:
    first = banner.servers[0].name if banner.servers else "NAME"
    lines = [f"herd up: {len(banner.servers)} servers from {banner.config}"]
    width = max((len(s.name) for s in banner.servers), default=4)
    for server in banner.servers:
        peers = ", ".join(server.peers) if server.peers else "none"
        site = f"  web {server.web:<22}" if server.web else ""
        lines.append(
            f"  {server.name:{width}}  {server.host}:{server.port:<5}{site}  peers {peers}"
        )
    if banner.mail is not None:
        lines.append(f"mail sink   {banner.mail}  keeps every mail in {banner.mail_dir}")
        lines.append("            read them with: herd mail (the list), herd mail ID (one mail)")
    else:
        lines.append("mail        the config's [smtp] server")
    if banner.jabber is not None:
        lines.append(f"jabber      {banner.jabber}  Prosody, plain connection (no TLS)")
        if banner.demo_accounts:
            lines.append(f"            the bot: {banner.bot}; demo accounts (JID / password):")
            accounts = ", ".join(f"{jid} / {password}" for jid, password in banner.demo_accounts)
            indent = " " * 12
            lines.extend(
                textwrap.wrap(accounts, 80, initial_indent=indent, subsequent_indent=indent)
            )
        else:
            lines.append(f"            the bot: {banner.bot}")
    else:
        lines.append(f"jabber      the config's [xmpp] server; the bot is {banner.bot}")
    if banner.tokens:
        lines.append("demo users on the line protocol (new tokens each run):")
        lines.extend(f"  AUTH {user} {token}" for user, token in banner.tokens)
    elif banner.demo_note:
        lines.append(f"demo users: {banner.demo_note}")
    lines.append("try:")
    tries = [
        (
            f"herd talk {first}",
            f"the line protocol on {first}"
            + (" (send one of the AUTH lines)" if banner.tokens else ""),
        ),
        ("herd chat alice", "chat with the bot as alice"),
        ("herd demo", "three friends plan a get-together"),
        ("herd mail", "the mails the herd sent"),
    ]
    if banner.jabber is None:
        tries = [entry for entry in tries if not entry[0].startswith("herd chat")]
    lines.extend(f"  {command:18} {what}" for command, what in tries)
    follow = "followed below" if banner.verbose else "herd up --verbose follows them"
    lines.append(f"logs: {banner.data_dir}/NAME.log ({follow}). Ctrl-C stops everything.")
    return lines


def exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class _Server:
    info: ServerInfo
    state: str = "starting"  # starting | up | silent | exited
    code: int | None = None
    last_answer: float | None = None
    links: dict[str, str] = field(default_factory=dict)
    down_since: dict[str, float] = field(default_factory=dict)
    ever_up: set[str] = field(default_factory=set)
    printed: tuple[object, ...] | None = None


class Board:
    """The servers as `herd up` last saw them; each method returns the problem lines to print."""

    def __init__(self, servers: Iterable[ServerInfo], now: float) -> None:
        self.started = now
        self.servers = {info.name: _Server(info) for info in servers}
        self._links_reported: set[tuple[str, str]] = set()

    def answered(self, name: str, peers: dict[str, str] | None, now: float) -> list[str]:
        """The result of one STATUS poll of `name` (None: no answer)."""
        server = self.servers[name]
        if server.state == "exited":
            return []
        events: list[str] = []
        if peers is None:
            last = server.last_answer
            silent = (last is not None and now - last >= SILENT_SECONDS) or (
                last is None and now - self.started >= START_SECONDS
            )
            if silent and server.state != "silent":
                server.state = "silent"
                waited = now - (last if last is not None else self.started)
                events.append(f"herd: {name} does not answer (for {waited:.0f} s)")
            return events
        if server.state == "silent" and server.last_answer is not None:
            events.append(f"herd: {name} answers again")
        server.state = "up"
        server.last_answer = now
        for peer, link in peers.items():
            server.links[peer] = link
            if link == "up":
                server.down_since.pop(peer, None)
                server.ever_up.add(peer)
            else:
                server.down_since.setdefault(peer, now)
        return events + self._link_events(now)

    def exited(self, name: str, code: int, stderr_tail: Sequence[str]) -> list[str]:
        server = self.servers[name]
        server.state = "exited"
        server.code = code
        events = [f"herd: {name} exited ({exit_text(code)}); the last lines of its stderr:"]
        tail = [printable(line) for line in stderr_tail[-STDERR_TAIL:]]
        events.extend(f"  | {line}" for line in tail)
        if not tail:
            events.append("  | (nothing)")
        return events

    def _link_down_for(self, a: str, b: str, now: float) -> float | None:
        """How long the link a-b has been down by either end (None: it is not down, or an end
        is not up, which is a problem of its own)."""
        first, second = self.servers[a], self.servers[b]
        if first.state != "up" or second.state != "up":
            return None
        since = [
            end.down_since[peer]
            for end, peer in ((first, b), (second, a))
            if peer in end.down_since
        ]
        return now - min(since) if since else None

    def _link_events(self, now: float) -> list[str]:
        events = []
        for name, server in self.servers.items():
            for peer in server.info.peers:
                if peer not in self.servers or name > peer:
                    continue
                pair = (name, peer)
                down = self._link_down_for(name, peer, now)
                if down is not None and down >= LINK_DOWN_SECONDS:
                    if pair not in self._links_reported:
                        self._links_reported.add(pair)
                        events.append(f"herd: the link {name}-{peer} is down (for {down:.0f} s)")
                elif down is None and pair in self._links_reported:
                    both_up = all(self.servers[end].state == "up" for end in pair)
                    if both_up:
                        self._links_reported.discard(pair)
                        events.append(f"herd: the link {name}-{peer} is up again")
        return events

    def _down_for(self, server: _Server, peer: str, now: float) -> float:
        """How long `server` has seen its link to `peer` down, or its peer has (the longer)."""
        since = [server.down_since.get(peer, now)]
        other = self.servers.get(peer)
        if other is not None and other.state == "up" and server.info.name in other.down_since:
            since.append(other.down_since[server.info.name])
        return now - min(since)

    def _peer_text(self, server: _Server, peer: str, now: float) -> str:
        link = server.links.get(peer)
        other = self.servers.get(peer)
        if link != "up" and other is not None and other.state == "exited":
            return f"{peer} exited"
        if link is None:
            return f"{peer} ?"
        if link == "up":
            return f"{peer} up"
        down = self._down_for(server, peer, now)
        if down >= LINK_DOWN_SECONDS:
            return f"{peer} DOWN {down:.0f}s"
        return f"{peer} {'down' if peer in server.ever_up else 'connecting'}"

    def line(self, name: str, now: float) -> str:
        server = self.servers[name]
        width = max(len(n) for n in self.servers)
        head = f"  {name:{width}}  {server.info.port:>5}  "
        if server.state == "exited":
            assert server.code is not None
            return head + f"EXITED ({exit_text(server.code)})"
        if server.state == "starting":
            return head + "starting"
        if server.state == "silent":
            return head + "NOT ANSWERING"
        peers = ", ".join(self._peer_text(server, peer, now) for peer in server.info.peers)
        return head + f"up    peers: {peers or 'none'}"

    def lines(self, now: float) -> list[str]:
        """The status block, one line per server (a terminal redraws it in place)."""
        return [self.line(name, now) for name in self.servers]

    def _settled(self, server: _Server, now: float) -> tuple[object, ...]:
        peers = []
        for peer in server.info.peers:
            link = server.links.get(peer)
            other = self.servers.get(peer)
            if link != "up" and other is not None and other.state == "exited":
                peers.append((peer, "exited"))
            elif link == "up":
                peers.append((peer, "up"))
            elif self._down_for(server, peer, now) >= LINK_DOWN_SECONDS:
                peers.append((peer, "down"))
            elif peer in server.ever_up:
                peers.append((peer, "up"))  # a short drop: not worth a line
            else:
                peers.append((peer, "pending"))
        return (server.state, server.code, tuple(peers))

    def changes(self, now: float) -> list[str]:
        """The status lines that changed since they were last returned (for output that is not a
        terminal); a server still starting, or linking up for the first time, waits."""
        changed = []
        for name, server in self.servers.items():
            key = self._settled(server, now)
            peers = key[2]
            assert isinstance(peers, tuple)
            waiting = server.state == "starting" or (
                server.state == "up" and any(state == "pending" for _, state in peers)
            )
            if key != server.printed and not waiting:
                server.printed = key
                changed.append(self.line(name, now))
        return changed


def stop_lines(stopped: Sequence[str], killed: Sequence[str], others: Sequence[str]) -> list[str]:
    """The summary after Ctrl-C or SIGTERM."""
    lines = ["herd up: stopped"]
    if stopped:
        lines.append(f"  servers: {', '.join(stopped)}")
    lines.extend(f"  {name}: did not stop in time, killed" for name in killed)
    lines.extend(f"  {what}" for what in others)
    return lines


# --- a terminal ------------------------------------------------------------------------------


def fit(line: str, width: int) -> str:
    """One screen line: cut to the terminal's width, so the block's height stays known."""
    return line if len(line) < width else line[: max(1, width - 2)] + "…"


def redraw(previous_height: int, above: Sequence[str], block: Sequence[str], width: int) -> str:
    """ANSI text that erases the status block drawn before (`previous_height` lines, the cursor
    below it), prints `above` (lines that stay, scrolling up as any output does), then draws
    `block` again, each line cut to `width`."""
    text = f"\x1b[{previous_height}F\x1b[J" if previous_height else ""
    text += "".join(f"{line}\n" for line in above)
    text += "".join(f"{fit(line, width)}\n" for line in block)
    return text
