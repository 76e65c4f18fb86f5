"""`herd up` without a `[web]`: every server gets a web port, written into the derived config
(read back by the loader exactly as before, plus the web)."""

from __future__ import annotations

import socket
from pathlib import Path

from herd.config import load_config
from herd.localdev import web_ports_from, with_web_ports
from herd.upview import Banner, ServerInfo, banner_lines

REPO = Path(__file__).resolve().parents[2]


def test_the_derived_config_is_the_same_config_with_web_ports(tmp_path: Path) -> None:
    for source in (REPO / "config" / "herd.toml", REPO / "config" / "example-deployment.toml"):
        original = load_config(source, {"HERD_SECRET": "s", "RENGA_XMPP_PASSWORD": "p"})
        if original.web is not None:
            text = source.read_text().replace("[web]", "[not-web]")
            text = "\n".join(
                line
                for line in text.splitlines()
                if not line.startswith(("web_port", "web_base_url", "status_port"))
            )
            cut = text.index("[not-web]")
            text = text[:cut]  # [web] is the file's last table
        else:
            text = source.read_text()
        ports = {name: 8001 + n for n, name in enumerate(original.servers)}
        derived = tmp_path / source.name
        derived.write_text(with_web_ports(text, ports))
        (tmp_path / "bot.secret").write_text("x")
        again = load_config(derived, {"HERD_SECRET": "s", "RENGA_XMPP_PASSWORD": "p"})
        assert again.web is not None
        for name in original.servers:
            site = again.web_of(name)
            assert site is not None and site.port == ports[name]
            assert again.servers[name].host == original.servers[name].host
            assert again.servers[name].peers == original.servers[name].peers
        assert again.limits == original.limits and again.log == original.log
        assert again.notifications == original.notifications
        assert again.places.provider == original.places.provider


def test_web_ports_skip_taken_ones() -> None:
    config = load_config(REPO / "config" / "herd.toml", {"HERD_SECRET": "s"})
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        ports = web_ports_from(config, taken)
    assert taken not in ports.values()
    assert len(set(ports.values())) == len(config.servers)
    assert not set(ports.values()) & {server.port for server in config.servers.values()}


def test_the_banner_shows_each_site() -> None:
    banner = Banner(
        config="herd.toml",
        data_dir="var",
        servers=(
            ServerInfo("Bailey", "127.0.0.1", 12001, ("Bona",), "http://127.0.0.1:8001"),
            ServerInfo("Bona", "127.0.0.1", 12002, ("Bailey",), "http://127.0.0.1:8002"),
        ),
        mail=None,
        mail_dir="var/mail",
        jabber=None,
        bot="renga@localhost",
        demo_accounts=(),
        tokens=(),
        demo_note=None,
        verbose=False,
    )
    lines = banner_lines(banner)
    assert "  Bailey  127.0.0.1:12001  web http://127.0.0.1:8001   peers Bona" in lines
