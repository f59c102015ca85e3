"""Facts before requests, and late facts that retract (R15, R5, R9, R12, R16), on the real broker.

A fact (account deletion, misuse flag) acknowledged by the broker before a request is
produced must stop that request, however close behind it the request comes; a fact that
arrives after requests it covers were routed takes back their training candidates.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from confluent_kafka import Producer

from streams.jobs.router import Router, build_router_loop
from streams.kafka.topics import key_for
from tests.integration.conftest import Stack
from tests.integration.router_workers import wait_for_audits, workers
from tests.integration.test_router import by_key, request, watermark

pytestmark = pytest.mark.integration

RACES = 20  # per case, as the issue asks


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def deletion(org: str, at_ms: int) -> dict[str, Any]:
    return {"deletion_id": f"del-{org}", "org_id": org, "requested_at_ms": at_ms}


def flag(fid: str, org: str, scope: str, start_ms: int | None, **fields: Any) -> dict[str, Any]:
    return {
        "flag_id": fid,
        "action": "RAISE",
        "scope": scope,
        "org_id": org,
        "request_id": fields.get("request_id"),
        "api_key_id": fields.get("api_key_id"),
        "window_start_ms": start_ms,
        "window_end_ms": None,
        "reason": "abuse",
        "at_ms": start_ms or now_ms(),
    }


@contextmanager
def router_running(stack: Stack) -> Iterator[Router]:
    """One router worker in a thread of the test, caught up before it is handed out."""
    loop, router = build_router_loop(stack.settings())
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, kwargs={"until": stop.is_set}, daemon=True)
    thread.start()
    try:
        yield router
    finally:
        stop.set()
        thread.join(60)


def wait_for(router: Router, decisions: int, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while router.stats["decisions"] < decisions and time.monotonic() < deadline:
        time.sleep(0.05)
    assert router.stats["decisions"] >= decisions, dict(router.stats)


def read_until(
    stack: Stack, field: str, keys: set[str], timeout_s: float = 60.0
) -> list[tuple[str | None, Any]]:
    """The topic once every key in ``keys`` is committed there (read from offset 0)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = stack.read(field)
        if keys <= {k for k, _ in records} or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def test_fact_acknowledged_just_before_a_request_stops_it_R15_R5_R9(stack: Stack) -> None:
    """The race of the issue, 20 times per case: a deletion, an org-wide flag or an API-key
    flag acknowledged by the broker, then at once a request it covers (and a deletion
    committed in a transaction, as a transactional control plane would publish it). Zero
    candidates, and zero log-store records for the deleted orgs (a flagged request is still
    retained: R5 holds it); control requests without a fact go through, so the race is real."""
    watermark(stack, now_ms() + 3_600_000)
    producer = Producer({"bootstrap.servers": stack.bootstrap, "linger.ms": 0})
    transactional = Producer(
        {"bootstrap.servers": stack.bootstrap, "transactional.id": f"cp-{uuid.uuid4().hex}"}
    )
    transactional.init_transactions(30)
    codecs = {f: stack.contracts.codec(f) for f in ("account_deletions", "misuse_flags")}
    topics = stack.topology
    request_codec = stack.contracts.codec("request_logs")
    blocked: list[str] = []
    controls: list[str] = []
    with router_running(stack) as router:
        # Warm: the worker is consuming before the races start.
        stack.produce("request_logs", [("warm", request("warm-org", "warm", created=now_ms()))])
        wait_for(router, 1)
        for i in range(RACES):
            for case in ("deletion", "org_flag", "key_flag", "txn_deletion"):
                org = f"{case}-{i}"
                at = now_ms()
                fact: dict[str, Any]
                if case in ("deletion", "txn_deletion"):
                    field, fact = "account_deletions", deletion(org, at)
                elif case == "org_flag":
                    field, fact = "misuse_flags", flag(f"f-{org}", org, "ORG", at)
                else:
                    fact = flag(f"f-{org}", org, "API_KEY", at, api_key_id=f"key-{org}")
                    field = "misuse_flags"
                value = codecs[field].encode(fact)
                if case == "txn_deletion":
                    transactional.begin_transaction()
                    transactional.produce(
                        getattr(topics, field), key=key_for(field, fact), value=value
                    )
                    transactional.commit_transaction(10)
                else:
                    producer.produce(getattr(topics, field), key=key_for(field, fact), value=value)
                    assert producer.flush(10) == 0  # acknowledged by the broker
                rid = f"r-{org}"
                blocked.append(rid)
                producer.produce(
                    topics.request_logs,
                    key=rid,
                    value=request_codec.encode(request(org, rid, created=now_ms())),
                )
                control = f"c-{org}"
                controls.append(control)
                producer.produce(
                    topics.request_logs,
                    key=control,
                    value=request_codec.encode(request(f"ok-{org}", control, created=now_ms())),
                )
                producer.flush(10)
        wait_for(router, 1 + len(blocked) + len(controls))
    candidates = by_key(read_until(stack, "training_candidates", set(controls)))
    log_store = by_key(stack.read("log_store"))
    assert [rid for rid in blocked if rid in candidates] == []
    assert [rid for rid in blocked if rid in log_store and "deletion" in rid] == []
    assert all(c in candidates and c in log_store for c in controls)
    audit = by_key(stack.read("audit"))
    for rid in blocked:
        if "deletion" in rid:
            assert "R15" in audit[rid]["rule_ids"]
        else:
            assert "R9: flagged for misuse (R5)" in audit[rid]["reasons"]
    assert router.stats["dropped"] == 0


