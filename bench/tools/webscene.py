"""What the web benchmarks share: a herd whose config turns the web on (`[web]`, one web port
per server), the event of the page benchmark (50 invitees, 20 options, everyone placed, most
of them voting on everything, 20 comments) built either through the planning core in this
process (ops applied to a `PlanningState`) or through a real server's line protocol, and
personal links turned into session cookies the way a browser gets them.

The scene is the same in both ways, from one seeded random generator, so the in-process figure
and the end-to-end one render the same page.
"""

from __future__ import annotations

import asyncio
import http.client
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import BenchError, Herd
from bench.tools.lines import LineClient, Operator, authed, closed_loop, reply_json, user_token
from herd.config import load_config
from herd.tokens import link_token
from tests.support.herd import config_text
from tests.support.ports import HOST, free_ports
from web.rules import SESSION_COOKIE

SEED = 12
PARIS = (48.8566, 2.3522)
CHOICES = ("YES", "YES", "MAYBE", "NO")
COMMENT = "I can bring the wine and two chairs, but I will be a little late if it is on a weekday. "


@dataclass(frozen=True)
class PageScene:
    """The event of the page benchmark: who, which options, who votes what, who is where."""

    organiser: str
    invitees: tuple[str, ...]
    times: tuple[int, ...]  # POSIX seconds
    places: tuple[tuple[str, float, float], ...]  # name, lat, lon
    votes: tuple[tuple[str, int, str], ...]  # user, option index (times then places), choice
    comments: tuple[tuple[str, str], ...]  # user, text
    positions: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def people(self) -> tuple[str, ...]:
        return (self.organiser, *self.invitees)


