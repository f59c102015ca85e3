"""docs/writing_a_job.md stays true: its example job runs on the runtime, on the real broker.

The example is read from the page (between its ``example`` markers) and run as written.
"""

from __future__ import annotations

import re
import time
import types
from pathlib import Path
from typing import Any

import pytest

from streams.jobs.wiring import PolicyAuditTrail, runtime_of
from streams.kafka.compacted import read_topic
from streams.kafka.runtime import JobDriver
from streams.kafka.topics import internal_topic
from streams.kafka.transactional import Unavailable
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

PAGE = Path(__file__).resolve().parents[2] / "docs" / "writing_a_job.md"


def example() -> types.ModuleType:
    text = PAGE.read_text()
    match = re.search(
        r"<!-- example: begin -->\s*```python\n(.*?)```\s*<!-- example: end -->", text, re.S
    )
    assert match, "the example block is missing from docs/writing_a_job.md"
    module = types.ModuleType("writing_a_job_example")
    exec(compile(match.group(1), str(PAGE), "exec"), module.__dict__)  # noqa: S102
    return module


def event(org: str, request_id: str) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "org_id": org,
        "endpoint": "chat",
        "model": "command-r",
        "deployment": "SAAS",
        "created_at_ms": int(time.time() * 1000),
        "input_tokens": 3,
        "output_tokens": 4,
        "policy_version": "test",
    }


def test_the_documented_example_job_runs_on_the_runtime_R16_R17(stack: Stack) -> None:
    """R16/R17: the page's example audits the first request of each org once, dead-letters
    an undecodable record without its bytes, and keeps its store in the transaction."""
    job = example().FirstSeen()
    stack.produce("usage_events", [("a", event("org-a", "r-1")), ("b", event("org-b", "r-2"))])
    stack.produce("usage_events", [("a", event("org-a", "r-3")), ("x", b"PROMPT not avro")])
    loop = runtime_of(job, stack.settings("doc"))
    deadline = time.monotonic() + 60
    loop.run(until=lambda: loop.decided >= 4 or time.monotonic() > deadline)
    audits = [v for _, v in stack.read("audit")]
    first = sorted(a["subject_id"] for a in audits if a["routes"] == ["first_seen"])
    assert first == ["r-1", "r-2"]
    letters = [v for _, v in stack.read("dead_letters")]
    assert [(d["error_class"], d["original_value"]) for d in letters] == [("DecodeError", None)]
    assert loop.summary()["out:state:orgs"] == 2  # one changelog record per new org


def test_the_documented_example_punctuator_scans_its_store_in_order_R16(stack: Stack) -> None:
    """R16: the example's punctuator counts the orgs of its store by an ordered range scan
    (driven without a broker, on a clock the test sets)."""
    job = example().FirstSeen()
    now = [1_800_000_000_000]
    driver = JobDriver(job, stack.contracts, PolicyAuditTrail(stack.config), clock=lambda: now[0])
    codec = stack.contracts.codec("usage_events")
    for org, request_id in (("org-b", "r-1"), ("org-a", "r-2"), ("org-b", "r-3")):
        driver.process("usage_events", None, codec.encode(event(org, request_id)))
    driver.punctuate()
    assert job.known == 2
    assert [k for k, _ in driver.store("orgs").range(b"org/", b"org0")] == [
        b"org/org-a",
        b"org/org-b",
    ]


def test_a_turn_whose_reads_are_unavailable_is_tried_again_not_doubled_R16(stack: Stack) -> None:
    """R16: a job that cannot read what it needs now (``Unavailable``: a broker lost) has
    its turn dropped and tried again in the same process, not exited; each decision is
    written once and the store holds each org once."""
    module = example()

    class Flaky(module.FirstSeen):  # type: ignore[misc, name-defined]
        failures = 2

        def process(self, ctx: Any, record: dict[str, Any]) -> None:
            super().process(ctx, record)  # the store write and audit of this turn: dropped
            if record["request_id"] == "r-2" and self.failures:
                self.failures -= 1
                raise Unavailable("log-store/0 not read up to 7 in time")

    job = Flaky()
    stack.produce("usage_events", [("a", event("org-a", "r-1")), ("b", event("org-b", "r-2"))])
    stack.produce("usage_events", [("c", event("org-c", "r-3"))])
    loop = runtime_of(job, stack.settings("flaky"))
    deadline = time.monotonic() + 60
    loop.run(until=lambda: loop.decided >= 3 or time.monotonic() > deadline)
    assert job.failures == 0
    first = [v["subject_id"] for _, v in stack.read("audit") if v["routes"] == ["first_seen"]]
    assert sorted(first) == ["r-1", "r-2", "r-3"]
    changelog = internal_topic(stack.topology, "first-seen", "orgs")
    keys = [key for key, _, _, _ in read_topic(stack.bootstrap, changelog)]
    assert sorted(keys) == [b"org/org-a", b"org/org-b", b"org/org-c"]
