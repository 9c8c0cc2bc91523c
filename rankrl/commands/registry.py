"""The operator's registry commands: `models`, `status`, `promote`, `rollback`, `pin`, `unpin`."""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import TYPE_CHECKING

from rankrl.commands import add_config_flags, config_from

log = logging.getLogger("rankrl")

if TYPE_CHECKING:
    from deploy.registry import ModelRegistry


def add_parsers(sub: argparse._SubParsersAction) -> None:
    for name, func, text in (
        ("models", cmd_models, "list the registered model versions"),
        ("status", cmd_status, "champion, last cycle, buffer"),
    ):
        s = sub.add_parser(name, help=text)
        add_config_flags(s)
        s.add_argument("--models", help="model registry directory (paths.registry_dir)")
        s.add_argument("--json", action="store_true", help="machine-readable output (one JSON document)")
        if name == "status":
            s.add_argument("--buffer", help="replay buffer directory (paths.buffer_dir)")
        s.set_defaults(func=func)

    s = sub.add_parser("promote", help="make a version the champion (recorded as a manual promotion)")
    add_config_flags(s)
    s.add_argument("version")
    s.add_argument("--reason", required=True, help="why (kept in the history)")
    s.add_argument("--force", action="store_true", help="promote a version the gate held")
    s.add_argument("--models", help="model registry directory (paths.registry_dir)")
    s.set_defaults(func=cmd_promote)

    s = sub.add_parser("rollback", help="make an earlier champion the champion again")
    add_config_flags(s)
    s.add_argument("--to", help="version to roll back to (default: the previous champion)")
    s.add_argument("--reason", required=True, help="why (kept in the history)")
    s.add_argument("--models", help="model registry directory (paths.registry_dir)")
    s.set_defaults(func=cmd_rollback)

    for name, text in (("pin", "keep a version through retention"), ("unpin", "let retention remove a version")):
        s = sub.add_parser(name, help=text)
        add_config_flags(s)
        s.add_argument("version")
        s.add_argument("--reason", required=True, help="why (kept in the history)")
        s.add_argument("--models", help="model registry directory (paths.registry_dir)")
        s.set_defaults(func=cmd_pin, pinned=name == "pin")


def _registry(args: argparse.Namespace) -> ModelRegistry:
    from deploy.registry import ModelRegistry

    cfg = config_from(args, {"paths": {"registry_dir": args.models}})
    return ModelRegistry(cfg.paths.registry_dir)


def _fmt(x: object, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def cmd_models(args: argparse.Namespace) -> int:
    """A table of the registered versions."""
    from deploy.registry import report_of

    reg = _registry(args)
    champion = reg.champion()
    records = []
    for v in reg.versions():
        m = reg.manifest(v)
        r = report_of(m)
        status = "champion" if v == champion else ("pinned" if reg.pinned(v) else "")
        records.append({
            "version": v, "parent": m.get("parent"), "created": m["created"],
            "cumulative_steps": m.get("cumulative_steps"),
            "candidate_conversion": None if r is None or r.candidate is None else r.candidate.snips_conversion.value,
            "lcb": None if r is None or r.difference is None else r.difference.lcb,
            "decision": None if r is None else r.decision, "reasons": [] if r is None else list(r.reasons),
            "status": status or None,
        })  # fmt: skip
    if args.json:
        print(json.dumps({"registry": str(reg.root), "champion": champion, "versions": records}))
        return 0
    rows = [("version", "parent", "created", "steps", "cand. conv", "LCB Δ", "gate", "status")]
    for d in records:
        reasons = ":" + ",".join(d["reasons"])[:40] if d["reasons"] else ""
        gate = "-" if d["decision"] is None else d["decision"] + reasons
        rows.append((
            d["version"], d["parent"] or "-", time.strftime("%Y-%m-%d %H:%M", time.localtime(d["created"])),
            str(d["cumulative_steps"] if d["cumulative_steps"] is not None else "-"),
            _fmt(d["candidate_conversion"]), _fmt(d["lcb"], "+.5f"), gate, d["status"] or "",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Champion, last cycle and its decision, buffer rows and age."""
    from common.buffer import BufferFormatError, open_buffer
    from deploy.registry import report_of

    reg = _registry(args)
    cfg = config_from(args, {"paths": {"buffer_dir": args.buffer}})
    missing = []
    if not reg.exists():
        missing.append(f"no model registry at {reg.root}")
    champion, last = reg.champion(), reg.latest()
    r = report_of(reg.manifest(last)) if last else None
    st = None
    try:
        st = open_buffer(cfg.paths.buffer_dir).stats()
    except BufferFormatError as e:
        missing.append(str(e))
    if args.json:
        print(json.dumps({
            "champion": champion,
            "last_cycle": None if last is None else {"version": last, "decision": None if r is None else r.decision,
                                                     "reasons": [] if r is None else list(r.reasons)},
            "buffer": st, "problems": missing,
        }))  # fmt: skip
    else:
        print(f"champion:    {champion or 'none (the logging policy serves)'}")
        if last:
            verdict = "-" if r is None else f"{r.decision} {', '.join(r.reasons)}"
            print(f"last cycle:  {last} -> {verdict}".rstrip())
        else:
            print("last cycle:  none yet")
        if st is not None:
            age = "-" if st["newest_event_time"] is None else f"{time.time() - st['newest_event_time']:.0f}s"
            print(f"buffer:      {st['rows']} rows in {st['segments']} segments, {st['bytes'] / 2**20:.1f} MiB, "
                  f"newest event {age} ago")  # fmt: skip
        else:
            print(f"buffer:      {missing[-1]}")
    for m in missing:  # a script asking for status must not read "champion: none" as a healthy answer
        log.error("status: %s", m)
    return 1 if missing else 0


def cmd_promote(args: argparse.Namespace) -> int:
    from deploy.registry import RegistryError

    reg = _registry(args)
    try:
        previous = reg.promote(args.version, reason=args.reason, force=args.force)
    except RegistryError as e:
        log.error("%s", e)
        return 1
    print(f"promoted {args.version} (was {previous or 'none'})")
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    reg = _registry(args)
    reg.pin(args.version, pinned=args.pinned, reason=args.reason)
    print(f"{'pinned' if args.pinned else 'unpinned'} {args.version}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from deploy.registry import RegistryError

    reg = _registry(args)
    try:
        previous, to = reg.rollback(reason=args.reason, to=args.to)
    except RegistryError as e:
        log.error("%s", e)
        return 1
    print(f"rolled back to {to} (was {previous or 'none'})")
    return 0
