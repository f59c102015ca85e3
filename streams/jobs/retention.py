"""The retention job: R4 expiry, R5 misuse holds and safety review, R6 legal holds, R7
contract retention, R15 account deletion; R16 audit and R17 dead letters. Built on faust.

Topology (one faust app; consumer group and app id ``<prefix>retention.faust``)::

  misuse-flags, legal-holds, account-deletions   (1 partition each, compacted)
     -- controls agent: decode, validate (R17), broadcast -->  <prefix>retention.commands
  log-store (P partitions, compacted, keyed by request id)  +  retention.commands (P partitions)
     -- retention agent: one RetentionBook per partition -->   log-store tombstones,
                                                                deletion-events, safety-review,
                                                                audit-decisions, dead-letters
  timer (every ``tick_interval_s``): a tick carrying the clock's "now" to every commands
     partition this worker owns; a tick deletes what is due (at most ``tick_limit``, then
     it sends itself a follow-up tick)

State: two faust tables, changelog-backed and co-partitioned with the log store:
``tracked`` (request id -> ids, times, log-store offset; never content) and ``facts``
(the holds and deletions each partition was told about). A partition's book is rebuilt
from them after a restart or a rebalance.

Content for safety review (R5) is never kept in state: the tracked offset is read back
from the log store (compaction keeps the latest value of a key, and the tracked offset is
that value's until the job itself tombstones it).

Delivery: at-least-once with idempotent outputs (see ``streams.policy.retention``): for
each batch of events the job writes every output, waits for the broker's
acknowledgements, and only then writes its table changes (and faust commits the batch's
offsets after that), so a crash can repeat an output but never lose a deletion.
faust-streaming's own ``exactly_once`` was tried and fails a SIGKILL test (see
``tests/integration/test_retention_job.py::test_faust_exactly_once_probe_R4``).
Tombstones and deletion events are keyed by request id, reviews by flag/request id, audit
records carry a decision id derived from the input's coordinates.

Time: ``now`` comes from an injectable clock. ``--clock-file`` (``STREAMS_CLOCK_FILE``)
points to a file holding epoch milliseconds, so a test can move time forward while the
job runs as a separate process.

Run one worker:  streams run retention
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import faust
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from faust.types import TP, EventT

from streams.kafka.clients import client_config, producer_config
from streams.kafka.faust_app import (
    AT_LEAST_ONCE,
    FaustSettings,
    build_app,
    ensure_topic,
    partition_counts,
    partition_for,
    raw_topic,
)
from streams.kafka.metrics import DISABLED, JobMetrics
from streams.kafka.runtime import FileClock as FileClock  # tests and benchmarks use it here
from streams.kafka.runtime import wall_clock_ms
from streams.kafka.runtime import write_clock as write_clock
from streams.kafka.serde import Codec, Contracts, DecodeError, registry_client
from streams.kafka.topics import (
    RETENTION,
    ROLL_KEY,
    Topology,
    deletion_bound_ms,
    internal_topic,
    key_for,
    roll_interval_ms,
)
from streams.policy.audit import Source, audit_record, dead_letter_decision
from streams.policy.config import PolicyConfig
from streams.policy.holds import validate_flag, validate_legal_hold
from streams.policy.models import DAY_MS, AccountDeletionRequest, InvalidRecord
from streams.policy.retention import (
    Deletion,
    Effect,
    Note,
    RetentionBook,
    Review,
    Tracked,
    tracked_from_log_record,
    untrusted_tracked,
)
from streams.settings import Settings

log = logging.getLogger("streams.retention")

JOB = "retention"
_CONTROL_FIELDS = ("misuse_flags", "legal_holds", "account_deletions")
_OUTPUT_FIELDS = ("log_store", "deletion_events", "safety_review", "audit", "dead_letters")
_SEP = "\x1f"


# --- clock -------------------------------------------------------------------------------
# --- settings ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RetentionSettings:
    bootstrap_servers: str
    registry_url: str
    config: PolicyConfig
    topology: Topology
    state_dir: Path
    clock: Callable[[], int] = wall_clock_ms
    tick_interval_s: float = 1.0
    tick_limit: int = 2000  # deletions per tick; a backlog continues in follow-up ticks
    batch_size: int = 1000  # events decided before one wait for the broker's acknowledgements
    processing_guarantee: str = AT_LEAST_ONCE
    faust_extra: Mapping[str, Any] = field(default_factory=dict)
    # R4/R15: deleted content unreadable within this many ms (``STREAMS_DELETION_BOUND_MS``;
    # the topics' configs are made for it by ``streams topics``).
    deletion_bound: int = field(default_factory=deletion_bound_ms)

    def __post_init__(self) -> None:
        # R4: deletion must happen within the configured bound after a record falls due.
        if self.tick_interval_s * 1000 * 4 > self.config.deletion_bound_ms:
            raise ValueError("tick_interval_s too long for PolicyConfig.deletion_bound_ms")


def commands_topic_name(topology: Topology) -> str:
    """``<prefix>retention.commands``: job-internal, only the retention role may use it."""
    return internal_topic(topology, RETENTION, "commands")


# --- state -------------------------------------------------------------------------------
class StagedStore:
    """A partition's view of the job's tables; writes wait in an overlay until ``commit``.

    R4 at-least-once: ``commit`` runs only after the broker acknowledged every output of
    the decisions, so the changelog never records a deletion whose tombstone was lost.
    Writes of the event being decided sit in a second overlay that ``end_event`` keeps or
    drops, so a failed decision leaves nothing behind.

    ``commit`` writes the table's local store and its changelog partition directly (the
    partition is the log-store partition, exactly what faust would pick inside the event),
    so a whole batch of events can be committed at once.
    """

    def __init__(self, rows: Any, facts: Any, partition: int) -> None:
        self._rows = rows
        self._facts = facts
        self.partition = partition
        self._prefix = f"{partition}{_SEP}"
        self._pending: dict[str, bytes | None] = {}
        self._pending_facts: dict[str, bytes] = {}
        self._event: dict[str, bytes | None] = {}
        self._event_facts: dict[str, bytes] = {}

    def get(self, request_id: str) -> Tracked | None:
        if request_id in self._event:
            data = self._event[request_id]
        elif request_id in self._pending:
            data = self._pending[request_id]
        else:
            data = self._rows.data.get(request_id)
        if data is None:
            return None
        record = Tracked.decode(request_id, data)
        # The table holds every local partition; a book sees its own partition's rows only.
        return record if record.partition == self.partition else None

    def put(self, record: Tracked) -> None:
        self._event[record.request_id] = record.encode()

    def delete(self, request_id: str) -> None:
        self._event[request_id] = None

    def scan(self, org_id: str | None = None) -> Iterator[Tracked]:
        """This partition's rows. Rows are JSON lists starting with the partition, and
        an org id appears in its row JSON-quoted: both are checked on the bytes, so only
        candidate rows are decoded (an org-wide flag scans the table in well under a second
        per million rows)."""
        overlay = {**self._pending, **self._event}
        head = f"[{self.partition},".encode()
        needle = json.dumps(org_id).encode() if org_id is not None else b""
        for request_id, data in list(self._rows.data.items()):
            if not data.startswith(head) or needle not in data or request_id in overlay:
                continue
            record = Tracked.decode(request_id, data)
            if record.partition == self.partition:
                yield record
        for request_id, maybe in overlay.items():
            if maybe is not None and needle in maybe:
                yield Tracked.decode(request_id, maybe)

    def put_fact(self, key: str, value: Mapping[str, Any]) -> None:
        self._event_facts[self._prefix + key] = json.dumps(dict(value)).encode()

    def facts(self) -> Iterator[tuple[str, Mapping[str, Any]]]:
        seen = dict(self._facts.data.items())
        seen.update(self._pending_facts)
        seen.update(self._event_facts)
        for key, data in seen.items():
            if key.startswith(self._prefix):
                yield key[len(self._prefix) :], json.loads(data)

    def __len__(self) -> int:
        return sum(1 for _ in self.scan())

    def has_pending(self) -> bool:
        return bool(self._pending or self._event)

    def end_event(self, keep: bool) -> None:
        if keep:
            self._pending.update(self._event)
            self._pending_facts.update(self._event_facts)
        self._event.clear()
        self._event_facts.clear()

    def commit(self) -> None:
        """Write the staged changes to the tables' stores and changelogs."""
        self.end_event(keep=True)
        for table, changes in ((self._rows, self._pending), (self._facts, self._pending_facts)):
            store = table.data
            for key, data in changes.items():
                if data is None:
                    if key not in store:
                        continue
                    del store[key]
                else:
                    store[key] = data
                table.send_changelog(self.partition, key, data)
            changes.clear()

    def discard(self) -> None:
        self._pending.clear()
        self._pending_facts.clear()
        self._event.clear()
        self._event_facts.clear()


