"""Configuration: one frozen dataclass per concern, loaded TOML file -> `RANKRL_*` environment -> CLI flags.

    [model]
    actor_learning_rate = 3e-4    # or RANKRL_MODEL__ACTOR_LEARNING_RATE=1e-4, or --set model.actor_learning_rate=1e-4

The environment is read here and nowhere else. A key is `RANKRL_<SECTION>__<FIELD>` (double underscore
between section and field, so field names keep their own underscores). Unknown sections or fields and values
of the wrong type fail at start with a message naming the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.reward import RewardConfig

ENV_PREFIX = "RANKRL_"


class ConfigError(ValueError):
    """A configuration value that is unknown, of the wrong type, or out of range."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config {key}: {msg}")


@dataclass(frozen=True)
class PathsConfig:
    """Where things live on disk."""

    buffer_dir: str = "data/buffer"
    registry_dir: str = "models"
    results_dir: str = "results"


@dataclass(frozen=True)
class ModelConfig:
    """CQL hyperparameters of the continuous trainer, chosen by the learning loop (`bench/loop.py`,
    `bench/results/loop.txt`). `rankrl fit` keeps the original pipeline's (`trainer.fit.ORIGINAL_PIPELINE`)."""

    actor_learning_rate: float = 3e-4
    critic_learning_rate: float = 3e-4
    # The original pipeline's 5.0 makes CQL slow behaviour cloning: each step pulls the actor back to the logged
    # actions, and the loop walked ~25% of the way to the ceiling. 0.05 lets the critic's signal lead; the
    # exploration in every logged action (Dirichlet, kappa 20) is what keeps the data covering the candidates.
    conservative_weight: float = 0.05
    batch_size: int = 256
    n_epochs: int = 100
    n_critics: int = 2
    gamma: float = 0.99
    tau: float = 0.005
    n_action_samples: int = 10
    # 64x64 trained as well as 256x256 on this problem at a quarter of the CPU cost (issue 13's measurements).
    hidden_units: tuple[int, ...] = (64, 64)
    # SAC's entropy temperature inside CQL: its starting value, and how fast it adapts (0 keeps it fixed). A fixed
    # small temperature keeps the entropy bonus from pulling the actor back towards uniform weights.
    initial_temperature: float = 0.01
    temp_learning_rate: float = 0.0
    # Train the critic on rescaled copies of the logged actions (only the weights' ratios matter; trainer/data.py):
    # the actor proposes points in the [0, 1]^7 box, the logs hold points on the simplex. The largest single gain
    # measured: the first cycle's candidate at 10.13% true conversion with it, 9.54% without.
    scale_augmentation: bool = True

    def __post_init__(self) -> None:
        for k in ("actor_learning_rate", "critic_learning_rate", "tau"):
            _check(getattr(self, k) > 0, f"model.{k}", "must be > 0")
        _check(self.conservative_weight >= 0, "model.conservative_weight", "must be >= 0")
        _check(self.batch_size >= 1, "model.batch_size", "must be >= 1")
        _check(self.n_epochs >= 1, "model.n_epochs", "must be >= 1")
        _check(self.n_critics >= 1, "model.n_critics", "must be >= 1")
        _check(0.0 <= self.gamma <= 1.0, "model.gamma", "must be in [0, 1]")
        _check(self.n_action_samples >= 1, "model.n_action_samples", "must be >= 1")
        _check(self.initial_temperature > 0, "model.initial_temperature", "must be > 0")
        _check(self.temp_learning_rate >= 0, "model.temp_learning_rate", "must be >= 0 (0 keeps the temperature fixed)")
        _check(all(h >= 1 for h in self.hidden_units), "model.hidden_units", "every layer needs >= 1 unit")


@dataclass(frozen=True)
class ExplorationConfig:
    """The serving-time exploration family: Dirichlet(kappa * mean), mean floored so every alpha >= min_alpha."""

    kappa: float = 20.0
    min_alpha: float = 1.0

    def __post_init__(self) -> None:
        _check(self.kappa > 0, "exploration.kappa", "must be > 0")
        _check(self.min_alpha > 0, "exploration.min_alpha", "must be > 0")
        _check(self.min_alpha * 7 < self.kappa, "exploration.min_alpha", "7 * min_alpha must be < kappa")


