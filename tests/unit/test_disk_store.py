"""The on-disk store backend (``streams.kafka.state.DiskStores``) against an in-memory
changelog: what reaches the disk and when, ordered scans over disk and pending writes, and
what a restart replays (R4/R5/R6: retention's state must come back exactly)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.kafka.state import DiskStores, KeyValueStore, MemoryStore

NOW = 1_800_000_000_000
Apply = Callable[[Sequence[tuple[bytes, bytes | None]]], None]


class Changelog:
    """One partition's changelog: (key, value) records at offsets 0, 1, ..."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []
        self.replayed_from: list[int] = []

    def write(self, changes: dict[bytes, bytes | None]) -> None:
        self.records.extend(changes.items())

    def replay(self, _partition: int, start: int, apply: Apply) -> int:
        self.replayed_from.append(start)
        if self.records[start:]:
            apply(self.records[start:])
        return len(self.records)


def write(key: bytes, value: bytes | None, *stores: KeyValueStore) -> None:
    """The same write (None: a delete) to each store."""
    for store in stores:
        if value is None:
            store.delete(key)
        else:
            store.put(key, value)


def test_R4_writes_reach_the_disk_only_after_their_transaction_commits(tmp_path: Path) -> None:
    stores = DiskStores(tmp_path)
    log = Changelog()
    store = stores.open("s", 0, log.replay, NOW)
    store.put(b"a", b"1")
    assert store.get(b"a") == b"1"  # the job reads its own writes at once
    log.write(store.take_changes())
    store.close()  # aborted: nothing reached the disk
    again = stores.open("s", 0, Changelog().replay, NOW)
    assert again.get(b"a") is None and len(again) == 0
    again.put(b"a", b"1")
    again.put(b"b", b"2")
    again.committed()
    assert len(again) == 2
    again.delete(b"a")
    again.committed()
    assert [k for k, _ in again.items()] == [b"b"] and len(again) == 1
    stores.close()


def test_R4_restart_with_the_disk_replays_only_after_the_checkpoint(tmp_path: Path) -> None:
    log = Changelog()
    stores = DiskStores(tmp_path)
    store = stores.open("s", 3, log.replay, NOW)
    for i in range(10):
        store.put(b"k%d" % i, b"v")
    changes = store.take_changes()
    log.write(changes)
    store.committed()
    store.checkpoint(len(log.records), NOW)
    store.delete(b"k0")
    log.write(store.take_changes())
    store.committed()  # after the checkpoint: on disk, and replayed again (idempotent)
    stores.close()
    stores = DiskStores(tmp_path)
    restored = stores.open("s", 3, log.replay, NOW + 1000)
    assert log.replayed_from[-1] == 10
    assert restored.replayed == 1
    assert [k for k, _ in restored.items()] == [b"k%d" % i for i in range(1, 10)]
    assert len(restored) == 9
    # Another partition of the same store knows nothing of these keys.
    other = stores.open("s", 4, Changelog().replay, NOW)
    assert len(other) == 0 and list(other.items()) == []
    stores.close()


def test_R4_a_stale_checkpoint_or_a_lost_disk_rebuilds_from_the_changelog(tmp_path: Path) -> None:
    log = Changelog()
    stores = DiskStores(tmp_path, stale_after_ms=1000)
    store = stores.open("s", 0, log.replay, NOW)
    store.put(b"gone", b"v")
    store.committed()  # on disk, but its changelog record was compacted away (a tombstone)
    store.checkpoint(0, NOW)
    stores.close()
    log.write({b"kept": b"v"})
    stores = DiskStores(tmp_path, stale_after_ms=1000)
    restored = stores.open("s", 0, log.replay, NOW + 5000)  # checkpoint older than allowed
    assert [k for k, _ in restored.items()] == [b"kept"]
    stores.destroy()
    fresh = DiskStores(tmp_path).open("s", 0, log.replay, NOW)
    assert [k for k, _ in fresh.items()] == [b"kept"]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"a", b"b", b"c", b"d", b"e"]),
            st.one_of(st.none(), st.binary(min_size=1, max_size=3)),
            st.booleans(),
        ),
        max_size=40,
    ),
    st.sampled_from([None, b"b"]),
    st.sampled_from([None, b"d"]),
)
def test_R4_range_scans_merge_pending_writes_and_the_disk_like_memory(
    writes: list[tuple[bytes, bytes | None, bool]], start: bytes | None, end: bytes | None
) -> None:
    """Whatever is committed or pending, a scan sees what an in-memory store sees."""
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        stores = DiskStores(Path(directory))
        disk = stores.open("s", 0, Changelog().replay, NOW)
        memory = MemoryStore()
        for key, value, commit in writes:
            write(key, value, disk, memory)
            if commit:
                disk.committed()
        assert list(disk.range(start, end)) == list(memory.range(start, end))
        keys = [b"a", b"b", b"c", b"d", b"e"]
        assert [disk.get(k) for k in keys] == [memory.get(k) for k in keys]
        disk.committed()
        assert len(disk) == len(memory)
        stores.close()


