"""The served policy of a promoted shrunk step: TorchScript that computes what the gate evaluated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.ope import DirichletBehaviourModel
from deploy.serving import load_policy_mean
from rankrl.sim import RankingWorld, logged_holdout
from trainer.gate import shrink_towards
from trainer.shrunk import LinearSoftmaxPolicy, ShrunkPolicy, export_shrunk_policy


class _Candidate(torch.nn.Module):
    """Stands in for d3rlpy's exported actor: raw actions in [0, 1]^7 (not on the simplex)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(23, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.lin(x / 100.0))


def test_logger_export_matches_the_behaviour_model() -> None:
    world = RankingWorld()
    rng = np.random.default_rng(0)
    ctx = world.contexts(4000, rng)
    d = logged_holdout(world, ctx, rng)
    model = DirichletBehaviourModel().fit(d["states"], d["actions"])
    assert model.mu is not None and model.sd is not None and model.coef is not None
    exported = LinearSoftmaxPolicy(model.mu, model.sd, model.coef)
    with torch.no_grad():
        got = exported(torch.as_tensor(ctx.states[:500])).numpy()
    np.testing.assert_allclose(got, model.mean(ctx.states[:500]), atol=2e-5)


def test_shrunk_step_serves_what_the_gate_evaluated(tmp_path: Path) -> None:
    torch.manual_seed(0)
    world = RankingWorld()
    states = world.contexts(1000, np.random.default_rng(1)).states
    rng = np.random.default_rng(2)
    coef = rng.normal(0, 0.2, size=(24, 7))
    base = LinearSoftmaxPolicy(world.state_mean, world.state_std, coef)
    cand_path = tmp_path / "candidate_policy.pt"
    torch.jit.save(torch.jit.script(_Candidate()), str(cand_path))
    cand_mean = load_policy_mean(cand_path)
    with torch.no_grad():
        base_mean = base(torch.as_tensor(states)).numpy().astype(np.float64)
    for step in (0.25, 0.5):
        out = tmp_path / f"policy-{step}.pt"
        export_shrunk_policy(base, cand_path, step, out)
        served = load_policy_mean(out)(states)
        expected = shrink_towards(base_mean, cand_mean(states), step)
        np.testing.assert_allclose(served, expected, atol=1e-5)
        assert np.allclose(served.sum(axis=1), 1.0)
    # a step of a step (the champion was itself a mix) still loads and serves weights on the simplex
    nested = tmp_path / "nested.pt"
    export_shrunk_policy(torch.jit.load(str(tmp_path / "policy-0.5.pt")), cand_path, 0.5, nested)
    w = load_policy_mean(nested)(states[:10])
    assert w.shape == (10, 7) and np.allclose(w.sum(axis=1), 1.0)
    assert isinstance(ShrunkPolicy(base, _Candidate(), 0.5)(torch.as_tensor(states[:2])), torch.Tensor)
