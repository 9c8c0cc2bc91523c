"""Prometheus metrics of the trainer (`rankrl_trainer_…`)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from deploy.registry import ModelRegistry

OUTCOMES = ("promoted", "held", "failed", "interrupted", "skipped")


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        p = "rankrl_trainer_"
        self.cycles = Counter(p + "cycles", "Training cycles by outcome", ["outcome"], registry=registry)
        for o in OUTCOMES:
            self.cycles.labels(outcome=o)
        self.last_success = Gauge(
            p + "last_success_timestamp_seconds", "End of the last completed cycle", registry=registry
        )
        self.duration = Histogram(
            p + "cycle_duration_seconds",
            "Duration of a training cycle",
            buckets=(10, 30, 60, 120, 300, 600, 1200, 3600),
            registry=registry,
        )
        self.steps = Counter(p + "gradient_steps", "Gradient steps taken", registry=registry)
        self.cumulative_steps = Gauge(
            p + "cumulative_gradient_steps", "Gradient steps behind the latest candidate", registry=registry
        )
        self.loss = Gauge(p + "loss", "Mean loss of the last epoch of the last cycle", ["name"], registry=registry)
        self.estimate = Gauge(
            p + "conversion_estimate_ratio",
            "Counterfactual conversion (SNIPS) and its 95% bounds on the holdout",
            ["policy", "bound"],
            registry=registry,
        )
        self.delta_lcb = Gauge(
            p + "conversion_delta_lower_bound_ratio",
            "One-sided lower bound of candidate minus champion conversion",
            registry=registry,
        )
        self.rows = Gauge(p + "rows", "Rows used by the last cycle", ["split"], registry=registry)
        self.champion = Info(p + "champion", "The champion model version", registry=registry)


class RegistryCollector:
    """Registry state read at scrape time: history entries by action (rollbacks page someone) and versions."""

    ACTIONS = ("register", "promote", "reject", "rollback", "pin", "unpin")

    def __init__(self, root: str | Path) -> None:
        self.models = ModelRegistry(root)

    def collect(self) -> Iterator[Metric]:
        history = self.models.history()
        counts = Tally(h.get("action") for h in history)
        events = CounterMetricFamily(
            "rankrl_registry_events", "Model registry history entries by action", labels=["action"]
        )
        for a in self.ACTIONS:
            events.add_metric([a], counts.get(a, 0))
        yield events
        yield GaugeMetricFamily(
            "rankrl_registry_versions", "Model versions kept in the registry", value=len(self.models.versions())
        )
        changes = [h["time"] for h in history if h.get("action") in ("promote", "rollback") and "time" in h]
        yield GaugeMetricFamily(
            "rankrl_registry_last_champion_change_timestamp_seconds",
            "When the champion last changed (promotion or rollback), from the history; 0 before the first",
            value=float(changes[-1]) if changes else 0.0,
        )
