"""Wiring of the streamer daemon from configuration: source, writer, dead letters, metrics server, signals."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry, start_http_server

from common.config import RankrlConfig, describe, resolve_secret
from common.progress import progress_bar
from common.signals import install_stop_handlers
from streamer.dlq import DeadLetters, FileDeadLetters, KafkaDeadLetters
from streamer.join import BothFiles, JoinSource
from streamer.loop import Streamer
from streamer.metrics import StreamerMetrics
from streamer.sources import FatalSourceError, FileSource, KafkaSettings, KafkaSource, Record, Source
from streamer.writer import BufferWriter, log_id_hash

log = logging.getLogger(__name__)


def kafka_settings(cfg: RankrlConfig, url: str | None = None) -> KafkaSettings:
    """Client settings for `url` (default streamer.source), with the [streamer] section's group and security."""
    s = cfg.streamer
    url = url or s.source
    rest = url[len("kafka://") :]
    servers, _, topic = rest.partition("/")
    if not servers or not topic:
        raise ValueError(f"{url!r}: expected kafka://HOST:PORT[,HOST:PORT]/TOPIC")
    return KafkaSettings(
        bootstrap_servers=servers,
        topic=topic,
        group_id=s.group_id,
        group_instance_id=s.group_instance_id or None,
        session_timeout_ms=s.session_timeout_ms,
        max_poll_records=s.max_poll_records,
        security_protocol=s.security_protocol,
        sasl_mechanism=s.sasl_mechanism or None,
        sasl_username=s.sasl_username or None,
        sasl_password=resolve_secret(s.sasl_password_env, s.sasl_password_file) if s.sasl_mechanism else None,
        ssl_cafile=s.ssl_cafile or None,
        ssl_certfile=s.ssl_certfile or None,
        ssl_keyfile=s.ssl_keyfile or None,
        ssl_password=resolve_secret(s.ssl_password_env) if s.ssl_keyfile else None,
    )


def _kafka_dead_letters(cfg: RankrlConfig, ks: KafkaSettings) -> Callable[[], DeadLetters]:
    def make() -> DeadLetters:
        try:
            return KafkaDeadLetters(ks, cfg.streamer.group_id, max_value_bytes=cfg.streamer.dlq_max_value_bytes)
        except KafkaError as e:
            raise FatalSourceError(f"cannot create the dead-letter producer for {ks.topic}.dlq: {e}") from None

    return make


def _file_dead_letters(cfg: RankrlConfig, writer: BufferWriter) -> Callable[[], DeadLetters]:
    s = cfg.streamer

    def make() -> DeadLetters:
        return FileDeadLetters(
            Path(cfg.paths.buffer_dir) / "dlq.jsonl",
            writer.stored_positions(),
            max_value_bytes=s.dlq_max_value_bytes,
            file_max_bytes=s.dlq_file_max_bytes,
            keep_files=s.dlq_file_keep,
        )

    return make


def build_streamer(cfg: RankrlConfig, registry: CollectorRegistry, stop_when_idle_s: float | None = None) -> Streamer:
    s = cfg.streamer
    writer = BufferWriter(
        cfg.paths.buffer_dir,
        max_rows=s.segment_max_rows,
        max_age_s=s.segment_max_age_s,
        retention_max_age_s=s.retention_max_age_s,
        retention_max_bytes=s.retention_max_bytes,
        dedup_window_s=s.dedup_window_s,
    )
    if cfg.join.enabled:
        return _joining_streamer(cfg, registry, writer, stop_when_idle_s)
    if s.source.startswith("kafka://"):
        ks = kafka_settings(cfg)

        dead_letters = _kafka_dead_letters(cfg, ks)

        def source_factory(st: Streamer) -> Source:
            return KafkaSource(ks, writer.stored_positions, st.drop_partitions, writer)

    else:
        path = Path(s.source[len("file://") :])

        dead_letters = _file_dead_letters(cfg, writer)

        def source_factory(st: Streamer) -> Source:
            return FileSource(
                path,
                writer.stored_positions(),
                follow=s.follow,
                max_records=s.max_poll_records,
                max_record_bytes=s.max_record_bytes,
                identities=writer,
            )

    return _streamer(cfg, registry, writer, source_factory, dead_letters, stop_when_idle_s)


