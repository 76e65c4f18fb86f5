"""Chat with the bot: command round trips (person → bot → reply) under 100 chatting users.

Set-up as `bench xmpp_fanout` (`bench/tools/xmppscene.py`): a real Prosody (LocalProsody's config),
a five-server herd whose bots log in, 100 Renga users `c00000…` with JIDs, and their 100
slixmpp sessions in two processes.  Each user first plans an event of their own by chat
(`plan …`), so what they say next works on it and nobody else is told about it.  Then each
user says, in turn, `status` (a read: the event and its votes) and `comment …` (a write: an op
stored and flooded), one at a time, the next only after the answer:

- **paced**: each user at most one command per second (jittered): ~100 commands/s offered;
- **flat out**: no pause: the round trip under the heaviest load 100 users can make.

The time is from sending the chat to reading the bot's answer.  Baseline in the same run: the
same sessions, pace and counts against a bare slixmpp echo client (`xmppclients echo`), which
answers every chat at once with a fixed text as long as the bot's `status` answer: what
Prosody and slixmpp cost on this machine, with no bot behind them.

    python -m bench chat [--users 100] [--paced-count 30] [--flat-count 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    BenchError,
    bailey_profiled,
    cpu_seconds,
    median,
    percentile,
    save_results,
    temp_directory,
    wait_quiet,
)
from bench.tools.lines import user_token
from bench.tools.loadgen import new_event_loop
from bench.tools.xmppscene import BOT, PASSWORD, Tool, XmppScene
from tests.support.processes import Processes, log

COMMANDS = "status|comment still on for tonight?"


async def chat_round(
    scene: XmppScene, to: str, users: int, count: int, pace: float
) -> tuple[list[float], float, list[int]]:
    """Every holder runs the chat loop for its share; all round trips (ms) and the wall time."""
    per = -(-users // len(scene.holders))
    start = time.monotonic()
    for holder in scene.holders:
        holder.send(f"chat {to} {per} {count} {pace} {COMMANDS}")
    rtts: list[float] = []
    lengths: list[int] = []
    for holder in scene.holders:
        line = await holder.expect("chat", 120 + count * max(pace, 0.5) * 2)
        answer = json.loads(line[len("chat ") :])
        rtts.extend(answer["rtts"])
        lengths.extend(answer["lengths"])
    return rtts, time.monotonic() - start, lengths


def jid_lookup_ms(users: int, repeat: int = 20) -> float:
    """In this process: one `user_of_jid` (what the bot runs, twice, for every chat: `is_known`
    and `on_command`) in a state of `users` users with JIDs, for the last user; best of
    `repeat`, in ms."""
    from herd.ops import OPERATOR, AddUser, Op, SetUserField, UserField
    from herd.state import PlanningState
    from notifier.chat.linking import user_of_jid

    state = PlanningState()
    for index in range(users):
        name = f"c{index:05d}"
        bodies: tuple[AddUser | SetUserField, ...] = (
            AddUser(name),
            SetUserField(name, UserField.JID, f"{name}@localhost"),
        )
        for number, body in enumerate(bodies):
            state.apply(
                Op(f"B.x.{index}.{number}", state.next_time(time.time_ns()), OPERATOR, body)
            )
    target = f"c{users - 1:05d}@localhost"
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        user_of_jid(state, target)
        best = min(best, time.perf_counter() - start)
    return best * 1000


def figures(rtts: list[float], wall: float) -> dict[str, float]:
    lost = sum(1 for r in rtts if r == float("inf"))
    done = [r for r in rtts if r != float("inf")]
    return {
        "commands": len(rtts),
        "lost": lost,
        "p50_ms": percentile(done, 0.5),
        "p90_ms": percentile(done, 0.9),
        "p99_ms": percentile(done, 0.99),
        "max_ms": max(done),
        "commands_per_s": len(rtts) / wall,
    }


async def chat(
    options: argparse.Namespace, scene: XmppScene, processes: Processes
) -> dict[str, Any]:
    people = [f"c{i:05d}" for i in range(options.users)]
    scene.start_prosody(people, ["echo"])
    launchers = bailey_profiled(options.cprofile)
    herd = scene.start_herd(launchers=launchers)
    _, digest = user_token()
    await scene.add_users(people, True, digest)
    scene.results["sessions"] = await scene.start_holders(people, options.processes)
    bot = f"{BOT}@{scene.prosody.domain}"
    per = -(-options.users // len(scene.holders))
    for holder in scene.holders:
        holder.send(f"chat {bot} {per} 1 0 plan Chat bench dinner")
    for holder in scene.holders:
        planned = json.loads((await holder.expect("chat", 120))[len("chat ") :])["rtts"]
        if any(r == float("inf") for r in planned):
            raise BenchError("the bot did not answer every `plan`")
    log(f"{options.users} users planned an event by chat")
    # The bot's `status` answers (one per user), for the echo's reply length.
    sample_rtts, _, lengths = await chat_round(scene, bot, options.users, 1, 0)
    status_text = "x" * int(median(lengths))
    loop = asyncio.get_running_loop()
    echo = Tool(
        processes,
        "echo",
        [
            sys.executable,
            "-m",
            "bench",
            "xmppclients",
            "echo",
            "--port",
            str(scene.prosody.port),
            "--jid",
            f"echo@{scene.prosody.domain}",
            "--password",
            PASSWORD,
            "--reply",
            status_text,
        ],
        scene.directory / "echo.stderr",
        loop,
        lambda line: False,
    )
    await echo.expect("ready", 60)
    pids = {
        "Bailey": herd.pid("Bailey"),
        "prosody": scene.prosody._process.pid,  # type: ignore[union-attr]
        **{holder.name: holder.child.pid for holder in scene.holders},
        "echo": echo.child.pid,
    }
    all_pids = list(herd.pids().values()) + list(pids.values())
    results: dict[str, Any] = {}
    for load, count, pace in (
        ("paced", options.paced_count, 1.0),
        ("flat out", options.flat_count, 0.0),
    ):
        for target, to in (("bot", bot), ("echo", f"echo@{scene.prosody.domain}")):
            await asyncio.to_thread(wait_quiet, all_pids, 0.5, 0.03, 120)
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            rtts, wall, _ = await chat_round(scene, to, options.users, count, pace)
            cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
            row = figures(rtts, wall) | {"cpu_s": cpu}
            results[f"{load}, {target}"] = row
            log(
                f"{load}, {target}: p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
                f"{row['commands_per_s']:.0f} commands/s, {row['lost']} unanswered"
            )
    scene.quit_holders()
    echo.send("quit")
    return {
        **scene.results,
        "first_status_ms": sample_rtts,
        "status_answer_chars": median(lengths),
        "loads": results,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench chat", description=__doc__)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--paced-count", type=int, default=30, help="commands per user, paced")
    parser.add_argument("--flat-count", type=int, default=40, help="commands per user, flat out")
    parser.add_argument(
        "--cprofile", type=Path, default=None, help="run Bailey under cProfile, dump here"
    )
    options = parser.parse_args(argv)
    with temp_directory("renga-bench-chat-") as directory, Processes() as processes:
        scene = XmppScene(processes, directory)
        loop = new_event_loop("asyncio")
        try:
            results = loop.run_until_complete(chat(options, scene, processes))
        finally:
            loop.close()
            processes.stop_all()
            scene.close()
    lines = [f"chat: {options.users} users, `status` and `comment` in turn"]
    for name, row in results["loads"].items():
        lines.append(
            f"  {name:16} p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
            f"{row['commands_per_s']:5.0f} commands/s  ({row['commands']} commands, "
            f"{row['lost']} unanswered)"
        )
    print("\n".join(lines))
    if options.cprofile is not None:
        from bench.suites.planning import cprofile_by_total

        print(cprofile_by_total(options.cprofile, top=70))
    lookups = {n: jid_lookup_ms(n) for n in (100, 1000, 10_000)}
    results["user_of_jid_ms"] = lookups
    print(
        "  user_of_jid (twice per chat) in-process: "
        + ", ".join(f"{n} users {ms:.2f} ms" for n, ms in lookups.items())
    )
    path = save_results("chat", {"options": vars(options), **results})
    log(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
