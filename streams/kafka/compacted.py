"""Read compacted state topics (data controls, watermark, flags, deletions) in full.

Every worker reads these topics from the beginning, outside any consumer group,
so a restart rebuilds the same state (R12: "restart rebuilds the ledger from
the topic") and every worker of a group sees every org's settings.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from streams.kafka.clients import client_config

log = logging.getLogger(__name__)


class CompactedReader:
    def __init__(
        self,
        bootstrap_servers: str,
        topics: Sequence[str],
        on_message: Callable[[Message], None],
        extra: dict[str, Any] | None = None,
        group_id: str = "unused-state-reader",
    ) -> None:
        """``group_id``: never joined nor committed, but librdkafka looks its coordinator up,
        so under ACLs it must be a group the job's principal may use (R18)."""
        conf: dict[str, Any] = {
            **client_config(bootstrap_servers),
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            # The end-of-partition event carries the offset the reader has fetched up to,
            # past a transaction marker that ends the partition (the position stops short
            # of it: no record is delivered for a marker).
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 100,
        }
        conf.update(extra or {})
        self._consumer = Consumer(conf)
        self._bootstrap_servers = bootstrap_servers
        self._admin = AdminClient(client_config(bootstrap_servers))
        self._on_message = on_message
        metadata = self._consumer.list_topics(timeout=30)
        partitions = []
        for topic in topics:
            info = metadata.topics.get(topic)
            if info is None or info.error is not None:
                raise RuntimeError(f"state topic {topic} does not exist")
            partitions += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in info.partitions]
        self._partitions = partitions
        self._consumer.assign(partitions)
        self._fetched_to: dict[tuple[str, int], int] = {}
        self.applied = 0

    def poll(self, max_messages: int = 5000, timeout_s: float = 0.0) -> int:
        """Apply whatever has arrived; never blocks longer than ``timeout_s``."""
        messages = self._consumer.consume(max_messages, timeout_s)
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    tp = (str(message.topic()), int(message.partition() or 0))
                    self._fetched_to[tp] = int(message.offset() or 0)
                else:
                    log.warning("state reader error: %s", error)
                continue
            self._on_message(message)
            self.applied += 1
        return len(messages)

    def end_offsets(self, topic: str | None = None) -> dict[tuple[str, int], int]:
        """The current end offset of each partition (of ``topic``, or of every topic read)."""
        return {
            (tp.topic, tp.partition): end_offset(self._consumer, tp)
            for tp in self._partitions
            if topic is None or tp.topic == topic
        }

    def ask_published_ends(self) -> PendingEnds:
        """Every partition's end as of now, asked without waiting for the answer: one
        ListOffsets request per broker (20x faster here than asking partition by partition,
        and off the caller's thread: under load an answer took up to tens of ms).

        The high watermark, not the last stable offset: a transaction the control plane has
        committed may not be visible to ``read_committed`` readers yet (its markers are
        written after the commit returns), so the LSO can stop short of a fact published
        just before a request. Up to the high watermark, the reader gets past a
        transaction only once it is resolved; an open one holds records back until then
        (fail closed; past ``facts_stall_ms`` they are decided without training)."""
        return PendingEnds(self._ask_ends, on_failure=self._renew_admin)

    def _renew_admin(self) -> None:
        """A new admin client, with fresh metadata. After a partition leader died and came
        back, librdkafka's admin ListOffsets kept failing with FENCED_LEADER_EPOCH (its
        cached leader epoch is never refreshed) while a new client was answered at once:
        measured on three brokers, test_cluster_chaos.py; the router exited after 30 s."""
        self._admin = AdminClient(client_config(self._bootstrap_servers))

    def _ask_ends(self) -> dict[TopicPartition, Any]:
        latest = OffsetSpec.latest()
        wanted = {TopicPartition(tp.topic, tp.partition): latest for tp in self._partitions}
        return dict(
            self._admin.list_offsets(
                wanted, isolation_level=IsolationLevel.READ_UNCOMMITTED, request_timeout=10
            )
        )

    def reached(self, ends: dict[tuple[str, int], int]) -> bool:
        """Whether everything before ``ends`` has been applied."""
        wanted = [TopicPartition(t, p) for (t, p), end in ends.items() if end > 0]
        if not wanted:
            return True
        positions = self._consumer.position(wanted)
        fetched_to = self._fetched_to
        return all(
            max(tp.offset, fetched_to.get((tp.topic, tp.partition), -1))
            >= ends[(tp.topic, tp.partition)]
            for tp in positions
        )

    def catch_up(self, timeout_s: float = 60.0) -> None:
        """Apply everything published before now, so decisions start on complete state."""
        ends = self.end_offsets()
        deadline = time.monotonic() + timeout_s
        quiet = 0
        while time.monotonic() < deadline:
            if self.reached(ends):
                return
            quiet = quiet + 1 if self.poll(timeout_s=0.2) == 0 else 0
            # A transaction marker at the very end is never delivered, so the position can
            # stop one short of the end: accept a partition set that is quiet for 3 s then.
            if quiet >= 15 and self.reached({k: v - 1 for k, v in ends.items()}):
                return
        raise TimeoutError("state topics not read to their end in time")

    def close(self) -> None:
        self._consumer.close()
        # An AdminClient has no close(): dropping the only reference destroys it now. Left to
        # the reader's lifetime, it outlived the broker in-process (the job loop that holds
        # the reader is frozen out of the cyclic collector) and logged refused reconnects.
        self.__dict__.pop("_admin", None)  # a second close() is harmless


