"""The serving contract's machine-readable half: JSON Schemas of the messages and the conformance vectors.

    python scripts/contract.py          # rewrites docs/schemas/*.schema.json and docs/conformance/*

`docs/serving-contract.md` is the prose; this module builds what an implementation in another language checks
itself against, and `tests/deploy/test_contract.py` regenerates it and compares with what is committed:

- `docs/schemas/`: JSON Schemas (2020-12) of the event, decision, outcome and rank messages, generated from the
  msgspec types that validate them (common/decisions.py, common/schema.py);
- `docs/conformance/serving-v1.json`: states (JSON) -> the 23 features; (mean, served weights, kappa, min_alpha)
  -> log-density; and states -> mean weights of `reference-policy.onnx`, a small fixed policy in the exact form
  of every version's `policy.onnx` (input `state` float32 [n, 23], output `weights` float32 [n, 7]); and the
  whole serve path chained (state -> features -> mean -> served weights -> log-density).
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.decisions import schemas
from common.exploration import DirichletExploration
from common.features import STATE_FEATURE_NAMES, extract_state_vector
from common.schema import ACTION_KEYS
from deploy.portable import OnnxMean, export_onnx
from deploy.serving import torchscript_quiet

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "docs" / "schemas"
CONFORMANCE = ROOT / "docs" / "conformance"
REFERENCE_POLICY = "reference-policy.onnx"


class ReferencePolicy(torch.nn.Module):
    """softmax(tanh(s / scale) @ W + c): fixed, seeded weights; exercises every feature and both signs."""

    def __init__(self) -> None:
        super().__init__()
        g = np.random.default_rng(20261202)
        self.register_buffer("scale", torch.tensor([1, 5, 20, 1, 1, 1, 1, 500, 500, 500, 500, 500, 50, 500, 200, 500,
                                                    1000, 1, 20, 10, 1, 1, 10], dtype=torch.float32))  # fmt: skip
        self.register_buffer("w", torch.as_tensor(g.normal(0, 0.8, (23, 7)), dtype=torch.float32))
        self.register_buffer("c", torch.as_tensor(g.normal(0, 0.3, 7), dtype=torch.float32))
        self.scale: torch.Tensor
        self.w: torch.Tensor
        self.c: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(torch.tanh(x / self.scale) @ self.w + self.c, dim=-1)


def example_states() -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    base: dict[str, Any] = {
        "user_features": {
            "luxury_affinity": 0.7, "hesitation_count": 2, "purchase_count": 5, "category_diversity": 0.6,
            "brand_affinity": {"chanel": 0.9, "hermes": 0.8, "gucci": 0.3, "prada": 0.5},
            "avg_category_spend": {"shoes": 150.0, "bags": 300.0},
        },
        "candidate_features": {"count": 20, "price_mean": 120.5, "price_std": 45.2, "avg_desirability": 0.65,
                               "discounted_count": 8},
        "session_features": {"query_length": 3, "query_has_brand": True, "previous_searches_count": 2},
    }  # fmt: skip
    meta: list[dict[str, Any]] = [
        {"product_id": "p1", "price": 199.0},
        {"product_id": "p2", "price": 80.0},
        {"product_id": "p3"},
    ]
    out: list[tuple[dict[str, Any], list[dict[str, Any]]]] = [(base, meta), (base, [])]
    s = copy.deepcopy(base)
    s["candidate_features"].update(price_min=10.0, price_max=990.0)
    s["session_features"].update(query_has_brand=False, query_has_price_terms=True)
    out.append((s, meta))
    s = copy.deepcopy(base)
    s["user_features"].update(brand_affinity={}, avg_category_spend={f"c{i}": 10.0 * i for i in range(9)})
    out.append((s, []))
    s = copy.deepcopy(base)
    s["user_features"].update(luxury_affinity=0.0, hesitation_count=0, purchase_count=0, category_diversity=1.0)
    s["candidate_features"].update(count=0, price_mean=0.0, price_std=0.0, discounted_count=0)
    out.append((s, []))
    return out


def _reference_onnx(out: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp, torchscript_quiet():
        pt = Path(tmp) / "reference.pt"
        torch.jit.save(torch.jit.script(ReferencePolicy().eval()), str(pt))
        return export_onnx(pt, out)


def conformance(onnx_path: Path) -> dict[str, Any]:
    """The conformance vectors, with the reference policy's weights computed by onnxruntime from `onnx_path`."""
    rng = np.random.default_rng(7)
    features = []
    for state, meta in example_states():
        features.append({"state": state, "ranking_metadata": meta,
                         "features": extract_state_vector(state, meta).astype(float).tolist()})  # fmt: skip
    densities = []
    for kappa, min_alpha in ((20.0, 1.0), (50.0, 1.0), (20.0, 0.5)):
        ex = DirichletExploration(kappa, min_alpha)
        means = rng.dirichlet(np.ones(7), 4)
        means[0] = 1 / 7
        means[1] = [0.94, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01]
        actions, _ = ex.sample(means, rng)
        actions[2] = [0.999, 1e-4, 1e-4, 2e-4, 2e-4, 2e-4, 2e-4]  # near a vertex: the log terms dominate
        for m, a, lp in zip(means, actions, ex.log_density(actions, means), strict=True):
            densities.append({"kappa": kappa, "min_alpha": min_alpha, "mean": m.tolist(), "weights": a.tolist(),
                              "alpha": ex.alphas(m).tolist(), "log_density": float(lp)})  # fmt: skip
    states = np.array([f["features"] for f in features], dtype=np.float32)
    weights = OnnxMean(onnx_path)(states)
    # the whole serve path: state JSON -> features -> mean (reference-policy.onnx) -> served weights -> log-density
    ex = DirichletExploration(20.0, 1.0)
    served, _ = ex.sample(np.asarray(weights, dtype=np.float64), rng)
    path_lp = ex.log_density(served, np.asarray(weights, dtype=np.float64))
    serve_path = [
        {"state": f["state"], "ranking_metadata": f["ranking_metadata"], "kappa": 20.0, "min_alpha": 1.0,
         "mean": w.astype(float).tolist(), "weights": a.tolist(), "log_density": float(lp)}
        for f, w, a, lp in zip(features, weights, served, path_lp, strict=True)
    ]  # fmt: skip
    return {
        "version": 1,
        "state_features": list(STATE_FEATURE_NAMES),
        "action_keys": list(ACTION_KEYS),
        "features": features,
        "log_density": densities,
        "reference_policy": {
            "file": REFERENCE_POLICY,
            "input": "state",
            "output": "weights",
            "cases": [
                {"features": f["features"], "weights": w.tolist()} for f, w in zip(features, weights, strict=True)
            ],
        },
        "serve_path": serve_path,
    }


def write_contract(schemas_dir: Path = SCHEMAS, conformance_dir: Path = CONFORMANCE) -> list[Path]:
    """Write every schema and the conformance files; returns the paths written."""
    schemas_dir.mkdir(parents=True, exist_ok=True)
    conformance_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas().items():
        p = schemas_dir / name
        p.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(p)
    onnx_path = _reference_onnx(conformance_dir / REFERENCE_POLICY)
    p = conformance_dir / "serving-v1.json"
    p.write_text(json.dumps(conformance(onnx_path), indent=1) + "\n")
    return [*written, onnx_path, p]
