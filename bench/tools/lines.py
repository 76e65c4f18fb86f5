"""A pipelining line-protocol client for the planning, push and chat benchmarks, and the
operator's side of the handshake (what `herd user add` does), kept open for many commands.

`LineClient` writes request lines and matches reply lines to them in order (every planning
command, `AUTH`, `SUBSCRIBE` and the operator commands answer with exactly one line); lines
starting `PUSH ` are not replies and go to `on_push` with the time they were read.  Everything
has a deadline: `BenchError` when a reply does not come.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, cast

from bench.harness import BenchError
from herd.config import LimitsConfig
from herd.ops import OPERATOR
from herd.tokens import hash_token, new_nonce, new_token, peer_mac
from herd.wire.handshake import Handshake, NotChallenged, WrongProof
from tests.support.ports import HOST

REPLY_TIMEOUT = 120.0
# A server refuses an AUTH while this many from the same address wait for their token check
# (`[limits] auth_per_address`, default): every bench client comes from one loopback address.
AUTH_PER_ADDRESS = LimitsConfig().auth_per_address
PushHandler = Callable[[bytes, int], None]


class LineClient(asyncio.Protocol):
    """One connection: `request(line)` gives a future for its reply line (without `\\n`)."""

    def __init__(self, on_push: PushHandler | None = None) -> None:
        self.on_push = on_push
        self.transport: asyncio.Transport | None = None
        self.pending: deque[asyncio.Future[bytes]] = deque()
        self.buffer = b""
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.replies = 0
        self.pushes = 0

    @classmethod
    async def open(
        cls, port: int, on_push: PushHandler | None = None, host: str = HOST
    ) -> LineClient:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: cls(on_push), host, port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        lines = (self.buffer + data if self.buffer else data).split(b"\n")
        self.buffer = lines.pop()
        for line in lines:
            if line.startswith(b"PUSH "):
                self.pushes += 1
                if self.on_push is not None:
                    self.on_push(line, now)
                continue
            self.replies += 1
            if self.pending:
                future = self.pending.popleft()
                if not future.done():
                    future.set_result(line)

    def connection_lost(self, error: Exception | None) -> None:
        for future in self.pending:
            if not future.done():
                future.set_exception(ConnectionError(f"connection lost: {error}"))
        self.pending.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def request(self, line: bytes) -> asyncio.Future[bytes]:
        return self.requests([line])[0]

    def requests(self, lines: Sequence[bytes]) -> list[asyncio.Future[bytes]]:
        """Write `lines` in one write; a future per reply."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in lines]
        self.pending.extend(futures)
        self.transport.write(b"".join(line + b"\n" for line in lines))
        return futures

    async def ask(self, line: bytes, timeout: float = REPLY_TIMEOUT) -> bytes:
        try:
            return await asyncio.wait_for(self.request(line), timeout)
        except TimeoutError:
            raise BenchError(f"no reply to {line[:80]!r} in {timeout:.0f} s") from None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def closed_loop(
    client: LineClient,
    lines: Iterable[bytes],
    inflight: int,
    latencies_ns: list[int] | None = None,
    timeout: float = REPLY_TIMEOUT,
) -> list[bytes]:
    """Send `lines` keeping at most `inflight` unanswered; the replies in order."""
    replies: list[bytes] = []
    window: deque[tuple[asyncio.Future[bytes], int]] = deque()
    for line in lines:
        if len(window) >= inflight:
            future, sent = window.popleft()
            replies.append(await _within(future, timeout))
            if latencies_ns is not None:
                latencies_ns.append(time.perf_counter_ns() - sent)
        window.append((client.request(line), time.perf_counter_ns()))
    while window:
        future, sent = window.popleft()
        replies.append(await _within(future, timeout))
        if latencies_ns is not None:
            latencies_ns.append(time.perf_counter_ns() - sent)
    return replies


async def _within(future: asyncio.Future[bytes], timeout: float) -> bytes:
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout)
    except TimeoutError:
        raise BenchError(f"no reply in {timeout:.0f} s") from None


def reply_json(reply: bytes, word: bytes = b"EVENT") -> Any:
    """The JSON of `<WORD> <json>`; BenchError for anything else (an `ERR …`, a `? …`)."""
    head, _, body = reply.partition(b" ")
    if head != word:
        raise BenchError(f"expected {word.decode()}, got {reply[:300]!r}")
    return json.loads(body)


# --- users -------------------------------------------------------------------------------------


def user_token() -> tuple[str, str]:
    """A fresh token and the hash the server keeps (scrypt: ~4 ms)."""
    token = new_token(secrets.token_bytes(32))
    return token, hash_token(token, secrets.token_bytes(16))


class Operator:
    """An operator connection (`herd user`'s handshake), kept open for many commands."""

    def __init__(self, client: LineClient) -> None:
        self.client = client

    @classmethod
    async def open(cls, secret: bytes, name: str, port: int) -> Operator:
        client = await LineClient.open(port)
        sign = partial(peer_mac, secret)
        handshake = Handshake.dialer(sign, OPERATOR.encode(), name.encode(), new_nonce())
        line = await client.ask(handshake.send_hello().rstrip(b"\n"), timeout=10)
        outcome = handshake.receive_challenge(line)
        if isinstance(outcome, NotChallenged):
            raise BenchError(f"{name} refused the operator handshake: {line!r}")
        if isinstance(outcome, WrongProof):
            raise BenchError(f"{name} does not know the herd secret")
        assert client.transport is not None
        client.transport.write(outcome.auth)  # answered by nothing
        return cls(client)

    async def add_users(
        self, users: Sequence[str], token_hash: str, extra: Callable[[str], str] | None = None
    ) -> float:
        """`USER-ADD` every user (pipelined, 50 in flight); the seconds it took."""
        start = time.perf_counter()
        lines = [
            f"USER-ADD {user} {token_hash}{' ' + extra(user) if extra else ''}".encode()
            for user in users
        ]
        replies = await closed_loop(self.client, lines, 50)
        bad = [reply for reply in replies if not reply.startswith(b"OK ")]
        if bad:
            raise BenchError(f"{len(bad)} USER-ADD refused, e.g. {bad[0]!r}")
        return time.perf_counter() - start

    def close(self) -> None:
        self.client.close()


async def authed(
    port: int, user: str, token: str, on_push: PushHandler | None = None
) -> LineClient:
    """A connection authenticated as `user`."""
    client = await LineClient.open(port, on_push)
    reply = await client.ask(f"AUTH {user} {token}".encode(), timeout=60)
    if not reply.startswith(b"USER "):
        raise BenchError(f"AUTH {user} failed: {reply!r}")
    return client


async def authed_many(
    ports: Sequence[int],
    users: Sequence[str],
    token: str,
    on_push: Callable[[str], PushHandler] | None = None,
    concurrency: int = 64,
) -> list[LineClient]:
    """One authenticated connection per user, user i on ports[i % len(ports)]; at most
    `concurrency` logins at once, and no more per server than it lets one address have waiting."""
    gate = asyncio.Semaphore(concurrency)
    per_server = {port: asyncio.Semaphore(AUTH_PER_ADDRESS) for port in ports}

    async def one(index: int, user: str) -> LineClient:
        port = ports[index % len(ports)]
        async with gate, per_server[port]:
            handler = on_push(user) if on_push is not None else None
            return await authed(port, user, token, handler)

    return list(await asyncio.gather(*(one(i, u) for i, u in enumerate(users))))
