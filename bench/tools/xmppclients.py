"""XMPP people for `bench xmpp_fanout` and `bench chat`: one process, many slixmpp sessions.

    python -m bench xmppclients hold  --port P --jids FILE [--password PW]
    python -m bench xmppclients blast --port P --jid JID --jids FILE
    python -m bench xmppclients echo  --port P --jid JID --reply TEXT

Every mode logs in (plain SASL on loopback, presence sent so chats to the bare JID reach the
session), prints `ready <sessions> <seconds> <rss MiB>`, then obeys lines on stdin:

- hold: `expect <substr>\\t<substr>…` — from now on, each session reports the first chat whose
  body holds every substring: `got <index> <CLOCK_MONOTONIC>` (comparable across processes);
  `chat <to> <sessions> <count> <pace s> <text>|<text>…` — the first <sessions> sessions each
  send <count> chats to <to>, one at a time, each after the answer to the one before (and no
  sooner than <pace> s after the previous one, jittered), texts in turn; prints `chat <json>`
  with every round trip in ms; `quit`.
- blast: `send <body>` — one chat with <body> to every JID of the file, as fast as slixmpp
  queues them; prints `sent <start> <end>` (monotonic).
- echo: answers every chat with <reply>.

Each session is a full slixmpp `ClientXMPP` with no plugins beyond the core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from slixmpp import JID, ClientXMPP
from slixmpp.stanza import Message

LOGIN_TIMEOUT = 120.0
LOGIN_CONCURRENCY = 40


def _rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/statm", "rb") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Session:
    def __init__(self, index: int, jid: str, password: str, host: str, port: int) -> None:
        self.index = index
        self.host, self.port = host, port
        loop = asyncio.get_running_loop()
        xmpp = ClientXMPP(
            f"{jid}/bench",
            password,
            loop=loop,
            plugin_config={"feature_mechanisms": {"unencrypted_plain": True, "use_mech": "PLAIN"}},
        )
        xmpp.enable_plaintext, xmpp.enable_starttls, xmpp.enable_direct_tls = True, False, False
        self.xmpp = xmpp
        self.started: asyncio.Future[None] = loop.create_future()
        self.expect: list[str] | None = None
        self.waiting: asyncio.Future[Message] | None = None
        self.waiting_from = ""
        self.on_chat: Any = None
        xmpp.add_event_handler("session_start", self._session_start)
        xmpp.add_event_handler("failed_all_auth", self._failed)
        xmpp.add_event_handler("message", self._message)

    def _session_start(self, _event: object) -> None:
        self.xmpp.send_presence()
        if not self.started.done():
            self.started.set_result(None)

    def _failed(self, _event: object) -> None:
        if not self.started.done():
            self.started.set_exception(RuntimeError(f"login refused for {self.xmpp.boundjid}"))

    def _message(self, msg: Message) -> None:
        if msg["type"] not in ("chat", "normal"):
            return
        body = msg["body"]
        if not body:
            return
        if self.on_chat is not None:
            self.on_chat(msg)
            return
        if self.waiting is not None and msg["from"].bare == self.waiting_from:
            if not self.waiting.done():
                self.waiting.set_result(msg)
            return
        if self.expect is not None and all(part in body for part in self.expect):
            self.expect = None
            out(f"got {self.index} {time.monotonic():.6f}")
            if self.index == 0:
                out("sample " + json.dumps(body))

    async def login(self) -> None:
        self.xmpp.connect(self.host, self.port)
        await asyncio.wait_for(self.started, LOGIN_TIMEOUT)

    async def logout(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.xmpp.disconnect(wait=1.0), 5)
        task = self.xmpp._run_out_filters
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def login_all(sessions: list[Session]) -> float:
    gate = asyncio.Semaphore(LOGIN_CONCURRENCY)
    start = time.monotonic()

    async def one(session: Session) -> None:
        async with gate:
            await session.login()

    await asyncio.gather(*(one(s) for s in sessions))
    return time.monotonic() - start


async def stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def chat_loop(
    session: Session, to: str, count: int, pace: float, texts: list[str]
) -> tuple[list[float], list[int]]:
    rtts: list[float] = []
    lengths: list[int] = []
    rng = random.Random(session.index)
    await asyncio.sleep(rng.random() * max(pace, 0.05))
    next_at = time.monotonic()
    for n in range(count):
        now = time.monotonic()
        if next_at > now:
            await asyncio.sleep(next_at - now)
        loop = asyncio.get_running_loop()
        session.waiting = loop.create_future()
        session.waiting_from = JID(to).bare
        sent = time.monotonic()
        session.xmpp.make_message(mto=JID(to), mbody=texts[n % len(texts)], mtype="chat").send()
        try:
            answer = await asyncio.wait_for(session.waiting, 60)
        except TimeoutError:
            rtts.append(float("inf"))
        else:
            rtts.append((time.monotonic() - sent) * 1000)
            lengths.append(len(answer["body"]))
        session.waiting = None
        next_at = sent + pace * (0.5 + rng.random())
    return rtts, lengths


async def hold(options: argparse.Namespace) -> None:
    jids = Path(options.jids).read_text().split()
    sessions = [
        Session(i, jid, options.password, options.host, options.port) for i, jid in enumerate(jids)
    ]
    seconds = await login_all(sessions)
    out(f"ready {len(sessions)} {seconds:.3f} {_rss_mib():.1f}")
    reader = await stdin_lines()
    chats: list[asyncio.Task[None]] = []
    while True:
        raw = await reader.readline()
        if not raw:
            break
        line = raw.decode().rstrip("\n")
        word, _, rest = line.partition(" ")
        if word == "expect":
            parts = rest.split("\t")
            for session in sessions:
                session.expect = parts
        elif word == "chat":
            to, n, count, pace, texts = rest.split(" ", 4)

            async def run_chat(
                to: str = to, n: str = n, count: str = count, pace: str = pace, texts: str = texts
            ) -> None:
                results = await asyncio.gather(
                    *(
                        chat_loop(s, to, int(count), float(pace), texts.split("|"))
                        for s in sessions[: int(n)]
                    )
                )
                out(
                    "chat "
                    + json.dumps(
                        {
                            "rtts": [rtt for r, _ in results for rtt in r],
                            "lengths": [n for _, ns in results for n in ns],
                        }
                    )
                )

            chats.append(asyncio.ensure_future(run_chat()))
        elif word == "rss":
            out(f"rss {_rss_mib():.1f}")
        elif word == "quit":
            break
    for task in chats:
        task.cancel()
    await asyncio.gather(*(s.logout() for s in sessions))


async def blast(options: argparse.Namespace) -> None:
    jids = Path(options.jids).read_text().split()
    sender = Session(0, options.jid, options.password, options.host, options.port)
    await login_all([sender])
    out(f"ready 1 0 {_rss_mib():.1f}")
    reader = await stdin_lines()
    targets = [JID(jid) for jid in jids]
    while True:
        raw = await reader.readline()
        if not raw:
            break
        word, _, rest = raw.decode().rstrip("\n").partition(" ")
        if word == "send":
            body = json.loads(rest)
            start = time.monotonic()
            for to in targets:
                sender.xmpp.make_message(mto=to, mbody=body, mtype="chat").send()
            out(f"sent {start:.6f} {time.monotonic():.6f}")
        elif word == "quit":
            break
    await sender.logout()


async def echo(options: argparse.Namespace) -> None:
    session = Session(0, options.jid, options.password, options.host, options.port)

    def answer(msg: Message) -> None:
        session.xmpp.make_message(mto=msg["from"], mbody=options.reply, mtype="chat").send()

    session.on_chat = answer
    await login_all([session])
    out(f"ready 1 0 {_rss_mib():.1f}")
    reader = await stdin_lines()
    while True:
        raw = await reader.readline()
        if not raw or raw.strip() == b"quit":
            break
    await session.logout()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench xmppclients", description=__doc__)
    parser.add_argument("mode", choices=("hold", "blast", "echo"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--password", default="bench-pw")
    parser.add_argument("--jids", default=None, help="file of JIDs, one per line")
    parser.add_argument("--jid", default=None)
    parser.add_argument("--reply", default="ok")
    options = parser.parse_args(argv)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete({"hold": hold, "blast": blast, "echo": echo}[options.mode](options))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
