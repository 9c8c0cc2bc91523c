"""The broker fixture hands the tests a real Kafka broker: a cluster with a controller, topics that can be created
and described, and (for the jar broker) a SASL listener. Everything else about Kafka is tested through rankrl."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient

from tests.conftest import create_topic
from tests.kafka_broker import KafkaBroker, killable_broker

pytestmark = pytest.mark.kafka


def test_the_fixture_is_a_real_broker(kafka: KafkaBroker) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap, client_id="rankrl-tests")
    try:
        cluster = admin.describe_cluster()
        assert cluster["brokers"] and cluster["controller_id"] is not None and cluster["cluster_id"]
        topic = kafka.topic("fixture")
        create_topic(kafka, topic, partitions=3)
        (desc,) = admin.describe_topics([topic])
        assert desc["error_code"] == 0 and len(desc["partitions"]) == 3
    finally:
        admin.close()
    if kafka.origin == "jar broker":
        assert kafka.sasl_bootstrap and kafka.scram_user and kafka.scram_password


@pytest.mark.slow
def test_the_jar_broker_starts_with_a_cluster_id_that_looks_like_an_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One fresh cluster id in 32 started with '-', and `kafka-storage format -t -…` took it for an option: the
    broker did not start and a CI run failed. broker.sh now passes --cluster-id=ID; this id is such a one."""
    cluster_id = "-h8sPntNTo-aaxwtPk9aaw"
    monkeypatch.setenv("KAFKA_CLUSTER_ID", cluster_id)
    with killable_broker(tmp_path / "kafka") as k:
        admin = KafkaAdminClient(bootstrap_servers=k.broker.bootstrap, client_id="rankrl-tests")
        try:
            assert admin.describe_cluster()["cluster_id"] == cluster_id
        finally:
            admin.close()
