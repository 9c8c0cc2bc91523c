"""Session fixtures: one real Kafka broker for the whole run (see tests/kafka_broker.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kafka_broker import KafkaBroker, kafka_broker


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A real broker; fails (never skips) with instructions when none can be had."""
    try:
        with kafka_broker(tmp_path_factory.mktemp("kafka")) as broker:
            yield broker
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


def create_topic(broker: KafkaBroker, name: str, partitions: int = 1) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, client_id="rankrl-tests")
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
