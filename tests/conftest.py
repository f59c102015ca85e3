"""Session fixtures shared by every test: the Kafka broker.

``kafka_bootstrap`` is one real broker per session, from the first of:

1. ``KAFKA_BOOTSTRAP_SERVERS`` (a broker someone runs already, e.g. ``bin/kafka-local``);
2. a Testcontainers ``KafkaContainer`` in KRaft mode, when a Docker engine answers (unless
   ``STREAMS_KAFKA_LIBS`` names the jars to run);
3. the project's own KRaft broker (:class:`streams.infra.broker.LocalKafka`) from the
   Maven Central jars pinned in ``infra/kafka/pom.xml``: needs only Java and Maven.

``kafka_authenticated`` is a second, SASL/PLAIN + ACL broker (always a ``LocalKafka``),
started only when a test asks for it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from streams.infra.broker import LIBS_ENV, LocalKafka

log = logging.getLogger(__name__)

# Confluent Platform 7.9 ships Apache Kafka 3.9, the release infra/kafka/pom.xml pins.
KAFKA_IMAGE = os.environ.get("KAFKA_TEST_IMAGE", "confluentinc/cp-kafka:7.9.0")
# The named SASL users of ``kafka_authenticated`` (besides the super user ``admin``).
AUTHENTICATED_USERS = {name: f"{name}-secret" for name in ("alice", "bob", "carol")}


def _docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of a real broker for the whole session (see the module docstring)."""
    address = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if address:
        yield address
        return
    # Jars named by STREAMS_KAFKA_LIBS (infra/kafka/compat-check) mean: run exactly those.
    if not os.environ.get(LIBS_ENV) and _docker_available():
        from testcontainers.community.kafka import KafkaContainer

        container = (
            KafkaContainer(KAFKA_IMAGE)
            .with_kraft()
            # single node: the transaction log must fit on one replica too
            .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
            .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
            .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
        )
        with container:
            yield container.get_bootstrap_server()
        return
    with LocalKafka() as kafka:
        log.info(
            "session broker: Kafka %s ready in %.2fs", kafka.kafka_version, kafka.startup_seconds
        )
        yield kafka.bootstrap_servers


@pytest.fixture(scope="session")
def kafka_authenticated() -> Iterator[LocalKafka]:
    """A started broker with SASL/PLAIN and the StandardAuthorizer (R18), once per session.

    Users: ``admin`` (super user, ``kafka.super_user``) and :data:`AUTHENTICATED_USERS`;
    nobody but ``admin`` may do anything until an ACL allows it. Connect with
    ``kafka.client_config("alice")`` (confluent-kafka) or ``kafka.aiokafka_config("alice")``.
    Tests share it, so each should use its own topic and group names.
    """
    with LocalKafka(authenticated=True, users=AUTHENTICATED_USERS) as kafka:
        yield kafka
