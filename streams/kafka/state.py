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
its in-memory backend. An on-disk backend implements the same five ``_`` methods.
"""

from __future__ import annotations

import bisect
import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar, cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.kafka.clients import client_config
from streams.kafka.topics import create_topic, grow_copartitioned

log = logging.getLogger(__name__)

V = TypeVar("V")


class KeyValueStore(ABC):
    """One partition of a job's state: bytes keys in byte order, bytes values.

    Writes are recorded for the changelog (``take_changes``); a derived view (``view``)
    lives and dies with the store, so it can never outlive a restore.
    """

    def __init__(self) -> None:
        self._changes: dict[bytes, bytes | None] = {}
        self._views: dict[str, Any] = {}

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

    def put(self, key: bytes, value: bytes) -> None:
        self._put(key, value)
        self._changes[key] = value

    def delete(self, key: bytes) -> None:
        self._delete(key)
        self._changes[key] = None  # a tombstone in the changelog

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
