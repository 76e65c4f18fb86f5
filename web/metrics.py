"""The status figures in the Prometheus text format, through `prometheus_client`: one
`CollectorRegistry` per server (never the process-wide default one) holding one custom
collector that reads the figures when scraped.

Metric names (docs/web.md, "Operator status and /metrics"): `renga_peer_link_up{peer}`,
`renga_outbox_messages{channel,state}`, `renga_line_connections`, `renga_web_streams`,
`renga_uptime_seconds`, `renga_ops_stored`, `renga_server_info{server}`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from web.status import OUTBOX_STATES, StatusFigures

__all__ = ["CONTENT_TYPE", "StatusCollector", "metrics_registry", "metrics_text"]

CONTENT_TYPE = CONTENT_TYPE_LATEST


class StatusCollector(Collector):
    """Reads `figures()` on every scrape and yields one family per figure."""

    def __init__(self, figures: Callable[[], StatusFigures]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        now = self._figures()
        info = InfoMetricFamily("renga_server", "The herd server these figures are of.")
        info.add_metric([], {"server": now.server})
        yield info
        links = GaugeMetricFamily(
            "renga_peer_link_up",
            "1 when the link to a configured neighbour is up, 0 when it is down.",
            labels=["peer"],
        )
        for link in now.links:
            links.add_metric([link.peer], 1.0 if link.up else 0.0)
        yield links
        outbox = GaugeMetricFamily(
            "renga_outbox_messages",
            "Outbox rows by channel and state: pending (waiting or retrying), sending, dead.",
            labels=["channel", "state"],
        )
        for channel in now.channels:
            for state in OUTBOX_STATES:
                outbox.add_metric([channel, state], float(now.outbox_rows(channel, state)))
        yield outbox
        yield GaugeMetricFamily(
            "renga_line_connections",
            "Open client connections on the line port.",
            value=float(now.line_connections),
        )
        if now.web_streams is not None:
            yield GaugeMetricFamily(
                "renga_web_streams", "Open live streams (SSE) of the web.", value=now.web_streams
            )
        yield GaugeMetricFamily(
            "renga_uptime_seconds", "Seconds since this server started.", value=now.uptime_seconds
        )
        yield GaugeMetricFamily(
            "renga_ops_stored", "Operations in this server's op log.", value=float(now.ops_stored)
        )


def metrics_registry(figures: Callable[[], StatusFigures]) -> CollectorRegistry:
    """A registry of its own for one server, holding its `StatusCollector` only."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(figures))
    return registry


def metrics_text(registry: CollectorRegistry) -> bytes:
    """The registry's figures in the Prometheus text format (version 0.0.4)."""
    return generate_latest(registry)