# --- content read-back (R5) --------------------------------------------------------------
class ContentReader:
    """Reads retained log-store values back by offset for a safety review (R5)."""

    def __init__(self, bootstrap_servers: str, topic: str, group: str) -> None:
        self.topic = topic
        self._consumer = Consumer(
            {
                **client_config(bootstrap_servers),
                "group.id": group,  # never committed; librdkafka requires one
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
            }
        )

    def read(self, partition: int, wanted: Mapping[int, str], timeout_s: float = 10.0) -> dict:
        """{request id: raw value} for ``wanted`` {offset: request id} that are still there."""
        found: dict[str, bytes] = {}
        if not wanted:
            return found
        first, last = min(wanted), max(wanted)
        self._consumer.assign([TopicPartition(self.topic, partition, first)])
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                message = self._consumer.poll(0.5)
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        break
                    continue
                offset = message.offset() or 0
                request_id = wanted.get(offset)
                key = message.key()
                value = message.value()
                matches = request_id is not None and key is not None and key.decode() == request_id
                if matches and request_id is not None and value is not None:
                    found[request_id] = value
                if offset >= last:
                    break
        finally:
            self._consumer.unassign()
        return found

    def close(self) -> None:
        self._consumer.close()


# --- deletion bound (R4, R15) ----------------------------------------------------------
class DeletionWatch:
    """Answers "deleted: is it gone yet?" for the log store, from the broker itself.

    The job notes the offset of each value it deletes (sampled: the first deletion of each
    second per partition, so memory stays within partitions x bound seconds) and reads that
    offset back now and then: while the broker still serves the value there, it is
    readable. ``oldest_readable_ms`` is the age of the oldest such value (0: none), exported
    as a metric to alert on before it reaches the bound.
    """

    def __init__(self, reader: ContentReader) -> None:
        self._reader = reader
        self._pending: dict[int, deque[tuple[int, int, str]]] = {}

    def deleted(self, partition: int, offset: int, request_id: str, at_ms: int) -> None:
        pending = self._pending.setdefault(partition, deque())
        if not pending or at_ms // 1000 > pending[-1][0] // 1000:
            pending.append((at_ms, offset, request_id))

    def oldest_readable_ms(self, now_ms: int) -> int:
        oldest = 0
        for partition, pending in self._pending.items():
            while pending and not self._readable(partition, pending[0][1], pending[0][2]):
                pending.popleft()
            if pending:
                oldest = max(oldest, now_ms - pending[0][0])
        return oldest

    def _readable(self, partition: int, offset: int, request_id: str) -> bool:
        # A deleted value compacted away is skipped: the offset is served no more.
        return request_id in self._reader.read(partition, {offset: request_id}, timeout_s=5.0)

    def close(self) -> None:
        self._reader.close()


