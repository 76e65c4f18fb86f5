"""The web's request rules, pure (no Twisted): sessions in cookies, where a form may come from,
what the access log may show, and the security headers every response carries.

The signing itself (links, sessions, CSRF tokens) is `herd.tokens`'s, through `herd.api`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

__all__ = [
    "FLASH_COOKIE",
    "MAX_FLASH",
    "SECURITY_HEADERS",
    "SESSION_COOKIE",
    "USER_PATH",
    "Cookie",
    "access_line",
    "cookie_values",
    "origin_of",
    "read_flash",
    "same_origin",
    "write_flash",
]

SESSION_COOKIE: Final = "renga_session"
FLASH_COOKIE: Final = "renga_flash"
USER_PATH: Final = "/u"
"""Where a session good for all the user's events is sent besides `/prefs` (the settings
link sets it for both): the "my events" page and its live stream."""
MAX_FLASH: Final = 300  # characters of a result message carried to the next page

SECURITY_HEADERS: Final[Mapping[bytes, bytes]] = {
    b"Content-Security-Policy": (
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"same-origin",
    b"X-Frame-Options": b"DENY",
    b"Cross-Origin-Opener-Policy": b"same-origin",
    b"Cross-Origin-Resource-Policy": b"same-origin",
    b"Permissions-Policy": b"geolocation=(), camera=(), microphone=()",
    b"Cache-Control": b"no-store",
}
"""Sent with every response, errors too.  No inline script or style is allowed (the page has
none); the page cannot be framed; no Referer leaves it (the address never holds a token once
the personal link has redirected, but a Referer must not carry even the event's id away)."""

_COOKIE_VALUE: Final = re.compile(r"[A-Za-z0-9_-]{1,512}\Z")
_SAFE_LOG: Final = re.compile(rb"[^\x21-\x7e]")
_QUERY_NAME: Final = re.compile(rb"[a-z_]{1,16}\Z")


@dataclass(frozen=True, slots=True)
class Cookie:
    """A `Set-Cookie` header: HttpOnly and SameSite always; Secure when the site is https."""

    name: str
    value: str
    path: str
    max_age: int
    secure: bool
    same_site: str = "Lax"

    def header(self) -> bytes:
        parts = [
            f"{self.name}={self.value}",
            f"Path={self.path}",
            f"Max-Age={max(self.max_age, 0)}",
            "HttpOnly",
            f"SameSite={self.same_site}",
        ]
        if self.secure:
            parts.append("Secure")
        return "; ".join(parts).encode("ascii")


def cookie_values(headers: Iterable[bytes], name: str) -> list[str]:
    """Every value of cookie `name` in the request's `Cookie` headers, in the order sent (a
    browser sends the cookie with the longest path first); values that are not base64url
    (all of ours are) are skipped."""
    wanted = name.encode("ascii")
    found: list[str] = []
    for header in headers:
        for pair in header.split(b";"):
            key, equals, value = pair.strip().partition(b"=")
            if equals and key == wanted:
                text = value.decode("ascii", "replace")
                if _COOKIE_VALUE.match(text):
                    found.append(text)
    return found


def origin_of(url: str) -> str:
    """`scheme://host[:port]` of a URL, as a browser's `Origin` header spells it."""
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    return f"{parts.scheme}://{host}" + ("" if port in (None, default) else f":{port}")


def same_origin(origin: bytes | None, fetch_site: bytes | None, allowed: Iterable[str]) -> bool:
    """Whether a form POST comes from our own pages: an `Origin` header must be one of
    `allowed`; without one (older browsers), `Sec-Fetch-Site` must not say another site.
    A request with neither passes here and is judged by its CSRF token alone."""
    if origin is not None:
        return origin.decode("ascii", "replace").lower() in {a.lower() for a in allowed}
    if fetch_site is not None:
        return fetch_site in (b"same-origin", b"none")
    return True


def access_line(method: bytes, uri: bytes, status: int, length: int | None) -> bytes:
    """One access-log line: `GET /e/B.1?t=... 303 0`.  Every query value is shown
    as `...`, whatever its name (a link token, an unsubscribe token, anything a client puts
    there), a name that is not a short lower-case word as `?`, and any byte that could forge a
    line or confuse a terminal is %-escaped."""
    path, question, query = uri.partition(b"?")
    shown = _SAFE_LOG.sub(lambda m: b"%%%02X" % m.group()[0], path[:512])
    if question:
        pairs = query.split(b"&")
        names = [pair.partition(b"=")[0] for pair in pairs[:8]]
        shown += b"?" + b"&".join(
            (name if _QUERY_NAME.match(name) else b"?") + b"=..." for name in names
        )
        if len(pairs) > 8:
            shown += b"&..."
    verb = _SAFE_LOG.sub(b"?", method[:16])
    size = b"-" if length is None else str(length).encode()
    return b"%s %s %d %s" % (verb, shown, status, size)


def write_flash(message: str) -> str:
    """A result message as a cookie value (base64url of its UTF-8, cut to `MAX_FLASH`)."""
    return base64.urlsafe_b64encode(message[:MAX_FLASH].encode()).rstrip(b"=").decode("ascii")


def read_flash(value: str) -> str | None:
    """The message of a flash cookie, or None if it is not one (it is shown escaped)."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        text = raw.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return text[:MAX_FLASH] or None
