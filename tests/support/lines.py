"""Blocking line-protocol clients: one-shot exchanges, an interactive `Client`, and sessions
authenticated as a user (`Session`, `LineUser`)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from tests.support.polling import HerdError, wait_until
from tests.support.ports import HOST


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_to_eof(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server writes until it closes (within `timeout`)."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
        except TimeoutError:
            received = b"".join(chunks)
            raise HerdError(
                f"no EOF within {timeout} s; got {len(received)} bytes: ...{received[-300:]!r}"
            ) from None
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data`, half-close, and return every byte of the answer up to the server's close."""
    with connect(port, timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return read_to_eof(sock, timeout)


class Client:
    """An interactive line client: one connection, replies read as they come."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = connect(port, timeout)
        self.timeout = timeout
        self.buffer = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read more into the buffer; False on EOF."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HerdError(f"no reply within {self.timeout} s; buffered {self.buffer[-300:]!r}")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise HerdError(
                f"no reply within {self.timeout} s; buffered {self.buffer[-300:]!r}"
            ) from None
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def read_until(self, terminator: bytes) -> bytes:
        """Up to and including `terminator`; HerdError on timeout or EOF."""
        deadline = time.monotonic() + self.timeout
        while terminator not in self.buffer:
            if not self._fill(deadline):
                raise HerdError(f"EOF before {terminator!r}; buffered {self.buffer!r}")
        end = self.buffer.index(terminator) + len(terminator)
        data, self.buffer = self.buffer[:end], self.buffer[end:]
        return data

    def line(self) -> bytes:
        """One reply line, with its newline."""
        return self.read_until(b"\n")

    def request(self, line: bytes) -> bytes:
        """Send one line (newline added) and read one reply line."""
        self.send(line + b"\n")
        return self.line()

    def whatsat(self, line: bytes) -> bytes:
        """Send a WHATSAT (newline added) and read the whole reply (to `\\n\\n`, or a `?` line)."""
        self.send(line + b"\n")
        first = self.line()
        if first.startswith(b"? "):
            return first
        return first + self.read_until(b"\n\n")

    def at_eof(self, timeout: float = 5.0) -> bool:
        """Whether the server closes the connection (nothing more arrives) within `timeout`."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
        except HerdError:
            return False
        except ConnectionResetError:
            return True
        return True


def at_line(port: int, client: bytes) -> bytes | None:
    """The AT line a server has stored for `client` (without newline), None if it does not know
    the client, by `WHATSAT client 1 0`.  No answer in time counts as not known yet (a first
    WHATSAT waits for the places index to be built, seconds on a busy machine)."""
    try:
        reply = exchange(port, b"WHATSAT " + client + b" 1 0\n")
    except HerdError:
        return None
    first, _, _ = reply.partition(b"\n")
    if first.startswith(b"? "):
        return None
    if not first.startswith(b"AT "):
        raise HerdError(f"unexpected WHATSAT reply: {reply!r}")
    return first


def at_lines(port: int, clients: Iterable[bytes], batch: int = 200) -> dict[bytes, bytes | None]:
    """`at_line` for many clients over one interactive connection, pipelined in batches."""
    wanted = list(clients)
    result: dict[bytes, bytes | None] = {}
    with Client(port) as connection:
        for start in range(0, len(wanted), batch):
            chunk = wanted[start : start + batch]
            connection.send(b"".join(b"WHATSAT " + client + b" 1 0\n" for client in chunk))
            for client in chunk:
                first = connection.line()[:-1]
                if first.startswith(b"? "):
                    result[client] = None
                    continue
                assert first.startswith(b"AT "), first
                result[client] = first
                connection.read_until(b"\n\n")
    return result


def pipeline(port: int, lines: list[bytes], batch: int = 500) -> list[bytes]:
    """One-line replies (IAMAT, STATUS, errors) to many lines over one interactive connection,
    in batches (a batch's replies are read before the next is sent)."""
    replies: list[bytes] = []
    with Client(port) as connection:
        for start in range(0, len(lines), batch):
            chunk = lines[start : start + batch]
            connection.send(b"".join(line + b"\n" for line in chunk))
            replies += [connection.line()[:-1] for _ in chunk]
    return replies


def status(port: int, timeout: float = 2.0) -> dict[str, object] | None:
    """A server's STATUS answer as JSON, or None if it does not answer (yet)."""
    try:
        reply = exchange(port, b"STATUS\n", timeout)
    except (OSError, HerdError):
        return None
    if not reply.startswith(b"STATUS ") or not reply.endswith(b"\n"):
        return None
    decoded = json.loads(reply[len(b"STATUS ") :])
    assert isinstance(decoded, dict)
    return decoded


def peer_states(port: int, timeout: float = 2.0) -> dict[str, str] | None:
    """The peer links a server's STATUS shows (`{"Bona": "up", ...}`), or None if it does not
    answer."""
    answer = status(port, timeout)
    if answer is None:
        return None
    peers = answer["peers"]
    assert isinstance(peers, dict)
    return {str(peer): str(state) for peer, state in peers.items()}


def now_time() -> bytes:
    """The current POSIX time as an IAMAT time field, 9 decimals."""
    return b"%d.%09d" % divmod(time.time_ns(), 1_000_000_000)


class Session(Client):
    """A line client authenticated as `user` (AUTH is retried on new connections until the
    server knows the user: users are made on one server and flooded to the others)."""

    def __init__(self, port: int, user: str, token: str, timeout: float = 5.0) -> None:
        self.user = user
        deadline = time.monotonic() + timeout
        while True:
            super().__init__(port, timeout)
            try:
                reply = self.request(f"AUTH {user} {token}".encode())
            except BaseException:
                self.close()
                raise
            if reply.startswith(b"USER "):
                return
            self.close()
            if time.monotonic() >= deadline:
                raise HerdError(f"AUTH {user} at port {port}: {reply!r}")
            time.sleep(0.05)

    def __enter__(self) -> Session:
        return self

    def event(self, line: str | bytes) -> dict[str, Any]:
        """Send a planning line; its `EVENT` reply decoded (anything else fails the test)."""
        reply = self.request(line.encode() if isinstance(line, str) else line)
        assert reply.startswith(b"EVENT "), (line, reply)
        document = json.loads(reply[len(b"EVENT ") :])
        assert isinstance(document, dict)
        return document

    def user_set(self, field: str, value: str) -> dict[str, Any]:
        reply = self.request(f"USER SET {field} {value}".encode())
        assert reply.startswith(b"USER "), reply
        document = json.loads(reply[len(b"USER ") :])
        assert isinstance(document, dict)
        return document

    def wait_event(
        self, event_id: str, holds: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        """Until this server's view of the event satisfies `holds` (the flood has arrived)."""
        seen: list[bytes] = []

        def check() -> dict[str, Any] | None:
            reply = self.request(f"EVENT {event_id}".encode())
            seen[:] = [reply]
            if not reply.startswith(b"EVENT "):
                return None
            document = json.loads(reply[len(b"EVENT ") :])
            return document if holds(document) else None

        return wait_until(check, timeout, lambda: f"{event_id} as expected; last {seen!r}")


def option_ids(event: dict[str, Any], kind: str) -> list[str]:
    options = event[kind]
    assert isinstance(options, list)
    return [str(option["id"]) for option in options]


class LineUser:
    """A line-protocol client that reads each planning reply as (word, decoded JSON or text)."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.client = Client(port, timeout)

    def __enter__(self) -> LineUser:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def raw(self, line: str) -> str:
        return self.client.request(line.encode()).decode().rstrip("\n")

    def call(self, line: str) -> tuple[str, Any]:
        word, _, body = self.raw(line).partition(" ")
        if word in ("USER", "EVENT", "EVENTS", "SUGGEST"):
            return word, json.loads(body)
        return word, body

    def event(self, line: str) -> dict[str, Any]:
        """A line whose answer must be `EVENT {...}`."""
        word, document = self.call(line)
        assert word == "EVENT", f"{line!r} answered {word} {document}"
        assert isinstance(document, dict)
        return document
