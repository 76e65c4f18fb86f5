"""Blocking connections to a server of the config, plain or TLS (`[tls]`), for the CLI (`herd
status`, `herd user`, `herd talk`) and the tests: where to dial, what to trust, and a half-close
that works on both (docs/protocol.md: a client may half-close and still get every reply).

TLS runs over a memory BIO (`ssl.SSLObject`) rather than `ssl.SSLSocket`, because the latter
cannot half-close: its `shutdown()` drops TLS from the socket and its `unwrap()` waits for the
server's `close_notify`. Here `shutdown_write()` sends `close_notify` and reading goes on until
the server's own `close_notify` (or, plain, until its FIN).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from typing import Protocol

from herd.config import ConfigError, HerdConfig, ServerConfig, dial_host

__all__ = [
    "LineStream",
    "PlainStream",
    "TlsStream",
    "client_context",
    "connect",
    "open_stream",
]

_CHUNK = 65536


def client_context(config: HerdConfig) -> ssl.SSLContext | None:
    """What a client trusts: the herd's CA only (None: the herd runs without TLS). A
    ConfigError naming `tls.ca` when the file cannot be read or holds no certificate."""
    if config.tls is None:
        return None
    try:
        context = ssl.create_default_context(cafile=str(config.tls.ca))
    except (OSError, ssl.SSLError) as error:
        problem = f"cannot use {config.tls.ca}: {getattr(error, 'strerror', None) or error}"
        raise ConfigError(config.path, "tls.ca", problem) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class LineStream(Protocol):
    """A blocking byte stream to a server."""

    def sendall(self, data: bytes) -> None: ...
    def recv(self, size: int = _CHUNK) -> bytes:
        """Up to `size` bytes; b"" once the server has closed."""

    def shutdown_write(self) -> None:
        """Say that nothing more will be sent; replies can still be read."""

    def settimeout(self, seconds: float | None) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> LineStream: ...
    def __exit__(self, *exc_info: object) -> None: ...


class PlainStream:
    """A TCP connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, size: int = _CHUNK) -> bytes:
        return self.sock.recv(size)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def settimeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> PlainStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class TlsStream:
    """TLS over a TCP connection, through memory BIOs (see the module's docstring). `sock`,
    `tls`, `incoming` and `outgoing` are there for a caller that drives the connection itself
    once the handshake is done (`herd talk` from a pipe, in one thread over a non-blocking
    socket)."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, hostname: str) -> None:
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=hostname)
        self._eof = False
        self._handshake()

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _fill(self) -> bool:
        """Read from the socket into the TLS object; False at the server's FIN."""
        data = self.sock.recv(_CHUNK)
        if not data:
            self.incoming.write_eof()
            return False
        self.incoming.write(data)
        return True

    def _handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    raise ConnectionResetError(
                        "the server closed during the TLS handshake"
                    ) from None
                continue
            self._flush()
            return

    def sendall(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def recv(self, size: int = _CHUNK) -> bytes:
        while not self._eof:
            try:
                return self.tls.read(size)
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    self._eof = True  # a FIN without close_notify: no more bytes either way
            except ssl.SSLZeroReturnError:
                self._eof = True  # the server's close_notify
        return b""

    def shutdown_write(self) -> None:
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.unwrap()  # sends close_notify, then wants the server's: read on
        self._flush()

    def settimeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> TlsStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def connect(
    host: str, port: int, timeout: float, context: ssl.SSLContext | None = None
) -> LineStream:
    """A connection to `host`:`port`, with TLS when `context` is given (checking the server's
    certificate for `host`). OSError (ssl.SSLError included) when it cannot be opened."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is None:
            return PlainStream(sock)
        return TlsStream(sock, context, host)
    except BaseException:
        sock.close()
        raise


def open_stream(
    config: HerdConfig, server: ServerConfig, timeout: float, context: ssl.SSLContext | None = None
) -> LineStream:
    """A connection to `server`'s client port, with TLS when the herd has `[tls]` (checking its
    certificate against the herd's CA and its `host`). OSError (ssl.SSLError included) when it
    cannot be opened."""
    if context is None:
        context = client_context(config)
    return connect(dial_host(server.host), server.port, timeout, context)
