"""Email over SMTP with aiosmtplib (the only module that imports it), on the shared loop.

Messages go out over a small pool of reused connections; one that the server dropped while idle
is noticed on use and replaced once, at once, and any other failure is mapped for the outbox:

- the server refused this message (a 5xx to MAIL, RCPT or DATA, an address that cannot be sent,
  SMTPUTF8 needed but not offered) → `PermanentDeliveryError`;
- everything else → `TransientDeliveryError`: 4xx, refused or dropped connections, timeouts, and
  also failures to set up a session (greeting, EHLO, STARTTLS, AUTH) whatever their code, since
  those are about the relay or our configuration, not this message, and dead-lettering the whole
  queue for a wrong password would be worse than retrying until the outbox gives up.

Each message is written straight as bytes (the stdlib generator cost several times as much), with
every header folded exactly as an `EmailMessage` with the SMTP policy folds it; only short
printable ASCII values, which fold to themselves, skip the header parser.  So non-ASCII subjects
and names are RFC 2047-encoded; CR, LF and other controls in header values are turned into spaces
first, so a subject can never start a header of its own.  The Message-ID is derived from the
idempotency key, so a retry sends the same Message-ID; `In-Reply-To` and `References` name a
per-thread root id, so mail clients thread all the mails about one event together.
"""

from __future__ import annotations

import asyncio
import binascii
import email.errors
import email.policy
import hashlib
import re
import secrets
import ssl
from collections.abc import Callable
from email.headerregistry import BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.policy import Policy
from email.utils import formatdate, parseaddr
from typing import Literal, TypeAlias

import aiosmtplib
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from notifier.aio import as_deferred
from notifier.channels import (
    Attachment,
    Outgoing,
    PermanentDeliveryError,
    TransientDeliveryError,
    UncertainDeliveryError,
)

TlsMode = Literal["starttls", "direct", "none"]


class _DroppedBeforeData(Exception):
    """The connection was lost before the message data went out: nothing was delivered."""


async def _reset(client: aiosmtplib.SMTP) -> None:
    """RSET after a refusal, so the pooled connection can carry the next mail."""
    try:
        await client.rset()
    except aiosmtplib.SMTPException:
        client.close()


_log = Logger()

# Header names the channel sets itself; `Outgoing.headers` may not repeat them.
_OWN_HEADERS = frozenset(
    {
        "from",
        "sender",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "auto-submitted",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
    }
)
_FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322: printable ASCII except colon
_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"\\]+@[^\s@<>()\[\],;:\"\\]+")
_ID_PART = re.compile(r"[A-Za-z0-9_+=-]+(?:\.[A-Za-z0-9_+=-]+)*")
# What a header must not hold: controls, and what the email policy also takes for line breaks.
_LINE_BREAKS = re.compile(r"[\r\n\x00-\x08\x0b-\x1f\x7f\x85\u2028\u2029]+")
# The octets a 7bit text part may hold: printable ASCII, tab and line breaks.
_SEVEN_BIT_TEXT = bytes(range(0x20, 0x7F)) + b"\t\r\n"
_CRLF = b"\r\n"
_MAX_LINE = 78  # RFC 5322 §2.1.1: the policy folds header lines longer than this
_BASE64_LINE = 76  # RFC 2045 §6.8: encoded characters per line


class _CachedRegistry(HeaderRegistry):
    """The standard registry builds a new header class on every lookup (a sixth of a naive
    build); the classes never change, so build each once."""

    def __init__(self) -> None:
        super().__init__()
        self._built: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        built = self._built.get(key)
        if built is None:
            built = self._built[key] = super().__getitem__(name)
        return built


_Policy: TypeAlias = "email.policy.EmailPolicy[EmailMessage]"


def _fold_at_commas(name: str, value: str, linesep: str) -> str:
    """`name: value` folded only after its commas, each line within 78 characters if it can."""
    items = value.split(", ")
    lines = [f"{name}: {items[0]}"]
    for item in items[1:]:
        if len(lines[-1]) + 2 + len(item) <= _MAX_LINE:
            lines[-1] += f", {item}"
        else:
            lines[-1] += ","
            lines.append(f" {item}")
    if max(map(len, lines)) > 998:
        raise ValueError(f"header {name} has a line longer than 998 characters")
    return linesep.join(lines) + linesep


class _Verbatim(UnstructuredHeader, BaseHeader):
    """An ASCII header value that is folded only after its commas and never encoded: message
    ids and RFC 2369 `List-*` URLs must reach the mail client exactly as written (the standard
    folding turns a long URL into encoded words, which clients do not decode there)."""

    def fold(self, *, policy: Policy) -> str:
        value = str(self)
        if not value.isascii():
            return super().fold(policy=policy)
        return _fold_at_commas(self.name, value, policy.linesep)


