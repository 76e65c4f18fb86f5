"""The herd secret a server generates when the config gives none: `<data_dir>/herd.secret`.

Without `[herd] secret` or `HERD_SECRET`, the secret that keys peer links, the operator's
handshake, link codes and unsubscribe tokens is 32 random bytes that the first server to start
writes under its data directory, readable by its owner only (mode 0600).  Every server of that
data directory, and `herd user`, reads the same file, so the herd stays closed to whoever cannot
read the servers' own files.

The file is written whole to a temporary name, then hard-linked into place: the link either
creates the file with its full contents or fails because another server won the race, so any
number of servers starting at once end up with the one secret and no reader ever sees a partial
file.  The choice of secret (`choose_secret`) and the file's format are pure; the reading and
writing below are the wiring, called at start (off the reactor) and by `herd user`.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Final

from herd.config import SECRET_FILE, HerdConfig
from herd.errors import HerdError

_FORMAT: Final = re.compile(rb"([0-9a-f]{64})\n?\Z")


class SecretFileError(HerdError):
    """The generated secret cannot be read or made (a permission, a hand-edited file)."""


def secret_path(data_dir: Path) -> Path:
    return data_dir / SECRET_FILE


def format_secret(random: bytes) -> bytes:
    """The file's contents for 32 fresh random bytes: 64 lowercase hex digits and a newline."""
    if len(random) != 32:
        raise ValueError("the herd secret is 32 random bytes")
    return random.hex().encode() + b"\n"


def parse_secret(contents: bytes) -> bytes | None:
    """The secret a file holds (its hex text, used as the secret's bytes, so the same text in
    `HERD_SECRET` is the same secret), or None if it is not what `format_secret` writes."""
    match = _FORMAT.match(contents)
    return match[1] if match is not None else None


def too_open(mode: int) -> bool:
    """Whether a file's mode lets anyone but its owner read or write it."""
    return bool(stat.S_IMODE(mode) & 0o077)


def choose_secret(config: HerdConfig, generated: Callable[[Path], bytes]) -> HerdConfig:
    """The config with the secret every server and `herd user` use: the configured one (file or
    `HERD_SECRET`) if any, else what `generated` gives for the data directory's secret file."""
    if config.secret:
        return config
    return config.with_secret(generated(secret_path(config.data_dir)))


def read_secret(path: Path) -> bytes:
    """The generated secret of a herd (for `herd user`, which never makes one)."""
    secret = _read(path)
    if secret is None:
        raise SecretFileError(
            f"no herd secret: {path} does not exist yet (a server creates it when it first "
            "starts), and the config sets no [herd] secret or HERD_SECRET"
        )
    return secret


def read_or_create_secret(path: Path) -> bytes:
    """The generated secret of a herd, made now if no server has made it yet (blocking: run it
    off the reactor)."""
    secret = _read(path)
    if secret is not None:
        return secret
    temporary = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(8)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(descriptor, format_secret(secrets.token_bytes(32)))
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another server of this data directory made it first: use theirs
        else:
            _sync_directory(path.parent)
    except OSError as error:
        raise SecretFileError(
            f"cannot create the herd secret {path}: {error.strerror or error}"
        ) from None
    finally:
        temporary.unlink(missing_ok=True)
    return read_secret(path)


def _read(path: Path) -> bytes | None:
    """The secret in `path`; None if there is no such file."""
    try:
        with path.open("rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            contents = file.read(4096)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise SecretFileError(
            f"cannot read the herd secret {path}: {error.strerror or error} (run this as the "
            "user that runs the servers, or set HERD_SECRET)"
        ) from None
    if too_open(mode):
        raise SecretFileError(
            f"{path} can be read or written by others (mode {stat.S_IMODE(mode):04o}): chmod 600 it"
        )
    secret = parse_secret(contents)
    if secret is None:
        raise SecretFileError(f"{path} is not a herd secret (64 hex digits): delete it or fix it")
    return secret


def _sync_directory(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
