"""XMPP fan-out: one decision told to 1,000 Jabber users through a real Prosody, against a bare
slixmpp client sending the same 1,000 messages, in the same run.

Set-up (timed where it says so): a Prosody from `LocalProsody` (its own config; checked for
bandwidth limits — Debian's default config has `limits` at 10 kb/s per client — both in the
config and in the modules the running server loaded), the bot's account and 1,000 people's
(three ways, each timed: `prosodyctl register` one by one, 8 in parallel, and one `prosodyctl
shell` session); a five-server herd started as a user would, whose config has an `[xmpp]`
table, so every server's bot logs in; Renga users `x00000…` with those JIDs (operator
handshake), no email, so XMPP is everyone's personal channel; four receiver processes of 250
slixmpp sessions each (`bench/tools/xmppclients.py hold`: real sessions, presence sent, counting
what arrives — not Prosody's offline storage); an organiser (no JID) on Bailey plans an event,
invites the 1,000 (20 `INVITE`s of 50) and proposes a time and two places (each option is also
told to all 1,000).

Per trial, alternating:
- **renga**: `DECIDE <event> <time> <place>` on Bailey; Bailey's notifier routes it (1,000
  recipients), renders 1,000 messages, enqueues them with the change, and its outbox delivers
  them through the bot's `XmppChannel` (10 in flight, each confirmed by a ping barrier).  Timed
  from writing the DECIDE to the last of the 1,000 sessions reading its message.  Then `REOPEN`
  (another 1,000 messages), untimed, and a quiet herd.
- **bare**: one slixmpp client (`xmppclients blast`, its own process, logged in beforehand)
  sends the 1,000 pre-rendered messages (the body Renga sent, one per JID) as fast as
  slixmpp queues them.  Timed from the command to the last arrival.

Messages/s = 1,000 / time to the last delivery.  Goal: renga at least half the bare rate.

    python -m bench xmpp_fanout [--people 1000] [--trials 5]
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
    save_results,
    temp_directory,
    wait_quiet,
)
from bench.tools.lines import authed, reply_json, user_token
from bench.tools.loadgen import new_event_loop
from bench.tools.xmppscene import PASSWORD, Tool, XmppScene
from tests.support.processes import Processes, log

GOAL_RATIO = 0.5
FANOUT_TIMEOUT = 120.0
INVITE_BATCH = 50


async def fanout(
    options: argparse.Namespace, scene: XmppScene, processes: Processes
) -> dict[str, Any]:
    people = [f"x{i:05d}" for i in range(options.people)]
    scene.start_prosody(people, ["blaster", "boss"])
    launchers = bailey_profiled(options.cprofile)
    herd = scene.start_herd(launchers=launchers)
    token, digest = user_token()
    await scene.add_users(["boss"], False, digest)
    await scene.add_users(people, True, digest)
    scene.results["sessions"] = await scene.start_holders(people, options.processes)
    loop = asyncio.get_running_loop()
    jids = scene.directory / "all.jids"
    jids.write_text("\n".join(f"{p}@{scene.prosody.domain}" for p in people) + "\n")
    blaster = Tool(
        processes,
        "blaster",
        [
            sys.executable,
            "-m",
            "bench",
            "xmppclients",
            "blast",
            "--port",
            str(scene.prosody.port),
            "--jid",
            f"blaster@{scene.prosody.domain}",
            "--jids",
            str(jids),
            "--password",
            PASSWORD,
        ],
        scene.directory / "blaster.stderr",
        loop,
        lambda line: False,
    )
    await blaster.expect("ready", 60)
    boss = await authed(herd.port("Bailey"), "boss", token)
    count = len(people)

    async def told(marker: tuple[str, ...], action: bytes) -> tuple[float, float, bytes]:
        """Send `action` as the organiser; (seconds to the last delivery, to the reply, reply)."""
        scene.expect_all(*marker)
        start = time.monotonic()
        reply = await boss.ask(action)
        replied = time.monotonic() - start
        await scene.wait_arrivals(count, FANOUT_TIMEOUT)
        return max(scene.arrivals.values()) - start, replied, reply

    event = reply_json(await boss.ask(b"PLAN XMPP fan-out bench"))["id"]
    invite_s = []
    for first in range(0, count, INVITE_BATCH):
        batch = people[first : first + INVITE_BATCH]
        scene.expect_all("invited you to", event)
        start = time.monotonic()
        reply_json(await boss.ask(f"INVITE {event} {' '.join(batch)}".encode()))
        deadline = time.monotonic() + FANOUT_TIMEOUT
        while len(scene.arrivals) < len(batch):
            if time.monotonic() > deadline:
                raise BenchError("invitations did not all arrive")
            await asyncio.sleep(0.005)
        invite_s.append(max(scene.arrivals.values()) - start)
    log(f"invited {count}: each INVITE of {INVITE_BATCH} told in {median(invite_s) * 1000:.0f} ms")
    time_id = reply_json(await boss.ask(f"PROPOSE {event} TIME 2030-06-01T19:00Z".encode()))[
        "times"
    ][-1]["id"]
    places = {}
    option_s = []
    for name in ("Venue-A", "Venue-B"):
        last, _, reply = await told(
            ("proposed a new place", name), f"PROPOSE {event} PLACE {name}".encode()
        )
        places[name] = reply_json(reply)["places"][-1]["id"]
        option_s.append(last)
    log(f"new options told to {count} in {', '.join(f'{s:.2f} s' for s in option_s)}")
    pids = {"Bailey": herd.pid("Bailey"), "prosody": scene.prosody._process.pid}  # type: ignore[union-attr]
    for holder in scene.holders:
        pids[holder.name] = holder.child.pid
    all_pids = list(herd.pids().values()) + list(pids.values())
    trials: dict[str, list[dict[str, Any]]] = {"renga": [], "bare": []}
    body = ""
    for number in range(options.trials):
        place = "Venue-A" if number % 2 == 0 else "Venue-B"
        await asyncio.to_thread(wait_quiet, all_pids, 0.5, 0.03, 120)
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        last, replied, reply = await told(
            (" decided ", f"at {place}."), f"DECIDE {event} {time_id} {places[place]}".encode()
        )
        reply_json(reply)
        cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        arrivals = sorted(scene.arrivals.values())
        start = arrivals[-1] - last
        trials["renga"].append(
            {
                "last_s": last,
                "reply_s": replied,
                "first_s": arrivals[0] - start,
                "median_s": arrivals[len(arrivals) // 2] - start,
                "messages_per_s": count / last,
                "delivery_messages_per_s": count / (arrivals[-1] - arrivals[0]),
                "cpu_s": cpu,
            }
        )
        body = json.loads(scene.sample) if scene.sample else body
        # Back to planning (1,000 more messages), untimed.
        await told(("reopened",), f"REOPEN {event}".encode())
        # The bare client: the same body to the same 1,000.
        await asyncio.to_thread(wait_quiet, all_pids, 0.5, 0.03, 120)
        marker = f"[bare {number}]"
        scene.expect_all(marker)
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        before["blaster"] = cpu_seconds(blaster.child.pid)
        start = time.monotonic()
        blaster.send("send " + json.dumps(body + "\n" + marker))
        sent = await blaster.expect("sent", 60)
        await scene.wait_arrivals(count, FANOUT_TIMEOUT)
        arrivals = sorted(scene.arrivals.values())
        last = arrivals[-1] - start
        cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        cpu["blaster"] = cpu_seconds(blaster.child.pid) - before["blaster"]
        queued_to = sent.split()[2]
        trials["bare"].append(
            {
                "last_s": last,
                "queued_s": float(queued_to) - start,
                "first_s": arrivals[0] - start,
                "median_s": arrivals[len(arrivals) // 2] - start,
                "messages_per_s": count / last,
                "cpu_s": cpu,
            }
        )
        log(
            f"trial {number + 1}: renga {trials['renga'][-1]['messages_per_s']:.0f} msg/s "
            f"(last at {trials['renga'][-1]['last_s']:.2f} s, reply {replied * 1000:.0f} ms); "
            f"bare {trials['bare'][-1]['messages_per_s']:.0f} msg/s "
            f"(last at {last:.2f} s)"
        )
    blaster.send("quit")
    scene.quit_holders()
    boss.close()
    return {
        **scene.results,
        "body_chars": len(body),
        "invite_batch_told_s": invite_s,
        "new_option_told_s": option_s,
        "trials": trials,
    }


def summarise(trials: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for kind, rows in trials.items():
        summary[kind] = {
            key: median([row[key] for row in rows])
            for key in rows[0]
            if isinstance(rows[0][key], float)
        }
        summary[kind]["cpu_s"] = {
            name: median([row["cpu_s"][name] for row in rows]) for name in rows[0]["cpu_s"]
        }
    summary["ratio"] = summary["renga"]["messages_per_s"] / summary["bare"]["messages_per_s"]
    return summary


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench xmpp_fanout", description=__doc__)
    parser.add_argument("--people", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4, help="receiver processes")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument(
        "--cprofile", type=Path, default=None, help="run Bailey under cProfile, dump here"
    )
    options = parser.parse_args(argv)
    with temp_directory("renga-bench-xmpp-") as directory, Processes() as processes:
        scene = XmppScene(processes, directory)
        loop = new_event_loop("asyncio")
        try:
            results = loop.run_until_complete(fanout(options, scene, processes))
        finally:
            loop.close()
            processes.stop_all()
            scene.close()
    summary = summarise(results["trials"])
    from bench.suites.push import breakdown

    results["breakdown_ms"] = breakdown(options.people, decide=True)
    renga, bare = summary["renga"], summary["bare"]
    verdict = "met" if summary["ratio"] >= GOAL_RATIO else "NOT met"
    print(
        f"xmpp_fanout: one decision to {options.people} people, medians of {options.trials}\n"
        f"  renga: {renga['messages_per_s']:.0f} msg/s, last at {renga['last_s']:.2f} s "
        f"(first {renga['first_s']:.2f} s, DECIDE reply {renga['reply_s'] * 1000:.0f} ms)\n"
        f"  bare slixmpp: {bare['messages_per_s']:.0f} msg/s, last at {bare['last_s']:.2f} s "
        f"(queued in {bare['queued_s']:.2f} s)\n"
        f"  ratio {summary['ratio']:.2f}; goal >= {GOAL_RATIO}: {verdict}\n"
        f"  renga from first to last delivery: {renga['delivery_messages_per_s']:.0f} msg/s\n"
        f"  one server's work for the DECIDE (in-process, {results['breakdown_ms']['messages']}"
        f" messages): route {results['breakdown_ms']['route_ms']:.0f} ms, render "
        f"{results['breakdown_ms']['render_ms']:.0f} ms\n"
        f"  prosody limits module loaded: {results['limits']['mod_limits_loaded']}"
    )
    if options.cprofile is not None:
        from bench.suites.planning import cprofile_by_total

        print(cprofile_by_total(options.cprofile, top=70))
    path = save_results("xmpp_fanout", {"options": vars(options), "summary": summary, **results})
    log(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
