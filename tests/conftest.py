"""Session fixtures shared by every test: the Kafka broker."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


def _docker_available() -> bool:
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real broker: ``KAFKA_BOOTSTRAP_SERVERS`` if set, a testcontainer if Docker runs,
    otherwise the project's own KRaft broker from Maven Central jars, once per session."""
    address = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if address:
        yield address
        return
    if _docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    from streams.infra.broker import LocalKafka

    with LocalKafka() as kafka:
        yield kafka.bootstrap_servers
