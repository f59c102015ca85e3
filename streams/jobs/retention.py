"""The retention job: R4 expiry, R5 misuse holds and safety review, R6 legal holds, R7
contract retention, R15 account deletion; R16 audit and R17 dead letters.

Runs on ``streams.kafka.runtime`` (exactly once): the job's outputs (log-store tombstones,
deletion events, safety-review copies, audit records, dead letters), its state changelog
and the consumed log-store offsets are written in one Kafka transaction. A SIGKILL
repeats nothing and loses nothing.

Topology::

  log-store (P partitions, compacted, keyed by request id)
     -- one RetentionBook per partition -->   log-store tombstones, deletion-events,
                                              safety-review, audit-decisions, dead-letters
  misuse-flags, legal-holds, account-deletions (compacted)
     -- read in full by every worker (``CompactedReader``), applied to each book it owns once

State: the store ``books`` (changelog ``<prefix>retention.books``, co-partitioned with the
log store), on disk (``streams.kafka.state.DiskStores``, RocksDB): per partition the
tracked records (ids, times, log-store offset; never content), an org/creation-time index,
the expiry schedule in time order, the records held past their expiry, and the facts the
book applied. A tick reads only the schedule entries that are due; an org-wide hold or an
account deletion reads only the org's index. Memory holds only the holds and deletions.

Facts before deletions (R5/R6/R15): a tick deletes only what was due at an instant up to
which every published fact has been read and applied (``ReadBarrier``'s end offsets, asked
without waiting): a flag raised a millisecond before a record's expiry holds it.

Content for safety review (R5) is never kept in state: the tracked offset is read back
from the log store (compaction keeps the latest value of a key, and the tracked offset is
that value's until the job itself tombstones it). Tracking a record decodes its value but
keeps only ids and times.

Time: ``now`` comes from an injectable clock (``STREAMS_CLOCK_FILE``: epoch milliseconds in
a file, so a test can move time forward while the job runs as a separate process).

Run one worker:  streams run retention
"""

from __future__ import annotations

import json
import logging
import marshal
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from streams.kafka.clients import client_config
from streams.kafka.compacted import CompactedReader, PendingEnds
from streams.kafka.metrics import JobMetrics
from streams.kafka.runtime import (
    Context,
    JobSpec,
    KeyValueStore,
    Punctuator,
    Runtime,
    StoreSpec,
    wall_clock_ms,
)
from streams.kafka.runtime import FileClock as FileClock  # tests and benchmarks use it here
from streams.kafka.runtime import write_clock as write_clock
from streams.kafka.serde import Codec, Contracts, DecodeError, SplicedCodec
from streams.kafka.state import DiskStores
from streams.kafka.topics import (
    RETENTION,
    ROLL_KEY,
    Topology,
    deletion_bound_ms,
    key_for,
    partition_counts,
    roll_interval_ms,
)
from streams.kafka.transactional import Unavailable
from streams.policy.audit import (
    AUDIT_OUTCOME_FIELDS,
    Source,
    audit_outcome,
    audit_record,
    audit_subject,
)
from streams.policy.config import PolicyConfig
from streams.policy.holds import validate_flag, validate_legal_hold
from streams.policy.models import (
    DAY_MS,
    AccountDeletionRequest,
    InvalidRecord,
    LegalHold,
    MisuseFlag,
)
from streams.policy.retention import (
    Deletion,
    Effect,
    Note,
    RetentionBook,
    Review,
    Tracked,
    fact_key,
    tracked_from_log_record,
    untrusted_tracked,
)
from streams.settings import Settings

log = logging.getLogger("streams.retention")

JOB = RETENTION
BOOKS = "books"  # the store; its changelog is ``<prefix>retention.books``
_CONTROL_FIELDS = ("misuse_flags", "legal_holds", "account_deletions")
_OPS = {"misuse_flags": "flag", "legal_holds": "legal", "account_deletions": "deletion"}
_ASK_EVERY_S = 0.1
TRACKED_FIELDS = (
    "request_id",
    "org_id",
    "api_key_id",
    "created_at_ms",
    "retention_days",
    "consent_version",
)  # how often the facts' end offsets are asked for the tick barrier