@dataclass(frozen=True)
class GateConfig:
    """Promotion-gate thresholds (see trainer/gate.py for what each guards against)."""

    alpha: float = 0.05
    # The smallest Δ (absolute conversion, 0.0002 = 0.02 pp) worth a promotion: LCB(Δ) must exceed it. At 0 an
    # equally good candidate passes alpha of the time, and a loop that has stopped climbing promotes such a coin
    # toss every few cycles forever; at 0.02 pp an exact null passes ~1% of the time on the loop's late holdouts
    # (Δ's standard error ~0.02 pp at 450,000 rows), while steps worth 0.05 pp and more still pass (bench/loop.py).
    # Set it to the smallest lift worth a release at your conversion rate.
    min_lift: float = 0.0002
    min_ess: float = 1000.0
    min_ess_fraction: float = 0.01
    min_effective_conversions: float = 50.0
    max_weight_share: float = 0.01
    max_pareto_k: float = 0.7
    max_mean_weight_deviation: float = 0.05
    min_holdout_rows: int = 10_000
    min_holdout_conversions: int = 300
    # The trainer's fallback when the full candidate fails: test these fractions of the way from the champion
    # (or the logger) towards it, smallest first, stopping at the first failure; promote the largest passing one
    # (a fixed sequence: the error rate stays at alpha). (1.0,) tests the full candidate only.
    shrinkage_steps: tuple[float, ...] = (0.25, 0.5, 1.0)
    # "when_needed": bootstrap Δ only where its t bound clears the margin, and only until the replicates settle
    # which side of the margin its α-quantile lies (200 to 2,000; common/ope.py paired_difference). The decision is
    # that of "always" (the bound is min(t, bootstrap)); full 2,000-sample bootstraps took 18-34 s of a 50-65 s
    # demo cycle and 24 s each on a 450,000-row holdout (bench/results/loop.txt, section F).
    bootstrap: str = "when_needed"

    def __post_init__(self) -> None:
        _check(0.0 < self.alpha < 0.5, "gate.alpha", "must be in (0, 0.5)")
        _check(self.bootstrap in ("when_needed", "always"), "gate.bootstrap", "when_needed or always")
        st = self.shrinkage_steps
        _check(
            len(st) >= 1 and all(0.0 < t <= 1.0 for t in st) and all(a < b for a, b in itertools.pairwise(st)),
            "gate.shrinkage_steps",
            "needs increasing fractions in (0, 1]: [0.25, 0.5, 1.0] in TOML, 0.25,0.5,1.0 with --set",
        )
        _check(0.0 < self.max_weight_share <= 1.0, "gate.max_weight_share", "must be in (0, 1]")
        _check(self.min_holdout_rows >= 1, "gate.min_holdout_rows", "must be >= 1")


