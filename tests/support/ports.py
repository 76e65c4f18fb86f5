"""Free loopback ports for servers the tests and benchmarks start."""

from __future__ import annotations

import random
import socket
from pathlib import Path

HOST = "127.0.0.1"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports, random and checked by binding them.

    They are taken below the kernel's ephemeral range when there is room: a server's port is
    free while the server is down between a kill and a restart, and a port from the ephemeral
    range could meanwhile become the local end of some outgoing connection (a peer redialing,
    a test client), making the restart fail with EADDRINUSE.
    """
    low, _ = _ephemeral_range()
    candidates = list(range(20000, low)) if low - 20000 >= 1000 else []
    random.SystemRandom().shuffle(candidates)
    chosen: list[socket.socket] = []
    try:
        for port in candidates:
            if len(chosen) == count:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((HOST, port))
            except OSError:
                sock.close()
                continue
            chosen.append(sock)
        while len(chosen) < count:  # no room below the ephemeral range: let the kernel pick
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            chosen.append(sock)
        return [sock.getsockname()[1] for sock in chosen]
    finally:
        for sock in chosen:
            sock.close()
