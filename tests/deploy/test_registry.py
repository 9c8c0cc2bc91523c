"""The registry: promote, rollback, tampered checksum, unknown version, 10 concurrent promotes, retention."""

from __future__ import annotations

import itertools
import multiprocessing as mp
from pathlib import Path

import pytest

from deploy.registry import REQUIRED_FILES, ChecksumMismatch, ModelRegistry, RegistryError, UnknownVersion


def make(reg: ModelRegistry, tmp: Path, decision: str = "PROMOTE", parent: str | None = None) -> str:
    """A version with stand-ins for the four files every version carries."""
    files = {}
    for name in REQUIRED_FILES:
        files[name] = tmp / name
        files[name].write_bytes(name.encode() + b" " + decision.encode() + str(len(reg.versions())).encode())
    report = {"decision": decision, "reasons": [] if decision == "PROMOTE" else ["not_significant"]}
    return reg.register(files, {"parent": parent, "report": report}, who="test")


def test_promote_and_rollback_tell_the_story(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "m")
    a, b, c = (make(reg, tmp_path) for _ in range(3))
    held = make(reg, tmp_path, decision="HOLD")
    assert reg.champion() is None
    assert reg.promote(a, reason="first", automatic=True) is None
    assert reg.promote(b, reason="better") == a
    with pytest.raises(RegistryError, match=r"gate decided HOLD.*--force"):
        reg.promote(held, reason="try")
    assert reg.promote(held, reason="operator knows", force=True) == b
    assert reg.rollback(reason="bad metrics") == (held, b)  # default: the previous champion
    assert reg.rollback(reason="further", to=a) == (b, a)
    with pytest.raises(RegistryError, match="already the champion"):
        reg.promote(a, reason="again")
    story = [(h["action"], h["version"]) for h in reg.history() if h["action"] != "register"]
    assert story == [("promote", a), ("promote", b), ("promote", held), ("rollback", b), ("rollback", a)]
    forced = next(h for h in reg.history() if h["action"] == "promote" and h["version"] == held)
    assert forced["forced"] and forced["manual"] and forced["reason"] == "operator knows"
    assert next(h for h in reg.history() if h["action"] == "promote")["manual"] is False
    assert reg.champion() == a and c in reg.versions()


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "m")
    v = make(reg, tmp_path)
    (reg.root / v / "model.d3").write_bytes(b"evil")
    with pytest.raises(ChecksumMismatch, match=f"model {v}: file model.d3 does not match its sha256"):
        reg.path(v, "model.d3")
    with pytest.raises(ChecksumMismatch):
        reg.promote(v, reason="x")
    assert reg.champion() is None


def test_unknown_version(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "m")
    make(reg, tmp_path)
    with pytest.raises(UnknownVersion, match=r"unknown model version 'v0042' \(known: v0001\)"):
        reg.promote("v0042", reason="x")
    with pytest.raises(RegistryError, match="no previous champion"):
        reg.rollback(reason="x")


@pytest.mark.parametrize("name", ["../other/v0001", "/tmp/v0001", "v0001/..", "v0001/../v0001", "..", "v1"])
def test_a_path_is_never_a_version(tmp_path: Path, name: str) -> None:
    reg = ModelRegistry(tmp_path / "m")
    make(reg, tmp_path)
    other = ModelRegistry(tmp_path / "other")
    make(other, tmp_path)
    with pytest.raises(UnknownVersion, match="not a model version name"):
        reg.promote(name, reason="x", force=True)
    assert reg.champion() is None


def test_a_history_line_that_is_not_a_record_is_skipped(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "m")
    v1 = make(reg, tmp_path)
    reg.promote(v1, reason="first")
    with open(reg.history_path, "a") as f:
        f.write('"a string"\n[1, 2]\n42\n')
    v2 = make(reg, tmp_path, parent=v1)
    reg.promote(v2, reason="second")
    assert [h["version"] for h in reg.history() if h["action"] == "promote"] == [v1, v2]
    assert reg.rollback(reason="back")[1] == v1


