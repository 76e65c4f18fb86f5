"""What the personal links cost a notification's render: CPU per 3-channel notification
(mail text and HTML, Jabber, line push) of `tests/unit/test_render.py`'s scene, rendered as
the notifier does it (`notifier.render.render`, a fresh `RenderCache` for each change), with
the links off (no `[web]`) and on (`web.links.PersonalLinks`, the settings link too, as the
wiring passes them), interleaved, best of `--rounds`; and the link functions alone.

    .venv/bin/python -m bench.tools.render_links [--count 1000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

from herd.api import Clock
from notifier.message import Kind
from notifier.render import RenderCache, Templates, no_event_link, no_prefs_link, render
from tests.unit.test_render import T0, UNSUBSCRIBE, scene
from web.links import PersonalLinks
from web.prefs import prefs_link


class _Now:
    def seconds(self) -> float:
        return T0 / 10**9


def best_us(call: Callable[[], object], count: int, rounds: int) -> float:
    """The best of `rounds` runs of `count` calls: CPU microseconds per call."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(count):
            call()
        best = min(best, (time.process_time() - started) / count * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=15)
    options = parser.parse_args()
    state, routed = scene(Kind.VOTES)
    clock = Clock(_Now(), lambda: T0)  # type: ignore[arg-type]
    links = PersonalLinks(b"bench secret", "https://renga.example.org", 30, state, clock)
    off = Templates(event_link=no_event_link, prefs_link=no_prefs_link)
    on = Templates(event_link=links.event_link, prefs_link=partial(prefs_link, links))
    user = routed.notification.recipient.user

    def off_render() -> object:
        return render(routed, state, UNSUBSCRIBE, RenderCache(off, state, T0))

    def on_render() -> object:
        return render(routed, state, UNSUBSCRIBE, RenderCache(on, state, T0))

    # interleaved, best of the rounds: the machine's load hits both alike
    best: dict[str, float] = {}
    for _ in range(options.rounds):
        for label, call in (("render, links off", off_render), ("render, links on", on_render)):
            best[label] = min(best.get(label, float("inf")), best_us(call, options.count, 1))
    best["event_link alone"] = best_us(
        lambda: links.event_link(user, "e1"), options.count * 10, options.rounds
    )
    best["prefs_link alone"] = best_us(
        lambda: prefs_link(links, user), options.count * 10, options.rounds
    )
    for label, value in best.items():
        print(f"{label:<20} {value:8.1f} µs")
    added = best["render, links on"] - best["render, links off"]
    print(f"{'links add':<20} {added:8.1f} µs")


if __name__ == "__main__":
    main()
