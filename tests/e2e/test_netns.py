"""The five servers as five hosts: each `herd run` in its own network namespace, on its own
10.x address, linked to its peers by veth pairs and configured by address (`host`). Links are
cut with `ip link set … down` and healed.

1. One link cut (Campbell and Bona): reports made at either end during the cut still reach every
   server, by the other paths; both ends see the link go down, and it comes back once healed.
2. A partition (Jaquez's two links cut): each side takes reports the other does not see; once
   healed, every server knows every report within a bound (catch-up over the new links).

Run twice: plain TCP, and TLS (`[tls]`, a certificate per address from a CA the test makes).
Skipped, saying why, where namespaces cannot be made (not root, no `ip`, EPERM). Every
namespace and veth is deleted when the test ends, however it ends.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from herd.reach import connect
from tests.support.herd import LINKS, NAMES, REPO, SECRET
from tests.support.lines import now_time
from tests.support.netns import Hosts, NamespacesUnavailable, probe
from tests.support.polling import wait_until
from tests.support.testca import CertAuthority
from tests.support.users import herd_cli

PORT = 12001  # every host has its own network stack: the same port on each is free
HEAL_SECONDS = 30.0  # a healed link is re-dialed within ~1.5 s; catch-up follows at once
DOWN_SECONDS = 30.0  # a silent link is dropped after three 5 s keepalives


class NetHerd:
    """The herd's processes, one per namespace."""

    def __init__(self, root: Path, hosts: Hosts, tls: bool) -> None:
        self.root = root
        self.hosts = hosts
        self.context: ssl.SSLContext | None = None
        self.config_path = root / "herd.toml"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        listed: dict[str, list[str]] = {name: [] for name in NAMES}
        for a, b in LINKS:
            listed[a].append(b)
        lines = ["[herd]", 'data_dir = "var"', f"secret = {json.dumps(SECRET)}", ""]
        for name in NAMES:
            lines += [
                f"[servers.{name}]",
                f'host = "{hosts.address(name)}"',
                f"port = {PORT}",
                f"peers = {json.dumps(listed[name])}",
                "",
            ]
        if tls:  # each server a certificate for its own address, from a CA of the test's own
            ca = CertAuthority(root / "tls")
            for name in NAMES:
                ca.issue(hosts.address(name), stem=name)
            lines += [
                "[tls]",
                f"ca = {json.dumps(str(ca.ca_file))}",
                'certificate = "tls/{server}.pem"',
                'key = "tls/{server}.key"',
            ]
            self.context = ssl.create_default_context(cafile=str(ca.ca_file))
        self.config_path.write_text("\n".join(lines))

    def start(self) -> None:
        for name in NAMES:
            command = [sys.executable, "-m", "herd", "run", name, "--config", str(self.config_path)]
            with (self.root / f"{name}.stderr").open("ab") as stderr:
                self.procs[name] = subprocess.Popen(
                    self.hosts.command(name, command),
                    stdin=subprocess.DEVNULL,
                    stdout=stderr,
                    stderr=stderr,
                    cwd=REPO,
                )

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait(10)

    def diagnose(self) -> str:
        parts = []
        for name in NAMES:
            path = self.root / f"{name}.stderr"
            tail = path.read_bytes()[-1500:].decode("utf-8", "replace") if path.exists() else ""
            parts.append(f"--- {name} stderr:\n{tail}")
        return "\n".join(parts)

    def exchange(self, name: str, data: bytes, timeout: float = 3.0) -> bytes:
        with connect(self.hosts.address(name), PORT, timeout, self.context) as stream:
            stream.sendall(data)
            stream.shutdown_write()
            received = b""
            while chunk := stream.recv():
                received += chunk
            return received

    def peers(self, name: str) -> dict[str, str] | None:
        try:
            reply = self.exchange(name, b"STATUS\n")
        except OSError:
            return None
        if not reply.startswith(b"STATUS "):
            return None
        peers = json.loads(reply[len(b"STATUS ") :])["peers"]
        assert isinstance(peers, dict)
        return peers

    def link(self, a: str, b: str) -> str | None:
        peers = self.peers(a)
        return None if peers is None else peers.get(b)

    def iamat(self, name: str, client: bytes) -> bytes:
        line = b"IAMAT " + client + b" +34.068930-118.445127 " + now_time() + b"\n"
        reply = self.exchange(name, line)
        assert reply.startswith(b"AT " + name.encode() + b" "), reply
        return reply.rstrip(b"\n")

    def at_line(self, name: str, client: bytes) -> bytes | None:
        try:
            reply = self.exchange(name, b"WHATSAT " + client + b" 1 0\n", timeout=10.0)
        except OSError:
            return None
        first = reply.partition(b"\n")[0]
        return first if first.startswith(b"AT ") else None

    def wait_known(self, names: tuple[str, ...], reports: dict[bytes, bytes], bound: float) -> None:
        """Until every server in `names` holds every report."""

        def missing() -> list[tuple[str, bytes]]:
            return [
                (name, client)
                for name in names
                for client, line in reports.items()
                if self.at_line(name, client) != line
            ]

        wait_until(lambda: not missing(), bound, lambda: f"still missing {missing()}")


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    try:
        probe()
    except NamespacesUnavailable as why:
        pytest.skip(f"network namespaces unavailable: {why}")
    made = Hosts(NAMES, LINKS)
    try:
        made.create()
        yield made
    finally:
        made.close()
        assert made.leftovers() == []


