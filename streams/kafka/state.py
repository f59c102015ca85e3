"""Managed state: key-value stores whose changelog is written in the job's transaction.

A job declares its stores (``streams.kafka.runtime.StoreSpec``); the runtime gives it one
``KeyValueStore`` per owned input partition. Every write is remembered until the runtime
writes it to the store's changelog, a job-internal compacted topic co-partitioned with the
input (input partition p -> changelog partition p), *in the same Kafka transaction* as the
outputs and consumed offsets of the batch. So state and committed offsets always agree:

- a worker assigned partition p rebuilds p's store from changelog partition p with
  ``StateReader``, which reads ``read_committed`` until every transaction on that partition
  is resolved (the previous owner committed, was killed before committing, or is a zombie
  whose transaction the broker will abort);
- after an aborted transaction, or a batch discarded because partitions were revoked, the
  runtime drops the stores and restores them from their changelogs.

``KeyValueStore`` is the interface (get/put/delete, ordered range scans); ``MemoryStore``
its in-memory backend, restored in full from the changelog; ``DiskStores`` the on-disk one
(RocksDB through ``rocksdict``), for state larger than RAM:

- a batch's writes wait in memory until the batch's transaction has committed, then go to
  RocksDB in one write batch (``commit``): the disk never holds what Kafka may still abort
  (the scheme of Quix Streams' checkpoints);
- every few seconds the changelog offset the disk is known to hold is written with the
  data (``checkpoint``); a worker that restarts with its disk replays only the changelog
  after it, and one that lost its disk (or whose checkpoint is older than the changelog
  keeps tombstones, or below its start) rebuilds the partition from the changelog.
"""

from __future__ import annotations

import bisect
import logging
import shutil
import struct
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.kafka.clients import client_config
from streams.kafka.compacted import end_offset, settling
from streams.kafka.topics import create_topic, grow_copartitioned
from streams.kafka.transactional import Unavailable

log = logging.getLogger(__name__)

V = TypeVar("V")


# The index entries (keys; their values are empty) an entry implies (``derive``).
Derive = Callable[[bytes, bytes], Iterable[bytes]]


def reindexed(
    derive: Derive, key: bytes, old: bytes | None, new: bytes | None
) -> list[tuple[bytes, bytes | None]]:
    """The index writes of an entry going from ``old`` to ``new`` (None: absent), in order:
    the old value's index entries removed, then the new one's written (empty values)."""
    writes: list[tuple[bytes, bytes | None]] = []
    if old is not None:
        writes.extend((index, None) for index in derive(key, old))
    if new is not None:
        writes.extend((index, b"") for index in derive(key, new))
    return writes


class _Unread:
    """An entry's previous value not given (``KeyValueStore.put``): read when needed."""


UNREAD = _Unread()


