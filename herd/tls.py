"""TLS on the client port and the peer links (Twisted, thin): the server's and the dialer's
OpenSSL options from `[tls]` (docs/operations.md "Several machines"), and a TLS transport on
which a client's `close_notify` is a half-close, as a TCP FIN is on a plain port.

One port carries clients and peers, so one `[tls]` table switches TLS on for both, for every
server of the herd at once: no link is left plain by a forgotten key. Peers and the CLI trust
only the herd's CA (`[tls] ca`), not the system's roots, and check the name or address they
dialed (`[servers.NAME] host`) against the certificate.

Half-close. TLS 1.3 lets each side close its own direction with `close_notify` and keep
reading (RFC 8446 §6.1); Twisted's TLS transport instead treats a peer's `close_notify` as the
end of the whole connection, and a TCP FIN under TLS too, so a client that sent its lines and
half-closed would lose the replies not written yet. `HalfCloseTLS` hands the wrapped protocol
`readConnectionLost` for a `close_notify`, writes the remaining replies, and sends its own
`close_notify` when the protocol closes. A bare TCP FIN without `close_notify` may be a
truncation by someone in the path: the connection is closed, as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from OpenSSL import crypto
from OpenSSL.SSL import Error as OpenSSLError
from OpenSSL.SSL import WantReadError, ZeroReturnError
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.error import VerifyError
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from herd.config import ConfigError, HerdConfig, TlsConfig

__all__ = [
    "ClosingTLS",
    "HalfCloseTLS",
    "TlsClientEndpoint",
    "client_options",
    "server_factory",
    "server_options",
]


def _read(config: HerdConfig, key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        problem = f"cannot read {path}: {error.strerror or error}"
        raise ConfigError(config.path, key, problem) from None


def _load_certificates(config: HerdConfig, key: str, path: Path) -> list[ssl.Certificate]:
    """Every certificate of a PEM file (a chain: the server's first, then intermediates)."""
    data = _read(config, key, path)
    blocks = data.split(b"-----END CERTIFICATE-----")
    certificates: list[ssl.Certificate] = []
    for number, block in enumerate(blocks[:-1], 1):
        try:
            certificates.append(ssl.Certificate.loadPEM(block + b"-----END CERTIFICATE-----\n"))
        except OpenSSLError:
            problem = f"{path}: certificate {number} is not a valid PEM certificate"
            raise ConfigError(config.path, key, problem) from None
    if not certificates:
        raise ConfigError(config.path, key, f"{path} holds no PEM certificate")
    return certificates


def server_options(config: HerdConfig, tls: TlsConfig, name: str) -> ssl.CertificateOptions:
    """Server `name`'s certificate and key as OpenSSL options (TLS 1.2 at least). A file that
    is missing, not PEM, or a key that does not match the certificate is a ConfigError naming
    the key, so `herd run` refuses to start rather than serve without TLS."""
    certificate_path, key_path = tls.files(name)
    chain = _load_certificates(config, "tls.certificate", certificate_path)
    try:
        key = ssl.KeyPair.load(_read(config, "tls.key", key_path), crypto.FILETYPE_PEM)
    except OpenSSLError:
        raise ConfigError(config.path, "tls.key", f"{key_path} holds no PEM private key") from None
    try:
        private = ssl.PrivateCertificate.fromCertificateAndKeyPair(chain[0], key)
        return ssl.CertificateOptions(
            privateKey=private.privateKey.original,
            certificate=private.original,
            extraCertChain=[certificate.original for certificate in chain[1:]],
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )
    except (OpenSSLError, ValueError, VerifyError) as error:
        raise ConfigError(
            config.path, "tls.key", f"{key_path} does not match {certificate_path}: {error}"
        ) from None


def client_options(config: HerdConfig, tls: TlsConfig, hostname: str) -> Any:
    """What a peer dialing `hostname` checks: a certificate for that name or address, signed by
    the herd's CA and nothing else."""
    roots = _load_certificates(config, "tls.ca", tls.ca)
    return ssl.optionsForClientTLS(
        hostname,
        trustRoot=ssl.trustRootFromCertificates(roots),
        extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2},
    )


class ClosingTLS(BufferingTLSTransport):
    """A TLS transport whose `loseConnection` closes once what was written is out, as TCP's
    does, even while a producer is registered: Twisted's TLS would wait for the producer to
    unregister first, so `ClientService` stopping a peer link (which closes the transport
    under the link's `LineConnection`) would wait forever."""

    def loseConnection(self) -> None:
        if self._producer is not None and not self.disconnecting:
            self.unregisterProducer()  # type: ignore[no-untyped-call]
        super().loseConnection()


@implementer(IHalfCloseableProtocol)
class HalfCloseTLS(ClosingTLS):
    """The server side of a TLS connection whose peer may close only its sending side."""

    _peer_closed = False

    def _flushReceiveBIO(self) -> None:
        wrapped = IHalfCloseableProtocol(self.wrappedProtocol, None)
        while not self._lostTLSConnection and not self._peer_closed:
            try:
                data = self._tlsConnection.recv(2**15)
            except WantReadError:
                break
            except ZeroReturnError:
                if wrapped is None:  # the wrapped protocol cannot half-close: as Twisted does
                    self._shutdownTLS()
                    self._tlsShutdownFinished(None)
                    continue
                self._peer_closed = True
                wrapped.readConnectionLost()
            except OpenSSLError:
                self._tlsShutdownFinished(Failure())  # type: ignore[no-untyped-call]
            else:
                if not self._aborted:
                    self.wrappedProtocol.dataReceived(data)
        self._flushSendBIO()  # type: ignore[no-untyped-call]

    def readConnectionLost(self) -> None:
        """TCP FIN: after the peer's `close_notify` it changes nothing (the replies still go
        out); without one the stream may have been cut by someone else: close."""
        if not self._peer_closed and self.transport is not None:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        return


@implementer(IStreamClientEndpoint)
class TlsClientEndpoint:
    """`endpoint` with TLS on top (`ClosingTLS`): what `wrapClientTLS` does, with a transport
    that closes as TCP does."""

    def __init__(self, endpoint: IStreamClientEndpoint, options: Any) -> None:
        self.endpoint = endpoint
        self.options = options

    def __repr__(self) -> str:
        return f"TLS over {self.endpoint!r}"

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        wrapper = TLSMemoryBIOFactory(self.options, True, factory)
        wrapper.protocol = ClosingTLS
        wrapper.noisy = False
        connected: Deferred[Any] = self.endpoint.connect(wrapper)
        unwrapped: Deferred[IProtocol] = connected.addCallback(
            lambda protocol: protocol.wrappedProtocol
        )
        return unwrapped


def server_factory(
    config: HerdConfig, tls: TlsConfig, name: str, wrapped: IProtocolFactory
) -> TLSMemoryBIOFactory:
    """`wrapped` (the client port's factory) behind TLS with server `name`'s certificate."""
    factory = TLSMemoryBIOFactory(server_options(config, tls, name), False, wrapped)
    factory.protocol = HalfCloseTLS
    factory.noisy = False
    return factory
