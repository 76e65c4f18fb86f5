"""A real Prosody on loopback for tests and ``herd up`` (dev tooling, not used by a running herd).

Everything here blocks, briefly: ``start()`` polls until Prosody answers (~0.1 s), ``stop()`` waits
for the process (milliseconds), ``register()`` runs ``prosodyctl`` (~0.1 s). Call these before the
reactor runs (fixtures, ``herd up`` before it starts servers) or, from inside a running reactor, in
a thread: ``await threads.deferToThread(prosody.restart)`` (or ``loop.run_in_executor``), so the
reactor keeps serving while Prosody goes down and comes back.

Also runnable as ``python -m notifier.localxmpp install`` (the Makefile's way to install Prosody).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from notifier.errors import NotifierError

_STREAM_HEADER = (
    "<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
)
_NAME = re.compile(r"[a-z0-9][a-z0-9.-]*\Z")
_USER = re.compile(r"[a-z0-9._-]+\Z")


class ProsodyError(NotifierError, RuntimeError):
    """Prosody could not be installed, started, stopped or given an account."""


def ensure_prosody_installed() -> str:
    """Find ``prosody``; install the Debian package first if it is missing and we are root.

    Not root and missing is an error that says what to run: tests must fail loudly, never skip.
    """
    found = shutil.which("prosody")
    if found is not None:
        return found
    if os.geteuid() != 0:
        raise ProsodyError("prosody is not installed; run: sudo apt-get install -y prosody")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "prosody"]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        # A fresh machine may have no package lists yet.
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        done = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ProsodyError(f"apt-get install prosody failed:\n{done.stdout}{done.stderr}")
    found = shutil.which("prosody")
    if found is None:
        raise ProsodyError("apt-get installed prosody but no `prosody` is on PATH")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (good enough on a test machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on `host:port` now (as a server binds it: with SO_REUSEADDR, so a
    connection of a stopped server lingering in TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def _lua(text: str) -> str:
    """A Lua string literal (paths may hold quotes or backslashes)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class LocalProsody:
    """One unprivileged Prosody: config, data, pid and log under ``folder``; c2s on loopback only.

    By default it speaks plain XMPP (no certificate, plain-text auth allowed: it listens on
    127.0.0.1 only), as ``herd up`` runs it. Given a ``certificate`` and its ``key`` (PEM files),
    it offers STARTTLS on ``port`` and requires it before authentication, and with
    ``direct_tls`` it also listens for direct TLS (XEP-0368) on ``direct_tls_port``. No s2s, no
    HTTP. Accounts and offline messages live in ``folder/data`` and survive ``restart()``.
    """

    def __init__(
        self,
        folder: Path,
        *,
        domain: str = "localhost",
        port: int | None = None,
        preferred_port: int | None = None,
        log_level: str = "info",
        preexec_fn: Callable[[], None] | None = None,
        certificate: Path | None = None,
        key: Path | None = None,
        direct_tls: bool = False,
        direct_tls_port: int | None = None,
    ) -> None:
        """``port``: that port, whatever listens there; else ``preferred_port`` when it is free
        (``herd up`` prefers 5222, the port a Jabber client tries first); else a free port.
        ``preexec_fn`` runs in the child before Prosody (``herd up``: die with its parent)."""
        if not _NAME.match(domain):
            raise ValueError(f"not a plain domain name: {domain!r}")
        if (certificate is None) != (key is None):
            raise ValueError("a certificate needs its key, and a key its certificate")
        if (direct_tls or direct_tls_port is not None) and certificate is None:
            raise ValueError("direct TLS needs a certificate and key")
        self.folder = folder.resolve()
        self.domain = domain
        self.host = "127.0.0.1"
        if port is None and preferred_port is not None and port_is_free(preferred_port):
            port = preferred_port
        self.port = port if port is not None else free_port(self.host)
        self.certificate = None if certificate is None else certificate.resolve()
        self.key = None if key is None else key.resolve()
        self.direct_tls_port: int | None = None
        if direct_tls or direct_tls_port is not None:
            self.direct_tls_port = (
                direct_tls_port if direct_tls_port is not None else free_port(self.host)
            )
        self.log_level = log_level
        self._preexec_fn = preexec_fn
        self.config_path = self.folder / "prosody.cfg.lua"
        self.log_path = self.folder / "prosody.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def jid(self, user: str) -> str:
        return f"{user}@{self.domain}"

    def write_config(self) -> None:
        """Write the config; called by ``start()``, public so ``herd up`` can show it."""
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        (self.folder / "certs").mkdir(exist_ok=True)  # Prosody indexes it, and logs if absent
        direct = " " if self.direct_tls_port is None else f" {self.direct_tls_port} "
        tls_module = ""
        if self.certificate is None or self.key is None:
            tls = (
                "c2s_require_encryption = false\n"
                "allow_unencrypted_plain_auth = true -- loopback only, see interfaces\n"
            )
        else:
            tls = (
                f"ssl = {{ certificate = {_lua(str(self.certificate))}, "
                f"key = {_lua(str(self.key))} }}\n"
                "c2s_require_encryption = true -- STARTTLS (or direct TLS) before any login\n"
            )
            tls_module = '"tls"; '
        self.config_path.write_text(
            f"""-- Written by notifier.localxmpp: a throwaway Prosody on loopback.
pidfile = {_lua(str(self.folder / "prosody.pid"))}
data_path = {_lua(str(data))}
run_as_root = true -- Prosody 0.12 refuses uid 0, then hangs, without this
interfaces = {{ "{self.host}" }}
c2s_ports = {{ {self.port} }}
c2s_direct_tls_ports = {{{direct}}}
s2s_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
modules_enabled = {{
    "roster"; "saslauth"; {tls_module}"disco"; "ping"; "pep"; "offline"; "posix";
}}
modules_disabled = {{ "s2s" }}
{tls}authentication = "internal_hashed"
storage = "internal"
log = {{ {{ levels = {{ min = "{self.log_level}" }}, to = "file", filename = {
                _lua(str(self.log_path))
            } }} }}
VirtualHost "{self.domain}"
""",
            encoding="utf-8",
        )

    def start(self, timeout: float = 15.0) -> None:
        """Start ``prosody -F`` and return once it offers stream features on its c2s port."""
        if self.running:
            return
        binary = ensure_prosody_installed()
        self.write_config()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [binary, "-F", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C to `herd up` must not hit it before we stop it
                preexec_fn=self._preexec_fn,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise ProsodyError(
                    f"prosody exited with {self._process.returncode}; {self._tail()}"
                )
            if self._answers() and self._direct_tls_listening():
                return
            if time.monotonic() > deadline:
                raise ProsodyError(f"prosody not ready after {timeout} s; {self._tail()}")
            time.sleep(0.02)

    def _answers(self) -> bool:
        """Open a stream as a client would; ready means ``</stream:features>`` came back."""
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as conn:
                conn.sendall(_STREAM_HEADER.format(domain=self.domain).encode())
                received = b""
                while b"</stream:features>" not in received:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return False
                    received += chunk
                return True
        except OSError:
            return False

    def _direct_tls_listening(self) -> bool:
        if self.direct_tls_port is None:
            return True
        try:
            socket.create_connection((self.host, self.direct_tls_port), timeout=1.0).close()
        except OSError:
            return False
        return True

    def _tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "no log"
        return "log tail:\n" + "\n".join(text.splitlines()[-lines:])

    def register(self, user: str, password: str) -> str:
        """Create (or reset the password of) an account with ``prosodyctl``; returns the JID."""
        if not _USER.match(user):
            raise ValueError(f"not a plain user name: {user!r}")
        self.write_config()
        prosodyctl = shutil.which("prosodyctl")
        if prosodyctl is None:
            ensure_prosody_installed()
            prosodyctl = shutil.which("prosodyctl") or "prosodyctl"
        done = subprocess.run(
            [
                prosodyctl,
                "--config",
                str(self.config_path),
                "register",
                user,
                self.domain,
                password,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            start_new_session=True,  # a Ctrl-C meant for `herd up` must not cut it short
        )
        if done.returncode != 0:
            raise ProsodyError(f"prosodyctl register {user} failed: {done.stdout}{done.stderr}")
        return self.jid(user)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (Prosody stops in milliseconds); SIGKILL if it does not."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def restart(self, timeout: float = 15.0) -> None:
        """Stop and start on the same port with the same data (accounts, offline messages)."""
        self.stop()
        self.start(timeout)

    def __enter__(self) -> LocalProsody:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m notifier.localxmpp")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install", help="install Prosody (Debian package) unless it is there")
    parser.parse_args(argv)
    try:
        print(ensure_prosody_installed())
    except ProsodyError as error:
        print(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
