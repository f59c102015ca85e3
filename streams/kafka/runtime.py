"""The runtime every exactly-once job runs on, shaped like a processor API.

A job *declares* what it reads, writes and keeps (``JobSpec``: input topics, output routes
with their contracts, state stores, punctuators) and *processes* one decoded record at a
time through a ``Context``::

    class Counter:
        spec = JobSpec(name="usage", inputs=("usage_events",),
                       outputs=("usage_metrics", "audit", "dead_letters"),
                       stores=(StoreSpec("state"),), invalid=(InvalidRecord,))

        def process(self, ctx: Context, record: dict[str, Any]) -> None:
            store = ctx.store("state")
            ...
            ctx.emit("usage_metrics", key, metric)       # encoded with the route's contract
            ctx.audit(request_id, org_id, ["dropped"], ["R3"], ["R3: ..."])

The runtime owns what every job needs and none should write again:

- exactly once: the consume-transform-produce transaction of ``streams.kafka.transactional``
  (outputs, state changelogs and consumed offsets in one Kafka transaction), the
  stuck-transaction watchdog, and what revocation and aborts reset;
- the R17 envelope: an oversize or undecodable record, or one the job finds invalid (an
  exception of ``JobSpec.invalid``), becomes a dead letter and an audit record with its
  source coordinates; its content is withheld unless the job says it may be kept (R2);
- managed state (``streams.kafka.state``): one store per owned input partition, its
  changelog written in the batch's transaction and restored on assignment;
- time: ``ctx.now()`` and the punctuators run on one injectable clock;
- metrics (``streams.kafka.metrics``): records in per topic, out per route, decisions per
  rule, dead letters per reason class, consumer lag, state size, for every job. Counted
  in plain counters on the hot path and published once a second.

The plumbing never imports the policy: audit and dead-letter records are built by an
``AuditTrail`` the job's wiring passes in (``streams.jobs.wiring``), and invalid records
are recognised by the exception types the job declares.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from confluent_kafka import Message, TopicPartition

from streams.kafka.metrics import JobMetrics
from streams.kafka.serde import Codec, Contracts, DecodeError
from streams.kafka.state import (
    Derive,
    DiskStore,
    DiskStores,
    KeyValueStore,
    MemoryStore,
    StateReader,
    StoreBackend,
    ensure_copartitioned_topic,
)
from streams.kafka.topics import Topology, internal_topic
from streams.kafka.transactional import (
    LoopConfig,
    Output,
    PendingValue,
    TransactionalLoop,
    Unavailable,
    source_of,
)
from streams.source import Source

log = logging.getLogger(__name__)

Clock = Callable[[], int]  # milliseconds since the epoch


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class FileClock:
    """``now`` read from a file of epoch milliseconds (tests move time forward by writing it).

    A missing file means wall-clock time. The clock never goes backwards: an unreadable or
    older value keeps the last one. The file is read at most every ``cache_s`` seconds.
    """

    def __init__(self, path: Path, cache_s: float = 0.02) -> None:
        self.path = path
        self.cache_s = cache_s
        self._last = 0
        self._read_at = -1.0

    def __call__(self) -> int:
        now = time.monotonic()
        if now - self._read_at < self.cache_s:
            return self._last
        self._read_at = now
        try:
            value = int(self.path.read_text().strip())
        except FileNotFoundError:
            value = wall_clock_ms()
        except (OSError, ValueError):
            value = self._last
        self._last = max(self._last, value)
        return self._last


def write_clock(path: Path, now_ms: int) -> None:
    """Set a ``FileClock`` atomically (write then rename)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(now_ms))
    tmp.replace(path)


class Defer:
    """Returned by ``process`` to wait: the record stays buffered, its partition keeps its
    order and its offset is not committed; it is offered again on the next turn."""


DEFER = Defer()