# --- outputs -----------------------------------------------------------------------------
@dataclass(slots=True)
class _Out:
    topic: str
    key: bytes
    value: bytes | None
    partition: int


class OutputProducer:
    """Writes the job's outputs with librdkafka (idempotent, acks=all) and waits for them.

    faust's own producer (pure-Python aiokafka) carries the table changelogs; the outputs,
    several per decision, go through confluent-kafka like every other producer of the
    project: about twice the expiries/s of faust's producer in
    benchmarks/retention_bench.py, and the same CRC-32 partitioner.
    """

    def __init__(self, bootstrap_servers: str, client_id: str) -> None:
        self._producer = Producer(
            producer_config(
                bootstrap_servers,
                {"client.id": client_id, "linger.ms": 5, "compression.type": "lz4"},
            )
        )
        self._errors: list[str] = []

    def _delivered(self, error: KafkaError | None, _: Any) -> None:
        if error is not None:
            self._errors.append(str(error))

    async def send(self, outputs: Iterable[_Out]) -> None:
        produce = self._producer.produce
        pending = 0
        for out in outputs:
            while True:
                try:
                    produce(
                        out.topic,
                        key=out.key,
                        value=out.value,
                        partition=out.partition,
                        on_delivery=self._delivered,
                    )
                    break
                except BufferError:
                    await asyncio.to_thread(self._producer.poll, 0.05)
            pending += 1
        if not pending:
            return
        # Every acknowledgement (or error) before the caller records the decision.
        left = await asyncio.to_thread(self._producer.flush, 60.0)
        if left or self._errors:
            errors, self._errors = self._errors, []
            raise OutputError(f"{left} outputs unacknowledged, errors: {errors[:3]}")

    def close(self) -> None:
        self._producer.flush(10.0)


class FaustOutputs:
    """Outputs through faust's producer (its transactional one under exactly_once)."""

    def __init__(self, app: faust.App) -> None:
        self._app = app
        self._topics: dict[str, Any] = {}

    async def send(self, outputs: Iterable[_Out]) -> None:
        futures = []
        for out in outputs:
            topic = self._topics.get(out.topic)
            if topic is None:
                topic = self._topics[out.topic] = raw_topic(self._app, out.topic)
            futures.append(await topic.send(key=out.key, value=out.value, partition=out.partition))
        if futures:
            await asyncio.gather(*futures)

    def close(self) -> None:
        pass


