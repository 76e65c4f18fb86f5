"""The event page: server CPU to serve an event with 50 invitees and 20 options (issue 12).

The event (`bench.tools.webscene.page_scene`): an organiser and 50 invitees, 10 times and 10
places, 45 invitees and the organiser answering every option (920 votes), 20 comments, everyone
with a position near Paris (so the page draws all 51 on its SVG figure).

Two measures, each beside a baseline in the same run:

- **In process**: the scene is built through the planning core (ops applied to a
  `PlanningState`), and the page is rendered by the site's own code, `EventResource.page`
  (the viewer's zone from their position, the page model, the SVG figure, the CSRF token, the
  Jinja template), over and over; the CPU of each render is `time.process_time_ns()` around it.
  Baseline: the same data, precomputed as plain tuples, through a bare Jinja template (autoescape
  on) that writes about the same HTML (its size is reported beside the page's): what Jinja
  alone costs to write a page this big.
- **End to end**: a real `herd run` with `[web]` (pinned to the last core, this process to the
  first); the scene made through its line port as users make it (users added the way `herd user
  add` does it, positions from `IAMAT`, votes and comments as `VOTE`/`COMMENT` lines); a
  personal link opened for a session cookie; then `--requests` GETs of the page on one
  keep-alive connection per round.  The server's CPU (user + system, all threads: psutil) is
  read before and after each round once it is quiet, so the access log and everything deferred
  is charged.  Baseline: twisted.web serving the same bytes as a fixed page
  (`bench/baselines/web_floor.py`), the same requests, in the same run.

Goal: under 20 ms of server CPU per page.

    python -m bench web_page [--renders 400] [--rounds 5] [--requests 200]
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench.harness import (
    BenchError,
    HerdLayout,
    bailey_profiled,
    cpu_count,
    median,
    percentile,
    port_open,
    save_results,
    temp_directory,
    wait_for,
    wait_quiet,
)
from bench.tools.loadgen import new_event_loop
from bench.tools.webscene import (
    PageScene,
    WebHerd,
    build_on_server,
    page_scene,
    personal_link,
    session_cookie,
)
from tests.support.ports import HOST, free_ports
from tests.support.processes import Processes, log
from web.rules import SESSION_COOKIE

GOAL_MS = 20.0

# --- in process --------------------------------------------------------------------------------


def planned_state(scene: PageScene) -> tuple[Any, str]:
    """The scene through the planning core: ops applied to a `PlanningState`.  (state, event)"""
    from herd.ops import (
        OPERATOR,
        AddComment,
        AddPlace,
        AddTime,
        AddUser,
        CastVote,
        Choice,
        CreateEvent,
        Invite,
        Op,
    )
    from herd.state import PlanningState

    state = PlanningState()
    serial = iter(range(1, 10**9))

    def op(actor: str, body: Any) -> str:
        made = Op(f"B.x.{next(serial)}", state.next_time(time.time_ns()), actor, body)
        state.apply(made)
        return made.op_id

    for user in scene.people:
        op(OPERATOR, AddUser(user))
    event = op(scene.organiser, CreateEvent("Dinner for fifty"))
    op(scene.organiser, Invite(event, scene.invitees))
    options = [op(scene.organiser, AddTime(event, at)) for at in scene.times]
    options += [op(scene.organiser, AddPlace(event, *place)) for place in scene.places]
    for user, index, choice in scene.votes:
        op(user, CastVote(event, options[index], Choice[choice]))
    for user, text in scene.comments:
        op(user, AddComment(event, text))
    return state, event


def in_process(scene: PageScene, renders: int) -> dict[str, Any]:
    """CPU per render of the real page code and of the bare template, interleaved in blocks."""
    from herd.api import WebClaim, session_token
    from herd.clock import Clock
    from herd.config import ServerWeb, WebConfig
    from web.host import WebHost
    from web.resources import EventResource, Session
    from web.templates import WebTemplates

    state, event_id = planned_state(scene)
    secret = b"bench-secret-0123456789abcdef"
    clock = Clock(None, time.time_ns)  # type: ignore[arg-type]  # never schedules here
    host = WebHost(
        name="Bailey",
        web=ServerWeb("127.0.0.1", 8001, "http://127.0.0.1:8001", None, WebConfig()),
        secret=secret,
        state=state,
        position_of=scene.positions.get,
        run_as=lambda user, line: None,  # type: ignore[arg-type,return-value]  # no writes here
        clock=clock,
        log=lambda who, lines: None,
        templates=WebTemplates(),
    )
    viewer = scene.invitees[0]
    claim = WebClaim(viewer, event_id, int(time.time()) + 3600, 0)
    event = state.event(event_id)
    assert event is not None
    session = Session(claim, session_token(secret, claim), event)
    resource = EventResource(host, event_id)
    page = resource.page(session, None)
    bare, bare_context = bare_template(resource, session)
    bare_page = bare.render(bare_context).encode("utf-8")
    timings: dict[str, list[float]] = {"page": [], "bare": []}
    block = 20
    for _ in range(max(1, renders // block)):
        for _ in range(block):
            start = time.process_time_ns()
            resource.page(session, None)
            timings["page"].append((time.process_time_ns() - start) / 1e6)
        for _ in range(block):
            start = time.process_time_ns()
            bare.render(bare_context).encode("utf-8")
            timings["bare"].append((time.process_time_ns() - start) / 1e6)
    parts = page_parts(resource, session, renders=max(20, renders // 4))
    return {
        "page_bytes": len(page),
        "bare_bytes": len(bare_page),
        "renders": len(timings["page"]),
        "page_ms": spread(timings["page"]),
        "bare_ms": spread(timings["bare"]),
        "ratio": median(timings["page"]) / median(timings["bare"]),
        "parts_ms": parts,
    }


def page_parts(resource: Any, session: Any, renders: int) -> dict[str, float]:
    """Median CPU of each step of `EventResource.page`, each timed on its own."""
    from herd.api import csrf_token, timezone_of
    from web.model import event_page

    host = resource.host
    user_id = session.claim.user
    user = host.state.user(user_id)
    zone = timezone_of(user.tz, host.position_of(user_id))
    model = event_page(session.event, user_id, zone)
    figure = resource._figure(model)
    context = {
        "page": model,
        "figure": figure,
        "csrf": csrf_token(host.secret, session.cookie),
        "flash": None,
        "server": host.name,
    }
    steps: dict[str, Any] = {
        "zone": lambda: timezone_of(user.tz, host.position_of(user_id)),
        "model": lambda: event_page(session.event, user_id, zone),
        "svg": lambda: resource._figure(model),
        "csrf": lambda: csrf_token(host.secret, session.cookie),
        "template": lambda: host.templates.page("event", context),
    }
    result = {}
    for name, step in steps.items():
        times = []
        for _ in range(renders):
            start = time.process_time_ns()
            step()
            times.append((time.process_time_ns() - start) / 1e6)
        result[name] = median(times)
    return result


BARE = Path(__file__).resolve().parent.parent / "baselines" / "bare_event.html.j2"


def bare_template(resource: Any, session: Any) -> tuple[Any, dict[str, Any]]:
    """The baseline: a bare Jinja template (autoescape on, nothing else) and the same page's
    data, computed once, as plain strings and tuples."""
    from jinja2 import Environment

    from herd.api import csrf_token, timezone_of
    from web.model import event_page

    host = resource.host
    user_id = session.claim.user
    user = host.state.user(user_id)
    model = event_page(session.event, user_id, timezone_of(user.tz, host.position_of(user_id)))
    figure = resource._figure(model)

    def names(users: tuple[str, ...]) -> str:
        return ", ".join(users) or "nobody"

    context = {
        "title": model.title,
        "organiser": model.organiser,
        "status": model.status,
        "zone": model.zone,
        "event": model.id,
        "csrf": csrf_token(host.secret, session.cookie),
        "leading_time": model.leading_time.label if model.leading_time else "",
        "leading_place": model.leading_place.label if model.leading_place else "",
        "options": [
            (
                row.label,
                len(row.yes),
                len(row.maybe),
                len(row.no),
                names(row.yes),
                names(row.maybe),
                names(row.no),
                row.id,
                row.mine or "none yet",
            )
            for row in model.options
        ],
        "labels": [row.label for row in model.options],
        "answers": [
            (
                row.user,
                [
                    (option.id, cell or "\u2013")
                    for option, cell in zip(model.options, row.answers, strict=True)
                ],
            )
            for row in model.answers
        ],
        "svg": figure.svg if figure else "",
        "distances": [
            f"{person.user}: {person.km:.1f} km from {figure.place_name}"
            for person in (figure.people if figure else ())
        ],
        "comments": [(c.id, c.by, c.iso, c.when, c.text) for c in model.comments],
    }
    return Environment(autoescape=True).from_string(BARE.read_text()), context


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": median(values),
        "p10": percentile(values, 0.10),
        "p90": percentile(values, 0.90),
        "min": min(values),
        "max": max(values),
    }


# --- end to end --------------------------------------------------------------------------------


def get_rounds(
    port: int, path: str, cookie: str | None, pid: int, rounds: int, requests: int
) -> dict[str, Any]:
    """`rounds` x `requests` GETs of `path` on one keep-alive connection per round; the
    server's CPU per request in each round (psutil, user + system, all threads), the latency
    of each request, the bytes of the last body."""
    process = psutil.Process(pid)
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else {}
    per_request: list[float] = []
    latencies: list[float] = []
    size = 0
    for _ in range(rounds):
        wait_quiet([pid], 0.3, 0.02, 60)
        before = process.cpu_times()
        connection = http.client.HTTPConnection(HOST, port, timeout=30)
        try:
            for _ in range(requests):
                start = time.perf_counter()
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                body = response.read()
                latencies.append((time.perf_counter() - start) * 1000)
                if response.status != 200:
                    raise BenchError(f"GET {path} gave {response.status}: {body[:200]!r}")
                size = len(body)
        finally:
            connection.close()
        wait_quiet([pid], 0.3, 0.02, 60)
        after = process.cpu_times()
        used = (after.user - before.user) + (after.system - before.system)
        per_request.append(used / requests * 1000)
    return {
        "cpu_ms_per_request": per_request,
        "cpu_ms": median(per_request),
        "latency_ms": spread(latencies),
        "body_bytes": size,
    }


def end_to_end(scene: PageScene, options: argparse.Namespace) -> dict[str, Any]:
    cpus = cpu_count()
    server_cpu = cpus - 1 if cpus > 1 else None
    if server_cpu is not None:
        os.sched_setaffinity(0, {0})
    with temp_directory("renga-bench-web-page-") as directory, Processes() as processes:
        herd = WebHerd(
            processes,
            HerdLayout.single(),
            directory / "herd",
            cpus={"Bailey": server_cpu},
            launchers=bailey_profiled(options.cprofile),
        )
        herd.start()
        herd.wait_ready()
        loop = new_event_loop()
        try:
            built = loop.run_until_complete(build_on_server(herd, "Bailey", scene))
        finally:
            loop.close()
        log(f"scene built: event {built['event']}, {len(built['options'])} options")
        web_port = herd.web_port("Bailey")
        viewer = scene.invitees[0]
        link = personal_link(herd.secret_bytes(), viewer, built["event"])
        cookie = session_cookie(web_port, link)
        path = f"/e/{built['event']}"
        pid = herd.pid("Bailey")
        get_rounds(web_port, path, cookie, pid, 1, 20)  # warm-up
        page_file = directory / "page.html"
        connection = http.client.HTTPConnection(HOST, web_port, timeout=30)
        connection.request("GET", path, headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})
        page_file.write_bytes(connection.getresponse().read())
        connection.close()
        floor_port = free_ports(1)[0]
        command = [sys.executable, "-m", "bench", "web_floor", "--port", str(floor_port)]
        command += ["--body", str(page_file)]
        if server_cpu is not None:
            command = ["taskset", "-c", str(server_cpu), *command]
        floor = processes.start("web-floor", command)
        wait_for(lambda: port_open(floor_port), 10, "the web floor")
        get_rounds(floor_port, path, cookie, floor.pid, 1, 20)  # warm-up
        renga_rounds: list[dict[str, Any]] = []
        floor_rounds: list[dict[str, Any]] = []
        for _ in range(options.rounds):  # pairs back to back
            renga_rounds.append(get_rounds(web_port, path, cookie, pid, 1, options.requests))
            floor_rounds.append(
                get_rounds(floor_port, path, cookie, floor.pid, 1, options.requests)
            )
        rss = {"renga": psutil.Process(pid).memory_info().rss}
    renga = [r["cpu_ms"] for r in renga_rounds]
    floors = [r["cpu_ms"] for r in floor_rounds]
    return {
        "page_bytes": renga_rounds[0]["body_bytes"],
        "renga_cpu_ms_rounds": renga,
        "floor_cpu_ms_rounds": floors,
        "renga_cpu_ms": median(renga),
        "floor_cpu_ms": median(floors),
        "ratio": median([r / f for r, f in zip(renga, floors, strict=True)]),
        "renga_latency_ms": median([r["latency_ms"]["median"] for r in renga_rounds]),
        "floor_latency_ms": median([r["latency_ms"]["median"] for r in floor_rounds]),
        "renga_rss": rss["renga"],
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench web_page", description=__doc__)
    parser.add_argument("--renders", type=int, default=400, help="in-process renders of each")
    parser.add_argument("--rounds", type=int, default=5, help="end-to-end rounds (pairs)")
    parser.add_argument("--requests", type=int, default=200, help="GETs per round")
    parser.add_argument("--skip-e2e", action="store_true", help="only the in-process figures")
    parser.add_argument(
        "--cprofile", type=Path, default=None, help="run the server under cProfile, to this file"
    )
    options = parser.parse_args(argv)
    scene = page_scene()
    load_before = os.getloadavg()
    local = in_process(scene, options.renders)
    lines = [
        f"web_page: an event of {len(scene.invitees)} invitees and "
        f"{len(scene.times) + len(scene.places)} options, load average {load_before[0]:.1f}",
        f"  in process, CPU per render ({local['renders']} each): page median "
        f"{local['page_ms']['median']:.2f} ms (p10 {local['page_ms']['p10']:.2f}, p90 "
        f"{local['page_ms']['p90']:.2f}), {local['page_bytes']} bytes; bare Jinja "
        f"{local['bare_ms']['median']:.2f} ms, {local['bare_bytes']} bytes; ratio "
        f"{local['ratio']:.2f}",
        "  steps: " + ", ".join(f"{k} {v:.2f} ms" for k, v in local["parts_ms"].items()),
    ]
    results: dict[str, Any] = {"options": vars(options), "in_process": local}
    if not options.skip_e2e:
        e2e = end_to_end(scene, options)
        results["end_to_end"] = e2e
        lines.append(
            f"  end to end, server CPU per GET (median of {options.rounds} rounds of "
            f"{options.requests}): Renga {e2e['renga_cpu_ms']:.2f} ms "
            f"(rounds {', '.join(f'{v:.2f}' for v in e2e['renga_cpu_ms_rounds'])}), "
            f"twisted.web static {e2e['floor_cpu_ms']:.3f} ms; ratio {e2e['ratio']:.1f}; "
            f"latency p50 {e2e['renga_latency_ms']:.2f} / {e2e['floor_latency_ms']:.2f} ms"
        )
        figure = e2e["renga_cpu_ms"]
    else:
        figure = local["page_ms"]["median"]
    verdict = "met" if figure < GOAL_MS else f"NOT met ({figure:.1f} ms)"
    lines.append(f"  goal: under {GOAL_MS:.0f} ms of server CPU per page: {verdict}")
    lines.append(f"  load average after: {os.getloadavg()[0]:.1f}")
    print("\n".join(lines))
    path = save_results("web_page", results)
    log(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
