"""The config `notifier.localxmpp.LocalProsody` writes: plain on loopback by default (what `herd
up` and most tests run), STARTTLS required and direct TLS only when given a certificate."""

from __future__ import annotations

from pathlib import Path

import pytest

from notifier.localxmpp import LocalProsody


def config(prosody: LocalProsody) -> str:
    prosody.write_config()
    return prosody.config_path.read_text(encoding="utf-8")


def test_plain_by_default(tmp_path: Path) -> None:
    text = config(LocalProsody(tmp_path, port=5999))

    assert "c2s_ports = { 5999 }\n" in text
    assert "c2s_direct_tls_ports = { }\n" in text
    assert "c2s_require_encryption = false\n" in text
    assert "allow_unencrypted_plain_auth = true" in text
    assert "ssl =" not in text and '"tls"' not in text
    assert 'interfaces = { "127.0.0.1" }' in text


def test_a_certificate_requires_starttls_and_direct_tls_gets_its_own_port(tmp_path: Path) -> None:
    cert, key = tmp_path / 'we"ird.pem', tmp_path / "key.pem"
    prosody = LocalProsody(tmp_path / "p", port=5999, certificate=cert, key=key, direct_tls=True)
    text = config(prosody)

    assert prosody.direct_tls_port is not None and prosody.direct_tls_port != 5999
    assert f"c2s_direct_tls_ports = {{ {prosody.direct_tls_port} }}\n" in text
    escaped = str(cert.resolve()).replace('"', '\\"')
    assert f'ssl = {{ certificate = "{escaped}", key = "{key.resolve()}" }}' in text
    assert "c2s_require_encryption = true" in text
    assert "allow_unencrypted_plain_auth" not in text
    assert '"saslauth"; "tls"; "disco"' in text

    starttls_only = LocalProsody(tmp_path / "q", port=5998, certificate=cert, key=key)
    assert starttls_only.direct_tls_port is None
    assert "c2s_direct_tls_ports = { }\n" in config(starttls_only)


@pytest.mark.parametrize(
    "options",
    [
        {"certificate": Path("c.pem")},
        {"key": Path("k.pem")},
        {"direct_tls": True},
        {"direct_tls_port": 5223},
    ],
)
def test_half_a_tls_setup_is_refused(tmp_path: Path, options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LocalProsody(tmp_path, **options)  # type: ignore[arg-type]
