"""`herd talk` as a person uses it, against real `herd run` servers: from a pipe (bytes exactly as
on the wire, by server name or HOST:PORT, a server that cannot be reached, a server closing
first) and on a terminal (a pty: a line typed and its reply, a push arriving while idle, the
history file, leaving with Ctrl-D or Ctrl-C, the server closing)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.herd import REPO, Herd, running_herd
from tests.support.lines import Session, now_time, option_ids
from tests.support.polling import HerdError, wait_until
from tests.support.ports import HOST, free_ports
from tests.support.users import add_user

pytestmark = pytest.mark.timeout(90)

TALK_SECONDS = 20.0
POSITION = b"+34.068930-118.445127"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, places_seed: Path) -> Iterator[Herd]:
    """Two linked servers, Bailey and Bona (max_line 1024), with a warm places index."""
    root = tmp_path_factory.mktemp("talk")
    with running_herd(root, ("Bailey", "Bona"), (("Bailey", "Bona"),), seed=places_seed) as herd:
        herd.up()
        herd.warm_up()
        yield herd


def talk(
    herd: Herd, *arguments: str, data: bytes = b"", timeout: float = TALK_SECONDS
) -> subprocess.CompletedProcess[bytes]:
    """`herd talk ARGUMENTS --config CONFIG` with `data` on its stdin (a pipe)."""
    return subprocess.run(
        [sys.executable, "-m", "herd", "talk", *arguments, "--config", str(herd.config_path)],
        input=data,
        capture_output=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


# --- from a pipe -------------------------------------------------------------------------------


def test_iamat_then_whatsat_through_a_pipe(pair: Herd) -> None:
    when = now_time()
    done = talk(
        pair,
        "Bailey",
        data=b"IAMAT pipe-kiwi %s %s\nWHATSAT pipe-kiwi 10 2\n" % (POSITION, when),
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    at, whatsat = done.stdout.split(b"\n", 1)
    assert re.fullmatch(
        rb"AT Bailey [+-]\d+\.\d+ pipe-kiwi " + re.escape(POSITION + b" " + when), at
    ), at
    assert whatsat.startswith(at + b"\n{\n")  # the stored AT line, then the JSON
    assert whatsat.endswith(b"}\n\n")
    assert json.loads(whatsat[len(at) + 1 :])["status"] == "OK"


def test_a_client_id_that_is_not_utf8_goes_both_ways_unchanged(pair: Herd) -> None:
    client = b"caf\xe9-\xff\xfe"
    when = now_time()
    done = talk(
        pair,
        "Bona",
        data=b"IAMAT %s %s %s\nWHATSAT %s 5 0\n" % (client, POSITION, when, client),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"AT Bona ")
    assert done.stdout.count(b" %s %s %s\n" % (client, POSITION, when)) == 2
    assert done.stdout.endswith(b"}\n\n")


def test_server_names_in_any_case_and_host_port(pair: Herd) -> None:
    for spec in ("bona", "BONA", f"{HOST}:{pair.port('Bona')}", f"localhost:{pair.port('Bona')}"):
        done = talk(pair, spec, data=b"STATUS\n")
        assert done.returncode == 0, (spec, done.stderr)
        assert done.stdout.startswith(b'STATUS {"server":"Bona"'), (spec, done.stdout)
    first = talk(pair, data=b"STATUS\n")  # no SERVER: the config's first
    assert first.stdout.startswith(b'STATUS {"server":"Bailey"'), first.stdout


def test_last_line_without_newline_is_sent_as_is(pair: Herd) -> None:
    done = talk(pair, data=b"HELLO world\n\nSTATUS")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split(b"\n")
    assert lines[0] == b"? HELLO world"
    assert lines[1].startswith(b"STATUS {")
    assert lines[2:] == [b""]


def test_cannot_connect_is_one_line_and_exit_1(pair: Herd) -> None:
    (port,) = [p for p in free_ports(3) if p not in pair.ports.values()][:1]
    done = talk(pair, f"{HOST}:{port}", data=b"STATUS\n")
    assert done.returncode == 1
    assert done.stdout == b""
    message = done.stderr.decode()
    assert message.count("\n") == 1, message
    assert message.startswith(f"herd talk: cannot connect to {HOST}:{port}: "), message


def test_an_unknown_server_name_is_refused(pair: Herd) -> None:
    done = talk(pair, "Nobody")
    assert done.returncode == 2
    assert b"no server named 'Nobody' (known: Bailey, Bona)" in done.stderr


def test_a_server_closing_first_ends_talk_with_what_came(pair: Herd) -> None:
    """stdin stays open; the server closes on a too-long line: talk prints the reply that came
    before it and exits 0 without waiting for stdin."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "herd", "talk", "Bailey", "--config", str(pair.config_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write(b"STATUS\n" + b"X" * 1025 + b"\nSTATUS\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=TALK_SECONDS)  # closes stdin only after the exit
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert out.count(b"\n") == 1 and out.startswith(b'STATUS {"server":"Bailey"'), out