class KeyValueStore(ABC):
    """One partition of a job's state: bytes keys in byte order, bytes values.

    Writes are recorded for the changelog (``take_changes``); a derived view (``view``)
    lives and dies with the store, so it can never outlive a restore.

    With ``derive`` (``StoreSpec.derive``), every entry's index entries are kept with the
    store in step with its writes, and never changelogged: a restore derives them again
    from the entries. The changelog then carries each entry once, not once per index (the
    retention job's books: one changelog record per tracked record instead of three).
    """

    def __init__(self) -> None:
        self._changes: dict[bytes, bytes | None] = {}
        self._views: dict[str, Any] = {}
        self._derive: Derive | None = None

    # --- the backend --------------------------------------------------------------------
    @abstractmethod
    def _get(self, key: bytes) -> bytes | None: ...

    @abstractmethod
    def _put(self, key: bytes, value: bytes) -> None: ...

    @abstractmethod
    def _delete(self, key: bytes) -> None: ...

    @abstractmethod
    def _range(self, start: bytes | None, end: bytes | None) -> Iterator[tuple[bytes, bytes]]: ...

    @abstractmethod
    def __len__(self) -> int: ...

    # --- what a job uses ----------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        return self._get(key)

    def __contains__(self, key: bytes) -> bool:
        return self._get(key) is not None

    def put(self, key: bytes, value: bytes, previous: bytes | None | _Unread = UNREAD) -> None:
        """``previous``: the entry's value as the job has just read it (with ``derive``,
        saves reading it again to re-index)."""
        if self._derive is not None:
            self._reindex(key, value, previous)
        self._put(key, value)
        self._changes[key] = value

    def delete(self, key: bytes, previous: bytes | None | _Unread = UNREAD) -> None:
        if self._derive is not None:
            self._reindex(key, None, previous)
        self._delete(key)
        self._changes[key] = None  # a tombstone in the changelog

    def delete_index(self, key: bytes) -> None:
        """Remove an index entry (e.g. a schedule entry read and done with). Not
        changelogged: a restore derives it again while its entry implies it."""
        self._delete(key)

    def _reindex(
        self, key: bytes, value: bytes | None, previous: bytes | None | _Unread = UNREAD
    ) -> None:
        assert self._derive is not None
        old = self._get(key) if isinstance(previous, _Unread) else previous
        for index, entry in reindexed(self._derive, key, old, value):
            if entry is None:
                self._delete(index)
            else:
                self._put(index, entry)

    @property
    def derive(self) -> Derive | None:
        """What the store derives its index entries with (None: no index entries)."""
        return self._derive

    def indexed_by(self, derive: Derive) -> None:
        """Keep ``derive``'s index entries from now on, derived first for what the store
        holds (a restored in-memory store; an on-disk one derives them as it restores)."""
        self._derive = derive
        for key, value in list(self._range(None, None)):
            for index in derive(key, value):
                self._put(index, b"")

    def range(
        self, start: bytes | None = None, end: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Entries with ``start <= key < end`` (None: unbounded), in ascending key order.

        Keys compare as bytes: to scan in time or org order, write them with fixed-width
        numbers (e.g. ``b"e/%015d/" % expiry_ms``) and a separator that sorts first.
        """
        return self._range(start, end)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return self._range(None, None)

    def view(self, name: str, build: Callable[[KeyValueStore], V]) -> V:
        """A structure derived from this store (e.g. totals summed over its entries), built
        on first use; the job keeps it in step with its own writes. Dropped with the store."""
        try:
            return cast(V, self._views[name])
        except KeyError:
            built = self._views[name] = build(self)
            return built

    # --- what the runtime uses ------------------------------------------------------------
    def take_changes(self) -> dict[bytes, bytes | None]:
        """The writes since the last call, last write per key (the changelog compacts the
        same way): what the runtime writes in this batch's transaction."""
        changes, self._changes = self._changes, {}
        return changes

    def stage(self, key: bytes, value: bytes | None) -> None:
        """A write whose changelog record is already on its way (an aborted batch's, offered
        again): part of the store, not recorded as a change."""
        if self._derive is not None:
            self._reindex(key, value)
        if value is None:
            self._delete(key)
        else:
            self._put(key, value)

    def committed(self) -> None:  # noqa: B027 - a hook: in memory there is nothing to do
        """The transaction holding the writes so far has committed."""

    def close(self) -> None:  # noqa: B027 - a hook: in memory there is nothing to do
        """The store is dropped (revocation, abort, shutdown): uncommitted writes are lost."""


class MemoryStore(KeyValueStore):
    """The in-memory backend: a dict, plus its keys sorted on demand for range scans (scans
    are rare, in punctuators; point reads and writes are per record and stay O(1))."""

    def __init__(self, contents: Mapping[bytes, bytes] | None = None) -> None:
        super().__init__()
        self._data: dict[bytes, bytes] = dict(contents or {})
        self._sorted: list[bytes] | None = None

    def _get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def _put(self, key: bytes, value: bytes) -> None:
        if key not in self._data:
            self._sorted = None
        self._data[key] = value

    def _delete(self, key: bytes) -> None:
        if self._data.pop(key, None) is not None:
            self._sorted = None

    def _range(self, start: bytes | None, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        if self._sorted is None:
            self._sorted = sorted(self._data)
        keys = self._sorted
        first = 0 if start is None else bisect.bisect_left(keys, start)
        last = len(keys) if end is None else bisect.bisect_left(keys, end)
        # A snapshot of the keys: the caller may delete what it scans.
        for key in keys[first:last]:
            value = self._data.get(key)
            if value is not None:
                yield key, value

    def __len__(self) -> int:
        return len(self._data)


# A backend: the store of one partition, given what its changelog holds.
StoreBackend = Callable[[Mapping[bytes, bytes]], KeyValueStore]

# The changelog's records after an offset, applied in batches: ``replay(partition, start,
# apply)`` returns the offset the partition was read to (``StateReader.replay``).
Replay = Callable[[int, int, Callable[[Sequence[tuple[bytes, bytes | None]]], None]], int]

_META = b"\xff\xff"  # partition prefixes are 2 bytes below 0xffff: meta keys sort last
_CHECKPOINT = struct.Struct(">qq")  # changelog offset, written at (ms)


class DiskStores:
    """The on-disk backend: one RocksDB for every partition of one store of this worker
    (keys prefixed by the partition), so one memtable budget and one block cache bound
    the worker's memory however many partitions it owns.

    ``memory_mb`` splits into the write buffers (a third) and the block cache. The
    write-ahead log is on but never synced: a killed process loses nothing (the OS has
    the appended log), so a restart replays at most the few seconds of changelog after the
    last checkpoint. Without it, a SIGKILL lost the memtable with its checkpoints and the
    restart replayed the whole changelog (14 s instead of ~1 s at 300k records). A machine
    crash may lose the log's tail; RocksDB then reopens at a consistent earlier point,
    its checkpoint included, and the changelog after it is replayed.
    """

    def __init__(self, directory: Path, memory_mb: int = 96, stale_after_ms: int = 43_200_000):
        """``stale_after_ms``: a checkpoint older than this is not trusted (the changelog's
        ``delete.retention.ms`` must be longer: a tombstone compacted away after the
        checkpoint would leave a deleted key behind on disk)."""
        from rocksdict import (  # imported here: jobs without on-disk state never load it
            BlockBasedOptions,
            Cache,
            DBCompressionType,
            Options,
            Rdict,
            WriteOptions,
        )

        self.directory = directory
        self.stale_after_ms = stale_after_ms
        self._rdict = Rdict
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_compression_type(DBCompressionType.lz4())
        options.set_bottommost_compression_type(DBCompressionType.zstd())
        options.set_db_write_buffer_size(memory_mb * 1024 * 1024 // 3)
        options.set_write_buffer_size(memory_mb * 1024 * 1024 // 6)
        options.set_max_write_buffer_number(2)
        # Levels from 64 MB up (x10 each): keys arrive in random order (request ids), and
        # with RocksDB's default 256 MB base every flush was merged into all the data
        # below it until the database passed 256 MB (tracking slowed as it grew).
        options.set_level_compaction_dynamic_level_bytes(True)
        options.set_max_bytes_for_level_base(64 * 1024 * 1024)
        options.set_target_file_size_base(16 * 1024 * 1024)
        table = BlockBasedOptions()
        table.set_block_cache(Cache(memory_mb * 1024 * 1024 * 2 // 3))
        table.set_bloom_filter(10, False)
        # Bloom filters and indexes stay with their files (about 1.5 B per key), not in the
        # block cache: a filter block of a large file outgrew a cache shard and was read
        # again for every lookup (1 ms per get past ~500k tracked records; 2 us now).
        table.set_cache_index_and_filter_blocks(False)
        options.set_block_based_table_factory(table)
        options.increase_parallelism(2)
        self._options = options
        self._write_options = WriteOptions()  # WAL on, not synced (see above)
        self._dbs: dict[str, Any] = {}

    def db(self, name: str) -> Any:
        db = self._dbs.get(name)
        if db is None:
            path = self.directory / name
            path.mkdir(parents=True, exist_ok=True)
            db = self._dbs[name] = self._rdict(str(path), self._options)
            db.set_write_options(self._write_options)
        return db

    def estimate(self, name: str) -> int:
        """Entries of store ``name`` on this worker's disk, every partition (RocksDB's
        estimate, ``rocksdb.estimate-num-keys``: exact only after compaction)."""
        return int(self.db(name).property_int_value("rocksdb.estimate-num-keys") or 0)

    def open(
        self, name: str, partition: int, replay: Replay, now_ms: int, derive: Derive | None = None
    ) -> DiskStore:
        """Partition ``partition`` of store ``name``, brought up to the changelog's end
        (with the index entries ``derive`` gives for what it replays)."""
        store = DiskStore(self.db(name), partition)
        store._derive = derive
        store.restore(replay, now_ms, self.stale_after_ms)
        return store

    def close(self) -> None:
        for db in self._dbs.values():
            db.close()
        self._dbs.clear()

    def destroy(self) -> None:
        """The disk lost (tests, benchmarks): every store of this worker removed."""
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class DiskStore(KeyValueStore):
    """One partition of a ``DiskStores`` store; writes wait in ``_pending`` until the
    transaction that carries their changelog records commits (``committed``)."""

    def __init__(self, db: Any, partition: int) -> None:
        super().__init__()
        if not 0 <= partition < 0xFFFF:
            raise ValueError("partition out of range for an on-disk store")
        self._db = db
        self.partition = partition
        self._prefix = partition.to_bytes(2, "big")
        self._end = (partition + 1).to_bytes(2, "big")
        self._meta = _META + self._prefix
        self._pending: dict[bytes, bytes | None] = {}
        self.restored_from = -1  # the changelog offset the last restore started at
        self.replayed = 0  # changelog records applied by the last restore

    # --- the backend --------------------------------------------------------------------
    def _get(self, key: bytes) -> bytes | None:
        pending = self._pending
        if key in pending:
            return pending[key]
        value: bytes | None = self._db.get(self._prefix + key)
        return value

    def _put(self, key: bytes, value: bytes) -> None:
        self._pending[key] = value

    def _delete(self, key: bytes) -> None:
        self._pending[key] = None

    def _range(self, start: bytes | None, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        from rocksdict import ReadOptions

        prefix = self._prefix
        cut = len(prefix)
        upper = prefix + end if end is not None else self._end
        # Snapshots of what is pending in the range: the caller may write while it scans.
        pending = sorted(
            (k, v)
            for k, v in self._pending.items()
            if (start is None or k >= start) and (end is None or k < end)
        )
        options = ReadOptions()
        options.set_iterate_upper_bound(upper)
        options.fill_cache(False)  # type: ignore[call-arg]  # a long scan must not evict the hot point reads' blocks
        it = self._db.iter(options)
        it.seek(prefix + (start or b""))
        index = 0
        while True:
            disk_key: bytes | None = it.key()[cut:] if it.valid() else None
            if index < len(pending) and (disk_key is None or pending[index][0] <= disk_key):
                key, value = pending[index]
                index += 1
                if disk_key == key:
                    it.next()
                if value is not None:
                    yield key, value
            elif disk_key is not None:
                value = it.value()
                it.next()
                yield disk_key, value
            else:
                return

    def __len__(self) -> int:
        """Entries on disk (what is still pending counted once committed), counted by a
        scan: for tests. The metrics take RocksDB's estimate (``DiskStores.estimate``):
        an exact count kept with every write cost a read of every written key (12 % of
        the retention worker's time when records expire)."""
        from rocksdict import ReadOptions

        options = ReadOptions()
        options.set_iterate_upper_bound(self._end)
        it = self._db.iter(options)
        it.seek(self._prefix)
        count = 0
        while it.valid():
            count += 1
            it.next()
        return count

    # --- what the runtime uses ----------------------------------------------------------
    def committed(self) -> None:
        """Write what the committed transaction carried, in one write batch."""
        if self._pending:
            self._write(list(self._pending.items()))
            self._pending.clear()

    def close(self) -> None:
        self._pending.clear()

    def checkpoint(self, offset: int, now_ms: int) -> None:
        """Everything in the changelog below ``offset`` is on disk (call after ``committed``)."""
        self._db[self._meta] = _CHECKPOINT.pack(offset, now_ms)

    def restore(self, replay: Replay, now_ms: int, stale_after_ms: int) -> None:
        meta = self._db.get(self._meta)
        start = 0
        if meta is not None:
            offset, written_at = _CHECKPOINT.unpack(meta)
            if now_ms - written_at <= stale_after_ms:
                start = offset
        if start == 0:
            # Nothing on disk to trust: whatever a crash left before the first checkpoint,
            # or a checkpoint too old, is rebuilt from the whole changelog.
            self._wipe()
        self.restored_from = start
        self.replayed = 0
        end = replay(self.partition, start, self._replayed)
        if end < start:
            # The changelog is shorter than the checkpoint: not this store's changelog any
            # more (recreated): rebuild from it.
            self._wipe()
            self.restored_from = 0
            end = replay(self.partition, 0, self._replayed)
        self.checkpoint(end, now_ms)

    def _wipe(self) -> None:
        self._db.delete_range(self._prefix, self._end)

    def _replayed(self, changes: Sequence[tuple[bytes, bytes | None]]) -> None:
        self.replayed += len(changes)
        self._write(changes if self._derive is None else self._with_indexes(changes))

    def _with_indexes(
        self, changes: Sequence[tuple[bytes, bytes | None]]
    ) -> list[tuple[bytes, bytes | None]]:
        """The changes with the index entries they remove and imply, in order."""
        derive = self._derive
        assert derive is not None
        keys = list(dict.fromkeys(key for key, _ in changes))
        current = dict(zip(keys, self._db.get([self._prefix + k for k in keys]), strict=True))
        out: list[tuple[bytes, bytes | None]] = []
        for key, value in changes:
            out.extend(reindexed(derive, key, current.get(key), value))
            out.append((key, value))
            current[key] = value
        return out

    def _write(self, changes: Sequence[tuple[bytes, bytes | None]]) -> None:
        from rocksdict import WriteBatch

        prefix = self._prefix
        batch = WriteBatch(raw_mode=True)
        for key, value in changes:  # in order: the last write of a key wins
            if value is None:
                batch.delete(prefix + key)
            else:
                batch.put(prefix + key, value)
        self._db.write(batch)


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
        self._reader_config = {
            **base,
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
        }
        self._reader = Consumer(self._reader_config)
        self._probe_config = {**base, "isolation.level": "read_uncommitted"}
        self._probe = Consumer(self._probe_config)

    def read(self, partition: int) -> dict[bytes, bytes]:
        """The live records of the partition: key -> latest value, tombstoned keys removed."""
        live: dict[bytes, bytes] = {}
        tp = TopicPartition(self.topic, partition)
        end = self._end(partition, self.timeout_s)
        if end <= 0:
            return live
        self._reader.assign([TopicPartition(self.topic, partition, OFFSET_BEGINNING)])
        deadline = time.monotonic() + self.timeout_s
        try:
            while self._reader.position([tp])[0].offset < end:
                if time.monotonic() > deadline:
                    self._renew_reader()
                    raise Unavailable(f"{self.topic}/{partition} not read to its end in time")
                for message in self._reader.consume(5000, 0.2):
                    if message.error() is None:
                        _apply(message, live)
        finally:
            self._reader.unassign()
        return live

    def replay(
        self,
        partition: int,
        start: int,
        apply: Callable[[Sequence[tuple[bytes, bytes | None]]], None],
    ) -> int:
        """Apply the committed records from ``start`` to the partition's end as of now, in
        batches (None: a tombstone); returns that end (``start`` if nothing was there)."""
        tp = TopicPartition(self.topic, partition)
        end = self._end(partition, self.timeout_s)
        if end <= start:
            return int(end)
        self._reader.assign([TopicPartition(self.topic, partition, start or OFFSET_BEGINNING)])
        deadline = time.monotonic() + self.timeout_s
        try:
            while self._reader.position([tp])[0].offset < end:
                if time.monotonic() > deadline:
                    self._renew_reader()
                    raise Unavailable(f"{self.topic}/{partition} not read to its end in time")
                batch = [
                    (key, message.value())
                    for message in self._reader.consume(5000, 0.2)
                    if message.error() is None and (key := message.key()) is not None
                ]
                if batch:
                    apply(batch)
        finally:
            self._reader.unassign()
        return int(end)

    def end(self, partition: int, timeout_s: float = 2.0) -> int:
        """The partition's high watermark (after a commit: every record written before).

        Short, for a checkpoint taken on the job's thread: when it fails the caller skips
        the checkpoint."""
        return self._end(partition, timeout_s)

    def _end(self, partition: int, timeout_s: float) -> int:
        """The high watermark, asked again with a new client while the old one fails:
        after a broker came back, a client's metadata could keep a partition unknown for
        minutes while a new one was answered at once (three brokers, one killed: a router
        exited on "Unknown partition" 30 s after the broker was back). ``Unavailable``
        when no answer came within ``timeout_s``: the runtime tries the turn again."""
        deadline = time.monotonic() + timeout_s
        tp = TopicPartition(self.topic, partition)
        while True:
            try:
                return end_offset(self._probe, tp, min(10.0, timeout_s))
            except KafkaException as exc:
                if not settling(exc.args[0]):
                    raise  # e.g. not authorized: the worker exits, it would not pass
                self._probe.close()
                self._probe = Consumer(self._probe_config)
                if time.monotonic() >= deadline:
                    raise Unavailable(f"{self.topic}/{partition}: no end offset: {exc}") from exc
                time.sleep(0.5)

    def _renew_reader(self) -> None:
        """A new reading client for the next try (its metadata may be stale, like the
        probe's in ``_end``)."""
        self._reader.close()
        self._reader = Consumer(self._reader_config)

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
    """Create the compacted changelog ``name`` with as many partitions as topic ``like``, with
    the deployment's replication (``topics.create_topic``); grow it when ``like`` has grown
    (``streams topics``): partition p of the store still restores from changelog
    partition p, and the new partitions start empty, as their inputs do."""
    admin = AdminClient(client_config(bootstrap_servers))
    metadata = admin.list_topics(timeout=timeout).topics
    source = metadata.get(like)
    if source is None or source.error is not None:
        raise RuntimeError(f"topic {like} does not exist")
    partitions = len(source.partitions)
    existing = metadata.get(name)
    if existing is not None and existing.error is None:
        if len(existing.partitions) > partitions:
            raise RuntimeError(f"{name} must have {partitions} partitions like {like}")
        if len(existing.partitions) < partitions:
            grow_copartitioned(admin, name, partitions, timeout)
        return name
    create_topic(admin, name, partitions, {"cleanup.policy": "compact", **(config or {})}, timeout)
    return name