@dataclass(frozen=True, slots=True)
class StoreSpec:
    """A key-value store; its changelog is ``<prefix><job>.<name>`` with ``topic_config``,
    co-partitioned with the input ``input`` (default: the job's first input): the store of
    partition p is restored and written by the worker that owns that input's partition p."""

    name: str
    topic_config: Mapping[str, str] = field(default_factory=dict)
    input: str | None = None
    # The index entries an entry implies (``KeyValueStore``: kept in step, not changelogged).
    derive: Derive | None = None


@dataclass(frozen=True, slots=True)
class Punctuator:
    """``run(ctx)`` every ``every_ms`` on the job's clock (0: every turn of the loop). On a
    job with stores and ``per_partition``, once per owned partition of the first store,
    with ``ctx.store`` bound to it; otherwise once (``ctx.stores(name)`` gives them all)."""

    every_ms: int
    run: Callable[[Context], None]
    per_partition: bool = True


@dataclass(frozen=True, slots=True)
class JobSpec:
    name: str  # the job's role: consumer group, transactional ids, internal topics, metrics
    inputs: tuple[str, ...]  # topic fields of the catalogue; their contracts decode the input
    outputs: tuple[str, ...]  # routes = topic fields; their contracts encode the output
    stores: tuple[StoreSpec, ...] = ()
    punctuators: tuple[Punctuator, ...] = ()
    # Exceptions that mean "decoded, but not a valid record" (R17): they carry ``reason``
    # (never content) and may carry ``org_id``.
    invalid: tuple[type[Exception], ...] = ()
    subject_kind: str = "record"  # what the job's audit records call their subject
    # R16: the subject (id, kind) of an invalid record, when one is readable; (None, kind)
    # otherwise. ``subject_field`` builds the usual one.
    subject_of: Callable[[str, Mapping[str, Any]], tuple[str | None, str]] | None = None
    # Called before a record is even decoded: DEFER holds it (the router waits for the
    # facts published before the record was read); None lets it through.
    gate: Callable[[Context], Defer | None] | None = None
    # A record without a value (a tombstone of a compacted input) goes here, not to the
    # decoder; None: decoded like any record (and so dead-lettered: R17).
    tombstone: Callable[[Context], None] | None = None
    # Called after an undecodable or oversize record was dead-lettered, for a job that
    # must still act on its coordinates (retention deletes even what it cannot read, R4).
    undecodable: Callable[[Context], None] | None = None
    dead_letter_rules: tuple[str, ...] = ("R17",)
    # Rules added to a dead letter whose content is withheld (e.g. ("R2",) for a job whose
    # input may be a ZDR org's content).
    withheld_rules: tuple[str, ...] = ()
    # R2: whether the bytes of an invalid record of this org may be copied into its dead
    # letter. Undecodable or oversize bytes never are. Default: never (fail closed).
    keep_invalid_content: Callable[[str | None, Mapping[str, Any]], bool] | None = None
    # The order to write a transaction's outputs in (e.g. shuffled, so it says nothing
    # about the input's order); None keeps the order they were emitted in.
    arrange: Callable[[list[Output]], list[Output]] | None = None
    batch_size: int = 5000
    # Static group membership (KIP-345; ``group.instance.id`` = the transactional id): a
    # worker restarted after a crash takes its partitions back at once instead of after
    # the session timeout. The cost: a worker that leaves for good holds its partitions
    # until the session timeout. For a job whose restart must be quick (retention: its
    # first expiry after a SIGKILL).
    static_membership: bool = False
    # The fields a job reads of an input (the others are skipped in the bytes, never
    # decoded): e.g. retention tracks ids and times of a log record, never its content.
    read_fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def subject_field(
    name: str, kind: str
) -> Callable[[str, Mapping[str, Any]], tuple[str | None, str]]:
    """``JobSpec.subject_of`` for records whose subject id is the string field ``name``."""

    def subject(_topic: str, record: Mapping[str, Any]) -> tuple[str | None, str]:
        value = record.get(name)
        return (value, kind) if isinstance(value, str) and value else (None, "undecodable")

    return subject


class Job(Protocol):
    spec: JobSpec

    def process(self, ctx: Context, record: dict[str, Any]) -> Defer | None:
        """Decide one decoded record: emit, audit, dead-letter, read and write stores."""
        ...


