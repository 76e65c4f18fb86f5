"""The status listener's pure parts and its resource over in-memory requests: the figures in
the Prometheus text format (parsed back with prometheus_client's parser), the loopback rules
for the client's address and the `Host` header."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.web.test.requesthelper import DummyRequest

from herd.config import ConfigError, load_config
from web.metrics import metrics_registry, metrics_text
from web.status import PeerLink, ServerEntry, StatusFigures
from web.status_site import _StatusResource, is_loopback_host
from web.templates import WebTemplates

LINKS = (PeerLink("Bona", "flooding"), PeerLink("Campbell", "down"))
FIGURES = StatusFigures(
    server="Bailey",
    servers=(
        ServerEntry("Bailey", "this server", None),
        ServerEntry("Bona", "neighbour", LINKS[0]),
        ServerEntry("Campbell", "neighbour", LINKS[1]),
        ServerEntry("Clark", "through others", None),
    ),
    links=LINKS,
    outbox={("email", "pending"): 3, ("email", "dead"): 1, ("xmpp", "sending"): 2},
    channels=("email", "xmpp"),
    line_connections=7,
    web_streams=None,
    uptime_seconds=12.5,
    ops_stored=42,
)


class Source:
    def __init__(self, figures: StatusFigures = FIGURES) -> None:
        self.now = figures
        self.refreshed = 0

    def refresh(self) -> Deferred[None]:
        self.refreshed += 1
        return succeed(None)

    def figures(self) -> StatusFigures:
        return self.now


def parsed(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def test_the_figures_in_the_prometheus_text_format() -> None:
    found = parsed(metrics_text(metrics_registry(Source().figures)))
    assert found == {
        ("renga_server_info", (("server", "Bailey"),)): 1.0,
        ("renga_peer_link_up", (("peer", "Bona"),)): 1.0,
        ("renga_peer_link_up", (("peer", "Campbell"),)): 0.0,
        ("renga_outbox_messages", (("channel", "email"), ("state", "pending"))): 3.0,
        ("renga_outbox_messages", (("channel", "email"), ("state", "sending"))): 0.0,
        ("renga_outbox_messages", (("channel", "email"), ("state", "dead"))): 1.0,
        ("renga_outbox_messages", (("channel", "xmpp"), ("state", "pending"))): 0.0,
        ("renga_outbox_messages", (("channel", "xmpp"), ("state", "sending"))): 2.0,
        ("renga_outbox_messages", (("channel", "xmpp"), ("state", "dead"))): 0.0,
        ("renga_line_connections", ()): 7.0,
        ("renga_uptime_seconds", ()): 12.5,
        ("renga_ops_stored", ()): 42.0,
    }


def test_web_streams_show_when_counted() -> None:
    from dataclasses import replace

    source = Source(replace(FIGURES, web_streams=5))
    assert parsed(metrics_text(metrics_registry(source.figures)))[("renga_web_streams", ())] == 5


def test_each_registry_is_its_own() -> None:
    from prometheus_client import REGISTRY

    before = {m.name for m in REGISTRY.collect()}
    metrics_registry(Source().figures)
    assert {m.name for m in REGISTRY.collect()} == before
    assert not any(name.startswith("renga") for name in before)


def test_loopback_hosts() -> None:
    for host in (
        "127.0.0.1",
        "127.0.0.1:9100",
        "127.8.9.10",
        "localhost",
        "LOCALHOST:80",
        "[::1]",
        "[::1]:9100",
        "::1",
    ):
        assert is_loopback_host(host), host
    for host in (
        "",
        "10.0.0.1",
        "renga.example.org",
        "localhost.example.org:80",
        "127.0.0.1.nip.io",
        "[::2]",
        "0.0.0.0",
        "192.0.2.2:9100",
    ):
        assert not is_loopback_host(host), host


def render(peer: str, host: bytes | None, path: bytes = b"/metrics") -> tuple[int, bytes]:
    resource = _StatusResource(Source(), WebTemplates())
    request = DummyRequest([path.lstrip(b"/")])
    request.path = path
    request.client = IPv4Address("TCP", peer, 40000)
    if host is not None:
        request.requestHeaders.setRawHeaders(b"host", [host])
    result = resource.render_GET(request)
    body = result if isinstance(result, bytes) else b"".join(request.written)
    return request.responseCode or 200, body


def test_a_request_from_outside_loopback_gets_nothing() -> None:
    for peer, host in (
        ("192.0.2.7", b"127.0.0.1:9100"),  # another machine (or address)
        ("127.0.0.1", b"attacker.example:9100"),  # a rebinding name from a local browser
        ("127.0.0.1", None),  # no Host header
    ):
        for path in (b"/", b"/metrics"):
            code, body = render(peer, host, path)
            assert code == 403, (peer, host, path)
            assert b"Bona" not in body and b"renga_" not in body
    code, body = render("127.0.0.1", b"127.0.0.1:9100")
    assert code == 200 and b"renga_peer_link_up" in body
    code, body = render("127.0.0.1", b"localhost:9100", b"/")
    assert code == 200 and b"Campbell" in body and b"through others" in body


def test_servers_on_other_hosts_may_share_a_status_port(tmp_path: Path) -> None:
    """The listener is on each machine's own 127.0.0.1: one `[web] status_port` for a herd
    spread over machines is fine; servers on one machine need their own."""
    spread = (
        '[herd]\nsecret = "s"\n[servers.A]\nhost = "10.0.0.1"\nport = 12000\n'
        '[servers.B]\nhost = "10.0.0.2"\nport = 12000\n[web]\nport = 8001\nstatus_port = 9100\n'
    )
    path = tmp_path / "herd.toml"
    path.write_text(spread)
    config = load_config(path, {})
    a, b = config.web_of("A"), config.web_of("B")
    assert a is not None and b is not None and a.status_port == b.status_port == 9100
    path.write_text(
        '[herd]\nsecret = "s"\n[servers.A]\nport = 12000\nweb_port = 8001\n'
        "[servers.B]\nport = 12001\nweb_port = 8002\n[web]\nstatus_port = 9100\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert caught.value.key == "servers.B.status_port" and "already used" in caught.value.problem