@pytest.fixture(params=["plain", "tls"])
def net_herd(
    request: pytest.FixtureRequest, tmp_path: Path, hosts: Hosts, places_seed: Path
) -> Iterator[NetHerd]:
    """The herd on its hosts, its peer links and client ports plain TCP or TLS (`[tls]`)."""
    (tmp_path / "var").mkdir()
    for index in places_seed.glob("places-*.sqlite"):
        shutil.copyfile(index, tmp_path / "var" / index.name)
    herd = NetHerd(tmp_path, hosts, tls=request.param == "tls")
    try:
        herd.start()
        yield herd
    finally:
        herd.close()  # before the namespaces go: a process inside would keep its namespace


def _all_up(herd: NetHerd) -> bool:
    return all(herd.link(a, b) == "up" and herd.link(b, a) == "up" for a, b in LINKS)


def test_five_hosts_route_around_a_cut_and_converge_after_a_partition(
    net_herd: NetHerd, hosts: Hosts
) -> None:
    herd = net_herd
    wait_until(lambda: _all_up(herd), 60.0, lambda: f"every link up\n{herd.diagnose()}")
    status = herd_cli(herd.config_path, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert all(entry["up"] for entry in json.loads(status.stdout)["servers"].values())

    # 1. one link cut: the others carry the reports, and the cut is real (both ends see it)
    hosts.cut("Campbell", "Bona")
    reports = {
        b"cut-campbell": herd.iamat("Campbell", b"cut-campbell"),
        b"cut-bona": herd.iamat("Bona", b"cut-bona"),
    }
    herd.wait_known(NAMES, reports, HEAL_SECONDS)
    wait_until(
        lambda: herd.link("Campbell", "Bona") != "up" and herd.link("Bona", "Campbell") != "up",
        DOWN_SECONDS,
        lambda: f"the cut link seen down: {herd.peers('Campbell')} {herd.peers('Bona')}",
    )
    hosts.heal("Campbell", "Bona")
    wait_until(
        lambda: herd.link("Campbell", "Bona") == "up" and herd.link("Bona", "Campbell") == "up",
        HEAL_SECONDS,
        lambda: f"the healed link up\n{herd.diagnose()}",
    )

    # 2. a partition: Jaquez alone; each side's reports stay on its side until healed
    hosts.cut("Campbell", "Jaquez")
    hosts.cut("Clark", "Jaquez")
    wait_until(
        lambda: herd.peers("Jaquez") == {"Campbell": "down", "Clark": "down"},
        DOWN_SECONDS,
        lambda: f"Jaquez's links down: {herd.peers('Jaquez')}",
    )
    apart = {
        b"apart-jaquez": herd.iamat("Jaquez", b"apart-jaquez"),
        b"apart-bailey": herd.iamat("Bailey", b"apart-bailey"),
    }
    rest = ("Bailey", "Bona", "Campbell", "Clark")
    herd.wait_known(rest, {b"apart-bailey": apart[b"apart-bailey"]}, HEAL_SECONDS)
    assert herd.at_line("Jaquez", b"apart-bailey") is None
    assert all(herd.at_line(name, b"apart-jaquez") is None for name in rest)

    healed = time.monotonic()
    hosts.heal("Campbell", "Jaquez")
    hosts.heal("Clark", "Jaquez")
    herd.wait_known(NAMES, {**reports, **apart}, HEAL_SECONDS)
    took = time.monotonic() - healed
    wait_until(lambda: _all_up(herd), HEAL_SECONDS, lambda: f"every link up\n{herd.diagnose()}")
    print(f"after healing the partition, every server knew every report within {took:.1f} s")
