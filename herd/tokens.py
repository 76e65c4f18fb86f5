"""Every HMAC and scrypt use of the herd, so what a secret signs is written in one place: line
tokens (scrypt hashes, the delay after failures), peer handshake MACs, unsubscribe tokens,
Jabber link codes, and the web's personal links, sessions and CSRF tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from herd.ops import client_bytes, is_id

__all__ = [
    "LINK_WINDOW",
    "MAX_SIGNED_TOKEN",
    "PROTOCOL_TAG",
    "USER_SCOPE",
    "WebClaim",
    "auth_delay",
    "check_csrf",
    "check_link_code",
    "csrf_token",
    "hash_token",
    "issue_link_code",
    "link_code",
    "link_token",
    "new_nonce",
    "new_token",
    "open_link",
    "open_session",
    "peer_mac",
    "session_token",
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


# --- the web: personal links, sessions, CSRF tokens ---------------------------------------------

MAX_SIGNED_TOKEN: Final = 400
"""The longest link or session token read (characters): a longer one is refused unread."""

USER_SCOPE: Final = "*"
"""The scope of a session good for all of a user's events (no event id can spell it)."""

_LINK_KEY_LABEL: Final = b"renga-web-link-key-v1"
_SESSION_KEY_LABEL: Final = b"renga-web-session-key-v1"
_CSRF_KEY_LABEL: Final = b"renga-web-csrf-key-v1"
_MAC_BYTES: Final = 16  # 128 bits: forging one is as hard as guessing a random 128-bit value


@lru_cache(maxsize=32)
def _derived_key(secret: bytes, label: bytes) -> bytes:
    """A key of its own for each use, so no MAC made for one purpose is good for another (nor
    for the peer handshake, the unsubscribe tokens or the link codes).  Derived once per
    (secret, label): every link of every notification, every session and CSRF check, needs
    one, and the HMAC that derives it cost as much as the token's own."""
    return hmac.new(secret, label, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class WebClaim:
    """What a valid link or session token says: who, for which event (`USER_SCOPE`: all of
    theirs), until when (POSIX seconds), and the user's link generation when it was made."""

    user: str
    scope: str
    expires: int
    generation: int

    def allows(self, event: str) -> bool:
        return self.scope in (event, USER_SCOPE)


def _sign(key: bytes, claim: WebClaim) -> str:
    if not is_id(claim.user) or not (is_id(claim.scope) or claim.scope == USER_SCOPE):
        raise ValueError("a web token names a user id and an event id or the user scope")
    if claim.expires < 0 or claim.generation < 0:
        raise ValueError("expiry and generation are non-negative")
    payload = f"{claim.user}:{claim.scope}:{claim.expires}:{claim.generation}".encode("ascii")
    mac = hmac.new(key, payload, hashlib.sha256).digest()[:_MAC_BYTES]
    return base64.urlsafe_b64encode(payload + mac).rstrip(b"=").decode("ascii")


def _open(key: bytes, token: str, now_s: int) -> WebClaim | None:
    """The claim of a token `_sign` made with `key`, not expired at `now_s`; None for anything
    else.  The MAC is compared in constant time before any field is read; a token that is not
    the one canonical spelling of its bytes (base64's spare bits) is refused, so no changed
    character leaves a token valid."""
    if not 0 < len(token) <= MAX_SIGNED_TOKEN or not token.isascii():
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError:
        return None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
        return None
    if len(raw) <= _MAC_BYTES:
        return None
    payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    expected = hmac.new(key, payload, hashlib.sha256).digest()[:_MAC_BYTES]
    if not hmac.compare_digest(mac, expected):
        return None
    parts = payload.decode("ascii", "replace").split(":")
    if len(parts) != 4 or not (parts[2].isdigit() and parts[3].isdigit()):
        return None
    claim = WebClaim(parts[0], parts[1], int(parts[2]), int(parts[3]))
    return claim if now_s < claim.expires else None


def link_token(secret: bytes, user: str, event: str, expires: int, generation: int) -> str:
    """A personal link's token: `user` may open `event` (and vote and comment there as
    themselves) until `expires` (POSIX seconds), as long as their link generation is still
    `generation` (`LINKS REVOKE` bumps it).  base64url of the fields and a 128-bit HMAC-SHA256
    under a key derived from the herd secret: any server of the herd checks it, none stores it."""
    return _sign(_derived_key(secret, _LINK_KEY_LABEL), WebClaim(user, event, expires, generation))


def open_link(
    secret: bytes,
    token: str,
    event: str,
    now_s: int,
    generation_of: Callable[[str], int | None],
) -> WebClaim | None:
    """The claim of a personal link token for `event`, if it is genuine, unexpired, for that
    event, and of its user's current link generation (`generation_of`: None for no such
    user); else None, the same None whatever was wrong, so a page cannot tell a forged token
    from a revoked one."""
    claim = _open(_derived_key(secret, _LINK_KEY_LABEL), token, now_s)
    if claim is None or claim.scope != event or claim.generation != generation_of(claim.user):
        return None
    return claim


def read_link(secret: bytes, token: str, now_s: int) -> WebClaim | None:
    """The claim of a genuine, unexpired personal link token, whatever its event and
    generation (None for anything else): for the JSON API, which tells a client whose token is
    worthless (401) from one whose token is genuine but opens something else (403).  The
    caller checks the scope and the user's current generation, as `open_link` does."""
    return _open(_derived_key(secret, _LINK_KEY_LABEL), token, now_s)


def session_token(secret: bytes, claim: WebClaim) -> str:
    """The value of a web session cookie: the claim itself, signed under a key of its own, so
    any server of the herd accepts it and none stores sessions."""
    return _sign(_derived_key(secret, _SESSION_KEY_LABEL), claim)


def open_session(secret: bytes, token: str, now_s: int) -> WebClaim | None:
    """The claim of a session cookie, genuine and unexpired; the caller still checks the
    user's current link generation (`WebClaim.generation`) and the scope."""
    return _open(_derived_key(secret, _SESSION_KEY_LABEL), token, now_s)


def csrf_token(secret: bytes, session: str) -> str:
    """The CSRF token of a session: an HMAC of the session cookie's value under a key of its
    own, put in a hidden field of every form; a page of another site can neither read it nor
    make it."""
    key = _derived_key(secret, _CSRF_KEY_LABEL)
    mac = hmac.new(key, session.encode("ascii", "replace"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:_MAC_BYTES]).rstrip(b"=").decode("ascii")


def check_csrf(secret: bytes, session: str, token: str) -> bool:
    """Whether `token` is the CSRF token of `session`, compared in constant time."""
    if not token.isascii():
        return False
    return hmac.compare_digest(csrf_token(secret, session), token)
