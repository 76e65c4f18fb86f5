"""`herd talk [SERVER]`: a line-protocol client for people, so no step of the docs needs `nc`.

On a terminal (stdin and stdout both TTYs): a prompt_toolkit prompt with line editing and a
history file; every line the server sends is shown above the prompt as it arrives, pushes
included, made safe for the terminal (`talk_core.for_terminal`).  Ctrl-D or Ctrl-C half-closes
the connection, shows what still comes for `LINGER_SECONDS` and exits 0; the server closing
ends the prompt too.  Lines are shown through `run_in_terminal`, awaited before the next read,
so a server faster than the terminal is slowed down, not buffered without bound.

From a pipe: a stream copy both ways with the bytes exactly as on the wire, like `nc`: stdin to
the socket as it is read (one thread; half-close at its end), the socket to stdout until the
server closes (exit 0).  Either way, a server that cannot be reached is one line on stderr and
exit 1.  What to dial and the pure rules are in `herd.clients.talk_core`.

With `[tls]` in the config, both modes speak TLS, trusting the herd's CA only and checking the
name or address dialed (`herd.reach.client_context`); a certificate that does not pass is "cannot
connect", exit 1.  From a pipe, TLS runs in one thread (`_TlsPump`: an `ssl.SSLObject` is not for
two threads at once) and half-closes with `close_notify`, which the server takes as a TCP FIN
(herd/tls.py).  On a terminal, asyncio's TLS cannot half-close: leaving shows what comes for
`LINGER_SECONDS`, then closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import select
import socket
import ssl
import sys
import threading
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from herd.clients.talk_core import (
    LineSplitter,
    Target,
    TargetError,
    for_terminal,
    history_path,
    keep_in_history,
    resolve_target,
)
from herd.reach import TlsStream, client_context, connect

if TYPE_CHECKING:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import History

    from herd.config import HerdConfig

CONNECT_SECONDS = 10.0
LINGER_SECONDS = 1.0  # after Ctrl-D / Ctrl-C: how long what is still coming is shown
CHUNK = 64 * 1024  # bytes read or written at once: all that a copy holds


def talk(config: HerdConfig, spec: str | None) -> int:
    """`herd talk`: resolve SERVER, then the terminal or the pipe mode, over TLS when the
    config has `[tls]` (a CA that cannot be read is the caller's ConfigError)."""
    servers = {name: (server.host, server.port) for name, server in config.servers.items()}
    try:
        target = resolve_target(spec, servers)
    except TargetError as error:
        _say(f"herd talk: {error}")
        return 2
    context = client_context(config)
    if os.isatty(0) and os.isatty(1):
        return talk_terminal(target, _history(), context)
    return talk_pipe(target, 0, 1, context)


def _say(message: str) -> None:
    with contextlib.suppress(OSError):
        print(message, file=sys.stderr, flush=True)


def _where(target: Target) -> str:
    address = f"{target.host}:{target.port}"
    return target.label if target.label == address else f"{target.label} ({address})"


def _cannot_connect(target: Target, error: OSError) -> None:
    _say(f"herd talk: cannot connect to {_where(target)}: {_reason(error)}")


def _reason(error: OSError) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"its certificate is not trusted ({error.verify_message})"
    if isinstance(error, ssl.SSLError):
        return f"TLS failed ({error.reason or error})"
    return error.strerror or str(error)


# --- from a pipe ---------------------------------------------------------------------------


def talk_pipe(
    target: Target, stdin_fd: int, stdout_fd: int, context: ssl.SSLContext | None = None
) -> int:
    """Copy `stdin_fd` to the server and the server to `stdout_fd`, byte for byte, until the
    server closes; half-close when stdin ends.  0, or 1 if the server cannot be reached.
    With `context`, over TLS (`_TlsPump`)."""
    if context is not None:
        return _talk_pipe_tls(target, stdin_fd, stdout_fd, context)
    try:
        connection = socket.create_connection((target.host, target.port), CONNECT_SECONDS)
    except OSError as error:
        _cannot_connect(target, error)
        return 1
    with connection:
        connection.settimeout(None)
        sender = threading.Thread(
            target=_copy_in, args=(stdin_fd, connection), name="talk-stdin", daemon=True
        )
        sender.start()
        try:
            _copy_out(connection, stdout_fd)
        except KeyboardInterrupt:
            return 130
    return 0


def _copy_in(stdin_fd: int, connection: socket.socket) -> None:
    """stdin to the socket as it is read, then the half-close.  A server gone (or a socket
    closed by the other thread) ends it quietly: the reading side reports the end."""
    with contextlib.suppress(OSError):
        while chunk := _read(stdin_fd):
            connection.sendall(chunk)
        connection.shutdown(socket.SHUT_WR)


def _read(fd: int) -> bytes:
    """A chunk of stdin; b"" at its end, or when it cannot be read at all."""
    try:
        return os.read(fd, CHUNK)
    except OSError:
        return b""


def _copy_out(connection: socket.socket, stdout_fd: int) -> None:
    """The socket to stdout until the server closes (a reset ends it too, said on stderr)."""
    while True:
        try:
            chunk = connection.recv(CHUNK)
        except ConnectionResetError:
            _say("herd talk: the server reset the connection")
            return
        except OSError as error:
            _say(f"herd talk: the connection failed: {error.strerror or error}")
            return
        if not chunk:
            return
        _write_all(stdout_fd, chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# --- from a pipe, over TLS -----------------------------------------------------------------


def _talk_pipe_tls(target: Target, stdin_fd: int, stdout_fd: int, context: ssl.SSLContext) -> int:
    try:
        stream = connect(target.host, target.port, CONNECT_SECONDS, context)
    except OSError as error:  # ssl.SSLCertVerificationError included
        _cannot_connect(target, error)
        return 1
    assert isinstance(stream, TlsStream)
    with stream:
        try:
            _TlsPump(stream, stdin_fd, stdout_fd).run()
        except KeyboardInterrupt:
            return 130
    return 0


class _TlsPump:
    """`talk_pipe` over a TLS connection whose handshake is done, in one thread: a poll over
    stdin and the socket (made non-blocking).  stdin is encrypted as it is read, and read only
    while less than `CHUNK` bytes of records wait for the socket, so a server that stops
    reading holds stdin back rather than filling memory, while its replies are still read;
    what the socket brings is decrypted to stdout as it comes.  At stdin's end, `close_notify`
    (the half-close); the end is the server's `close_notify` or its FIN."""

    def __init__(self, stream: TlsStream, stdin_fd: int, stdout_fd: int) -> None:
        self.stream = stream
        self.stdin_fd = stdin_fd
        self.stdout_fd = stdout_fd
        self.records = bytearray()  # encrypted, not yet on the socket
        self.reading = True  # stdin not at its end yet
        self.sending = True  # the socket still takes what is sent

    def run(self) -> None:
        sock = self.stream.sock
        sock.setblocking(False)
        poll = select.poll()
        if not self._deliver():  # what came along with the handshake
            return
        while True:
            if self.reading and len(self.records) < CHUNK:
                poll.register(self.stdin_fd, select.POLLIN)
            else:
                with contextlib.suppress(KeyError):
                    poll.unregister(self.stdin_fd)
            poll.register(sock, select.POLLIN | (select.POLLOUT if self.records else 0))
            for fd, events in poll.poll():
                if fd != sock.fileno():
                    self._read_stdin()
                    continue
                if events & select.POLLOUT:
                    self._send()
                if events & ~select.POLLOUT and not self._receive():
                    return

    def _read_stdin(self) -> None:
        chunk = _read(self.stdin_fd)
        try:
            if chunk:
                self.stream.tls.write(chunk)
            else:
                self.reading = False
                with contextlib.suppress(ssl.SSLWantReadError):
                    self.stream.tls.unwrap()  # sends close_notify; the server's comes later
        except ssl.SSLError:  # the connection is broken: the reading side says so
            self._stop_sending()
        self._queue()

    def _queue(self) -> None:
        records = self.stream.outgoing.read()
        if self.sending:
            self.records += records

    def _send(self) -> None:
        """As much as the socket takes.  A server gone ends the sending quietly, as the thread
        of the plain mode does: the reading side reports the end."""
        try:
            sent = self.stream.sock.send(self.records)
        except BlockingIOError:
            return
        except OSError:
            self._stop_sending()
            return
        del self.records[:sent]

    def _stop_sending(self) -> None:
        self.sending = self.reading = False
        self.records.clear()

    def _receive(self) -> bool:
        """What the socket has, decrypted to stdout; False at the end."""
        try:
            data = self.stream.sock.recv(CHUNK)
        except BlockingIOError:
            return True
        except ConnectionResetError:
            _say("herd talk: the server reset the connection")
            return False
        except OSError as error:
            _say(f"herd talk: the connection failed: {error.strerror or error}")
            return False
        if not data:
            self.stream.incoming.write_eof()
            self._deliver()
            return False  # a FIN, with close_notify or without: no more bytes either way
        self.stream.incoming.write(data)
        return self._deliver()

    def _deliver(self) -> bool:
        """Every byte the TLS object can decrypt now, to stdout; False at the server's
        `close_notify` (or a broken stream, said on stderr)."""
        while True:
            try:
                chunk = self.stream.tls.read(CHUNK)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return False
            except ssl.SSLError as error:
                _say(f"herd talk: the connection failed: {error.reason or error}")
                return False
            if not chunk:
                return False
            _write_all(self.stdout_fd, chunk)
        self._queue()  # TLS may have something to answer (a key update)
        return True


# --- on a terminal -------------------------------------------------------------------------


def _history() -> History:
    """The history file under the user's state directory; in memory only if there is no home."""
    from prompt_toolkit.history import InMemoryHistory

    try:
        home = Path.home()
    except (RuntimeError, KeyError):
        return InMemoryHistory()
    return _file_history(history_path(os.environ, home))


def _file_history(path: Path) -> History:
    from prompt_toolkit.history import FileHistory

    class QuietFileHistory(FileHistory):
        """A FileHistory that never stops the prompt (a file that cannot be read or written is
        left alone), writes the file for its user only (0600, in a 0700 folder), and keeps
        lines carrying a secret in memory only (`talk_core.keep_in_history`)."""

        def load_history_strings(self) -> Iterable[str]:
            try:
                return list(super().load_history_strings())
            except (OSError, ValueError):
                return []

        def store_string(self, string: str) -> None:
            if not keep_in_history(string):
                return
            entry = f"\n# {datetime.datetime.now()}\n" + "".join(
                f"+{line}\n" for line in string.split("\n")
            )
            with contextlib.suppress(OSError):
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                with os.fdopen(descriptor, "ab") as file:
                    file.write(entry.encode("utf-8", "replace"))

    return QuietFileHistory(path)


def talk_terminal(target: Target, history: History, context: ssl.SSLContext | None = None) -> int:
    """The prompt until Ctrl-D, Ctrl-C or the server closing: 0, or 1 if it cannot connect.
    With `context`, over TLS."""
    try:
        return asyncio.run(_terminal(target, history, context))
    except KeyboardInterrupt:  # a second Ctrl-C, while leaving
        return 0


async def _terminal(target: Target, history: History, context: ssl.SSLContext | None) -> int:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.patch_stdout import patch_stdout

    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                target.host,
                target.port,
                ssl=context,
                server_hostname=None if context is None else target.host,
            ),
            CONNECT_SECONDS,
        )
    except (OSError, TimeoutError) as error:
        _cannot_connect(target, error)
        return 1
    _say(f"herd talk: connected to {_where(target)}; Ctrl-D leaves")
    session: PromptSession[str] = PromptSession(history=history)
    shown = asyncio.create_task(_show(reader))
    shown.add_done_callback(lambda _: _end_prompt(session))
    left = False
    try:
        with patch_stdout():
            while not shown.done():
                try:
                    line = await session.prompt_async(
                        f"{target.label}> ", pre_run=partial(_end_if_done, session, shown)
                    )
                except (EOFError, KeyboardInterrupt):
                    left = not shown.done()
                    break
                if shown.done():
                    break
                writer.write(line.encode("utf-8", "surrogateescape") + b"\n")
                try:
                    await writer.drain()
                except OSError:
                    break
            if left:
                await _leave(writer, shown)
            else:
                await asyncio.wait({shown}, timeout=LINGER_SECONDS)  # the last lines shown
                print("herd talk: the server closed the connection", file=sys.stderr)
    finally:
        shown.cancel()
        writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await writer.wait_closed()
    return 0


