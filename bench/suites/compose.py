"""Composing digests, in this process: CPU per digest for the parts `digests` measures end to
end, so each can be compared with its own baseline in one run.

On the state `bench digests` builds (users in five zones, each event's 11 people spread over
them), best of `--rounds` passes over every user:

- **compose, alone**: `compose_digest` with a fresh `RenderCache` per digest: nothing shared;
- **compose, one run**: as `NotifierListener._send_digests` does it: users in zone order, one
  `RenderCache` for the whole run;
- **MIME**: `MessageBuilder.build` of each composed digest (the bytes that go on the wire),
  and the baseline it replaced: the same mail as an `EmailMessage` (SMTP policy, `set_content`
  and `add_alternative`) written by the stdlib generator.

Best and median of the rounds; the MIME ratio is the stdlib's time over the builder's, per round.

    python -m bench compose [--users 4000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import email.policy
import statistics
import time
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from bench.harness import save_results
from bench.suites.digests import build_state
from tests.support.processes import log

SENDER = "Renga <renga@bench.invalid>"


def stdlib_mail(message: Any, now: float) -> bytes:
    """The baseline: a digest as the stdlib would write it, headers and both texts."""
    mail = EmailMessage(policy=email.policy.SMTP)
    mail["From"] = SENDER
    mail["To"] = message.recipient
    mail["Subject"] = message.subject
    mail["Date"] = formatdate(now)
    mail["Message-ID"] = f"<renga.{message.key}@bench.invalid>"
    mail["Auto-Submitted"] = "auto-generated"
    for name, value in message.headers:
        mail[name] = value
    mail.set_content(message.text)
    if message.html is not None:
        mail.add_alternative(message.html, subtype="html")
    return mail.as_bytes()


def run(users: int, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    from notifier.digest import compose_digest
    from notifier.mime import MessageBuilder
    from notifier.render import RenderCache, Templates, Unsubscribe

    state, recipients, items, _ = build_state(users)
    unsubscribe = Unsubscribe(b"bench", "mailto:r@bench.invalid?subject=OPTOUT%20{user}%20{token}")
    now_ns = time.time_ns()
    by_zone = sorted(range(len(recipients)), key=lambda k: recipients[k].tz)
    builder = MessageBuilder(SENDER)
    templates = Templates()

    def compose(order: list[int], shared: RenderCache | None) -> tuple[list[Any], float]:
        """The digests of `order`, and the CPU each took (ms)."""
        started = time.process_time()
        made = [
            compose_digest(
                recipients[k],
                state,
                items[k],
                now_ns,
                unsubscribe,
                shared or RenderCache(templates, state, now_ns),
            )
            for k in order
        ]
        return made, (time.process_time() - started) / len(order) * 1000

    rows: list[dict[str, float]] = []
    for number in range(rounds):
        made, alone = compose(list(range(len(recipients))), None)
        _, one_run = compose(by_zone, RenderCache(templates, state, now_ns))
        started = time.process_time()
        for message in made:
            builder.build(message, time.time())
        mime = (time.process_time() - started) / len(made) * 1000
        started = time.process_time()
        for message in made:
            stdlib_mail(message, time.time())
        stdlib = (time.process_time() - started) / len(made) * 1000
        row = {
            "compose_alone_ms": alone,
            "compose_one_run_ms": one_run,
            "mime_ms": mime,
            "mime_stdlib_ms": stdlib,
            "mime_ratio": stdlib / mime,
        }
        log(f"round {number + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
        rows.append(row)
    best = {k: min(row[k] for row in rows) for k in rows[0]}
    median = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
    return best, median


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench compose", description=__doc__)
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args(argv)
    best, median = run(options.users, options.rounds)
    print(f"compose: CPU per digest over {options.users} users, best / median of {options.rounds}")
    for label, key in (
        ("compose, a fresh cache each   ", "compose_alone_ms"),
        ("compose, one cache, zone order", "compose_one_run_ms"),
        ("MIME bytes (MessageBuilder)   ", "mime_ms"),
        ("MIME bytes (stdlib generator) ", "mime_stdlib_ms"),
    ):
        print(f"  {label}  {best[key]:.3f} / {median[key]:.3f} ms")
    print(f"  stdlib / MessageBuilder, median of the rounds' ratios: {median['mime_ratio']:.1f}x")
    results = {"options": vars(options), "best_ms": best, "median_ms": median}
    path = save_results("compose", results)
    log(f"saved {path}")
    return 0
