"""A real aiosmtpd server that accepts and counts every message (used by `bench digests`).

Run as its own process: `python -m bench smtpsink --port PORT [--loop uvloop|asyncio]`.  It
prints `ready <port>` once listening; on SIGTERM it prints one JSON line (messages, bytes,
connections, and the CLOCK_MONOTONIC time of each message's 250 — comparable across processes
on Linux) and exits.  Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time

from aiosmtpd.smtp import SMTP, Envelope, Session


class Counter:
    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.connections = 0
        self.times: list[float] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        self.messages += 1
        self.bytes += len(content)
        self.times.append(time.monotonic())
        return "250 2.0.0 OK"


class _Session(SMTP):
    def __init__(self, counter: Counter) -> None:
        super().__init__(
            counter,
            hostname="bench-sink",
            enable_SMTPUTF8=True,
            data_size_limit=10 * 1024 * 1024,
            loop=asyncio.get_running_loop(),
        )
        counter.connections += 1


async def serve(port: int) -> Counter:
    counter = Counter()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Session(counter), "127.0.0.1", port)
    bound = server.sockets[0].getsockname()[1]
    print(f"ready {bound}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()
    return counter


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench smtpsink")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    options = parser.parse_args(argv)
    from bench.loadgen import new_event_loop

    loop = new_event_loop(options.loop)
    try:
        counter = loop.run_until_complete(serve(options.port))
    finally:
        loop.close()
    json.dump(
        {
            "messages": counter.messages,
            "bytes": counter.bytes,
            "connections": counter.connections,
            "times": counter.times,
            "loop": options.loop,
        },
        sys.stdout,
    )
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
