"""The operator's status listener end to end, against real `herd run` processes with `[web]`
and a `status_port` each: `/metrics` parses as the Prometheus text format (with
`prometheus_client`'s own parser); a link shows 0 while its peer is down and 1 once it is back;
the outbox's pending mails rise while the SMTP server is down and fall once it is back; the
page shows the servers and their links; the listener is bound to 127.0.0.1 only, and answers
nothing that names a host that is not loopback or comes from another address.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.herd import REPO
from tests.support.lines import Session
from tests.support.polling import wait_until
from tests.support.ports import free_ports
from tests.support.smtp import SmtpProcess
from tests.support.users import add_user

from .test_web import WebHerd

NAMES = ("Bailey", "Bona")
LINKS = (("Bailey", "Bona"),)


class StatusHerd(WebHerd):
    """A WebHerd whose servers have a status listener each."""

    status_ports: dict[str, int] | None = None

    def write_config(self, path: Path, links: object) -> Path:
        super().write_config(path, links)
        if self.status_ports is None or self.web_ports is None:
            return path
        text = path.read_text()
        for name, port in self.status_ports.items():
            web = f"web_port = {self.web_ports[name]}\n"
            text = text.replace(web, f"{web}status_port = {port}\n")
        path.write_text(text)
        return path


@dataclass
class StatusScene:
    herd: StatusHerd
    smtp: SmtpProcess

    def port(self, name: str = "Bailey") -> int:
        assert self.herd.status_ports is not None
        return self.herd.status_ports[name]


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory, places_seed: Path) -> Iterator[StatusScene]:
    root = tmp_path_factory.mktemp("web-status")
    herd = StatusHerd(root / "herd", smtp_port=0, seed=places_seed, names=NAMES, links=LINKS)
    taken = set(herd.ports.values())
    spare = [port for port in free_ports(len(taken) + 5) if port not in taken]
    herd.smtp_port = spare[0]
    herd.web_ports = dict(zip(NAMES, spare[1:3], strict=True))
    herd.status_ports = dict(zip(NAMES, spare[3:5], strict=True))
    herd.write_config(herd.config_path, herd.links)
    smtp = SmtpProcess(root / "smtp", herd.smtp_port)
    try:
        herd.start()
        smtp.start()
        herd.wait_answering()
        herd.wait_links()
        yield StatusScene(herd, smtp)
    finally:
        try:
            herd.close()
        finally:
            smtp.close()


def get(port: int, path: str, host: str | None = None) -> tuple[int, dict[str, str], str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {} if host is None else {"Host": host}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read().decode("utf-8", "replace")
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of `/metrics`, parsed by prometheus_client: (name, labels) -> value."""
    status, headers, text = get(port, "/metrics")
    assert status == 200, text
    assert headers["content-type"].startswith("text/plain; version=")
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def link_up(port: int, peer: str) -> float:
    return samples(port)[("renga_peer_link_up", (("peer", peer),))]


def pending_mail(port: int) -> float:
    key = ("renga_outbox_messages", (("channel", "email"), ("state", "pending")))
    return samples(port)[key] + samples(port)[(key[0], (key[1][0], ("state", "sending")))]


def test_metrics_parse_and_show_the_servers_figures(scene: StatusScene) -> None:
    found = samples(scene.port())
    assert found[("renga_server_info", (("server", "Bailey"),))] == 1.0
    assert found[("renga_peer_link_up", (("peer", "Bona"),))] == 1.0
    assert found[("renga_uptime_seconds", ())] > 0
    assert found[("renga_ops_stored", ())] >= 0
    for state in ("pending", "sending", "dead"):
        assert ("renga_outbox_messages", (("channel", "email"), ("state", state))) in found
    before = found[("renga_line_connections", ())]
    with socket.create_connection(("127.0.0.1", scene.herd.ports["Bailey"])):
        wait_until(
            lambda: samples(scene.port())[("renga_line_connections", ())] == before + 1,
            5.0,
            "one more line connection",
        )
    assert samples(scene.port("Bona"))[("renga_server_info", (("server", "Bona"),))] == 1.0


