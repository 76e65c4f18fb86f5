"""IAMAT in process, without sockets: CPU per IAMAT through `LineConnection`, the dispatch, the
location handler, the group commit (inline, on the same thread) and the traffic log, on a server
built by the protocol tests' `make_node`.  Two trees compare line for line with it, run back to
back: `python -m bench.tools.iamat_inprocess [--runs N]` from each tree's root.

Each run sends 200 batches of 100 IAMATs (new clients) on one connection and keeps the median
batch; the runs' figures are printed sorted.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from twisted.internet.task import Clock

from tests.protocol.harness import make_node

BATCHES = 200
PER_BATCH = 100


def one_run() -> float:
    """Microseconds of CPU per IAMAT: the median batch of one run."""
    clock = Clock()
    clock.advance(1_700_000_000)
    with tempfile.TemporaryDirectory() as directory:
        node = make_node(Path(directory), "Bailey", ("Bona",), clock)
        connection, transport = node.client()
        per_iamat = []
        for batch in range(BATCHES):
            data = b"".join(
                b"IAMAT c%d +34.068930-118.445127 %d.5\n"
                % (batch * PER_BATCH + i, 1_700_000_000 + batch)
                for i in range(PER_BATCH)
            )
            started = time.process_time()
            connection.dataReceived(data)
            clock.advance(0)
            per_iamat.append((time.process_time() - started) / PER_BATCH)
            transport.clear()
        node.close()
    return statistics.median(per_iamat) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = sorted(one_run() for _ in range(parser.parse_args().runs))
    print("CPU per IAMAT, median batch of each run (us):", " ".join(f"{r:.1f}" for r in runs))


if __name__ == "__main__":
    main()
