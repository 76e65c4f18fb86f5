"""Line tokens, pure: issue, hash and verify the token a user authenticates with, and the delay
after failed attempts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Final

from herd.ops import client_bytes

__all__ = ["auth_delay", "hash_token", "new_token", "verify_token"]

_SCRYPT_N: Final = 2**10
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1
_DUMMY: Final = (_SCRYPT_N, _SCRYPT_R, _SCRYPT_P, bytes(16), bytes(32))


def new_token(random: bytes) -> str:
    """A line token from fresh random bytes (the caller's `secrets.token_bytes(32)`), in URL-safe
    base64 so that it is one field on the line."""
    if len(random) < 16:
        raise ValueError("a token needs at least 16 random bytes")
    return base64.urlsafe_b64encode(random).rstrip(b"=").decode()


def hash_token(token: str, salt: bytes) -> str:
    """`scrypt$<n>$<r>$<p>$<salt hex>$<hash hex>`, what the user record keeps.

    Tokens are 32 random bytes, so the hash only has to make a stolen database useless, not
    slow down guessing; a small scrypt (~4 ms) keeps `AUTH` off the reactor's critical path.
    """
    digest = _scrypt(token, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_token(stored: str | None, token: str) -> bool:
    """Whether `token` matches `stored`, in constant time; an unknown user or a malformed hash
    costs the same hashing as a real check, so timing does not tell which users exist."""
    parsed = _parse_hash(stored) if stored is not None else None
    n, r, p, salt, expected = parsed or _DUMMY
    actual = _scrypt(token, salt, n, r, p)
    return hmac.compare_digest(actual, expected) and parsed is not None


def _scrypt(token: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(client_bytes(token), salt=salt, n=n, r=r, p=p, dklen=32)


def _parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    """The parameters of a stored hash, bounded (it came from a peer) so that checking it
    can never cost more than a few milliseconds of CPU and memory."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt" or not all(x.isdigit() for x in parts[1:4]):
        return None
    n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
    if n not in (2**10, 2**11, 2**12, 2**13, 2**14) or not (1 <= r <= 8 and 1 <= p <= 2):
        return None
    try:
        salt, digest = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
    except ValueError:
        return None
    return (n, r, p, salt, digest) if len(digest) == 32 else None


def auth_delay(failures: int) -> float:
    """Seconds to wait before answering a failed `AUTH`, after `failures` failures on this
    connection: 0.5, 1, 2, 4, then 8 s each, so guessing is slow and a typo is not."""
    if failures <= 0:
        return 0.0
    return min(0.5 * 2.0 ** (min(failures, 8) - 1), 8.0)