# --- settings ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RetentionSettings:
    config: PolicyConfig
    topology: Topology
    state_dir: Path
    tick_interval_s: float = 1.0
    tick_limit: int = 2000  # deletions per partition and tick; a backlog goes on next turn
    batch_size: int = 5000
    memory_mb: int = 96  # RocksDB write buffers and block cache, for every partition
    # R4/R15: deleted content unreadable within this many ms (``STREAMS_DELETION_BOUND_MS``;
    # the topics' configs are made for it by ``streams topics``).
    deletion_bound: int = field(default_factory=deletion_bound_ms)

    def __post_init__(self) -> None:
        # R4: deletion must happen within the configured bound after a record falls due.
        if self.tick_interval_s * 1000 * 4 > self.config.deletion_bound_ms:
            raise ValueError("tick_interval_s too long for PolicyConfig.deletion_bound_ms")


# --- the book's store ----------------------------------------------------------------------
_TIME = struct.Struct(">Q")


def _ms(value: int) -> bytes:
    try:
        return _TIME.pack(value)
    except struct.error:  # out of range (before 1970, or past 64 bits): clamped
        return _TIME.pack(min(max(value, 0), 2**64 - 1))


def _org_key(org_id: str, created_at_ms: int, request_id: bytes) -> bytes:
    return b"o" + org_id.encode() + b"\0" + _ms(created_at_ms) + request_id


def _due_key(due_ms: int, request_id: bytes) -> bytes:
    return b"e" + _ms(due_ms) + request_id


def book_indexes(key: bytes, value: bytes) -> list[bytes]:
    """A tracked record's index entries (``StoreSpec.derive``): its org / creation-time
    entry, and its schedule entry; derived from the row, never changelogged."""
    if key[:1] != b"r":
        return []
    row = marshal.loads(value)
    rid = key[1:]
    indexes = [_org_key(row[0], row[2], rid)] if row[0] else []
    if len(row) > _DUE and row[_DUE] >= 0:
        indexes.append(_due_key(row[_DUE], rid))
    return indexes


_DUE = 7  # the row's last field: when it is scheduled (-1: not scheduled)


