"""A Kafka topic through kafka-python, as one member of a consumer group; commits only durable positions.

Kafka (kafka-python 3.x runs rebalance listeners on its network thread, where blocking calls are forbidden):
- assigned: the listener only records the partitions; the main thread then seeks each to
  max(stored next position, committed offset) and drops already-fetched records below that floor;
- revoked / lost: the listener drops the partitions' unsealed rows (through `on_revoked`, under the loop's
  lock) and never commits; the next owner re-reads them from the stored position;
- commit: only positions that are already durable, and only for partitions still owned.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.config import StreamerConfig
from streamer.sources.base import FatalSourceError, Record, SourceIdentities

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str
    topic: str
    also_topics: tuple[str, ...] = ()  # read with `topic` by the same consumer (the outcome join's two topics)
    group_id: str = StreamerConfig.group_id
    client_id: str = "rankrl-streamer"
    max_poll_records: int = StreamerConfig.max_poll_records
    session_timeout_ms: int = StreamerConfig.session_timeout_ms
    group_instance_id: str | None = None  # static membership (KIP-345): a restart takes its partitions back at once
    bootstrap_timeout_ms: int = 15_000
    # 1 MiB (the default) is ~450 events of 2.3 KB: each poll then waits on a fetch round trip
    max_partition_fetch_bytes: int = 8 << 20
    security_protocol: str = StreamerConfig.security_protocol
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = None

    def client_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            kw.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        for k in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password"):
            if getattr(self, k):
                kw[k] = getattr(self, k)
        return kw


class _AuthFailureCapture(logging.Handler):
    """Remembers an authentication or TLS failure kafka-python logs while connecting (it retries until its
    bootstrap deadline and then reports only "Unable to bootstrap", the cause being in its own log lines).

    Kafka 4.x closes the socket on a failed SCRAM exchange without an error response (the broker logs
    "invalid credentials"), so with SASL on, a connection dropped during login counts as a refused login.
    """

    def __init__(self, sasl: bool) -> None:
        super().__init__(level=logging.WARNING)
        self.sasl = sasl
        self.failure: str | None = None
        self.tls: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if self.tls is None and ("Handshake failed" in msg or "[SSL" in msg):
            self.tls = msg[msg.find("Handshake failed") if "Handshake failed" in msg else msg.find("[SSL") :]
            self.tls = self.tls.split(" (backoff")[0]
        if self.failure is not None:
            return
        if "SaslAuthenticationFailed" in msg or "Authentication failed" in msg:
            self.failure = msg
        elif self.sasl and "socket disconnected" in msg:
            self.failure = "the broker closed the connection during the SASL login"


def _auth_failed(settings: KafkaSettings, detail: object) -> FatalSourceError:
    """One message for a refused login, whether the broker answered with an error or dropped the connection."""
    return FatalSourceError(
        f"kafka authentication failed at {settings.bootstrap_servers} (user {settings.sasl_username!r}, "
        f"mechanism {settings.sasl_mechanism}; wrong username, password or mechanism?): {detail}"
    )


def _tls_failed(settings: KafkaSettings, detail: str) -> FatalSourceError:
    """The cause of a failed TLS handshake in words an operator can act on, with what OpenSSL said."""
    if "mismatch" in detail:
        why = ("the broker's certificate does not hold the host name or address connected to: connect by a name "
               "the certificate holds, or reissue it")  # fmt: skip
    elif "CERTIFICATE_VERIFY_FAILED" in detail:
        why = (
            f"the broker's certificate is not signed by a CA in streamer.ssl_cafile ({settings.ssl_cafile or 'unset'})"
        )
    else:
        why = ("the client certificate or key could not be used (streamer.ssl_certfile, ssl_keyfile, ssl_password: "
               "a wrong file, a key that does not match the certificate, or a wrong password)")  # fmt: skip
    return FatalSourceError(f"kafka TLS handshake with {settings.bootstrap_servers} failed: {why}. {detail}")


def _auth_errors() -> tuple[type[BaseException], ...]:
    import kafka.errors as ke

    names = (
        "SaslAuthenticationFailedError",
        "AuthenticationFailedError",
        "AuthenticationMethodNotSupported",
        "TopicAuthorizationFailedError",
        "GroupAuthorizationFailedError",
    )
    return tuple(getattr(ke, n) for n in names if hasattr(ke, n))


def reset_hint(topic: str) -> str:
    return (
        f"If the topic was recreated or moved on purpose, stop every streamer of this buffer, run `rankrl "
        f"reset-positions {topic} --buffer DIR --reason TEXT` once and start again: the topic is then read from its "
        f"beginning (the rows already stored stay). Otherwise point the streamer at the cluster it was reading."
    )


class KafkaSource:
    """A consumer-group member reading one topic; commits only durable positions.

    Positions are offsets in one particular topic: a topic deleted and recreated under the same name, or the same
    name on another cluster, has other records at those offsets. The buffer keeps each topic's id and cluster id
    beside its positions; a partition whose stored position belongs to another topic (other ids, or a position past
    the partition's end) stops the streamer with an error naming both, never a silent skip.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        stored_positions: Callable[[], dict[str, int]],
        on_revoked: Callable[[set[str]], None],
        identities: SourceIdentities | None = None,
    ) -> None:
        from kafka import ConsumerRebalanceListener, KafkaConsumer
        from kafka.errors import KafkaError

        self.settings = settings
        self._stored_positions = stored_positions
        self._on_revoked = on_revoked
        self._identities = identities
        self._resetting: set[str] = set()  # topics an operator reset, until their partitions are settled
        self._lock = threading.Lock()
        self._new: set[Any] = set()
        self._floor: dict[Any, int] = {}
        self._held: list[Record] = []
        self._paused = False
        source = self

        class Listener(ConsumerRebalanceListener):
            # Runs on kafka-python's IO thread: no blocking consumer calls here.
            def on_partitions_revoked(self, revoked: Any) -> None:
                source._revoke(revoked, "revoked")

            def on_partitions_assigned(self, assigned: Any) -> None:
                with source._lock:
                    source._new |= set(assigned)
                log.info("kafka assigned partitions=%s", sorted(tp.partition for tp in assigned))

            def on_partitions_lost(self, lost: Any) -> None:
                source._revoke(lost, "lost")

        auth = _AuthFailureCapture(sasl=bool(settings.sasl_mechanism))
        logging.getLogger("kafka").addHandler(auth)
        try:
            self.consumer = KafkaConsumer(
                group_id=settings.group_id,
                client_id=settings.client_id,
                enable_auto_commit=False,  # commit only what the buffer holds durably
                auto_offset_reset="earliest",  # a new group must not skip what was produced before it joined
                max_poll_records=settings.max_poll_records,
                session_timeout_ms=settings.session_timeout_ms,
                group_instance_id=settings.group_instance_id,
                max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
                bootstrap_timeout_ms=settings.bootstrap_timeout_ms,
                **settings.client_kwargs(),
            )
        except (KafkaError, *_auth_errors()) as e:
            # kafka-python retries a failed login with backoff until its bootstrap deadline, then reports only
            # a timeout: name the real cause, and let the supervisor's restart policy do any retrying.
            if auth.failure or isinstance(e, _auth_errors()):
                raise _auth_failed(settings, auth.failure or repr(e)) from None
            if auth.tls:
                raise _tls_failed(settings, auth.tls) from None
            raise FatalSourceError(f"cannot connect to kafka at {settings.bootstrap_servers}: {e}") from None
        finally:
            logging.getLogger("kafka").removeHandler(auth)
        self.topics = [settings.topic, *settings.also_topics]
        self.consumer.subscribe(self.topics, listener=Listener())

    def key(self, tp: Any) -> str:
        return f"kafka:{tp.topic}:{tp.partition}"

    def _revoke(self, tps: Any, why: str) -> None:
        keys = {self.key(tp) for tp in tps}
        with self._lock:
            self._new -= set(tps)
            for tp in tps:
                self._floor.pop(tp, None)
            self._held = [r for r in self._held if r.key not in keys]
        if keys:
            self._on_revoked(keys)
            log.info(
                "kafka %s partitions=%s (unsealed rows dropped; the next owner re-reads them)",
                why,
                sorted(tp.partition for tp in tps),
            )

    def _settle_new_partitions(self) -> set[Any]:
        """Seek every newly assigned partition to its floor; returns them (their fetched records are stale).

        Always seek, even forwards of the consumer's position: on a rebalance this process's own partitions are
        revoked too (their unsealed rows dropped) and come back with a position past those rows.
        """
        from kafka.errors import KafkaError

        with self._lock:
            new, self._new = self._new, set()
        if not new:
            return new
        try:
            self._settle(new)
        except KafkaError as e:  # the broker went away mid-rebalance: settle them on a later poll
            log.warning("kafka: cannot settle partitions %s yet (%s); retrying", sorted(map(str, new)), e)
            with self._lock:
                self._new |= new & set(self.consumer.assignment())
        return new

    def _settle(self, new: set[Any]) -> None:
        stored = self._stored_positions()
        for topic in {tp.topic for tp in new}:
            if self._check_identity(topic, stored):
                self._resetting.add(topic)  # kept until its partitions are settled (a retry must not forget it)
        reset = set(self._resetting)
        ends = self.consumer.end_offsets(list(new), timeout_ms=10_000)
        for tp in new:
            # after a reset the group's committed offsets may still be the old topic's: read from the beginning
            committed = None if tp.topic in reset else self.consumer.committed(tp)
            floor = max(stored.get(self.key(tp), 0), committed or 0)
            end = ends.get(tp)
            if end is not None and floor > end:
                raise FatalSourceError(
                    f"kafka topic {tp.topic} partition {tp.partition}: the stored position {floor} (buffer "
                    f"{stored.get(self.key(tp))}, group {committed}) is past the partition's end {end}: the topic was "
                    f"recreated, or this is another cluster. {reset_hint(tp.topic)}"
                )
            self._floor[tp] = floor
            self.consumer.seek(tp, floor)
            log.info(
                "kafka partition=%d resumes at %d (stored %s, committed %s)",
                tp.partition,
                floor,
                stored.get(self.key(tp)),
                committed,
            )
        self._resetting -= {tp.topic for tp in new}

    def _check_identity(self, topic: str, stored: dict[str, int]) -> bool:
        """Compare the topic's ids with the buffer's record of them (recording them the first time); True when
        an operator reset is pending (the topic is read from its beginning), FatalSourceError on a mismatch."""
        if self._identities is None:
            return False
        client = getattr(self.consumer, "_client", None)  # kafka-python keeps the cluster metadata there
        cluster = getattr(client, "cluster", None)
        topic_id = cluster.topic_id(topic) if cluster is not None else None
        now = {"topic_id": str(topic_id) if topic_id else None, "cluster_id": getattr(cluster, "cluster_id", None)}
        source = f"kafka:{topic}"
        before = self._identities.source_identity(source)
        if before is None or "reset" in before:
            self._identities.record_source_identity(source, now)
            if before is not None:
                log.warning("kafka topic %s: positions were reset (%s); reading from the beginning, ids %s",
                            topic, before["reset"], now)  # fmt: skip
            return before is not None
        changed = [f for f in ("cluster_id", "topic_id") if before.get(f) and now.get(f) and before[f] != now[f]]
        if changed:
            at = {k.rsplit(":", 1)[1]: v for k, v in stored.items() if k.startswith(f"kafka:{topic}:")}
            raise FatalSourceError(
                f"kafka topic {topic} is not the one the buffer's positions were read from: "
                + ", ".join(f"{f} was {before[f]}, now {now[f]}" for f in changed)
                + f". Stored positions by partition: {at}; reading on from them would skip or repeat records. "
                + reset_hint(topic)
            )
        if now != before and all(now.values()):
            self._identities.record_source_identity(source, now)  # ids learnt since (a newer broker)
        return False

    def poll(self, timeout_s: float) -> list[Record]:
        from kafka.errors import KafkaError

        try:
            batches = self.consumer.poll(timeout_ms=int(timeout_s * 1000))
            settled = self._settle_new_partitions()
        except _auth_errors() as e:
            raise _auth_failed(self.settings, repr(e)) from None
        except KafkaError as e:  # a broker outage: nothing read now; the loop reports the outage (connected())
            log.warning("kafka poll: %s", e)
            return []
        assigned = self.consumer.assignment()
        out: list[Record] = []
        for tp, msgs in batches.items():
            if tp not in assigned or tp in settled:
                continue  # not ours, or fetched before the seek: read again from the floor
            floor = self._floor.get(tp, 0)
            key = self.key(tp)
            for m in msgs:
                if m.offset < floor:
                    continue
                out.append(Record(key, m.offset, m.offset + 1, m.value, tp.topic, tp.partition, m.timestamp, m.key))
        if self._paused:
            self._held.extend(out)
            return []
        if self._held:
            out, self._held = self._held + out, []
        return out

    def commit(self, positions: dict[str, int]) -> bool:
        from kafka import TopicPartition
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        assigned = self.consumer.assignment()
        offsets = {}
        for key, nxt in positions.items():
            _, topic, part = key.split(":", 2)
            tp = TopicPartition(topic, int(part))
            if tp in assigned:
                offsets[tp] = OffsetAndMetadata(nxt, "", -1)
        if not offsets:
            return True
        try:
            self.consumer.commit(offsets)
            return True
        except KafkaError as e:
            # The data is durable already: the next owner resumes from the stored positions.
            log.warning("kafka commit failed (data is durable; continuing): %s", e)
            return False

    def pause(self) -> None:
        self._paused = True
        self.consumer.pause(*self.consumer.assignment())

    def resume(self) -> None:
        self._paused = False
        self.consumer.resume(*self.consumer.assignment())

    def lag(self) -> dict[str, int]:
        out = {}
        for tp in self.consumer.assignment():
            hw = self.consumer.highwater(tp)
            if hw is None:
                continue
            try:
                name = str(tp.partition) if len(self.topics) == 1 else f"{tp.topic}:{tp.partition}"
                out[name] = max(0, hw - self.consumer.position(tp))
            except Exception:  # position unknown during a rebalance
                continue
        return out

    def connected(self) -> bool:
        client = getattr(self.consumer, "_client", None)  # kafka-python: the network client and cluster metadata
        if client is None:
            return True
        return any(client.connected(b.node_id) for b in client.cluster.brokers())

    def behind(self) -> set[str]:
        out = set()
        for tp in self.consumer.assignment():
            hw = self.consumer.highwater(tp)
            try:
                if hw is None or tp in self._new or self.consumer.position(tp) < hw:
                    out.add(self.key(tp))
            except Exception:  # position unknown during a rebalance: not read yet
                out.add(self.key(tp))
        return out

    def caught_up(self) -> bool:
        """Partitions assigned and nothing left behind them, as the broker says now: the high-water marks of the
        last fetch go stale in an outage and would make one look like idleness (waiting for a rebalance is not
        idle either). One ListOffsets round trip; the loop asks only when nothing else is happening."""
        from kafka.errors import KafkaError

        assignment = list(self.consumer.assignment())
        if not assignment or self._new:
            return False
        try:
            ends = self.consumer.end_offsets(assignment, timeout_ms=2000)
            return all(self.consumer.position(tp) >= ends[tp] for tp in assignment)
        except (KafkaError, KeyError):  # no broker answered, or a partition moved: not known to be caught up
            return False

    def close(self) -> None:
        self.consumer.close(autocommit=False)
