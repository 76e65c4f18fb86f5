"""Hosts of their own for a herd: one Linux network namespace per server, a veth pair per peer
link, each server on its own 10.x address, so links can be cut and healed with `ip link`.

Each namespace holds its server's address (a /32 on `lo`) and, for each of its links, a veth
to the neighbour with a host route to the neighbour's address through it: a namespace does not
forward, so a server reaches exactly its configured peers, and a cut link is cut. Each namespace
also has a veth to the test's own namespace, routed to its server's address only, so the test
(and `herd status`) reach every server as a client would, without ever carrying peer traffic.

Names carry a random tag (tests run in parallel sessions), and `close()` deletes every
namespace and host-side veth made, whatever state the test left them in.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterable


class NamespacesUnavailable(Exception):
    """Namespaces cannot be made here (not root, no `ip`, EPERM): the reason, for a skip."""


def _ip(*arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *arguments], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(arguments)}: {done.stderr.strip()}")
    return done


def probe() -> None:
    """Raise NamespacesUnavailable with the reason if a namespace cannot be made and used."""
    if shutil.which("ip") is None:
        raise NamespacesUnavailable("no `ip` command (iproute2) on this machine")
    if os.geteuid() != 0:
        raise NamespacesUnavailable("network namespaces need root (this test runs as uid != 0)")
    name = f"renga-probe-{secrets.token_hex(4)}"
    done = _ip("netns", "add", name, check=False)
    if done.returncode != 0:
        raise NamespacesUnavailable(f"`ip netns add` failed: {done.stderr.strip()}")
    try:
        used = _ip("-n", name, "link", "set", "lo", "up", check=False)
        if used.returncode != 0:
            raise NamespacesUnavailable(f"cannot use a new namespace: {used.stderr.strip()}")
    finally:
        _ip("netns", "del", name, check=False)


class Hosts:
    """One namespace per name, linked as `links` says; `address(name)` is where it is."""

    def __init__(self, names: Iterable[str], links: Iterable[tuple[str, str]]) -> None:
        self.tag = secrets.token_hex(3)
        self.names = list(names)
        self.links = [tuple(sorted(link)) for link in links]
        prefix = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}"
        self._address = {name: f"{prefix}.{index + 1}" for index, name in enumerate(self.names)}
        self._outside = {name: f"{prefix}.{index + 101}" for index, name in enumerate(self.names)}
        self.namespaces: list[str] = []
        self.host_veths: list[str] = []

    def namespace(self, name: str) -> str:
        return f"renga-{self.tag}-{name}"

    def address(self, name: str) -> str:
        return self._address[name]

    def _veth(self, peer: str) -> str:
        """Inside a namespace: the veth that leads to `peer`'s namespace."""
        return f"to{self.names.index(peer)}"

    def create(self) -> None:
        for index, name in enumerate(self.names):
            namespace = self.namespace(name)
            _ip("netns", "add", namespace)
            self.namespaces.append(namespace)
            _ip("-n", namespace, "link", "set", "lo", "up")
            _ip("-n", namespace, "addr", "add", f"{self._address[name]}/32", "dev", "lo")
            # the test's way in: a veth from this namespace to the server's address only
            outside = f"rg{self.tag}o{index}"
            _ip("link", "add", outside, "type", "veth", "peer", "name", "mgmt", "netns", namespace)
            self.host_veths.append(outside)
            _ip("addr", "add", f"{self._outside[name]}/32", "dev", outside)
            _ip("link", "set", outside, "up")
            _ip("-n", namespace, "link", "set", "mgmt", "up")
            _ip("route", "add", f"{self._address[name]}/32", "dev", outside)
            _ip("-n", namespace, "route", "add", f"{self._outside[name]}/32", "dev", "mgmt")
        for a, b in self.links:
            _ip(
                "-n",
                self.namespace(a),
                "link",
                "add",
                self._veth(b),
                "type",
                "veth",
                "peer",
                "name",
                self._veth(a),
                "netns",
                self.namespace(b),
            )
            self.heal(a, b)

    def _ends(self, a: str, b: str) -> list[tuple[str, str, str]]:
        """(namespace, its veth, the address behind it) for both ends of the link a to b."""
        return [
            (self.namespace(a), self._veth(b), self._address[b]),
            (self.namespace(b), self._veth(a), self._address[a]),
        ]

    def cut(self, a: str, b: str) -> None:
        """Take the link between a and b down at both ends: packets between them are lost."""
        for namespace, veth, _ in self._ends(a, b):
            _ip("-n", namespace, "link", "set", veth, "down")

    def heal(self, a: str, b: str) -> None:
        """Bring the link up again, with its routes (a down link loses them)."""
        for namespace, veth, _ in self._ends(a, b):
            _ip("-n", namespace, "link", "set", veth, "up")
        for namespace, veth, address in self._ends(a, b):
            _ip("-n", namespace, "route", "replace", f"{address}/32", "dev", veth)

    def command(self, name: str, argv: list[str]) -> list[str]:
        """`argv` run inside `name`'s namespace."""
        return ["ip", "netns", "exec", self.namespace(name), *argv]

    def close(self) -> None:
        """Delete every namespace (their veths go with them) and host-side veth made. The
        processes inside must be gone first, or their namespaces outlive the delete."""
        for namespace in self.namespaces:
            _ip("netns", "del", namespace, check=False)
        for veth in self.host_veths:
            if _ip("link", "show", veth, check=False).returncode == 0:
                _ip("link", "del", veth, check=False)
        self.namespaces.clear()
        self.host_veths.clear()

    def leftovers(self) -> list[str]:
        """Namespaces or host veths of this run that still exist (none after `close()`)."""
        found = [
            line.split()[0]
            for line in _ip("netns", "list").stdout.splitlines()
            if line.startswith(f"renga-{self.tag}-")
        ]
        links = _ip("-o", "link", "show").stdout
        found += [word for word in links.split() if word.startswith(f"rg{self.tag}")]
        return found
