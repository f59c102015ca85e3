"""Where and as whom every Kafka client of a job connects (R18: each job its own principal).

Jobs are configured through the environment, like their bootstrap servers:
``KAFKA_SECURITY_PROTOCOL`` (e.g. SASL_SSL), ``KAFKA_SASL_MECHANISM`` (e.g. PLAIN,
SCRAM-SHA-512), ``KAFKA_SASL_USERNAME``, ``KAFKA_SASL_PASSWORD``; unset means a
plaintext, unauthenticated connection (the local broker). The password is only ever
handed to the client library, never logged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

_LIBRDKAFKA = {
    "KAFKA_SECURITY_PROTOCOL": "security.protocol",
    "KAFKA_SASL_MECHANISM": "sasl.mechanism",
    "KAFKA_SASL_USERNAME": "sasl.username",
    "KAFKA_SASL_PASSWORD": "sasl.password",
}


def client_config(bootstrap_servers: str) -> dict[str, Any]:
    """confluent-kafka (librdkafka) settings for a producer, consumer or admin client."""
    config: dict[str, Any] = {"bootstrap.servers": bootstrap_servers}
    for variable, setting in _LIBRDKAFKA.items():
        value = os.environ.get(variable)
        if value:
            config[setting] = value
    return config


# Every producer of the project (issue 15): a write is acknowledged once every in-sync
# replica has it (at least the topic's min.insync.replicas), and retries after a leader
# change never duplicate or reorder it (idempotence; librdkafka would force acks=all with it).
DURABLE_PRODUCER: dict[str, Any] = {"acks": "all", "enable.idempotence": True}


def producer_config(
    bootstrap_servers: str, settings: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """librdkafka settings for a producer: ``client_config``, ``settings``, and
    ``DURABLE_PRODUCER``, which ``settings`` cannot weaken."""
    return {**client_config(bootstrap_servers), **(settings or {}), **DURABLE_PRODUCER}


def faust_security() -> dict[str, Any]:
    """faust-streaming (aiokafka) app settings for the same principal: ``broker_credentials``
    when SASL is configured, else nothing."""
    username = os.environ.get("KAFKA_SASL_USERNAME")
    if not username:
        return {}
    import faust

    protocol = os.environ.get("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT").upper()
    ssl_context = None
    if protocol == "SASL_SSL":
        import ssl

        ssl_context = ssl.create_default_context()
    return {
        "broker_credentials": faust.SASLCredentials(
            username=username,
            password=os.environ.get("KAFKA_SASL_PASSWORD", ""),
            mechanism=os.environ.get("KAFKA_SASL_MECHANISM", "PLAIN"),
            ssl_context=ssl_context,
        )
    }
