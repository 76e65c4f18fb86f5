"""Every HMAC and scrypt use of the herd, so what a secret signs is written in one place: line
tokens (scrypt hashes, the delay after failures), peer handshake MACs, unsubscribe tokens and
Jabber link codes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Final

from herd.ops import client_bytes

__all__ = [
    "LINK_WINDOW",
    "PROTOCOL_TAG",
    "auth_delay",
    "check_link_code",
    "hash_token",
    "issue_link_code",
    "link_code",
    "new_nonce",
    "new_token",
    "peer_mac",
    "unsubscribe_token",
    "verify_token",
    "verify_unsubscribe",
]

# --- line tokens ---------------------------------------------------------------------------------

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


# --- peer handshake MACs ------------------------------------------------------------------------

PROTOCOL_TAG = b"renga-peer-v1"
"""The first field of every peer MAC, so that no other HMAC under the herd secret matches one."""


def peer_mac(
    secret: bytes, role: bytes, dialer: bytes, acceptor: bytes, nd: bytes, na: bytes
) -> bytes:
    """The handshake proof of `role` (`dialer` or `acceptor`, see `herd.peers`), hex: it binds
    both names and both nonces, so a proof is good for one link attempt only."""
    message = b"|".join((PROTOCOL_TAG, role, dialer, acceptor, nd, na))
    return hmac.new(secret, message, hashlib.sha256).hexdigest().encode()


def new_nonce() -> bytes:
    """A fresh handshake nonce: 128 random bits in hex, one field on the line."""
    return secrets.token_hex(16).encode()


# --- unsubscribe tokens --------------------------------------------------------------------------


def unsubscribe_token(secret: bytes, user: str) -> str:
    """An HMAC-SHA256 of the user id under the server secret, 128 bits in base64url: whoever
    holds it may unsubscribe that user, and nobody can make one without the secret."""
    mac = hmac.new(secret, b"renga-unsubscribe\0" + user.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:16]).rstrip(b"=").decode("ascii")


def verify_unsubscribe(secret: bytes, user: str, token: str) -> bool:
    """Whether `token` is the user's unsubscribe token, compared in constant time."""
    return hmac.compare_digest(unsubscribe_token(secret, user), token)


# --- link codes ----------------------------------------------------------------------------------

LINK_WINDOW: Final = 600
"""Seconds per link-code window; a code is good in its window and the next."""

_CROCKFORD: Final = str.maketrans(  # base 32 to Crockford's alphabet: no i, l, o, u
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", "0123456789abcdefghjkmnpqrstvwxyz"
)
_LINK_READS: Final = str.maketrans("ilo", "110", "-_ ")


def link_code(secret: bytes, user: str, jid: str, window: int) -> str:
    """8 characters (40 bits) of HMAC-SHA256 over (user, JID, window), in Crockford's base 32
    (no i, l, o, u to misread).  JIDs compare case-insensitively, as Jabber servers do."""
    message = f"renga-link\0{user}\0{jid.casefold()}\0{window}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.b32encode(digest[:5]).decode().translate(_CROCKFORD)


def issue_link_code(secret: bytes, user: str, jid: str, now_ns: int) -> tuple[str, int]:
    """The code for `LINKCODE <code> <expires>` and when it expires (POSIX seconds): the end of
    the window after the current one."""
    window = now_ns // 10**9 // LINK_WINDOW
    return link_code(secret, user, jid, window), (window + 2) * LINK_WINDOW


def check_link_code(secret: bytes, user: str, jid: str, code: str, now_ns: int) -> bool:
    """Whether `code` (any case, dashes and spaces ignored, i/l read as 1 and o as 0) was made
    in the current or the previous window, compared in constant time."""
    typed = code.lower().translate(_LINK_READS)
    window = now_ns // 10**9 // LINK_WINDOW
    matches = [  # both windows, so that the time taken does not tell which one matched
        hmac.compare_digest(link_code(secret, user, jid, w), typed) for w in (window, window - 1)
    ]
    return any(matches)