class OutputError(RuntimeError):
    """The broker did not acknowledge an output: the decision must not be recorded."""


# --- decoding (R17) ------------------------------------------------------------------------
def decode_control(codec: Codec, op: str, value: bytes | None) -> dict[str, Any]:
    """R17: a misuse flag (op "flag"), legal hold ("legal") or account deletion
    ("deletion"), decoded and validated; raises DecodeError, InvalidRecord or TypeError."""
    record: dict[str, Any] = codec.decode(value)
    if op == "flag":
        validate_flag(record)
    elif op == "legal":
        validate_legal_hold(record)
    else:
        request = AccountDeletionRequest(**record)
        if not request.org_id or not request.deletion_id:
            raise InvalidRecord("empty org_id or deletion_id", request.org_id or None)
    return record


def decode_log_value(
    codec: Codec, request_id: str | None, value: bytes | None, source: Source
) -> Tracked:
    """R17: what the job tracks of a log-store value; raises DecodeError or InvalidRecord."""
    record = codec.decode(value)
    return tracked_from_log_record(record, request_id, source.partition, source.offset)


# --- the job -----------------------------------------------------------------------------
class RetentionJob:
    """Wires the policy (``RetentionBook`` per partition) into a faust app."""

    def __init__(self, settings: RetentionSettings) -> None:
        self.settings = settings
        self.config = settings.config
        self.topics = settings.topology
        self.clock = settings.clock
        self.stats: Counter[str] = Counter()
        contracts = Contracts(registry_client(settings.registry_url), self.topics)
        contracts.register_all()  # the same subjects every producer of the catalogue uses
        self._codec: dict[str, Codec] = {
            getattr(self.topics, f): contracts.codec(f)
            for f in ("log_store", *_CONTROL_FIELDS, *_OUTPUT_FIELDS)
        }
        self._out_codec = {f: contracts.codec(f) for f in _OUTPUT_FIELDS}
        self.commands = commands_topic_name(self.topics)
        log_store = self.topics.log_store
        counts = partition_counts(
            settings.bootstrap_servers, [getattr(self.topics, f) for f in _OUTPUT_FIELDS]
        )
        self.partitions = counts[log_store]
        self._out_partitions = {f: counts[getattr(self.topics, f)] for f in _OUTPUT_FIELDS}
        # The command topic is co-partitioned with the log store (same count), so faust
        # assigns partition p of both to the same worker, with p of the tables.
        ensure_topic(
            settings.bootstrap_servers,
            self.commands,
            self.partitions,
            {"cleanup.policy": "delete", "retention.ms": str(DAY_MS)},
        )
        self.app = build_app(
            FaustSettings(
                job=JOB,
                bootstrap_servers=settings.bootstrap_servers,
                topics=self.topics,
                state_dir=settings.state_dir,
                processing_guarantee=settings.processing_guarantee,
                partitions=self.partitions,
                extra=settings.faust_extra,
            )
        )
        app = self.app
        # R5/R6: the tables' changelogs exist before the first worker writes to them. Left
        # to faust, a worker that starts first writes into a topic still being created
        # ("Ignoring missing topic ...-facts-changelog"), and a worker that takes a
        # partition over recovers its holds from a changelog that lost them: a held record
        # was seen deleted at expiry after a hand-over under load.
        for table in ("tracked", "facts"):
            ensure_topic(
                settings.bootstrap_servers,
                f"{app.conf.id}-{table}-changelog",
                self.partitions,
                {"cleanup.policy": "compact"},
            )
        self.tracked = app.Table(
            "tracked", key_type=str, value_type=bytes, partitions=self.partitions
        )
        self.facts = app.Table("facts", key_type=str, value_type=bytes, partitions=self.partitions)
        self.books: dict[int, RetentionBook] = {}
        self._stores: dict[int, StagedStore] = {}
        self._owned: set[int] = set()
        self._reader = ContentReader(
            settings.bootstrap_servers, log_store, f"{app.conf.id}-content-reader"
        )
        self.metrics = JobMetrics(JOB)
        self._watch = DeletionWatch(
            ContentReader(settings.bootstrap_servers, log_store, f"{app.conf.id}-deletion-watch")
        )
        self._roll_every_s = roll_interval_ms(settings.deletion_bound) / 1000
        self._next_roll = 0.0
        self._next_watch = 0.0
        self._output: OutputProducer | FaustOutputs
        if settings.processing_guarantee == AT_LEAST_ONCE:
            self._output = OutputProducer(settings.bootstrap_servers, f"{app.conf.id}-outputs")
        else:
            # faust's exactly_once only covers what faust's own producer writes.
            self._output = FaustOutputs(app)
        controls = [getattr(self.topics, f) for f in _CONTROL_FIELDS]
        app.agent(raw_topic(app, *controls), name=f"{JOB}-controls")(self._controls_agent)
        app.agent(raw_topic(app, log_store, self.commands), name=f"{JOB}-books")(self._books_agent)
        app.timer(settings.tick_interval_s, name=f"{JOB}-tick")(self._tick)
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]

    # --- rebalance ---------------------------------------------------------------------
    async def _on_revoked(self, sender: Any, revoked: set[TP], **_: Any) -> None:
        # Eager rebalancing revokes everything, then assigns; state is only evicted for
        # partitions that do not come back (see _on_assigned).
        for tp in revoked:
            if tp.topic == self.topics.log_store:
                self.books.pop(tp.partition, None)
                self._stores.pop(tp.partition, None)

    async def _on_assigned(self, sender: Any, assigned: set[TP], **_: Any) -> None:
        owned = {tp.partition for tp in assigned if tp.topic == self.topics.log_store}
        lost, self._owned = self._owned - owned, owned
        if lost:
            # faust recovers a partition it regains later from the start of its changelog.
            self._evict(lost)
        for partition in owned:
            # Rebuilt from the recovered tables at the partition's first event.
            self.books.pop(partition, None)
            self._stores.pop(partition, None)

    def _evict(self, partitions: set[int]) -> None:
        """Drop the local rows of partitions now owned elsewhere (recovery reloads them)."""
        rows = getattr(self.tracked.data, "data", None)
        if isinstance(rows, dict):
            for key in [k for k, v in rows.items() if json.loads(v)[0] in partitions]:
                rows.pop(key, None)
        facts = getattr(self.facts.data, "data", None)
        if isinstance(facts, dict):
            prefixes = tuple(f"{p}{_SEP}" for p in partitions)
            for key in [k for k in facts if k.startswith(prefixes)]:
                facts.pop(key, None)

    def book(self, partition: int) -> RetentionBook:
        book = self.books.get(partition)
        if book is None:
            self._build_books(partition)
            book = self.books[partition]
        return book

    def _build_books(self, partition: int) -> None:
        """Books for ``partition`` and every other owned partition lacking one, from one
        pass over the recovered table (a book is built at its partition's first event)."""
        started = time.monotonic()
        owned = {
            tp.partition
            for tp in self.app.assignor.assigned_actives()
            if tp.topic == self.topics.log_store
        }
        missing = {p for p in owned | {partition} if p not in self.books}
        rows: dict[int, list[Tracked]] = {p: [] for p in missing}
        for request_id, data in list(self.tracked.data.items()):
            record = Tracked.decode(request_id, data)
            if record.partition in rows:
                rows[record.partition].append(record)
        for p in sorted(missing):
            # A book dropped after a failed decision keeps its store's staged writes.
            store = self._stores.get(p)
            if store is None:
                store = StagedStore(self.tracked, self.facts, p)
            book = RetentionBook(self.config, store, p, self.partitions, load=False)
            book.load(rows[p] if not store.has_pending() else None)
            self.books[p] = book
            self._stores[p] = store
        log.info(
            "books rebuilt for partitions %s: %d tracked records in %.2fs",
            sorted(missing),
            sum(len(r) for r in rows.values()),
            time.monotonic() - started,
        )

    # --- controls: flags, legal holds, deletions ----------------------------------------
    async def _controls_agent(self, stream: faust.StreamT) -> None:
        async for event in stream.events():
            await self.on_control(event)

    async def on_control(self, event: EventT) -> None:
        message = event.message
        source = Source(message.topic, message.partition, message.offset)
        value = message.value
        now = self.clock()
        op = {
            self.topics.misuse_flags: "flag",
            self.topics.legal_holds: "legal",
            self.topics.account_deletions: "deletion",
        }[message.topic]
        try:
            record = decode_control(self._codec[message.topic], op, value)
        except (DecodeError, InvalidRecord, TypeError) as exc:
            reason = getattr(exc, "reason", "fields do not match contract")
            org = getattr(exc, "org_id", None)
            await self._send(self._dead_letter(source, message.key, reason, exc, org, now))
            return
        command = json.dumps(
            {
                "op": op,
                "now": now,
                "record": record,
                "src": [source.topic, source.partition, source.offset],
            }
        ).encode()
        # Every partition gets every hold and deletion: holds are few, and a partition
        # never depends on where another producer's partitioner put a request id.
        await self._send(
            [_Out(self.commands, op.encode(), command, p) for p in range(self.partitions)]
        )
        self.stats[f"control_{op}"] += 1

    # --- books: log store + commands ----------------------------------------------------
    async def _books_agent(self, stream: faust.StreamT) -> None:
        # Batches: outputs of many events share one wait for acknowledgements.
        batches = cast(faust.Stream, stream).take_events(self.settings.batch_size, within=0.05)
        async for events in batches:
            await self.on_book_events(events)

    async def on_book_events(self, events: Iterable[EventT]) -> None:
        outputs: list[_Out] = []
        decided: list[tuple[list[Effect], Source, int]] = []
        follow_ups: dict[int, int] = {}
        # The stores this batch staged into are the ones committed, whatever a rebalance
        # does meanwhile (faust waits for in-flight events before revoking, by default).
        touched: dict[int, StagedStore] = {}
        for event in events:
            message = event.message
            partition = message.partition
            source = Source(message.topic, partition, message.offset)
            book = self.book(partition)
            store = self._stores[partition]
            touched.setdefault(partition, store)
            try:
                if message.topic == self.topics.log_store:
                    effects, now = self._on_log_value(
                        book, source, message.key, message.value, outputs
                    )
                    origin = source
                else:
                    effects, now, origin, more = self._on_command(book, source, message.value)
                    if more:
                        follow_ups[partition] = now
            except Exception as exc:  # a bug must not stop retention for everyone (R17)
                store.end_event(keep=False)
                self.books.pop(partition, None)  # rebuilt from the tables at the next event
                # The class only: an exception's message could quote a record's content.
                log.error("retention decision failed at %s (%s)", source.id, type(exc).__name__)
                outputs += self._dead_letter(
                    source, message.key, "retention decision failed", exc, None, self.clock()
                )
                continue
            store.end_event(keep=True)
            decided.append((effects, origin, now))
        outputs += await self._outputs(decided)
        await self._send(outputs)  # acknowledged by the broker ...
        for staged in touched.values():
            staged.commit()  # ... before the tables record the decisions
        if follow_ups:  # R4: a backlog larger than one tick continues at once
            await self._send([self._tick_command(p, now) for p, now in follow_ups.items()])

    def _on_log_value(
        self,
        book: RetentionBook,
        source: Source,
        key: bytes | None,
        value: bytes | None,
        outputs: list[_Out],
    ) -> tuple[list[Effect], int]:
        now = self.clock()
        request_id = key.decode(errors="replace") if key is not None else None
        if value is None:
            if request_id is not None:
                book.forget(request_id)  # a tombstone (ours, read back): nothing retained
            return [], now
        try:
            tracked = decode_log_value(self._codec[source.topic], request_id, value, source)
        except (DecodeError, InvalidRecord) as exc:
            org = getattr(exc, "org_id", None)
            outputs += self._dead_letter(
                source, key, getattr(exc, "reason", "invalid"), exc, org, now
            )
            if request_id is None:
                return [], now
            # R4 + R17: kept for an operator, but never beyond the default retention.
            tracked = untrusted_tracked(
                request_id, source.partition, source.offset, now, self.config
            )
        self.stats["tracked"] += 1
        return book.record(tracked, now, self.settings.tick_limit), now

    def _on_command(
        self, book: RetentionBook, source: Source, value: bytes | None
    ) -> tuple[list[Effect], int, Source, bool]:
        command = json.loads(value or b"{}")
        op = command.get("op")
        now = int(command.get("now") or self.clock())
        limit = self.settings.tick_limit
        if op == "tick":
            result = book.tick(now, limit)
            self.stats["ticks"] += 1
            return result.effects, now, source, result.more
        topic, partition, offset = command["src"]
        origin = Source(topic, partition, offset)
        record = command["record"]
        if op == "flag":
            effects = book.flag(validate_flag(record), now, limit)
        elif op == "legal":
            effects = book.legal_hold(validate_legal_hold(record), now, limit)
        elif op == "deletion":
            effects = book.delete_account(AccountDeletionRequest(**record), now, limit)
        else:
            raise ValueError("unknown command")
        return effects, now, origin, False

    # --- timer -------------------------------------------------------------------------
    async def _tick(self) -> None:
        now = self.clock()
        mine = sorted(
            tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == self.commands
        )
        if mine:
            await self._send([self._tick_command(p, now) for p in mine])
            await self._keep_deletion_bound(mine)

    async def _keep_deletion_bound(self, mine: list[int]) -> None:
        """R4/R15: an idle partition's last segment rolls (and so can be compacted) only
        when something is appended (``streams.kafka.topics.TopicSpec.configs``): a
        ``ROLL_KEY`` tombstone goes to every owned partition of the compacted content
        topics each quarter of the bound. The watch reports what is still readable."""
        started = time.monotonic()
        if started >= self._next_roll:
            self._next_roll = started + self._roll_every_s
            review_partitions = self._out_partitions["safety_review"]
            outs = [_Out(self.topics.log_store, ROLL_KEY, None, p) for p in mine]
            outs += [
                _Out(self.topics.safety_review, ROLL_KEY, None, q)
                for q in range(review_partitions)
                if q % self.partitions in mine
            ]
            await self._send(outs)
        if started >= self._next_watch:
            self._next_watch = started + max(1.0, self._roll_every_s / 4)
            oldest = await asyncio.to_thread(self._watch.oldest_readable_ms, wall_clock_ms())
            self.metrics.deletion(self.settings.deletion_bound / 1000, oldest / 1000)

    def _tick_command(self, partition: int, now: int) -> _Out:
        return _Out(
            self.commands, b"tick", json.dumps({"op": "tick", "now": now}).encode(), partition
        )

    # --- outputs -----------------------------------------------------------------------
    async def _outputs(self, decided: list[tuple[list[Effect], Source, int]]) -> list[_Out]:
        outputs: list[_Out] = []
        reviews = [e for effects, _, _ in decided for e in effects if isinstance(e, Review)]
        contents = await self._read_contents(reviews) if reviews else {}
        for effects, source, now in decided:
            for effect in effects:
                if isinstance(effect, Deletion):
                    outputs += self._deletion(effect)
                elif isinstance(effect, Review):
                    value = contents.get(effect.record.request_id)
                    if value is None:
                        outputs.append(self._unavailable(effect, source, now))
                        continue
                    outputs.append(self._review(effect, value))
                outputs.append(self._audit(effect, source, now))
        return outputs

    def _deletion(self, deletion: Deletion) -> list[_Out]:
        record = deletion.record
        key = record.request_id.encode()
        event = {
            "request_id": record.request_id,
            "org_id": record.org_id,
            "reason": deletion.reason,
            "rule_ids": list(deletion.rule_ids),
            "deleted_at_ms": deletion.deleted_at_ms,
            "policy_version": self.config.policy_version,
        }
        self.stats["deleted"] += 1
        self._watch.deleted(record.partition, record.offset, record.request_id, wall_clock_ms())
        # R4/R15: every copy goes: the safety-review copies too (keyed flag/request).
        reviews = [
            self._tombstone("safety_review", f"{flag_id}/{record.request_id}")
            for flag_id in record.reviewed
        ]
        return [
            # R4: the tombstone goes to the record's own partition, or compaction misses it.
            _Out(self.topics.log_store, key, None, record.partition),
            *reviews,
            self._emit("deletion_events", record.request_id, event),
        ]

    async def _read_contents(self, reviews: list[Review]) -> dict[str, bytes]:
        by_partition: dict[int, dict[int, str]] = {}
        for review in reviews:
            by_partition.setdefault(review.record.partition, {})[review.record.offset] = (
                review.record.request_id
            )
        found: dict[str, bytes] = {}
        for partition, wanted in by_partition.items():
            found.update(await asyncio.to_thread(self._reader.read, partition, wanted))
        return found

    def _review(self, review: Review, value: bytes) -> _Out:
        log_record = self._codec[self.topics.log_store].decode(value)
        hold = review.hold
        record = {
            "flag_id": hold.hold_id,
            "flag_reason": hold.reason,
            "flagged_at_ms": hold.placed_at_ms,
            "request_id": log_record["request_id"],
            "org_id": log_record["org_id"],
            "api_key_id": log_record["api_key_id"],
            "created_at_ms": log_record["created_at_ms"],
            "endpoint": log_record["endpoint"],
            "model": log_record["model"],
            "source": log_record["source"],
            "prompt": log_record.get("prompt"),
            "documents": log_record.get("documents") or [],
            "generation": log_record.get("generation"),
            "client_ip": log_record.get("client_ip"),
            "user_id": log_record.get("user_id"),
            "metadata": log_record.get("metadata") or {},
            "policy_version": self.config.policy_version,
        }
        self.stats["reviewed"] += 1
        return self._emit("safety_review", key_for("safety_review", record), record)

    def _unavailable(self, review: Review, source: Source, now: int) -> _Out:
        note = Note(
            subject_id=review.record.request_id,
            subject_kind="log_record",
            org_id=review.record.org_id or None,
            routes=("not_found_or_expired",),
            rule_ids=("R5", "R4"),
            reasons=(
                f"R5: flag {review.hold.hold_id}: the record's content is no longer in the "
                "log store",
            ),
            key=f"{review.hold.hold_id}/{review.record.request_id}",
        )
        return self._audit(note, source, now)

    def _audit(self, effect: Effect, source: Source, now: int) -> _Out:
        if isinstance(effect, Note):
            subject_id, kind, org = effect.subject_id, effect.subject_kind, effect.org_id
            routes, rules, reasons = effect.routes, effect.rule_ids, effect.reasons
            consent = effect.consent_version
        else:
            record = effect.record
            subject_id, kind, org = record.request_id, "log_record", record.org_id or None
            rules = effect.rule_ids
            consent = ""
            if isinstance(effect, Deletion):
                routes = ("deleted",)
                reasons = (*effect.reasons, f"deletion reason {effect.reason}")
            else:
                routes = ("safety_review",)
                reasons = (
                    f"R5: misuse flag {effect.hold.hold_id}: full log sent to safety review",
                )
            # Per-record decisions name the record's own coordinates: the same decision
            # gets the same id whichever tick or command triggered it (idempotent audit).
            source = Source(self.topics.log_store, record.partition, record.offset)
        audit = audit_record(
            job=JOB,
            source=source,
            subject_id=subject_id,
            subject_kind=kind,
            org_id=org,
            routes=routes,
            rule_ids=rules,
            reasons=reasons,
            consent_version=consent,
            policy_version=self.config.policy_version,
            decided_at_ms=now,
            decision_suffix=effect.decision_key,
        )
        return self._emit("audit", subject_id, audit)

    def _dead_letter(
        self,
        source: Source,
        key: bytes | None,
        reason: str,
        exc: BaseException,
        org_id: str | None,
        now: int,
    ) -> list[_Out]:
        """R17: coordinates and reason only; the retention job never copies content (R2/R4:
        a log-store copy in the dead letters would outlive the record's deletion)."""
        letter, audit = dead_letter_decision(
            job=JOB,
            source=source,
            reason=reason,
            error_class=type(exc).__name__,
            org_id=org_id,
            original_key=key,
            original_value=None,
            keep_content=False,
            decided_at_ms=now,
            policy_version=self.config.policy_version,
        )
        self.stats["dead_letter"] += 1
        log.warning("dead letter %s: %s", source.id, reason)
        return [
            self._emit("dead_letters", key_for("dead_letters", letter), letter),
            self._emit("audit", source.id, audit),
        ]

    def _emit(self, field_name: str, key: str, record: Mapping[str, Any]) -> _Out:
        topic = getattr(self.topics, field_name)
        partition = partition_for(key, self._out_partitions[field_name])
        return _Out(topic, key.encode(), self._out_codec[field_name].encode(record), partition)

    def _tombstone(self, field_name: str, key: str) -> _Out:
        topic = getattr(self.topics, field_name)
        return _Out(topic, key.encode(), None, partition_for(key, self._out_partitions[field_name]))

    async def _send(self, outputs: Iterable[_Out]) -> None:
        """Produce and wait for every acknowledgement (raises if the broker refused one)."""
        await self._output.send(outputs)

    def close(self) -> None:
        self._reader.close()
        self._watch.close()
        self._output.close()


