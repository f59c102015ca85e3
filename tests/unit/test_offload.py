"""Work done in offload worker processes: results in order, failures loud and content-free.

The work functions below run in the worker processes (``python -m streams.kafka.offload``
imports this module there by name).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from streams.jobs.router import Router
from streams.jobs.wiring import PolicyAuditTrail
from streams.kafka.offload import Offload, OffloadError, Pending
from streams.kafka.runtime import JobDriver
from streams.kafka.serde import Contracts, registry_client
from streams.kafka.topics import Topology
from streams.kafka.transactional import Output
from streams.policy.config import PolicyConfig
from streams.policy.models import ControlsWatermark, DataControlChange
from streams.traffic import TrafficGenerator

SECRET = "jane.doe@example.com"
_factor = 0


def set_factor(factor: int) -> None:
    global _factor
    _factor = factor


def multiply(items: list[int]) -> list[bytes]:
    return [str(i * _factor).encode() for i in items]


def fail_on_secret(items: list[str]) -> list[bytes]:
    for item in items:
        if item == SECRET:
            raise ValueError(f"cannot handle {item}")
    return [item.encode() for item in items]


def report_pid(items: list[int]) -> list[bytes]:
    return [str(os.getpid()).encode() for _ in items]


def test_results_come_back_in_submission_order_across_chunks_and_workers() -> None:
    offload: Offload[int] = Offload(set_factor, multiply, (3,), processes=2, chunk_size=4)
    try:
        pending = [offload.submit(i) for i in range(101)]  # the last chunk is never full
        assert [p.result() for p in pending] == [str(3 * i).encode() for i in range(101)]
        again = [offload.submit(i) for i in range(5)]
        offload.collect()
        assert [p.result() for p in reversed(again)] == [
            str(3 * i).encode() for i in (4, 3, 2, 1, 0)
        ]
    finally:
        offload.close()


def test_a_failure_in_a_worker_names_its_type_and_place_but_not_the_data_R2() -> None:
    """R2/R17: an exception in a worker fails the batch; the error carries no record content."""
    offload: Offload[str] = Offload(set_factor, fail_on_secret, (1,), chunk_size=2)
    try:
        ok = [offload.submit("harmless"), offload.submit("fine")]
        bad = [offload.submit(SECRET), offload.submit("x")]
        assert ok[1].result() == b"fine"
        for pending in bad:  # the whole chunk fails, every time it is asked
            with pytest.raises(OffloadError) as failure:
                pending.result()
            assert "ValueError" in str(failure.value)
            assert SECRET not in str(failure.value)
        # the worker survives a failed chunk
        assert offload.submit("next").result() == b"next"
    finally:
        offload.close()


def test_a_dead_worker_fails_the_batch_instead_of_hanging() -> None:
    offload: Offload[int] = Offload(set_factor, report_pid, (1,), chunk_size=1)
    try:
        pid = int(offload.submit(0).result())
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        with pytest.raises(OffloadError):  # when handing the chunk over or asking for it
            pending: Pending = offload.submit(1)
            pending.result()
    finally:
        offload.close()


def test_functions_a_worker_cannot_import_are_refused() -> None:
    with pytest.raises(ValueError):
        Offload(set_factor, lambda items: [], (1,))


def test_close_ends_the_worker_processes() -> None:
    offload: Offload[int] = Offload(set_factor, report_pid, (1,), processes=2, chunk_size=1)
    pids = {int(offload.submit(i).result()) for i in range(4)}
    offload.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _routed(redaction_processes: int) -> list[tuple[str, bytes | None]]:
    config = PolicyConfig()
    topology = Topology("offload.")
    contracts = Contracts(registry_client(f"mock://offload-{uuid.uuid4().hex}"), topology)
    contracts.register_all()
    now = 1_800_000_000_000
    router = Router(config, contracts, redaction_processes=redaction_processes)
    driver = JobDriver(router, contracts, PolicyAuditTrail(config), clock=lambda: now)
    traffic = TrafficGenerator(seed=3, start_ms=now - 3_600_000)
    for change in traffic.control_changes():
        router.ledger.apply(DataControlChange(**change))
    router.ledger.advance_watermark(ControlsWatermark(watermark_ms=now, published_at_ms=now))
    codec = contracts.codec("request_logs")
    outputs: list[Output] = []
    try:
        for i in range(400):
            value = codec.encode(traffic.request(now - 3_600_000 + i))
            outputs.extend(driver.process("request_logs", None, value) or [])
        return [
            (
                o.topic,
                o.value if o.value is None or isinstance(o.value, bytes) else o.value.result(),
            )
            for o in outputs
        ]
    finally:
        router.close()


def test_candidates_built_in_worker_processes_are_byte_identical_to_in_process_R11() -> None:
    """R11/R9: the redacted training candidates (and every other output) a router writes
    with its redaction in worker processes are exactly those of an in-process router."""
    offloaded = _routed(redaction_processes=2)
    in_process = _routed(redaction_processes=0)
    assert offloaded == in_process
    candidates = [v for t, v in offloaded if t.endswith("training-candidates")]
    assert len(candidates) > 100
    assert not any(b"@example.com" in (v or b"") for v in candidates)


def test_workers_of_a_killed_job_exit_instead_of_lingering() -> None:
    """A job SIGKILLed (as the chaos tests do) leaves no offload worker behind."""
    script = (
        "from streams.kafka.offload import Offload\n"
        "from tests.unit.test_offload import report_pid, set_factor\n"
        "o = Offload(set_factor, report_pid, (1,), chunk_size=1)\n"
        "print(int(o.submit(0).result()), flush=True)\n"
        "import time; time.sleep(60)\n"
    )
    job = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert job.stdout is not None
        worker = int(job.stdout.readline())
        job.kill()
        job.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(worker):
            time.sleep(0.05)
        assert not _alive(worker)
    finally:
        job.kill()
