"""Peer links and replication integrity (issue 9, defects 1 and 2), on real `herd run` processes.

- anything a client can make a server store must be floodable, and no line on a peer link
  (over-long, unreadable) may hold the link: it is skipped, and its update marked read;
- a line cut by the end of a peer connection is never applied nor marked;
- anti-entropy: servers find and repair differences that catch-up cannot see.

A "fake peer" here is a test client that knows the herd secret: it does the dialer's handshake
(`herd.operator.dial_handshake`) as a configured server that is not running, then speaks peer
lines.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from herd.operator import dial_handshake
from tests.support.herd import SECRET, Herd, config_text, running_herd
from tests.support.lines import Client, exchange, now_time, pipeline
from tests.support.polling import HerdError, stays_false, wait_until

POSITION = b"+34.068930-118.445127"


class FakePeer(Client):
    """A link to `acceptor` as the configured (not running) server `dialer`."""

    def __init__(self, port: int, dialer: bytes, acceptor: bytes, instance: bytes) -> None:
        super().__init__(port)
        self.send(dial_handshake(SECRET.encode(), dialer, acceptor, self.send, self.line))
        sync = self.line().split()
        assert sync[0] == b"SYNC", sync
        self.known, self.mark = sync[2], int(sync[3])  # what the server has read of us
        self.send(b"SYNC %s - 0\n" % instance)

    def alive(self) -> bool:
        """Whether the server still keeps the link: it answers PING (skipping other lines)."""
        self.send(b"PING\n")
        try:
            while True:
                if self.line() == b"PONG\n":
                    return True
        except (HerdError, OSError):
            return False


def mark_of(herd: Herd, name: str, fake: bytes, instance: bytes) -> int:
    """How far `name` says it has read the fake peer's updates (its SYNC on a new link)."""
    with FakePeer(herd.port(name), fake, name.encode(), instance) as peer:
        assert peer.known == instance, (peer.known, instance)
        return peer.mark


def write_config(herd: Herd, links: tuple[tuple[str, str], ...], extra: str = "") -> None:
    text = config_text(herd.ports, links, max_line=herd.max_line)
    herd.config_path.write_text(text.replace("[herd]\n", "[herd]\n" + extra, 1))


def logged(herd: Herd, name: str, text: bytes) -> bool:
    """Whether `name` has logged `text` (its log is written in batches: poll for it)."""
    return text in herd.stderr_path(name).read_bytes()


def links_flap(herd: Herd) -> bool:
    return not herd.links_up()


# --- defect 1: one line partitions a server for good -------------------------------------------


@pytest.mark.timeout(60)
def test_an_unfloodable_report_is_refused_and_links_stay_up(
    tmp_path: Path, places_seed: Path
) -> None:
    """The reported case: a 33,000-digit time at the default max_line. Its AT line (the time
    and a diff as long) would make a `U` line over max_line: refused, and nothing flaps."""
    with running_herd(
        tmp_path,
        names=("Bailey", "Bona", "Clark"),
        links=(("Bailey", "Bona"), ("Bona", "Clark")),
        max_line=65536,
        seed=places_seed,
    ) as herd:
        herd.up()
        line = b"IAMAT huge " + POSITION + b" 1" + b"7" * 33_000
        assert exchange(herd.port("Bailey"), line + b"\n") == b"? " + line + b"\n"
        assert herd.at_line("Bailey", b"huge") is None
        assert stays_false(lambda: links_flap(herd), 2.0), herd.diagnose()
        after = herd.iamat("Bailey", b"after-huge", POSITION, now_time())
        herd.wait_knows(herd.names, b"after-huge", after, timeout=5.0)


@pytest.mark.timeout(90)
def test_an_over_long_record_already_stored_does_not_make_links_flap(
    tmp_path: Path, places_seed: Path
) -> None:
    """A store written before the fix holds a record no peer can take: catch-up after catch-up,
    the links stay up and the other updates flow."""
    links = (("Bailey", "Bona"), ("Bona", "Clark"))
    with running_herd(
        tmp_path, names=("Bailey", "Bona", "Clark"), links=links, seed=places_seed
    ) as herd:
        herd.up()
        first = herd.iamat("Bailey", b"before", POSITION, now_time())
        herd.wait_knows(herd.names, b"before", first, timeout=5.0)
        assert herd.terminate("Bailey") == 0
        huge = b"AT Bailey -1.000000000 huge " + POSITION + b" " + b"1" * 2000
        with sqlite3.connect(herd.data_dir / "Bailey.sqlite") as db:
            (seq,) = db.execute("SELECT max(seq) FROM locations").fetchone()
            db.execute("INSERT INTO locations VALUES (?, ?, ?)", (b"huge", seq + 1, huge))
        for restart in range(3):
            if restart:
                herd.kill("Bona")
            herd.start("Bona" if restart else "Bailey")
            herd.wait_answering()
            herd.wait_links()
            assert stays_false(lambda: links_flap(herd), 1.5), herd.diagnose()
            client = b"flows-%d" % restart
            line = herd.iamat("Bailey", client, POSITION, now_time())
            herd.wait_knows(herd.names, client, line, timeout=5.0)
        assert herd.at_line("Bailey", b"huge") is not None, "kept where it is"
        assert herd.at_line("Bona", b"huge") is None