_WAITS_KEPT = 10_000  # waits of recent marks remembered for the audit (R16)


class PendingEnds:
    """End offsets asked of the broker, answered later (``ends`` is None until then). A
    failed answer, or one not had within ``answer_s``, is asked again (``on_failure``
    first); none had within ``timeout_s`` raises (the worker exits and is restarted)."""

    def __init__(
        self,
        ask: Callable[[], dict[TopicPartition, Any]],
        timeout_s: float = 30.0,
        on_failure: Callable[[], None] | None = None,
        answer_s: float = 12.0,
    ) -> None:
        self._ask = ask
        self._on_failure = on_failure
        self._timeout_s = timeout_s
        self._answer_s = answer_s
        self._since = self._asked = time.monotonic()
        self._futures = ask()
        self._ends: dict[tuple[str, int], int] | None = None

    def ends(self) -> dict[tuple[str, int], int] | None:
        if self._ends is None:
            if not all(future.done() for future in self._futures.values()):
                now = time.monotonic()
                if now - self._since > self._timeout_s:
                    raise TimeoutError("facts' end offsets not answered in time")
                if now - self._asked > self._answer_s:  # asked of a client that lost its way
                    self._again()
                return None
            try:
                self._ends = {
                    (tp.topic, tp.partition): int(future.result().offset)
                    for tp, future in self._futures.items()
                }
            except KafkaException:
                if time.monotonic() - self._since > self._timeout_s:
                    raise
                self._again()
        return self._ends

    def _again(self) -> None:
        if self._on_failure is not None:
            self._on_failure()
        self._asked = time.monotonic()
        self._futures = self._ask()