class BookStore:
    """The ``TrackedStore`` of one partition's book, in a runtime ``KeyValueStore``:

    - ``r<request id>``  -> the tracked record (marshal; ids, times, offset, reviews, and
      when it is scheduled)
    - ``o<org>\\0<created ms><request id>`` (index: an org's records in creation order)
    - ``e<due ms><request id>`` (the schedule, in time order)
    - ``h<request id>`` -> the hold ids of a record due but held
    - ``f<fact key>`` -> a fact the book applied (JSON)

    Times are 8-byte big-endian so byte order is time order. The ``o`` and ``e`` entries
    are derived from the rows (``book_indexes``): the changelog carries each tracked record
    once, and a restore rebuilds both indexes. So a record has one schedule entry, at
    the last time it was scheduled for; the policy's sweep allows for that (it schedules a
    record again whenever it leaves it undeleted and unheld).
    """

    def __init__(self, kv: KeyValueStore, partition: int) -> None:
        if kv.derive is not book_indexes:  # the job's store has it from its StoreSpec
            kv.indexed_by(book_indexes)
        self.kv = kv
        self.partition = partition
        # The row read or written last: a record is read, then written (one disk read).
        self._last: tuple[bytes, bytes | None] | None = None
        # Held records are rare (only a hold parks one): while a partition has none, the
        # sweep and tracking need not look each record up in the store to know it.
        self._may_park = next(iter(kv.range(b"h", b"i")), None) is not None

    def _row(self, key: bytes) -> bytes | None:
        last = self._last
        if last is not None and last[0] == key:
            return last[1]
        data = self.kv.get(key)
        self._last = (key, data)
        return data

    def get(self, request_id: str) -> Tracked | None:
        data = self._row(b"r" + request_id.encode())
        return None if data is None else self._decode(request_id, data)

    def _decode(self, request_id: str, data: bytes) -> Tracked:
        org, api_key, created, days, offset, reviewed, consent = marshal.loads(data)[:_DUE]
        return Tracked(
            request_id, org, api_key, created, days, self.partition, offset, reviewed, consent
        )

    def put(self, record: Tracked, due_ms: int | None = None) -> None:
        key = b"r" + record.request_id.encode()
        previous = self._row(key)
        if due_ms is None:
            if previous is None:  # stored unscheduled, it would never be deleted (R4)
                raise ValueError("a new tracked record is stored with its due time")
            due = marshal.loads(previous)[_DUE:]
            due_ms = due[0] if due else -1
        self._write(key, record, due_ms, previous)

    def _write(self, key: bytes, record: Tracked, due: int, previous: bytes | None) -> None:
        data = marshal.dumps(
            (
                record.org_id,
                record.api_key_id,
                record.created_at_ms,
                record.retention_days,
                record.offset,
                tuple(record.reviewed),
                record.consent_version,
                due,
            )
        )
        self.kv.put(key, data, previous)
        self._last = (key, data)

    def delete(self, request_id: str) -> None:
        key = b"r" + request_id.encode()
        previous = self._row(key)
        if previous is not None:
            self.kv.delete(key, previous)  # its index entries with it
            self._last = (key, None)

    def scan(
        self, org_id: str, created_from_ms: int = 0, created_to_ms: int | None = None
    ) -> Iterator[Tracked]:
        head = b"o" + org_id.encode() + b"\0"
        start = head + _ms(created_from_ms)
        end = head + _ms(created_to_ms) if created_to_ms is not None else head[:-1] + b"\1"
        cut = len(head) + _TIME.size
        for key, _ in self.kv.range(start, end):
            record = self.get(key[cut:].decode())
            # An org id holding a NUL could share a prefix with another: compare exactly.
            if record is not None and record.org_id == org_id:
                yield record

    def schedule(self, request_id: str, due_ms: int) -> None:
        key = b"r" + request_id.encode()
        data = self._row(key)
        if data is not None:  # the policy schedules only what it stored
            self._write(key, self._decode(request_id, data), due_ms, data)

    def unschedule(self, due_ms: int, request_id: str) -> None:
        self.kv.delete_index(_due_key(due_ms, request_id.encode()))

    def due(
        self, until_ms: int, limit: int, after: tuple[int, str] | None = None
    ) -> list[tuple[int, str]]:
        entries: list[tuple[int, str]] = []
        start = b"e" if after is None else _due_key(after[0], after[1].encode()) + b"\0"
        for key, _ in self.kv.range(start, b"e" + _ms(until_ms + 1)):
            entries.append((_TIME.unpack_from(key, 1)[0], key[9:].decode()))
            if len(entries) >= limit:
                break
        return entries

    def park(self, request_id: str, hold_ids: tuple[str, ...]) -> None:
        self._may_park = True
        self.kv.put(b"h" + request_id.encode(), json.dumps(hold_ids).encode())

    def unpark(self, request_id: str) -> None:
        key = b"h" + request_id.encode()
        if self._may_park and key in self.kv:  # a changelog tombstone only if it was held
            self.kv.delete(key)

    def is_parked(self, request_id: str) -> bool:
        return self._may_park and b"h" + request_id.encode() in self.kv

    def parked(self) -> list[str]:
        return [key[1:].decode() for key, _ in self.kv.range(b"h", b"i")]

    def put_fact(self, key: str, value: Mapping[str, Any]) -> None:
        self.kv.put(b"f" + key.encode(), json.dumps(dict(value)).encode())

    def has_fact(self, key: str) -> bool:
        return b"f" + key.encode() in self.kv

    def facts(self) -> list[tuple[str, Mapping[str, Any]]]:
        return [(key[1:].decode(), json.loads(value)) for key, value in self.kv.range(b"f", b"g")]

    def __len__(self) -> int:
        return sum(1 for _ in self.kv.range(b"r", b"s"))


# --- facts (R5, R6, R15) ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Fact:
    """A control record as read: a valid flag, hold or deletion, or why it is not one."""

    source: Source
    key: bytes | None
    fact: MisuseFlag | LegalHold | AccountDeletionRequest | None
    invalid: tuple[str, str, str | None] | None = None  # (reason, error class, org id)


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


def fact_of(codec: Codec, op: str, message: Message) -> Fact:
    source = Source(str(message.topic()), int(message.partition() or 0), message.offset() or 0)
    try:
        record = decode_control(codec, op, message.value())
    except (DecodeError, InvalidRecord, TypeError) as exc:
        org = getattr(exc, "org_id", None)
        reason = getattr(exc, "reason", None) or "fields do not match contract"
        return Fact(source, message.key(), None, (reason, type(exc).__name__, org))
    fact: MisuseFlag | LegalHold | AccountDeletionRequest
    if op == "flag":
        fact = validate_flag(record)
    elif op == "legal":
        fact = validate_legal_hold(record)
    else:
        fact = AccountDeletionRequest(**record)
    return Fact(source, message.key(), fact)


