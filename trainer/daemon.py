"""The trainer daemon: APScheduler runs one cycle at a time on an interval or a cron schedule.

Missed runs are coalesced into one and a run never overlaps the previous (max_instances=1). SIGTERM sets a
stop flag that the cycle honours between epochs; the half-trained candidate is discarded, never registered.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry, start_http_server

from common.buffer import BufferFormatError
from common.config import RankrlConfig, describe
from common.signals import install_stop_handlers
from deploy.registry import ModelRegistry, RegistryError
from trainer.cycle import CycleInterrupted, CycleResult, run_cycle
from trainer.data import NotEnoughData
from trainer.metrics import RegistryCollector, TrainerMetrics

log = logging.getLogger(__name__)


class Trainer:
    def __init__(self, cfg: RankrlConfig, registry: CollectorRegistry) -> None:
        self.cfg = cfg
        self.models = ModelRegistry(cfg.paths.registry_dir)
        self.metrics = TrainerMetrics(registry)
        registry.register(RegistryCollector(cfg.paths.registry_dir))
        self.stop_event = threading.Event()
        self.results: list[CycleResult] = []
        self.cycles_run = 0
        # The last cycle that registered a version, from the registry: a restarted trainer must not read as one
        # that never succeeded (the "no successful cycle" alert paged after every restart).
        registered = [h["time"] for h in self.models.history() if h.get("action") == "register" and "time" in h]
        if registered:
            self.metrics.last_success.set(float(registered[-1]))

    def cycle(self) -> CycleResult | None:
        """One guarded cycle: outcomes and errors become metrics and log lines, never a crashed daemon."""
        m = self.metrics
        self.cycles_run += 1
        t0 = time.monotonic()
        try:
            r = run_cycle(self.cfg, self.models, stop=self.stop_event)
        except CycleInterrupted as e:
            m.cycles.labels(outcome="interrupted").inc()
            log.warning("trainer cycle interrupted: %s", e)
            return None
        except (NotEnoughData, BufferFormatError) as e:
            m.cycles.labels(outcome="skipped").inc()
            log.warning("trainer cycle skipped: %s", e)
            return None
        except RegistryError as e:  # a damaged or tampered registry: the message names the file and the fix
            m.cycles.labels(outcome="failed").inc()
            log.error("trainer cycle failed: %s", e)
            return None
        except Exception:
            m.cycles.labels(outcome="failed").inc()
            log.exception("trainer cycle failed")
            return None
        m.duration.observe(time.monotonic() - t0)
        m.cycles.labels(outcome="promoted" if r.promoted else "held").inc()
        m.last_success.set(time.time())
        m.steps.inc(r.steps)  # the cycle's rows, losses and gate evidence: read from the registry (RegistryCollector)
        self.results.append(r)
        return r

    def stop(self) -> None:
        self.stop_event.set()


EXIT_HELD = 3  # `train --once`: a candidate was registered and the gate held it (0: promoted, 1: none registered)


def cycle_summary(r: CycleResult) -> dict[str, object]:
    """What `train --once --json` prints: the cycle's decision and its evidence, machine-readable."""
    d = r.report.difference
    return {
        "version": r.version, "parent": r.parent, "decision": r.decision, "promoted": r.promoted,
        "reasons": list(r.report.reasons), "delta": None if d is None else d.delta, "lcb": None if d is None else d.lcb,
        "train_rows": r.train_rows, "holdout_rows": r.holdout_rows, "steps": r.steps,
        "cumulative_steps": r.cumulative_steps, "seconds": round(r.seconds, 3),
    }  # fmt: skip


def run_trainer(cfg: RankrlConfig, once: bool = False, max_cycles: int | None = None, as_json: bool = False) -> int:
    for line in describe(cfg):
        if line.startswith(("trainer.", "model.", "gate.", "paths.", "exploration.")):
            log.info("config %s", line)
    registry = CollectorRegistry()
    trainer = Trainer(cfg, registry)
    if once:
        r = trainer.cycle()
        if as_json:
            print(json.dumps(None if r is None else cycle_summary(r)))
        if r is None:
            return 1
        return 0 if r.promoted else EXIT_HELD
    if cfg.trainer.metrics_port:
        start_http_server(cfg.trainer.metrics_port, addr=cfg.trainer.metrics_host, registry=registry)
        log.info("metrics on http://%s:%d/metrics", cfg.trainer.metrics_host, cfg.trainer.metrics_port)

    install_stop_handlers(trainer.stop, "trainer (between epochs; nothing half-trained is registered)")
    tc = cfg.trainer
    trigger = CronTrigger.from_crontab(tc.cron) if tc.cron else IntervalTrigger(minutes=tc.interval_minutes)
    sched = BackgroundScheduler()
    done = threading.Event()

    def job() -> None:
        trainer.cycle()
        if max_cycles is not None and trainer.cycles_run >= max_cycles:
            done.set()

    # one run at a time, missed runs coalesced; the first run starts now
    sched.add_job(job, trigger, max_instances=1, coalesce=True, next_run_time=None if tc.cron else _now())
    sched.start()
    log.info("trainer scheduled: %s", tc.cron or f"every {tc.interval_minutes} min")
    while not trainer.stop_event.is_set() and not done.is_set():
        trainer.stop_event.wait(0.5)
    sched.shutdown(wait=True)  # lets a running cycle reach its next epoch boundary and stop
    log.info("trainer stopped")
    return 0


def _now():  # type: ignore[no-untyped-def]
    from datetime import datetime

    return datetime.now().astimezone()