class ReadBarrier:
    """Which consumed input records may be acted on: those whose state is complete.

    A record may depend on any state record published before it was read (an account
    deletion acknowledged a millisecond before the request that follows it). After each
    consume the loop hands the batch to ``mark``, which asks the broker for the state
    topics' end offsets *then*: everything published before the batch was read lies below
    them. A record is ready once the answer is in and the reader has applied everything
    below it. The end offsets are asked once per batch, never per record, and the answer
    is not waited for: the batch waits (deferred, in order) while the loop goes on.
    """

    def __init__(self, reader: CompactedReader) -> None:
        self._reader = reader
        self._marks: deque[tuple[int, PendingEnds, float]] = deque()
        self._next = 0
        self._passed = -1  # the last mark whose end offsets the reader has reached
        self._waited: dict[int, float] = {}  # mark -> seconds from reading to passing it
        # per input partition, in reading order: (last offset of a batch, its mark, read at)
        self._batches: dict[tuple[str, int], deque[tuple[int, int, float]]] = {}

    def mark(self, messages: Sequence[Message]) -> None:
        last: dict[tuple[str, int], int] = {}
        for message in messages:
            if message.error() is None:
                last[(str(message.topic()), int(message.partition() or 0))] = int(
                    message.offset() or 0
                )
        if not last:
            return
        read_at = time.monotonic()
        seq = self._next
        self._next += 1
        self._marks.append((seq, self._reader.ask_published_ends(), read_at))
        for tp, offset in last.items():
            self._batches.setdefault(tp, deque()).append((offset, seq, read_at))

    def advance(self) -> None:
        """Move past every mark the reader has reached (call after it polled)."""
        while self._marks:
            ends = self._marks[0][1].ends()
            if ends is None or not self._reader.reached(ends):
                return
            seq, _, read_at = self._marks.popleft()
            self._passed = seq
            self._waited[seq] = time.monotonic() - read_at
            if len(self._waited) > _WAITS_KEPT:
                del self._waited[next(iter(self._waited))]

    def status(self, topic: str, partition: int, offset: int) -> tuple[bool, float]:
        """Whether the record is ready, and how long it waited for the facts (seconds: from
        reading its batch to the facts being applied, or until now while it waits)."""
        batches = self._batches.get((topic, partition))
        # Batches come in reading order; after a rewind the same offsets are read and
        # marked again, and an earlier mark of a record stays valid (it was read before it).
        while batches:
            last, seq, read_at = batches[0]
            if last >= offset:
                if seq <= self._passed:
                    return True, self._waited.get(seq, 0.0)
                return False, time.monotonic() - read_at
            batches.popleft()
        # Never marked (the loop marks every batch it reads): not known to be ready.
        return False, float("inf")


def end_offset(consumer: Consumer, tp: TopicPartition, timeout_s: float = 30.0) -> int:
    """The partition's end offset, retrying while a new partition's leader settles in."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return int(consumer.get_watermark_offsets(tp, timeout=min(5.0, timeout_s))[1])
        except KafkaException as exc:
            if not settling(exc.args[0]):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def settling(error: KafkaError) -> bool:
    """Whether ``error`` passes once leaders have settled (a broker lost or back)."""
    return bool(error.retriable()) or error.code() in _SETTLING


# While leaders move (a broker lost or back), metadata can briefly not know a partition.
_SETTLING = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError._UNKNOWN_PARTITION,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TIMED_OUT,
)


def read_topic(
    bootstrap_servers: str,
    topic: str,
    idle_timeout_s: float = 2.0,
    partitions: Sequence[int] | None = None,
) -> Iterator[tuple[bytes | None, bytes | None, int, int]]:
    """Every committed record of ``topic`` (of ``partitions`` only, when given) from the
    beginning: (key, value, partition, offset)."""
    consumer = Consumer(
        {
            **client_config(bootstrap_servers),
            "group.id": f"streams-reader-{os.getpid()}-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=15).topics[topic]
        wanted = [
            TopicPartition(topic, p, OFFSET_BEGINNING)
            for p in metadata.partitions
            if partitions is None or p in partitions
        ]
        ends = {}
        for tp in wanted:
            ends[tp.partition] = end_offset(consumer, tp)
        consumer.assign(wanted)
        remaining = {p for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + idle_timeout_s
        while remaining and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.2):
                if message.error() is not None:
                    continue
                partition = int(message.partition() or 0)
                offset = int(message.offset() or 0)
                deadline = time.monotonic() + idle_timeout_s
                if offset + 1 >= ends[partition]:
                    remaining.discard(partition)
                yield message.key(), message.value(), partition, offset
    finally:
        consumer.close()