def test_lines_are_sent_as_read_and_replies_copied_as_they_come(pair: Herd) -> None:
    """A pipe that stays open: each reply arrives before stdin ends; EOF half-closes."""
    with subprocess.Popen(
        [sys.executable, "-m", "herd", "talk", "Bona", "--config", str(pair.config_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            for word in (b"ONE", b"TWO"):
                proc.stdin.write(b"%s\n" % word)
                proc.stdin.flush()
                assert proc.stdout.readline() == b"? %s\n" % word
            proc.stdin.write(b"THREE")
            proc.stdin.close()  # the half-close: the last line is answered, then the close
            assert proc.stdout.read() == b"? THREE\n"
            assert proc.wait(TALK_SECONDS) == 0
        finally:
            proc.kill()


def test_a_huge_reply_is_streamed_not_held(pair: Herd) -> None:
    """Many replies in one go (more than the pipe and socket buffers) all arrive, in order."""
    count = 3000
    done = talk(pair, data=b"".join(b"NOPE %d\n" % i for i in range(count)))
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"".join(b"? NOPE %d\n" % i for i in range(count))


def test_a_closed_stdout_ends_talk_quietly(pair: Herd) -> None:
    """`herd talk | head -1` once head is gone: no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "herd", "talk", "--config", str(pair.config_path)],
            input=b"STATUS\n",
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=TALK_SECONDS,
            cwd=REPO,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.stderr == b""
    assert done.returncode == 128 + signal.SIGPIPE


# --- on a terminal -----------------------------------------------------------------------------

_ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[=>]|\r")


class Terminal:
    """`herd talk` on a pseudo-terminal, as a person sees and types it.  Answers the cursor
    position requests a real terminal answers; `screen()` is the output without escapes."""

    def __init__(self, arguments: list[str], env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "herd", "talk", *arguments],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=REPO,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.output = b""
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the process is gone
                return
            if not chunk:
                return
            with self._lock:
                self.output += chunk
            for _ in range(chunk.count(b"\x1b[6n")):
                os.write(self.master, b"\x1b[1;1R")

    def screen(self) -> str:
        with self._lock:
            return _ESCAPES.sub(b"", self.output).decode("utf-8", "replace")

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def expect(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        return wait_until(
            lambda: re.search(pattern, self.screen()),
            timeout,
            lambda: f"{pattern!r} on the terminal; it shows:\n{self.screen()[-3000:]}",
        )

    def wait(self, timeout: float = 10.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise HerdError(f"talk did not exit; the terminal shows:\n{self.screen()}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        os.close(self.master)


@pytest.fixture
def state_home(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def terminal_env(state_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROMPT_TOOLKIT", "LC_"))}
    return {**env, "TERM": "xterm-256color", "XDG_STATE_HOME": str(state_home), "LANG": "C.UTF-8"}


@pytest.fixture(scope="module")
def tokens(pair: Herd) -> dict[str, str]:
    """Users ann and ben (made once for the module); their tokens."""
    return {
        user: add_user(pair.config_path, user, f"{user}@example.net") for user in ("ann", "ben")
    }


def open_terminal(pair: Herd, env: dict[str, str], *arguments: str) -> Terminal:
    return Terminal([*arguments, "--config", str(pair.config_path)], env)


def test_a_line_typed_its_reply_a_push_while_idle_and_the_history(
    pair: Herd, terminal_env: dict[str, str], state_home: Path, tokens: dict[str, str]
) -> None:
    with Session(pair.port("Bailey"), "ann", tokens["ann"]) as ann:
        event_id = str(ann.event("PLAN Talk night")["id"])
        ann.event(f"INVITE {event_id} ben")
        (place_id,) = option_ids(ann.event(f"PROPOSE {event_id} PLACE The attic"), "places")
    terminal = open_terminal(pair, terminal_env, "bona")
    try:
        terminal.expect(r"connected to Bona \(127\.0\.0\.1:\d+\); Ctrl-D leaves")
        terminal.expect(r"Bona>")
        when = now_time().decode()
        terminal.type(f"IAMAT tty-kiwi {POSITION.decode()} {when}\r")
        terminal.expect(rf"AT Bona [+-]\d+\.\d+ tty-kiwi \S+ {re.escape(when)}\n")
        terminal.type(f"AUTH ann {tokens['ann']}\r")
        terminal.expect(r'USER \{"id":"ann"')
        terminal.type("SUBSCRIBE\r")
        terminal.expect(r"SUBSCRIBED ann \S+\n")
        with Session(pair.port("Bailey"), "ben", tokens["ben"]) as ben:
            ben.wait_event(event_id, lambda e: len(e["places"]) == 1)
            ben.event(f"VOTE {event_id} {place_id} YES")
        push = terminal.expect(rf"PUSH \S+ votes {re.escape(event_id)} [^\n]*\nBona>")
        assert "Talk night" in push[0]
        terminal.type("\x04")  # Ctrl-D
        assert terminal.wait() == 0
    finally:
        terminal.close()
    history = (state_home / "renga" / "talk_history").read_text()
    assert f"+IAMAT tty-kiwi {POSITION.decode()} {when}\n" in history
    assert "+SUBSCRIBE\n" in history
    assert "AUTH" not in history and tokens["ann"] not in history  # the token stays out
    assert (state_home / "renga" / "talk_history").stat().st_mode & 0o777 == 0o600


def test_history_is_recalled_in_the_next_session(
    pair: Herd, terminal_env: dict[str, str], state_home: Path
) -> None:
    (state_home / "renga").mkdir(parents=True)
    (state_home / "renga" / "talk_history").write_text("\n# earlier\n+WHOAMI\n")
    terminal = open_terminal(pair, terminal_env)
    try:
        terminal.expect(r"Bailey>")
        terminal.type("\x1b[A\r")  # up arrow, Enter
        terminal.expect(r"ERR not-authenticated[^\n]*\n")
        terminal.type("\x03")  # Ctrl-C leaves too
        assert terminal.wait() == 0
    finally:
        terminal.close()


def test_a_history_that_cannot_be_written_is_no_obstacle(
    pair: Herd, terminal_env: dict[str, str], state_home: Path
) -> None:
    state_home.write_text("a file where the state folder should be")
    terminal = open_terminal(pair, terminal_env)
    try:
        terminal.expect(r"Bailey>")
        terminal.type("STATUS\r")
        terminal.expect(r'STATUS \{"server":"Bailey"')
        terminal.type("\x04")
        assert terminal.wait() == 0
    finally:
        terminal.close()
    assert "Traceback" not in terminal.screen()


def test_the_server_closing_ends_the_prompt(pair: Herd, terminal_env: dict[str, str]) -> None:
    terminal = open_terminal(pair, terminal_env, "Bailey")
    try:
        terminal.expect(r"Bailey>")
        terminal.type("STATUS\r")
        terminal.expect(r'STATUS \{"server":"Bailey"')
        terminal.type("X" * 1100 + "\r")  # longer than max_line: the server closes
        terminal.expect(r"herd talk: the server closed the connection")
        assert terminal.wait() == 0
    finally:
        terminal.close()


def test_typed_text_is_sent_as_utf8(pair: Herd, terminal_env: dict[str, str]) -> None:
    terminal = open_terminal(pair, terminal_env)
    try:
        terminal.expect(r"Bailey>")
        terminal.type("HELLO caf\u00e9 \u00fcber\r")
        terminal.expect(r"\? HELLO caf\u00e9 \u00fcber\n")
        terminal.type("\x04")
        assert terminal.wait() == 0
    finally:
        terminal.close()


def test_cannot_connect_on_a_terminal(pair: Herd, terminal_env: dict[str, str]) -> None:
    (port,) = [p for p in free_ports(3) if p not in pair.ports.values()][:1]
    terminal = open_terminal(pair, terminal_env, f"{HOST}:{port}")
    try:
        assert terminal.wait() == 1
        terminal.expect(rf"herd talk: cannot connect to {HOST}:{port}: ")
    finally:
        terminal.close()
