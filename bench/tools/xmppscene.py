"""What `bench xmpp_fanout` and `bench chat` share: a real Prosody (`LocalProsody`, its own
config, plus `admin_shell` so accounts can be made in bulk), accounts, a five-server herd whose
config has an `[xmpp]` table (every server's bot logs in), Renga users with JIDs, and processes
of slixmpp sessions (`bench/tools/xmppclients.py`) driven over their stdin.

Everything is started through a `Processes` (stopped when its block ends); Prosody is stopped
by the scene's `close()`, which callers run in a `finally`.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.harness import BenchError, Herd, HerdLayout, median, wait_for
from bench.tools.lines import Operator
from notifier.localxmpp import LocalProsody
from tests.support.herd import NAMES
from tests.support.processes import Child, Processes, log

PASSWORD = "bench-pw"
BOT = "renga"
BOT_UP = "XMPP: session up"


class BenchProsody(LocalProsody):
    """`LocalProsody` exactly, plus `admin_shell` (for `prosodyctl shell`, bulk accounts)."""

    def write_config(self) -> None:
        super().write_config()
        text = self.config_path.read_text(encoding="utf-8")
        if '"admin_shell"' not in text:
            text = text.replace('"roster"; "saslauth";', '"roster"; "saslauth"; "admin_shell";')
            self.config_path.write_text(text, encoding="utf-8")

    def shell(self, commands: list[str], timeout: float = 600) -> str:
        done = subprocess.run(
            ["prosodyctl", "--config", str(self.config_path), "shell"],
            input="".join(command + "\n" for command in commands),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"prosodyctl shell failed: {done.stdout[-500:]}{done.stderr[-500:]}")
        return done.stdout


def limits_check(prosody: BenchProsody) -> dict[str, Any]:
    """Whether this Prosody limits client bandwidth (runtime notes: Debian's default config does,
    10 kb/s): the config LocalProsody wrote, and the modules the running server has loaded."""
    config = prosody.config_path.read_text(encoding="utf-8")
    modules = prosody.shell(['module:list("localhost")', "module:list()"])
    loaded = sorted(set(re.findall(r"^\|\s{5}(\w+)\s*$", modules, re.M)))
    return {
        "config_mentions_limits": "limits" in config,
        "mod_limits_loaded": "limits" in loaded,
        "modules_loaded": loaded,
    }


def prosodyctl_register(prosody: BenchProsody, name: str) -> None:
    """What `LocalProsody.register` runs, without rewriting the config first."""
    done = subprocess.run(
        [
            "prosodyctl",
            "--config",
            str(prosody.config_path),
            "register",
            name,
            prosody.domain,
            PASSWORD,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"prosodyctl register {name} failed: {done.stdout}{done.stderr}")


def register_accounts(prosody: BenchProsody, names: list[str]) -> dict[str, Any]:
    """Accounts three ways, each timed: `LocalProsody.register` (one `prosodyctl register`
    process each) for 20, the same 8 at a time for 100, and one `prosodyctl shell` session
    (`user:create`, piped) for the rest."""
    sequential, parallel, rest = names[:20], names[20:120], names[120:]
    timings: dict[str, Any] = {}
    start = time.perf_counter()
    for name in sequential:
        prosody.register(name, PASSWORD)
    timings["prosodyctl_register_each_s"] = (time.perf_counter() - start) / max(1, len(sequential))
    start = time.perf_counter()
    # `LocalProsody.register` rewrites prosody.cfg.lua on every call (not atomically), so
    # concurrent calls race ("config file is not readable"); run its command directly instead.
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: prosodyctl_register(prosody, name), parallel))
    timings["prosodyctl_register_8_parallel_per_account_s"] = (time.perf_counter() - start) / max(
        1, len(parallel)
    )
    start = time.perf_counter()
    if rest:
        output = prosody.shell(
            [f'user:create("{name}@{prosody.domain}", "{PASSWORD}")' for name in rest]
        )
        created = output.count("OK: User created")
        if created != len(rest):
            raise BenchError(f"prosodyctl shell created {created} of {len(rest)} accounts")
    timings["shell_per_account_s"] = (time.perf_counter() - start) / max(1, len(rest))
    timings["counts"] = {
        "sequential": len(sequential),
        "parallel": len(parallel),
        "shell": len(rest),
    }
    return timings


class Tool:
    """A child process with its stdin for commands and its stdout read by a thread."""

    def __init__(
        self,
        processes: Processes,
        name: str,
        command: list[str],
        log_path: Path,
        loop: asyncio.AbstractEventLoop,
        on_line: Callable[[str], bool],
    ) -> None:
        self.name = name
        self.child: Child = processes.start(
            name, command, log_path=log_path, stdout=subprocess.PIPE, stdin=subprocess.PIPE
        )
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.loop = loop
        self.on_line = on_line
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        stdout = self.child.process.stdout
        assert stdout is not None
        try:
            for raw in stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.loop.call_soon_threadsafe(self._line, line)
            self.loop.call_soon_threadsafe(self._line, "")
        except (RuntimeError, ValueError):
            return  # the bench's loop closed first: nobody is listening any more

    def _line(self, line: str) -> None:
        if line and self.on_line(line):
            return
        self.queue.put_nowait(line)

    def send(self, line: str) -> None:
        stdin = self.child.process.stdin
        assert stdin is not None
        stdin.write(line.encode() + b"\n")
        stdin.flush()

    async def expect(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = await asyncio.wait_for(
                    self.queue.get(), max(0.01, deadline - time.monotonic())
                )
            except TimeoutError:
                raise BenchError(f"{self.name}: no `{prefix}` line in {timeout:.0f} s") from None
            if line == "":
                raise BenchError(f"{self.name} exited:\n{self.child.tail()}")
            if line.startswith(prefix):
                return line


class XmppScene:
    def __init__(self, processes: Processes, directory: Path) -> None:
        self.processes = processes
        self.directory = directory
        self.prosody = BenchProsody(directory / "prosody")
        self.herd: Herd | None = None
        self.holders: list[Tool] = []
        self.arrivals: dict[int, float] = {}  # global session index -> monotonic time
        self.sample: str | None = None
        self.results: dict[str, Any] = {}

    def close(self) -> None:
        self.prosody.stop()

    def start_prosody(self, people: list[str], extra: list[str]) -> None:
        self.prosody.start()
        self.results["limits"] = limits_check(self.prosody)
        log(f"prosody up; limits: {self.results['limits']['mod_limits_loaded']}")
        self.prosody.register(BOT, PASSWORD)
        for name in extra:
            self.prosody.register(name, PASSWORD)
        timings = register_accounts(self.prosody, people)
        self.results["registration"] = timings
        log(
            "accounts: prosodyctl register "
            f"{timings['prosodyctl_register_each_s'] * 1000:.0f} ms each, "
            f"8 in parallel {timings['prosodyctl_register_8_parallel_per_account_s'] * 1000:.0f}"
            f" ms each, prosodyctl shell {timings['shell_per_account_s'] * 1000:.1f} ms each"
        )

    def start_herd(
        self,
        cpus: dict[str, int | None] | None = None,
        launchers: dict[str, list[str]] | None = None,
    ) -> Herd:
        herd = Herd(
            self.processes,
            HerdLayout.default(),
            self.directory / "herd",
            cpus=cpus or {},
            launchers=launchers or {},
        )
        secret_file = self.directory / "bot.secret"
        secret_file.write_text(PASSWORD)
        with herd.config_path.open("a") as config:
            config.write(
                f'\n[xmpp]\njid = "{BOT}@{self.prosody.domain}"\n'
                f'password_file = "{secret_file}"\nhost = "127.0.0.1"\n'
                f'port = {self.prosody.port}\ntls = "none"\n'
            )
        herd.start()
        herd.wait_ready()

        def bots_up() -> bool:
            herd.check_alive()
            return all(
                BOT_UP in (herd.directory / f"{name}.stderr").read_text(errors="replace")
                for name in NAMES
            )

        wait_for(bots_up, 30, "every server's bot to log in", interval=0.1)
        self.herd = herd
        log("herd up, five bots logged in")
        return herd

    async def add_users(self, names: list[str], with_jid: bool, token_hash: str) -> None:
        assert self.herd is not None
        from herd.config import load_config

        secret = load_config(self.herd.config_path, os.environ).secret
        operator = await Operator.open(secret, "Bailey", self.herd.port("Bailey"))
        try:
            extra = (lambda name: f"jid={name}@{self.prosody.domain}") if with_jid else None
            await operator.add_users(names, token_hash, extra)
        finally:
            operator.close()

    def _holder_line(self, offset: int) -> Callable[[str], bool]:
        def on_line(line: str) -> bool:
            if line.startswith("got "):
                _, index, at = line.split()
                self.arrivals[offset + int(index)] = float(at)
                return True
            if line.startswith("sample "):
                self.sample = line[len("sample ") :]
                return True
            return False

        return on_line

    async def start_holders(self, names: list[str], processes: int) -> dict[str, float]:
        """`processes` hold processes sharing `names`' sessions; waits until all logged in."""
        loop = asyncio.get_running_loop()
        per = -(-len(names) // processes)
        start = time.perf_counter()
        for number in range(processes):
            chunk = names[number * per : (number + 1) * per]
            if not chunk:
                continue
            jids = self.directory / f"holder{number}.jids"
            jids.write_text("\n".join(f"{n}@{self.prosody.domain}" for n in chunk) + "\n")
            command = [
                sys.executable,
                "-m",
                "bench",
                "xmppclients",
                "hold",
                "--port",
                str(self.prosody.port),
                "--jids",
                str(jids),
                "--password",
                PASSWORD,
            ]
            self.holders.append(
                Tool(
                    self.processes,
                    f"holder{number}",
                    command,
                    self.directory / f"holder{number}.stderr",
                    loop,
                    self._holder_line(number * per),
                )
            )
        rss = []
        for holder in self.holders:
            ready = await holder.expect("ready", 300)
            rss.append(float(ready.split()[3]))
        seconds = time.perf_counter() - start
        figures = {
            "sessions": len(names),
            "processes": len(self.holders),
            "login_s": seconds,
            "rss_mib_per_process": median(rss),
            "rss_kib_per_session": sum(rss) * 1024 / len(names),
        }
        log(
            f"{len(names)} XMPP sessions in {len(self.holders)} processes logged in in "
            f"{seconds:.1f} s; {figures['rss_kib_per_session']:.0f} KiB RSS per session"
        )
        return figures

    def expect_all(self, *parts: str) -> None:
        self.arrivals = {}
        for holder in self.holders:
            holder.send("expect " + "\t".join(parts))

    async def wait_arrivals(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.arrivals) < count:
            if time.monotonic() > deadline:
                raise BenchError(f"only {len(self.arrivals)} of {count} messages arrived")
            await asyncio.sleep(0.005)

    def quit_holders(self) -> None:
        for holder in self.holders:
            if holder.child.alive():
                holder.send("quit")
