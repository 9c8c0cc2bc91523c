"""The simulator: a ranking world with known truth, its policies and its logged traffic.

Used by the demo, the benchmarks and the tests, never by the daemons:

    world.py     users, candidates, the ranking from seven weights, the position-based user model, true values
    policies.py  a personalised policy, exact nulls (duplicated signal), tilts towards what users want
    events.py    logged events in the exact schema (JSON), as the decision service's two logs, or as arrays
"""

from rankrl.sim.events import (
    buffer_columns,
    event_states,
    logged_holdout,
    served_outcomes,
    simulate,
    write_decision_logs,
    write_jsonl,
)
from rankrl.sim.policies import null_move_policy, personalised_policy, targeted_policy
from rankrl.sim.world import Contexts, Policy, RankingWorld, Value, WorldConfig

__all__ = [
    "Contexts",
    "Policy",
    "RankingWorld",
    "Value",
    "WorldConfig",
    "buffer_columns",
    "event_states",
    "logged_holdout",
    "null_move_policy",
    "personalised_policy",
    "served_outcomes",
    "simulate",
    "targeted_policy",
    "write_decision_logs",
    "write_jsonl",
]
