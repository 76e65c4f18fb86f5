"""One herd server wired together: store, log, places, listening port, peer dialers.

Start order matters: the store is read back before the port opens, so the first client already
sees every report the server acknowledged before it last stopped (or was killed).
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections.abc import Callable
from email.utils import parseaddr
from functools import partial
from typing import Any, BinaryIO, TypeVar, cast

from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from herd.changes import Change
from herd.clock import Clock
from herd.config import ConfigError, HerdConfig
from herd.extensions import JidLinks, LinePushes, OptOuts
from herd.handlers.core import ServerSettings
from herd.leases import LeaseSettings
from herd.peers import DialFactory, retry_policy
from herd.places.answers import PlacesProvider
from herd.places.offline import OfflinePlaces
from herd.places.wiring import make_provider
from herd.protocol import LineConnection
from herd.secretfile import choose_secret, read_or_create_secret
from herd.server import RECENT_OPS, HerdServer, Replica
from herd.statusfigures import ServerFigures
from herd.store import GroupCommitter, Store
from herd.tls import TlsClientEndpoint, client_options, server_factory, server_options
from herd.tokens import issue_link_code, verify_unsubscribe
from herd.traffic import TrafficLog
from herd.venues import ProposedVenues
from notifier.botglue import BotGlue
from notifier.build import Host, NotifierSettings, build_notifier
from notifier.channels import Channel
from notifier.channels.line import LineHub
from notifier.channels.smtp import SmtpChannel
from notifier.channels.xmpp import TlsMode, XmppChannel
from notifier.feed import NotifierListener
from notifier.outbox import Outbox
from notifier.outbox_admin import depth as outbox_depth
from notifier.render import Templates, Unsubscribe, no_event_link, no_prefs_link
from notifier.routing import Timing, nobody_watching
from notifier.tables import load as load_notifier
from web.host import WebHost
from web.links import PersonalLinks
from web.prefs import prefs_link, unsubscribe_url
from web.site import build_site
from web.status_site import build_status_site
from web.stream import StreamHub
from web.templates import WebTemplates, read_static

T = TypeVar("T")
_log = Logger()
OUTBOX_EMAIL_CONCURRENCY = 10  # mails in flight, one pooled SMTP connection each


class ClientFactory(Factory):
    """Accepts connections on the client port; remembers them so a stop can close them."""

    def __init__(self, server: HerdServer) -> None:
        self.server = server
        self.connections: set[LineConnection] = set()

    def buildProtocol(self, addr: object) -> LineConnection:
        connection = self.server.client_connection(_TrackedConnection)
        assert isinstance(connection, _TrackedConnection)
        connection.factory_ref = self
        return connection


class _TrackedConnection(LineConnection):
    factory_ref: ClientFactory

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory_ref.connections.add(self)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.factory_ref.connections.discard(self)
        super().connectionLost(reason)


def _thread_pool(name: str) -> ThreadPool:
    pool = ThreadPool(minthreads=1, maxthreads=1, name=name)
    pool.start()
    return pool


class HerdService(Service):
    """`herd run NAME`: one server, started and stopped cleanly."""

    def __init__(
        self,
        config: HerdConfig,
        name: str,
        reactor: Any,
        stream: BinaryIO | None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.server_name = name
        self.server_config = config.server(name)
        if config.tls is not None:
            # refused now, before any thread starts, if a file is missing or does not fit
            server_options(config, config.tls, name)
            client_options(config, config.tls, "localhost")
        self.reactor = reactor
        # the one clock of this server: reactor time, and exact nanoseconds for IAMAT's times
        self.clock = Clock(reactor, time.time_ns)
        self.jitter = jitter
        self.data_dir = config.data_dir
        self._store_pool = _thread_pool(f"{name}-store")
        self._log_pool = _thread_pool(f"{name}-log")
        self._cpu_pool = _thread_pool(f"{name}-cpu")
        self._outbox_pool = _thread_pool(f"{name}-outbox")
        self.channels: dict[str, Channel] = {}
        self.bot: XmppChannel | None = None
        self.line_hub: LineHub | None = None
        self.outbox: Outbox | None = None
        self.notifier: NotifierListener | None = None
        self.log = TrafficLog(
            name,
            self.data_dir / f"{name}.log",
            stream,
            self.clock.scheduler,
            self._on_thread(self._log_pool),
            config.log,
        )
        self.store = Store(self.data_dir / f"{name}.sqlite")
        self.server: HerdServer | None = None
        self.places: PlacesProvider | None = None
        self.port: IListeningPort | None = None
        self.web_port: IListeningPort | None = None  # the web site's, when the herd has [web]
        self.status_port: IListeningPort | None = None  # the status listener's, on loopback
        self.live: StreamHub | None = None  # the web's live streams, when the herd has [web]
        self.factory: ClientFactory | None = None
        self.dialers: list[ClientService] = []
        self.started: Deferred[None] = Deferred()
        # Fires (once) with what went wrong when the server cannot go on: its owner reports it
        # and stops the process with a failure code.
        self.failed: Deferred[str] = Deferred()

    def _on_thread(self, pool: ThreadPool) -> Callable[[Callable[[], T]], Deferred[T]]:
        def run(work: Callable[[], T]) -> Deferred[T]:
            return deferToThreadPool(self.reactor, pool, work)

        return run

    def _load(self) -> Replica:
        """Read the store back and rebuild the state (on the store thread)."""
        return Replica.restore(self.store.open(), self.config.max_line)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.log.start()
        ensureDeferred(self._start()).chainDeferred(self.started)

    async def _start(self) -> None:
        configured = self.config
        self.config = await self._on_thread(self._store_pool)(
            lambda: choose_secret(configured, read_or_create_secret)
        )
        if self.config.secret_warning:
            _log.warn("{warning}", warning=self.config.secret_warning)
        replica = await self._on_thread(self._store_pool)(self._load)
        committer = GroupCommitter(
            self.store, self._on_thread(self._store_pool), self.clock.scheduler, self._store_failed
        )
        self.places = make_provider(self.config.places, self.data_dir, self.reactor)
        server = HerdServer(
            settings=ServerSettings.from_config(self.config, self.server_name, self.jitter),
            replica=replica,
            committer=committer,
            places=self.places,
            log=self.log,
            clock=self.clock,
            run_cpu=self._on_thread(self._cpu_pool),
        )
        if isinstance(self.places, OfflinePlaces):
            venues = ProposedVenues(self.places)
            venues.add_all(replica.planning)
            server.feed.subscribe(venues)
        self.server = server
        # The web's live streams refill their history from the newest operations too.
        replayed = replica.recent_changes
        complete = len({change.op.op_id for change in replayed}) < RECENT_OPS
        await self._start_notifier(server, committer, replica)
        self.factory = ClientFactory(server)
        self.factory.noisy = False
        endpoint = TCP4ServerEndpoint(
            self.reactor,
            self.server_config.port,
            backlog=self.config.limits.listen_backlog,
            interface=self.server_config.host,
        )
        tls = self.config.tls
        listening: IProtocolFactory = self.factory
        if tls is not None:
            listening = server_factory(self.config, tls, self.server_name, self.factory)
        self.port = await endpoint.listen(listening)
        _log.info(
            "{name} listening on {host}:{port}{tls} with {count} stored locations",
            name=self.server_name,
            host=self.server_config.host,
            port=self.server_config.port,
            tls=" (TLS)" if tls is not None else "",
            count=len(replica.table),
        )
        await self._start_web(server, replica, committer, replayed, complete)
        for peer in self.server_config.peers:
            if self.server_name < peer:
                self._dial(server, peer)

    async def _start_web(
        self,
        server: HerdServer,
        replica: Replica,
        committer: GroupCommitter,
        replayed: list[Change],
        complete: bool,
    ) -> None:
        """The web site (`[web]`, docs/web.md) on this server's web port: pages read the
        server's state, writes go through `run_as` like the Jabber bot's; the live streams
        follow the change feed (the hub was made before the notifier, which asks it who is
        watching)."""
        web = self.config.web_of(self.server_name)
        if web is None:
            return
        templates = WebTemplates()
        live = self.live
        assert live is not None
        server.feed.subscribe(live)
        live.start(replayed, complete)
        host = WebHost(
            name=self.server_name,
            web=web,
            secret=self.config.secret,
            state=replica.planning,
            position_of=server.position_of,
            run_as=partial(server.run_as, channel="web"),
            clock=self.clock,
            log=self.log.received,
            templates=templates,
            static=read_static(),  # a few small files, read once
            live=live,
            digest_at=self.config.notifications.digest_at,
        )
        endpoint = TCP4ServerEndpoint(
            self.reactor, web.port, backlog=self.config.limits.listen_backlog, interface=web.host
        )
        self.web_port = await endpoint.listen(build_site(host))
        _log.info(
            "{name} web on {host}:{port} ({url})",
            name=self.server_name,
            host=web.host,
            port=web.port,
            url=web.base_url,
        )
        if web.status_port is not None:
            await self._start_status(server, web.status_port, templates)

    async def _start_status(self, server: HerdServer, port: int, templates: WebTemplates) -> None:
        """The operator's status page and `/metrics` (docs/web.md), on 127.0.0.1 only: the
        config has no interface for it to name."""
        figures = ServerFigures(
            name=self.server_name,
            servers=list(self.config.servers),
            peers=self.server_config.peers,
            server=server,
            connections=lambda: 0 if self.factory is None else len(self.factory.connections),
            clock=self.clock,
            database=self.store.path,
            channels=lambda: sorted(self.channels),
            count_outbox=outbox_depth,
            run_blocking=self._on_thread(self._outbox_pool),
            web_streams=None if self.live is None else self.live.count,
        )
        endpoint = TCP4ServerEndpoint(self.reactor, port, backlog=50, interface="127.0.0.1")
        self.status_port = await endpoint.listen(build_status_site(figures, templates))
        _log.info(
            "{name} status page and /metrics on http://127.0.0.1:{port}/",
            name=self.server_name,
            port=port,
        )

    async def _start_notifier(
        self, server: HerdServer, committer: GroupCommitter, replica: Replica
    ) -> None:
        """The notification layer on this server: channels (email, the Jabber bot), the durable
        outbox in the server's own database (rows commit with the change that causes them),
        line pushes, digests and reminders."""
        saved = await self._on_thread(self._store_pool)(lambda: load_notifier(self.store.path))
        secret = self.config.secret
        server.register(JidLinks(partial(issue_link_code, secret)))
        server.register(OptOuts(partial(verify_unsubscribe, secret)))
        channels: dict[str, Channel] = {}
        smtp = self.config.smtp
        sender_address = f"renga@{self.server_name.lower()}.invalid"
        if smtp is not None:
            try:
                channels["email"] = SmtpChannel(
                    smtp.host,
                    smtp.port,
                    smtp.sender,
                    smtp.username,
                    smtp.password,
                    _tls(smtp.tls),
                    pool_size=OUTBOX_EMAIL_CONCURRENCY,
                    clock=self.clock.scheduler,
                    ca_file=smtp.ca_file,
                )
            except ValueError as error:
                # The mail builder is the judge of what a From header can carry (a display
                # name too long for one encoded word, say): refused like any bad config key.
                raise ConfigError(self.config.path, "smtp.sender", str(error)) from None
            sender_address = parseaddr(smtp.sender)[1] or sender_address
        web = self.config.web_of(self.server_name)
        if web is not None:
            self.live = StreamHub(
                replica.planning, self.clock, web.settings, secret, committer.after_commit
            )
        links = (
            None
            if web is None
            else PersonalLinks(
                secret, web.base_url, web.settings.link_days, replica.planning, self.clock
            )
        )
        templates = Templates(
            event_link=no_event_link if links is None else links.event_link,
            prefs_link=no_prefs_link if links is None else partial(prefs_link, links),
        )
        xmpp = self.config.xmpp
        bot: Callable[[BotGlue], Channel] | None = None
        if xmpp is not None:
            names = list(self.config.servers)

            def bot(glue: BotGlue) -> Channel:
                assert xmpp is not None
                self.bot = XmppChannel(
                    jid=xmpp.jid,
                    password=xmpp.password,
                    resource=self.server_name,
                    priority=len(names) - names.index(self.server_name),
                    loop=asyncio.get_event_loop(),
                    clock=self.clock.scheduler,
                    is_known=glue.is_known,
                    on_command=glue.on_command,
                    on_stranger=glue.on_stranger,
                    on_presence=glue.on_presence,
                    on_location=glue.on_location,
                    jitter=self.jitter,
                    host=xmpp.host,
                    port=xmpp.port,
                    tls=_tls(xmpp.tls),
                    ca_file=xmpp.ca_file,
                )
                self.bot.start().addErrback(
                    lambda failure: _log.failure("the Jabber bot cannot log in", failure)
                )
                return self.bot

        times = self.config.notifications
        host = Host(
            name=self.server_name,
            servers=list(self.config.servers),
            state=replica.planning,
            position_of=server.position_of,
            subscribe=server.feed.subscribe,
            add_write=committer.add_write,
            after_commit=committer.after_commit,
            renew=server.renew_lease,
            accept=server.accept_body,
            run_as=server.run_as,
            secret=secret,
            store=self.store.path,
        )
        notifier = build_notifier(
            host,
            saved,
            channels,
            self.clock,
            self._on_thread(self._outbox_pool),
            self.jitter,
            op_lines=(logged.line for logged in replica.ops.since(0)),
            unsubscribe=Unsubscribe(
                secret,
                f"mailto:{sender_address}?subject=OPTOUT%20{{user}}%20{{token}}",
                web=None if web is None else unsubscribe_url(web.base_url),
            ),
            templates=templates,
            settings=NotifierSettings(
                timing=Timing(round(times.coalesce_window * 10**9), times.digest_at),
                look_every=times.look_every,
                lease=LeaseSettings(times.lease_renew, times.lease_valid),
                # A chat message costs Prosody little and waits only for one ping's round
                # trip; an SMTP delivery holds one of the channel's pooled connections.
                concurrency={"email": OUTBOX_EMAIL_CONCURRENCY, "xmpp": 200},
            ),
            bot=bot,
            watching=nobody_watching if self.live is None else self.live.watching,
        )
        self.channels = dict(notifier.channels)
        self.line_hub = notifier.hub
        server.register(LinePushes(self.line_hub))
        self.outbox = notifier.outbox
        self.notifier = notifier.listener
        server.leases = notifier.leases
        started = notifier.start(replica.recent_changes)
        replica.recent_changes = []
        await started
        # What start-up built (the planning state, the op log, the line history) lives as long
        # as the server: keep it out of the collector's full passes, each of which walked all
        # of it on the reactor (~0.3 s with 10,000 users and their events).
        gc.freeze()

    def _dial(self, server: HerdServer, peer: str) -> None:
        target = self.config.servers[peer]
        host = "127.0.0.1" if target.host in ("0.0.0.0", "") else target.host
        factory = DialFactory(server, peer, self.clock.scheduler)
        factory.noisy = False
        endpoint: IStreamClientEndpoint = TCP4ClientEndpoint(
            self.reactor, host, target.port, timeout=5
        )
        if self.config.tls is not None:
            endpoint = TlsClientEndpoint(
                endpoint, client_options(self.config, self.config.tls, host)
            )
        dialer = ClientService(
            endpoint,
            factory,
            retryPolicy=retry_policy(self.jitter, lambda: factory.tls_failed),
            clock=self.clock.scheduler,
        )
        dialer.startService()
        self.dialers.append(dialer)

    def _store_failed(self, failure: Failure) -> None:
        """The store cannot write (disk full, file too large, I/O error): nothing more can be
        acknowledged, so the server stops serving now and reports why."""
        if self.failed.called:
            return
        error = failure.value
        why = failure.getErrorMessage()
        code = getattr(error, "sqlite_errorname", None)
        message = (
            f"{self.server_name}: the store {self.store.path} cannot write "
            f"({why}{f', {code}' if code else ''}): stopping; "
            "nothing it did not store was acknowledged"
        )
        _log.critical("{message}", message=message)
        self.failed.callback(message)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        """Each step runs even when one before it failed (a full disk fails several), and the
        worker threads are always stopped: a thread left running would keep the process."""
        if not self.started.called:
            _log.warn("stopping before the start finished")
        try:
            for step in (
                self._stop_network,
                self._stop_notifications,
                self._close_connections,
                self._close_store,
            ):
                try:
                    await step()
                except Exception:
                    _log.failure("while stopping {name}", name=self.server_name)
            _log.info("{name} stopped", name=self.server_name)
            await self.log.stop()
        finally:
            for pool in (self._store_pool, self._log_pool, self._cpu_pool, self._outbox_pool):
                pool.stop()

    async def _stop_network(self) -> None:
        """No new line is taken from then on (clients' lines already read are still answered
        once stored), so no change reaches the store after it is closed."""
        await DeferredList([dialer.stopService() for dialer in self.dialers])
        if self.port is not None:
            await maybeDeferred(self.port.stopListening)
        if self.web_port is not None:
            await maybeDeferred(self.web_port.stopListening)
        if self.status_port is not None:
            await maybeDeferred(self.status_port.stopListening)
        if self.live is not None:
            self.live.stop()
        if self.factory is not None:
            for connection in self.factory.connections:
                connection.stopProducing()
                if connection.transport is not None:
                    connection.transport.pauseProducing()  # type: ignore[attr-defined]
        if self.notifier is not None:
            self.notifier.stop()
        if self.server is not None:
            for session in list(self.server.links.values()):
                session.close()
            await self.server.idle()

    async def _stop_notifications(self) -> None:
        if self.outbox is not None:
            await self.outbox.stop()
        for channel in self.channels.values():
            await channel.close()

    async def _close_connections(self) -> None:
        if self.factory is not None:
            for connection in list(self.factory.connections):
                connection.close()
        if self.places is not None:
            await self.places.close()

    async def _close_store(self) -> None:
        if self.server is not None:
            await self.server.idle()
        await self._on_thread(self._store_pool)(self.store.close)


def _tls(mode: str) -> TlsMode:
    if mode not in ("starttls", "direct", "none"):
        raise ValueError(f"unknown tls mode {mode!r}")
    return cast(TlsMode, mode)
