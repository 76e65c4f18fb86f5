"""A running server's STATUS, asked over a blocking connection, plain or TLS (for `herd status`
and `herd up`, which run no reactor)."""

from __future__ import annotations

import json
import ssl

from herd.reach import connect

STATUS_TIMEOUT = 1.0


def ask_status(
    host: str, port: int, timeout: float = STATUS_TIMEOUT, tls: ssl.SSLContext | None = None
) -> dict[str, str] | None:
    """A server's peer links by its STATUS command, or None if it does not answer (`tls`: the
    herd's client context, `herd.reach.client_context`)."""
    try:
        with connect(host, port, timeout, tls) as connection:
            connection.sendall(b"STATUS\n")
            connection.shutdown_write()
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
