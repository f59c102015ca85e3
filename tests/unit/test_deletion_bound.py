"""R4, R15, R17: the topic configs that keep deleted content unreadable within the bound.

The broker's side of it (a fresh consumer finds nothing) is
``tests/integration/test_retention_job.py::test_deleted_content_is_unreadable_within_the_bound_R4_R15_R5``.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.kafka.topics import (
    CATALOGUE,
    COMPACT,
    DEFAULT_DELETION_BOUND_MS,
    FOREVER,
    deletion_bound_ms,
    spec_for,
)
from streams.policy.models import DAY_MS

# The broker's default log.retention.check.interval.ms: a segment past retention is
# deleted at the next check.
RETENTION_CHECK_MS = 5 * 60_000


@given(st.integers(20 * 60_000, 7 * DAY_MS))
def test_r4_r17_time_retained_content_is_gone_by_its_promised_age(bound: int) -> None:
    """Dead letters (30 days, R17) and safety-review copies: a record lives at most
    retention.ms + segment.ms + the broker's retention check, which stays within the
    promised age (the issue measured day 37 with 7-day segments)."""
    for field in ("dead_letters", "safety_review"):
        spec = spec_for(field)
        configs = spec.configs(bound)
        longest = int(configs["retention.ms"]) + int(configs["segment.ms"]) + RETENTION_CHECK_MS
        assert longest <= spec.retention_ms, field


@given(st.integers(4_000, 7 * DAY_MS))
def test_r4_r15_compacted_content_rolls_and_compacts_within_the_bound(bound: int) -> None:
    """The log store and safety review: the last segment rolls and must be compacted within
    a quarter of the bound each (with the retention job's nudges every quarter, a deleted
    value is gone within about half the bound plus the cleaner's back-off)."""
    for spec in CATALOGUE:
        if not spec.deletable_content or COMPACT not in spec.cleanup:
            continue
        configs = spec.configs(bound)
        assert int(configs["segment.ms"]) * 4 <= bound
        assert int(configs["max.compaction.lag.ms"]) * 4 <= bound


def test_r4_log_store_is_never_time_expired_by_the_broker() -> None:
    """Only the retention job deletes from the log store (a held record is never lost)."""
    assert spec_for("log_store").configs(DEFAULT_DELETION_BOUND_MS)["retention.ms"] == str(FOREVER)


def test_r15_safety_review_copies_can_be_tombstoned() -> None:
    assert spec_for("safety_review").configs()["cleanup.policy"] == "compact,delete"


def test_deletion_bound_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMS_DELETION_BOUND_MS", raising=False)
    assert deletion_bound_ms() == DEFAULT_DELETION_BOUND_MS == 3_600_000
    monkeypatch.setenv("STREAMS_DELETION_BOUND_MS", "20000")
    assert deletion_bound_ms() == 20_000
    monkeypatch.setenv("STREAMS_DELETION_BOUND_MS", "10")
    with pytest.raises(ValueError):
        deletion_bound_ms()
