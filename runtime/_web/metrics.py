"""``GET /metrics``: the runtime's figures for Prometheus (prometheus-client).

Each app has a registry of its own (never the library's global one) holding one
collector that reads the runtime's figures when scraped: nothing is added to the poll or
delivery paths. Per-device series carry a ``config_id`` label while the fleet has at most
``PIPHI_METRICS_PER_DEVICE_CAP`` devices (default 1,000, ``Settings``); beyond it
only the fleet-wide sums are exported, so a large fleet cannot flood Prometheus.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from quart import Blueprint, Response, current_app, request
from quart_schema import hide

from .._runtime import Runtime
from .context import RUNTIME_KEY, current_runtime

__all__ = ["REQUESTS_KEY", "blueprint", "registry_for"]

blueprint = Blueprint("metrics", __name__)

REQUESTS_KEY = "piphi.http_requests"
_REGISTRY_KEY = "piphi.metrics_registry"
_LINK_STATES = ("unknown", "up", "down", "auth_rejected", "no_identity", "misrouted")
Family = CounterMetricFamily | GaugeMetricFamily
_DELIVERY = ("accepted", "delivered", "retried", "spooled", "replayed", "dropped", "rejected")


@blueprint.get("/metrics")
@hide  # text, not JSON: documented in the README, not in /openapi.json
async def metrics() -> Response:
    """The runtime's figures in the Prometheus (or OpenMetrics, if asked) text format."""
    current_runtime()  # 503 while the runtime is not up
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encode(registry_for(current_app)), content_type=content_type)


def registry_for(app: Any) -> CollectorRegistry:
    """The app's own registry: the runtime's collector and the process's."""
    registry = app.extensions.get(_REGISTRY_KEY)
    if not isinstance(registry, CollectorRegistry):
        registry = CollectorRegistry(auto_describe=False)
        registry.register(RuntimeCollector(app))
        ProcessCollector(registry=registry)
        app.extensions[_REGISTRY_KEY] = registry
    return registry


class RuntimeCollector(Collector):
    """Reads a running runtime's figures at scrape time."""

    def __init__(self, app: Any) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        rt = self._app.extensions.get(RUNTIME_KEY)
        requests: Counter[tuple[str, str]] = self._app.extensions.get(REQUESTS_KEY, Counter())
        http = CounterMetricFamily(
            "piphi_http_requests",
            "HTTP requests answered, by route and status",
            labels=["route", "status"],
        )
        for (route, status), count in sorted(requests.items()):
            http.add_metric([route, status], count)
        yield http
        if isinstance(rt, Runtime):
            yield from _fleet(rt, rt.settings.metrics_per_device_cap)
            yield from _delivery(rt)
            if rt.sources.links:
                yield from _sources(rt)


def _fleet(rt: Runtime, cap: int) -> Iterator[Metric]:
    supervisors = list(rt.actors)
    per_device = len(supervisors) <= cap
    by_state: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    device: dict[str, Family] = {
        "restarts": CounterMetricFamily(
            "piphi_actor_restarts", "Restarts of an actor", labels=["config_id"]
        ),
        "polls": CounterMetricFamily("piphi_actor_polls", "Polls", labels=["config_id"]),
        "overruns": CounterMetricFamily(
            "piphi_actor_overruns",
            "Poll ticks skipped because the actor was busy",
            labels=["config_id"],
        ),
        "available": GaugeMetricFamily(
            "piphi_actor_available", "1 while the device is available", labels=["config_id"]
        ),
        "duration": GaugeMetricFamily(
            "piphi_actor_poll_duration_seconds",
            "Recent poll durations (p50, p95)",
            labels=["config_id", "quantile"],
        ),
    }
    for supervisor in supervisors:
        by_state[supervisor.state.value] += 1
        health = supervisor.health()
        totals.update(restarts=health.restarts_total, polls=health.polls, overruns=health.overruns)
        if per_device:
            _device_samples(device, supervisor.identity.config_id, health)
    states = GaugeMetricFamily("piphi_actors", "Actors by state", labels=["state"])
    for state, count in sorted(by_state.items()):
        states.add_metric([state], count)
    yield states
    yield GaugeMetricFamily("piphi_devices", "Configured devices", value=len(supervisors))
    yield CounterMetricFamily("piphi_restarts", "Restarts, all actors", value=totals["restarts"])
    yield CounterMetricFamily("piphi_polls", "Polls, all actors", value=totals["polls"])
    yield CounterMetricFamily(
        "piphi_overruns", "Skipped ticks, all actors", value=totals["overruns"]
    )
    generation = rt.sync.last_generation
    yield GaugeMetricFamily(
        "piphi_config_generation",
        "The last applied snapshot's generation (-1: none)",
        value=-1 if generation is None else generation,
    )
    if per_device:
        yield from device.values()


