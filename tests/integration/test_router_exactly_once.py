"""Router workers as separate processes: SIGKILL mid-stream, restart, and scale-out."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.integration.conftest import Stack, make_stack
from tests.integration.router_workers import (
    RECORDS,
    assert_routed_exactly_once,
    feed,
    high_watermark,
    outputs,
    wait_for_audits,
    workers,
)

pytestmark = pytest.mark.integration


def test_sigkill_mid_stream_routes_every_record_exactly_once_R16_R9_R4(stack: Stack) -> None:
    """Exactly once: a worker SIGKILLed mid-stream and restarted loses nothing, doubles nothing
    (no duplicate audit R16, training candidate R9 or log-store R4 record)."""
    ids = feed(stack, RECORDS)
    with workers(stack, "0") as (first,):
        deadline = time.monotonic() + 120
        while high_watermark(stack, "audit") < RECORDS // 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        first.kill()
    killed_at = high_watermark(stack, "audit")
    assert killed_at > 0, "the worker produced nothing before the kill"
    with workers(stack, "0"):
        audits = wait_for_audits(stack, RECORDS)
    assert_routed_exactly_once(stack, ids)
    assert len(audits) == RECORDS


def _comparable(stack: Stack, out: dict[str, list[tuple[Any, Any]]]) -> dict[str, set[Any]]:
    """Outputs without what legitimately differs between runs (times, offsets, topic prefix,
    and whether a request waited long for the facts: R16 names such a wait)."""
    volatile = {"decided_at_ms", "decision_id", "source_partition", "source_offset", "source_topic"}
    prefix = stack.topology.prefix
    result = {}
    for field, records in out.items():
        result[field] = {
            (
                (k or "").removeprefix(prefix),
                tuple(
                    sorted(
                        (n, repr(_without_waits(x) if n == "reasons" else x))
                        for n, x in v.items()
                        if n not in volatile
                    )
                ),
            )
            for k, v in records
        }
    return result


def _without_waits(reasons: list[str]) -> list[str]:
    return [r for r in reasons if "long wait for the facts" not in r]


def test_two_workers_share_partitions_and_match_one_worker_R9_R16(
    kafka_bootstrap: str, schema_registry_url: str
) -> None:
    """Scale-out: two workers in one group produce exactly what one worker produces."""
    stack = make_stack(kafka_bootstrap, schema_registry_url)
    single = make_stack(kafka_bootstrap, schema_registry_url)
    ids = feed(stack, RECORDS // 4, seed=11)
    feed(single, RECORDS // 4, seed=11)
    with workers(stack, "0", "1"):
        wait_for_audits(stack, len(ids))
    with workers(single, "0"):
        wait_for_audits(single, len(ids))
    assert _comparable(stack, outputs(stack)) == _comparable(single, outputs(single))
