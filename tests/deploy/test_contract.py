"""The serving contract's generated files match the code, and say what the code does: the JSON Schemas accept
and refuse what the validators accept and refuse; the conformance vectors are regenerated and compared; the
log-density formula is checked against scipy's own Dirichlet."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import numpy as np
import orjson
import pytest
from scipy import stats

from common.decisions import Decision, Outcome, RankRequest, decode, parse_decision, parse_outcome, schemas
from common.schema import InvalidEvent, parse_event
from deploy.contract import CONFORMANCE, REFERENCE_POLICY, SCHEMAS, _reference_onnx, conformance
from deploy.portable import OnnxMean
from rankrl.sim import RankingWorld, simulate
from tests.helpers import original_example_event


def test_committed_schemas_are_what_the_types_generate() -> None:
    generated = schemas()
    committed = {p.name: json.loads(p.read_text()) for p in SCHEMAS.glob("*.schema.json")}
    assert committed == generated, "run python scripts/contract.py and commit docs/schemas/"


def test_committed_conformance_vectors_are_what_the_code_computes(tmp_path: Path) -> None:
    committed = json.loads((CONFORMANCE / "serving-v1.json").read_text())
    again = conformance(CONFORMANCE / REFERENCE_POLICY)
    for a, b in zip(committed["features"], again["features"], strict=True):
        assert a["state"] == b["state"] and np.allclose(a["features"], b["features"], rtol=0, atol=1e-6)
    for a, b in zip(committed["log_density"], again["log_density"], strict=True):
        assert a["weights"] == b["weights"] and a["log_density"] == pytest.approx(b["log_density"], abs=1e-9)
    for a, b in zip(committed["reference_policy"]["cases"], again["reference_policy"]["cases"], strict=True):
        assert np.allclose(a["weights"], b["weights"], atol=1e-6)
    # the committed ONNX is the reference policy: exporting it again serves the same weights
    fresh = OnnxMean(_reference_onnx(tmp_path / "again.onnx"))
    states = np.array([c["features"] for c in committed["reference_policy"]["cases"]], dtype=np.float32)
    assert np.allclose(fresh(states), [c["weights"] for c in committed["reference_policy"]["cases"]], atol=1e-6)


def test_the_log_density_is_the_dirichlet_density_of_the_contract() -> None:
    """An independent implementation (scipy) of the contract's formula gives the committed numbers."""
    for case in json.loads((CONFORMANCE / "serving-v1.json").read_text())["log_density"]:
        m, k, floor = np.array(case["mean"]), case["kappa"], case["min_alpha"]
        alpha = floor + (k - 7 * floor) * m / m.sum()
        assert np.allclose(alpha, case["alpha"])
        a = np.array(case["weights"]) / np.sum(case["weights"])
        assert stats.dirichlet.logpdf(a, alpha) == pytest.approx(case["log_density"], abs=1e-6)


def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / f"{name}.schema.json").read_text()))


def _decision() -> dict:
    ev = original_example_event()
    return {"log_id": "d1", "created_at": "2026-11-29T10:00:00Z", "state": ev["state"], "action": ev["action"],
            "log_propensity": 7.4, "policy_version": "v0001", "ranking_metadata": ev["ranking_metadata"]}  # fmt: skip


def _outcome() -> dict:
    return {"log_id": "d1", "ranking": ["a", "b"], "outcomes": {"user_action": "purchase", "purchased_ranks": [1],
            "purchased_total_value": 10.0}}  # fmt: skip


def _mutations(doc: dict) -> list[dict]:
    """Documents each wrong in one way a JSON Schema can express: a field missing, a wrong type, out of range."""
    out = []
    for path, value in (
        (("state", "user_features", "luxury_affinity"), 7.0),
        (("state", "user_features", "hesitation_count"), "two"),
        (("state", "candidate_features", "count"), -1),
        (("state", "session_features", "query_length"), None),
    ):
        d = copy.deepcopy(doc)
        node = d
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
        out.append(d)
    d = copy.deepcopy(doc)
    del d["state"]["user_features"]["brand_affinity"]
    out.append(d)
    return out


