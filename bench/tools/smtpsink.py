"""The SMTP sink of `bench digests`: the kit's aiosmtpd sink (`tests.support.smtp`), counting
every message and keeping none, on uvloop when it is installed, else on the asyncio loop.

Run as its own process: `python -m bench smtpsink --port PORT [--loop uvloop|asyncio]`.  It
prints `ready <port>` once listening; on SIGTERM it prints one JSON line (messages, bytes,
connections, the loop it ran on, and the CLOCK_MONOTONIC time of each message's 250 —
comparable across processes on Linux) and exits.  Nothing is written to disk.

uvloop is not a dependency (`make` does not install it): with it, the sink costs less CPU per
mail, which leaves more of the machine to the sender being measured.
"""

from __future__ import annotations

import sys
from functools import partial
from importlib.util import find_spec

from bench.tools.loadgen import new_event_loop
from tests.support import smtp


def main(argv: list[str]) -> int:
    loops = {"uvloop": partial(new_event_loop, "uvloop")} if find_spec("uvloop") else {}
    return smtp.main(argv, prog="python -m bench smtpsink", loops=loops)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
