"""Exactly-once state for jobs on the transactional loop: a co-partitioned changelog.

``streams.kafka.transactional`` makes outputs and consumed offsets atomic. A job that keeps
state (the usage totals, the safety-evaluation de-duplication set) must make its state
just as atomic with its offsets. Here the state is written as records of a job-internal
compacted changelog topic *in the same transaction*, to the partition with the number of
the input partition they belong to (co-partitioned). A worker assigned input partition p
rebuilds p's state from changelog partition p with ``StateReader``, which reads
``read_committed`` until every transaction on that partition is resolved: the state it
rebuilds is exactly the state of the committed offsets, whether the previous owner
committed, was killed before committing, or is a zombie whose transaction the broker will
abort.

``StatefulLoop`` is the transactional loop plus what such state needs: outputs to an
explicit partition (``PartitionedOutput``, also with an explicit timestamp), dropping the
state of revoked partitions, discarding (not committing) a batch during which partitions
were revoked, and dropping all state after an aborted transaction.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Protocol

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.kafka.clients import client_config
from streams.kafka.metrics import JobMetrics
from streams.kafka.transactional import (
    LoopConfig,
    Output,
    Processor,
    TransactionalLoop,
)

log = logging.getLogger(__name__)


class StatefulProcessor(Processor, Protocol):
    metrics: JobMetrics

    def forget(self, partitions: list[int] | None = None) -> None:
        """Drop the state of these input partitions (all when None); rebuild it when next used."""
        ...

    def arrange(self, outputs: list[Output]) -> list[Output]:
        """The outputs of one transaction, in the order they are to be written."""
        ...


class StatefulLoop(TransactionalLoop):
    processor: StatefulProcessor

    def __init__(self, config: LoopConfig, processor: StatefulProcessor) -> None:
        super().__init__(config, processor)
        self._revoked_in_step = False

    def step(self) -> None:
        self._revoked_in_step = False
        super().step()
        self.processor.metrics.observe_consumer_lag(self.consumer)

    def arrange(self, outputs: list[Output]) -> list[Output] | None:
        if self._revoked_in_step:
            # Offsets of this batch may belong to another worker by now: re-read instead.
            log.info("partitions revoked mid-batch: batch discarded, re-reading")
            self.processor.forget()
            return None
        return self.processor.arrange(outputs)

    def aborted(self) -> None:
        # The loop went back to the committed offsets: the state must follow.
        self.processor.forget()

    def revoked(self, partitions: list[TopicPartition]) -> None:
        self._revoked_in_step = True
        self.processor.forget([tp.partition for tp in partitions])


class StateReader:
    """Reads one partition of a changelog exactly: every committed record, none aborted.

    Reads ``read_committed`` from the beginning until the position reaches the partition's
    end as it was when the read started (the high watermark, uncommitted records included):
    a ``read_committed`` consumer only gets there once every transaction that wrote to the
    partition is resolved (committed or aborted).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        timeout_s: float = 120.0,
        group_prefix: str = "state-reader",
    ) -> None:
        self.topic = topic
        self.timeout_s = timeout_s
        base = {
            **client_config(bootstrap_servers),
            "enable.auto.commit": False,
            # never joins or commits; named after the job so its ACLs cover it (R18)
            "group.id": f"{group_prefix}-state-reader-{uuid.uuid4().hex[:8]}",
        }
        self._reader = Consumer(
            {**base, "isolation.level": "read_committed", "enable.partition.eof": False}
        )
        self._probe = Consumer({**base, "isolation.level": "read_uncommitted"})

    def read(self, partition: int) -> dict[bytes, bytes]:
        """The live records of the partition: key -> latest value, tombstoned keys removed."""
        live: dict[bytes, bytes] = {}
        tp = TopicPartition(self.topic, partition)
        _, end = self._probe.get_watermark_offsets(tp, timeout=15)
        if end <= 0:
            return live
        self._reader.assign([TopicPartition(self.topic, partition, OFFSET_BEGINNING)])
        deadline = time.monotonic() + self.timeout_s
        try:
            while self._reader.position([tp])[0].offset < end:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.topic}/{partition} not read to its end in time")
                for message in self._reader.consume(5000, 0.2):
                    if message.error() is None:
                        _apply(message, live)
        finally:
            self._reader.unassign()
        return live

    def close(self) -> None:
        self._reader.close()
        self._probe.close()


def _apply(message: Message, live: dict[bytes, bytes]) -> None:
    key = message.key()
    if key is None:
        return
    value = message.value()
    if value is None:
        live.pop(key, None)
    else:
        live[key] = value


def ensure_copartitioned_topic(
    bootstrap_servers: str,
    name: str,
    like: str,
    config: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> str:
    """Create the compacted changelog ``name`` with as many partitions as topic ``like``."""
    admin = AdminClient(client_config(bootstrap_servers))
    metadata = admin.list_topics(timeout=timeout).topics
    source = metadata.get(like)
    if source is None or source.error is not None:
        raise RuntimeError(f"topic {like} does not exist")
    partitions = len(source.partitions)
    existing = metadata.get(name)
    if existing is not None and existing.error is None:
        if len(existing.partitions) != partitions:
            raise RuntimeError(f"{name} must have {partitions} partitions like {like}")
        return name
    configs = {"cleanup.policy": "compact", **(config or {})}
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=configs)],
        operation_timeout=timeout,
    )
    for future in futures.values():
        try:
            future.result()
        except Exception as exc:  # another worker created it first
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = admin.list_topics(name, timeout=timeout).topics.get(name)
        if (
            info is not None
            and info.error is None
            and all(p.leader >= 0 for p in info.partitions.values())
        ):
            break
        time.sleep(0.1)
    return name
