"""The promotion gate's report as a typed, frozen structure: what was decided, by which rule, on what evidence.

    GateReport
      decision "PROMOTE" | "HOLD", reasons (every failed check), rule, promoted_step
      holdout_rows, evaluated_rows, conversions, weights_source ("logged" | "estimated"), alpha, margin, exploration
      champion: PolicyEvidence (the baseline: the champion as served, or the logging policy)
      steps: StepEvidence per shrunk step tested, in order (candidate estimates, weights, Δ with its bounds)
      checks: Check per diagnostic; business metrics of the logged rows; optional cross checks
      shown: the promoted step's evidence, else the last step tested (what `candidate`, `difference` read)

The trainer writes `to_dict()` into each version's manifest; the registry, the CLI, the demo and the daemons read
it back with `from_dict()` and use fields, never nested `.get()` chains. `from_dict` reads manifests written
before this type existed (the same keys).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any


# The estimators' results (common/ope.py computes them): plain records, importable without numpy or scipy, so that
# reading a report (the registry, `rankrl status`) does not load the statistics stack.
@dataclass(frozen=True)
class Estimate:
    """A policy value with its 95% intervals (t on influence values; bootstrap percentile when computed)."""

    value: float
    se: float
    ci_low: float
    ci_high: float
    boot_low: float | None = None
    boot_high: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PairedDifference:
    """Δ = V(candidate) − V(champion) on the same rows, with one-sided lower bounds at level 1 − α."""

    delta: float
    se: float
    lcb_t: float
    lcb_boot: float | None
    lcb: float  # min(lcb_t, lcb_boot): what the gate compares with its margin
    ci_low: float  # two-sided (1 − 2α) t interval, for reports and plots
    ci_high: float
    mde80: float  # smallest Δ detectable with 80% power at this n and noise
    n: int
    bootstrap_replicates: int = 0  # how many bootstrap replicates gave lcb_boot (fewer when a decision settled early)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WeightDiagnostics:
    """How far the importance weights can be trusted (each is a gate floor; see trainer/gate.py)."""

    n: int
    ess: float  # Kish: (Σw)² / Σw²
    ess_fraction: float
    effective_conversions: float  # ESS × observed conversion rate
    max_weight_share: float  # max w / Σw
    mean_weight: float  # E_b[w] = 1 under a correct density with full support
    mean_weight_tolerance: float  # max(0.05, 3 sd(w)/√n)
    pareto_k: float  # generalised-Pareto shape of the upper weight tail (PSIS k̂)
    log_weight_max: float
    # The weights' distribution for plots: counts per bin of log10(w) on WEIGHT_LOG10_EDGES, the outer bins holding
    # everything beyond them (None in reports written before it existed).
    log10_histogram: tuple[int, ...] | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WeightDiagnostics:
        h = d.get("log10_histogram")
        return cls(**{**d, "log10_histogram": None if h is None else tuple(int(c) for c in h)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _estimate(d: dict[str, Any] | None) -> Estimate | None:
    return None if d is None else Estimate(**d)


@dataclass(frozen=True)
class Check:
    check: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class PolicyEvidence:
    """Counterfactual estimates of one policy on the holdout."""

    snips_conversion: Estimate
    ips_conversion: Estimate
    snips_reward: Estimate
    ips_reward: Estimate | None = None
    action_mse_vs_logged: float | None = None
    policy: str | None = None  # for the baseline: "champion" or "logging"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolicyEvidence:
        return cls(
            snips_conversion=Estimate(**d["snips_conversion"]),
            ips_conversion=Estimate(**d["ips_conversion"]),
            snips_reward=Estimate(**d["snips_reward"]),
            ips_reward=_estimate(d.get("ips_reward")),
            action_mse_vs_logged=d.get("action_mse_vs_logged"),
            policy=d.get("policy"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class StepEvidence:
    """One shrunk step of the candidate (1.0 = the full candidate) and its evidence against the baseline."""

    step: float
    candidate: PolicyEvidence
    candidate_weights: WeightDiagnostics
    difference: PairedDifference
    support_violation_share: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepEvidence:
        return cls(
            step=float(d["step"]),
            candidate=PolicyEvidence.from_dict(d["candidate"]),
            candidate_weights=WeightDiagnostics.from_dict(d["candidate_weights"]),
            difference=PairedDifference(**d["difference"]),
            support_violation_share=d.get("support_violation_share"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "candidate": self.candidate.to_dict(),
            "candidate_weights": self.candidate_weights.to_dict(),
            "difference": self.difference.to_dict(),
            "support_violation_share": self.support_violation_share,
        }


@dataclass(frozen=True)
class GateReport:
    decision: str  # "PROMOTE" or "HOLD"
    reasons: tuple[str, ...]
    rule: str
    promoted_step: float | None
    holdout_rows: int
    evaluated_rows: int
    conversions: int
    weights_source: str  # "logged" or "estimated"
    alpha: float
    margin: float
    exploration: dict[str, float]
    checks: tuple[Check, ...] = ()
    champion: PolicyEvidence | None = None
    champion_weights: WeightDiagnostics | None = None
    steps: tuple[StepEvidence, ...] = ()
    business: dict[str, float] | None = None
    behaviour_model: dict[str, Any] | None = None
    cross_checks: dict[str, Any] | None = None
    estimator: str = "snips"
    # Added by the caller: the trainer's policy statistics, evaluate's model names.
    policy: dict[str, Any] | None = None
    models: dict[str, str] | None = None

    @property
    def promoted(self) -> bool:
        return self.decision == "PROMOTE"

    @property
    def shown(self) -> StepEvidence | None:
        """The evidence shown first: the promoted step's, else the last step tested (the one that failed)."""
        for s in self.steps:
            if s.step == self.promoted_step:
                return s
        return self.steps[-1] if self.steps else None

    @property
    def candidate(self) -> PolicyEvidence | None:
        return None if self.shown is None else self.shown.candidate

    @property
    def candidate_weights(self) -> WeightDiagnostics | None:
        return None if self.shown is None else self.shown.candidate_weights

    @property
    def difference(self) -> PairedDifference | None:
        return None if self.shown is None else self.shown.difference

    @property
    def label(self) -> str:
        return "PROMOTE" if self.promoted else "HOLD:" + ",".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "decision": self.decision,
            "reasons": list(self.reasons),
            "rule": self.rule,
            "promoted_step": self.promoted_step,
            "holdout_rows": self.holdout_rows,
            "evaluated_rows": self.evaluated_rows,
            "conversions": self.conversions,
            "weights_source": self.weights_source,
            "estimator": self.estimator,
            "alpha": self.alpha,
            "margin": self.margin,
            "exploration": dict(self.exploration),
            "checks": [dataclasses.asdict(c) for c in self.checks],
            "steps": [s.to_dict() for s in self.steps],
        }
        if self.champion is not None:
            out["champion"] = self.champion.to_dict()
        if self.champion_weights is not None:
            out["champion_weights"] = self.champion_weights.to_dict()
        shown = self.shown
        if shown is not None:  # the shown step's evidence at the top, for people reading the manifest
            out.update(candidate=shown.candidate.to_dict(), candidate_weights=shown.candidate_weights.to_dict())
            out["difference"] = shown.difference.to_dict()
        for name in ("business", "behaviour_model", "cross_checks", "policy", "models"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateReport:
        return cls(
            decision=d["decision"],
            reasons=tuple(d.get("reasons", ())),
            rule=d.get("rule", ""),
            promoted_step=d.get("promoted_step"),
            holdout_rows=int(d.get("holdout_rows", 0)),
            evaluated_rows=int(d.get("evaluated_rows", d.get("holdout_rows", 0))),
            conversions=int(d.get("conversions", 0)),
            weights_source=d.get("weights_source", "logged"),
            alpha=float(d.get("alpha", 0.05)),
            margin=float(d.get("margin", 0.0)),
            exploration=dict(d.get("exploration", {})),
            checks=tuple(Check(**c) for c in d.get("checks", ())),
            champion=PolicyEvidence.from_dict(d["champion"]) if d.get("champion") else None,
            champion_weights=WeightDiagnostics.from_dict(d["champion_weights"]) if d.get("champion_weights") else None,
            steps=tuple(StepEvidence.from_dict(s) for s in d.get("steps", ())),
            business=d.get("business"),
            behaviour_model=d.get("behaviour_model"),
            cross_checks=d.get("cross_checks"),
            estimator=d.get("estimator", "snips"),
            policy=d.get("policy"),
            models=d.get("models"),
        )

    def with_extras(self, **extras: Any) -> GateReport:
        """A copy with the caller's additions (`policy`, `models`)."""
        return dataclasses.replace(self, **extras)
