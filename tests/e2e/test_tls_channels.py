"""The notification channels over TLS as an operator configures them: a real `herd run` whose
`[xmpp]` and `[smtp]` tables ask for TLS and name a CA file (`ca_file`), a real Prosody and a
real aiosmtpd (a process of its own) holding certificates from a CA the test makes, the SMTP
password from `RENGA_SMTP_PASSWORD`.

Every TLS mode is run once: the bot with direct TLS while mail uses STARTTLS + AUTH, then the bot
with STARTTLS while mail uses implicit TLS.  The server's log says the bot's session is up over
TLS; a notification mail arrives at the relay after a login over TLS.  A CA file from another CA
leaves the server running, saying in its log why neither channel gets through.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from notifier.localxmpp import LocalProsody
from tests.support.herd import Herd, config_text
from tests.support.lines import Session
from tests.support.polling import stays_false, wait_until
from tests.support.ports import free_ports
from tests.support.prosody import running_prosody
from tests.support.smtp import SmtpProcess
from tests.support.testca import CertAuthority
from tests.support.users import add_user

pytestmark = pytest.mark.timeout(120)

BOT_PASSWORD = "bot-password-tls"
MAIL_USER = "renga"
MAIL_PASSWORD = "relay-password-tls"
SENDER = "Renga <renga@example.org>"


@dataclass(frozen=True, slots=True)
class Modes:
    xmpp: str  # "starttls" or "direct"
    smtp: str


class TlsHerd(Herd):
    """One server, `Bailey`, whose config has `[xmpp]` and `[smtp]` with TLS and a CA file."""

    def __init__(
        self, root: Path, prosody: LocalProsody, smtp_port: int, modes: Modes, ca_file: Path
    ) -> None:
        self.prosody = prosody
        self.smtp_port = smtp_port
        self.modes = modes
        self.ca_file = ca_file
        root.mkdir(parents=True, exist_ok=True)
        (root / "renga.password").write_text(BOT_PASSWORD + "\n")
        super().__init__(root, names=("Bailey",), links=())

    def write_config(self, path: Path, links: Iterable[tuple[str, str]]) -> Path:
        xmpp_port = (
            self.prosody.direct_tls_port if self.modes.xmpp == "direct" else self.prosody.port
        )
        text = config_text(self.ports, links, max_line=self.max_line)
        text += "\n".join(
            [
                "[xmpp]",
                f"jid = {json.dumps(self.prosody.jid('renga'))}",
                'password_file = "renga.password"',
                f"host = {json.dumps(self.prosody.host)}",  # 127.0.0.1; the certificate: localhost
                f"port = {xmpp_port}",
                f"tls = {json.dumps(self.modes.xmpp)}",
                f"ca_file = {json.dumps(str(self.ca_file))}",
                "",
                "[smtp]",
                'host = "localhost"',
                f"port = {self.smtp_port}",
                f"sender = {json.dumps(SENDER)}",
                f"username = {json.dumps(MAIL_USER)}",
                f"tls = {json.dumps(self.modes.smtp)}",
                f"ca_file = {json.dumps(str(self.ca_file))}",
                "",
            ]
        )
        path.write_text(text)
        return path

    def log(self) -> str:
        path = self.log_path("Bailey")
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


@dataclass
class Setup:
    herd: TlsHerd
    smtp: SmtpProcess
    ours: CertAuthority
    theirs: CertAuthority


@pytest.fixture(params=[Modes("direct", "starttls"), Modes("starttls", "direct")], ids=str)
def setup(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Setup]:
    modes: Modes = request.param
    ours = CertAuthority(tmp_path / "ca", "ours", "Renga Test CA")
    theirs = CertAuthority(tmp_path / "ca", "theirs", "Somebody Else's CA")
    xmpp_cert = ours.issue("localhost", stem="prosody")
    mail_cert = ours.issue("localhost", stem="smtp")
    monkeypatch.setenv("RENGA_SMTP_PASSWORD", MAIL_PASSWORD)  # what `herd run` inherits
    with running_prosody(
        tmp_path / "prosody",
        {"renga": BOT_PASSWORD},
        certificate=xmpp_cert.cert_file,
        key=xmpp_cert.key_file,
        direct_tls=True,
    ) as prosody:
        smtp_port, _ = free_ports(2)
        herd = TlsHerd(tmp_path / "herd", prosody, smtp_port, modes, ours.ca_file)
        smtp = SmtpProcess(tmp_path / "smtp", smtp_port)
        try:
            smtp.start(
                certificate=(mail_cert.cert_file, mail_cert.key_file),
                implicit_tls=modes.smtp == "direct",
                accounts={MAIL_USER: MAIL_PASSWORD},
            )
            yield Setup(herd, smtp, ours, theirs)
        finally:
            try:
                herd.close()
            finally:
                smtp.close()


def invite(herd: TlsHerd) -> None:
    """alice invites bob: bob is mailed at once."""
    tokens = {
        user: add_user(herd.config_path, user, f"{user}@example.net") for user in ("alice", "bob")
    }
    with Session(herd.port("Bailey"), "alice", tokens["alice"]) as alice:
        event_id = str(alice.event("PLAN Tea over TLS")["id"])
        alice.event(f"INVITE {event_id} bob")


def test_the_bot_and_the_mail_go_over_verified_tls(setup: Setup) -> None:
    herd, smtp = setup.herd, setup.smtp
    herd.up()
    wait_until(
        lambda: "XMPP: session up as renga@localhost/Bailey (TLSv1." in herd.log(),
        20.0,
        lambda: f"the bot's session over TLS\n{herd.log()[-3000:]}\n{herd.diagnose()}",
    )
    invite(herd)
    wait_until(
        lambda: smtp.mails(), 30.0, lambda: f"the invitation\n{smtp.diagnose()}\n{herd.log()}"
    )
    [mail] = smtp.mails()
    assert mail.rcpt_to == ("bob@example.net",)
    assert str(mail.message["Subject"]) == "alice invited you to Tea over TLS"
    logins = smtp.logins()
    assert logins and all(login.user == MAIL_USER and login.accepted for login in logins)
    assert all(login.tls is not None and login.tls.startswith("TLSv1.") for login in logins)
    assert "TLS with" not in herd.log()


def test_a_ca_file_from_another_ca_keeps_both_channels_out(setup: Setup) -> None:
    herd, smtp = setup.herd, setup.smtp
    herd.ca_file = setup.theirs.ca_file
    herd.write_config(herd.config_path, herd.links)
    herd.up()
    wait_until(
        lambda: "XMPP: TLS with 127.0.0.1:" in herd.log(),
        20.0,
        lambda: f"the bot's TLS refusal in the log\n{herd.log()[-3000:]}",
    )
    assert "CERTIFICATE_VERIFY_FAILED" in herd.log()
    invite(herd)
    wait_until(
        lambda: "no SMTP session with localhost:" in herd.log(),
        20.0,
        lambda: f"the mail's TLS refusal in the log\n{herd.log()[-3000:]}",
    )
    assert stays_false(lambda: smtp.mails() or smtp.logins(), 1.0)
    assert "session up" not in herd.log()
    assert herd.running() == ["Bailey"]  # refused, logged, retried on the backoff: no crash
