"""The leak-canary check against the real broker, and proof that it catches a leak."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from streams.jobs.router import build_router_loop
from streams.verify import CanaryRun, verify
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def run_router(stack: Stack, expected: int) -> None:
    loop, _ = build_router_loop(stack.settings())
    deadline = time.monotonic() + 60
    loop.run(until=lambda: loop.decided >= expected or time.monotonic() > deadline)


def test_canaries_never_reach_forbidden_places_R1_R2_R9_R11_R12_R15_R17(
    stack: Stack, tmp_path: Path
) -> None:
    """Canaries of ZDR, private, third-party, deleted, opted-out, Drive, pre-opt-in, flagged
    and PII requests are searched for in every output topic and in the job's log output."""
    log_file = tmp_path / "router.log"
    handler = logging.FileHandler(log_file)
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        report = verify(
            stack.bootstrap,
            stack.config,
            stack.contracts,
            int(time.time() * 1000),
            run_jobs=lambda expected: run_router(stack, expected),
            scan_paths=[log_file],
        )
    finally:
        logging.getLogger().removeHandler(handler)
    assert report.ok, report.render()
    assert report.checked[stack.topology.log_store] > 0


def test_canary_check_reports_a_leak_precisely(stack: Stack) -> None:
    """A job that wrote a ZDR request's content to the log store is caught, with coordinates."""
    run = CanaryRun(stack.config, stack.contracts, int(time.time() * 1000))
    producer = Producer({"bootstrap.servers": stack.bootstrap})
    producer.produce(stack.topology.log_store, key="x", value=run.tokens["zdr"].encode())
    producer.flush(10)
    report = run.check(stack.bootstrap, fields=("log_store",))
    assert not report.ok
    assert any("zdr (R2) canary in" in v and "offset 0" in v for v in report.violations)
