"""Line pushes: one change fanned out to 1,000 subscribed connections.

A five-server herd (default topology) is started as a user would.  An organiser (on Bailey)
plans an event and invites 1,000 users (`INVITE` 50 at a time); a second event has one
invitee.  Each of the 1,000 users opens a connection, `AUTH`s and `SUBSCRIBE`s: spread over the
herd (user i on server i mod 5), or all on Bailey.  Then, per trial, the organiser sends
`COMMENT <event> trial-N`: every server routes the change and pushes `PUSH <checkpoint> comment
…` to its own subscribers.  A trial's figure is the time from writing the COMMENT to reading
the last of the 1,000 pushes (one client process, one clock), with the p50 and the organiser's
reply time beside it.  Trials alternate the two layouts, with a quiet herd before each.

Baselines in the same run:
- **fan-out of 1**: the same path for the one-invitee event (its one invitee subscribed on
  Bailey): what a push costs when there is nobody else to tell;
- **floor**: a plain asyncio server (`--floor-server`) that, on `FIRE <text>`, writes `PUSH
  <text>` to every subscribed connection: what writing 1,000 sockets and reading them back
  costs on this machine, with nothing routed, rendered or stored.

Goal: all 1,000 have the push within 100 ms.

    python -m bench push [--subscribers 1000] [--trials 15]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.harness import (
    BenchError,
    Herd,
    HerdLayout,
    median,
    percentile,
    port_open,
    save_results,
    temp_directory,
    wait_for,
    wait_quiet,
)
from bench.suites.planning import op_count
from bench.tools.lines import (
    AUTH_PER_ADDRESS,
    LineClient,
    Operator,
    authed,
    reply_json,
    user_token,
)
from bench.tools.loadgen import new_event_loop
from herd.config import load_config
from tests.support.herd import NAMES
from tests.support.ports import HOST, free_ports
from tests.support.processes import Processes, log

GOAL_MS = 100.0
TRIAL_TIMEOUT = 20.0
INVITE_BATCH = 50


class Receivers:
    """Arrival times of the pushes of the current trial, per subscriber."""

    def __init__(self) -> None:
        self.marker = b""
        self.arrivals: dict[str, int] = {}
        self.done: asyncio.Future[None] | None = None
        self.expected = 0

    def start(self, marker: bytes, expected: int) -> asyncio.Future[None]:
        self.marker = marker
        self.arrivals = {}
        self.expected = expected
        self.done = asyncio.get_running_loop().create_future()
        return self.done

    def handler(self, who: str) -> Callable[[bytes, int], None]:
        def on_push(line: bytes, now: int) -> None:
            if self.marker and line.endswith(self.marker) and who not in self.arrivals:
                self.arrivals[who] = now
                if len(self.arrivals) >= self.expected and self.done and not self.done.done():
                    self.done.set_result(None)

        return on_push


def trial_figures(sent: int, replied: int, arrivals: list[int]) -> dict[str, float]:
    ms = [(t - sent) / 1e6 for t in arrivals]
    return {
        "last_ms": max(ms),
        "p50_ms": percentile(ms, 0.5),
        "first_ms": min(ms),
        "reply_ms": (replied - sent) / 1e6,
    }


# --- the floor ------------------------------------------------------------------------------------


_FLOOR_SUBSCRIBERS: set[asyncio.Transport] = set()


class _FloorConnection(asyncio.Protocol):
    subscribers = _FLOOR_SUBSCRIBERS

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        lines = (self.buffer + data).split(b"\n")
        self.buffer = lines.pop()
        for line in lines:
            if line == b"SUBSCRIBE":
                self.subscribers.add(self.transport)
                self.transport.write(b"SUBSCRIBED\n")
            elif line.startswith(b"FIRE "):
                data = b"PUSH " + line[5:] + b"\n"
                for subscriber in self.subscribers:
                    subscriber.write(data)
                self.transport.write(b"FIRED\n")
            else:
                self.transport.write(b"? " + line + b"\n")

    def connection_lost(self, error: Exception | None) -> None:
        self.subscribers.discard(self.transport)


def floor_server(port: int) -> int:
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(_FloorConnection, HOST, port))
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.close()
    return 0


# --- the run ----------------------------------------------------------------------------------


async def setup(herd: Herd, count: int) -> dict[str, Any]:
    ports = [herd.port(name) for name in NAMES]
    token, digest = user_token()
    users = [f"s{i:05d}" for i in range(count)]
    secret = load_config(herd.config_path, os.environ).secret
    operator = await Operator.open(secret, "Bailey", ports[0])
    await operator.add_users(["organiser", *users], digest)
    operator.close()
    organiser = await authed(ports[0], "organiser", token)
    big = reply_json(await organiser.ask(b"PLAN Fan-out bench"))["id"]
    for start in range(0, count, INVITE_BATCH):
        batch = " ".join(users[start : start + INVITE_BATCH])
        reply_json(await organiser.ask(f"INVITE {big} {batch}".encode()))
    small = reply_json(await organiser.ask(b"PLAN Fan-out baseline"))["id"]
    reply_json(await organiser.ask(f"INVITE {small} {users[0]}".encode()))
    ops = 2 * (count + 1) + 2 + -(-count // INVITE_BATCH) + 1
    paths = [herd.directory / "var" / f"{name}.sqlite" for name in NAMES]
    await asyncio.to_thread(
        wait_for, lambda: all(op_count(p) == ops for p in paths), 120, "the herd to converge"
    )
    return {"token": token, "users": users, "big": big, "small": small, "organiser": organiser}


async def herd_trials(herd: Herd, options: argparse.Namespace) -> dict[str, Any]:
    ports = [herd.port(name) for name in NAMES]
    state = await setup(herd, options.subscribers)
    token, users, organiser = state["token"], state["users"], state["organiser"]
    receivers = Receivers()
    position = {user: index for index, user in enumerate(users)}
    layouts: dict[str, list[LineClient]] = {}
    gate = asyncio.Semaphore(64)
    # Each server lets one address have only so many AUTHs waiting (all of these come from one).
    per_server = {port: asyncio.Semaphore(AUTH_PER_ADDRESS) for port in ports}

    async def subscriber(port: int, user: str, label: str) -> LineClient:
        async with gate, per_server[port]:
            client = await authed(port, user, token, receivers.handler(f"{label}/{user}"))
            reply = await client.ask(b"SUBSCRIBE")
            if not reply.startswith(b"SUBSCRIBED "):
                raise BenchError(f"SUBSCRIBE refused: {reply!r}")
            return client

    start = time.perf_counter()
    layouts["spread"] = list(
        await asyncio.gather(
            *(subscriber(ports[i % len(ports)], u, "spread") for i, u in enumerate(users))
        )
    )
    subscribe_s = time.perf_counter() - start
    log(f"{len(users)} subscribers spread over the herd in {subscribe_s:.1f} s")
    pids = list(herd.pids().values())
    results: dict[str, list[dict[str, float]]] = {"spread": [], "one": [], "fan-out of 1": []}
    # The one-server layout is opened after the spread trials (1,000 more connections would
    # double every push: each user would have two subscribed connections).
    for layout in ("spread", "one"):
        if layout == "one":
            for client in layouts.pop("spread"):
                client.close()
            layouts["one"] = list(
                await asyncio.gather(*(subscriber(ports[0], u, "one") for u in users))
            )
            log(f"{len(users)} subscribers on Bailey")
        for number in range(options.trials):
            for kind in (layout, "fan-out of 1"):
                if kind == "fan-out of 1" and layout == "one":
                    continue
                await asyncio.to_thread(wait_quiet, pids, 0.3, 0.03, 60)
                event = state["small"] if kind == "fan-out of 1" else state["big"]
                expected = 1 if kind == "fan-out of 1" else len(users)
                marker = f"{kind.replace(' ', '-')}-{number}".encode()
                done = receivers.start(marker, expected)
                sent = time.perf_counter_ns()
                reply_future = organiser.request(b"COMMENT " + event.encode() + b" " + marker)
                reply_read: list[int] = []
                reply_future.add_done_callback(
                    lambda _, read=reply_read: read.append(time.perf_counter_ns())
                )
                try:
                    await asyncio.wait_for(asyncio.shield(done), TRIAL_TIMEOUT)
                except TimeoutError:
                    raise BenchError(
                        f"{kind}: only {len(receivers.arrivals)} of {expected} pushes "
                        f"in {TRIAL_TIMEOUT:.0f} s"
                    ) from None
                reply = await reply_future
                replied = reply_read[0]
                if not reply.startswith(b"EVENT "):
                    raise BenchError(f"COMMENT refused: {reply[:200]!r}")
                figures = trial_figures(sent, replied, list(receivers.arrivals.values()))
                if kind != "fan-out of 1":
                    by_server: dict[str, float] = {}
                    for who, at in receivers.arrivals.items():
                        index = position[who.split("/", 1)[1]]
                        server = NAMES[index % len(ports)] if kind == "spread" else "Bailey"
                        by_server[server] = max(by_server.get(server, 0.0), (at - sent) / 1e6)
                    figures["last_ms_by_server"] = by_server  # type: ignore[assignment]
                results[kind].append(figures)
        log(f"{layout}: last push median {median([t['last_ms'] for t in results[layout]]):.1f} ms")
    for clients in layouts.values():
        for client in clients:
            client.close()
    organiser.close()
    return {"subscribe_s": subscribe_s, "trials": results}


async def floor_trials(port: int, count: int, trials: int) -> list[dict[str, float]]:
    receivers = Receivers()
    clients = []
    for index in range(count):
        client = await LineClient.open(port, receivers.handler(str(index)))
        if await client.ask(b"SUBSCRIBE") != b"SUBSCRIBED":
            raise BenchError("the floor did not subscribe")
        clients.append(client)
    fire = await LineClient.open(port)
    results = []
    try:
        for number in range(trials):
            await asyncio.sleep(0.05)
            marker = f"floor-{number}".encode()
            done = receivers.start(marker, count)
            sent = time.perf_counter_ns()
            reply = fire.request(b"FIRE " + marker)
            await asyncio.wait_for(asyncio.shield(done), TRIAL_TIMEOUT)
            await reply
            results.append(
                trial_figures(sent, time.perf_counter_ns(), list(receivers.arrivals.values()))
            )
    finally:
        for client in [*clients, fire]:
            client.close()
    return results


def breakdown(participants: int, repeat: int = 3, decide: bool = False) -> dict[str, float]:
    """In this process, what a server does for one change on an event of `participants`
    invitees, by step, with the real functions: `route` (who is told, on which channel), then
    `render` of each routed notification with one `RenderCache` for the change (as
    `NotifierListener._dispatch` does), then
    `LineHub.publish` of the line ones.  The change is a COMMENT (users without JIDs: line
    only), or with `decide` a DECIDE (users with JIDs: XMPP and line).  Best of `repeat`, ms."""
    from herd.ops import (
        OPERATOR,
        AddComment,
        AddPlace,
        AddTime,
        AddUser,
        CreateEvent,
        Decide,
        Invite,
        Op,
        Reopen,
        SetUserField,
        UserField,
    )
    from herd.state import PlanningState
    from notifier.channels.line import LineHub, checkpoint
    from notifier.render import RenderCache, Templates, Unsubscribe, render
    from notifier.routing import route

    state = PlanningState()
    serial = iter(range(1, 10**9))

    def op(actor: str, body: Any) -> Op:
        made = Op(f"B.x.{next(serial)}", state.next_time(time.time_ns()), actor, body)
        state.apply(made)
        return made

    users = [f"s{i:05d}" for i in range(participants)]
    for user in ["organiser", *users]:
        op(OPERATOR, AddUser(user))
        if decide and user != "organiser":
            op(OPERATOR, SetUserField(user, UserField.JID, f"{user}@localhost"))
    event = op("organiser", CreateEvent("Fan-out bench")).op_id
    for start in range(0, participants, INVITE_BATCH):
        op("organiser", Invite(event, tuple(users[start : start + INVITE_BATCH])))
    at = op("organiser", AddTime(event, int(time.time()) + 86400 * 30)).op_id
    place = op("organiser", AddPlace(event, "Venue-A", None, None)).op_id
    unsubscribe = Unsubscribe(b"k", "mailto:x@example.org?subject={user}%20{token}")
    templates = Templates()
    best: dict[str, float] = {}
    for number in range(repeat):
        body = Decide(event, at, place) if decide else AddComment(event, f"trial {number}")
        change_op = Op(f"B.x.{next(serial)}", state.next_time(time.time_ns()), "organiser", body)
        (change,) = state.apply(change_op)
        hub = LineHub()
        started = time.perf_counter()
        routed = route(change, state, time.time_ns())
        routed_at = time.perf_counter()
        # one cache per change, as NotifierListener._dispatch does
        cache = RenderCache(templates, state, time.time_ns())
        messages = [(r, render(r, state, unsubscribe, cache)) for r in routed]
        rendered_at = time.perf_counter()
        for placed, rendered in messages:
            mark = checkpoint(placed.notification.at_ns, placed.notification.id)
            for message in rendered:
                if message.channel == "line":
                    hub.publish(placed.notification.recipient.user, mark, message.text)
        published_at = time.perf_counter()
        row = {
            "route_ms": (routed_at - started) * 1000,
            "render_ms": (rendered_at - routed_at) * 1000,
            "publish_ms": (published_at - rendered_at) * 1000,
            "total_ms": (published_at - started) * 1000,
            "messages": sum(len(rendered) for _, rendered in messages),
        }
        best = row if not best or row["total_ms"] < best["total_ms"] else best
        if decide:
            op("organiser", Reopen(event))
    return best


def summarise(trials: list[dict[str, Any]]) -> dict[str, float]:
    return {
        key: median([t[key] for t in trials])
        for key in ("last_ms", "p50_ms", "first_ms", "reply_ms")
    } | {"worst_last_ms": max(t["last_ms"] for t in trials)}


def run(options: argparse.Namespace) -> dict[str, Any]:
    with temp_directory("renga-bench-push-") as directory, Processes() as processes:
        port = free_ports(1)[0]
        floor = processes.start(
            "push-floor", [sys.executable, "-m", "bench", "push", "--floor-server", str(port)]
        )
        wait_for(lambda: port_open(port), 10, "the floor server")
        herd = Herd(processes, HerdLayout.default(), directory / "herd")
        herd.start()
        herd.wait_ready()
        log("herd up")
        loop = new_event_loop()
        try:
            floor_results = loop.run_until_complete(
                floor_trials(port, options.subscribers, options.trials)
            )
            log(f"floor: last push median {median([t['last_ms'] for t in floor_results]):.2f} ms")
            processes.stop(floor)
            herd_results = loop.run_until_complete(herd_trials(herd, options))
        finally:
            loop.close()
    trials = {**herd_results["trials"], "floor": floor_results}
    steps = {n: breakdown(n) for n in (100, 300, options.subscribers)}
    return {
        "breakdown_ms": steps,
        "subscribe_s": herd_results["subscribe_s"],
        "summary": {kind: summarise(t) for kind, t in trials.items()},
        "trials": trials,
    }


def main(argv: list[str]) -> int:
    if argv[:1] == ["--floor-server"]:
        return floor_server(int(argv[1]))
    parser = argparse.ArgumentParser(prog="python -m bench push", description=__doc__)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=15)
    options = parser.parse_args(argv)
    results = run(options)
    lines = [f"push: one COMMENT to {options.subscribers} subscribers, medians of {options.trials}"]
    for kind, figures in results["summary"].items():
        lines.append(
            f"  {kind:14} last {figures['last_ms']:7.1f} ms  p50 {figures['p50_ms']:7.1f} ms  "
            f"first {figures['first_ms']:6.1f} ms  reply {figures['reply_ms']:6.1f} ms  "
            f"(worst last {figures['worst_last_ms']:.1f} ms)"
        )
    for participants, step in results["breakdown_ms"].items():
        lines.append(
            f"  one server's work for one COMMENT to {participants}: "
            f"route {step['route_ms']:.1f} ms, render {step['render_ms']:.1f} ms, "
            f"publish {step['publish_ms']:.1f} ms"
        )
    spread = results["summary"]["spread"]["last_ms"]
    verdict = "met" if spread <= GOAL_MS else f"NOT met (by {spread - GOAL_MS:.0f} ms)"
    lines.append(f"  goal: all within {GOAL_MS:.0f} ms (spread over the herd): {verdict}")
    print("\n".join(lines))
    path = save_results("push", {"options": vars(options), **results})
    log(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