@dataclass(slots=True)
class _Partition:
    """A book and how far into the facts it is; a view of its store (dropped with it)."""

    book: RetentionBook
    facts_applied: int = 0
    next_tick: float = 0.0  # monotonic: the job's clock may stand still (tests) or jump
    more: bool = False
    # Deletions of the next tick: from a few up to ``tick_limit``, doubling, so the first
    # transaction after a (re)start is small and its deletions are written in a second,
    # not after tick_limit x partitions of them (a restarted worker's first expiry).
    ramp: int = 250


# --- content read-back (R5) --------------------------------------------------------------
class ContentReader:
    """Reads retained log-store values back by offset for a safety review (R5)."""

    def __init__(self, bootstrap_servers: str, topic: str, group: str) -> None:
        self.topic = topic
        self._config = {
            **client_config(bootstrap_servers),
            "group.id": group,  # never committed; librdkafka requires one
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
        self._consumer = Consumer(self._config)

    def read(self, partition: int, wanted: Mapping[int, str], timeout_s: float = 10.0) -> dict:
        """{request id: raw value} for ``wanted`` {offset: request id} that are still there.

        Raises ``Unavailable`` when the broker did not answer up to the last wanted offset
        in time: "not there" is never guessed (the runtime tries the turn again, the
        deletion watch skips a round instead of counting a value gone)."""
        found: dict[str, bytes] = {}
        if not wanted:
            return found
        first, last = min(wanted), max(wanted)
        self._consumer.assign([TopicPartition(self.topic, partition, first)])
        assigned = time.monotonic()
        deadline = assigned + timeout_s
        delivered = False
        try:
            while time.monotonic() < deadline:
                message = self._consumer.poll(0.5)
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    # An end-of-partition event can be left over from the previous read of
                    # the same partition: it ends this read only after a record of this
                    # read, or once a stale one would have arrived (everything from
                    # ``first`` on compacted away or aborted).
                    eof = error.code() == KafkaError._PARTITION_EOF
                    if eof and (delivered or time.monotonic() - assigned > 1.0):
                        break
                    continue
                delivered = True
                offset = message.offset() or 0
                request_id = wanted.get(offset)
                key = message.key()
                value = message.value()
                matches = request_id is not None and key is not None and key.decode() == request_id
                if matches and request_id is not None and value is not None:
                    found[request_id] = value
                if offset >= last:
                    break
            else:
                # A new client for the next try: after a broker came back, an old one's
                # metadata could keep the partition's leader unknown (StateReader._end).
                self._consumer.close()
                self._consumer = Consumer(self._config)
                raise Unavailable(f"{self.topic}/{partition} not read up to {last} in time")
        finally:
            self._consumer.unassign()
        return found

    def close(self) -> None:
        self._consumer.close()


# --- deletion bound (R4, R15) ----------------------------------------------------------
class DeletionWatch:
    """Answers "deleted: is it gone yet?" for the log store, from the broker itself.

    The job notes the offset of each value it deletes (sampled: the first deletion of each
    second per partition, so memory stays within partitions x bound seconds) and a thread
    of its own reads that offset back now and then: while the broker still serves the value
    there, it is readable. ``oldest_readable_ms`` is the age of the oldest such value (0:
    none), exported as a metric to alert on before it reaches the bound.
    """

    def __init__(self, reader: ContentReader) -> None:
        self._reader = reader
        self._pending: dict[int, deque[tuple[int, int, str]]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def deleted(self, partition: int, offset: int, request_id: str, at_ms: int) -> None:
        pending = self._pending.setdefault(partition, deque())
        if not pending or at_ms // 1000 > pending[-1][0] // 1000:
            pending.append((at_ms, offset, request_id))

    def oldest_readable_ms(self, now_ms: int) -> int:
        oldest = 0
        for partition, pending in list(self._pending.items()):
            while pending and not self._readable(partition, pending[0][1], pending[0][2]):
                pending.popleft()
            if pending:
                oldest = max(oldest, now_ms - pending[0][0])
        return oldest

    def _readable(self, partition: int, offset: int, request_id: str) -> bool:
        # A deleted value compacted away is skipped: the offset is served no more.
        return request_id in self._reader.read(partition, {offset: request_id}, timeout_s=5.0)

    def start(self, metrics: JobMetrics, bound_ms: int, every_s: float) -> None:
        def watch() -> None:
            while not self._stop.wait(every_s):
                try:
                    oldest = self.oldest_readable_ms(wall_clock_ms())
                except Exception as exc:  # the metric is skipped, the job goes on
                    log.warning("deletion watch failed (%s)", type(exc).__name__)
                    continue
                metrics.deletion(bound_ms / 1000, oldest / 1000)

        self._thread = threading.Thread(target=watch, name="deletion-watch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._reader.close()


# --- the job -----------------------------------------------------------------------------
class RetentionJob:
    """The policy's ``RetentionBook`` per log-store partition, on the runtime."""

    def __init__(
        self,
        settings: RetentionSettings,
        contracts: Contracts,
        partitions: int,
        clock: Any = wall_clock_ms,
    ) -> None:
        self.settings = settings
        self.config = settings.config
        self.topics = settings.topology
        self.partitions = partitions
        self.clock = clock
        self._log_codec = contracts.codec("log_store")
        # Audit records of deletions, spliced like the router's: every deletion of a kind
        # shares its outcome fields, encoded once (Avro encoding was 15 % of an expiry).
        self._audit_runs = SplicedCodec(
            contracts.codec("audit"), [AUDIT_OUTCOME_FIELDS[0], "decided_at_ms"]
        )
        self._deletion_outcomes: dict[tuple[tuple[str, ...], tuple[str, ...]], bytes] = {}
        self._control_codecs = {
            self.topics.name(f): (_OPS[f], contracts.codec(f)) for f in _CONTROL_FIELDS
        }
        # Every fact read, in order, once per ``fact_key``: a book applies the first fact of
        # a key and never a later one (``RetentionBook.has_applied``), so a repeat (a flag
        # published again) is left out and the list stays as long as the distinct facts.
        self.facts: list[Fact] = []
        self._fact_keys: set[str] = set()
        self._reader: CompactedReader | None = None
        self._ends: PendingEnds | None = None
        self._asked_at = 0  # the job's clock when the pending end offsets were asked
        self._next_ask = 0.0
        # The latest instant up to which every published fact is applied: ticks delete
        # only what is due by then (0 until the facts were first read to their end).
        self.facts_complete_ms = 0
        self._content: ContentReader | None = None
        self._metrics: JobMetrics | None = None
        self._first_turn_ms: int | None = None
        self.watch: DeletionWatch | None = None
        self._roll_every_ms = roll_interval_ms(settings.deletion_bound)
        self._next_roll = 0.0
        self.spec = JobSpec(
            name=JOB,
            inputs=("log_store",),
            outputs=("log_store", "deletion_events", "safety_review", "audit", "dead_letters"),
            stores=(
                # Tombstones outlive the longest a checkpoint is trusted (DiskStores).
                StoreSpec(
                    BOOKS, topic_config={"delete.retention.ms": str(DAY_MS)}, derive=book_indexes
                ),
            ),
            punctuators=(
                Punctuator(0, self.apply_facts, per_partition=False),  # every turn, first
                Punctuator(0, self.tick),
                # Paced by wall time: the deletion bound is wall time, whatever the clock.
                Punctuator(0, self.roll, per_partition=False),
            ),
            subject_kind="log_record",
            tombstone=self.tombstone,
            undecodable=self.undecodable,
            batch_size=settings.batch_size,
            static_membership=True,  # a SIGKILLed worker's first expiry within seconds
            # What tracking needs; prompts, documents and generations are skipped unread.
            read_fields={"log_store": TRACKED_FIELDS},
        )

    # --- wiring -------------------------------------------------------------------------
    def attach(self, bootstrap_servers: str, group: str, metrics: JobMetrics) -> None:
        """The fact reader, the content reader for reviews, and the deletion watch."""
        self._metrics = metrics
        self._reader = CompactedReader(
            bootstrap_servers,
            list(self._control_codecs),
            self._on_fact,
            group_id=f"{group}-facts",
        )
        self._reader.catch_up()
        log_store = self.topics.log_store
        self._content = ContentReader(bootstrap_servers, log_store, f"{group}-content-reader")
        self.watch = DeletionWatch(
            ContentReader(bootstrap_servers, log_store, f"{group}-deletion-watch")
        )
        self.watch.start(
            metrics, self.settings.deletion_bound, max(1.0, self._roll_every_ms / 4000)
        )

    def close(self) -> None:
        for closeable in (self.watch, self._content, self._reader):
            if closeable is not None:
                closeable.close()

    def _on_fact(self, message: Message) -> None:
        op, codec = self._control_codecs[str(message.topic())]
        fact = fact_of(codec, op, message)
        if fact.fact is not None:
            key = fact_key(fact.fact)
            if key in self._fact_keys:
                return
            self._fact_keys.add(key)
        self.facts.append(fact)

    def book(self, ctx: Context, partition: int) -> _Partition:
        """The book of ``partition`` (built from its store's facts on first use)."""
        kv = ctx.stores(BOOKS).get(partition)
        if kv is None:  # not restored yet: ``partition`` is the current record's
            kv = ctx.store(BOOKS)
        return kv.view(
            "book",
            lambda kv: _Partition(
                RetentionBook(self.config, BookStore(kv, partition), partition, self.partitions)
            ),
        )

    # --- log-store records --------------------------------------------------------------
    def process(self, ctx: Context, record: dict[str, Any]) -> None:
        """R4/R7: a retained record arrives (or arrives again) in the log store."""
        source = ctx.source
        request_id = ctx.key.decode(errors="replace") if ctx.key is not None else None
        try:
            tracked = tracked_from_log_record(record, request_id, source.partition, source.offset)
        except InvalidRecord as exc:
            ctx.dead_letter(exc.reason, type(exc).__name__, org_id=exc.org_id)
            self._track_untrusted(ctx)
            return
        self._decide(ctx, tracked)

    def undecodable(self, ctx: Context) -> None:
        """R4 + R17: a value that cannot be read (dead-lettered already) is still deleted
        in time."""
        self._track_untrusted(ctx)

    def _track_untrusted(self, ctx: Context) -> None:
        if ctx.key is None:
            return
        now = ctx.now()
        source = ctx.source
        self._decide(
            ctx,
            untrusted_tracked(
                ctx.key.decode(errors="replace"), source.partition, source.offset, now, self.config
            ),
        )

    def _decide(self, ctx: Context, tracked: Tracked) -> None:
        state = self.book(ctx, ctx.partition)
        now = ctx.now()
        # A record due at once is deleted only up to where the facts are complete.
        limit = self.settings.tick_limit
        effects = state.book.record(tracked, min(now, self.facts_complete_ms), limit)
        self._effects(ctx, effects, ctx.source, now)

    def tombstone(self, ctx: Context) -> None:
        """A log-store tombstone (ours, read back): nothing is retained any more."""
        if ctx.key is not None and ctx.key != ROLL_KEY:
            self.book(ctx, ctx.partition).book.forget(ctx.key.decode(errors="replace"))

    # --- punctuators ----------------------------------------------------------------------
    def apply_facts(self, ctx: Context) -> None:
        """Read the facts published since the last turn and apply each to every owned book
        that has not applied it (exactly once: the book files it in its store, in this
        turn's transaction). Then move the instant up to which the facts are complete."""
        reader = self._reader
        if reader is None:
            return
        reader.poll()
        self._report_facts_behind(ctx.now())  # also when applying below fails
        complete_at: int | None = None
        if self._ends is not None:
            ends = self._ends.ends()
            if ends is not None and reader.reached(ends):
                complete_at, self._ends = self._asked_at, None
        if self._ends is None and time.monotonic() >= self._next_ask:
            self._next_ask = time.monotonic() + _ASK_EVERY_S
            self._asked_at = ctx.now()
            self._ends = reader.ask_published_ends()
        now = ctx.now()
        limit = self.settings.tick_limit
        for partition in sorted(ctx.stores(BOOKS)):
            state = self.book(ctx, partition)
            for fact in self.facts[state.facts_applied :]:
                self._apply(ctx, state.book, fact, now, limit)
            state.facts_applied = len(self.facts)
        if complete_at is not None:
            self.facts_complete_ms = max(self.facts_complete_ms, complete_at)
        self._report_facts_behind(now)

    def _report_facts_behind(self, now: int) -> None:
        """A stalled facts barrier stops every deletion: shown before the bound is missed.
        Before the facts are first complete, counted from the job's first turn."""
        if self._first_turn_ms is None:
            self._first_turn_ms = now
        if self._metrics is not None:
            since = self.facts_complete_ms or self._first_turn_ms
            self._metrics.facts_behind(max(0, now - since) / 1000)

    def _apply(self, ctx: Context, book: RetentionBook, fact: Fact, now: int, limit: int) -> None:
        if fact.fact is None:
            self._bad_fact(ctx, book, fact)
            return
        if book.has_applied(fact.fact):
            return
        # Deletions a fact makes due wait for the tick (and so for the facts barrier).
        at = min(now, self.facts_complete_ms)
        if isinstance(fact.fact, MisuseFlag):
            effects = book.flag(fact.fact, at, limit)
        elif isinstance(fact.fact, LegalHold):
            effects = book.legal_hold(fact.fact, at, limit)
        else:
            effects = book.delete_account(fact.fact, at, limit)
        self._effects(ctx, effects, fact.source, now)

    def _bad_fact(self, ctx: Context, book: RetentionBook, fact: Fact) -> None:
        """R17: a control record that is not a valid flag, hold or deletion changes nothing;
        the book of partition 0 (one per cluster) dead-letters it once."""
        assert fact.invalid is not None
        if book.partition != 0:
            return
        marker = json.dumps(["bad", *fact.source])
        if book.store.has_fact(marker):
            return
        book.store.put_fact(marker, {})
        reason, error_class, org = fact.invalid
        ctx.dead_letter(
            reason, error_class, org_id=org, subject_kind="control", about=(fact.source, fact.key)
        )

    def tick(self, ctx: Context) -> None:
        """R4: delete what is due in this partition (at most ``tick_limit`` per turn)."""
        state = self.book(ctx, ctx.partition)
        started = time.monotonic()
        if not state.more and started < state.next_tick:
            return
        state.next_tick = started + self.settings.tick_interval_s
        now = ctx.now()
        at = min(now, self.facts_complete_ms)
        limit = min(state.ramp, self.settings.tick_limit)
        state.ramp = limit * 2
        result = state.book.tick(at, limit)
        state.more = result.more
        if not result.more:
            state.book.prune_released(at)
        self._effects(ctx, result.effects, Source(self.topics.log_store, ctx.partition, -1), now)

    def roll(self, ctx: Context) -> None:
        """R4/R15: an idle partition's last segment rolls (and so can be compacted) only
        when something is appended (``streams.kafka.topics.TopicSpec.configs``): a
        ``ROLL_KEY`` tombstone goes to every owned partition of the compacted content
        topics each quarter of the bound."""
        started = time.monotonic()
        if started < self._next_roll:
            return
        self._next_roll = started + self._roll_every_ms / 1000
        mine = sorted(ctx.stores(BOOKS))
        for p in mine:
            ctx.emit("log_store", ROLL_KEY, None, partition=p)
        reviews = self._review_partitions
        for q in range(reviews):
            if q % self.partitions in mine:
                ctx.emit("safety_review", ROLL_KEY, None, partition=q)

    _review_partitions = 0  # set by ``build``: the safety-review topic's partition count

    # --- effects -> records ---------------------------------------------------------------
    def _effects(self, ctx: Context, effects: list[Effect], source: Source, now: int) -> None:
        if not effects:
            return
        reviews = [e for e in effects if isinstance(e, Review)]
        contents = self._read_contents(reviews) if reviews else {}
        for effect in effects:
            if isinstance(effect, Deletion):
                self._deletion(ctx, effect)
            elif isinstance(effect, Review):
                value = contents.get(effect.record.request_id)
                if value is None:
                    self._audit(ctx, self._unavailable(effect), source, now)
                    continue
                self._review(ctx, effect, value)
            self._audit(ctx, effect, source, now)

    def _deletion(self, ctx: Context, deletion: Deletion) -> None:
        record = deletion.record
        if self.watch is not None:
            self.watch.deleted(record.partition, record.offset, record.request_id, wall_clock_ms())
        # R4: the tombstone goes to the record's own partition, or compaction misses it.
        ctx.emit("log_store", record.request_id, None, partition=record.partition)
        # R4/R15: every copy goes: the safety-review copies too (keyed flag/request).
        for flag_id in record.reviewed:
            ctx.emit("safety_review", f"{flag_id}/{record.request_id}", None)
        ctx.emit(
            "deletion_events",
            record.request_id,
            {
                "request_id": record.request_id,
                "org_id": record.org_id,
                "reason": deletion.reason,
                "rule_ids": list(deletion.rule_ids),
                "deleted_at_ms": deletion.deleted_at_ms,
                "policy_version": self.config.policy_version,
            },
        )

    def _deletion_audit(
        self, deletion: Deletion, source: Source, now: int, reasons: tuple[str, ...]
    ) -> bytes:
        runs = self._audit_runs
        kind = (deletion.rule_ids, reasons)
        outcome = self._deletion_outcomes.get(kind)
        if outcome is None:
            if len(self._deletion_outcomes) >= 1024:  # kinds are few; bound it regardless
                self._deletion_outcomes.clear()
            outcome = self._deletion_outcomes[kind] = runs.encode_run(
                1,
                audit_outcome(
                    job=JOB,
                    routes=("deleted",),
                    rule_ids=deletion.rule_ids,
                    reasons=reasons,
                    consent_version="",
                    policy_version=self.config.policy_version,
                ),
            )
        record = deletion.record
        subject = audit_subject(
            job=JOB,
            source=source,
            subject_id=record.request_id,
            subject_kind="log_record",
            org_id=record.org_id or None,
            decided_at_ms=now,
            decision_suffix=deletion.decision_key,
        )
        return runs.encode_around(1, outcome, subject)

    def _read_contents(self, reviews: list[Review]) -> dict[str, bytes]:
        by_partition: dict[int, dict[int, str]] = {}
        for review in reviews:
            by_partition.setdefault(review.record.partition, {})[review.record.offset] = (
                review.record.request_id
            )
        found: dict[str, bytes] = {}
        if self._content is not None:
            for partition, wanted in by_partition.items():
                found.update(self._content.read(partition, wanted))
        return found

    def _review(self, ctx: Context, review: Review, value: bytes) -> None:
        log_record = self._log_codec.decode(value)
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
        ctx.emit("safety_review", key_for("safety_review", record), record)

    @staticmethod
    def _unavailable(review: Review) -> Note:
        return Note(
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

    def _audit(self, ctx: Context, effect: Effect, source: Source, now: int) -> None:
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
            # gets the same id whichever tick or fact triggered it (idempotent audit).
            source = Source(self.topics.log_store, record.partition, record.offset)
        ctx.decided(tuple(rules))
        if isinstance(effect, Deletion):
            ctx.emit("audit", subject_id, self._deletion_audit(effect, source, now, reasons))
            return
        ctx.emit(
            "audit",
            subject_id,
            audit_record(
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
            ),
        )


# --- process entry point ------------------------------------------------------------------
def retention_settings(settings: Settings) -> RetentionSettings:
    """The retention job's view of the worker's settings (``streams run retention``)."""
    state_dir = settings.state_dir or (
        Path("var") / "retention" / (settings.topology.log_store + "-" + settings.worker_id)
    )
    return RetentionSettings(
        config=settings.policy,
        topology=settings.topology,
        state_dir=state_dir,
        tick_interval_s=settings.tick_interval_s,
        tick_limit=settings.tick_limit,
    )


def build(
    settings: Settings,
    retention: RetentionSettings | None = None,
    contracts: Contracts | None = None,
) -> tuple[Runtime, RetentionJob]:
    """One retention worker: the job on the runtime, its state on disk."""
    from streams.jobs.wiring import contracts_of, runtime_of

    retention = retention or retention_settings(settings)
    contracts = contracts or contracts_of(settings)
    topology = settings.topology
    admin_topics = partition_counts(
        settings.bootstrap_servers, [topology.log_store, topology.safety_review]
    )
    job = RetentionJob(
        retention, contracts, admin_topics[settings.topology.log_store], settings.clock()
    )
    job._review_partitions = admin_topics[settings.topology.safety_review]
    runtime = runtime_of(
        job,
        settings,
        contracts=contracts,
        backend=DiskStores(retention.state_dir, memory_mb=retention.memory_mb),
    )
    group = settings.topology.group(JOB)
    job.attach(settings.bootstrap_servers, group, runtime.metrics)
    runtime.on_close.append(job.close)
    return runtime, job


def run(settings: Settings) -> None:
    """One retention worker until stopped (``streams run retention``)."""
    from streams.jobs.wiring import serve

    runtime, _ = build(settings)
    serve(runtime, settings)