@pytest.mark.parametrize(
    ("name", "doc", "parse"),
    [
        ("event", original_example_event(), lambda b: parse_event(b, now=2e9)),
        ("decision", _decision(), lambda b: parse_decision(b, now=2e9)),
        ("rank-request", {"state": original_example_event()["state"]}, lambda b: decode(b, RankRequest)),
    ],
)
def test_schemas_accept_and_refuse_what_the_code_does(name: str, doc: dict, parse: object) -> None:
    v = _validator(name)
    assert not list(v.iter_errors(doc))
    parse(orjson.dumps(doc))  # type: ignore[operator]
    for bad in _mutations(doc):
        assert list(v.iter_errors(bad)), f"the {name} schema accepts {bad}"
        with pytest.raises(InvalidEvent):
            parse(orjson.dumps(bad))  # type: ignore[operator]


def test_schemas_accept_simulated_events_and_served_messages() -> None:
    v = _validator("event")
    for _, _, _, evs in simulate(RankingWorld(), 200, seed=3):
        for e in evs:
            assert not list(v.iter_errors(e))
    o = _outcome()
    assert not list(_validator("outcome").iter_errors(o))
    assert isinstance(parse_outcome(orjson.dumps(o)), Outcome)
    bad = {**o, "outcomes": {"user_action": "bought"}}
    assert list(_validator("outcome").iter_errors(bad))
    with pytest.raises(InvalidEvent):
        parse_outcome(orjson.dumps(bad))
    assert isinstance(parse_decision(orjson.dumps(_decision()), now=2e9), Decision)


def test_the_serve_path_vectors_chain_features_mean_and_density() -> None:
    """Each serve-path case, recomputed from its state with only numpy, scipy and onnxruntime (what an engine in
    another language has): features, the reference ONNX mean within 1e-6, and the log-density within 1e-9 of the
    case's mean."""
    import onnxruntime as ort

    doc = json.loads((CONFORMANCE / "serving-v1.json").read_text())
    session = ort.InferenceSession(str(CONFORMANCE / REFERENCE_POLICY), providers=["CPUExecutionProvider"])
    key = lambda c: json.dumps([c["state"], c["ranking_metadata"]], sort_keys=True)  # noqa: E731
    features = {key(f): f["features"] for f in doc["features"]}
    assert doc["serve_path"]
    for case in doc["serve_path"]:
        x = np.array([features[key(case)]], dtype=np.float32)
        (mean,) = session.run(["weights"], {"state": x})[0]
        assert np.allclose(mean, case["mean"], rtol=0, atol=1e-6)
        m = np.array(case["mean"], dtype=np.float64)
        alpha = case["min_alpha"] + (case["kappa"] - 7 * case["min_alpha"]) * m / m.sum()
        a = np.array(case["weights"]) / np.sum(case["weights"])
        assert stats.dirichlet.logpdf(a, alpha) == pytest.approx(case["log_density"], abs=1e-9)


def test_schemas_and_the_server_agree_on_generated_requests() -> None:
    """Rank requests of every shape, and each mutated one way: the schema and serve's decoder accept and refuse the
    same ones (the cross-field rules, price_min <= price_max, are the server's on top of the schema)."""
    from tests.deploy.fuzz_requests import random_rank_requests

    v = _validator("rank-request")
    rng = np.random.default_rng(5)
    mutations = (("state", "user_features", "luxury_affinity", 1.5), ("state", "candidate_features", "count", -2),
                 ("state", "session_features", "query_has_brand", 10**20),
                 ("state", "session_features", "query_length", "x"), ("log_id", None, None, ""),
                 ("state", "user_features", "brand_affinity", [1]))  # fmt: skip
    for req in random_rank_requests(300, seed=11):
        docs = [req]
        for path in mutations:
            d = copy.deepcopy(req)
            node = d
            keys = [k for k in path[:-1] if k is not None]
            for k in keys[:-1]:
                node = node[k]
            node[keys[-1]] = path[-1]
            docs.append(d)
        for d in docs[: 1 + int(rng.integers(1, len(docs)))]:
            schema_ok = not list(v.iter_errors(d))
            try:
                decode(json.dumps(d).encode(), RankRequest)
                server_ok = True
            except InvalidEvent:
                server_ok = False
            assert schema_ok == server_ok, (schema_ok, server_ok, d)
