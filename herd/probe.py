"""A running server's STATUS, asked over a plain blocking socket (for `herd status` and `herd up`,
which run no reactor)."""

from __future__ import annotations

import json
import socket

STATUS_TIMEOUT = 1.0


def dial_host(host: str) -> str:
    """Where to reach a server that listens on `host` (a wildcard address: on loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def ask_status(host: str, port: int, timeout: float = STATUS_TIMEOUT) -> dict[str, str] | None:
    """A server's peer links by its STATUS command, or None if it does not answer."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            connection.sendall(b"STATUS\n")
            connection.shutdown(socket.SHUT_WR)
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = connection.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return None
    if not reply.startswith(b"STATUS "):
        return None
    try:
        peers = json.loads(reply[len(b"STATUS ") :])["peers"]
    except (ValueError, KeyError, TypeError):
        return None
    return {str(peer): str(state) for peer, state in peers.items()}
