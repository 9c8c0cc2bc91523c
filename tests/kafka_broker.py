"""Finding a real Kafka broker for the tests: KAFKA_BOOTSTRAP_SERVERS, else the local jar broker, else Docker.

Never a mock. When none can be had the Kafka tests fail (not skip) with a message saying how to get one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BROKER_SH = ROOT / "ci" / "kafka" / "broker.sh"
KAFKA_VERSION = "4.1.1"

HOW_TO_GET_ONE = (
    "no Kafka broker: set KAFKA_BOOTSTRAP_SERVERS, or run `ci/kafka/broker.sh fetch` "
    "(needs Java 17 + Maven Central), or start a Docker engine"
)


@dataclass(frozen=True)
class KafkaBroker:
    bootstrap: str
    sasl_bootstrap: str | None = None  # a SASL_PLAINTEXT listener with SCRAM users, when known
    scram_user: str | None = None
    scram_password: str | None = None
    ssl_bootstrap: str | None = None  # an SSL listener whose certificate names kafka.rankrl.test only, when known
    ssl_cafile: str | None = None  # that certificate (PEM)
    origin: str = "environment"

    def topic(self, prefix: str = "t") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _java_ok() -> bool:
    if shutil.which("java") is None:
        return False
    out = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False).stderr
    for token in out.split('"')[1:2]:
        return int(token.split(".")[0]) >= 17
    return False


def _docker_ok() -> bool:
    return (
        shutil.which("docker") is not None
        and subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=20).returncode == 0
    )


def _jars() -> Path | None:
    """The Kafka jars `ci/kafka/broker.sh fetch` got, when they and Java 17 are here."""
    lib = Path(os.environ.get("KAFKA_LIB_DIR", ROOT / ".cache" / f"kafka-{KAFKA_VERSION}" / "lib"))
    return lib if (lib / f"kafka_2.13-{KAFKA_VERSION}.jar").exists() and _java_ok() else None


def _start_jar_broker(run_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Start a jar broker in `run_dir`: (the environment its broker.sh commands need, the variables it printed)."""
    env = {**os.environ, "KAFKA_LIB_DIR": str(_jars()), "KAFKA_RUN_DIR": str(run_dir)}
    r = subprocess.run([str(BROKER_SH), "start"], env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"the local jar broker did not start:\n{r.stderr}")
    return env, dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)


def _broker_from(vals: Mapping[str, str], origin: str) -> KafkaBroker:
    """A broker from the variables `broker.sh start` prints, which are also the environment's override names."""
    return KafkaBroker(
        bootstrap=vals["KAFKA_BOOTSTRAP_SERVERS"],
        sasl_bootstrap=vals.get("KAFKA_SASL_BOOTSTRAP_SERVERS"),
        scram_user=vals.get("KAFKA_SCRAM_USER"),
        scram_password=vals.get("KAFKA_SCRAM_PASSWORD"),
        ssl_bootstrap=vals.get("KAFKA_SSL_BOOTSTRAP_SERVERS"),
        ssl_cafile=vals.get("KAFKA_SSL_CAFILE"),
        origin=origin,
    )


@contextmanager
def kafka_broker(run_dir: Path) -> Iterator[KafkaBroker]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield _broker_from(os.environ, "environment")
        return
    if _jars() is not None:
        env, vals = _start_jar_broker(run_dir)
        try:
            yield _broker_from(vals, "jar broker")
        finally:
            subprocess.run([str(BROKER_SH), "stop"], env=env, capture_output=True, check=False)
        return
    if _docker_ok():
        from testcontainers.kafka import KafkaContainer  # type: ignore[import-untyped]

        with KafkaContainer().with_kraft() as kc:
            yield KafkaBroker(bootstrap=kc.get_bootstrap_server(), origin="testcontainers")
        return
    raise RuntimeError(HOW_TO_GET_ONE)


@dataclass(frozen=True)
class KillableBroker:
    """A private jar broker that a fault test may SIGKILL and start again on the same store and ports."""

    broker: KafkaBroker
    env: dict[str, str]

    def kill(self) -> None:
        subprocess.run([str(BROKER_SH), "kill"], env=self.env, capture_output=True, check=True)

    def resume(self) -> None:
        r = subprocess.run([str(BROKER_SH), "resume"], env=self.env, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"the broker did not come back:\n{r.stderr}")


@contextmanager
def killable_broker(run_dir: Path) -> Iterator[KillableBroker]:
    """Its own broker (never the session's, which other tests share), from the jars `ci/kafka/broker.sh fetch` got."""
    if _jars() is None:
        raise RuntimeError("a broker to kill needs the jar broker: run `ci/kafka/broker.sh fetch` (Java 17, Maven)")
    env, vals = _start_jar_broker(run_dir)
    try:
        yield KillableBroker(_broker_from(vals, "jar broker"), env)
    finally:
        subprocess.run([str(BROKER_SH), "stop"], env=env, capture_output=True, check=False)