def test_metrics_scrape_the_registry_even_when_the_newest_report_is_unreadable(tmp_path: Path) -> None:
    """The trainer's /metrics reads the newest version's report at scrape time; a report it cannot read (here a
    damaged one) costs the gate's metrics, never the scrape."""
    import json

    from prometheus_client import CollectorRegistry, generate_latest

    from trainer.metrics import RegistryCollector

    reg = ModelRegistry(tmp_path / "m")
    v = make(reg, tmp_path)
    manifest = json.loads((reg.root / v / "manifest.json").read_text())
    manifest["report"]["steps"] = [{"step": 1.0}]  # a step without its evidence
    (reg.root / v / "manifest.json").write_text(json.dumps(manifest))
    scrape = CollectorRegistry()
    scrape.register(RegistryCollector(reg.root))
    text = generate_latest(scrape).decode()
    assert 'rankrl_registry_events_total{action="register"} 1.0' in text and "rankrl_registry_versions 1.0" in text
    assert "rankrl_gate_" not in text


def test_metrics_show_the_champion_an_operator_chose_at_the_next_scrape(tmp_path: Path) -> None:
    """The champion info used to be set by the trainer only at start and after its cycles: a `rankrl promote` or
    `rollback` in between left the dashboard naming the old champion until the next cycle."""
    from prometheus_client import CollectorRegistry

    from trainer.metrics import RegistryCollector

    reg = ModelRegistry(tmp_path / "m")
    a, b = make(reg, tmp_path), make(reg, tmp_path)
    scrape = CollectorRegistry()
    scrape.register(RegistryCollector(reg.root))
    champion = lambda: next(  # noqa: E731
        s.labels["version"] for f in scrape.collect() for s in f.samples if s.name == "rankrl_trainer_champion_info"
    )
    assert champion() == "none"
    reg.promote(a, reason="first")
    reg.promote(b, reason="second")
    assert champion() == b
    reg.rollback(reason="b misbehaves")
    assert champion() == a
    reg.champion_path.write_bytes(b"\x00 garbage")
    assert champion() == "unreadable"  # and the scrape still answers


@pytest.mark.parametrize("garbage", [b"\x00\xff garbage", b"[]", b'{"version": 3}', b'{"version": "../x"}', b"{}"])
def test_a_damaged_champion_pointer_is_a_clear_error_and_promote_force_repairs_it(
    tmp_path: Path, garbage: bytes
) -> None:
    from tests.test_cli_smoke import run_cli

    reg = ModelRegistry(tmp_path / "m")
    v1 = make(reg, tmp_path)
    reg.promote(v1, reason="first")
    reg.champion_path.write_bytes(garbage)
    with pytest.raises(RegistryError, match=r"champion pointer .* repair it with `rankrl promote VERSION --force"):
        reg.champion()
    sets = ["--set", f"paths.registry_dir={reg.root}"]
    for cmd in (["status"], ["models"], ["rollback", "--reason", "x"]):
        r = run_cli(*cmd, *sets)
        assert r.returncode != 0 and "Traceback" not in r.stderr and "champion pointer" in r.stderr, (cmd, r.stderr)
    r = run_cli("promote", v1, "--force", "--reason", "repair", *sets)
    assert r.returncode == 0, r.stderr
    assert reg.champion() == v1


def _promote(args: tuple[str, str]) -> str:
    root, version = args
    ModelRegistry(root).promote(version, reason=f"race {version}")
    return version


def test_ten_concurrent_promotes_never_interleave(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "m")
    versions = [make(reg, tmp_path) for _ in range(10)]
    with mp.get_context("fork").Pool(10) as pool:
        done = pool.map(_promote, [(str(reg.root), v) for v in versions])
    assert sorted(done) == versions
    promotes = [h for h in reg.history() if h["action"] == "promote"]
    assert len(promotes) == 10
    # each promote saw the champion the previous one left: a consistent chain
    assert promotes[0]["previous"] is None
    for prev, cur in itertools.pairwise(promotes):
        assert cur["previous"] == prev["version"]
    assert reg.champion() == promotes[-1]["version"]


def test_retention_keeps_champion_last_n_and_pinned(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "m")
    vs = [make(reg, tmp_path) for _ in range(6)]
    reg.promote(vs[0], reason="old champion")
    reg.pin(vs[1])
    assert reg.retain(keep_last=2) == [vs[2], vs[3]]
    assert reg.versions() == [vs[0], vs[1], vs[4], vs[5]]


