"""The portable policy: `policy.onnx`, the served mean weights as an ONNX graph any language can run.

    state [n, 23] float32 (docs/serving-contract.md, in order) ──► weights [n, 7] float32, on the simplex

The graph is the version's TorchScript `policy.pt` (observation scaling already inside it: d3rlpy folds its
scaler into the exported policy, a shrunk step mixes two such networks) followed by what serving does to a
policy's raw output: clip at 0 and divide by the sum (uniform when every output is 0). A search engine samples
the served weights around this mean with the exploration family of the contract and logs their log-density.

d3rlpy's own `save_policy(".onnx")` traces its modules with an exporter that fails on current torch, and tracing
through an already traced module fails as well, so the TorchScript module is wrapped in a scripted module and
given to torch's TorchScript-based exporter, which accepts a ScriptModule as it is.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from deploy.serving import load_torchscript, torchscript_quiet

OPSET = 17
INPUT, OUTPUT = "state", "weights"


class SimplexMean(torch.nn.Module):
    """A policy's raw 7-dim output as mean weights: clipped at 0, normalised to sum 1, uniform if all are 0."""

    def __init__(self, policy: torch.nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        a = torch.clamp(self.policy(state), min=0.0)
        s = a.sum(dim=-1, keepdim=True)
        positive = s > 0
        return torch.where(positive, a / torch.where(positive, s, torch.ones_like(s)), torch.full_like(a, 1.0 / 7))


def export_onnx(policy_pt: str | Path, out: str | Path, n_features: int = 23) -> Path:
    """Write `out` (policy.onnx) from a registry's TorchScript policy; checks it with onnxruntime before returning."""
    policy = load_torchscript(policy_pt).eval()
    with torchscript_quiet(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        module = torch.jit.script(SimplexMean(policy).eval())
        torch.onnx.export(
            module,
            (torch.zeros(1, n_features),),
            str(out),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "n"}, OUTPUT: {0: "n"}},
            opset_version=OPSET,
            dynamo=False,
        )
    check_onnx(out, policy, n_features)
    return Path(out)


class OnnxMean:
    """policy.onnx as a mean-weights function (states [n, 23] -> weights [n, 7]), run by onnxruntime."""

    def __init__(self, path: str | Path) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, states: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.atleast_2d(states), dtype=np.float32)
        return np.asarray(self.session.run([OUTPUT], {INPUT: x})[0], dtype=np.float64)


def check_onnx(path: str | Path, policy: torch.nn.Module, n_features: int = 23, atol: float = 1e-5) -> None:
    """Raise if the ONNX graph's weights differ from the TorchScript policy's on random and extreme states."""
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [rng.normal(0, 1, (256, n_features)), rng.normal(0, 100, (16, n_features)), np.zeros((1, n_features))]
    ).astype(np.float32)
    with torch.no_grad():
        ref = SimplexMean(policy)(torch.as_tensor(x)).numpy()
    got = OnnxMean(path)(x)
    err = float(np.max(np.abs(got - ref)))
    if not err <= atol:
        raise RuntimeError(f"{path}: ONNX weights differ from the TorchScript policy by {err:.2e} (> {atol:g})")
