"""The model registry: versions, the champion pointer, history, checksums, retention.

    models/
      v0001/  model.d3 (d3rlpy checkpoint: weights, optimizer state, scalers, config)
              policy.pt (TorchScript policy for serving), policy.onnx (the same served mean, portable),
              exploration.json, manifest.json
      v0002/  …
      champion            {"version": "v0002", "since": …}   replaced atomically
      history.jsonl       one line per register / promote / rollback / reject: who, when, why, evidence
      registry.lock       flock: concurrent commands never interleave

A version folder is written under a temporary name and renamed into place, so it is either complete or absent.
`manifest.json` records the sha256 of every file (the four REQUIRED_FILES at least), and the history line that
registers a version records the sha256 of its manifest: a file or a manifest that no longer matches is never
loaded, and dropping a file from the manifest does not turn its check off.

Trust boundary: `model.d3` is a pickle (d3rlpy's checkpoint format) and loading it runs code. The checksums catch
corruption and edits of a version's files after registration; they cannot stop someone who may write the
registry folder, since that person can also append history. So only the trainer's user may write the registry:
rankrl creates it mode 0750 (the serving user reads through the group) and refuses none of the reads.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.durable import atomic_write_bytes, file_lock, fsync_dir
from common.gate_report import GateReport

log = logging.getLogger(__name__)
VERSION_NAME = re.compile(r"v[0-9]{4,}")  # what register() names versions: no separators, no "..", no paths
REQUIRED_FILES = ("model.d3", "policy.pt", "policy.onnx", "exploration.json")
PIN_MARKER = "PINNED"  # an empty file in a version folder: retention keeps the version


class RegistryError(RuntimeError):
    """A registry operation that cannot be done; the message says why."""


class UnknownVersion(RegistryError):
    pass


class DamagedPointer(RegistryError):
    """The champion pointer cannot be read; `promote --force` rewrites it."""


class ChecksumMismatch(RegistryError):
    pass


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def whoami() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


class ModelRegistry:
    """A registry folder. The first `register` creates it (mode 0750); a reader of a folder that does not exist
    sees no versions and no champion, and creates nothing."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.champion_path = self.root / "champion"
        self.history_path = self.root / "history.jsonl"
        self.lock_path = self.root / "registry.lock"

    # ------------------------------------------------------------------------------------------ basics
    def exists(self) -> bool:
        return self.root.is_dir()

    def locked(self) -> contextlib.AbstractContextManager[None]:
        if not self.exists():
            raise RegistryError(f"no model registry at {self.root} (the trainer creates it with its first cycle)")
        return file_lock(self.lock_path)

    def versions(self) -> list[str]:
        if not self.exists():
            return []
        return sorted(
            p.name
            for p in self.root.glob("v[0-9]*")
            if VERSION_NAME.fullmatch(p.name) and (p / "manifest.json").exists()
        )

    def latest(self) -> str | None:
        v = self.versions()
        return v[-1] if v else None

    def manifest(self, version: str) -> dict[str, Any]:
        if not VERSION_NAME.fullmatch(version):
            # names come from the command line and the champion pointer: never a path out of the registry
            raise UnknownVersion(f"{version!r} is not a model version name (v0001, v0002, …)")
        path = self.root / version / "manifest.json"
        if not path.exists():
            known = ", ".join(self.versions()) or "none"
            raise UnknownVersion(f"unknown model version {version!r} (known: {known})")
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def registered_manifest_sha256(self, version: str) -> str | None:
        """The manifest checksum the history recorded when `version` was registered (None: registered before
        checksums were recorded)."""
        for h in self.history():
            if h.get("action") == "register" and h.get("version") == version and h.get("manifest_sha256"):
                return str(h["manifest_sha256"])
        return None

    def verify(self, version: str) -> dict[str, Any]:
        """The manifest, after checking it against its registration and every file's sha256; raises
        ChecksumMismatch naming what does not match."""
        m = self.manifest(version)
        recorded = self.registered_manifest_sha256(version)
        if recorded is not None and sha256_of(self.root / version / "manifest.json") != recorded:
            raise ChecksumMismatch(
                f"model {version}: manifest.json was changed after registration (its sha256 differs from the one "
                "history.jsonl recorded): refusing to load"
            )
        missing = [f for f in REQUIRED_FILES if f not in m.get("files", {})]
        if missing:
            raise ChecksumMismatch(f"model {version}: the manifest lists no checksum for {', '.join(missing)}")
        unlisted = sorted(
            p.name for p in (self.root / version).iterdir()
            if p.name not in m["files"] and p.name not in ("manifest.json", PIN_MARKER)
        )  # fmt: skip
        if unlisted:
            raise ChecksumMismatch(f"model {version}: files not in its manifest: {', '.join(unlisted)}")
        for name, digest in m["files"].items():
            p = self.root / version / name
            if not p.exists():
                raise ChecksumMismatch(f"model {version}: file {name} is missing")
            if sha256_of(p) != digest:
                raise ChecksumMismatch(f"model {version}: file {name} does not match its sha256 (refusing to load)")
        return m

    def path(self, version: str, name: str) -> Path:
        """A verified file of a version."""
        self.verify(version)
        return self.root / version / name

    def champion(self) -> str | None:
        try:
            v = json.loads(self.champion_path.read_text())["version"]
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError) as e:  # ValueError covers bad JSON and bad UTF-8
            raise DamagedPointer(
                f"the champion pointer {self.champion_path} is damaged ({type(e).__name__}: {e}); repair it with "
                "`rankrl promote VERSION --force --reason ...` (see `rankrl models` and history.jsonl)"
            ) from None
        if not isinstance(v, str) or not VERSION_NAME.fullmatch(v):
            raise DamagedPointer(
                f"the champion pointer {self.champion_path} names {v!r}, not a model version; repair it with "
                "`rankrl promote VERSION --force --reason ...`"
            )
        return v

    def history(self) -> list[dict[str, Any]]:
        if not self.history_path.exists():
            return []
        out = []
        for line in self.history_path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a torn last line after a crash
                entry = json.loads(line)
                if isinstance(entry, dict):  # anything else is not a record this registry wrote
                    out.append(entry)
        return out

    def _append_history(self, entry: Mapping[str, Any]) -> None:
        with open(self.history_path, "ab") as f:
            f.write(json.dumps({"time": time.time(), **entry}, default=str).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def _set_champion(self, version: str) -> None:
        atomic_write_bytes(self.champion_path, json.dumps({"version": version, "since": time.time()}).encode())

    # ------------------------------------------------------------------------------------------ changes
    def register(self, files: Mapping[str, Path], manifest: Mapping[str, Any], who: str | None = None) -> str:
        """Copy `files` into a new version folder with `manifest` (+ checksums); returns the version."""
        if not self.exists():
            self.root.mkdir(parents=True, mode=0o750)
        with self.locked():
            existing = self.versions()
            n = int(existing[-1][1:]) + 1 if existing else 1
            version = f"v{n:04d}"
            tmp = self.root / f".tmp-{version}-{uuid.uuid4().hex[:6]}"
            tmp.mkdir()
            try:
                digests = {}
                for name, src in files.items():
                    dst = tmp / name
                    shutil.copyfile(src, dst)
                    with open(dst, "rb") as fh:
                        os.fsync(fh.fileno())
                    digests[name] = sha256_of(dst)
                full = {**manifest, "version": version, "created": time.time(), "files": digests}
                atomic_write_bytes(tmp / "manifest.json", json.dumps(full, indent=1, default=str).encode())
                manifest_sha256 = sha256_of(tmp / "manifest.json")
                os.rename(tmp, self.root / version)
                fsync_dir(self.root)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            report = report_of(manifest)
            self._append_history(
                {
                    "action": "register",
                    "version": version,
                    "who": who or whoami(),
                    "parent": manifest.get("parent"),
                    "gate": None if report is None else report.decision,
                    "reason": "" if report is None else "; ".join(report.reasons),
                    "manifest_sha256": manifest_sha256,
                }
            )
        return version

    def promote(
        self,
        version: str,
        reason: str,
        who: str | None = None,
        force: bool = False,
        automatic: bool = False,
    ) -> str | None:
        """Make `version` the champion; returns the previous champion. A version the gate held needs force."""
        with self.locked():
            m = self.verify(version)
            report = report_of(m)
            if (report is None or not report.promoted) and not force:
                decided = "nothing" if report is None else report.decision
                why = "no report" if report is None else ", ".join(report.reasons)
                raise RegistryError(f"model {version}: the gate decided {decided} ({why}); use --force to override")
            try:
                previous = self.champion()
            except DamagedPointer as e:
                if not force:
                    raise
                log.warning("%s: promote --force rewrites it", e)
                previous = None
            if previous == version:
                raise RegistryError(f"model {version} is already the champion")
            self._set_champion(version)
            self._append_history(
                {
                    "action": "promote",
                    "version": version,
                    "previous": previous,
                    "who": who or whoami(),
                    "reason": reason,
                    "manual": not automatic,
                    "forced": force and (report is None or not report.promoted),
                    "evidence": _evidence(m),
                }
            )
            return previous

    def reject(self, version: str, reason: str, who: str | None = None) -> None:
        with self.locked():
            m = self.manifest(version)
            self._append_history(
                {
                    "action": "reject",
                    "version": version,
                    "who": who or whoami(),
                    "reason": reason,
                    "evidence": _evidence(m),
                }
            )

    def rollback(self, reason: str, to: str | None = None, who: str | None = None) -> tuple[str | None, str]:
        """Make an earlier champion the champion again (default: the one before the current); returns (from, to)."""
        with self.locked():
            current = self.champion()
            if to is None:
                champions = [h["version"] for h in self.history() if h["action"] in ("promote", "rollback")]
                earlier = [v for v in champions if v != current]
                if not earlier:
                    raise RegistryError("no previous champion to roll back to")
                to = earlier[-1]
            self.verify(to)
            if to == current:
                raise RegistryError(f"model {to} is already the champion")
            self._set_champion(to)
            self._append_history(
                {"action": "rollback", "version": to, "previous": current, "who": who or whoami(), "reason": reason}
            )
            return current, to

    def pin(self, version: str, pinned: bool = True, reason: str = "", who: str | None = None) -> None:
        """Keep a version through retention (or stop keeping it), recorded in the history."""
        with self.locked():
            self.manifest(version)
            marker = self.root / version / PIN_MARKER
            if pinned:
                marker.touch()
            else:
                marker.unlink(missing_ok=True)
            self._append_history(
                {"action": "pin" if pinned else "unpin", "version": version, "who": who or whoami(), "reason": reason}
            )

    def pinned(self, version: str) -> bool:
        return (self.root / version / PIN_MARKER).exists()

    def rollback_targets(self) -> set[str]:
        """Every version that has been champion: what `rollback` (and `rollback --to`) can reach."""
        out: set[str] = set()
        for h in self.history():
            if h.get("action") in ("promote", "rollback"):
                out |= {v for v in (h.get("version"), h.get("previous")) if isinstance(v, str)}
        return out

    def retain(self, keep_last: int) -> list[str]:
        """Delete versions that are not the champion, not a rollback target, not pinned and not among the last
        `keep_last` (>= 0)."""
        if not isinstance(keep_last, int) or keep_last < 0:
            raise ValueError(f"keep_last must be a whole number >= 0, got {keep_last!r}")
        with self.locked():
            versions = self.versions()
            keep = set(versions[len(versions) - keep_last :]) | {self.champion()}  # [-0:] would keep all
            keep |= self.rollback_targets()
            doomed = [v for v in versions if v not in keep and not self.pinned(v)]
            for v in doomed:
                shutil.rmtree(self.root / v)
            for p in self.root.glob(".tmp-*"):  # a register that crashed half way
                shutil.rmtree(p, ignore_errors=True)
            return doomed


def report_of(manifest: Mapping[str, Any]) -> GateReport | None:
    """A version's gate report, typed; None for a version registered without one."""
    r = manifest.get("report")
    return GateReport.from_dict(r) if r else None


def _evidence(m: Mapping[str, Any]) -> dict[str, Any]:
    r = report_of(m)
    if r is None:
        return {"decision": None}
    return {
        "decision": r.decision,
        "reasons": list(r.reasons),
        "delta": None if r.difference is None else r.difference.delta,
        "lcb": None if r.difference is None else r.difference.lcb,
        "candidate_conversion": None if r.candidate is None else r.candidate.snips_conversion.value,
        "holdout_rows": r.holdout_rows,
    }
