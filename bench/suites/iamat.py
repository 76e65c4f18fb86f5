"""The headline: server CPU time per answered IAMAT, Renga against the floor.

Starts a five-server herd of `herd run` processes (the default topology, a config in a temp
dir, free ports) and the floor server (`bench/baselines/floor.py`), each its own process.  Then, for
each round, Renga (load on Bailey) and the floor in turn (Renga first) get the same
closed-loop load (50 connections x 20 in flight, 100,000 IAMATs, each a new report), from a
load generator pinned to another core than the server.  A server's CPU (user + system, all
threads, from /proc/PID/stat) is read before the load and again once every server is quiet
(< 1% CPU over 0.5 s), so work deferred past the replies (stores, floods, logs) is charged to
the load.  A second load at 50 connections x 1 in flight measures latency.  Figures are
medians over the rounds; the efficiency ratio is, in each round, floor CPU/IAMAT divided by
Renga CPU/IAMAT, and its median is the headline (goal >= 0.3).

A second baseline, the Twisted floor (`bench/baselines/twisted_floor.py`: the floor's work as a
Twisted protocol on the asyncio reactor), gets the same loads, for information: it splits the gap
into what the framework costs and what Renga's own work costs.

    python -m bench iamat [--rounds 3] [--count 100000]
        [--profile bench/results/bailey.pyspy] [--cprofile bench/results/bailey.prof]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import (
    BenchError,
    Herd,
    HerdLayout,
    cpu_count,
    cpu_seconds,
    cpu_times,
    median,
    pinned,
    port_open,
    profiled_herd,
    save_results,
    temp_directory,
    thread_cpu_seconds,
    wait_for,
    wait_quiet,
)
from bench.tools.profiles import Recording, cprofile_table, summarise, thread_names
from tests.support.herd import NAMES
from tests.support.ports import free_ports
from tests.support.processes import Child, Processes, log

EFFICIENCY_GOAL = 0.3
LOAD_TIMEOUT = 300.0
PROFILE_TAIL_SECONDS = 1.5


@dataclass(frozen=True)
class Options:
    rounds: int
    connections: int
    inflight: int
    count: int
    latency_count: int
    warmup: int
    server_cpu: int | None
    load_cpu: int | None
    peers_cpu: int | None
    profile: Path | None
    cprofile: Path | None


def run_loadgen(
    port: int, connections: int, inflight: int, count: int, cpu: int | None, prefix: str
) -> dict[str, Any]:
    """The load generator as its own process (pinned); its JSON result."""
    command = pinned(
        [
            sys.executable,
            "-m",
            "bench",
            "loadgen",
            "--port",
            str(port),
            "--connections",
            str(connections),
            "--inflight",
            str(inflight),
            "--count",
            str(count),
            "--prefix",
            prefix,
            "--timeout",
            str(LOAD_TIMEOUT),
        ],
        cpu,
    )
    done = subprocess.run(command, capture_output=True, timeout=LOAD_TIMEOUT + 30, check=False)
    if not done.stdout.strip():
        raise BenchError(f"load generator failed: {done.stderr.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    if not result["complete"] or result["bad"]:
        raise BenchError(f"load incomplete or bad replies: {result}")
    return result


class Target:
    """A server under load: its port, and the processes whose CPU is counted."""

    def __init__(self, name: str, port: int, main: Child, others: dict[str, Child]) -> None:
        self.name = name
        self.port = port
        self.main = main
        self.others = others
        self.thread_names: dict[int, str] = {}

    def pids(self) -> dict[str, int]:
        return {self.main.name: self.main.pid} | {n: c.pid for n, c in self.others.items()}


def measure(
    target: Target, options: Options, inflight: int, count: int, prefix: str
) -> dict[str, Any]:
    """One load, with the CPU it cost each server, counted until all are quiet again."""
    pids = target.pids()
    wait_quiet(pids.values())
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    system_before = cpu_times(target.main.pid)[1]
    threads_before = thread_cpu_seconds(target.main.pid)
    load_average = os.getloadavg()[0]
    load = run_loadgen(target.port, options.connections, inflight, count, options.load_cpu, prefix)
    quiet_after = wait_quiet(pids.values())
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    threads_after = thread_cpu_seconds(target.main.pid)
    system = cpu_times(target.main.pid)[1] - system_before
    cpu = {name: after[name] - before[name] for name in pids}
    answered = load["answered"]
    main_thread = threads_after.get(target.main.pid, 0.0) - threads_before.get(target.main.pid, 0.0)
    by_thread = {
        target.thread_names.get(tid, str(tid)): (seconds - threads_before.get(tid, 0.0))
        / answered
        * 1e6
        for tid, seconds in threads_after.items()
    }
    return {
        "load": load,
        "cpu_s": cpu,
        "server_cpu_us_per_iamat": cpu[target.main.name] / answered * 1e6,
        "server_main_thread_cpu_us_per_iamat": main_thread / answered * 1e6,
        "server_system_cpu_us_per_iamat": system / answered * 1e6,
        "server_threads_cpu_us_per_iamat": by_thread,
        "load_average_before": load_average,
        "others_cpu_us_per_iamat": {name: cpu[name] / answered * 1e6 for name in target.others},
        "all_cpu_us_per_iamat": sum(cpu.values()) / answered * 1e6,
        "quiet_after_s": quiet_after,
    }


def profile_bailey(target: Target, options: Options, path: Path, prefix: str) -> str:
    """One extra, uncounted Renga load with py-spy sampling Bailey; the summary table."""
    wait_quiet(target.pids().values())
    with Recording(target.main.pid, path, cpu=options.load_cpu):
        run_loadgen(
            target.port,
            options.connections,
            options.inflight,
            options.count,
            options.load_cpu,
            prefix,
        )
        time.sleep(PROFILE_TAIL_SECONDS)  # deferred work; py-spy keeps it from looking quiet
    return summarise(path).table()


def cprofile_bailey(
    processes: Processes, options: Options, directory: Path, path: Path, prefix: str
) -> str:
    """A fresh herd whose Bailey runs under cProfile (a restarted Bailey would first catch up
    from its peers, and cProfile counts from the start), one load, then Bailey is stopped,
    which writes the profile; the per-IAMAT table of its reactor thread."""
    cpus: dict[str, int | None] = {
        name: options.server_cpu if name == "Bailey" else options.peers_cpu for name in NAMES
    }
    launcher = profiled_herd(path)
    herd = Herd(
        processes,
        HerdLayout.default(),
        directory,
        cpus=cpus,
        launchers={"Bailey": launcher},
    )
    try:
        herd.start()
        herd.wait_ready()
        wait_quiet(herd.pids().values())
        load = run_loadgen(
            herd.port("Bailey"),
            options.connections,
            options.inflight,
            options.count,
            options.load_cpu,
            prefix,
        )
        wait_quiet(herd.pids().values())
    finally:
        for child in list(herd.children.values()):
            processes.stop(child)
    if not path.exists():
        raise BenchError("cProfile wrote nothing")
    return cprofile_table(path, load["answered"])


def summarise_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def med(target: str, *keys: str) -> float:
        values = []
        for entry in rounds:
            value: Any = entry[target]
            for key in keys:
                value = value[key]
            values.append(float(value))
        return median(values)

    floor_cpu = med("floor", "throughput", "server_cpu_us_per_iamat")
    renga_cpu = med("renga", "throughput", "server_cpu_us_per_iamat")
    ratios = [
        entry["floor"]["throughput"]["server_cpu_us_per_iamat"]
        / entry["renga"]["throughput"]["server_cpu_us_per_iamat"]
        for entry in rounds
    ]
    names = sorted(
        {
            name
            for entry in rounds
            for name in entry["renga"]["throughput"]["server_threads_cpu_us_per_iamat"]
        }
    )
    threads = {
        name: median(
            [
                entry["renga"]["throughput"]["server_threads_cpu_us_per_iamat"].get(name, 0.0)
                for entry in rounds
            ]
        )
        for name in names
    }
    others = {
        name: med("renga", "throughput", "others_cpu_us_per_iamat", name)
        for name in NAMES
        if name != "Bailey"
    }
    return {
        "floor_cpu_us_per_iamat": floor_cpu,
        "renga_cpu_us_per_iamat": renga_cpu,
        "renga_main_thread_cpu_us_per_iamat": med(
            "renga", "throughput", "server_main_thread_cpu_us_per_iamat"
        ),
        "renga_threads_cpu_us_per_iamat": threads,
        "renga_system_cpu_us_per_iamat": med(
            "renga", "throughput", "server_system_cpu_us_per_iamat"
        ),
        "floor_system_cpu_us_per_iamat": med(
            "floor", "throughput", "server_system_cpu_us_per_iamat"
        ),
        "efficiency_ratio": median(ratios),
        "efficiency_ratio_of_medians": floor_cpu / renga_cpu,
        "efficiency_ratio_per_round": ratios,
        "efficiency_goal": EFFICIENCY_GOAL,
        "floor_requests_per_s": med("floor", "throughput", "load", "requests_per_s"),
        "renga_requests_per_s": med("renga", "throughput", "load", "requests_per_s"),
        "floor_latency_ms": {
            p: med("floor", "latency", "load", "latency_ms", p) for p in ("p50", "p99")
        },
        "renga_latency_ms": {
            p: med("renga", "latency", "load", "latency_ms", p) for p in ("p50", "p99")
        },
        "floor_latency_requests_per_s": med("floor", "latency", "load", "requests_per_s"),
        "renga_latency_requests_per_s": med("renga", "latency", "load", "requests_per_s"),
        "floor_cpu_us_per_iamat_1_in_flight": med("floor", "latency", "server_cpu_us_per_iamat"),
        "renga_cpu_us_per_iamat_1_in_flight": med("renga", "latency", "server_cpu_us_per_iamat"),
        "renga_others_cpu_us_per_iamat": others,
        "renga_herd_cpu_us_per_iamat": med("renga", "throughput", "all_cpu_us_per_iamat"),
        "renga_quiet_after_s": med("renga", "throughput", "quiet_after_s"),
        "twisted_floor_cpu_us_per_iamat": med("twisted", "throughput", "server_cpu_us_per_iamat"),
        "twisted_floor_requests_per_s": med("twisted", "throughput", "load", "requests_per_s"),
        "twisted_floor_latency_ms": {
            p: med("twisted", "latency", "load", "latency_ms", p) for p in ("p50", "p99")
        },
        "twisted_floor_latency_requests_per_s": med("twisted", "latency", "load", "requests_per_s"),
        "twisted_floor_cpu_us_per_iamat_1_in_flight": med(
            "twisted", "latency", "server_cpu_us_per_iamat"
        ),
    }


def report(summary: dict[str, Any], options: Options) -> str:
    s = summary
    lines = [
        f"IAMAT, {options.connections} connections x {options.inflight} in flight, "
        f"{options.count} per round, median of {options.rounds} rounds:",
        f"  floor  CPU/IAMAT {s['floor_cpu_us_per_iamat']:8.1f} us   "
        f"{s['floor_requests_per_s']:9.0f} req/s (wall)",
        f"  Twisted floor    {s['twisted_floor_cpu_us_per_iamat']:8.1f} us   "
        f"{s['twisted_floor_requests_per_s']:9.0f} req/s (wall)   same work on Twisted",
        f"  Renga  CPU/IAMAT {s['renga_cpu_us_per_iamat']:8.1f} us   "
        f"{s['renga_requests_per_s']:9.0f} req/s (wall)   Bailey only",
        f"  (system CPU: floor {s['floor_system_cpu_us_per_iamat']:.1f} us, "
        f"Renga {s['renga_system_cpu_us_per_iamat']:.1f} us; Renga by thread: "
        + ", ".join(f"{n} {v:.1f} us" for n, v in s["renga_threads_cpu_us_per_iamat"].items())
        + ")",
        f"  efficiency floor/Renga = {s['efficiency_ratio']:.3f} (median of the rounds' ratios "
        f"{', '.join(f'{r:.3f}' for r in s['efficiency_ratio_per_round'])}; "
        f"ratio of the medians {s['efficiency_ratio_of_medians']:.3f}); goal >= {EFFICIENCY_GOAL}",
        f"  Renga whole herd CPU/IAMAT {s['renga_herd_cpu_us_per_iamat']:.1f} us; the others: "
        + ", ".join(f"{n} {v:.1f}" for n, v in s["renga_others_cpu_us_per_iamat"].items()),
        f"  Renga quiet again {s['renga_quiet_after_s']:.2f} s after the last reply "
        "(includes the 0.5 s quiet window)",
        f"latency, {options.connections} connections x 1 in flight, {options.latency_count} "
        "requests:",
    ]
    for name, key in (("floor", "floor"), ("Twisted floor", "twisted_floor"), ("Renga", "renga")):
        latency = s[f"{key}_latency_ms"]
        lines.append(
            f"  {name:13}  p50 {latency['p50']:.3f} ms  p99 {latency['p99']:.3f} ms   "
            f"({s[f'{key}_latency_requests_per_s']:.0f} req/s, "
            f"CPU/IAMAT {s[f'{key}_cpu_us_per_iamat_1_in_flight']:.1f} us)"
        )
    return "\n".join(lines)


def run(options: Options) -> dict[str, Any]:
    nonce = f"{int(time.time())}"
    with Processes() as processes, temp_directory("bench-iamat-") as directory:
        cpus: dict[str, int | None] = {
            name: options.server_cpu if name == "Bailey" else options.peers_cpu for name in NAMES
        }
        herd = Herd(processes, HerdLayout.default(), directory / "herd", cpus=cpus)
        herd.start()
        floor_port, twisted_port = free_ports(2)
        floor = processes.start(
            "floor",
            pinned(
                [sys.executable, "-m", "bench", "floor", "--port", str(floor_port)],
                options.server_cpu,
            ),
            log_path=directory / "floor.stderr",
        )
        twisted_floor = processes.start(
            "twisted_floor",
            pinned(
                [sys.executable, "-m", "bench", "twisted_floor", "--port", str(twisted_port)],
                options.server_cpu,
            ),
            log_path=directory / "twisted_floor.stderr",
        )
        log(f"herd ready in {herd.wait_ready():.2f} s")
        wait_for(lambda: port_open(floor_port), 10.0, "the floor server")
        wait_for(lambda: port_open(twisted_port), 10.0, "the Twisted floor server")
        renga = Target(
            "renga",
            herd.port("Bailey"),
            herd.children["Bailey"],
            {name: child for name, child in herd.children.items() if name != "Bailey"},
        )
        floor_target = Target("floor", floor_port, floor, {})
        twisted_target = Target("twisted", twisted_port, twisted_floor, {})
        targets = (renga, floor_target, twisted_target)
        renga.thread_names = thread_names(renga.main.pid)
        for target in targets:
            run_loadgen(
                target.port,
                options.connections,
                options.inflight,
                options.warmup,
                options.load_cpu,
                f"w{nonce}.{target.name}.",
            )
        rounds: list[dict[str, Any]] = []
        for number in range(options.rounds):
            entry: dict[str, Any] = {}
            for target in targets:
                prefix = f"r{nonce}.{number}.{target.name}."
                throughput = measure(target, options, options.inflight, options.count, prefix + "t")
                latency = measure(target, options, 1, options.latency_count, prefix + "l")
                herd.check_alive()
                entry[target.name] = {"throughput": throughput, "latency": latency}
                log(
                    f"round {number + 1} {target.name}: "
                    f"{throughput['server_cpu_us_per_iamat']:.1f} us CPU/IAMAT, "
                    f"{throughput['load']['requests_per_s']:.0f} req/s, "
                    f"p50 {latency['load']['latency_ms']['p50']:.3f} ms "
                    f"p99 {latency['load']['latency_ms']['p99']:.3f} ms"
                )
            rounds.append(entry)
        summary = summarise_rounds(rounds)
        profile = ""
        if options.profile is not None:
            log(f"profiling Bailey under the same load into {options.profile}")
            options.profile.parent.mkdir(parents=True, exist_ok=True)
            profile = profile_bailey(renga, options, options.profile, f"p{nonce}.")
        cprofile = ""
        if options.cprofile is not None:
            log(f"profiling Bailey's reactor thread with cProfile into {options.cprofile}")
            options.cprofile.parent.mkdir(parents=True, exist_ok=True)
            cprofile = cprofile_bailey(
                processes, options, directory / "cprofile", options.cprofile.resolve(), "c."
            )
    return {"summary": summary, "rounds": rounds, "profile": profile, "cprofile": cprofile}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench iamat",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--inflight", type=int, default=20)
    parser.add_argument("--count", type=int, default=100_000, help="IAMATs per round")
    parser.add_argument("--latency-count", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=10_000)
    parser.add_argument("--server-cpu", type=int, default=1, help="core of Bailey and the floor")
    parser.add_argument("--load-cpu", type=int, default=0, help="core of the load generator")
    parser.add_argument("--peers-cpu", type=int, default=0, help="core of the other four servers")
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy raw output of Bailey")
    parser.add_argument(
        "--cprofile", type=Path, default=None, help="cProfile output of Bailey (restarted)"
    )
    arguments = parser.parse_args(argv)
    pin = not arguments.no_pin and cpu_count() >= 2
    options = Options(
        rounds=arguments.rounds,
        connections=arguments.connections,
        inflight=arguments.inflight,
        count=arguments.count,
        latency_count=arguments.latency_count,
        warmup=arguments.warmup,
        server_cpu=arguments.server_cpu if pin else None,
        load_cpu=arguments.load_cpu if pin else None,
        peers_cpu=arguments.peers_cpu if pin else None,
        profile=arguments.profile,
        cprofile=arguments.cprofile,
    )
    results = run(options)
    print(report(results["summary"], options))
    if results["profile"]:
        print("\nwhere Bailey's time goes (py-spy --gil, one extra uncounted round):")
        print(results["profile"])
    if results["cprofile"]:
        print("\nBailey's reactor thread per IAMAT (cProfile, one extra uncounted round):")
        print(results["cprofile"])
    path = save_results(
        "iamat",
        {"command": "python -m bench iamat " + " ".join(argv), "options": vars(arguments)}
        | {k: (str(v) if isinstance(v, Path) else v) for k, v in results.items()},
    )
    log(f"results in {path}")
    return 0