def test_late_deletion_and_late_flags_retract_their_candidates_R15_R5_R9_R13_R16(
    stack: Stack,
) -> None:
    """Facts published after the requests they cover were routed: every candidate they cover
    gets one retraction keyed to it, with the rule ids, audited; other orgs' candidates and
    requests created before the deletion keep theirs (R13, R15 applies forward)."""
    start = now_ms()
    watermark(stack, start + 3_600_000)
    reqs = {
        "r-before-deletion": request("deleted", "r-before-deletion", created=start - 60_000),
        "r-after-deletion": request("deleted", "r-after-deletion", created=start),
        "r-org-flagged": request("flagged-org", "r-org-flagged", created=start),
        "r-key-flagged": request("flagged-key", "r-key-flagged", created=start),
        "r-key-other": request("flagged-key", "r-key-other", created=start, api_key_id="other"),
        "r-request-flagged": request("flagged-req", "r-request-flagged", created=start),
        "r-untouched": request("other", "r-untouched", created=start),
    }
    with router_running(stack) as router:
        stack.produce("request_logs", list(reqs.items()))
        wait_for(router, len(reqs))
        assert set(by_key(read_until(stack, "training_candidates", set(reqs)))) == set(reqs)
        stack.produce("account_deletions", [("deleted", deletion("deleted", start - 30_000))])
        stack.produce(
            "misuse_flags",
            [
                (None, flag("f-org", "flagged-org", "ORG", start - 1)),
                (
                    None,
                    flag(
                        "f-key", "flagged-key", "API_KEY", start - 1, api_key_id="key-flagged-key"
                    ),
                ),
                (
                    None,
                    flag("f-req", "flagged-req", "REQUEST", None, request_id="r-request-flagged"),
                ),
            ],
        )
        expected = {"r-after-deletion", "r-org-flagged", "r-key-flagged", "r-request-flagged"}
        retractions = read_until(stack, "training_retractions", expected)
    retracted = by_key(retractions)
    assert set(retracted) == {
        "r-after-deletion",
        "r-org-flagged",
        "r-key-flagged",
        "r-request-flagged",
    }
    assert len(retractions) == 4, "one retraction per candidate"
    assert retracted["r-after-deletion"]["rule_ids"] == ["R15", "R9"]
    assert retracted["r-after-deletion"]["fact_ids"] == ["del-deleted"]
    assert retracted["r-org-flagged"]["rule_ids"] == ["R5", "R9"]
    assert retracted["r-request-flagged"]["fact_ids"] == ["f-req"]
    for record in retracted.values():
        assert "prompt" not in record and "CANARY" not in repr(record)
    audits = [v for k, v in stack.read("audit") if k in retracted]
    retraction_audits = [a for a in audits if a["routes"] == ["training_retraction"]]
    assert {a["subject_id"] for a in retraction_audits} == set(retracted)
    assert all(a["subject_kind"] == "training_candidate" for a in retraction_audits)


