"""`python -m bench [NAME [OPTIONS]]`: run one benchmark, or with no name the whole suite.

    iamat        server CPU per IAMAT and requests/s: Renga (five-server herd) against the floor
    propagation  time until an update sent to Bailey is visible one and two hops away
    idle         memory per idle client connection (19,000 held), and IAMAT latency meanwhile
    catchup      time for a SIGKILLed server to learn the 10,000 updates it missed
    hostile      a normal client's IAMAT and AUTH while 30 connections flood one server
    web_page     server CPU per event page (50 invitees, 20 options), vs bare Jinja and twisted.web
    web_streams  one vote to 10,000 open event streams (SSE), vs a bare asyncio SSE fan-out

  Not in the default suite (each takes minutes, or needs Prosody):
    planning     10,000 events x 10 invitees, 100,000 votes: convergence, commands/s
    digests      10,000 digests through the outbox and SmtpChannel to aiosmtpd, vs smtplib
    compose      CPU per digest composed (with and without a shared cache) and built as MIME
    push         one change pushed to 1,000 line subscribers (SUBSCRIBE)
    xmpp_fanout  one decision to 1,000 XMPP users through Prosody, vs bare slixmpp
    chat         bot command round trips (user -> bot -> reply) under 100 chatting users
    floor        the baseline server alone (until SIGTERM)
    twisted_floor  the same on Twisted's asyncio reactor (until SIGTERM)
    web_floor    twisted.web serving one fixed page (until SIGTERM)
    sse_floor    a bare asyncio SSE fan-out server (until SIGTERM)
    sse_twisted_floor  the same on twisted.web (until SIGTERM)
    loadgen      the load generator alone (prints JSON)
    holder       holds idle connections open (used by `idle`)
    sseclients   holds event streams open and times one event's arrival (used by `web_streams`)

`python -m bench NAME --help` lists each one's options.  The benchmarks live in bench/suites/,
the baselines in bench/baselines/, the tools in bench/tools/.  Results are printed and saved as JSON
under bench/results/ (git-ignored); docs/benchmarks.md records the figures.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("iamat", "propagation", "idle", "catchup", "hostile", "web_page", "web_streams")
EXTRA = ("planning", "digests", "compose", "push", "xmpp_fanout", "chat")
BASELINES = ("floor", "twisted_floor", "web_floor", "sse_floor", "sse_twisted_floor")
TOOLS = ("loadgen", "holder", "smtpsink", "xmppclients", "sseclients")


def module_of(name: str) -> str:
    """The module that runs `name`: a suite (bench/suites), a baseline or a tool."""
    if name in BASELINES:
        return f"bench.baselines.{name}"
    if name in TOOLS:
        return f"bench.tools.{name}"
    return f"bench.suites.{name}"


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if not argv or argv[0] == "all":
        worst = 0
        for name in BENCHMARKS:
            module = importlib.import_module(module_of(name))
            worst = module.main([]) or worst
        return worst
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS + EXTRA + BASELINES + TOOLS:
        print(f"unknown benchmark {name!r}\n{__doc__}", file=sys.stderr)
        return 2
    module = importlib.import_module(module_of(name))
    code: int = module.main(rest)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
