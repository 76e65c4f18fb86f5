"""The SMTP sink of `bench digests`: the kit's aiosmtpd sink (`tests.support.smtp`), counting
every message and keeping none, on uvloop unless told otherwise.

Run as its own process: `python -m bench smtpsink --port PORT [--loop uvloop|asyncio]`.  It
prints `ready <port>` once listening; on SIGTERM it prints one JSON line (messages, bytes,
connections, and the CLOCK_MONOTONIC time of each message's 250 — comparable across processes
on Linux) and exits.  Nothing is written to disk.
"""

from __future__ import annotations

import sys
from functools import partial

from bench.tools.loadgen import new_event_loop
from tests.support import smtp


def main(argv: list[str]) -> int:
    return smtp.main(
        argv, prog="python -m bench smtpsink", loops={"uvloop": partial(new_event_loop, "uvloop")}
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