def test_router_restarted_keeps_what_it_retracted_and_retracts_what_came_while_down_R15_R5(
    stack: Stack,
) -> None:
    """The candidates' changelog: a restarted worker neither retracts a candidate twice nor
    misses a late fact that arrived while it was down."""
    start = now_ms()
    watermark(stack, start + 3_600_000)
    stack.produce(
        "request_logs",
        [
            ("r-a", request("org-a", "r-a", created=start)),
            ("r-b", request("org-b", "r-b", created=start)),
        ],
    )
    with router_running(stack):
        read_until(stack, "training_candidates", {"r-a", "r-b"})
        stack.produce("account_deletions", [("org-a", deletion("org-a", start - 1))])
        read_until(stack, "training_retractions", {"r-a"})
    stack.produce("misuse_flags", [(None, flag("f-b", "org-b", "ORG", start - 1))])
    with router_running(stack):
        read_until(stack, "training_retractions", {"r-a", "r-b"})
        time.sleep(2)  # time for a second retraction of r-a, if one were coming
    keys = Counter(k for k, _ in stack.read("training_retractions"))
    assert keys == {"r-a": 1, "r-b": 1}


def test_sigkill_while_requests_wait_for_facts_loses_and_doubles_nothing_R15_R5_R16(
    stack: Stack,
) -> None:
    """A worker killed while its requests wait for a burst of facts it has not read yet:
    after the restart every request is decided exactly once and the flagged org's requests,
    published after their flag, never become candidates."""
    start = now_ms()
    watermark(stack, start + 3_600_000)
    with workers(stack, "0") as (first,):
        stack.produce("request_logs", [("warm", request("warm-org", "warm", created=start))])
        wait_for_audits(stack, 1, timeout_s=120)
        # A burst of facts the worker needs seconds to read, then the flag and the requests.
        codec = stack.contracts.codec("misuse_flags")
        topic = stack.topology.misuse_flags
        producer = Producer({"bootstrap.servers": stack.bootstrap, "linger.ms": 20})
        burst = codec.encode(flag("burst", "burst-org", "REQUEST", None, request_id="none"))
        for i in range(300_000):
            while True:
                try:
                    producer.produce(topic, key=f"burst-{i}", value=burst)
                    break
                except BufferError:
                    producer.poll(0.05)
        stack.produce("misuse_flags", [(None, flag("f-x", "flagged", "ORG", start - 1))])
        assert producer.flush(60) == 0
        ids = [f"r-{i}" for i in range(200)]
        stack.produce(
            "request_logs",
            [
                (rid, request("flagged" if i % 2 else "fine", rid, created=now_ms()))
                for i, rid in enumerate(ids)
            ],
        )
        time.sleep(0.5)
        decided_before_kill = {k for k, _ in stack.read("audit", idle_timeout_s=0.5)} & set(ids)
        first.kill()
    with workers(stack, "0"):
        audits = wait_for_audits(stack, len(ids) + 1, timeout_s=240)
    audit_keys = Counter(k for k, _ in audits)
    assert set(ids) <= set(audit_keys)
    assert max(audit_keys.values()) == 1, "a request decided twice"
    usage = Counter(v["request_id"] for _, v in stack.read("usage_events"))
    assert all(usage[rid] == 1 for rid in ids)
    candidates = Counter(k for k, _ in stack.read("training_candidates"))
    assert max(candidates.values()) == 1
    assert {rid for rid in candidates if rid in ids} == {
        rid for i, rid in enumerate(ids) if i % 2 == 0
    }
    print(f"decided before the kill: {len(decided_before_kill)} of {len(ids)}")
    assert len(decided_before_kill) < len(ids), "the kill came after every request was decided"
