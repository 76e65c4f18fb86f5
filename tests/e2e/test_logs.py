"""What a real `herd run` process writes about what it receives, and what it does when it
cannot write: tokens never in clear, logs bounded in size and rate, a full disk stops the
server with a message instead of hanging it.
"""

from __future__ import annotations

import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.herd import REPO, Herd, running_herd
from tests.support.lines import Client, at_lines, now_time
from tests.support.polling import HerdError, wait_until

TOKEN = b"Zc9KMPFRgWwDHS2jhWQsOUYFPPKi1WFIV5VxDeCze14"
HASH = b"scrypt$1024$8$1$031c6c7fd3cfdf9779cf1055de110d47$eceedd6bf8e9a3e77415c0f3"


POSITION = b"+34.068930-118.445127"
EXIT_BOUND_SECONDS = 10.0


def file_size_limit(limit: int) -> Callable[[], None]:
    """For `preexec_fn`: no file the process writes may grow past `limit` bytes; a write that
    would fails with EFBIG (SIGXFSZ ignored) as it does on a full disk with ENOSPC."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def require_file_size_limit(tmp_path: Path) -> None:
    """Skip unless a child under RLIMIT_FSIZE gets EFBIG here (no privilege is needed on
    Linux, but a sandbox may refuse setrlimit or SIG_IGN)."""
    probe = tmp_path / "probe"
    code = (
        "import errno, sys\n"
        "try:\n"
        f"    with open({str(probe)!r}, 'wb') as file:\n"
        "        file.write(b'x' * 8192)\n"
        "except OSError as e:\n"
        "    sys.exit(0 if e.errno == errno.EFBIG else 3)\n"
        "sys.exit(4)\n"
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", code], preexec_fn=file_size_limit(4096), timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"cannot run a process under RLIMIT_FSIZE here: {error}")
    if result.returncode != 0:
        pytest.skip(f"RLIMIT_FSIZE does not make writes fail with EFBIG here ({result.returncode})")


class Stderr:
    """A server's stderr read through a pipe (a pipe has no file size limit), kept in memory."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        self._pipe = proc.stderr
        self.data = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while chunk := self._pipe.read1(65536):
            self.data += chunk

    def finish(self) -> bytes:
        """Everything written, once the process has exited (its end of the pipe is closed)."""
        self._reader.join(10)
        if not self._reader.is_alive():
            self._pipe.close()
        return self.data


def start_limited(herd: Herd, limit: int) -> tuple[subprocess.Popen[bytes], Stderr]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "herd", "run", "Bailey", "--config", str(herd.config_path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO,
        preexec_fn=file_size_limit(limit),
    )
    herd.procs["Bailey"] = proc
    stderr = Stderr(proc)
    wait_until(lambda: b"listening on" in stderr.data or proc.poll() is not None, 20, "start")
    assert proc.poll() is None, stderr.finish()[-3000:]
    return proc, stderr


