"""A faust App for our stream jobs: broker, topic prefix, raw bytes in and out, state dir.

Values travel through faust as raw bytes and are decoded by the job with the project's
Avro contracts (``streams.kafka.serde``) inside the agent, so a record that does not
decode becomes a dead letter (R17) instead of an exception in faust's deserializer.

Faust names its own topics (table changelogs, the leader topic) after the app id; the app
id is the job's internal-topic name ``<prefix><job>.faust``, so tests and demos sharing
one broker never share a changelog and the job's R18 ACLs cover every topic faust makes.

Partitioning: faust's producer (aiokafka) hashes keys with murmur2, while every other
producer of this project (confluent-kafka, librdkafka's default ``consistent_random``)
hashes with CRC-32. Jobs therefore pick the partition of every record they write
themselves with ``partition_for`` so a key lands where the router would have put it
(a log-store tombstone must land on its record's partition, or compaction never deletes).

Used by the audit index (``streams.jobs.audit_index``): faust where at-least-once is exact by
construction (a table of decisions keyed by decision id) and its web views serve.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from confluent_kafka.admin import AdminClient
from faust.types import TopicT

from streams.kafka.clients import client_config, faust_security
from streams.kafka.topics import Topology, internal_topic, replication_of

log = logging.getLogger(__name__)

AT_LEAST_ONCE = "at_least_once"


def partition_for(key: str | bytes, partitions: int) -> int:
    """The partition librdkafka's default partitioner (``consistent_random``) picks for a key."""
    data = key.encode() if isinstance(key, str) else key
    return zlib.crc32(data) % partitions


@dataclass(frozen=True, slots=True)
class FaustSettings:
    """What a job's faust App needs; everything else is fixed here for every job."""

    job: str  # "retention", "usage": with the topic prefix, the app id and consumer group
    bootstrap_servers: str
    topics: Topology
    state_dir: Path
    processing_guarantee: str = AT_LEAST_ONCE
    commit_interval_s: float = 1.0
    partitions: int = 6  # default partition count of the topics faust creates
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def app_id(self) -> str:
        """``<prefix><job>.faust``: the consumer group, and the prefix of every topic faust
        creates (``<app id>-<table>-changelog``, the leader topic), so they all fall under
        the job's internal-topic prefix and its ACLs (R18, ``topics.internal_topic``)."""
        return internal_topic(self.topics, self.job, "faust")


def build_app(settings: FaustSettings) -> faust.App:
    """A faust App wired to our broker: raw bytes, memory tables backed by changelogs."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    # The topics faust creates itself (its leader topic, a table changelog not made ahead)
    # get the deployment's replication like every other topic (issue 15).
    replication = replication_of(AdminClient(client_config(settings.bootstrap_servers)))
    brokers = [f"kafka://{host}" for host in settings.bootstrap_servers.split(",") if host]
    options: dict[str, Any] = {
        "broker": brokers,
        "store": "memory://",
        "datadir": str(settings.state_dir),
        "web_enabled": False,  # no HTTP port per worker; metrics go through logs/topics
        "key_serializer": "raw",
        "value_serializer": "raw",
        "topic_replication_factor": replication.factor,
        "topic_partitions": settings.partitions,
        "table_standby_replicas": 0,
        "consumer_auto_offset_reset": "earliest",
        "broker_commit_interval": settings.commit_interval_s,
        "processing_guarantee": settings.processing_guarantee,
        # acks=all. faust has no idempotence setting for its at-least-once producer
        # (aiokafka's enable_idempotence is set only for its transactions); it carries the
        # audit index's table changelog, keyed by decision id: a repeat rewrites the same.
        "producer_acks": -1,
        # A crashed worker's partitions move on within seconds (the retention job's
        # deletion bound is a minute; faust's default session timeout alone is a minute).
        "broker_session_timeout": 10.0,
        "broker_heartbeat_interval": 1.0,
        "stream_buffer_maxsize": 4096,
        "producer_linger": 0.005,  # changelog writes travel in batches, not one per request
        **faust_security(),
    }
    options.update(settings.extra)
    # Never log record values: faust and aiokafka print keys and values at DEBUG level.
    for name in ("faust", "aiokafka", "mode"):
        logger = logging.getLogger(name)
        if logger.level < logging.INFO:  # NOTSET (0) would inherit a DEBUG root
            logger.setLevel(logging.INFO)
    return faust.App(settings.app_id, **options)


def raw_topic(app: faust.App, *names: str, partitions: int | None = None) -> TopicT:
    """A topic (or several consumed together) whose keys and values stay bytes."""
    return app.topic(
        *names,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
    )