def _policies() -> tuple[_Policy, _Policy]:
    """Headers RFC 2047-encoded (7-bit, fine for any relay); raw UTF-8 headers only when an
    address needs them, which needs SMTPUTF8 anyway."""
    registry = _CachedRegistry()
    ascii_policy = email.policy.SMTP.clone(cte_type="7bit", header_factory=registry)
    return ascii_policy, ascii_policy.clone(utf8=True)


_ASCII, _UTF8 = _policies()


def _policy_fold(policy: _Policy, name: str, value: str) -> bytes:
    """The header as `EmailMessage` and its generator write it: parsed, checked for line
    breaks, folded and encoded by the policy (some 30 µs)."""
    return policy.fold_binary(*policy.header_store_parse(name, value))


def _fold(policy: _Policy, name: str, value: str) -> bytes:
    """`_policy_fold`, without the parser for the usual value: printable ASCII that fits on
    one line and holds nothing like an encoded word folds to just `name: value`.  (Printable:
    whatever the caller passes, this path never writes a control or a line break.)"""
    if (
        value
        and len(name) + 2 + len(value) <= _MAX_LINE
        and value.isascii()
        and value.isprintable()
        and "=?" not in value
    ):
        return f"{name}: {value}\r\n".encode("ascii")
    return _policy_fold(policy, name, value)


def _fold_verbatim(policy: _Policy, name: str, value: str) -> bytes:
    """A `_Verbatim` header; an ASCII value without encoded words (which the header would
    decode first) needs no parsing."""
    if value.isascii() and "=?" not in value:
        return _fold_at_commas(name, value, "\r\n").encode("ascii")
    return policy.fold_binary(name, _Verbatim(name, value))


# Constant headers, folded once.
_AUTO = _policy_fold(_ASCII, "Auto-Submitted", "auto-generated")
_MIME_VERSION = _policy_fold(_ASCII, "MIME-Version", "1.0")
_PLAIN = _policy_fold(_ASCII, "Content-Type", 'text/plain; charset="utf-8"')
_HTML = _policy_fold(_ASCII, "Content-Type", 'text/html; charset="utf-8"')
_SEVEN_BIT = _policy_fold(_ASCII, "Content-Transfer-Encoding", "7bit")
_BASE64 = _policy_fold(_ASCII, "Content-Transfer-Encoding", "base64")


def _one_line(value: str) -> str:
    """A header value on one line: CR, LF, U+2028 and other controls become one space."""
    return _LINE_BREAKS.sub(" ", value)


def _id_part(value: str) -> str:
    """`value` if it can stand left of the @ in a message id, else a digest of it."""
    if len(value) <= 40 and _ID_PART.fullmatch(value):
        return value
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class MessageBuilder:
    """Builds the bytes of one email for one `Outgoing`.  Pure apart from the `now` it is given."""

    def __init__(self, sender: str) -> None:
        _, address = parseaddr(sender)
        if not _ADDRESS.fullmatch(address) or not address.isascii():
            raise ValueError(f"not a usable sender address: {sender!r}")
        self.envelope_sender = address
        self.domain = address.rpartition("@")[2]
        header = _ASCII.header_factory("From", _one_line(sender))
        self._from = {
            False: _ASCII.fold_binary("From", header),
            True: _UTF8.fold_binary("From", header),
        }

    def message_id(self, key: str) -> str:
        return f"<renga.{_id_part(key)}@{self.domain}>"

    def thread_id(self, thread: str) -> str:
        return f"<renga.event.{_id_part(thread)}@{self.domain}>"

    def build(self, message: Outgoing, now: float) -> tuple[bytes, bool]:
        """The message's bytes, and whether sending them needs SMTPUTF8.  A message that cannot
        be built never will be: `PermanentDeliveryError`."""
        try:
            return self._build(message, now)
        except (ValueError, TypeError, email.errors.MessageError) as error:
            raise PermanentDeliveryError(f"cannot build the message: {error}") from error

    def _build(self, message: Outgoing, now: float) -> tuple[bytes, bool]:
        recipient = message.recipient
        if not _ADDRESS.fullmatch(recipient):
            raise PermanentDeliveryError(f"not an email address: {recipient!r}")
        utf8 = not recipient.isascii()
        policy = _UTF8 if utf8 else _ASCII
        body = _text_part(_PLAIN, message.text)
        if message.html is not None:
            body = _multipart("alternative", [body, _text_part(_HTML, message.html)])
        if message.attachments:
            parts = [body, *(_attachment(policy, a) for a in message.attachments)]
            body = _multipart("mixed", parts)
        headers = [
            self._from[utf8],
            _fold(policy, "To", recipient),
            _fold(policy, "Subject", _one_line(message.subject)),
            _fold(policy, "Date", formatdate(now)),
            _fold_verbatim(policy, "Message-ID", self.message_id(message.key)),
        ]
        if message.thread is not None:
            root = self.thread_id(message.thread)
            headers.append(_fold_verbatim(policy, "In-Reply-To", root))
            headers.append(_fold_verbatim(policy, "References", root))
        headers.append(_AUTO)
        seen: set[str] = set()
        for name, value in message.headers:
            key = name.lower()
            if not _FIELD_NAME.fullmatch(name) or key in _OWN_HEADERS:
                raise PermanentDeliveryError(f"header {name!r} may not be set")
            if key in seen and policy.header_max_count(name):  # e.g. Reply-To
                raise ValueError(f"there may be at most one {name} header in a message")
            seen.add(key)
            headers.append(_fold_verbatim(policy, name, _one_line(value)))
        headers.append(_MIME_VERSION)
        headers.append(body)
        data = b"".join(headers)
        if not data.endswith(_CRLF):  # a 7bit text with no final line break: as aiosmtplib would
            data += _CRLF
        return data, utf8