@dataclass(frozen=True)
class StreamerConfig:
    """The streamer daemon: source, sealing, retention, Kafka client and its security."""

    source: str = "file://data/events.jsonl"  # or kafka://HOST:PORT[,HOST:PORT]/TOPIC
    follow: bool = True  # file source: keep following appended lines
    metrics_port: int = 9108  # 0 = no metrics server
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 to let a Prometheus on another host or container scrape it
    segment_max_rows: int = 50_000
    segment_max_age_s: float = 30.0
    retention_max_age_s: float = 3 * 86_400.0  # a few days of traffic
    retention_max_bytes: int = 20 * 2**30
    dedup_window_s: float = 3_600.0
    max_poll_records: int = 1000
    # Processes that parse polled batches while the main thread polls the next (0 = parse inline). One is
    # right for 2 cores: poll and parse each need a core (the GIL keeps one process at ~half the raw rate);
    # it beat 0 in all 4 runs of bench/results/streamer_throughput.txt (+9% to +59%). 0 on a 1-core host.
    parse_workers: int = 1
    max_retry_s: float = 300.0  # disk or broker errors: retry with backoff this long, then exit non-zero
    # Bounds on memory by bytes, not counts (one bad record can be megabytes):
    max_record_bytes: int = 1 << 20  # a larger record is dead-lettered as too_large without being parsed
    # Polled records waiting for a parse worker; polling waits beyond it. 16 MiB is ~7,000 events of 2.3 KB, past the
    # 5,000-record cap, so it binds only for large records: a fuzz corpus peaked at 342 MiB with it, 658 with 64.
    max_pending_bytes: int = 16 << 20
    dlq_flush_bytes: int = 16 << 20  # dead letters held in memory before they force a seal (and a flush)
    dlq_max_value_bytes: int = 256 << 10  # a dead letter keeps at most this much of the record (the source has all)
    dlq_file_max_bytes: int = 64 << 20  # file source: dlq.jsonl is rotated past this (after a seal)
    dlq_file_keep: int = 10  # rotated dlq.jsonl.N files kept
    group_id: str = "rankrl-streamer"
    # Static membership: a stable id per instance (e.g. the host name) lets a restart within the session timeout
    # take its partitions back without a rebalance. Leave empty when instances come and go.
    group_instance_id: str = ""
    session_timeout_ms: int = 45_000
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    sasl_mechanism: str = ""  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    sasl_username: str = ""
    sasl_password_env: str = "RANKRL_KAFKA_SASL_PASSWORD"  # the secret itself never sits in a config file
    sasl_password_file: str = ""
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    ssl_password_env: str = "RANKRL_KAFKA_SSL_PASSWORD"

    def __post_init__(self) -> None:
        _check(
            self.source.startswith(("file://", "kafka://")),
            "streamer.source",
            f"expected file://PATH or kafka://HOST:PORT/TOPIC, got {self.source!r}",
        )
        if self.source.startswith("kafka://"):
            servers, _, topic = self.source[len("kafka://") :].partition("/")
            ok = (
                bool(topic)
                and "/" not in topic
                and all(h.rpartition(":")[0] and h.rpartition(":")[2].isdigit() for h in servers.split(","))
            )
            _check(ok, "streamer.source", f"expected kafka://HOST:PORT[,HOST:PORT]/TOPIC, got {self.source!r}")
        _check(self.segment_max_rows >= 1, "streamer.segment_max_rows", "must be >= 1")
        _check(self.segment_max_age_s > 0, "streamer.segment_max_age_s", "must be > 0")
        _check(self.parse_workers >= 0, "streamer.parse_workers", "must be >= 0 (0 parses in the main process)")
        for k in ("max_record_bytes", "max_pending_bytes", "dlq_flush_bytes", "dlq_max_value_bytes"):
            _check(getattr(self, k) >= 1024, f"streamer.{k}", "must be >= 1024 bytes")
        _check(self.dlq_file_keep >= 1, "streamer.dlq_file_keep", "must be >= 1")
        _check(
            self.security_protocol in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
            "streamer.security_protocol",
            "must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
        )
        _check(
            self.sasl_mechanism in ("", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
            "streamer.sasl_mechanism",
            "must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
        )


@dataclass(frozen=True)
class TrainerConfig:
    """The trainer daemon: schedule, data window, holdout, training length, warm start, device."""

    interval_minutes: float = 30.0  # used when cron is empty
    cron: str = ""  # crontab expression, e.g. "*/30 * * * *"
    window_s: float = 3 * 86_400.0  # train and evaluate on this much recent data
    holdout_fraction: float = 0.3  # the newest slice, never trained on in that cycle
    min_train_rows: int = 1_000
    steps_per_cycle: int = 1_000  # with 64x64 networks: ~20-30 s a cycle on 2 CPU cores
    steps_per_epoch: int = 500  # SIGTERM is honoured between epochs
    warm_start_from: str = "champion"  # or "latest"
    device: str = "auto"  # "auto" = cuda:0 when available, else cpu
    keep_last: int = 10  # registry retention (the champion and pinned versions are always kept)
    metrics_port: int = 9109
    metrics_host: str = "127.0.0.1"
    seed: int = 0

    def __post_init__(self) -> None:
        _check(0.0 < self.holdout_fraction < 1.0, "trainer.holdout_fraction", "must be in (0, 1)")
        _check(self.steps_per_cycle >= 1, "trainer.steps_per_cycle", "must be >= 1")
        _check(self.steps_per_epoch >= 1, "trainer.steps_per_epoch", "must be >= 1")
        _check(self.warm_start_from in ("champion", "latest"), "trainer.warm_start_from", "champion or latest")
        _check(self.interval_minutes > 0, "trainer.interval_minutes", "must be > 0")
        _check(self.keep_last >= 0, "trainer.keep_last", "must be >= 0 (the champion and pinned versions stay)")


def _check_log_url(url: str, key: str) -> None:
    if url.startswith("file://"):
        _check(len(url) > len("file://"), key, "file:// needs a path")
        return
    servers, _, topic = url[len("kafka://") :].partition("/") if url.startswith("kafka://") else ("", "", "")
    ok = (
        bool(topic)
        and "/" not in topic
        and all(h.rpartition(":")[0] and h.rpartition(":")[2].isdigit() for h in servers.split(","))
    )
    _check(ok, key, f"expected file://PATH or kafka://HOST:PORT[,HOST:PORT]/TOPIC, got {url!r}")


@dataclass(frozen=True)
class JoinConfig:
    """The outcome join (streamer/join.py): with both streams set, the streamer reads decisions and outcomes
    (what `rankrl serve` logs) instead of streamer.source, and joins them by log_id."""

    decisions: str = ""  # file://PATH or kafka://HOST:PORT/search-decisions; empty: no join
    outcomes: str = ""  # file://PATH or kafka://HOST:PORT/search-outcomes (same broker as decisions)
    # The attribution window: outcomes reported within this much event time of the decision count towards it; a
    # decision with none by then is stored with user_action "none" (the default reward). 10 minutes covers a
    # search's clicks and most of its purchases; a longer window delays every row by as much.
    window_s: float = 600.0
    # How far event time may run out of order (several serving hosts, a slow partition): windows close this much
    # later, and an outcome waits this long for a decision it has not seen.
    lateness_s: float = 30.0
    # Outcomes whose decision has not been read yet are held (each waits join.lateness_s of event time); past this
    # many, the oldest is dead-lettered unknown_decision at once, so a flood of unknown ids cannot grow memory.
    max_waiting_outcomes: int = 100_000
    # Plausibility limits, applied by `rankrl serve` (a 400, reason implausible) and by the join (a dead letter) to
    # each report and to a search's merged outcome: they bound how much one search can weigh in the reward.
    max_purchase_value: float = 100_000.0
    max_purchased_ranks: int = 20
    max_interacted_ranks: int = 100

    @property
    def enabled(self) -> bool:
        return bool(self.decisions or self.outcomes)

    def __post_init__(self) -> None:
        if self.decisions or self.outcomes:
            _check(bool(self.decisions and self.outcomes), "join", "needs both join.decisions and join.outcomes")
            _check_log_url(self.decisions, "join.decisions")
            _check_log_url(self.outcomes, "join.outcomes")
            kinds = {self.decisions.split("://")[0], self.outcomes.split("://")[0]}
            _check(len(kinds) == 1, "join", "decisions and outcomes must both be file:// or both kafka://")
            if kinds == {"kafka"}:
                servers = {u[len("kafka://") :].partition("/")[0] for u in (self.decisions, self.outcomes)}
                _check(len(servers) == 1, "join", "decisions and outcomes must be on the same Kafka servers")
        _check(self.window_s > 0, "join.window_s", "must be > 0")
        _check(self.lateness_s >= 0, "join.lateness_s", "must be >= 0")
        _check(self.max_waiting_outcomes >= 1, "join.max_waiting_outcomes", "must be >= 1")
        _check(0 < self.max_purchase_value <= 1e9, "join.max_purchase_value", "must be in (0, 1e9]")
        _check(self.max_purchased_ranks >= 1, "join.max_purchased_ranks", "must be >= 1")
        _check(self.max_interacted_ranks >= 1, "join.max_interacted_ranks", "must be >= 1")


@dataclass(frozen=True)
class ServeConfig:
    """`rankrl serve`, the decision service: where it listens, where it logs, what it serves before a champion.

    Kafka logs use the [streamer] section's client security settings (security_protocol, sasl_*, ssl_*)."""

    host: str = "127.0.0.1"  # 0.0.0.0 to accept other hosts (put it behind your load balancer)
    port: int = 8080
    decisions: str = "file://data/decisions.jsonl"  # or kafka://HOST:PORT/search-decisions
    outcomes: str = "file://data/outcomes.jsonl"  # or kafka://HOST:PORT/search-outcomes
    # The search engine's current fixed weights (ACTION_KEYS order; any positive scale), served with exploration
    # while the registry has no champion: day one's traffic is randomised around them, so the first candidate can
    # be evaluated (logs of fixed weights give the gate no overlap). Equal weights unless you set yours.
    default_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    log_timeout_s: float = 5.0  # a record not durable within this fails its request with 503
    reload_interval_s: float = 1.0  # how often the champion pointer is checked (a new one serves without restart)
    metrics_path: str = "/metrics"
    # Bearer tokens, one per line: `SCOPES TOKEN` with SCOPES `rank`, `outcome` or `rank,outcome` (# comments).
    # Empty: no authentication, allowed only on a loopback host (a test or one machine); see docs/security.md.
    tokens_file: str = ""
    # How far ahead of this host's clock an outcome's created_at may be (400 beyond it); decisions get serve's time.
    max_clock_skew_s: float = 60.0
    # A repeated rank of one log_id returns the first answer (same request) or 409 (another request): this many
    # caller-given log_ids are remembered, each for streamer.dedup_window_s (while a second one would be dropped).
    idempotency_entries: int = 100_000
    max_body_bytes: int = 16 << 20  # a request body larger than this is refused (413) while it is read
    max_header_bytes: int = 64 << 10  # request line and headers
    read_timeout_s: float = 10.0  # a client that does not send its whole request within this is cut off (408)
    max_connections: int = 1000  # beyond this many concurrent connections, new ones get 503
    keepalive_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        _check(0 <= self.port <= 65535, "serve.port", "must be in 0..65535 (0 picks a free port)")
        _check_log_url(self.decisions, "serve.decisions")
        _check_log_url(self.outcomes, "serve.outcomes")
        _check(
            len(self.default_weights) == 7
            and all(w >= 0 for w in self.default_weights)
            and max(self.default_weights) > 0,
            "serve.default_weights",
            "needs 7 weights >= 0, not all 0 (W_COLLAB_POS, W_COLLAB_NEG, W_TRAIT, W_BRAND, W_WISHLIST, "
            "W_MARKET_CONV, W_MARKET_DEAL)",
        )
        _check(self.log_timeout_s > 0, "serve.log_timeout_s", "must be > 0")
        _check(self.reload_interval_s > 0, "serve.reload_interval_s", "must be > 0")
        _check(0 <= self.max_clock_skew_s <= 3600, "serve.max_clock_skew_s", "must be in [0, 3600]")
        _check(self.idempotency_entries >= 0, "serve.idempotency_entries", "must be >= 0")
        _check(self.max_body_bytes >= 1024, "serve.max_body_bytes", "must be >= 1024")
        _check(self.max_header_bytes >= 1024, "serve.max_header_bytes", "must be >= 1024")
        _check(self.read_timeout_s > 0, "serve.read_timeout_s", "must be > 0")
        _check(self.max_connections >= 1, "serve.max_connections", "must be >= 1")
        _check(self.keepalive_timeout_s > 0, "serve.keepalive_timeout_s", "must be > 0")


def resolve_secret(env_name: str, file: str = "", environ: Mapping[str, str] | None = None) -> str | None:
    """A secret from a file (first line) or an environment variable; None when neither is set."""
    if file:
        try:
            return Path(file).read_text().splitlines()[0].strip()
        except (OSError, IndexError) as e:
            raise ConfigError(f"cannot read secret file {file}: {e}") from None
    env = os.environ if environ is None else environ
    return env.get(env_name) if env_name else None


@dataclass(frozen=True)
class RankrlConfig:
    """The whole configuration: one section per concern."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    streamer: StreamerConfig = field(default_factory=StreamerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    join: JoinConfig = field(default_factory=JoinConfig)

    def limits(self) -> Any:
        """The record limits serve and the join share (common.decisions.Limits)."""
        from common.decisions import Limits

        j = self.join
        return Limits(
            max_record_bytes=self.streamer.max_record_bytes,
            max_purchase_value=j.max_purchase_value,
            max_purchased_ranks=j.max_purchased_ranks,
            max_interacted_ranks=j.max_interacted_ranks,
        )

    def __post_init__(self) -> None:
        if self.join.enabled:
            _check(
                self.join.window_s + self.join.lateness_s < self.streamer.dedup_window_s,
                "join.window_s",
                f"window + lateness ({self.join.window_s + self.join.lateness_s:g}s) must stay below "
                f"streamer.dedup_window_s ({self.streamer.dedup_window_s:g}s): a restart re-reads that much, and "
                "the buffer's log-id dedup is what keeps the re-read events from being stored twice",
            )


def _coerce(value: Any, tp: Any, key: str, origin: str) -> Any:
    """Convert a TOML/env/CLI value to the field's declared type, or raise ConfigError naming the key."""
    bad = ConfigError(f"config {key} (from {origin}): cannot use {value!r} as {getattr(tp, '__name__', tp)}")
    o = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        try:
            if isinstance(value, float) and not value.is_integer():
                raise bad
            return int(value)
        except (TypeError, ValueError):
            raise bad from None
    if tp is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if o is tuple:
        (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise bad
        return tuple(_coerce(v, item, key, origin) for v in value)
    if o in (dict, Mapping) or tp is Mapping or o is typing.Mapping:
        if not isinstance(value, dict):
            raise bad
        return {str(k): float(v) for k, v in value.items()}
    if o is types.UnionType or o is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value == ""):
            return None
        return _coerce(value, args[0], key, origin)
    raise bad


def _apply(section_obj: Any, section: str, values: Mapping[str, Any], origin: str) -> Any:
    hints = typing.get_type_hints(type(section_obj))
    known = {f.name for f in dataclasses.fields(section_obj)}
    changes = {}
    for k, v in values.items():
        if k not in known:
            raise ConfigError(f"config {section}.{k} (from {origin}): unknown field; known: {sorted(known)}")
        changes[k] = _coerce(v, hints[k], f"{section}.{k}", origin)
    try:
        return dataclasses.replace(section_obj, **changes)
    except ConfigError as e:
        raise ConfigError(f"{e} (from {origin})") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config {section} (from {origin}): {e}") from None


def with_overrides(cfg: Any, layered: Mapping[str, Mapping[str, Any]], origin: str) -> Any:
    """Apply {section: {field: value}} to a config tree of frozen dataclasses."""
    sections = {f.name for f in dataclasses.fields(cfg)}
    changes = {}
    for section, values in layered.items():
        if section not in sections:
            raise ConfigError(f"config section [{section}] (from {origin}): unknown; known: {sorted(sections)}")
        if not isinstance(values, Mapping):
            raise ConfigError(f"config [{section}] (from {origin}): expected a table of fields")
        changes[section] = _apply(getattr(cfg, section), section, values, origin)
    return dataclasses.replace(cfg, **changes)


def env_overrides(environ: Mapping[str, str], sections: set[str]) -> dict[str, dict[str, str]]:
    """`RANKRL_<SECTION>__<FIELD>=value` pairs, grouped by section. Other RANKRL_ variables are left alone."""
    out: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, fld = name[len(ENV_PREFIX) :].partition("__")
        section = section.lower()
        if section in sections:
            out.setdefault(section, {})[fld.lower()] = value
    return out


def parse_set_flags(pairs: list[str]) -> dict[str, dict[str, object]]:
    """CLI `--set section.field=value` flags, grouped by section."""
    out: dict[str, dict[str, object]] = {}
    for p in pairs:
        key, eq, value = p.partition("=")
        section, dot, fld = key.partition(".")
        if not eq or not dot:
            raise ConfigError(f"--set {p!r}: expected section.field=value")
        out.setdefault(section.strip(), {})[fld.strip()] = value
    return out


CONFIG_SEARCH = ("./rankrl.toml", "/etc/rankrl/rankrl.toml")


def discover_config_file(environ: Mapping[str, str] | None = None) -> Path | None:
    """The configuration file when --config is not given: $RANKRL_CONFIG (which must exist), else ./rankrl.toml,
    else /etc/rankrl/rankrl.toml, else none (the defaults)."""
    env = os.environ if environ is None else environ
    if env.get(ENV_PREFIX + "CONFIG"):
        p = Path(env[ENV_PREFIX + "CONFIG"])
        if not p.exists():
            raise ConfigError(f"{ENV_PREFIX}CONFIG names {p}, which does not exist")
        return p
    return next((Path(c) for c in CONFIG_SEARCH if Path(c).is_file()), None)


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    cli: Mapping[str, Mapping[str, Any]] | None = None,
    base: Any = None,
) -> Any:
    """TOML file, then environment, then CLI overrides, each over the previous. Returns a frozen config tree."""
    cfg = base if base is not None else RankrlConfig()
    if path is not None:
        p = Path(path)
        try:
            with p.open("rb") as f:
                doc = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {p}: {e}") from None
        cfg = with_overrides(cfg, doc, str(p))
    sections = {f.name for f in dataclasses.fields(cfg)}
    env = env_overrides(os.environ if environ is None else environ, sections)
    if env:
        cfg = with_overrides(cfg, env, "environment")
    if cli:
        cfg = with_overrides(cfg, cli, "command line")
    return cfg


_SECRET_WORDS = ("password", "secret", "token", "key")
_NOT_SECRET = ("_file", "_env", "ssl_keyfile", "ssl_certfile", "ssl_cafile")  # paths and variable names


def describe(cfg: Any, prefix: str = "") -> list[str]:
    """`section.field=value` lines of the effective configuration, secrets masked (logged once at start)."""
    lines = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(v):
            lines.extend(describe(v, name + "."))
        elif any(w in f.name.lower() for w in _SECRET_WORDS) and v and not f.name.endswith(_NOT_SECRET):
            lines.append(f"{name}=***")
        else:
            lines.append(f"{name}={v}")
    return lines
