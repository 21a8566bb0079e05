"""The fleet in Prometheus' text format, for ``orch serve``'s ``/metrics``.

A custom collector reads the sampler's latest snapshot at scrape time, so a scrape never
touches the store, and a registry of its own keeps the process's default metrics out.
Imported by ``orch serve`` only: prometheus-client stays off every other path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from orch_core.hosts import UNREACHABLE
from orch_core.queue import BANDS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from prometheus_client.metrics_core import Metric

#: The classic text format, which every Prometheus reads (orch's names and labels need nothing
#: newer).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class FleetCollector(Collector):
    """Gauges of the latest snapshot (``current()`` as :meth:`Sampler.current` gives it)."""

    def __init__(self, current: Callable[[], dict[str, Any]]) -> None:
        self._current = current

    def collect(self) -> Iterator[Metric]:
        state = self._current()
        view = state["snapshot"]
        yield _gauge(
            "orch_snapshot_ok",
            "1 when the last read of the store worked, else 0.",
            [((), 0.0 if state["error"] else 1.0)],
        )
        if not view:
            return
        agents = view["agents"]
        yield _gauge(
            "orch_snapshot_timestamp_seconds",
            "When the snapshot shown was taken.",
            [((), view["now"])],
        )
        by_state: dict[str, int] = {}
        for agent in agents:
            shown = UNREACHABLE if agent["unreachable"] else str(agent["state"])
            by_state[shown] = by_state.get(shown, 0) + 1
        yield _gauge(
            "orch_agents",
            f"Agents in each state ({UNREACHABLE}: their host's supervisor is not heard from).",
            [((s,), n) for s, n in sorted(by_state.items())],
            ["state"],
        )
        yield _gauge(
            "orch_agent_last_seen_timestamp_seconds",
            "When each agent's last hook ran.",
            [(_who(a), a["last_seen"]) for a in agents if a["last_seen"]],
            ["agent", "host"],
        )
        yield _gauge(
            "orch_agent_unreachable",
            "1 when the agent's host's supervisor has not been heard from for host_timeout.",
            [(_who(a), float(a["unreachable"])) for a in agents],
            ["agent", "host"],
        )
        yield _gauge(
            "orch_queue_depth",
            "Messages queued or delivered but not confirmed, per agent and priority band.",
            [((*_who(a), name), a["pending"][name]) for a in agents for _, name in BANDS],
            ["agent", "host", "band"],
        )
        yield _gauge(
            "orch_queue_oldest_seconds",
            "How long each agent's oldest pending message has waited (0: none).",
            [
                (_who(a), view["now"] - a["oldest_pending"] if a["oldest_pending"] else 0.0)
                for a in agents
            ],
            ["agent", "host"],
        )
        yield _gauge(
            "orch_restarts_last_hour",
            "Restarts orch made of each agent in the last hour.",
            [(_who(a), a["restarts_last_hour"]) for a in agents],
            ["agent", "host"],
        )
        hooks, delivery = view["hooks"], view["delivery"]
        window = f"in the last {hooks['window']:g} s"
        yield _gauge("orch_hook_runs", f"Hook runs {window}.", [((), hooks["runs"])])
        yield _gauge(
            "orch_hook_failures", f"Hook runs that failed {window}.", [((), hooks["failed"])]
        )
        yield _gauge(
            "orch_hook_duration_p50_seconds",
            f"Median hook run time {window}.",
            _maybe(hooks["p50_ms"], 1e-3),
        )
        yield _gauge(
            "orch_deliveries", f"Message deliveries {window}.", [((), delivery["delivered"])]
        )
        yield _gauge(
            "orch_delivery_latency_p50_seconds",
            f"Median wait from a message being due to its delivery {window}.",
            _maybe(delivery["p50_s"]),
        )
        yield _gauge(
            "orch_delivery_latency_max_seconds",
            f"Longest wait from a message being due to its delivery {window}.",
            _maybe(delivery["max_s"]),
        )


def _who(agent: dict[str, Any]) -> tuple[str, str]:
    """An agent's labels: its id and its host (empty when no hook has said)."""
    return (agent["id"], agent["host"] or "")


def _gauge(
    name: str,
    documentation: str,
    samples: list[tuple[tuple[str, ...], float]],
    labels: list[str] | None = None,
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels or [])
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


def _maybe(value: float | None, scale: float = 1.0) -> list[tuple[tuple[str, ...], float]]:
    """One unlabelled sample, or none when the window had nothing to measure."""
    return [] if value is None else [((), value * scale)]


def registry(current: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    """A registry of the fleet's gauges alone (not the global default one)."""
    found = CollectorRegistry(auto_describe=False)
    found.register(FleetCollector(current))
    return found


def render(found: CollectorRegistry) -> bytes:
    return generate_latest(found)
