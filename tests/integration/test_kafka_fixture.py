"""The broker fixture hands the tests a real Kafka broker: a cluster with a controller, topics that can be created
and described, and (for the jar broker) a SASL listener. Everything else about Kafka is tested through rankrl."""

from __future__ import annotations

import pytest
from kafka.admin import KafkaAdminClient

from tests.conftest import create_topic
from tests.kafka_broker import KafkaBroker

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