def page_scene(invitees: int = 50, options: int = 20, silent: int = 5) -> PageScene:
    """`invitees` invitees and `options` options (half times, half places); all but `silent`
    invitees (and the organiser) answer every option; 20 comments; everyone within ~40 km of
    Paris."""
    rng = random.Random(SEED)
    users = tuple(f"u{n:03d}" for n in range(1, invitees + 1))
    start = (int(time.time()) // 3600 + 24 * 30) * 3600
    n_times = options // 2
    times = tuple(start + n * 86400 + 19 * 3600 for n in range(n_times))
    places = tuple(
        (
            f"Place {n} rue de la Paix",
            round(PARIS[0] + rng.uniform(-0.2, 0.2), 4),
            round(PARIS[1] + rng.uniform(-0.3, 0.3), 4),
        )
        for n in range(options - n_times)
    )
    voters = ("org", *users[: invitees - silent])
    votes = tuple((user, index, rng.choice(CHOICES)) for user in voters for index in range(options))
    comments = tuple(
        (rng.choice(voters), f"{COMMENT[: rng.randint(40, len(COMMENT))]}#{n}") for n in range(20)
    )
    positions = {
        user: (
            round(PARIS[0] + rng.uniform(-0.35, 0.35), 4),
            round(PARIS[1] + rng.uniform(-0.5, 0.5), 4),
        )
        for user in ("org", *users)
    }
    return PageScene("org", users, times, places, votes, comments, positions)


def position_text(position: tuple[float, float]) -> str:
    return f"{position[0]:+.4f}{position[1]:+.4f}"


def iso(posix: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(posix))


# --- a herd with [web] -----------------------------------------------------------------------


class WebHerd(Herd):
    """The benchmarks' herd with the web on: each server's `web_port` (free ports, chosen at
    construction) and a `[web]` table with `web_settings` (key = TOML value) in it."""

    def __init__(self, *args: Any, web_settings: dict[str, str] | None = None, **kw: Any) -> None:
        self.web_settings = web_settings or {}
        self.web_ports: dict[str, int] = {}
        super().__init__(*args, **kw)

    def write_config(self, path: Path, links: Iterable[tuple[str, str]]) -> Path:
        if not self.web_ports:
            self.web_ports = dict(zip(self.ports, free_ports(len(self.ports)), strict=True))
        text = config_text(self.ports, links, secret=self.secret, max_line=self.max_line)
        for name, port in self.ports.items():
            text = text.replace(
                f"[servers.{name}]\nport = {port}\n",
                f"[servers.{name}]\nport = {port}\nweb_port = {self.web_ports[name]}\n",
            )
        web = "".join(f"{key} = {value}\n" for key, value in self.web_settings.items())
        path.write_text(
            "# Written by bench/ for one benchmark run.\n"
            + text
            + '[places]\nprovider = "offline"\n'
            + "\n[web]\n"
            + web
        )
        return path

    def web_port(self, name: str) -> int:
        return self.web_ports[name]

    def secret_bytes(self) -> bytes:
        return load_config(self.config_path, {}).secret


# --- building the scene on a real server -------------------------------------------------------


async def build_on_server(herd: WebHerd, name: str, scene: PageScene) -> dict[str, Any]:
    """The scene made through `name`'s line port as users make it: users added by the operator
    (what `herd user add` does), each with a device reporting its position (`DEVICE ADD`,
    `IAMAT`); the organiser plans, invites and proposes; everyone votes and comments.  Returns
    the event id, the option ids and the users' login token."""
    port = herd.port(name)
    token, digest = user_token()
    operator = await Operator.open(herd.secret_bytes(), name, port)
    await operator.add_users(list(scene.people), digest)
    operator.close()
    clients = {user: await authed(port, user, token) for user in scene.people}
    try:
        organiser = clients[scene.organiser]
        event = reply_json(await organiser.ask(b"PLAN Dinner for fifty"))["id"]
        batch = " ".join(scene.invitees)
        reply_json(await organiser.ask(f"INVITE {event} {batch}".encode()))
        document: dict[str, Any] = {}
        for at in scene.times:
            document = reply_json(await organiser.ask(f"PROPOSE {event} TIME {iso(at)}".encode()))
        for place, lat, lon in scene.places:
            line = f"PROPOSE {event} PLACE {position_text((lat, lon))} {place}"
            document = reply_json(await organiser.ask(line.encode()))
        options = [str(o["id"]) for o in document["times"]] + [
            str(o["id"]) for o in document["places"]
        ]
        await _each(
            clients,
            lambda user: [f"DEVICE ADD {user}-phone".encode()],
            scene.people,
        )
        reporter = await LineClient.open(port)
        now = time.time()
        lines = [
            f"IAMAT {user}-phone {position_text(position)} {now:.3f}".encode()
            for user, position in scene.positions.items()
        ]
        for reply in await closed_loop(reporter, lines, 20):
            if not reply.startswith(b"AT "):
                raise BenchError(f"IAMAT refused: {reply!r}")
        reporter.close()
        by_user: dict[str, list[bytes]] = {}
        for user, index, choice in scene.votes:
            by_user.setdefault(user, []).append(f"VOTE {event} {options[index]} {choice}".encode())
        for user, text in scene.comments:
            by_user.setdefault(user, []).append(f"COMMENT {event} {text}".encode())
        await _each(clients, lambda user: by_user.get(user, []), scene.people)
    finally:
        for client in clients.values():
            client.close()
    return {"event": event, "options": options, "token": token}


async def _each(
    clients: dict[str, LineClient], lines_of: Callable[[str], list[bytes]], users: Sequence[str]
) -> None:
    async def one(user: str) -> None:
        for reply in await closed_loop(clients[user], lines_of(user), 10):
            if reply.startswith((b"ERR", b"?")):
                raise BenchError(f"{user}: {reply[:200]!r}")

    await asyncio.gather(*(one(user) for user in users))


# --- links and sessions ------------------------------------------------------------------------


def personal_link(secret: bytes, user: str, event: str, days: int = 7) -> str:
    """The path of `user`'s personal link to `event` (what a notification carries; generation 0,
    a new user's)."""
    token = link_token(secret, user, event, int(time.time()) + days * 86400, 0)
    return f"/e/{event}?t={token}"


def session_cookie(port: int, path: str, host: str = HOST) -> str:
    """Open a personal link as a browser does; the session cookie's value it sets."""
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        for header in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            if name == SESSION_COOKIE:
                return rest.split(";")[0]
        raise BenchError(f"the link {path[:40]}… gave {response.status} and no session cookie")
    finally:
        connection.close()
