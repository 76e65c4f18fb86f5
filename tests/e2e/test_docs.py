"""The docs are tests: every example session of docs/protocol.md runs against a real herd (two
`herd run` servers, Bailey and Bona, and a configured Campbell that is not running), in
document order on one herd, as the doc tells the story; every shell command of README.md runs
against a real herd of the default five, with its shown output matched the same way
(tests/support/doc_sessions.py: `…` matches any text, ids, tokens, checkpoints and diffs bind
to what the server really said).

Blocks that are not run carry a marker in the doc's source saying why: `<!-- parsed: … -->` for
peer-link sessions a client cannot send (each line is parsed with `herd.wire` instead, and each
op decoded), `<!-- not run: … -->` for commands another test runs (`make up` by
tests/e2e/test_up.py …).  A block without a marker is run; nothing is skipped silently.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from herd.ops import Op
from herd.wire.commands import parse_client_port_line
from herd.wire.grammar import WireError
from herd.wire.peer import OpRecord, OpUpdate, parse_peer_line
from tests.support.doc_sessions import (
    Action,
    Bindings,
    Expect,
    HalfClose,
    Mismatch,
    Note,
    Send,
    ServerCloses,
    Session,
    ShellSession,
    examples,
    match,
)
from tests.support.herd import REPO, Herd, running_herd
from tests.support.lines import connect

PROTOCOL = REPO / "docs" / "protocol.md"
README = REPO / "README.md"
READ_SECONDS = 12.0  # above the longest AUTH delay a session waits for (8 s)
PROTOCOL_SERVERS = ("Bailey", "Bona", "Campbell")
PROTOCOL_LINKS = (("Bailey", "Bona"), ("Bona", "Campbell"))
OP_ID = re.compile(
    r"[A-Za-z][!-~]*\.[0-9a-f]{6}\.[1-9][0-9]*"
)  # as handlers/planning.py makes them
LATER = re.compile(r"([0-9]+(?:\.[0-9]+)?) s later")
ID_FIELD = re.compile(r'"(id|event|option|time|place)":"([^"]*)"')


# --- running one line session ------------------------------------------------------------------


class SessionFailed(AssertionError):
    pass


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def line(self) -> bytes:
        """One line with its `\\n`, or what is left before EOF (b"" at EOF)."""
        deadline = time.monotonic() + READ_SECONDS
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SessionFailed(f"no line within {READ_SECONDS} s; buffered {self.buffer!r}")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self.buffer = self.buffer, b""
                return rest
            self.buffer += chunk
        end = self.buffer.index(b"\n") + 1
        data, self.buffer = self.buffer[:end], self.buffer[end:]
        return data

    def wait_for_line(self, since: float) -> float:
        """Seconds from `since` until a whole line is buffered (it stays for `line`)."""
        deadline = time.monotonic() + READ_SECONDS
        while b"\n" not in self.buffer:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buffer += chunk
        return time.monotonic() - since

    def closed(self) -> bytes:
        """What arrives before the server closes (b"" if nothing)."""
        rest = self.buffer
        self.buffer = b""
        while True:
            self.sock.settimeout(READ_SECONDS)
            chunk = self.sock.recv(65536)
            if not chunk:
                return rest
            rest += chunk


class Story:
    """One herd the sessions of a doc run against, in order, sharing their bindings."""

    def __init__(self, ports: dict[str, int], default: str) -> None:
        self.ports = ports
        self.default = default
        self.bindings = Bindings()
        self.tokens: dict[bytes, bytes] = {}  # user -> the token that last logged them in

    def run(self, session: Session) -> None:
        server = session.markers.get("server", self.default)
        transcript: list[str] = []
        with connect(self.ports[server], READ_SECONDS) as sock:
            reader = _Reader(sock)
            pending_auth: tuple[bytes, bytes] | None = None
            sent_at = time.monotonic()
            for step in session.steps:
                if isinstance(step, Send):
                    data = self.bindings.substitute(step.data)
                    fields = data.split()
                    if len(fields) == 3 and fields[0] == b"AUTH":
                        pending_auth = (fields[1], fields[2])
                    transcript.append(f"> {data!r}")
                    sock.sendall(data)
                    sent_at = time.monotonic()
                elif isinstance(step, Expect):
                    received = reader.line()
                    transcript.append(f"< {received!r}")
                    self._check(session, match(step.line, received, self.bindings), transcript)
                    if pending_auth is not None and received.startswith(b"USER "):
                        self.tokens[pending_auth[0]] = pending_auth[1]
                    pending_auth = None
                elif isinstance(step, HalfClose):
                    sock.shutdown(socket.SHUT_WR)
                elif isinstance(step, ServerCloses):
                    rest = reader.closed()
                    if rest:
                        transcript.append(f"< {rest!r}")
                        self._check(
                            session, Mismatch(b"", rest, "more before the close"), transcript
                        )
                elif isinstance(step, Action):
                    self._act(server, step, transcript)
                else:
                    assert isinstance(step, Note)
                    later = LATER.fullmatch(step.text)
                    if later is not None:  # "(0.504 s later)": the next reply took that long
                        waited = reader.wait_for_line(sent_at)
                        if waited < float(later[1]) * 0.9:
                            raise SessionFailed(
                                f"{session.where}: answered after {waited:.3f} s, not ({step.text})"
                            )

    def _act(self, server: str, action: Action, transcript: list[str]) -> None:
        """`(alice sends …)`: alice, logged in on a connection of her own, sends the line."""
        token = self.tokens.get(action.user.encode())
        assert token is not None, f"{action.user} never logged in before {action}"
        line = self.bindings.substitute(action.line)
        with connect(self.ports[server], READ_SECONDS) as sock:
            reader = _Reader(sock)
            sock.sendall(b"AUTH %s %s\n%s\n" % (action.user.encode(), token, line))
            logged_in, answer = reader.line(), reader.line()
        transcript.append(f"({action.user} sends {line!r}: {answer!r})")
        assert logged_in.startswith(b"USER ") and not answer.startswith((b"ERR", b"?")), (
            f"{action.user} could not send {line!r}: {logged_in!r} {answer!r}"
        )

    @staticmethod
    def _check(session: Session, mismatch: Mismatch | None, transcript: list[str]) -> None:
        if mismatch is not None:
            shown = "\n".join(transcript)
            raise SessionFailed(f"{session.where}: {mismatch}\nthe session so far:\n{shown}")


def check_parsed(session: Session) -> None:
    """A peer-link session: each line is one `herd.wire` parses, each op one `Op` decodes and
    has an id as servers make them."""
    for step in session.steps:
        data = (
            step.data if isinstance(step, Send) else step.line if isinstance(step, Expect) else None
        )
        if data is None:
            continue
        word, _, rest = data.partition(b" ")
        if isinstance(step, Expect) and word in (b"USER", b"EVENT") and rest.startswith(b"{"):
            continue  # a reply to a client, in a session that follows a peer's
        parsed: object
        try:
            parsed = parse_peer_line(data)
        except WireError:
            try:
                parsed = parse_client_port_line(data)
            except WireError as error:
                raise SessionFailed(f"{session.where}: {data!r} does not parse: {error}") from None
        if isinstance(parsed, OpUpdate | OpRecord):
            Op.from_json(parsed.payload)
            for key, value in ID_FIELD.findall(parsed.payload.decode()):
                assert OP_ID.fullmatch(value), f"{session.where}: {key} {value!r} is no op id"


# --- running shell commands --------------------------------------------------------------------

# `herd …` or `.venv/bin/herd …`, up to the end of its arguments (a pipe, `;`, `&`, `>`, `#`).
HERD_COMMAND = re.compile(r"(?<![\w/.-])(?:\.venv/bin/)?herd((?: [^|;&#>\n]*?)?)(\s*)(?=$|[|;&#>])")


def shell_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HERD_SECRET", "RENGA_XMPP_PASSWORD")}
    env["PYTHONPATH"] = str(REPO)  # `herd` is this checkout's, wherever the command runs
    return env


def run_shell(
    shell: ShellSession, bindings: Bindings, cwd: Path, config: Path | None = None
) -> None:
    """Each `$ ` command, run by bash in `cwd` (stdout and stderr together, as a terminal shows
    them); its output lines matched against the doc's.  `herd` is this interpreter's, and with
    `config` every `herd` command gets `--config config` (the README's commands use the
    default config, whose ports a test cannot assume free)."""
    herd = f"{shlex.quote(sys.executable)} -m herd"
    extra = "" if config is None else f" --config {shlex.quote(str(config))}"
    for command in shell.commands:
        text = bindings.substitute(command.command.encode()).decode()
        text = HERD_COMMAND.sub(lambda found: f"{herd}{found[1]}{extra}{found[2]}", text)
        done = subprocess.run(
            ["bash", "-c", text],
            cwd=cwd,
            env=shell_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=60,
            check=False,
        )
        expected = "\n".join(command.output).rstrip("\n")
        received = done.stdout.rstrip(b"\n")
        mismatch = match(expected.encode(), received, bindings)
        if mismatch is not None:
            raise SessionFailed(f"{shell.where}: $ {command.command}\n{mismatch}")


# --- docs/protocol.md --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def protocol_herd(tmp_path_factory: pytest.TempPathFactory, places_seed: Path) -> Iterator[Herd]:
    root = tmp_path_factory.mktemp("protocol")
    with running_herd(root, PROTOCOL_SERVERS, PROTOCOL_LINKS, seed=places_seed) as herd:
        herd.up("Bailey", "Bona")
        yield herd


def test_every_example_session_of_the_protocol_reference(protocol_herd: Herd) -> None:
    story = Story(protocol_herd.ports, "Bailey")
    found = examples(PROTOCOL)
    ran = parsed = 0
    for example in found:
        if isinstance(example, ShellSession):
            assert "not run" not in example.markers, example.where
            run_shell(example, story.bindings, protocol_herd.root)
            ran += 1
        elif "parsed" in example.markers:
            check_parsed(example)
            parsed += 1
        else:
            assert "not run" not in example.markers, f"{example.where}: every session runs"
            story.run(example)
            ran += 1
    assert ran > 30 and parsed > 3, (ran, parsed)


# --- README.md ---------------------------------------------------------------------------------


def herd_subcommands() -> set[str]:
    """The subcommands this build's `herd` has (from its --help)."""
    done = subprocess.run(
        [sys.executable, "-m", "herd", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=False,
    )
    return set(re.findall(r"^\s{2,}(\w+)\s", done.stdout, re.MULTILINE))


def readme_blocks() -> list[ShellSession]:
    found = examples(README)
    sessions = [block for block in found if isinstance(block, Session)]
    assert not sessions, [block.where for block in sessions]
    shells = [block for block in found if isinstance(block, ShellSession)]
    for block in shells:
        reason = block.markers.get("not run")
        assert reason is None or reason.strip(), f"{block.where}: say why it is not run"
    return shells


@pytest.fixture
def readme_herd(tmp_path_factory: pytest.TempPathFactory, places_seed: Path) -> Iterator[Herd]:
    """The default five servers and links (config/herd.toml's), on free ports."""
    with running_herd(tmp_path_factory.mktemp("readme"), seed=places_seed) as herd:
        herd.up()
        yield herd


def test_every_readme_command_runs_or_says_which_test_runs_it(
    request: pytest.FixtureRequest,
) -> None:
    blocks = readme_blocks()
    run = [block for block in blocks if "not run" not in block.markers]
    assert run, "the README shows commands that run"
    known = herd_subcommands()
    needed = {
        found[1]
        for block in run
        for command in block.commands
        for found in re.finditer(r"herd (\w+)", command.command)
    }
    if not needed <= known:
        pytest.skip(f"this build has no `herd {', '.join(sorted(needed - known))}` yet")
    readme_herd: Herd = request.getfixturevalue("readme_herd")
    # the README names the default ports; here they are free ones
    default_ports = {name: 12001 + index for index, name in enumerate(readme_herd.names)}
    bindings = Bindings()
    for name, port in default_ports.items():
        assert bindings.bind(str(port).encode(), str(readme_herd.port(name)).encode()) is None
    for block in run:
        run_shell(block, bindings, REPO, readme_herd.config_path)