class AuditTrail(Protocol):
    """Builds the R16 audit and R17 dead-letter records (the policy's, given by the wiring)."""

    def decision(
        self,
        *,
        job: str,
        source: Source,
        subject_id: str,
        subject_kind: str,
        org_id: str | None,
        routes: Iterable[str],
        rule_ids: Iterable[str],
        reasons: Iterable[str],
        consent_version: str,
        decided_at_ms: int,
    ) -> Mapping[str, Any]: ...

    def dead_letter(
        self,
        *,
        job: str,
        source: Source,
        reason: str,
        error_class: str,
        org_id: str | None,
        original_key: bytes | None,
        original_value: bytes | None,
        keep_content: bool,
        decided_at_ms: int,
        rule_ids: Iterable[str],
        subject_id: str | None,
        subject_kind: str,
    ) -> tuple[Mapping[str, Any], Mapping[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class Connection:
    """Where the job's clients connect and who this worker is."""

    bootstrap_servers: str
    worker_id: str = "0"
    # A transaction stuck longer than this exits the worker (None: never); see LoopConfig.
    exit_when_stuck_s: float | None = None
    max_record_bytes: int = 1_000_000  # R17: larger records are dead-lettered


class Context:
    """What a job sees while it decides one record (or runs a punctuator)."""

    __slots__ = ("_runtime", "source", "key", "value", "partition", "outputs")

    def __init__(self, runtime: _Processing) -> None:
        self._runtime = runtime
        self.source = Source("", -1, -1)
        self.key: bytes | None = None
        self.value: bytes | None = None
        self.partition = -1
        self.outputs: list[Output] = []

    def now(self) -> int:
        """The job's clock, in milliseconds."""
        return self._runtime.clock()

    def emit(
        self,
        route: str,
        key: bytes | str | None,
        value: Mapping[str, Any] | bytes | PendingValue | None,
        *,
        partition: int = -1,
        timestamp_ms: int | None = None,
    ) -> None:
        """Write to a declared output: a record (encoded with the route's contract), bytes
        already encoded, a value still being computed, or None (a tombstone)."""
        runtime = self._runtime
        topic, codec = runtime.routes[route]
        # bytes first: the router emits pre-encoded bytes, and an isinstance check against
        # the Mapping ABC costs more than the exact type check (router hot path).
        if type(value) is not bytes and isinstance(value, Mapping):
            value = codec.encode(value)
        runtime.routed[route] += 1
        self.outputs.append(Output(topic, key, value, partition, timestamp_ms))

    def audit(
        self,
        subject_id: str,
        org_id: str | None,
        routes: Iterable[str],
        rules: Sequence[str],
        reasons: Iterable[str],
        *,
        consent_version: str = "",
        subject_kind: str | None = None,
    ) -> None:
        """R16: the decision about the current record, with the rule ids that made it."""
        runtime = self._runtime
        record = runtime.trail.decision(
            job=runtime.spec.name,
            source=self.source,
            subject_id=subject_id,
            subject_kind=subject_kind or runtime.spec.subject_kind,
            org_id=org_id,
            routes=routes,
            rule_ids=rules,
            reasons=reasons,
            consent_version=consent_version,
            decided_at_ms=runtime.clock(),
        )
        runtime.rules[tuple(rules)] += 1
        self.emit("audit", subject_id, record)

    def dead_letter(
        self,
        reason: str,
        error_class: str,
        *,
        org_id: str | None = None,
        subject_id: str | None = None,
        subject_kind: str | None = None,
        rules: Sequence[str] | None = None,
        keep_content: bool = False,
        about: tuple[Source, bytes | None] | None = None,
    ) -> None:
        """R17: set the current record aside with its coordinates and ``reason`` (never
        content); its bytes are copied only with ``keep_content`` (R2). ``about``: the
        (source, key) of another record than the current one (e.g. a bad state record a
        punctuator read), whose content is never copied."""
        runtime = self._runtime
        spec = runtime.spec
        source, key = about or (self.source, self.key)
        keep_content = keep_content and about is None
        if rules is None:
            rules = spec.dead_letter_rules + (() if keep_content else spec.withheld_rules)
        letter, audit = runtime.trail.dead_letter(
            job=spec.name,
            source=source,
            reason=reason,
            error_class=error_class,
            org_id=org_id,
            original_key=key,
            original_value=self.value if keep_content else None,
            keep_content=keep_content,
            decided_at_ms=runtime.clock(),
            rule_ids=rules,
            subject_id=subject_id,
            subject_kind=subject_kind or spec.subject_kind,
        )
        runtime.dead_letters[error_class] += 1
        runtime.rules[tuple(rules)] += 1
        log.warning("dead letter %s: %s", source.id, reason)
        self.emit("dead_letters", source.id, letter)
        self.emit("audit", subject_id or source.id, audit)

    def decided(self, rules: tuple[str, ...]) -> None:
        """A decision audited by the job itself, or not one by one (e.g. a request counted,
        R3): its rules are counted in the metrics. Counted per tuple of rules, expanded
        into per-rule counts only when published (one count per record on the hot path)."""
        self._runtime.rules[rules] += 1

    def store(self, name: str) -> KeyValueStore:
        """The store ``name`` of the current record's partition (restored if need be)."""
        return self._runtime.store(name, self.partition)

    def stores(self, name: str) -> dict[int, KeyValueStore]:
        """Every restored store ``name`` of the owned partitions, by partition."""
        return self._runtime.stores[name]


class _Processing:
    """The transactional loop's processor: the envelope, the context, the stores."""

    def __init__(
        self,
        job: Job,
        contracts: Contracts,
        trail: AuditTrail,
        *,
        clock: Clock,
        restore: Callable[[str, int], Mapping[bytes, bytes]],
        unwritten: Callable[[], list[Output]] = list,
        backend: StoreBackend | DiskStores = MemoryStore,
        max_record_bytes: int = 1_000_000,
        readers: Mapping[str, StateReader] | None = None,
    ) -> None:
        """``restore(store, partition)``: what the store's changelog holds for a partition;
        ``readers``: the changelogs' readers, for an on-disk backend (it replays only what
        its checkpoint lacks)."""
        self.job = job
        self.spec = spec = job.spec
        self.trail = trail
        self.clock = clock
        self.restore = restore
        self.unwritten = unwritten  # outputs of an aborted batch, to be written with the next
        self.backend = backend
        self.max_record_bytes = max_record_bytes
        self.readers = readers or {}
        self._next_checkpoint = 0.0
        topics = contracts.topics
        self.decoders: dict[str, Codec] = {
            topics.name(name): (
                contracts.codec(name).projection(spec.read_fields[name])
                if name in spec.read_fields
                else contracts.codec(name)
            )
            for name in spec.inputs
        }
        self.routes: dict[str, tuple[str, Codec]] = {
            route: (topics.name(route), contracts.codec(route)) for route in spec.outputs
        }
        for needed in ("audit", "dead_letters"):
            if needed not in self.routes:
                raise ValueError(f"job {spec.name} must declare the {needed} output (R16/R17)")
        self.changelogs = changelog_topics(spec, topics)
        self.stores: dict[str, dict[int, KeyValueStore]] = {s.name: {} for s in spec.stores}
        self.derive = {s.name: s.derive for s in spec.stores}
        # The input topic each store is co-partitioned with, and the partitions assigned.
        self.store_topic = {s.name: topics.name(s.input or spec.inputs[0]) for s in spec.stores}
        self.owned: dict[str, set[int]] = {}
        self.ctx = Context(self)
        self._next_due = [0] * len(spec.punctuators)
        # Hot-path counts, published to the metrics once a second (``publish``).
        self.consumed: Counter[str] = Counter()
        self.routed: Counter[str] = Counter()
        self.rules: Counter[tuple[str, ...]] = Counter()
        self.dead_letters: Counter[str] = Counter()
        self._published: dict[str, Counter[str]] = {}
        self._turn_start = self._counts()

    def _counts(self) -> tuple[Counter[Any], ...]:
        return tuple(
            Counter(c) for c in (self.consumed, self.routed, self.rules, self.dead_letters)
        )

    def dropped(self) -> None:
        """The turn was dropped (aborted, revoked, unavailable): its records are read and
        counted again, so its counts go, with its state."""
        self.forget()
        self.consumed, self.routed, self.rules, self.dead_letters = self._turn_start
        self._turn_start = self._counts()

    # --- state ----------------------------------------------------------------------------
    def store(self, name: str, partition: int) -> KeyValueStore:
        stores = self.stores[name]
        store = stores.get(partition)
        if store is None:
            started = time.monotonic()
            backend = self.backend
            derive = self.derive[name]
            if isinstance(backend, DiskStores):
                # Wall time, not the job's clock: a checkpoint's age is measured against
                # the changelog's tombstone retention, which runs on the broker's time.
                store = backend.open(
                    name, partition, self.readers[name].replay, wall_clock_ms(), derive
                )
            else:
                store = backend(self.restore(name, partition))
                if derive is not None:
                    store.indexed_by(derive)
            # What an aborted batch's punctuators wrote is written again with the next batch
            # (the loop offers their outputs again): the store includes it meanwhile, so a
            # punctuator does not decide the same thing twice.
            topic = self.changelogs[name]
            for out in self.unwritten():
                if out.topic == topic and out.partition == partition:
                    key = out.key.encode() if isinstance(out.key, str) else out.key
                    if key is not None and (out.value is None or isinstance(out.value, bytes)):
                        store.stage(key, out.value)
            stores[partition] = store
            # On disk the count is not kept (``DiskStore.__len__``): what was replayed is.
            size = (
                f"{store.replayed} replayed from {store.restored_from}"
                if isinstance(store, DiskStore)
                else f"{len(store)} entries"
            )
            log.info(
                "partition %d restored: store %s, %s in %.2fs",
                partition,
                name,
                size,
                time.monotonic() - started,
            )
        return store

    def committed(self, checkpoint_every_s: float = 5.0) -> None:
        """The batch's transaction committed: on-disk stores write it, and every few seconds
        note the changelog offset they hold (a restart with the disk replays from there)."""
        checkpoint = False
        if isinstance(self.backend, DiskStores):
            now = time.monotonic()
            checkpoint = now >= self._next_checkpoint
            if checkpoint:
                self._next_checkpoint = now + checkpoint_every_s
        for name, stores in self.stores.items():
            for partition, store in stores.items():
                store.committed()
                if checkpoint and isinstance(store, DiskStore):
                    # Only this worker writes the partition, and its last transaction is
                    # acknowledged: everything below the high watermark is on disk.
                    try:
                        end = self.readers[name].end(partition)
                    except Unavailable as exc:  # leaders moving: the next one will do
                        log.warning("checkpoint of %s/%d skipped: %s", name, partition, exc)
                        self._next_checkpoint = 0.0
                        continue
                    store.checkpoint(end, wall_clock_ms())

    def restore_owned(self) -> None:
        """Stores are restored on assignment, before the partition's first record."""
        for name, stores in self.stores.items():
            for partition in sorted(self.owned.get(self.store_topic[name], set()) - set(stores)):
                self.store(name, partition)

    def forget(self, partitions: Iterable[tuple[str, int]] | None = None) -> None:
        """Drop the stores of these input partitions (all when None): restored when next
        wanted."""
        for name, stores in self.stores.items():
            if partitions is None:
                for store in stores.values():
                    store.close()
                stores.clear()
            for topic, partition in partitions or ():
                if topic == self.store_topic[name] and partition in stores:
                    stores.pop(partition).close()

    def changelog(self) -> list[Output]:
        """This batch's writes to every store, as records of the co-partitioned changelogs."""
        outputs: list[Output] = []
        for name, stores in self.stores.items():
            topic = self.changelogs[name]
            written = 0
            for partition, store in stores.items():
                for key, value in store.take_changes().items():
                    outputs.append(Output(topic, key, value, partition))
                    written += 1
            if written:
                self.routed[f"state:{name}"] += written
        return outputs

    # --- the loop's processor ---------------------------------------------------------------
    def refresh(self) -> list[Output]:
        """Restore newly assigned stores, then run the punctuators that are due."""
        self._turn_start = self._counts()
        if self.stores:
            self.restore_owned()
        if not self.spec.punctuators:
            return []
        now = self.clock()
        ctx = self.ctx
        outputs: list[Output] = []
        ctx.outputs = outputs
        ctx.source, ctx.key, ctx.value = Source("", -1, -1), None, None
        next_due = list(self._next_due)  # moved on only if every punctuator ran
        for index, punctuator in enumerate(self.spec.punctuators):
            if now < next_due[index]:
                continue
            next_due[index] = now + punctuator.every_ms
            partitions = [-1]
            if self.stores and punctuator.per_partition:
                partitions = sorted(next(iter(self.stores.values())))
            for partition in partitions:
                ctx.partition = partition
                punctuator.run(ctx)
        self._next_due = next_due
        # What the punctuators wrote to stores goes with what they emitted: written in this
        # turn's transaction, or with the next one if this one aborts (and so counted now:
        # a dropped turn gives back only the counts of what it read).
        outputs.extend(self.changelog())
        self._turn_start = self._counts()
        return outputs

    def process(self, message: Message) -> list[Output] | None:
        ctx = self.ctx
        source = ctx.source = source_of(message)
        ctx.partition = source.partition
        ctx.key, value = message.key(), message.value()
        ctx.value = value
        outputs: list[Output] = []
        ctx.outputs = outputs
        gate = self.spec.gate
        if gate is not None and gate(ctx) is DEFER:
            return None
        self.consumed[source.topic] += 1
        spec = self.spec
        if value is None and spec.tombstone is not None:
            spec.tombstone(ctx)
            return outputs
        if value is not None and len(value) > self.max_record_bytes:
            ctx.dead_letter("oversize record", "Oversize")
            if spec.undecodable is not None:
                spec.undecodable(ctx)
            return outputs
        try:
            record = self.decoders[source.topic].decode(value)
        except DecodeError as exc:
            ctx.dead_letter(exc.reason, "DecodeError")
            if spec.undecodable is not None:
                spec.undecodable(ctx)
            return outputs
        try:
            if self.job.process(ctx, record) is DEFER:
                self.consumed[source.topic] -= 1  # counted again when it is offered again
                return None
        except self.spec.invalid as exc:
            del outputs[:]  # nothing of a record that turned out invalid is written
            self._invalid(ctx, exc, record)
            ctx.outputs = outputs
        return outputs

    def _invalid(self, ctx: Context, exc: Exception, record: dict[str, Any]) -> None:
        reason = getattr(exc, "reason", None) or "fields do not match contract"
        # Only the org the job's validation vouched for (R2: fail closed on content).
        org_id = getattr(exc, "org_id", None)
        org_id = org_id if isinstance(org_id, str) and org_id else None
        subject_of = self.spec.subject_of
        subject, kind = (None, "undecodable")
        if subject_of is not None:
            subject, kind = subject_of(ctx.source.topic, record)
        keep = self.spec.keep_invalid_content
        ctx.dead_letter(
            reason,
            type(exc).__name__,
            org_id=org_id,
            subject_id=subject,
            subject_kind=kind,
            keep_content=keep is not None and keep(org_id, record),
        )

    # --- metrics ------------------------------------------------------------------------------
    def publish(self, metrics: JobMetrics) -> None:
        rules: Counter[str] = Counter()
        for decided, n in self.rules.items():
            for rule in decided:
                rules[rule] += n
        for name, counts, push in (
            ("in", self.consumed, metrics.record_in),
            ("out", self.routed, metrics.record_out),
            ("rules", rules, metrics.decision),
            ("dead", self.dead_letters, metrics.dead_letter),
        ):
            seen = self._published.setdefault(name, Counter())
            for key, total in counts.items():
                if total > seen[key]:
                    push(key, total - seen[key])
                    seen[key] = total
        backend = self.backend
        for name, stores in self.stores.items():
            if isinstance(backend, DiskStores):
                metrics.state_size(name, backend.estimate(name))
            else:
                metrics.state_size(name, sum(len(store) for store in stores.values()))


def changelog_topics(spec: JobSpec, topics: Topology) -> dict[str, str]:
    """Store name -> its changelog, ``<prefix><job>.<store>`` (R18: only the job reads it)."""
    return {store.name: internal_topic(topics, spec.name, store.name) for store in spec.stores}


class Runtime(TransactionalLoop):
    """One worker of a job: the transactional loop driving the job through ``_Processing``."""

    processor: _Processing

    def __init__(
        self,
        job: Job,
        contracts: Contracts,
        trail: AuditTrail,
        connection: Connection,
        *,
        metrics: JobMetrics | None = None,
        clock: Clock = wall_clock_ms,
        backend: StoreBackend | DiskStores = MemoryStore,
        group_id: str | None = None,
    ) -> None:
        """``group_id``: the consumer group and transactional-id prefix; by default the
        job's role under the topic prefix (what the R18 ACLs grant)."""
        spec = job.spec
        topics = contracts.topics
        readers: dict[str, StateReader] = {}
        for store in spec.stores:
            changelog = changelog_topics(spec, topics)[store.name]
            # Co-partitioned with its input: input partition p -> changelog partition p.
            ensure_copartitioned_topic(
                connection.bootstrap_servers,
                changelog,
                topics.name(store.input or spec.inputs[0]),
                store.topic_config,
            )
            readers[store.name] = StateReader(
                connection.bootstrap_servers, changelog, group_prefix=spec.name
            )
        processing = _Processing(
            job,
            contracts,
            trail,
            clock=clock,
            restore=lambda name, partition: readers[name].read(partition),
            unwritten=lambda: self._unwritten,
            backend=backend,
            max_record_bytes=connection.max_record_bytes,
            readers=readers,
        )
        group_id = group_id or topics.group(spec.name)
        transactional_id = f"{group_id}-{connection.worker_id}"
        super().__init__(
            LoopConfig(
                bootstrap_servers=connection.bootstrap_servers,
                group_id=group_id,
                # Stable per worker: a restarted worker fences its dead predecessor.
                transactional_id=transactional_id,
                input_topics=[contracts.topics.name(name) for name in spec.inputs],
                batch_size=spec.batch_size,
                exit_when_stuck_s=connection.exit_when_stuck_s,
                extra_consumer=(
                    {"group.instance.id": transactional_id} if spec.static_membership else None
                ),
            ),
            processing,
        )
        self.job = job
        self.metrics = metrics or JobMetrics(spec.name)
        self._revoked_in_step = False
        self._next_publish = 0.0
        for reader in readers.values():
            self.on_close.append(reader.close)
        if isinstance(backend, DiskStores):
            self.on_close.append(self.processor.forget)
            self.on_close.append(backend.close)

    # --- the loop's extension points ----------------------------------------------------------
    def step(self) -> None:
        self._revoked_in_step = False
        super().step()
        if time.monotonic() >= self._next_publish:
            self.publish_metrics()

    def publish_metrics(self) -> None:
        self._next_publish = time.monotonic() + 1.0
        self.processor.publish(self.metrics)
        self.metrics.observe_consumer_lag(self.consumer)

    def arrange(self, outputs: list[Output]) -> list[Output] | None:
        if self._revoked_in_step:
            # Offsets of this batch may belong to another worker by now: re-read instead.
            log.info("partitions revoked mid-batch: batch discarded, re-reading")
            self.processor.dropped()
            return None
        outputs.extend(self.processor.changelog())
        arrange = self.job.spec.arrange
        return outputs if arrange is None else arrange(outputs)

    def aborted(self) -> None:
        # The loop went back to the committed offsets: the state must follow.
        self.processor.dropped()

    def committed(self) -> None:
        self.processor.committed()

    def revoked(self, partitions: list[TopicPartition]) -> None:
        self._revoked_in_step = True
        gone = {(tp.topic, tp.partition) for tp in partitions}
        for topic, partition in gone:
            self.processor.owned.setdefault(topic, set()).discard(partition)
        self.processor.forget(gone)

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        super()._on_assign(consumer, partitions)
        # Restored at the start of the next turn, outside the rebalance callback.
        for tp in partitions:
            self.processor.owned.setdefault(tp.topic, set()).add(tp.partition)

    @property
    def decided(self) -> int:
        """Records decided so far (a deferred record counts once it is decided)."""
        return sum(self.processor.consumed.values())

    def summary(self) -> dict[str, int]:
        """What the worker did so far: records in, out per route, dead letters (no content)."""
        p = self.processor
        return {
            "in": sum(p.consumed.values()),
            **{f"out:{route}": n for route, n in p.routed.items()},
            "dead_letters": sum(p.dead_letters.values()),
        }

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.processor.publish(self.metrics)  # the last counts, also of a short run


class JobDriver:
    """A job driven without a broker, the way the runtime drives it (Kafka Streams'
    ``TopologyTestDriver``): records in, outputs out; the stores' changelogs are kept in
    memory, so ``forget`` followed by the next record shows what a restore rebuilds."""

    def __init__(
        self,
        job: Job,
        contracts: Contracts,
        trail: AuditTrail,
        clock: Clock = wall_clock_ms,
        max_record_bytes: int = 1_000_000,
    ) -> None:
        self.changelog: dict[tuple[str, int], dict[bytes, bytes]] = {}
        self.processing = _Processing(
            job,
            contracts,
            trail,
            clock=clock,
            restore=lambda name, partition: dict(self.changelog.get((name, partition), {})),
            max_record_bytes=max_record_bytes,
        )
        self._topics = contracts.topics
        self._offsets: Counter[tuple[str, int]] = Counter()

    def process(
        self,
        field: str,
        key: bytes | None,
        value: bytes | None,
        partition: int = 0,
        offset: int | None = None,
    ) -> list[Output] | None:
        """One record of input ``field`` (at the partition's next offset unless given);
        None: deferred."""
        topic = self._topics.name(field)
        if offset is None:
            offset = self._offsets[(topic, partition)]
        self._offsets[(topic, partition)] = offset + 1
        return self.processing.process(ConsumedRecord(topic, partition, offset, key, value))  # type: ignore[arg-type]

    def punctuate(self) -> list[Output]:
        """The punctuators that are due on the job's clock: what they emitted and wrote."""
        return self._written(self.processing.refresh())

    def commit(self) -> list[Output]:
        """The changelog records of the writes so far, as the runtime adds them to a batch."""
        return self._written(self.processing.changelog())

    def _written(self, outputs: list[Output]) -> list[Output]:
        names = {topic: name for name, topic in self.processing.changelogs.items()}
        for out in outputs:
            if out.topic not in names:
                continue
            entries = self.changelog.setdefault((names[out.topic], out.partition), {})
            key = out.key.encode() if isinstance(out.key, str) else out.key
            assert key is not None
            if out.value is None:
                entries.pop(key, None)
            elif isinstance(out.value, bytes):
                entries[key] = out.value
        return outputs

    def forget(self) -> None:
        """What an abort or a revocation does: the stores are dropped (and later restored)."""
        self.processing.forget()

    def store(self, name: str, partition: int = 0) -> KeyValueStore:
        return self.processing.store(name, partition)


@dataclass(frozen=True, slots=True)
class ConsumedRecord:
    """A consumed record without a broker (``JobDriver``, tests): what the runtime reads of
    a confluent-kafka ``Message``."""

    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes | None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def error(self) -> None:
        return None
