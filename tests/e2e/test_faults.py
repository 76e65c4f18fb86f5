"""Breaking the herd on purpose: partitions, kills, restarts, clean stops.

Each test has a herd of its own (these tests kill servers).  Every wait is a poll with a
deadline; a server that was killed is queried only after it answers again.
"""

from __future__ import annotations

import itertools
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.support.herd import LINKS, NAMES, Herd, components, running_herd
from tests.support.lines import Client, at_lines, exchange, now_time, peer_states, pipeline
from tests.support.polling import HerdError, stays_false, wait_until

POSITION = b"+34.068930-118.445127"
PAIRS = list(itertools.combinations(NAMES, 2))


def wait_seen_down(herd: Herd, dead: tuple[str, ...]) -> None:
    """Until every running neighbour of a dead server shows its link `down`."""

    def seen() -> bool:
        for name in herd.running():
            states = peer_states(herd.port(name))
            if states is None:
                return False
            if any(states.get(peer) != "down" for peer in herd.peers[name] & set(dead)):
                return False
        return True

    wait_until(seen, 5.0, lambda: f"links to {dead} seen down\n{herd.diagnose()}")


# --- partitions --------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_every_pair_killed_partitions_exactly_as_the_topology_says(fresh_herd: Herd) -> None:
    """For each of the 10 pairs: kill both, report at every survivor; a survivor learns exactly
    the reports of its connected part.  Then bring the pair back: everyone learns everything."""
    herd = fresh_herd
    cut = 0
    for round_number, pair in enumerate(PAIRS):
        herd.kill(*pair)
        wait_seen_down(herd, pair)
        survivors = [name for name in NAMES if name not in pair]
        parts = components(survivors, LINKS)
        cut += len(parts) > 1
        lines = {
            origin: herd.iamat(
                origin, b"part-%d-%s" % (round_number, origin.encode()), POSITION, now_time()
            )
            for origin in survivors
        }

        def client(origin: str, round_number: int = round_number) -> bytes:
            return b"part-%d-%s" % (round_number, origin.encode())

        for part in parts:
            for origin in part:
                herd.wait_knows(part, client(origin), lines[origin], timeout=1.0)

        def leaked(parts: list[set[str]] = parts, alive: list[str] = survivors) -> bool:
            return any(
                herd.at_line(name, client(origin)) is not None
                for part in parts
                for name in part
                for origin in set(alive) - part
            )

        assert stays_false(leaked, 0.25), f"{pair} down: a report crossed the partition {parts}"

        herd.start(*pair)
        herd.wait_answering(*pair)
        herd.wait_links()
        # healed: the pair and every cut-off part catch up, with no new reports
        for origin, line in lines.items():
            herd.wait_knows(NAMES, client(origin), line, timeout=5.0)
    assert cut == 3, "Campbell+Bona, Clark+Campbell and Bona+Jaquez each cut the herd"


# --- restart and catch-up ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_killed_server_catches_up_on_restart_without_new_traffic(fresh_herd: Herd) -> None:
    herd = fresh_herd
    expected: dict[bytes, bytes] = {}
    base = int(time.time())

    def report(name: str, client: bytes, seconds: int) -> None:
        expected[client] = herd.iamat(name, client, POSITION, b"%d.5" % seconds)

    # Bailey dials both its links; Jaquez only accepts; Campbell comes back with no data at all.
    for round_number, (victim, wipe) in enumerate(
        [("Bailey", False), ("Jaquez", False), ("Campbell", True)]
    ):
        tag = victim.encode()
        report("Clark", b"known-" + tag, base + round_number)
        herd.wait_knows(NAMES, b"known-" + tag, expected[b"known-" + tag], timeout=2.0)

        herd.kill(victim)
        killed = time.monotonic()
        wait_seen_down(herd, (victim,))
        others = [name for name in NAMES if name != victim]
        # while it is down: a newer report of a client it knows, new clients at a neighbour and
        # at the far side, and two reports of one client of which only the newer must remain
        report(others[0], b"known-" + tag, base + 10 + round_number)
        report(others[1], b"new-near-" + tag, base + round_number)
        report(others[-1], b"new-far-" + tag, base + round_number)
        report(others[2], b"twice-" + tag, base + round_number)
        report(others[3], b"twice-" + tag, base + 20 + round_number)
        if victim != "Bailey":
            # Down for a while (its dialers back off), taking reports all along: the backoff is
            # capped, so it is still found within 2 s of coming back.
            batch = 0
            while time.monotonic() - killed < 2.5:
                clients = [b"busy-%s-%d-%d" % (tag, batch, i) for i in range(10)]
                replies = pipeline(
                    herd.port(others[batch % len(others)]),
                    [b"IAMAT %s %s %d" % (client, POSITION, base) for client in clients],
                )
                done = dict(zip(clients, replies, strict=True))
                herd.wait_converged(others, done, timeout=1.0)
                expected.update(done)
                batch += 1
        herd.wait_converged(others, expected, timeout=2.0)
        if wipe:
            for path in herd.data_dir.glob(f"{victim}.sqlite*"):
                path.unlink()

        herd.start(victim)
        herd.wait_answering(victim)
        # docs/protocol.md §7.2: a link is up within 2 s of both ends listening
        herd.wait_links(timeout=2.0)
        # only queries from here: it must learn everything by itself
        herd.wait_converged([victim], expected, timeout=5.0)
    herd.wait_converged(NAMES, expected, timeout=2.0)