def exit_code(proc: subprocess.Popen[bytes], stderr: Stderr, timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        tail = stderr.finish()[-2000:].decode("utf-8", "replace")
        raise HerdError(f"the server did not exit within {timeout} s:\n{tail}") from None


@pytest.fixture(scope="module")
def index_seed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding the offline places index, built as `herd up` builds it, so that no
    server of these tests builds one (it would write a large file under the size limit)."""
    from herd.places.index import DEFAULT_MIN_POPULATION, open_index

    seed = tmp_path_factory.mktemp("index")
    open_index(seed, (), DEFAULT_MIN_POPULATION).close()
    return seed


@pytest.fixture
def lone(tmp_path: Path, index_seed: Path) -> Iterator[Herd]:
    """One server of its own, no peers, not started."""
    with running_herd(tmp_path, names=("Bailey",), links=(), seed=index_seed) as herd:
        try:
            yield herd
        finally:
            herd.close()
            for proc in herd.procs.values():
                if proc.stderr is not None:
                    proc.stderr.close()


@pytest.mark.timeout(60)
def test_no_malformed_login_puts_its_token_in_the_log(lone: Herd) -> None:
    lone.up()
    lines = [
        b"\tAUTH carol " + TOKEN + b" x",
        b"AUTH " + TOKEN,
        b"auth carol " + TOKEN,
        b"Auth\x0bcarol\x0c" + TOKEN + b"\r",
        b"USER-ADD bob " + HASH + b" email=bob@example.org",
        b"user-token bob " + HASH,
        b"STATUS",
    ]
    with Client(lone.port("Bailey")) as client:
        client.send(b"".join(line + b"\n" for line in lines))
        for line in lines[:-1]:
            assert client.line().startswith(b"? "), line
        assert client.line().startswith(b"STATUS ")
    wait_until(
        lambda: re.search(rb"sent \S+ STATUS ", lone.log_path("Bailey").read_bytes()),
        10.0,
        "the STATUS reply logged",
    )
    assert lone.terminate("Bailey") == 0
    for text in (lone.log_path("Bailey").read_bytes(), lone.stderr_path("Bailey").read_bytes()):
        assert TOKEN not in text and HASH[:20] not in text
        assert text.count(b"<redacted>") == 2 * (len(lines) - 1)
        assert b"recv 127.0.0.1:" in text and b" AUTH carol <redacted>\n" in text


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sigterm", [False, True], ids=["alone", "sigterm"])
def test_a_full_disk_stops_the_server_with_a_message_and_loses_nothing_acknowledged(
    lone: Herd, tmp_path: Path, sigterm: bool
) -> None:
    """The server's files may not grow past 1 MB: its store fails after some hundreds of
    reports.  It must then exit 1, promptly, by itself or when sent SIGTERM meanwhile (which
    alone would exit 0), saying why; every AT it sent is in its store when it restarts without
    the limit."""
    require_file_size_limit(tmp_path)
    proc, stderr = start_limited(lone, 1_000_000)
    acknowledged: dict[bytes, bytes] = {}
    started = time.monotonic()
    try:
        with Client(lone.port("Bailey"), timeout=10.0) as client:
            for batch in range(2000):
                clients = [b"full-%d-%d" % (batch, index) for index in range(20)]
                client.send(
                    b"".join(b"IAMAT %s %s %s\n" % (c, POSITION, now_time()) for c in clients)
                )
                for name in clients:
                    reply = client.line()[:-1]
                    assert reply.startswith(b"AT Bailey ") and reply.split()[3] == name, reply
                    acknowledged[name] = reply
    except (HerdError, OSError):
        pass  # the server stopped answering: its store is full
    stopped_answering = time.monotonic()
    assert stopped_answering - started < 60, "the store never filled up"
    assert acknowledged, stderr.finish()[-3000:]
    if sigterm and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    code = exit_code(proc, stderr, EXIT_BOUND_SECONDS)
    text = stderr.finish()
    assert code == 1, text[-3000:]
    assert re.search(rb"(?m)^herd: Bailey: the store \S+ cannot write \(.+\): stopping", text)
    assert b"note - Bailey: the store " in lone.log_path("Bailey").read_bytes()  # it could

    lone.start("Bailey")
    lone.wait_answering("Bailey")
    stored = at_lines(lone.port("Bailey"), acknowledged)
    lost = [name for name, line in acknowledged.items() if stored[name] != line]
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged reports lost: {lost[:3]}"


def flood(port: int, count: int, blank: int) -> None:
    """Send `blank` blank lines and `count` STATUS lines on one connection (written by a
    thread while this one reads), and read the `count` replies."""
    with Client(port, timeout=20.0) as client:

        def write() -> None:
            client.send(b"\n" * blank)
            for _ in range(count // 1000):
                client.send(b"STATUS\n" * 1000)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        for _ in range(count // 1000 * 1000):
            assert client.line().startswith(b"STATUS ")
        writer.join(10)


def log_bytes(herd: Herd) -> int:
    return sum(path.stat().st_size for path in herd.data_dir.glob("Bailey.log*"))


@pytest.mark.timeout(90)
def test_blank_lines_and_a_flood_of_one_connection_barely_grow_the_log(lone: Herd) -> None:
    """50,000 blank lines and 50,000 STATUS from one client: the log (and stderr) grow by a
    small fraction of the ~10 MB that logging each line costs, and say what they left out."""
    lone.up()
    before = (log_bytes(lone), lone.stderr_path("Bailey").stat().st_size)
    flood(lone.port("Bailey"), 50_000, 50_000)
    assert lone.terminate("Bailey") == 0
    grown = (log_bytes(lone) - before[0], lone.stderr_path("Bailey").stat().st_size - before[1])
    assert grown[0] < 1_000_000 and grown[1] < 1_000_000, grown
    log = lone.log_path("Bailey").read_bytes()
    assert not re.search(rb"(?m) recv \S+ $", log), "a blank line was logged"
    # the flooding client (the harness asked STATUS too, on connections of its own)
    flooder = Counter(re.findall(rb" recv (\S+) STATUS", log)).most_common(1)[0][0]
    client = re.escape(flooder)
    shown = len(re.findall(rb"(?m) " + client + rb" STATUS", log))
    counted = re.findall(rb"note - (\d+) more lines from " + client + rb" not logged", log)
    assert counted, "no count of the lines not logged"
    assert shown + sum(int(count) for count in counted) == 2 * 50_000  # requests and replies


@pytest.mark.timeout(90)
def test_the_log_is_rotated_within_its_size(lone: Herd) -> None:
    with lone.config_path.open("a") as config:
        config.write("\n[log]\nmax_bytes = 65536\nbackups = 2\nlines_per_second = 1000000\n")
    lone.up()
    flood(lone.port("Bailey"), 10_000, 10_000)
    wait_until(lambda: Path(f"{lone.log_path('Bailey')}.2").exists(), 10.0, "two rotations")
    assert lone.terminate("Bailey") == 0
    files = sorted(lone.data_dir.glob("Bailey.log*"))
    assert [file.name for file in files] == ["Bailey.log", "Bailey.log.1", "Bailey.log.2"]
    assert all(file.stat().st_size <= 65536 for file in files)
    assert log_bytes(lone) <= 65536 * 3
    assert lone.stderr_path("Bailey").stat().st_size > 65536 * 3  # stderr is not rotated
    assert lone.log_path("Bailey").read_bytes().endswith(b"Bailey stopped\n")


@pytest.mark.timeout(90)
def test_a_log_that_cannot_be_written_is_dropped_with_a_note_and_the_server_goes_on(
    lone: Herd, tmp_path: Path
) -> None:
    """No file may grow past 256 kB and the log may: once it cannot be written, the server
    says so on stderr, keeps answering, and stops cleanly."""
    require_file_size_limit(tmp_path)
    proc, stderr = start_limited(lone, 256_000)
    port = lone.port("Bailey")

    def many(count: int) -> None:
        """20 connections at once: each has its own budget of lines per second."""
        floods = [threading.Thread(target=flood, args=(port, count, 0)) for _ in range(20)]
        for thread in floods:
            thread.start()
        for thread in floods:
            thread.join(30)

    deadline = time.monotonic() + 30
    while b"the log cannot be written to" not in stderr.data and time.monotonic() < deadline:
        many(1000)
    many(1000)
    proc.send_signal(signal.SIGTERM)
    assert exit_code(proc, stderr, EXIT_BOUND_SECONDS) == 0
    text = stderr.finish()
    assert re.search(rb"(?m)^.* note - the log cannot be written to \S+Bailey\.log \(.+\)", text)
    assert lone.log_path("Bailey").stat().st_size <= 256_000
