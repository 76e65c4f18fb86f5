"""Operator lines, sans I/O: USER-ADD and USER-TOKEN, sent by `herd user` on a connection
that proved it knows the herd secret, and their `ERR <code>: <message>` refusals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Final

from herd.wire.grammar import (
    NOT_A_USER_ID,
    TOKEN_HASH,
    USER_ID,
    WireError,
    is_email,
    is_jid,
)

BAD_HASH: Final = "the token hash is not scrypt$<n>$<r>$<p>$<salt hex>$<hash hex>"


class OperatorLineError(WireError):
    """An operator command with a field that is not what it must be: answered
    `ERR <code>: <message>`, and nothing is changed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def line(self) -> bytes:
        return f"ERR {self.code}: {self.message}\n".encode()


def _check_user(user: str) -> None:
    if USER_ID.match(user) is None:
        raise OperatorLineError("bad-user", f"{user!r} {NOT_A_USER_ID}")


def _check_hash(token_hash: str) -> None:
    if TOKEN_HASH.match(token_hash) is None:
        raise OperatorLineError("bad-hash", BAD_HASH)


def _operator_fields(line: bytes, word: bytes, usage: str) -> list[str]:
    """The fields after `word`, split at ASCII whitespace (as every line is) and each decoded
    as strict UTF-8, so no character inside a field can become a separator later."""
    fields = line.split()
    if not fields or fields[0] != word:
        raise WireError(f"not {word.decode()}")
    try:
        return [field.decode() for field in fields[1:]]
    except UnicodeDecodeError:
        raise OperatorLineError("bad-field", f"{usage}: fields must be UTF-8") from None


@dataclass(frozen=True, slots=True)
class UserAdd:
    """`USER-ADD <user> <token hash> [email=<address>] [jid=<jid>]`: the operator creates a
    user.  Each optional field at most once, in any order; `to_line` writes email first."""

    user: str
    token_hash: str
    email: str | None = None
    jid: str | None = None

    USAGE: ClassVar[str] = "USER-ADD <user> <token hash> [email=<address>] [jid=<jid>]"

    def check(self) -> None:
        """Raise `OperatorLineError` unless every field is valid (and so is one field)."""
        _check_user(self.user)
        _check_hash(self.token_hash)
        if self.email is not None and not is_email(self.email):
            raise OperatorLineError("bad-value", f"{self.email!r} is not an email address")
        if self.jid is not None and not is_jid(self.jid):
            raise OperatorLineError(
                "bad-value", f"{self.jid!r} is not a bare JID like name@example.org"
            )

    @classmethod
    def parse(cls, line: bytes) -> UserAdd:
        fields = _operator_fields(line, b"USER-ADD", cls.USAGE)
        if len(fields) < 2:
            raise OperatorLineError("bad-field", f"{cls.USAGE}: the user and hash are missing")
        options: dict[str, str] = {}
        for field in fields[2:]:
            key, equals, value = field.partition("=")
            if not equals or key not in ("email", "jid"):
                raise OperatorLineError("bad-field", f"{cls.USAGE}: unknown field {field!r}")
            if key in options:
                raise OperatorLineError("bad-field", f"{cls.USAGE}: {key}= given twice")
            options[key] = value
        command = cls(fields[0], fields[1], options.get("email"), options.get("jid"))
        command.check()
        return command

    def to_line(self) -> bytes:
        self.check()
        words = ["USER-ADD", self.user, self.token_hash]
        for key, value in (("email", self.email), ("jid", self.jid)):
            if value is not None:
                words.append(f"{key}={value}")
        return " ".join(words).encode() + b"\n"


@dataclass(frozen=True, slots=True)
class UserToken:
    """`USER-TOKEN <user> <token hash>`: the operator gives a user a new token."""

    user: str
    token_hash: str

    USAGE: ClassVar[str] = "USER-TOKEN <user> <token hash>"

    def check(self) -> None:
        _check_user(self.user)
        _check_hash(self.token_hash)

    @classmethod
    def parse(cls, line: bytes) -> UserToken:
        fields = _operator_fields(line, b"USER-TOKEN", cls.USAGE)
        if len(fields) != 2:
            raise OperatorLineError("bad-field", f"{cls.USAGE}: takes exactly two fields")
        command = cls(fields[0], fields[1])
        command.check()
        return command

    def to_line(self) -> bytes:
        self.check()
        return f"USER-TOKEN {self.user} {self.token_hash}\n".encode()


OperatorCommand = UserAdd | UserToken

OPERATOR_PARSERS: Final[dict[bytes, Callable[[bytes], OperatorCommand]]] = {
    b"USER-ADD": UserAdd.parse,
    b"USER-TOKEN": UserToken.parse,
}
"""The operator's words, each with the parser of its whole line."""


def parse_operator_line(line: bytes) -> OperatorCommand | None:
    """One line on an authenticated operator connection; None if blank.  `OperatorLineError`
    for a USER-ADD/USER-TOKEN with a bad field, `WireError` for any other command."""
    fields = line.split(None, 1)
    if not fields:
        return None
    parse = OPERATOR_PARSERS.get(fields[0])
    if parse is None:
        raise WireError("not an operator command")
    return parse(line)
