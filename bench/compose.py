"""Composing digests, in this process: CPU per digest for the parts `digests` measures end to
end, so each can be compared with its own baseline in one run.

On the state `bench digests` builds (users in five zones, each event's 11 people spread over
them), best of `--rounds` passes over every user:

- **compose, alone**: `compose_digest` with a fresh `RenderCache` per digest: nothing shared;
- **compose, one run**: as `NotifierListener._send_digests` does it: users in zone order, one
  `RenderCache` for the whole run;
- **MIME**: `MessageBuilder.build` of each composed digest (the bytes that go on the wire).

    python -m bench compose [--users 4000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.digests import build_state
from bench.harness import log, save_results


def run(users: int, rounds: int) -> dict[str, float]:
    from notifier.channels.smtp import MessageBuilder
    from notifier.digest import compose_digest
    from notifier.render import RenderCache, Unsubscribe

    state, recipients, items, _ = build_state(users)
    unsubscribe = Unsubscribe(b"bench", "mailto:r@bench.invalid?subject=OPTOUT%20{user}%20{token}")
    now_ns = time.time_ns()
    by_zone = sorted(range(len(recipients)), key=lambda k: recipients[k].tz)
    builder = MessageBuilder("Renga <renga@bench.invalid>")

    def compose(order: list[int], shared: RenderCache | None) -> tuple[list[Any], float]:
        """The digests of `order`, and the CPU each took (ms)."""
        started = time.process_time()
        made = [
            compose_digest(recipients[k], state, items[k], now_ns, unsubscribe, shared)
            for k in order
        ]
        return made, (time.process_time() - started) / len(order) * 1000

    best: dict[str, float] = {}
    for number in range(rounds):
        made, alone = compose(list(range(len(recipients))), None)
        _, one_run = compose(by_zone, RenderCache(state))
        started = time.process_time()
        for message in made:
            builder.build(message, time.time())
        mime = (time.process_time() - started) / len(made) * 1000
        row = {"compose_alone_ms": alone, "compose_one_run_ms": one_run, "mime_ms": mime}
        log(f"round {number + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
        best = {k: min(v, best.get(k, v)) for k, v in row.items()}
    return best


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench compose", description=__doc__)
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args(argv)
    best = run(options.users, options.rounds)
    print(f"compose: CPU per digest, best of {options.rounds} passes over {options.users} users")
    print(f"  compose, a fresh cache each     {best['compose_alone_ms']:.3f} ms")
    print(f"  compose, one cache, zone order {best['compose_one_run_ms']:.3f} ms")
    print(f"  MIME bytes (MessageBuilder)     {best['mime_ms']:.3f} ms")
    path = save_results("compose", {"options": vars(options), "best_ms": best})
    log(f"saved {path}")
    return 0