@pytest.mark.timeout(60)
def test_a_peer_skips_an_over_long_line_marks_it_read_and_keeps_the_link(
    tmp_path: Path, places_seed: Path
) -> None:
    """From a fake peer: an update over max_line (arriving in pieces), then a good one. The
    link stays, the good update is applied and flooded on, and the mark moves past both."""
    links = (("Bailey", "Bona"), ("Bailey", "Clark"))
    with running_herd(
        tmp_path, names=("Bailey", "Bona", "Clark"), links=links, seed=places_seed
    ) as herd:
        herd.up("Bailey", "Bona")  # Clark stays down: the test speaks for it
        with FakePeer(herd.port("Bailey"), b"Clark", b"Bailey", b"fakeclark1") as clark:
            long_at = b"AT Clark +0.000000000 too-long " + POSITION + b" 1" + b"5" * 3000
            clark.send(b"U 7 " + long_at[:500])
            time.sleep(0.05)  # the rest in later reads: the skipping spans several
            clark.send(long_at[500:2000])
            time.sleep(0.05)
            good = b"AT Clark +0.000000000 after-long " + POSITION + b" 1796600000.5"
            clark.send(long_at[2000:] + b"\nU 8 " + good + b"\n")
            herd.wait_knows(("Bailey", "Bona"), b"after-long", good, timeout=5.0)
            assert clark.alive(), "the link was dropped"
        assert herd.at_line("Bailey", b"too-long") is None
        assert mark_of(herd, "Bailey", b"Clark", b"fakeclark1") == 8
        assert herd.links_up()


# --- defect 2: a peer that dies mid-write ------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_line_cut_by_the_end_of_a_peer_link_is_neither_applied_nor_marked(
    tmp_path: Path, places_seed: Path
) -> None:
    links = (("Bailey", "Bona"), ("Bailey", "Clark"))
    with running_herd(
        tmp_path, names=("Bailey", "Bona", "Clark"), links=links, seed=places_seed
    ) as herd:
        herd.up("Bailey", "Bona")
        complete = b"AT Clark +0.000000000 whole " + POSITION + b" 1796600000.11692"
        cut = b"AT Clark +0.000000000 cut " + POSITION + b" 1796600000.11692"
        with FakePeer(herd.port("Bailey"), b"Clark", b"Bailey", b"fakeclark2") as clark:
            clark.send(b"U 1 " + complete + b"\nU 2 " + cut[:-8])
            clark.sock.shutdown(socket.SHUT_WR)
            assert clark.at_eof(), "the server closes the link after the peer's end"
        herd.wait_knows(("Bailey", "Bona"), b"whole", complete, timeout=5.0)
        assert mark_of(herd, "Bailey", b"Clark", b"fakeclark2") == 1
        assert herd.at_line("Bailey", b"cut") is None
        assert herd.at_line("Bona", b"cut") is None
        wait_until(lambda: logged(herd, "Bailey", b"in the middle of a line"), 5.0, "the log")


def stored(herd: Herd, name: str) -> dict[bytes, bytes]:
    """Every location in a server's store (read beside the running server: WAL allows it)."""
    path = herd.data_dir / f"{name}.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT client, at_line FROM locations").fetchall()
    return {bytes(client): bytes(line) for client, line in rows}


