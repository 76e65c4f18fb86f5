"""The pure core of `herd talk`: which address a SERVER argument names, where the prompt's
history is kept and which lines it may keep, and how received bytes become lines on a terminal
(bounded: a server sending an endless line never makes the client hold more than a limit).

No I/O: the config's servers, the environment and the home directory are passed in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from herd.config import dial_host
from herd.wire.grammar import redact_secrets

MAX_HELD: Final = 64 * 1024  # bytes of one unfinished line held for the terminal
HISTORY_NAME: Final = "talk_history"
_NOT_KEPT: Final = frozenset({"OPTOUT"})  # carries an unsubscribe token (AUTH: see below)
_UTF8_CONTINUATION: Final = 0x80


class TargetError(ValueError):
    """A SERVER argument that names neither a server of the config nor a HOST:PORT."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where to dial, and how to call it to a person."""

    label: str  # the server's name, or HOST:PORT as given
    host: str
    port: int


def parse_address(text: str) -> tuple[str, int] | None:
    """`HOST:PORT` or `[IPV6]:PORT` as (host, port), or None if `text` is not one."""
    host, colon, port_text = text.rpartition(":")
    if not colon or not port_text.isascii() or not port_text.isdigit():
        return None
    port = int(port_text)
    if not 0 < port < 65536:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    elif ":" in host or not host or any(ch.isspace() or not ch.isprintable() for ch in host):
        return None  # a bare IPv6 address needs brackets: "::1:80" reads two ways
    return host, port


def resolve_target(spec: str | None, servers: Mapping[str, tuple[str, int]]) -> Target:
    """The server `spec` names: the first server when it is None, else a server's name (exactly,
    or in any case when only one name matches), else HOST:PORT.  `servers` maps each name to
    its (host, port), in the config's order."""
    if spec is None:
        if not servers:
            raise TargetError("the config has no servers")
        name = next(iter(servers))
        return _server(name, servers[name])
    if spec in servers:
        return _server(spec, servers[spec])
    folded = [name for name in servers if name.casefold() == spec.casefold()]
    if len(folded) == 1:
        return _server(folded[0], servers[folded[0]])
    address = parse_address(spec)
    if address is not None:
        return Target(spec, address[0], address[1])
    known = ", ".join(servers) or "none"
    if len(folded) > 1:
        raise TargetError(f"{spec!r} could be any of {', '.join(folded)}: give the exact name")
    raise TargetError(f"no server named {spec!r} (known: {known}), and not a HOST:PORT")


def _server(name: str, where: tuple[str, int]) -> Target:
    return Target(name, dial_host(where[0]), where[1])


def history_path(env: Mapping[str, str], home: Path) -> Path:
    """The prompt's history file, under the user's state directory (XDG: `$XDG_STATE_HOME`
    when set to an absolute path, else `~/.local/state`)."""
    state = env.get("XDG_STATE_HOME", "")
    base = Path(state) if state and Path(state).is_absolute() else home / ".local" / "state"
    return base / "renga" / HISTORY_NAME


def keep_in_history(line: str) -> bool:
    """Whether a typed line may be written to the history file: not one carrying a secret (a
    login's token, an operator's hash, an unsubscribe token).  Such a line is still recalled
    within the session, from memory."""
    data = line.encode("utf-8", "surrogateescape")
    if redact_secrets(data) != data:
        return False
    words = line.split(maxsplit=1)
    return not (words and words[0].upper() in _NOT_KEPT)


def for_terminal(line: bytes) -> str:
    """A received line (without its newline) as a terminal shows it: UTF-8, with every byte
    that is not UTF-8 as `\\xNN` and every control or formatting character escaped (`\\x1b`,
    `\\u202e`), so what a server sends can neither drive the terminal nor hide text.  Tabs stay."""
    text = line.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == "\t" else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


class LineSplitter:
    """Received bytes cut into lines for the terminal.  An unfinished line is held up to
    `limit` bytes; past that its first part is given out as a line of its own (cut before a
    UTF-8 sequence, not inside it), so memory stays bounded whatever the server sends."""

    def __init__(self, limit: int = MAX_HELD) -> None:
        if limit < 4:
            raise ValueError("the limit must hold a UTF-8 sequence")
        self.limit = limit
        self._held = b""

    def feed(self, data: bytes) -> list[bytes]:
        """The lines `data` completes (without their newlines)."""
        lines: list[bytes] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            lines.extend(self._whole(self._held + data[start:end]))
            self._held = b""
            start = end + 1
        self._held += data[start:]
        while len(self._held) > self.limit:
            cut = self._cut(self._held)
            lines.append(self._held[:cut])
            self._held = self._held[cut:]
        return lines

    def finish(self) -> list[bytes]:
        """What is left when the stream ends: an unfinished last line, if any."""
        held, self._held = self._held, b""
        return [held] if held else []

    def _whole(self, line: bytes) -> list[bytes]:
        pieces = []
        while len(line) > self.limit:
            cut = self._cut(line)
            pieces.append(line[:cut])
            line = line[cut:]
        pieces.append(line)
        return pieces

    def _cut(self, data: bytes) -> int:
        cut = self.limit
        for back in range(4):  # a UTF-8 sequence is at most 4 bytes
            if data[cut - back] & 0xC0 != _UTF8_CONTINUATION:
                return cut - back
        return cut