def test_R4_a_sigkilled_worker_restarts_from_its_last_checkpoint(tmp_path: Path) -> None:
    """A process killed with SIGKILL right after a checkpoint: the restart replays only
    what follows the checkpoint (the write-ahead log kept it), not the whole changelog."""
    import os
    import signal
    import subprocess
    import sys

    script = f"""
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from streams.kafka.state import DiskStores
store = DiskStores(Path({str(tmp_path)!r})).open("s", 0, lambda p, s, a: s, {NOW})
for i in range(1000):
    store.put(b"k%04d" % i, b"v")
store.take_changes()
store.committed()
store.checkpoint(1000, {NOW})
os.kill(os.getpid(), signal.SIGKILL)
"""
    done = subprocess.run([sys.executable, "-c", script], check=False)
    assert done.returncode == -signal.SIGKILL
    log = Changelog()
    log.write({b"k%04d" % i: b"v" for i in range(1000)})
    log.write({b"late": b"v"})
    restored = DiskStores(tmp_path).open("s", 0, log.replay, NOW + 1000)
    assert log.replayed_from == [1000] and restored.replayed == 1
    assert len(restored) == 1001
    assert os.path.isdir(tmp_path / "s")


def by_value(key: bytes, value: bytes) -> list[bytes]:
    """An index: each entry under its value (``i<value>/<key>``), entries 'x...' none."""
    return [] if key.startswith(b"x") else [b"i" + value + b"/" + key]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"a", b"b", b"c", b"xa"]),
            st.one_of(st.none(), st.sampled_from([b"1", b"2", b"3"])),
            st.sampled_from(["commit", "checkpoint", ""]),
        ),
        max_size=40,
    )
)
def test_R4_R5_derived_index_entries_are_never_changelogged_and_come_back_on_restore(
    writes: list[tuple[bytes, bytes | None, str]],
) -> None:
    """A store with ``derive`` keeps each entry's index entries in step with its writes
    (in memory and on disk); the changelog carries only the entries; a restore with the
    disk (replaying after its checkpoint), without it, and in memory gives the same."""
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        log = Changelog()
        stores = DiskStores(Path(directory))
        disk = stores.open("s", 0, log.replay, NOW, derive=by_value)
        memory = MemoryStore()
        memory.indexed_by(by_value)
        for key, value, step in writes:
            write(key, value, disk, memory)
            changes = disk.take_changes()
            assert all(not k.startswith(b"i") for k in changes)
            assert changes == memory.take_changes()
            log.write(changes)
            if step:
                disk.committed()
            if step == "checkpoint":
                disk.checkpoint(len(log.records), NOW)
        disk.committed()
        live = list(memory.items())
        assert list(disk.items()) == live
        expected_index = sorted(
            i for k, v in live if not k.startswith(b"i") for i in by_value(k, v)
        )
        assert [k for k, _ in live if k.startswith(b"i")] == expected_index
        stores.close()
        stores = DiskStores(Path(directory))
        warm = stores.open("s", 0, log.replay, NOW + 1000, derive=by_value)
        assert list(warm.items()) == live
        stores.destroy()
        cold = DiskStores(Path(directory)).open("s", 0, log.replay, NOW, derive=by_value)
        assert list(cold.items()) == live
        replayed: dict[bytes, bytes | None] = dict(log.records)
        restored = MemoryStore({k: v for k, v in replayed.items() if v is not None})
        restored.indexed_by(by_value)
        assert list(restored.items()) == live
