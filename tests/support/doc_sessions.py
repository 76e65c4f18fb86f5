"""The example sessions of the project's markdown docs, as data, and the matcher that checks what
a real server (or command) sent against them (pure: no I/O except reading the file in
`examples`/`sessions`).

The format (docs/protocol.md, "How to read the examples"):

- a line session is a fenced block of `> ` (sent) and `< ` (received) lines, with the markers
  `(client half-closes)`, `(server closes)`, `(<user> sends <line>)` (another connection of
  that user sends a line) and any other `(…)` line as a note; a `> `/`< ` line written
  `b'…'` is a Python bytes literal holding exactly those bytes (terminator included), any other
  line is its UTF-8 text plus `\\n`; `> XXXX…X    (1025 bytes)` is that character 1025 times;
  after `(server closes)` a new `> ` line starts a new session on a new connection;
- a shell session is a fenced `console` or `sh` block of `$ ` commands, each followed by the
  output it prints;
- HTML comments on the lines right above a fence are its markers (`<!-- server: Bona -->`,
  `<!-- not run: <why> -->`, `<!-- parsed: <why> -->`), read as `key: value`.

Matching: `…` in an expected line matches any text (within the line).  The values that differ
from run to run are recognised by their shape (`VARYING`): op ids, tokens, checkpoints, AT
diffs, nonces and MACs, link codes, comment times, ports.  The first time a doc value of such a
kind is seen it is *bound* to the value really received, and from then on it stands for that
value: in expected lines, and in sent lines (`Bindings.substitute`), so a session can send the
event id a reply gave.  Two doc values never bind to one real value.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "VARYING",
    "WILDCARD",
    "Action",
    "Bindings",
    "Command",
    "Expect",
    "HalfClose",
    "Mismatch",
    "Note",
    "Send",
    "ServerCloses",
    "Session",
    "ShellSession",
    "examples",
    "match",
    "parse_examples",
    "sessions",
    "shell_sessions",
]

WILDCARD = "…"
_WILDCARD = WILDCARD.encode()


# --- what varies ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of value that differs between runs: how it looks in a doc (`doc`, a regex over
    the expected text) and what it may be in what was received, given the doc's value."""

    name: str
    doc: re.Pattern[bytes]
    received: str  # a regex; `{same}` is replaced by the part of the doc value that is fixed

    def pattern(self, value: bytes) -> bytes:
        same = value.split(b".", 1)[0] if self.name == "op id" else b""
        return self.received.encode().replace(b"{same}", re.escape(same))


def _kind(name: str, doc: str, received: str) -> Kind:
    return Kind(name, re.compile(doc.encode()), received)


# Order matters where shapes overlap: the first kind that matches at a position wins.
VARYING: tuple[Kind, ...] = (
    # `Bailey.e3ce36.19`: the server's name stays; its store instance and op count vary.
    _kind("op id", r"\b[A-Z][A-Za-z]*\.[0-9a-f]{6}\.[0-9]+\b", r"{same}\.[0-9a-f]{6}\.[0-9]+"),
    _kind(
        "checkpoint", r"(?<![0-9])[0-9]{20}\.[0-9a-f]{32}(?![0-9a-f])", r"[0-9]{20}\.[0-9a-f]{32}"
    ),
    _kind(
        "token",
        r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])",
        r"[A-Za-z0-9_-]{43}",
    ),
    _kind("AT diff", r"(?<![\w.])[+-][0-9]+\.[0-9]{9}(?![0-9])", r"[+-][0-9]+\.[0-9]{9}"),
    _kind(
        "nonce or MAC",
        r"(?<![0-9a-f])(?:[0-9a-f]{64}|[0-9a-f]{32})(?![0-9a-f])",
        r"(?:[0-9a-f]{64}|[0-9a-f]{32})",
    ),
    _kind("link code", r"(?<=LINKCODE )[0-9a-z]{8} [0-9]+", r"[0-9a-z]{8} [0-9]+"),
    _kind(
        "comment time",
        r'(?<="at":")[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z(?=","text":)',
        r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z",
    ),
    # The default herd's ports (config/herd.toml), which a test herd replaces by free ones.
    _kind("port", r"(?<![0-9.:+-])1200[1-5](?![0-9.])", r"[0-9]{1,5}"),
)

_ANY_KIND = re.compile(b"|".join(b"(" + kind.doc.pattern + b")" for kind in VARYING))


def _varying(text: bytes) -> Iterable[tuple[int, int, Kind]]:
    """(start, end, kind) of each varying value in `text`, left to right."""
    for found in _ANY_KIND.finditer(text):
        index = next(i for i, group in enumerate(found.groups()) if group is not None)
        yield found.start(), found.end(), VARYING[index]


