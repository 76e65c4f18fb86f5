"""Email over SMTP with aiosmtplib (the only module that imports it), on the shared loop.

Messages go out over a small pool of reused connections; one that the server dropped while idle
is noticed on use and replaced once, at once, and any other failure is mapped for the outbox:

- the server refused this message (a 5xx to MAIL, RCPT or DATA, an address that cannot be sent,
  SMTPUTF8 needed but not offered) → `PermanentDeliveryError`;
- everything else → `TransientDeliveryError`: 4xx, refused or dropped connections, timeouts, and
  also failures to set up a session (greeting, EHLO, STARTTLS, AUTH) whatever their code, since
  those are about the relay or our configuration, not this message, and dead-lettering the whole
  queue for a wrong password would be worse than retrying until the outbox gives up.

With TLS (`tls = "starttls"`, or `"direct"` for implicit TLS, port 465 style) the server's
certificate must chain to `ca_file` (PEM; the system trust store when None) and name `host`; a
refused certificate, or a server that offers no STARTTLS, is a session failure like the others:
transient, and no password or mail is sent.

Each message is written straight as bytes by `notifier.mime` (the stdlib generator cost ten
times as much, and its header parser decodes encoded-word lookalikes in the text it is given).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from enum import Enum
from pathlib import Path
from typing import Literal, TypeVar

import aiosmtplib
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from notifier.aio import as_deferred
from notifier.errors import (
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
    UncertainDeliveryError,
)
from notifier.message import Outgoing
from notifier.mime import MessageBuilder

TlsMode = Literal["starttls", "direct", "none"]
_Failure = TypeVar("_Failure", bound=DeliveryError)
# RFC 3463 §2: class "." subject "." detail, at the start of the reply text (RFC 2034 §4).
_ENHANCED_STATUS = re.compile(r"([245]\.[0-9]{1,3}\.[0-9]{1,3})(?!\S)")


class _DroppedBeforeData(Exception):
    """The connection was lost before the message data went out: nothing was delivered."""


async def _reset(client: aiosmtplib.SMTP) -> None:
    """RSET after a refusal, so the pooled connection can carry the next mail."""
    try:
        await client.rset()
    except aiosmtplib.SMTPException:
        client.close()


_log = Logger()


class _State(Enum):
    """Where an `SmtpChannel` is in its life."""

    OPEN = "open"  # delivering
    CLOSING = "closing"  # refuses new mail; waits for sends in progress, then says QUIT
    CLOSED = "closed"  # every pooled connection is closed


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
        clock: IReactorTime,
        local_hostname: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        ca_file: Path | str | None = None,
    ) -> None:
        """`tls_context`, if given, is used as it is; else one is made that trusts `ca_file`
        only (or the system's store) and checks that the certificate names `host`."""
        if tls not in ("starttls", "direct", "none"):
            raise ValueError(f"tls must be starttls, direct or none, not {tls!r}")
        if ca_file is not None and (tls == "none" or tls_context is not None):
            raise ValueError("a ca_file is for TLS, and for the channel's own context only")
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
        self._clock = clock
        self._local_hostname = local_hostname
        if tls_context is None and tls != "none":
            tls_context = ssl.create_default_context(
                cafile=None if ca_file is None else str(ca_file)
            )
        self._tls_context = tls_context
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(pool_size)
        self._state = _State.OPEN

    def deliver(self, message: Outgoing) -> Deferred[None]:
        return as_deferred(self._deliver(message))

    def close(self) -> Deferred[None]:
        """Wait for sends in progress, then say QUIT on every pooled connection."""
        return as_deferred(self._close())

    async def _deliver(self, message: Outgoing) -> None:
        if self._state is not _State.OPEN:
            raise TransientDeliveryError("the email channel is closed")
        data, utf8 = self.builder.build(message, self._clock.seconds())
        options = ["SMTPUTF8"] if utf8 else []
        async with self._slots:
            if self._state is not _State.OPEN:
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
            # The outbox keeps the reason with the message; the log tells the operator, as a
            # relay that is down, a refused certificate or password is theirs to fix.
            text = f"no SMTP session with {self.host}:{self.port}: {_explain(error)}"
            _log.warn("SMTP: {text}", text=text)
            raise _failure(TransientDeliveryError, text, error) from error

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
            kind = PermanentDeliveryError if error.code >= 500 else TransientDeliveryError
            raise _failure(kind, f"SMTP {error.code}: {_explain(error)}", error) from error
        except (aiosmtplib.SMTPNotSupported, ValueError) as error:
            raise PermanentDeliveryError(str(error)) from error
        except (TransientDeliveryError, _DroppedBeforeData):
            raise
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            raise TransientDeliveryError(_explain(error)) from error

    async def _close(self) -> None:
        if self._state is not _State.OPEN:
            return
        self._state = _State.CLOSING
        for _ in range(self._pool_size):
            await self._slots.acquire()
        clients, self._idle = self._idle, []
        await asyncio.gather(*(self._quit(client) for client in clients))
        self._state = _State.CLOSED

    async def _quit(self, client: aiosmtplib.SMTP) -> None:
        if not client.is_connected:
            return
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            _log.info("SMTP: QUIT to {host} failed: {error}", host=self.host, error=error)
        finally:
            client.close()


def _failure(kind: type[_Failure], text: str, cause: BaseException) -> _Failure:
    """`kind(text)`, carrying the server's reply when `cause` is one."""
    if not isinstance(cause, aiosmtplib.SMTPResponseException):
        return kind(text)
    return kind(
        text,
        code=cause.code,
        enhanced_status=enhanced_status(cause.message),
        server_message=cause.message,
    )


def enhanced_status(reply: str) -> str | None:
    """The RFC 3463 status code a reply text opens with (`5.1.1 no such user`), if any."""
    found = _ENHANCED_STATUS.match(reply)
    return found.group(1) if found else None


def _explain(error: BaseException) -> str:
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return f"{error.code} {error.message}"
    return str(error) or type(error).__name__
