"""R8 safety-evaluation job on the real broker: de-identified records, exactly once.

Safety-review records (the full logs of flagged requests) go in; the test asserts on the
real safety-evaluation, audit and dead-letter topics: no customer identifier of the input
(org, API key, user, IP, request id, flag id, in any spelling) and no personal information
anywhere in the output bytes, a coarse time bucket only, a random evaluation id, every
decision audited (R16), bad input dead-lettered without its content (R17), and one record
per flagged request after a SIGKILL mid-stream.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.jobs.safety_evaluation import build_job
from streams.jobs.wiring import runtime_of
from streams.kafka.metrics import JobMetrics
from streams.kafka.serde import Contracts, registry_client
from streams.kafka.topics import SAFETY_EVALUATION, Topology, ensure_topics
from streams.policy.config import PolicyConfig
from streams.policy.models import HOUR_MS
from streams.policy.safety_evaluation import EVALUATION_FIELDS
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

NOW = int(time.time() * 1000)
CANARY = "CANARY-safety-eval-b41c"
PII = ("jane.roe@example.com", "+1 415 555 0136", "Jane Roe", "4111 1111 1111 1111")


@dataclass
class Registries:
    test_url: str
    worker_url: str


@pytest.fixture()
def registries(request: pytest.FixtureRequest) -> Registries:
    """The project's schema registry when there is one; otherwise confluent-kafka's
    in-memory registry, one per process (both register the catalogue in the same order)."""
    try:
        url = request.getfixturevalue("schema_registry_url")
        return Registries(url, url)
    except Exception:
        tag = uuid.uuid4().hex
        return Registries(f"mock://safety-test-{tag}", f"mock://safety-worker-{tag}")


@pytest.fixture()
def sstack(kafka_bootstrap: str, registries: Registries) -> Stack:
    pytest.importorskip("streams.policy.redaction")  # R11 redactor (landed separately)
    topology = Topology(f"se{uuid.uuid4().hex[:8]}.")
    ensure_topics(AdminClient({"bootstrap.servers": kafka_bootstrap}), topology)
    contracts = Contracts(registry_client(registries.test_url), topology)
    contracts.register_all()
    return Stack(kafka_bootstrap, registries.test_url, PolicyConfig(), contracts)


# --- input -------------------------------------------------------------------------------
def identifiers(i: int) -> dict[str, str]:
    return {
        "org_id": f"org-acme-{4400 + i % 7}",
        "api_key_id": f"key-9f3a2b{i % 5:02d}c",
        "user_id": f"user-55{i:04d}",
        "client_ip": f"203.0.113.{10 + i % 200}",
        "request_id": f"req-{uuid.UUID(int=i + 1).hex[-12:]}",
        "flag_id": f"flag-{i:05d}-x",
    }


def review(i: int, with_content: bool = True) -> dict[str, Any]:
    ids = identifiers(i)
    org_shouted = ids["org_id"].upper().replace("-", "_")
    prompt = (
        f"I am {PII[2]} ({PII[0]}, {PII[1]}), our org is {org_shouted} and my key id is "
        f"{ids['api_key_id']}; I log in as {ids['user_id']} from {ids['client_ip']}. "
        f"Request {ids['request_id']} was flagged as {ids['flag_id']}. Card {PII[3]}. "
        "Now tell me how to build something dangerous."
    )
    generation = f"I can't help with that, {PII[2]}. (org {ids['org_id']})"
    return {
        "flag_id": ids["flag_id"],
        "flag_reason": f"weapons; reported about {ids['org_id']} via {ids['api_key_id']}",
        "flagged_at_ms": NOW,
        "request_id": ids["request_id"],
        "org_id": ids["org_id"],
        "api_key_id": ids["api_key_id"],
        "created_at_ms": NOW - (i % 50) * HOUR_MS,
        "endpoint": "chat",
        "model": "command-r-plus",
        "source": "API",
        "prompt": prompt if with_content else None,
        "documents": [f"{CANARY} document of {ids['org_id']}"],
        "generation": generation if with_content else None,
        "client_ip": ids["client_ip"],
        "user_id": ids["user_id"],
        "metadata": {"note": f"{CANARY} {ids['user_id']}"},
        "policy_version": "test",
    }


def key_of(record: dict[str, Any]) -> str:
    return f"{record['flag_id']}/{record['request_id']}"


def forbidden_strings(reviews: list[dict[str, Any]]) -> set[str]:
    """Every identifier in several spellings, the PII, the canary."""
    out = {CANARY, *PII}
    for r in reviews:
        for field in ("org_id", "api_key_id", "user_id", "client_ip", "request_id", "flag_id"):
            value = r[field]
            if not value:
                continue
            out |= {value, value.upper(), value.replace("-", "_"), re.sub(r"[\W_]", "", value)}
    return out


# --- output ------------------------------------------------------------------------------
def read_all(stack: Stack, field: str, timeout_s: float = 60.0) -> list[Any]:
    """Every committed record of a topic, each partition read to its end (open transactions
    waited out): (key, value, timestamp)."""
    topic = getattr(stack.topology, field)
    probe = Consumer(
        {
            "bootstrap.servers": stack.bootstrap,
            "group.id": "p",
            "isolation.level": "read_uncommitted",
        }
    )
    reader = Consumer(
        {
            "bootstrap.servers": stack.bootstrap,
            "group.id": f"r-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    out: list[Any] = []
    try:
        parts = probe.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {
            p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts
        }
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts if ends[p] > 0])
        deadline = time.monotonic() + timeout_s
        while any(
            tp.offset < ends[tp.partition]
            for tp in reader.position([TopicPartition(topic, p) for p in parts if ends[p] > 0])
        ):
            assert time.monotonic() < deadline, f"{topic} not read to its end"
            for m in reader.consume(1000, 0.2):
                if m.error() is None:
                    out.append((m.key(), m.value(), m.timestamp()[1]))
    finally:
        probe.close()
        reader.close()
    return out


def decoded(stack: Stack, field: str) -> list[dict[str, Any]]:
    codec = stack.contracts.codec(field)
    return [codec.decode(v) for _, v, _ in read_all(stack, field)]


# --- tests ---------------------------------------------------------------------------------
def test_R8_R11_no_customer_identifier_or_pii_in_any_output_byte(sstack: Stack) -> None:
    """R8/R11: safety-evaluation records keep the (scrubbed) flag reason, model, endpoint and
    the redacted prompt/generation, a 7-day time bucket and a random evaluation id; no
    identifier of the input (org, API key, user, IP, request id, flag id, whatever the case
    or separators), no personal information, no document or metadata appears anywhere in
    the output bytes (keys and values). R16: every decision is audited without the
    evaluation id; a repeated review is evaluated once. R17: undecodable and invalid input is
    dead-lettered without its content and the job keeps running."""
    stack = sstack
    reviews = [review(i) for i in range(40)]
    empty = review(40, with_content=False)
    invalid = dict(review(41), flag_id="")
    stack.produce("safety_review", [(key_of(r), r) for r in reviews[:20]])
    stack.produce("safety_review", [("bad", f"{CANARY} {reviews[0]['org_id']}".encode())])
    stack.produce("safety_review", [(key_of(invalid), invalid), (key_of(empty), empty)])
    stack.produce("safety_review", [(key_of(r), r) for r in reviews[20:] + reviews[:3]])
    total = len(reviews) + 3 + 3

    metrics = JobMetrics("safety-evaluation")
    port = metrics.serve(0)
    settings = stack.settings("it")
    evaluator = build_job(settings)
    loop = runtime_of(evaluator, settings, metrics=metrics)
    stats = evaluator.stats
    deadline = time.monotonic() + 90
    loop.run(until=lambda: loop.consumed >= total or time.monotonic() > deadline)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            exposition = resp.read().decode()
    finally:
        metrics.stop()
    assert stats == {"evaluated": 40, "duplicate": 3, "nothing_to_evaluate": 1}
    assert loop.summary()["dead_letters"] == 2

    forbidden = forbidden_strings(reviews + [empty, invalid])
    raw = read_all(stack, "safety_evaluation")
    assert len(raw) == 40
    blob = b"\n".join((k or b"") + b"\x00" + (v or b"") for k, v, _ in raw)
    for text in forbidden:
        assert text.encode().lower() not in blob.lower(), text

    bucket = stack.config.safety_time_bucket_ms
    codec = stack.contracts.codec("safety_evaluation")
    records = [codec.decode(v) for _, v, _ in raw]
    created = {r["created_at_ms"] for r in reviews}
    all_ids = [r[f] for r in reviews for f in ("org_id", "api_key_id", "user_id", "request_id")]
    hashes = {
        getattr(hashlib, h)(i.encode()).hexdigest()
        for i in all_ids
        for h in ("md5", "sha1", "sha256")
    }
    for record, (key, _, timestamp) in zip(records, raw, strict=True):
        assert tuple(record) == EVALUATION_FIELDS
        assert key.decode() == record["evaluation_id"]
        assert uuid.UUID(record["evaluation_id"]).version == 4
        assert not any(record["evaluation_id"].replace("-", "") in h for h in hashes)
        assert record["time_bucket_start_ms"] % bucket == 0
        assert any(0 <= c - record["time_bucket_start_ms"] < bucket for c in created)
        assert timestamp == record["time_bucket_start_ms"]  # not the processing time
        assert record["flag_reason"] == "weapons; reported about [ORG_ID] via [API_KEY_ID]"
        assert (record["model"], record["endpoint"]) == ("command-r-plus", "chat")
        assert "[ORG_ID]" in record["prompt"] and "[IP_ADDRESS]" in record["prompt"]
        assert "[EMAIL]" in record["prompt"] and "dangerous" in record["prompt"]
        counts = record["redaction_counts"]
        for label in ("ORG_ID", "API_KEY_ID", "USER_ID", "IP_ADDRESS", "REQUEST_ID", "FLAG_ID"):
            assert counts.get(label, 0) >= 1, (label, counts)
        assert counts.get("EMAIL", 0) >= 1
    assert len({r["evaluation_id"] for r in records}) == 40

    # R16: one audit per decision, with rule ids; never the evaluation id
    audits = decoded(stack, "audit")
    evaluated = [a for a in audits if a["routes"] == ["safety_evaluation"]]
    assert sorted(a["subject_id"] for a in evaluated) == sorted(r["request_id"] for r in reviews)
    assert all(
        a["rule_ids"] == ["R8", "R11"] and a["job"] == "safety-evaluation" for a in evaluated
    )
    dropped = [a for a in audits if a["routes"] == ["dropped"]]
    assert len(dropped) == 4  # three repeats, one review with nothing to evaluate
    audit_bytes = b"".join(v for _, v, _ in read_all(stack, "audit"))
    for record in records:
        assert record["evaluation_id"].encode() not in audit_bytes
    assert CANARY.encode() not in audit_bytes

    # R17: dead letters with coordinates, never content; the job went on
    letters = decoded(stack, "dead_letters")
    assert sorted(letter["error_class"] for letter in letters) == ["DecodeError", "InvalidRecord"]
    for letter in letters:
        assert letter["content_withheld"] and letter["original_value"] is None
        assert letter["original_key"] is None
        assert letter["source_topic"] == stack.topology.safety_review
    assert CANARY.encode() not in b"".join(v for _, v, _ in read_all(stack, "dead_letters"))

    # operational metrics only
    assert 'streams_decisions_total{job="safety-evaluation",rule="R8"}' in exposition
    assert (
        'streams_dead_letters_total{job="safety-evaluation",reason="DecodeError"} 1.0' in exposition
    )
    for text in forbidden:
        assert text not in exposition


def test_R8_sigkill_mid_stream_one_evaluation_per_flagged_request(
    sstack: Stack, registries: Registries, tmp_path: Path
) -> None:
    """R8 exactly once: the evaluation id is random, so a repeated evaluation could never be
    recognised downstream; a worker SIGKILLed mid-stream and restarted writes exactly one
    evaluation record and one audit record per flagged request."""
    stack = sstack
    n = 3000
    reviews = [review(i) for i in range(n)]
    stack.produce("safety_review", [(key_of(r), r) for r in reviews])
    prefix = stack.topology.prefix
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap,
        "SCHEMA_REGISTRY_URL": registries.worker_url,
        "STREAMS_TOPIC_PREFIX": prefix,
        "STREAMS_METRICS_PORT": "off",
    }
    log_path = tmp_path / "worker.log"

    def start() -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "run", "safety-evaluation"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def audited() -> int:
        consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": "hw"})
        topic = stack.topology.audit
        try:
            parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            return sum(
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in parts
            )
        finally:
            consumer.close()

    def committed_offsets() -> int:
        consumer = Consumer(
            {
                "bootstrap.servers": stack.bootstrap,
                "group.id": stack.topology.group(SAFETY_EVALUATION),
                "isolation.level": "read_uncommitted",
            }
        )
        topic = stack.topology.safety_review
        try:
            parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            tps = consumer.committed([TopicPartition(topic, p) for p in parts], timeout=10)
            return sum(max(tp.offset, 0) for tp in tps)
        finally:
            consumer.close()

    worker = start()
    try:
        deadline = time.monotonic() + 120
        while audited() < n // 4:
            assert time.monotonic() < deadline and worker.poll() is None, log_path.read_text()
            time.sleep(0.02)
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
        killed_at = committed_offsets()
        worker = start()
        deadline = time.monotonic() + 150
        while True:
            audits = decoded(stack, "audit")
            if len({a["decision_id"] for a in audits}) >= n or time.monotonic() > deadline:
                break
            time.sleep(2)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
    assert 0 < killed_at < n, "the kill must land mid-stream"
    evaluations = decoded(stack, "safety_evaluation")
    assert len(audits) == n and len({a["subject_id"] for a in audits}) == n
    assert len(evaluations) == n
    assert len({e["evaluation_id"] for e in evaluations}) == n
    assert "restored" in log_path.read_text()
