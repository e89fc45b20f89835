"""Prometheus metrics: a server's live counters as ``prometheus_client`` collectors.

Install the extra (``pip install typed-smtpd[metrics]``), then either serve them on their own
HTTP endpoint::

    server, port = serve_metrics(lambda: controller.stats, "127.0.0.1", 9101)

or add them to an application's own exporter::

    register(lambda: controller.stats)        # the default prometheus_client registry

The collector reads a :class:`~typed_smtpd.monitoring.StatsSnapshot` when it is scraped, so the
server does no work for Prometheus between scrapes. Every name starts with ``typed_smtpd_``;
counters end in ``_total``. The command line serves them with ``--metrics HOST:PORT``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from typed_smtpd.monitoring import StatsSnapshot

try:
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as _missing:  # pragma: no cover - exercised by hiding the package in a test
    raise ImportError(
        "typed_smtpd.metrics needs prometheus_client: pip install typed-smtpd[metrics]"
    ) from _missing

__all__ = ["COUNTERS", "StatsCollector", "register", "serve_metrics"]

#: The counters exposed: metric name (without ``typed_smtpd_`` and ``_total``), the
#: :class:`~typed_smtpd.monitoring.StatsSnapshot` field, and its help text.
COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("connections", "connections_total", "Connections accepted"),
    ("connections_refused", "connections_refused", "Connections refused at the connection cap"),
    ("messages_accepted", "messages_accepted", "Messages accepted (2xx at the end of the data)"),
    ("messages_refused", "messages_refused", "Messages refused at the end of the data"),
    ("messages_abandoned", "messages_abandoned", "Messages whose client left before their end"),
    ("recipients", "recipients", "Recipients of the accepted messages"),
    ("received_bytes", "bytes_received", "Octets received from clients"),
    ("commands_refused", "commands_refused", "Commands answered 4xx or 5xx"),
    ("auth_successes", "auth_successes", "Successful AUTH exchanges"),
    ("auth_failures", "auth_failures", "Failed AUTH exchanges"),
    ("tls_handshakes", "tls_handshakes", "Completed TLS handshakes"),
    ("tls_failures", "tls_failures", "Failed TLS handshakes"),
    ("timeouts", "timeouts", "Connections closed because a deadline passed"),
    ("hook_errors", "hook_errors", "Exceptions (or invalid replies) from handler code"),
)


class StatsCollector(Collector):
    """Exposes what ``source()`` returns (a :class:`StatsSnapshot`) at each scrape."""

    def __init__(self, source: Callable[[], StatsSnapshot]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        snapshot = self.source()
        yield GaugeMetricFamily(
            "typed_smtpd_connections_open", "Connections open now", value=snapshot.connections_open
        )
        for name, attribute, text in COUNTERS:
            yield CounterMetricFamily(
                f"typed_smtpd_{name}", text, value=getattr(snapshot, attribute)
            )
        limits = CounterMetricFamily(
            "typed_smtpd_limit_refusals",
            "Refusals because a limit was hit, by limit",
            labels=["limit"],
        )
        for limit, count in sorted(snapshot.limits.items()):
            limits.add_metric([limit], count)
        yield limits


def register(
    source: Callable[[], StatsSnapshot], registry: CollectorRegistry = REGISTRY
) -> StatsCollector:
    """Add the counters of ``source`` to ``registry`` (the default one unless given)."""
    collector = StatsCollector(source)
    registry.register(collector)
    return collector


def serve_metrics(
    source: Callable[[], StatsSnapshot], host: str = "127.0.0.1", port: int = 0
) -> tuple[WSGIServer, int]:
    """Serve the counters of ``source`` at ``http://host:port/metrics``, in a thread of its
    own; the HTTP server (``shutdown()`` stops it) and the port it listens on (``0``: a free
    one)."""
    registry = CollectorRegistry(auto_describe=True)
    register(source, registry)
    server, thread = start_http_server(port, host, registry=registry)
    assert isinstance(thread, threading.Thread)
    return server, int(server.server_address[1])