# --- a hung peer -------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_stopped_peer_delays_neither_replies_nor_the_flood_to_the_others(
    fresh_herd: Herd,
) -> None:
    """Campbell (three links) is SIGSTOPped: its sockets stay open but nobody reads them, so
    the floods to it back up.  Bona's clients and the rest of the herd must not notice."""
    herd = fresh_herd
    others = ["Bailey", "Bona", "Clark", "Jaquez"]
    base = int(time.time())
    lines = [b"IAMAT hung-%04d %s %d.%04d" % (i, POSITION, base, i) for i in range(3000)]
    herd.pause("Campbell")
    try:
        started = time.monotonic()
        replies = pipeline(herd.port("Bona"), lines)
        elapsed = time.monotonic() - started
        assert all(reply.startswith(b"AT Bona ") for reply in replies)
        assert elapsed < 10.0, f"3000 reports took {elapsed:.1f} s with a peer stopped"
        herd.wait_knows(others, b"hung-2999", replies[-1], timeout=1.0)
        expected = {b"hung-%04d" % i: reply for i, reply in enumerate(replies)}
        herd.wait_converged(others, expected, timeout=5.0)
        # a server that does not answer is not up, whatever its open sockets say
        servers = herd.herd_status()["servers"]
        assert servers["Campbell"] == {"port": herd.port("Campbell"), "up": False}
        assert all(servers[name]["up"] for name in others)
    finally:
        herd.resume("Campbell")
    # woken up, it reads what backed up (or catches up) and is whole again
    herd.wait_converged(["Campbell"], expected, timeout=10.0)
    herd.wait_links()


# --- durability --------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_every_acknowledged_report_survives_killing_the_whole_herd(idle_herd: Herd) -> None:
    herd = idle_herd
    herd.up()
    herd.warm_up()
    clients = [b"durable-%02d" % index for index in range(50)]
    acked: dict[bytes, list[bytes]] = {client: [] for client in clients}
    base = int(time.time())
    connections = {name: Client(herd.port(name)) for name in NAMES}
    try:
        for round_number in range(4):
            for index, client in enumerate(clients):
                name = NAMES[(index + round_number) % len(NAMES)]
                when = b"%d.%09d" % (base + round_number, index)
                reply = connections[name].request(b"IAMAT %s %s %s" % (client, POSITION, when))
                assert reply.startswith(b"AT %s " % name.encode()), reply
                acked[client].append(reply[:-1])
    finally:
        for connection in connections.values():
            connection.close()
    herd.kill()

    # Each server alone first (no peers, so no catch-up): its own acknowledgements are there.
    isolated = herd.write_config(herd.root / "isolated.toml", links=())
    herd.start(config=isolated)
    herd.wait_answering()
    for name in NAMES:
        stored_lines = at_lines(herd.port(name), acked)
        for client, lines in acked.items():
            stored = stored_lines[client]
            own = [line for line in lines if line.startswith(b"AT %s " % name.encode())]
            if own:
                assert stored in lines[lines.index(own[-1]) :], (name, client, stored, own[-1])
            else:
                assert stored is None or stored in lines, (name, client, stored)
    for name in NAMES:
        assert herd.terminate(name) == 0

    # Then the herd again: everyone converges to the newest report of every client.
    herd.start()
    herd.wait_answering()
    herd.wait_links()
    herd.wait_converged(NAMES, {client: lines[-1] for client, lines in acked.items()}, 5.0)