def _device_samples(device: dict[str, Family], config_id: str, health: Any) -> None:
    device["restarts"].add_metric([config_id], health.restarts_total)
    device["polls"].add_metric([config_id], health.polls)
    device["overruns"].add_metric([config_id], health.overruns)
    device["available"].add_metric([config_id], 1 if health.available else 0)
    for quantile, value in (("0.5", health.poll_duration_p50), ("0.95", health.poll_duration_p95)):
        if value is not None:
            device["duration"].add_metric([config_id, quantile], value)


def _delivery(rt: Runtime) -> Iterator[Metric]:
    stats = rt.outbox.stats()
    for name in _DELIVERY:
        yield CounterMetricFamily(
            f"piphi_delivery_{name}",
            f"Telemetry and events {name} (delivery to Core)",
            value=getattr(stats, name),
        )
    yield CounterMetricFamily(
        "piphi_polls_deferred",
        "Scheduled polls put off while the spool's writer was behind",
        value=stats.deferred,
    )
    yield GaugeMetricFamily(
        "piphi_delivery_queue_depth", "Items in memory", value=stats.queue_depth
    )
    yield GaugeMetricFamily("piphi_delivery_in_flight", "Requests to Core", value=stats.in_flight)
    yield GaugeMetricFamily("piphi_spool_depth", "Rows in the spool", value=stats.spool_depth)
    yield GaugeMetricFamily("piphi_spool_bytes", "Bytes in the spool", value=stats.spool_bytes)
    age = stats.spool_oldest_age
    yield GaugeMetricFamily(
        "piphi_spool_oldest_age_seconds",
        "Age of the oldest spooled item (0: empty)",
        value=0.0 if age is None else age,
    )
    backlog = stats.backlog_age
    yield GaugeMetricFamily(
        "piphi_delivery_backlog_age_seconds",
        "Age of the oldest undelivered item (0: none)",
        value=0.0 if backlog is None else backlog,
    )
    link = GaugeMetricFamily(
        "piphi_core_link", "1 for the Core link's current state", labels=["state"]
    )
    for state in _LINK_STATES:
        link.add_metric([state], 1 if stats.link.state == state else 0)
    yield link


_SOURCE_COUNTS = {
    "packets": "Payloads received from a shared source",
    "routed": "Payloads routed to the actors that claim their device",
    "unclaimed": "Payloads of devices no config claims",
    "malformed": "Payloads that are not an envelope with a device_hint",
    "connects": "Sessions a shared source opened",
}


def _sources(rt: Runtime) -> Iterator[Metric]:
    figures = rt.sources.figures()
    up = GaugeMetricFamily(
        "piphi_source_up", "1 while a shared source is connected", labels=["source"]
    )
    counts = {
        name: CounterMetricFamily(f"piphi_source_{name}", text, labels=["source"])
        for name, text in _SOURCE_COUNTS.items()
    }
    for link in figures["sources"]:
        up.add_metric([link["name"]], 1 if link["state"] == "connected" else 0)
        for name, family in counts.items():
            family.add_metric([link["name"]], link[name])
    yield up
    yield from counts.values()
    yield CounterMetricFamily(
        "piphi_source_dropped", "Packets dropped from full actor inboxes", value=figures["dropped"]
    )
    yield GaugeMetricFamily(
        "piphi_source_unclaimed_hints",
        "Devices heard that no config claims (kept for /discover)",
        value=figures["unclaimed_hints"],
    )