def _crlf(data: bytes) -> bytes:
    """Every line break (CR, LF or CRLF) as CRLF."""
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return data.replace(b"\n", _CRLF)


def _base64(data: bytes) -> bytes:
    """Base64 in lines of 76 characters, each ending in CRLF; nothing for no data."""
    encoded = binascii.b2a_base64(data, newline=False)
    lines = [encoded[i : i + _BASE64_LINE] for i in range(0, len(encoded), _BASE64_LINE)]
    return _CRLF.join(lines) + _CRLF if lines else b""


def _text_part(content_type: bytes, text: str) -> bytes:
    """A UTF-8 text part, headers and body: as is when it is short-lined ASCII, else base64
    (C-fast, unlike quoted-printable, and safe through any relay)."""
    data = text.encode("utf-8")
    if (
        data.isascii()
        and not data.translate(None, _SEVEN_BIT_TEXT)  # nothing left: no controls
        and max(map(len, data.splitlines()), default=0) <= 998
    ):
        return content_type + _SEVEN_BIT + _CRLF + _crlf(data)
    canonical = _crlf(data)  # RFC 2046: CRLF line breaks, the last line ended too
    if not canonical.endswith(_CRLF):
        canonical += _CRLF
    return content_type + _BASE64 + _CRLF + _base64(canonical)


def _multipart(subtype: str, parts: list[bytes]) -> bytes:
    """A multipart with a random boundary: unguessable, so no part can contain it, and
    nothing need search the parts for it."""
    boundary = f"=_{secrets.token_hex(12)}"
    head = f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n--{boundary}\r\n'
    delimiter = f"\r\n--{boundary}\r\n"
    close = f"\r\n--{boundary}--\r\n"
    return head.encode("ascii") + delimiter.encode("ascii").join(parts) + close.encode("ascii")


def _attachment(policy: _Policy, attachment: Attachment) -> bytes:
    """Base64 with the full content type, parameters included (`text/calendar;
    method=REQUEST` is what makes calendars offer to add an invitation).  The headers come
    from an `EmailMessage`, which quotes or RFC 2231-encodes the file name as needed."""
    content_type = _one_line(attachment.content_type)
    kind = content_type.partition(";")[0].strip()
    maintype, slash, subtype = kind.partition("/")
    if not (slash and _FIELD_NAME.fullmatch(maintype) and _FIELD_NAME.fullmatch(subtype)):
        raise PermanentDeliveryError(f"not a content type: {attachment.content_type!r}")
    part = EmailMessage(policy=policy)
    part["Content-Type"] = content_type
    part["Content-Disposition"] = "attachment"
    part.set_param("filename", _one_line(attachment.filename), header="Content-Disposition")
    headers = b"".join(policy.fold_binary(name, value) for name, value in part.items())
    return headers + _BASE64 + _CRLF + _base64(attachment.data)


