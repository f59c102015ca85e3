"""Exactly-once consume -> transform -> produce with Kafka transactions.

The loop reads with ``isolation.level=read_committed``, hands each record to a
``Processor`` and writes everything the processor returns, together with the
consumed offsets, in one transaction (``send_offsets_to_transaction`` with the
group metadata, KIP-447 fencing). A crash at any point either commits a batch
whole or not at all, so outputs are never lost nor duplicated.

A processor may *defer* a record (return ``None``): the record stays buffered,
its partition is paused, and its offset is not committed until it is decided.
The router uses that to wait for the R12 controls watermark without losing
order or exactly-once.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from streams.kafka.clients import client_config, producer_config
from streams.source import Source

log = logging.getLogger(__name__)


class Unavailable(TimeoutError):
    """Raised by a processor when something it must read to decide does not answer now (a
    broker lost, a partition without a leader): the turn is dropped with nothing of it
    written, and the loop goes back to the committed offsets and tries again after a pause,
    instead of exiting (a restarted worker would only wait for the same broker)."""


# The pause before a dropped turn is tried again.
RETRY_AFTER_S = 1.0


class PendingValue(Protocol):
    """A value still being computed elsewhere (``streams.kafka.offload``)."""

    def result(self) -> bytes: ...


class Output(NamedTuple):
    """One record to write. A NamedTuple: built for every output of every record, and
    cheaper to build than a frozen dataclass (0.29 against 0.52 µs)."""

    topic: str
    key: bytes | str | None
    value: bytes | PendingValue | None  # None is a tombstone
    partition: int = -1  # -1: the partitioner's choice by key
    timestamp_ms: int | None = None  # None: the time of producing


class Processor(Protocol):
    def refresh(self) -> list[Output]:
        """Called every loop turn before consuming: update state, return outputs to flush."""
        ...

    def process(self, message: Message) -> list[Output] | None:
        """Outputs for one input record, or None to defer it (it will be offered again)."""
        ...


@dataclass(frozen=True, slots=True)
class LoopConfig:
    bootstrap_servers: str
    group_id: str
    transactional_id: str
    input_topics: Sequence[str]
    # Records per transaction: each commit waits for every output to be acknowledged, so
    # fewer, larger transactions (router benchmark: 1,000 -> 5,000 gave +20 % rec/s).
    batch_size: int = 5000
    poll_timeout_s: float = 0.05
    transaction_timeout_ms: int = 15_000
    max_pending: int = 20_000  # deferred records per partition before it is paused
    # A worker process exits when one transaction takes longer than this (None: never).
    # librdkafka's send_offsets_to_transaction can ignore its timeout while the group
    # coordinator is down (confluentinc/librdkafka#5456); the supervisor restarts the
    # worker, whose init_transactions aborts the stuck transaction: nothing lost or doubled.
    exit_when_stuck_s: float | None = None
    extra_consumer: dict[str, Any] | None = None
    extra_producer: dict[str, Any] | None = None


class TransactionalLoop:
    def __init__(self, config: LoopConfig, processor: Processor) -> None:
        self.config = config
        self.processor = processor
        self._running = False
        self._commit_started: float | None = None
        self._pending: dict[tuple[str, int], deque[Message]] = {}
        self._paused: set[tuple[str, int]] = set()
        self._seen: dict[tuple[str, int], int] = {}
        # What ``refresh`` returned for the batch in hand, and what an aborted or discarded
        # batch left unwritten of it: such outputs (e.g. the dead letter of a bad control
        # record, R17) belong to no input offset, so re-reading would not bring them back.
        self._refreshed: list[Output] = []
        self._unwritten: list[Output] = []
        self.consumed = 0
        self.produced = 0
        self.transactions = 0
        self.on_close: list[Callable[[], None]] = []  # run after the clients are closed
        # Run with every batch read, before any of it is processed (``ReadBarrier.mark``).
        self.on_read: list[Callable[[list[Message]], None]] = []
        consumer_conf: dict[str, Any] = {
            **client_config(config.bootstrap_servers),
            "group.id": config.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
            "fetch.wait.max.ms": 100,
        }
        consumer_conf.update(config.extra_consumer or {})
        producer_conf = producer_config(
            config.bootstrap_servers,
            {
                "transactional.id": config.transactional_id,
                "transaction.timeout.ms": config.transaction_timeout_ms,
                "linger.ms": 5,
                "batch.num.messages": 10_000,
                "compression.type": "lz4",
                **(config.extra_producer or {}),
            },
        )
        self.consumer = Consumer(consumer_conf)
        self.producer = Producer(producer_conf)

    # --- lifecycle ------------------------------------------------------------------
    def stop(self, *_: object) -> None:
        self._running = False

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Process until stopped (or ``until()`` is true), then close cleanly."""
        # Fences any earlier incarnation with the same transactional id and aborts
        # the transaction it left open, so a restarted worker never duplicates.
        self.producer.init_transactions(30)
        self.consumer.subscribe(
            list(self.config.input_topics), on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        self._running = True
        # What exists now (compiled redaction lexicons and patterns, codecs, the state read
        # so far) lives as long as the job: kept out of the cyclic collector's full passes,
        # which otherwise walk it again and again (callgrind: 3.5 % of the router's
        # per-record instructions). Refcounting still frees it if it is dropped.
        gc.freeze()
        if self.config.exit_when_stuck_s is not None:
            threading.Thread(target=self._watchdog, name="txn-watchdog", daemon=True).start()
        try:
            while self._running and not (until and until()):
                self.step()
        finally:
            self.close()

    def _watchdog(self) -> None:
        limit = self.config.exit_when_stuck_s or 0.0
        while self._running:
            started = self._commit_started
            if started is not None and time.monotonic() - started > limit:
                log.error("transaction stuck for over %.0fs; exiting to be restarted", limit)
                os._exit(75)
            time.sleep(1)

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            self.producer.flush(10)
            # Closed here, not left to the garbage collector: run() froze the loop out of the
            # cyclic collector (gc.freeze), so a loop run in-process (tests, benchmarks) kept
            # its producer alive past the broker, and librdkafka logged every refused
            # reconnect ("Connect to ... failed") at the end of the run.
            # (older confluent-kafka releases have no Producer.close: the GC then decides)
            close_producer = getattr(self.producer, "close", None)
            if close_producer is not None:
                close_producer()
            for close in self.on_close:
                close()

    # --- one turn ---------------------------------------------------------------
    def step(self) -> None:
        try:
            self._turn()
        except Unavailable as exc:
            log.warning("turn dropped, retried in %.0f s: %s", RETRY_AFTER_S, exc)
            self._rewind_retrying()
            self.aborted()
            time.sleep(RETRY_AFTER_S)

    def _turn(self) -> None:
        # What an aborted turn's ``refresh`` gave stays in ``_unwritten`` while ``refresh``
        # runs: the runtime stages it into the stores it restores (their changelog records
        # are among those outputs).
        self._refreshed = []
        self._refreshed = self._unwritten + list(self.processor.refresh())
        self._unwritten = []
        outputs = list(self._refreshed)
        offsets: dict[tuple[str, int], int] = {}
        self._drain_pending(outputs, offsets)
        messages = self.consumer.consume(self.config.batch_size, self.config.poll_timeout_s)
        if messages:
            for on_read in self.on_read:
                on_read(messages)
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", error)
                    # A fatal consumer error comes as _FATAL with fatal() false: e.g. a
                    # static member fenced by its own rejoin after its coordinator was lost
                    # (confluentinc/librdkafka#3437). The consumer is dead: exit, and the
                    # restarted worker rejoins under the same instance id.
                    if error.fatal() or error.code() == KafkaError._FATAL:
                        raise KafkaException(error)
                continue
            source = source_of(message)
            tp, offset = (source.topic, source.partition), source.offset
            if offset <= self._seen.get(tp, -1):
                continue  # redelivered after pause/resume: already buffered or done
            self._seen[tp] = offset
            self.consumed += 1
            if self._pending.get(tp):
                self._defer(tp, message)  # keep order behind the records already waiting
                continue
            result = self.processor.process(message)
            if result is None:
                self._defer(tp, message)
                continue
            outputs.extend(result)
            offsets[tp] = offset + 1
        if outputs or offsets:
            self._commit(outputs, offsets)

    def _drain_pending(self, outputs: list[Output], offsets: dict[tuple[str, int], int]) -> None:
        for tp, pending in self._pending.items():
            while pending:
                result = self.processor.process(pending[0])
                if result is None:
                    break
                outputs.extend(result)
                offsets[tp] = source_of(pending.popleft()).offset + 1
            if not pending and tp in self._paused:
                self.consumer.resume([TopicPartition(*tp)])
                self._paused.discard(tp)

    def _defer(self, tp: tuple[str, int], message: Message) -> None:
        pending = self._pending.setdefault(tp, deque())
        pending.append(message)
        # Keep fetching while the backlog is small (no stop-and-go on every watermark
        # tick); pause the partition only when waiting records pile up.
        if len(pending) >= self.config.max_pending and tp not in self._paused:
            self.consumer.pause([TopicPartition(*tp)])
            self._paused.add(tp)

    # --- extension points (``streams.kafka.runtime`` keeps its state stores in step) ---
    def arrange(self, outputs: list[Output]) -> list[Output] | None:
        """The batch's outputs in the order to write them; None drops the batch (the loop
        re-reads it from the committed offsets)."""
        return outputs

    def aborted(self) -> None:
        """After a transaction was aborted and the loop went back to the committed offsets."""

    def revoked(self, partitions: list[TopicPartition]) -> None:
        """After the group took ``partitions`` away (their uncommitted work is dropped)."""

    def committed(self) -> None:
        """After the batch's transaction committed (state may now be made durable)."""

    def _commit(self, outputs: list[Output], offsets: dict[tuple[str, int], int]) -> None:
        arranged = self.arrange(outputs)
        if arranged is None:
            self._rewind()
            return
        outputs = arranged
        producer = self.producer
        # Collected before the transaction begins: a failed computation fails the batch
        # with nothing of it written.
        for out in outputs:
            if out.value is not None and not isinstance(out.value, bytes):
                out.value.result()  # kept by the pending value for ``_produce``
        self._commit_started = time.monotonic()
        try:
            producer.begin_transaction()
            for out in outputs:
                self._produce(out)
            if offsets:
                producer.send_offsets_to_transaction(
                    [TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                    self.consumer.consumer_group_metadata(),
                    30,
                )
            self._commit_transaction()
        except KafkaException as exc:
            error = exc.args[0]
            if error.txn_requires_abort():
                log.warning("transaction aborted, rewinding to committed offsets: %s", error)
                producer.abort_transaction(30)
                self._rewind()
                self.aborted()
                return
            raise  # fatal (e.g. fenced by a newer incarnation): exit, the supervisor restarts
        finally:
            self._commit_started = None
        self.produced += len(outputs)
        self.transactions += 1
        self.committed()

    def _commit_transaction(self) -> None:
        # A broker restart can make a commit time out; librdkafka allows retrying the same
        # commit, which completes or reports whether the transaction must be aborted.
        while True:
            try:
                self.producer.commit_transaction(30)
                return
            except KafkaException as exc:
                error = exc.args[0]
                if error.retriable() and not error.txn_requires_abort():
                    log.warning("commit not confirmed yet, retrying: %s", error)
                    continue
                raise

    def _produce(self, out: Output) -> None:
        value = resolved(out.value)
        placement: dict[str, Any] = {}
        if out.partition >= 0:
            placement["partition"] = out.partition
        if out.timestamp_ms is not None:
            placement["timestamp"] = out.timestamp_ms
        while True:
            try:
                self.producer.produce(out.topic, key=out.key, value=value, **placement)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _rewind(self) -> None:
        """Back to the committed offsets; the batch in hand is dropped, but what ``refresh``
        gave for it is offered again with the next batch."""
        self._unwritten, self._refreshed = self._unwritten + self._refreshed, []
        assignment = self.consumer.assignment()
        committed = self.consumer.committed(assignment, timeout=10)
        for tp in committed:
            offset = tp.offset if tp.offset >= 0 else 0
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
            key = (tp.topic, tp.partition)
            self._pending.pop(key, None)
            self._seen.pop(key, None)
            if key in self._paused:  # its backlog is gone: read it again
                self.consumer.resume([TopicPartition(tp.topic, tp.partition)])
                self._paused.discard(key)

    def _rewind_retrying(self, timeout_s: float = 60.0) -> None:
        """``_rewind`` when a broker may be down: asking the committed offsets is retried
        (the group coordinator may be the node that was lost) before the worker gives up."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._rewind()
                return
            except KafkaException as exc:
                if time.monotonic() >= deadline or exc.args[0].fatal():
                    raise
                log.warning("committed offsets not answered yet, retrying: %s", exc.args[0])
                time.sleep(RETRY_AFTER_S)

    # --- rebalance ---------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %d partitions", len(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Uncommitted work on revoked partitions is dropped; the new owner resumes
        # from the committed offsets, so nothing is lost and nothing doubled.
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._pending.pop(key, None)
            self._seen.pop(key, None)
            self._paused.discard(key)
        log.info("revoked %d partitions", len(partitions))
        self.revoked(partitions)


def resolved(value: bytes | PendingValue | None) -> bytes | None:
    """An output value, waiting for it if it is still being computed."""
    if value is None or isinstance(value, bytes):
        return value
    return value.result()


def source_of(message: Message) -> Source:
    """The coordinates of a consumed record (never None for a record without error)."""
    return Source(str(message.topic()), int(message.partition() or 0), int(message.offset() or 0))
