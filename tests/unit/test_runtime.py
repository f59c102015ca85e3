"""The runtime's managed state without a broker: ordered scans, restore after an abort.

What the broker does (transactions, restore from a real changelog, SIGKILL) is tested in
tests/integration (usage, safety evaluation, router); here the runtime's own bookkeeping.
"""

from __future__ import annotations

import uuid
from typing import Any

from streams.jobs.wiring import PolicyAuditTrail
from streams.kafka.runtime import (
    Context,
    JobSpec,
    Punctuator,
    StoreSpec,
    _Processing,
)
from streams.kafka.serde import Contracts, registry_client
from streams.kafka.state import MemoryStore
from streams.kafka.topics import Topology
from streams.kafka.transactional import Output
from streams.policy.config import PolicyConfig


def test_memory_store_scans_keys_in_byte_order_within_bounds() -> None:
    """Range scans (the retention job's expiry- and org-ordered scans need them): ascending,
    start inclusive, end exclusive, safe to delete from while scanning."""
    store = MemoryStore()
    for expiry in (30, 5, 1_000, 200):
        store.put(b"e/%015d/r-%d" % (expiry, expiry), b"1")
    store.put(b"o/org-a/r-1", b"1")
    assert [k for k, _ in store.range(b"e/", b"e0")] == [
        b"e/%015d/r-%d" % (e, e) for e in (5, 30, 200, 1_000)
    ]
    for key, _ in store.range(b"e/", b"e/%015d" % 100):
        store.delete(key)
    assert [k for k, _ in store.items()] == [
        b"e/%015d/r-200" % 200,
        b"e/%015d/r-1000" % 1_000,
        b"o/org-a/r-1",
    ]
    assert store.take_changes()[b"e/%015d/r-5" % 5] is None  # a tombstone for the changelog


class _Expiring:
    """Deletes what its punctuator finds, once per entry (as usage's window expiry does)."""

    def __init__(self) -> None:
        self.deleted: list[bytes] = []
        self.spec = JobSpec(
            name="expiring",
            inputs=("usage_events",),
            outputs=("audit", "dead_letters"),
            stores=(StoreSpec("state"),),
            punctuators=(Punctuator(0, self.expire),),
        )

    def process(self, ctx: Context, record: dict[str, Any]) -> None:
        raise AssertionError("no records in this test")

    def expire(self, ctx: Context) -> None:
        store = ctx.store("state")
        for key, _ in store.range():
            self.deleted.append(key)
            store.delete(key)


def test_a_store_restored_after_an_abort_includes_what_the_aborted_punctuators_wrote() -> None:
    """Exactly once for punctuators: what an aborted batch's punctuators wrote is written again
    with the next batch (the loop offers their outputs again), so the store restored after
    the abort includes it, and the punctuator does not decide the same thing twice."""
    topology = Topology("unit.")
    contracts = Contracts(registry_client(f"mock://runtime-{uuid.uuid4().hex}"), topology)
    changelog = {b"k1": b"v", b"k2": b"v"}  # committed
    unwritten: list[Output] = []
    job = _Expiring()
    processing = _Processing(
        job,
        contracts,
        PolicyAuditTrail(PolicyConfig()),
        clock=lambda: 0,
        restore=lambda name, partition: changelog,
        unwritten=lambda: unwritten,
    )
    processing.owned = {topology.usage_events: {0}}
    first = processing.refresh()  # restores partition 0, the punctuator deletes both
    assert sorted(o.key for o in first) == [b"k1", b"k2"] and job.deleted == [b"k1", b"k2"]
    assert all(o.value is None and o.topic == "unit.expiring.state" for o in first)
    unwritten[:] = first  # the transaction aborted: offered again with the next batch
    processing.forget()  # and the stores follow the committed offsets
    processing.refresh()
    assert job.deleted == [b"k1", b"k2"]  # not deleted (and tombstoned) a second time
    assert len(processing.stores["state"][0]) == 0


def test_R4_R17_a_deleted_review_copy_is_not_a_bad_record() -> None:
    """The retention job tombstones safety-review copies (R4/R15) and rolls idle partitions:
    the safety-evaluation job takes those tombstones as such, not as dead letters (R17)."""
    from streams.jobs.safety_evaluation import SafetyEvaluationJob
    from streams.jobs.wiring import PolicyAuditTrail
    from streams.kafka.runtime import JobDriver
    from streams.kafka.serde import Contracts, registry_client
    from streams.kafka.topics import Topology
    from streams.policy.config import PolicyConfig
    from streams.policy.redaction import Redactor

    contracts = Contracts(registry_client("mock://tombstones"), Topology("t."))
    config = PolicyConfig()
    driver = JobDriver(SafetyEvaluationJob(config, Redactor()), contracts, PolicyAuditTrail(config))
    assert driver.process("safety_review", b"f-1/r-1", None) == []
