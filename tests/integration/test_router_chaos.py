"""Chaos for the router: a broker restart and consumer-group rebalances while records flow."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from streams.infra.broker import LocalKafka
from tests.integration.conftest import Stack, make_stack
from tests.integration.router_workers import (
    RECORDS,
    assert_routed_exactly_once,
    feed,
    high_watermark,
    start_worker,
    wait_for_audits,
    workers,
)

pytestmark = pytest.mark.integration


def wait_until_audited(stack: Stack, count: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while high_watermark(stack, "audit") < count and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture()
def own_broker() -> Iterator[LocalKafka]:
    """A broker of the test's own, so restarting it disturbs no other test."""
    with LocalKafka() as kafka:
        yield kafka


def test_broker_restart_mid_stream_loses_and_doubles_nothing_R16_R4_R9(
    own_broker: LocalKafka, schema_registry_url: str
) -> None:
    """The broker goes down mid-stream and comes back on the same ports: exactly once holds."""
    stack = make_stack(own_broker.bootstrap_servers, schema_registry_url)
    ids = feed(stack, RECORDS // 2)
    with workers(stack, "0"):
        wait_until_audited(stack, RECORDS // 10)
        own_broker.restart()
        wait_for_audits(stack, len(ids), timeout_s=240)
    assert_routed_exactly_once(stack, ids)


def test_rebalance_while_records_flow_R16_R4_R9(stack: Stack) -> None:
    """A second worker joins mid-stream and the first is killed later: exactly once holds."""
    ids = feed(stack, RECORDS)
    with workers(stack, "0") as (first,):
        wait_until_audited(stack, RECORDS // 10)
        second = start_worker(stack, "1")
        try:
            wait_until_audited(stack, RECORDS // 2)
            first.kill()
            wait_for_audits(stack, len(ids), timeout_s=240)
        finally:
            second.stop()
    assert_routed_exactly_once(stack, ids)