class HoldingProxy:
    """A TCP relay in front of a server, for the links dialed to it.  While `hold` is set it
    stops reading from the dialer, with a small receive buffer, so the dialer's writes back up
    into its own memory: killing the dialer then cuts its stream at whatever byte its kernel
    had taken, as a real peer that dies in the middle of a large flood does."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.hold = threading.Event()
        self.stop = threading.Event()
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                dialer, _ = self.listener.accept()
            except TimeoutError:
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:  # not listening yet: the dialer retries
                dialer.close()
                continue
            self.sockets += [dialer, upstream]
            for source, sink, holds in ((dialer, upstream, True), (upstream, dialer, False)):
                thread = threading.Thread(
                    target=self._pipe, args=(source, sink, holds), daemon=True
                )
                thread.start()
                self.threads.append(thread)

    def _pipe(self, source: socket.socket, sink: socket.socket, holds: bool) -> None:
        source.settimeout(0.1)
        while not self.stop.is_set():
            if holds and self.hold.is_set():
                time.sleep(0.01)
                continue
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                return
            try:
                sink.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(2)
        for sock in self.sockets:
            sock.close()
        self.listener.close()


@pytest.mark.timeout(120)
def test_after_a_kill_mid_flood_every_server_holds_what_the_origin_holds(
    tmp_path: Path, places_seed: Path
) -> None:
    """Bailey is SIGKILLed in the middle of a large flood to Bona (Bona is behind a relay that
    stops reading, so megabytes are still unsent). Once Bailey is back and the links have
    caught up, every store holds exactly what Bailey's does."""
    links = (("Bailey", "Bona"), ("Bona", "Clark"))
    with running_herd(
        tmp_path,
        names=("Bailey", "Bona", "Clark"),
        links=links,
        max_line=8192,
        seed=places_seed,
    ) as herd:
        proxy = HoldingProxy(herd.port("Bona"))
        try:
            # Bailey dials Bona; its own config sends it to the relay instead
            ports = {**herd.ports, "Bona": proxy.port}
            bailey_config = tmp_path / "bailey.toml"
            bailey_config.write_text(config_text(ports, links, max_line=herd.max_line))
            herd.start("Bona", "Clark")
            herd.start("Bailey", config=bailey_config)
            herd.wait_answering()
            herd.wait_links()
            proxy.hold.set()
            # Nearly all of each line is its time, so the cut falls there and leaves a valid,
            # wrong record if it were applied; 2,000 lines of 7 KB back up far past the relay.
            pipeline(
                herd.port("Bailey"),
                [
                    b"IAMAT k%05d %s %s%s" % (i, POSITION, now_time(), b"7" * 7000)
                    for i in range(2_000)
                ],
                batch=100,
            )
            herd.kill("Bailey")
            proxy.hold.clear()
            herd.start("Bailey", config=bailey_config)
            herd.wait_answering()
            herd.wait_links()
            origin = stored(herd, "Bailey")
            assert len(origin) >= 2_000

            def same_everywhere() -> bool:
                return all(stored(herd, name) == origin for name in ("Bona", "Clark"))

            wait_until(same_everywhere, 20.0, lambda: f"the stores to agree\n{herd.diagnose()}")
            # Whether the kill leaves half a line at Bona depends on the kernel: a FIN sends
            # what Bailey's kernel held (ending mid-line), an RST (Bailey had unread input, a
            # LEASE say) drops it. The half line itself is tested deterministically by
            # test_a_line_cut_by_the_end_of_a_peer_link_is_neither_applied_nor_marked.
        finally:
            proxy.close()


# --- anti-entropy -------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_anti_entropy_repairs_records_catch_up_cannot_see(
    tmp_path: Path, places_seed: Path
) -> None:
    """With the herd down, one server's store loses a record and holds another one truncated
    (as a cut line used to leave it), its catch-up marks untouched. Started again, within a
    few rounds every server holds the origin's records again."""
    links = (("Bailey", "Bona"), ("Bona", "Clark"))
    with running_herd(
        tmp_path, names=("Bailey", "Bona", "Clark"), links=links, seed=places_seed
    ) as herd:
        write_config(herd, links, "anti_entropy_seconds = 0.5\n")
        herd.up()
        clients = [b"ae-%d" % i for i in range(40)]
        lines = pipeline(
            herd.port("Bailey"),
            [b"IAMAT %s %s 1796600000.11692" % (client, POSITION) for client in clients],
        )
        expected = dict(zip(clients, lines, strict=True))
        herd.wait_converged(herd.names, expected, timeout=10.0)
        for name in herd.names:
            assert herd.terminate(name) == 0
        with sqlite3.connect(herd.data_dir / "Clark.sqlite") as db:
            db.execute("DELETE FROM locations WHERE client = ?", (b"ae-1",))
            truncated = expected[b"ae-2"].replace(b"1796600000.11692", b"179660000")
            db.execute("UPDATE locations SET at_line = ? WHERE client = ?", (truncated, b"ae-2"))
        with sqlite3.connect(herd.data_dir / "Bona.sqlite") as db:
            db.execute("DELETE FROM locations WHERE client = ?", (b"ae-3",))
        herd.up()
        assert herd.at_line("Clark", b"ae-2") == truncated, "the corruption is in place"
        herd.wait_converged(herd.names, expected, timeout=15.0)
