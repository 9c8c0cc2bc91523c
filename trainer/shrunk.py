"""The served policy of a shrunk step, exported as TorchScript: (1 - t) base(s) + t candidate(s) on the simplex.

When the gate promotes a step of the way from the champion (or the estimated logger) towards a candidate, what
serves is that mix, not the candidate's CQL policy: `export_shrunk_policy` scripts both networks into one module
(`policy.pt`); the full candidate stays as `candidate_policy.pt`. `ShrunkPolicy` is the torch twin of
`trainer.gate.shrink_towards`, and `LinearSoftmaxPolicy` the torch form of the estimated logging policy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from deploy.serving import load_torchscript, torchscript_quiet


class LinearSoftmaxPolicy(torch.nn.Module):
    """Mean weights softmax(((s - mu) / sd) @ W + c): the form of the estimated logging policy
    (common.ope.DirichletBehaviourModel), exported so a shrunk step towards the logger can be served."""

    def __init__(self, mu: np.ndarray, sd: np.ndarray, coef: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float32))
        self.register_buffer("sd", torch.as_tensor(sd, dtype=torch.float32))
        self.register_buffer("w", torch.as_tensor(coef[:-1], dtype=torch.float32))
        self.register_buffer("c", torch.as_tensor(coef[-1], dtype=torch.float32))

        self.mu: torch.Tensor
        self.sd: torch.Tensor
        self.w: torch.Tensor
        self.c: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(((x - self.mu) / self.sd) @ self.w + self.c, dim=-1)


class ShrunkPolicy(torch.nn.Module):
    """Mean weights `step` of the way from a base policy (the champion, or the logger) to a candidate:
    (1 - t) b(s) + t c(s), both on the simplex. The torch twin of trainer.gate.shrink_towards."""

    def __init__(self, base: torch.nn.Module, candidate: torch.nn.Module, step: float) -> None:
        super().__init__()
        self.base = base
        self.candidate = candidate
        self.step = float(step)

    @staticmethod
    def _simplex(a: torch.Tensor) -> torch.Tensor:
        a = torch.clamp(a, min=0.0)
        s = a.sum(dim=-1, keepdim=True)
        return torch.where(s > 0, a / torch.where(s > 0, s, torch.ones_like(s)), torch.full_like(a, 1.0 / 7.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (1.0 - self.step) * self._simplex(self.base(x)) + self.step * self._simplex(self.candidate(x))


def export_shrunk_policy(base: torch.nn.Module, candidate_path: Path, step: float, out: Path) -> None:
    """Write the served policy of a shrunk step as TorchScript (what `policy.pt` holds for such a version)."""
    candidate = load_torchscript(candidate_path)
    with torchscript_quiet():
        torch.jit.save(torch.jit.script(ShrunkPolicy(base, candidate, step)), str(out))