@dataclass
class Bindings:
    """Doc value -> the value really seen, for the varying kinds; one-to-one."""

    values: dict[bytes, bytes] = field(default_factory=dict)

    def bind(self, doc: bytes, real: bytes) -> str | None:
        """Record doc -> real; a problem if either side is bound to something else already."""
        bound = self.values.get(doc)
        if bound is not None:
            return None if bound == real else f"{doc!r} is {bound!r}, not {real!r}"
        for other, value in self.values.items():
            if value == real:
                return f"{real!r} is already what {other!r} stands for, not {doc!r}"
        self.values[doc] = real
        return None

    def substitute(self, data: bytes) -> bytes:
        """`data` (a sent line, a command) with every bound doc value replaced by its value."""
        parts: list[bytes] = []
        last = 0
        for start, end, _ in _varying(data):
            parts += [data[last:start], self.values.get(data[start:end], data[start:end])]
            last = end
        return b"".join([*parts, data[last:]])


# --- matching ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mismatch:
    expected: bytes
    received: bytes
    why: str

    def __str__(self) -> str:
        return f"{self.why}\n  expected {self.expected!r}\n  received {self.received!r}"


def match(
    expected: bytes | str, received: bytes, bindings: Bindings | None = None
) -> Mismatch | None:
    """None when `received` is what `expected` shows: `…` matches any text, a varying value
    matches its kind (and binds, in `bindings`, if given: the bindings change only on a match).
    Otherwise why not."""
    wanted = expected.encode() if isinstance(expected, str) else expected
    scratch = Bindings(dict(bindings.values)) if bindings is not None else Bindings()
    regex, groups = _compile(wanted, scratch)
    found = re.fullmatch(regex, received, re.DOTALL)
    if found is None:
        return Mismatch(wanted, received, "does not match")
    for name, doc in groups.items():
        problem = scratch.bind(doc, found.group(name))
        if problem is not None:
            return Mismatch(wanted, received, problem)
    if bindings is not None:
        bindings.values = scratch.values
    return None


def _compile(expected: bytes, bindings: Bindings) -> tuple[bytes, dict[str, bytes]]:
    """The regex for `expected`, and its named groups: group name -> the doc value it binds."""
    parts: list[bytes] = []
    groups: dict[str, bytes] = {}
    names: dict[bytes, str] = {}
    last = 0

    def literal(text: bytes) -> None:
        for index, piece in enumerate(text.split(_WILDCARD)):
            if index:
                parts.append(b".*?")
            parts.append(re.escape(piece))

    for start, end, kind in _varying(expected):
        literal(expected[last:start])
        value = expected[start:end]
        if value in bindings.values:
            parts.append(re.escape(bindings.values[value]))
        elif value in names:
            parts.append(b"(?P=%s)" % names[value].encode())
        else:
            name = f"v{len(names)}"
            names[value] = name
            groups[name] = value
            parts.append(b"(?P<%s>%s)" % (name.encode(), kind.pattern(value)))
        last = end
    literal(expected[last:])
    return b"".join(parts), groups


# --- parsing -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes  # exactly what is sent, terminator included


@dataclass(frozen=True, slots=True)
class Expect:
    line: bytes  # the expected line, terminator included (`\n` unless a bytes literal says)


@dataclass(frozen=True, slots=True)
class HalfClose:
    pass


@dataclass(frozen=True, slots=True)
class ServerCloses:
    pass


@dataclass(frozen=True, slots=True)
class Action:
    """`(alice sends COMMENT …)`: that user, on a connection of their own, sends the line."""

    user: str
    line: bytes  # without terminator


@dataclass(frozen=True, slots=True)
class Note:
    text: str


Step = Send | Expect | HalfClose | ServerCloses | Action | Note


@dataclass(frozen=True, slots=True)
class Session:
    """One connection's example: its steps in order."""

    path: str
    line: int  # the line of the block's opening fence (1-based)
    heading: str
    markers: dict[str, str]
    steps: tuple[Step, ...]

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line} ({self.heading})"


@dataclass(frozen=True, slots=True)
class Command:
    command: str
    output: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ShellSession:
    path: str
    line: int
    heading: str
    markers: dict[str, str]
    commands: tuple[Command, ...]

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line} ({self.heading})"


class DocFormatError(ValueError):
    """A block that looks like an example but breaks the format."""


_FENCE = re.compile(r"^(\s*)(```+)\s*([\w+-]*)")
_MARKER = re.compile(r"^\s*<!--\s*([\w -]+?)\s*:\s*(.*?)\s*-->\s*$")
_REPEAT = re.compile(r"^(\S)\1*…\1\s+\(([0-9]+) bytes\)$")
_ACTION = re.compile(r"^\(([\w.-]+) sends (.+)\)$")
_SHELL = ("console", "sh", "shell", "bash")