@pytest.mark.timeout(60)
def test_sigterm_under_load_exits_cleanly_and_keeps_every_acknowledged_report(
    tmp_path: Path, places_seed: Path
) -> None:
    """A client pipelines reports while the server is told to stop: it exits 0 within a few
    seconds, and every report it acknowledged is there when it comes back."""
    with running_herd(tmp_path, names=("Bailey",), links=(), seed=places_seed) as herd:
        herd.up()
        base = int(time.time())
        acked: dict[bytes, bytes] = {}
        failures: list[BaseException] = []

        def load() -> None:
            try:
                with Client(herd.port("Bailey")) as client:
                    for batch in range(200):
                        clients = [b"load-%03d-%02d" % (batch, i) for i in range(50)]
                        client.send(
                            b"".join(b"IAMAT %s %s %d\n" % (c, POSITION, base) for c in clients)
                        )
                        for name in clients:
                            acked[name] = client.line()[:-1]
            except (HerdError, OSError):
                return  # the server stopped: what was acknowledged so far counts
            except BaseException as error:
                failures.append(error)

        writer = threading.Thread(target=load, daemon=True)
        writer.start()
        wait_until(lambda: len(acked) >= 1000, 20.0, "1000 reports acknowledged")
        started = time.monotonic()
        assert herd.terminate("Bailey") == 0
        assert time.monotonic() - started < 5.0
        writer.join(10.0)
        assert not writer.is_alive() and not failures, failures
        assert 1000 <= len(acked) < 10_000, "the stop came in the middle of the load"
        assert all(line.startswith(b"AT Bailey ") for line in acked.values())

        herd.start()
        herd.wait_answering()
        stored = at_lines(herd.port("Bailey"), acked)
        missing = {client: line for client, line in acked.items() if stored[client] != line}
        assert not missing, f"{len(missing)} acknowledged reports lost, e.g. {list(missing)[:3]}"


# --- clean stop, logs and herd status ----------------------------------------------------------


@pytest.mark.timeout(60)
def test_sigterm_stops_cleanly_logs_the_traffic_and_herd_status_shows_it(
    fresh_herd: Herd,
) -> None:
    herd = fresh_herd
    at = herd.iamat("Clark", b"logged", POSITION, now_time())
    requests = [b"WHATSAT logged 5 2", b"no such command", b"IAMAT logged " + POSITION + b" 1"]
    reply = exchange(herd.port("Clark"), b"".join(line + b"\n" for line in requests))
    assert reply.startswith(at + b"\n{") and reply.endswith(b"\n? no such command\n" + at + b"\n")

    started = time.monotonic()
    assert herd.terminate("Clark") == 0
    assert time.monotonic() - started < 5.0

    log = herd.log_path("Clark").read_bytes()
    stderr = herd.stderr_path("Clark").read_bytes()
    for line in [b"IAMAT logged " + POSITION + b" " + at.split()[-1], *requests]:
        # the log's layout is free (a time, the server, ...); the line must be there whole
        pattern = rb"(?m)^.* recv \S+ " + re.escape(line) + rb"$"
        assert re.search(pattern, log), f"{line!r} not logged as received"
        assert re.search(pattern, stderr), f"{line!r} not on stderr"
    for line in [at, b"? no such command"]:
        assert re.search(rb"(?m)^.* sent \S+ " + re.escape(line) + rb"$", log), line
    for peer in sorted(herd.peers["Clark"]):
        notes = [row for row in log.splitlines() if b" note " in row and peer.encode() in row]
        assert len(notes) >= 2, f"link to {peer} opened and dropped: {notes}"

    wait_seen_down(herd, ("Clark",))
    report = herd.herd_status()["servers"]
    assert isinstance(report, dict)
    assert report["Clark"] == {"port": herd.port("Clark"), "up": False}
    for name in NAMES:
        if name == "Clark":
            continue
        assert report[name] == {
            "port": herd.port(name),
            "up": True,
            "peers": {
                peer: ("down" if peer == "Clark" else "up") for peer in sorted(herd.peers[name])
            },
        }

    # back again with its data (the clean stop flushed it), and every link up
    herd.start("Clark")
    herd.wait_answering("Clark")
    assert herd.at_line("Clark", b"logged") == at
    herd.wait_links()
    assert all(entry["up"] for entry in herd.herd_status()["servers"].values())

    # SIGINT (Ctrl-C in a terminal) is a clean stop too
    assert herd.signal("Jaquez", signal.SIGINT) == 0
    for name in NAMES:
        if name != "Jaquez":
            assert herd.terminate(name) == 0
    for name in NAMES:
        assert b"Traceback" not in herd.stderr_path(name).read_bytes(), herd.diagnose(name)
