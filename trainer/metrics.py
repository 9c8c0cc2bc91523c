"""Prometheus metrics of the trainer process (`rankrl_trainer_…`) and, read from the registry at scrape time, of
the registry (`rankrl_registry_…`) and of the newest version's gate decision (`rankrl_gate_…`, with the cycle's rows,
losses and steps). What is read from the registry is there from the first scrape after a restart: no empty panels
until the next cycle, and the same values whichever trainer serves them."""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from deploy.registry import ModelRegistry, RegistryError, report_of

log = logging.getLogger(__name__)

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


class RegistryCollector:
    """Registry state read at scrape time: history entries by action (rollbacks page someone), versions, the
    champion and when it last changed, and the newest version's cycle and gate decision (`decision_metrics`)."""

    ACTIONS = ("register", "promote", "reject", "rollback", "pin", "unpin")

    def __init__(self, root: str | Path) -> None:
        self.models = ModelRegistry(root)
        self._newest: tuple[str, float, list[Metric]] | None = None  # (version, manifest mtime, its metrics)

    def collect(self) -> Iterator[Metric]:
        history = self.models.history()
        counts = Tally(h.get("action") for h in history)
        events = CounterMetricFamily(
            "rankrl_registry_events", "Model registry history entries by action", labels=["action"]
        )
        for a in self.ACTIONS:
            events.add_metric([a], counts.get(a, 0))
        yield events
        versions = self.models.versions()
        yield GaugeMetricFamily("rankrl_registry_versions", "Model versions kept in the registry", value=len(versions))
        changes = [h["time"] for h in history if h.get("action") in ("promote", "rollback") and "time" in h]
        yield GaugeMetricFamily(
            "rankrl_registry_last_champion_change_timestamp_seconds",
            "When the champion last changed (promotion or rollback), from the history; 0 before the first",
            value=float(changes[-1]) if changes else 0.0,
        )
        # read here, not set by the trainer: a promote or rollback by an operator shows at the next scrape
        try:
            champion = self.models.champion() or "none"
        except RegistryError as e:  # a damaged pointer: say so instead of failing the scrape
            log.warning("registry metrics: %s", e)
            champion = "unreadable"
        yield InfoMetricFamily("rankrl_trainer_champion", "The champion model version", value={"version": champion})
        yield from self._decision(versions)

    def _decision(self, versions: list[str]) -> list[Metric]:
        """The newest version's metrics, re-read only when its manifest changes (a scrape reads one stat)."""
        if not versions:
            return []
        v = versions[-1]
        try:
            mtime = (self.models.root / v / "manifest.json").stat().st_mtime
            if self._newest is None or self._newest[:2] != (v, mtime):
                self._newest = (v, mtime, decision_metrics(self.models.manifest(v)))
        except (OSError, ValueError, KeyError, TypeError, RegistryError) as e:  # a damaged manifest: scrape the rest
            log.warning("registry metrics: cannot read %s's manifest: %s", v, e)
            return []
        return self._newest[2]


def decision_metrics(manifest: dict[str, Any]) -> list[Metric]:
    """A version's cycle (rows, losses, steps) and gate decision (estimates, Δ and its bound against the margin,
    weight diagnostics, each check) as metric families."""
    out: list[Metric] = []

    def gauge(name: str, doc: str, value: float | None) -> None:
        if value is not None:
            out.append(GaugeMetricFamily(name, doc, value=float(value)))

    gauge("rankrl_trainer_cumulative_gradient_steps", "Gradient steps behind the newest version",
          manifest.get("cumulative_steps"))  # fmt: skip
    window = manifest.get("data_window") or {}
    rows = GaugeMetricFamily("rankrl_trainer_rows", "Rows used by the newest version's cycle", labels=["split"])
    splits = (("train", "train_rows"), ("holdout", "holdout_rows"), ("dropped_non_finite", "dropped_non_finite_rows"))
    for split, key in splits:
        if key in window:
            rows.add_metric([split], float(window[key]))
    out.append(rows)
    r = report_of(manifest)
    if r is None:
        return out
    loss = GaugeMetricFamily("rankrl_trainer_loss", "Mean losses of the newest version's last epoch", labels=["name"])
    for k, v in ((r.policy or {}).get("losses") or {}).items():
        loss.add_metric([k], float(v))
    out.append(loss)
    g = "rankrl_gate_"
    gauge(g + "promoted", "1 when the newest version was promoted, 0 when held", float(r.promoted))
    gauge(g + "decision_timestamp_seconds", "When the newest version was decided", manifest.get("created"))
    gauge(g + "promoted_step_ratio", "Shrinkage step promoted (1 = the full candidate)", r.promoted_step)
    gauge(g + "holdout_rows", "Holdout rows the gate evaluated", r.evaluated_rows)
    gauge(g + "min_lift_ratio", "The margin (gate.min_lift) the lower bound of Δ must exceed", r.margin)
    est = GaugeMetricFamily(g + "conversion_estimate_ratio", "SNIPS conversion on the holdout, with 95% t bounds",
                            labels=["policy", "bound"])  # fmt: skip
    for policy, evidence in (("candidate", r.candidate), ("baseline", r.champion)):
        if evidence is not None:
            e = evidence.snips_conversion
            for bound, value in (("value", e.value), ("low", e.ci_low), ("high", e.ci_high)):
                est.add_metric([policy, bound], float(value))
    out.append(est)
    d = r.difference
    if d is not None:
        gauge(g + "delta_ratio", "Δ conversion, candidate (the step shown) minus baseline", d.delta)
        gauge(g + "delta_lower_bound_ratio", "The lower bound of Δ the gate compares with its margin", d.lcb)
    w = r.candidate_weights
    if w is not None:
        gauge(g + "effective_sample_size_ratio", "ESS/n of the candidate's importance weights", w.ess_fraction)
        gauge(g + "pareto_k", "Pareto k̂ of the weights' upper tail (unreliable above 0.7)", w.pareto_k)
        gauge(g + "max_weight_share_ratio", "Largest weight's share of their sum", w.max_weight_share)
    checks = GaugeMetricFamily(g + "check_passed", "1 when the newest decision's check passed, 0 when it failed",
                               labels=["check"])  # fmt: skip
    for c in r.checks:
        checks.add_metric([c.check], float(c.passed))
    out.append(checks)
    return out