# --- process entry point ------------------------------------------------------------------
def retention_settings(settings: Settings) -> RetentionSettings:
    """The retention job's view of the worker's settings (``streams run retention``)."""
    state_dir = settings.state_dir or (
        Path("var") / "retention" / (settings.topology.log_store + "-" + settings.worker_id)
    )
    return RetentionSettings(
        bootstrap_servers=settings.bootstrap_servers,
        registry_url=settings.registry_url,
        config=settings.policy,
        topology=settings.topology,
        state_dir=state_dir,
        clock=settings.clock(),
        tick_interval_s=settings.tick_interval_s,
        tick_limit=settings.tick_limit,
        processing_guarantee=settings.processing_guarantee,
    )


def run(settings: Settings) -> None:
    """One retention worker until stopped (``streams run retention``)."""
    job = RetentionJob(retention_settings(settings))
    if settings.metrics_port != DISABLED:
        job.metrics.serve(settings.metrics_port)
    worker = faust.Worker(job.app, loglevel="INFO", quiet=True)
    code = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # a crash: the supervisor restarts us, at-least-once replays
        log.error("retention worker crashed: %s", type(exc).__name__)
        code = 1
    finally:
        try:
            job.close()
        finally:
            log.info("retention worker stopped: %s", dict(job.stats))
            logging.shutdown()
            # After a crash faust can leave a non-daemon thread behind that keeps the
            # process alive forever; a stopped worker must exit so it can be restarted.
            os._exit(code)