def test_retention_keep_last_zero_keeps_only_the_champion_and_pinned(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "m")
    vs = [make(reg, tmp_path) for _ in range(4)]
    reg.promote(vs[1], reason="champion")
    reg.pin(vs[2])
    assert reg.retain(keep_last=0) == [vs[0], vs[3]]  # versions[-0:] kept every version
    assert reg.versions() == [vs[1], vs[2]]
    with pytest.raises(ValueError, match="keep_last"):
        reg.retain(keep_last=-1)


def test_retention_keeps_every_version_a_rollback_can_reach(tmp_path: Path) -> None:
    """Reported: after a promotion and keep_last held cycles, `rollback` answered "unknown model version"."""
    reg = ModelRegistry(tmp_path / "m")
    a = make(reg, tmp_path)
    reg.promote(a, reason="first")
    b = make(reg, tmp_path)
    reg.promote(b, reason="second")
    held = [make(reg, tmp_path, decision="HOLD") for _ in range(5)]
    pinned = held[0]
    reg.pin(pinned, reason="keep for the post-mortem")
    removed = reg.retain(keep_last=2)
    assert set(removed) == set(held[1:3])
    assert reg.rollback(reason="b misbehaves") == (b, a)
    assert pinned in reg.versions()
    reg.pin(pinned, pinned=False, reason="done")
    assert pinned in reg.retain(keep_last=2)
    assert [h["action"] for h in reg.history() if h["action"] in ("pin", "unpin")] == ["pin", "unpin"]


def test_tampering_with_a_manifest_is_refused(tmp_path: Path) -> None:
    """Reported: a pickle rewritten with its sha256 recomputed in the manifest ran code at the next warm start; an
    edited report.decision promoted without --force; dropping a file's entry turned its check off."""
    import json
    import pickle

    reg = ModelRegistry(tmp_path / "m")
    v = make(reg, tmp_path, decision="HOLD")
    manifest_path = reg.root / v / "manifest.json"
    original = manifest_path.read_bytes()

    marker = tmp_path / "code-ran"

    class Evil:
        def __reduce__(self) -> tuple:
            return (open, (str(marker), "w"))

    (reg.root / v / "model.d3").write_bytes(pickle.dumps(Evil()))
    m = json.loads(original)
    from deploy.registry import sha256_of

    m["files"]["model.d3"] = sha256_of(reg.root / v / "model.d3")
    manifest_path.write_text(json.dumps(m))
    with pytest.raises(ChecksumMismatch, match=r"manifest\.json was changed after registration"):
        reg.path(v, "model.d3")  # what the trainer asks before it unpickles
    assert not marker.exists()

    m = json.loads(original)
    m["report"]["decision"], m["report"]["reasons"] = "PROMOTE", []
    manifest_path.write_text(json.dumps(m))
    with pytest.raises(ChecksumMismatch):
        reg.promote(v, reason="looks promoted")
    assert reg.champion() is None

    w = make(reg, tmp_path)
    m = json.loads((reg.root / w / "manifest.json").read_bytes())
    del m["files"]["policy.pt"]
    (reg.root / w / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ChecksumMismatch, match=r"manifest\.json was changed after registration"):
        reg.verify(w)
    # a version registered before manifests were checksummed: every required file must still be listed
    legacy = [{k: v for k, v in h.items() if k != "manifest_sha256"} for h in reg.history()]
    reg.history_path.write_text("".join(json.dumps(h) + "\n" for h in legacy))
    with pytest.raises(ChecksumMismatch, match=r"lists no checksum for policy\.pt"):
        reg.verify(w)
    x = make(reg, tmp_path)
    (reg.root / x / "extra.py").write_text("import os")
    with pytest.raises(ChecksumMismatch, match=r"files not in its manifest: extra\.py"):
        reg.verify(x)


def test_a_new_registry_is_private_to_its_group_and_readers_create_nothing(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "nowhere")
    assert reg.versions() == [] and reg.champion() is None and reg.history() == []
    assert not (tmp_path / "nowhere").exists()
    make(reg, tmp_path)
    assert (reg.root.stat().st_mode & 0o777) == 0o750