@dataclass(frozen=True, slots=True)
class _Block:
    line: int
    info: str
    lines: tuple[str, ...]
    heading: str
    markers: dict[str, str]


def _blocks(text: str) -> list[_Block]:
    blocks: list[_Block] = []
    lines = text.split("\n")
    heading = ""
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        fence = _FENCE.match(line)
        if fence is None:
            index += 1
            continue
        indent, ticks, info = fence.groups()
        markers: dict[str, str] = {}
        above = index - 1
        while above >= 0 and (found := _MARKER.match(lines[above])) is not None:
            markers.setdefault(found[1].strip(), found[2])
            above -= 1
        body: list[str] = []
        index += 1
        while index < len(lines) and not lines[index].strip().startswith(ticks):
            body.append(
                lines[index][len(indent) :] if lines[index].startswith(indent) else lines[index]
            )
            index += 1
        blocks.append(_Block(index - len(body), info, tuple(body), heading, markers))
        index += 1
    return blocks


def _is_line_session(block: _Block) -> bool:
    content = [line for line in block.lines if line.strip()]
    return (
        block.info not in _SHELL
        and bool(content)
        and all(line.startswith((">", "<", "(")) for line in content)
        and any(line.startswith((">", "<")) for line in content)
    )


def _payload(text: str, where: str) -> bytes:
    if text.startswith(("b'", 'b"')):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError) as error:
            raise DocFormatError(f"{where}: not a bytes literal: {text!r}") from error
        if not isinstance(value, bytes):
            raise DocFormatError(f"{where}: not a bytes literal: {text!r}")
        return value
    repeat = _REPEAT.match(text)
    if repeat is not None:
        return repeat[1].encode() * int(repeat[2]) + b"\n"
    return text.encode() + b"\n"


def _line_sessions(path: str, block: _Block) -> list[Session]:
    found: list[Session] = []
    steps: list[Step] = []
    closed = False
    for offset, line in enumerate(block.lines):
        where = f"{path}:{block.line + offset}"
        if not line.strip():
            continue
        if line.startswith(">") and closed:
            found.append(Session(path, block.line, block.heading, block.markers, tuple(steps)))
            steps, closed = [], False
        if line.startswith("> ") or line == ">":
            steps.append(Send(_payload(line[2:], where)))
        elif line.startswith("< ") or line == "<":
            steps.append(Expect(_payload(line[2:], where) if line != "<" else b"\n"))
        elif line == "(client half-closes)":
            steps.append(HalfClose())
        elif line == "(server closes)":
            steps.append(ServerCloses())
            closed = True
        elif (action := _ACTION.match(line)) is not None:
            steps.append(Action(action[1], action[2].encode()))
        elif line.startswith("(") and line.endswith(")"):
            steps.append(Note(line[1:-1]))
        else:
            raise DocFormatError(f"{where}: not a session line: {line!r}")
    if steps:
        found.append(Session(path, block.line, block.heading, block.markers, tuple(steps)))
    return found


def _shell_session(path: str, block: _Block) -> ShellSession:
    commands: list[Command] = []
    command: str | None = None
    output: list[str] = []
    for offset, line in enumerate(block.lines):
        if line.startswith("$ "):
            if command is not None:
                commands.append(Command(command, tuple(output)))
            command, output = line[2:], []
        elif command is None:
            if line.strip():
                where = f"{path}:{block.line + offset}"
                raise DocFormatError(f"{where}: a shell block starts with `$ ` commands")
        else:
            output.append(line)
    if command is not None:
        while output and not output[-1].strip():
            output.pop()
        commands.append(Command(command, tuple(output)))
    return ShellSession(path, block.line, block.heading, block.markers, tuple(commands))


def parse_examples(text: str, path: str = "<doc>") -> list[Session | ShellSession]:
    """Every line session and shell session of a markdown text, in document order."""
    found: list[Session | ShellSession] = []
    for block in _blocks(text):
        if block.info in _SHELL:
            found.append(_shell_session(path, block))
        elif _is_line_session(block):
            found.extend(_line_sessions(path, block))
    return found


def examples(path: Path | str) -> list[Session | ShellSession]:
    return parse_examples(Path(path).read_text(encoding="utf-8"), str(path))


def sessions(path: Path | str) -> list[Session]:
    """The line sessions of a markdown file (docs/protocol.md, docs/chat.md), in order."""
    return [found for found in examples(path) if isinstance(found, Session)]


def shell_sessions(path: Path | str) -> list[ShellSession]:
    """The shell sessions (`console`/`sh` blocks of `$ ` lines) of a markdown file, in order."""
    return [found for found in examples(path) if isinstance(found, ShellSession)]