def test_the_docs_scrape_is_what_a_scrape_shows(scene: StatusScene) -> None:
    """docs/web.md's sample scrape: each of its lines is a line of a real one (values aside)."""
    text = (REPO / "docs" / "web.md").read_text(encoding="utf-8")
    section = text[text.index("## Operator status and /metrics") :]
    block = section[section.index("```text\n") + 8 :]
    shown = [line for line in block[: block.index("```")].splitlines() if line != "…"]
    assert len(shown) >= 9
    _, _, real = get(scene.port(), "/metrics")
    lines = real.splitlines()
    for line in shown:
        if line.startswith("#"):
            assert line in lines
        else:
            name_labels = line.rpartition(" ")[0]
            assert any(got.rpartition(" ")[0] == name_labels for got in lines), line


def test_a_link_shows_0_while_its_peer_is_down_and_1_once_it_is_back(scene: StatusScene) -> None:
    assert link_up(scene.port(), "Bona") == 1.0
    scene.herd.kill("Bona")
    wait_until(lambda: link_up(scene.port(), "Bona") == 0.0, 10.0, "Bona's link down")
    status, _, page = get(scene.port(), "/")
    assert status == 200 and "down" in page
    scene.herd.start("Bona")
    scene.herd.wait_answering("Bona")
    wait_until(lambda: link_up(scene.port(), "Bona") == 1.0, 20.0, "Bona's link back")
    assert link_up(scene.port("Bona"), "Bailey") == 1.0


def test_the_outbox_depth_rises_while_smtp_is_down_and_falls_once_it_is_back(
    scene: StatusScene,
) -> None:
    tokens = {
        user: add_user(scene.herd.config_path, user, f"{user}@example.net")
        for user in ("dora", "emil", "finn")
    }
    assert pending_mail(scene.port()) == 0.0
    scene.smtp.stop()
    with Session(scene.herd.ports["Bailey"], "dora", tokens["dora"]) as dora:
        event = dora.event("PLAN Picnic")["id"]
        dora.event(f"INVITE {event} emil finn")
    wait_until(lambda: pending_mail(scene.port()) == 2.0, 10.0, "two invitations waiting")
    status, _, page = get(scene.port(), "/")
    assert status == 200 and "email" in page
    scene.smtp.start()
    wait_until(lambda: pending_mail(scene.port()) == 0.0, 30.0, "the invitations delivered")


def test_the_page_shows_the_servers_and_their_links(scene: StatusScene) -> None:
    status, headers, page = get(scene.port(), "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    for text in ("<h1>Bailey</h1>", "Bona", "neighbour", "up", "/metrics", "Outbox"):
        assert text in page
    assert get(scene.port(), "/nothing")[0] == 404


def test_the_listener_is_bound_to_loopback_only(scene: StatusScene) -> None:
    pid = scene.herd.procs["Bailey"].pid
    listening = [
        c.laddr
        for c in psutil.Process(pid).net_connections("inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == scene.port()
    ]
    # The kernel takes connections for that socket on 127.0.0.1 only, so no other address
    # of the machine reaches it (not tried here: a test sends to loopback only).
    assert [address.ip for address in listening] == ["127.0.0.1"]


def test_nothing_is_readable_from_outside_loopback(scene: StatusScene) -> None:
    for host in ("renga.example.org", f"attacker.example:{scene.port()}", "10.0.0.1"):
        for path in ("/", "/metrics"):
            status, _, body = get(scene.port(), path, host=host)
            assert status == 403, (host, path)
            assert "Bona" not in body and "renga_" not in body
    for host in (f"localhost:{scene.port()}", f"127.0.0.1:{scene.port()}"):
        assert get(scene.port(), "/metrics", host=host)[0] == 200
    # (a request from an address that is not loopback: tests/unit/test_web_status.py)