def _streamer(
    cfg: RankrlConfig,
    registry: CollectorRegistry,
    writer: BufferWriter,
    source_factory: Callable[[Streamer], Source],
    dead_letters: Callable[[], DeadLetters],
    stop_when_idle_s: float | None,
) -> Streamer:
    s = cfg.streamer
    # A joined event is a decision and its merged outcome, each within max_record_bytes when read: the parse step
    # takes the two together (plus the join's few added bytes), or the join would dead-letter searches serve accepted.
    parse_limit = 2 * s.max_record_bytes + 4096 if cfg.join.enabled else s.max_record_bytes
    return Streamer(
        source_factory,
        writer,
        dead_letters,
        StreamerMetrics(registry),
        reward_config=cfg.reward,
        max_retry_s=s.max_retry_s,
        stop_when_idle_s=stop_when_idle_s,
        parse_workers=s.parse_workers,
        max_pending_bytes=s.max_pending_bytes,
        dlq_flush_bytes=s.dlq_flush_bytes,
        max_record_bytes=parse_limit,
    )


def _joining_streamer(
    cfg: RankrlConfig, registry: CollectorRegistry, writer: BufferWriter, stop_when_idle_s: float | None
) -> Streamer:
    """The streamer over the outcome join of serve's two logs (streamer/join.py)."""
    s, j = cfg.streamer, cfg.join

    def join(st: Streamer, inner: Source, is_decision: Callable[[Record], bool]) -> JoinSource:
        def stored(log_id: str) -> float | None:
            with st.lock:
                return writer.stored_time(log_id_hash(log_id))

        return JoinSource(inner, is_decision, st.dead_letter, j.window_s, j.lateness_s, stored, st.metrics,
                          limits=cfg.limits(), max_waiting=j.max_waiting_outcomes,
                          stored_until=lambda: writer.newest_stored_time)  # fmt: skip

    if j.decisions.startswith("kafka://"):
        ks = kafka_settings(cfg, j.decisions)
        outcomes_topic = j.outcomes[len("kafka://") :].partition("/")[2]
        ks = dataclasses.replace(ks, also_topics=(outcomes_topic,))
        holder: list[JoinSource] = []

        dead_letters = _kafka_dead_letters(cfg, ks)

        def source_factory(st: Streamer) -> Source:
            def revoked(keys: set[str]) -> None:
                if holder:
                    holder[0].drop(keys)
                st.drop_partitions(keys)

            inner = KafkaSource(ks, writer.stored_positions, revoked, writer)
            counts = {t: len(inner.consumer.partitions_for_topic(t) or ()) for t in (ks.topic, outcomes_topic)}
            if len(set(counts.values())) != 1 or 0 in counts.values():
                inner.close()
                raise FatalSourceError(
                    f"the outcome join needs both topics to exist with the same partition count (keyed by log_id, "
                    f"a search's decision and outcomes then share a partition number): {counts}"
                )
            holder.append(join(st, inner, lambda r: r.topic == ks.topic))
            return holder[0]

    else:
        paths = [Path(u[len("file://") :]).resolve() for u in (j.decisions, j.outcomes)]

        dead_letters = _file_dead_letters(cfg, writer)

        def source_factory(st: Streamer) -> Source:
            stored = writer.stored_positions()
            files = [
                FileSource(p, stored, follow=s.follow, max_records=s.max_poll_records,
                           max_record_bytes=s.max_record_bytes, identities=writer)
                for p in paths
            ]  # fmt: skip
            return join(st, BothFiles(*files), lambda r: r.topic == str(paths[0]))

    return _streamer(cfg, registry, writer, source_factory, dead_letters, stop_when_idle_s)


def run_streamer(cfg: RankrlConfig, stop_when_idle_s: float | None = None, progress: bool | None = False) -> int:
    """Run until stopped (SIGTERM/SIGINT) or idle for `stop_when_idle_s`. `progress`: a backfill bar on stderr
    (None: when stderr is a terminal)."""
    for line in describe(cfg):
        if line.startswith(("streamer.", "paths.", "reward.", "join.")):
            log.info("config %s", line)
    registry = CollectorRegistry()
    if cfg.streamer.metrics_port:
        start_http_server(cfg.streamer.metrics_port, addr=cfg.streamer.metrics_host, registry=registry)
        log.info("metrics on http://%s:%d/metrics", cfg.streamer.metrics_host, cfg.streamer.metrics_port)
    streamer = build_streamer(cfg, registry, stop_when_idle_s)
    install_stop_handlers(streamer.stop, "streamer (seal, commit, close)")
    j = cfg.join
    source = f"join of {j.decisions} and {j.outcomes} (window {j.window_s:g}s)" if j.enabled else cfg.streamer.source
    log.info("streamer started source=%s buffer=%s", source, cfg.paths.buffer_dir)
    with progress_bar(progress, unit="event", desc="backfill") as bar:
        streamer.progress = bar
        return streamer.run()