async def _show(reader: asyncio.StreamReader) -> None:
    """Every line from the server, shown above the prompt, until it closes."""
    from prompt_toolkit.application import run_in_terminal

    splitter = LineSplitter()
    while True:
        try:
            chunk = await reader.read(CHUNK)
        except OSError:
            chunk = b""
        lines = splitter.feed(chunk) if chunk else splitter.finish()
        if lines:
            await run_in_terminal(partial(_write_lines, lines))
        if not chunk:
            return


def _write_lines(lines: list[bytes]) -> None:
    stream = sys.__stdout__
    assert stream is not None  # a terminal is there: the prompt runs on it
    text = "".join(f"{for_terminal(line)}\n" for line in lines)
    stream.buffer.write(text.encode(stream.encoding or "utf-8", "backslashreplace"))
    stream.buffer.flush()


def _end_prompt(session: PromptSession[str]) -> None:
    """The server closed: the prompt ends as if Ctrl-D had been typed."""
    app = session.app
    if app.is_running and not app.is_done:
        app.exit(exception=EOFError())


def _end_if_done(session: PromptSession[str], shown: asyncio.Task[None]) -> None:
    if shown.done():
        _end_prompt(session)


async def _leave(writer: asyncio.StreamWriter, shown: asyncio.Task[None]) -> None:
    """Half-close (not over TLS: asyncio cannot), and show what still comes for a moment
    (until the server closes)."""
    with contextlib.suppress(OSError):
        if writer.can_write_eof():
            writer.write_eof()
    await asyncio.wait({shown}, timeout=LINGER_SECONDS)
