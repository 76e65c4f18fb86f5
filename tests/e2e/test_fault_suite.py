"""Faults an unlucky operator meets, on real processes: a server killed again during its own
catch-up, a server frozen (SIGSTOP) past the keepalive bound, an SMTP server and a Prosody that
accept connections and then stall.

test_faults.py covers partitions, a kill and restart with catch-up, a short SIGSTOP, the whole
herd killed, clean stops.  Here, what must hold after each fault is checked on the records
themselves: every server's database holds exactly the same locations and operations, byte for
byte, and the servers that were not hit kept answering within `ANSWER_SECONDS` all along.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.support.herd import Herd, running_herd
from tests.support.lines import Client, Session, at_lines, now_time, peer_states, pipeline
from tests.support.polling import HerdError, stays_false, wait_until
from tests.support.ports import HOST
from tests.support.smtp import SmtpProcess
from tests.support.users import add_user

from .bot_harness import NOTICE_SECONDS, Scene, bot_scene
from .notify_harness import NotifyHerd, notify_setup, outbox_rows

pytestmark = pytest.mark.timeout(120)

TRIO = ("Bailey", "Bona", "Campbell")
TRIANGLE = (("Bailey", "Bona"), ("Bailey", "Campbell"), ("Bona", "Campbell"))
POSITION = b"+34.068930-118.445127"
ANSWER_SECONDS = 1.0  # a server that was not hit answers a probe within this, during the fault
CONVERGE_SECONDS = 20.0
KEEPALIVE_DROP_SECONDS = 25.0  # docs/protocol.md §7.5: a silent link is aborted after 15-20 s
DELIVERY_SECONDS = 30.0
STILL_QUEUED = (["pending"], ["sending"])  # one outbox row, not delivered and not given up


# --- records, read from each server's database ------------------------------------------------


def records(herd: Herd, name: str) -> tuple[dict[bytes, bytes], dict[str, bytes]]:
    """(client -> AT line, op id -> op JSON) as `name` holds them on disk (read only; the
    server may be running: WAL readers do not disturb it)."""
    path = herd.data_dir / f"{name}.sqlite"
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)) as db:
        locations = {
            _blob(client): _blob(line)
            for client, line in db.execute("SELECT client, at_line FROM locations")
        }
        ops = {str(op): _blob(line) for op, line in db.execute("SELECT op_id, line FROM ops")}
    return locations, ops


def _blob(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def same_records(herd: Herd, names: tuple[str, ...]) -> bool:
    held = [records(herd, name) for name in names]
    return all(entry == held[0] for entry in held[1:])


def record_differences(herd: Herd, names: tuple[str, ...]) -> str:
    held = {name: records(herd, name) for name in names}
    first = names[0]
    parts = []
    for name in names[1:]:
        for what, mine, theirs in (
            ("locations", _keyed(held[first][0]), _keyed(held[name][0])),
            ("ops", _keyed(held[first][1]), _keyed(held[name][1])),
        ):
            differing = [
                key for key in mine.keys() | theirs.keys() if mine.get(key) != theirs.get(key)
            ]
            if differing:
                sample = [(key, mine.get(key), theirs.get(key)) for key in differing[:3]]
                parts.append(f"{first} vs {name}: {len(differing)} {what} differ, e.g. {sample}")
    return "; ".join(parts) or "none"


def _keyed(table: dict[bytes, bytes] | dict[str, bytes]) -> dict[str | bytes, bytes]:
    return dict(table.items())


def wait_same_records(herd: Herd, names: tuple[str, ...], timeout: float) -> None:
    wait_until(
        lambda: same_records(herd, names),
        timeout,
        lambda: (
            f"every server to hold the same records: {record_differences(herd, names)}\n"
            + herd.diagnose()
        ),
    )


# --- probes: the servers that were not hit keep answering --------------------------------------


class Prober:
    """A thread that asks each of `names` STATUS and an IAMAT, over and over, and keeps the
    slowest answer and any failure (a server that does not answer within the bound)."""

    def __init__(self, herd: Herd, names: tuple[str, ...]) -> None:
        self.herd = herd
        self.names = names
        self.slowest = 0.0
        self.failures: list[str] = []
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10.0)

    def _run(self) -> None:
        clients = {name: Client(self.herd.port(name), ANSWER_SECONDS * 5) for name in self.names}
        try:
            serial = 0
            while not self._stop.is_set():
                for name, client in clients.items():
                    serial += 1
                    report = b"IAMAT probe-%d %s %s" % (serial, POSITION, now_time())
                    for line, answer in ((b"STATUS", b"STATUS "), (report, b"AT ")):
                        started = time.monotonic()
                        try:
                            reply = client.request(line)
                        except (HerdError, OSError) as error:
                            self.failures.append(f"{name}: {line!r} not answered: {error}")
                            return
                        elapsed = time.monotonic() - started
                        self.slowest = max(self.slowest, elapsed)
                        if not reply.startswith(answer) or elapsed >= ANSWER_SECONDS:
                            self.failures.append(
                                f"{name}: {line!r} -> {reply!r} in {elapsed:.2f} s"
                            )
                self.rounds += 1
                self._stop.wait(0.1)
        finally:
            for client in clients.values():
                client.close()

    def check(self) -> None:
        assert not self.failures, self.failures[:5]
        assert self.rounds > 0, "the prober never finished a round"


# --- 1. SIGKILL during catch-up ----------------------------------------------------------------


@pytest.fixture
def trio(tmp_path: Path, places_seed: Path) -> Iterator[Herd]:
    with running_herd(tmp_path, TRIO, TRIANGLE, seed=places_seed) as herd:
        herd.up()
        herd.warm_up()
        yield herd


def stored_count(herd: Herd, name: str) -> int:
    """How many locations and operations `name` holds on disk (cheap enough to poll)."""
    path = herd.data_dir / f"{name}.sqlite"
    if not path.exists():
        return 0
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)) as db:
        try:
            (count,) = db.execute(
                "SELECT (SELECT count(*) FROM locations) + (SELECT count(*) FROM ops)"
            ).fetchone()
        except sqlite3.OperationalError:  # the schema is not there yet
            return 0
    return int(count)


def test_sigkill_during_catch_up_then_restart_leaves_every_server_with_the_same_records(
    trio: Herd,
) -> None:
    """Campbell is down while Bailey and Bona take thousands of reports and planning changes;
    it comes back, is SIGKILLed as soon as its catch-up has begun, and comes back again: in the
    end all three databases hold exactly the same records, and every acknowledged report."""
    herd = trio
    herd.kill("Campbell")
    token = add_user(herd.config_path, "alice", "alice@example.net")
    base = int(time.time())
    acked: dict[bytes, bytes] = {}
    for round_number, name in enumerate(("Bailey", "Bona") * 4):
        clients = [b"catch-%d-%04d" % (round_number, index) for index in range(1000)]
        lines = [b"IAMAT %s %s %d.%d" % (c, POSITION, base, round_number) for c in clients]
        replies = pipeline(herd.port(name), lines)
        assert all(reply.startswith(b"AT %s " % name.encode()) for reply in replies), replies[:3]
        acked.update(zip(clients, replies, strict=True))
    with Session(herd.port("Bona"), "alice", token) as alice:
        event_id = alice.event("PLAN Catch-up dinner")["id"]
        alice.send(b"".join(b"COMMENT %s note %d\n" % (event_id.encode(), n) for n in range(300)))
        for _ in range(300):
            assert alice.line().startswith(b"EVENT "), "a comment refused"
    wait_same_records(herd, ("Bailey", "Bona"), CONVERGE_SECONDS)
    total = stored_count(herd, "Bailey")

    before = stored_count(herd, "Campbell")
    herd.start("Campbell")
    wait_until(
        lambda: stored_count(herd, "Campbell") > before,
        CONVERGE_SECONDS,
        lambda: f"Campbell to start its catch-up\n{herd.diagnose('Campbell')}",
    )
    herd.kill("Campbell")
    caught = stored_count(herd, "Campbell")
    assert caught < total, f"the kill came after the catch-up ({caught} of {total} records)"

    herd.up("Campbell")
    wait_same_records(herd, TRIO, CONVERGE_SECONDS)
    stored = at_lines(herd.port("Campbell"), acked)
    lost = {client: line for client, line in acked.items() if stored[client] != line}
    assert not lost, (
        f"{len(lost)} acknowledged reports differ at Campbell, e.g. {list(lost.items())[:3]}"
    )


# --- 2. SIGSTOP past the keepalive bound ------------------------------------------------------


def test_a_server_frozen_past_the_keepalive_bound_is_dropped_and_loses_nothing(
    trio: Herd,
) -> None:
    """Bona is SIGSTOPped long enough for Bailey and Campbell to drop their links to it; they
    keep answering and flooding to each other meanwhile.  A report sent to the frozen Bona waits
    in its socket and is answered after SIGCONT; then the links come back and all three hold the
    same records."""
    herd = trio
    base = int(time.time())
    herd.pause("Bona")
    try:
        frozen = time.monotonic()
        waiting = Client(herd.port("Bona"), timeout=KEEPALIVE_DROP_SECONDS + 20.0)
        waiting.send(b"IAMAT frozen-client %s %d.5\n" % (POSITION, base))
        acked: dict[bytes, bytes] = {}
        with Prober(herd, ("Bailey", "Campbell")) as prober:

            def dropped() -> bool:
                return all(
                    (answer := peer_states(herd.port(name))) is not None
                    and answer.get("Bona") == "down"
                    for name in ("Bailey", "Campbell")
                )

            batch = 0
            while not dropped():
                assert time.monotonic() - frozen < KEEPALIVE_DROP_SECONDS, (
                    f"links to a frozen Bona still up after {KEEPALIVE_DROP_SECONDS} s\n"
                    + herd.diagnose()
                )
                name = ("Bailey", "Campbell")[batch % 2]
                clients = [b"during-%d-%d" % (batch, i) for i in range(20)]
                replies = pipeline(
                    herd.port(name), [b"IAMAT %s %s %d" % (c, POSITION, base) for c in clients]
                )
                acked.update(zip(clients, replies, strict=True))
                batch += 1
                time.sleep(0.5)
        prober.check()
        herd.wait_converged(("Bailey", "Campbell"), acked, 5.0)
    finally:
        herd.resume("Bona")
    answer = waiting.line()
    waiting.close()
    assert answer.startswith(b"AT Bona ") and b" frozen-client " in answer, answer
    acked[b"frozen-client"] = answer[:-1]
    herd.wait_links(timeout=15.0)
    herd.wait_converged(TRIO, acked, CONVERGE_SECONDS)
    wait_same_records(herd, TRIO, CONVERGE_SECONDS)


# --- 3. an SMTP server that accepts and then stalls --------------------------------------------


class StallingListener:
    """A loopback TCP listener that accepts every connection and never writes a byte (an SMTP
    server hung before its banner); `close()` drops the listener and every connection."""

    def __init__(self, port: int) -> None:
        self.server = socket.create_server((HOST, port))
        self.server.settimeout(0.05)  # a blocked accept() would outlive close() on Linux
        self.accepted: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.server.accept()
            except TimeoutError:
                continue
            with self._lock:
                self.accepted.append(connection)

    def count(self) -> int:
        with self._lock:
            return len(self.accepted)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.server.close()
        with self._lock:
            for connection in self.accepted:
                connection.close()


@pytest.fixture
def notify(tmp_path: Path, places_seed: Path) -> Iterator[tuple[NotifyHerd, SmtpProcess]]:
    """A three-server herd configured with `[smtp]`, and an SMTP server (not started) on its
    port; every process is gone afterwards."""
    with notify_setup(tmp_path, places_seed, names=TRIO, links=TRIANGLE) as started:
        yield started


def invite(herd: NotifyHerd, tokens: dict[str, str], title: str) -> str:
    with Session(herd.port("Bailey"), "alice", tokens["alice"]) as alice:
        event_id = str(alice.event(f"PLAN {title}")["id"])
        alice.event(f"INVITE {event_id} bob")
    return event_id


def bailey_rows(herd: NotifyHerd, subject: str) -> list[str]:
    return [row.state for row in outbox_rows(herd.database("Bailey")) if row.subject == subject]


def mails_to(smtp: SmtpProcess, subject: str) -> list[str]:
    return [m.message_id for m in smtp.mails() if str(m.message["Subject"]) == subject]


def test_an_smtp_server_that_accepts_and_stalls_delays_no_client_and_loses_no_mail(
    notify: tuple[NotifyHerd, SmtpProcess],
) -> None:
    """First a listener that accepts and never says a word, then the real SMTP server frozen
    with SIGSTOP: the herd answers its clients all along, the outbox keeps each mail, and each is
    delivered exactly once when a working SMTP server is back."""
    herd, smtp = notify
    herd.up()
    subject = "alice invited you to Hung banner"
    tokens = {
        user: add_user(herd.config_path, user, f"{user}@example.net") for user in ("alice", "bob")
    }

    staller = StallingListener(herd.smtp_port)
    try:
        with Prober(herd, herd.names) as prober:
            invite(herd, tokens, "Hung banner")
            wait_until(lambda: staller.count() > 0, 10.0, "the outbox to connect to the staller")
            assert stays_false(lambda: bailey_rows(herd, subject) not in STILL_QUEUED, 2.0)
        prober.check()
    finally:
        staller.close()
    smtp.start()
    wait_until(lambda: mails_to(smtp, subject), DELIVERY_SECONDS, f"{subject!r} delivered")

    frozen_subject = "alice invited you to Frozen relay"
    os.kill(smtp_pid(smtp), signal.SIGSTOP)
    try:
        with Prober(herd, herd.names) as prober:
            invite(herd, tokens, "Frozen relay")
            wait_until(lambda: bailey_rows(herd, frozen_subject), 10.0, "the mail in the outbox")
            assert stays_false(lambda: bool(mails_to(smtp, frozen_subject)), 3.0)
            assert bailey_rows(herd, frozen_subject) in STILL_QUEUED
        prober.check()
    finally:
        os.kill(smtp_pid(smtp), signal.SIGCONT)
    wait_until(lambda: mails_to(smtp, frozen_subject), DELIVERY_SECONDS, f"{frozen_subject!r}")
    wait_until(
        lambda: bailey_rows(herd, subject) == bailey_rows(herd, frozen_subject) == ["delivered"],
        DELIVERY_SECONDS,
        lambda: f"both rows delivered: {outbox_rows(herd.database('Bailey'))}",
    )
    assert stays_false(lambda: len(smtp.mails()) > 2, 1.0), [
        m.message["Subject"] for m in smtp.mails()
    ]
    assert len(mails_to(smtp, subject)) == len(mails_to(smtp, frozen_subject)) == 1


def smtp_pid(smtp: SmtpProcess) -> int:
    assert smtp.proc is not None and smtp.proc.poll() is None, "the SMTP server is not running"
    return smtp.proc.pid


# --- 4. a Prosody that accepts and then stalls ------------------------------------------------


@pytest.fixture
def scene(tmp_path: Path, places_seed: Path) -> Iterator[Scene]:
    with bot_scene(tmp_path, TRIO, TRIANGLE, places_seed, ("alice", "bob")) as built:
        built.herd.up()
        for name in ("alice", "bob"):
            built.herd.add_user(name, jid=built.prosody.jid(name))
        yield built


def prosody_pid(scene: Scene) -> int:
    return int((scene.prosody.folder / "prosody.pid").read_text().strip())


def prosody_answers(scene: Scene, timeout: float = 1.0) -> bool:
    """Whether Prosody answers a stream header with anything within `timeout` (a stopped one
    accepts the connection, in the kernel, and says nothing)."""
    header = (
        f"<?xml version='1.0'?><stream:stream to='{scene.prosody.domain}' version='1.0' "
        "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    )
    with socket.create_connection((scene.prosody.host, scene.prosody.port), timeout) as sock:
        sock.sendall(header.encode())
        try:
            return bool(sock.recv(4096))
        except TimeoutError:
            return False


def test_a_stalled_prosody_delays_no_client_and_its_notices_arrive_after_sigcont(
    scene: Scene,
) -> None:
    """Prosody is SIGSTOPped past the bot's delivery confirmation timeout while alice plans on
    the line: the herd answers her at once, and once Prosody runs again bob gets each notice
    (retries carry the same message id, so a client can drop a repeat)."""
    herd = scene.herd
    bob = scene.friend("bob")
    pid = prosody_pid(scene)
    os.kill(pid, signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        assert not prosody_answers(scene), "Prosody still answers: the SIGSTOP missed it"
        with Prober(herd, TRIO) as prober, herd.line("Bona", "alice") as line:
            started = time.monotonic()
            event = line.event("PLAN Stalled chat")["id"]
            line.event(f"INVITE {event} bob")
            line.event(f"PROPOSE {event} TIME 2099-06-01T12:00Z")
            assert time.monotonic() - started < 3 * ANSWER_SECONDS
            wait_until(
                lambda: any(row[0] == "xmpp" for row in herd.pending("Bona")),
                10.0,
                "the notices in Bona's outbox",
            )
            # past the channel's confirm timeout (10 s): the herd gives up on the first try
            while time.monotonic() - stopped < 12.0:
                time.sleep(0.2)
        prober.check()
    finally:
        os.kill(pid, signal.SIGCONT)
    for text in ('alice invited you to "Stalled chat"', "proposed a new time"):
        bob.wait_message(lambda m, t=text: t in m.body, text, NOTICE_SECONDS * 2)  # type: ignore[misc]
    wait_until(
        lambda: not [row for row in herd.pending("Bona") if row[0] == "xmpp"],
        30.0,
        lambda: f"Bona's outbox to be empty: {herd.pending('Bona')}",
    )
    bob.ping(scene.prosody.domain)
    for text in ('alice invited you to "Stalled chat"', "proposed a new time"):
        ids = {m.id for m in bob.from_bot() if text in m.body}
        assert len(ids) == 1, f"{text!r} arrived as {len(ids)} different messages: {bob.bodies()}"