class SmtpChannel:
    """The `email` channel: mail through one relay over a pool of reused connections."""

    name = "email"

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        username: str = "",
        password: str = "",
        tls: TlsMode = "starttls",
        pool_size: int = 4,
        timeout: float = 30.0,
        *,
        now: Callable[[], float],
        local_hostname: str | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        if tls not in ("starttls", "direct", "none"):
            raise ValueError(f"tls must be starttls, direct or none, not {tls!r}")
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.builder = MessageBuilder(sender)
        self.host = host
        self.port = port
        self._username = username
        self._password = password
        self._tls = tls
        self._pool_size = pool_size
        self._timeout = timeout
        self._now = now
        self._local_hostname = local_hostname
        self._tls_context = tls_context
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(pool_size)
        self._closing = False

    def deliver(self, message: Outgoing) -> Deferred[None]:
        return as_deferred(self._deliver(message))

    def close(self) -> Deferred[None]:
        """Wait for sends in progress, then say QUIT on every pooled connection."""
        return as_deferred(self._close())

    async def _deliver(self, message: Outgoing) -> None:
        if self._closing:
            raise TransientDeliveryError("the email channel is closed")
        data, utf8 = self.builder.build(message, self._now())
        options = ["SMTPUTF8"] if utf8 else []
        async with self._slots:
            if self._closing:
                raise TransientDeliveryError("the email channel is closed")
            client = self._idle.pop() if self._idle else self._client()
            try:
                await self._send(client, message.recipient, data, options)
            except asyncio.CancelledError:
                client.close()  # mid-command: the next answer on it would be this one's
                raise
            finally:
                self._idle.append(client)

    def _client(self) -> aiosmtplib.SMTP:
        return aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            username=self._username or None,
            password=self._password or None,
            local_hostname=self._local_hostname,
            timeout=self._timeout,
            use_tls=self._tls == "direct",
            start_tls=self._tls == "starttls",
            tls_context=self._tls_context,
        )

    async def _send(
        self, client: aiosmtplib.SMTP, recipient: str, data: bytes, options: list[str]
    ) -> None:
        reused = client.is_connected
        if not reused:
            await self._connect(client)
        try:
            await self._transaction(client, recipient, data, options)
        except _DroppedBeforeData as error:
            if not reused:
                raise TransientDeliveryError(f"disconnected: {error}") from error
            # A pooled connection the server had closed: nothing was sent, so send again now.
            _log.info(
                "SMTP: a pooled connection to {host} was dropped; reconnecting", host=self.host
            )
            await self._connect(client)
            try:
                await self._transaction(client, recipient, data, options)
            except _DroppedBeforeData as again:
                raise TransientDeliveryError(f"disconnected: {again}") from again

    async def _connect(self, client: aiosmtplib.SMTP) -> None:
        """Open a session: connect, EHLO, STARTTLS, AUTH.  Any failure here is transient."""
        try:
            await client.connect()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            raise TransientDeliveryError(
                f"no SMTP session with {self.host}:{self.port}: {_explain(error)}"
            ) from error

    async def _transaction(
        self, client: aiosmtplib.SMTP, recipient: str, data: bytes, options: list[str]
    ) -> None:
        """MAIL, RCPT, DATA, with the server's refusals mapped by their code.  A connection
        lost before DATA sent nothing; lost during or after it, the mail may have arrived, so
        that failure is uncertain (retried, and counted a possible duplicate)."""
        encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
        try:
            try:
                await client.mail(self.builder.envelope_sender, options=options, encoding=encoding)
                await client.rcpt(recipient, encoding=encoding)
            except aiosmtplib.SMTPServerDisconnected as error:
                raise _DroppedBeforeData(str(error)) from error
            except aiosmtplib.SMTPResponseException:
                await _reset(client)
                raise
            try:
                await client.data(data)
            except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError) as error:
                raise UncertainDeliveryError(f"lost during DATA: {_explain(error)}") from error
        except aiosmtplib.SMTPResponseException as error:
            raise _by_code(error.code, _explain(error)) from error
        except (aiosmtplib.SMTPNotSupported, ValueError) as error:
            raise PermanentDeliveryError(str(error)) from error
        except (TransientDeliveryError, _DroppedBeforeData):
            raise
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            raise TransientDeliveryError(_explain(error)) from error

    async def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        for _ in range(self._pool_size):
            await self._slots.acquire()
        clients, self._idle = self._idle, []
        await asyncio.gather(*(self._quit(client) for client in clients))

    async def _quit(self, client: aiosmtplib.SMTP) -> None:
        if not client.is_connected:
            return
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            _log.info("SMTP: QUIT to {host} failed: {error}", host=self.host, error=error)
        finally:
            client.close()


def _by_code(code: int, text: str) -> TransientDeliveryError | PermanentDeliveryError:
    if code >= 500:
        return PermanentDeliveryError(f"SMTP {code}: {text}")
    return TransientDeliveryError(f"SMTP {code}: {text}")


def _explain(error: BaseException) -> str:
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return f"{error.code} {error.message}"
    return str(error) or type(error).__name__
