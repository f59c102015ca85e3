"""Facts before decisions and late facts that retract (R15, R5, R9, R12, R13, R16).

Pure logic and the read barrier with stand-ins for the reader; the real broker's side is
``tests/integration/test_router_facts.py``.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from streams.kafka.compacted import ReadBarrier
from streams.kafka.runtime import ConsumedRecord as FakeMessage
from streams.policy.holds import hold_from_flag
from streams.policy.models import FlagScope, Route
from streams.policy.retraction import (
    CandidateEntry,
    CandidateIndex,
    retraction_rules,
    training_retraction,
)
from streams.policy.routing import decide_finetune_row, decide_request
from tests.unit.strategies import (
    CONFIG,
    PROPS,
    T0,
    controls,
    facts,
    finetune_row,
    flag,
    request_log,
)

LOG, TRAIN, USAGE = Route.LOG_STORE.value, Route.TRAINING_CANDIDATE.value, Route.USAGE.value


def entry(cid: str = "r-1", org: str = "org-a", key: str = "key-1", created: int = T0):
    return CandidateEntry(cid, "PROMPT_GENERATION", org, key, created)


# === the facts of a decision (R15/R5/R12, R16) ===


def test_r15_r5_facts_not_read_within_the_bound_is_usage_only_fail_closed() -> None:
    """A request whose facts could not be read in time: no log store, no candidate."""
    decision = decide_request(request_log(), controls(), facts(facts_read=False), CONFIG)
    assert decision.routes == {USAGE}
    assert {"R15", "R5", "R3"} <= set(decision.rule_ids)
    assert any("fail closed" in r for r in decision.reasons)


def test_r10_r15_fine_tune_row_whose_facts_were_not_read_is_dropped() -> None:
    decision = decide_finetune_row(finetune_row(), controls(), facts(facts_read=False), CONFIG)
    assert not decision.has(TRAIN) and {"R15", "R5"} <= set(decision.rule_ids)


def test_r16_a_long_wait_for_facts_is_named_in_the_decision() -> None:
    decision = decide_request(request_log(), controls(), facts(waited_for_facts=True), CONFIG)
    assert decision.has(TRAIN)
    assert any("long wait for the facts" in r for r in decision.reasons)
    row = decide_finetune_row(finetune_row(), controls(), facts(waited_for_facts=True), CONFIG)
    assert any("long wait for the facts" in r for r in row.reasons)


# === which candidates a late fact takes back ===


def test_r15_late_deletion_retracts_candidates_created_at_or_after_it() -> None:
    deletion = ("del-1", T0)
    assert retraction_rules(entry(created=T0 - 1), deletion, ()) is None  # R15 applies forward
    retraction = retraction_rules(entry(created=T0), deletion, ())
    assert retraction is not None
    assert retraction.rule_ids == ("R15", "R9") and retraction.fact_ids == ("del-1",)


def test_r5_late_flags_retract_what_they_cover_by_scope() -> None:
    org_flag = hold_from_flag(flag("f-org", scope=FlagScope.ORG.value, window_start_ms=T0))
    key_flag = hold_from_flag(
        flag("f-key", scope=FlagScope.API_KEY.value, api_key_id="key-1", window_start_ms=T0)
    )
    request_flag = hold_from_flag(flag("f-req", request_id="r-1"))
    assert retraction_rules(entry(created=T0 - 1), None, [org_flag]) is None
    assert retraction_rules(entry(), None, [org_flag]).fact_ids == ("f-org",)  # type: ignore[union-attr]
    assert retraction_rules(entry(key="key-2"), None, [key_flag]) is None
    assert retraction_rules(entry(), None, [key_flag]).rule_ids == ("R5", "R9")  # type: ignore[union-attr]
    # A request-scope flag raised after its request became a candidate retracts it.
    assert retraction_rules(entry(), None, [request_flag]) is not None
    assert retraction_rules(entry(cid="r-2"), None, [request_flag]) is None


@PROPS
@given(
    st.sampled_from(("org-a", "org-b")),
    st.sampled_from(("org-a", "org-b")),
    st.integers(0, 100),
    st.one_of(st.none(), st.integers(0, 100)),
    st.sampled_from(list(FlagScope)),
)
def test_r13_property_a_fact_never_retracts_another_orgs_candidate(
    candidate_org: str, fact_org: str, created: int, start: int | None, scope: FlagScope
) -> None:
    hold = hold_from_flag(
        flag(
            "f",
            org_id=fact_org,
            scope=scope.value,
            request_id="r-1",
            api_key_id="key-1",
            window_start_ms=start,
        )
    )
    candidate = entry(org=candidate_org, created=created)
    deletion = ("d", 0) if fact_org == candidate_org else None
    retraction = retraction_rules(candidate, deletion, [hold])
    if candidate_org != fact_org:
        assert retraction is None


def test_r15_retraction_record_names_the_candidate_and_its_rules_but_no_content() -> None:
    retraction = retraction_rules(entry(), ("del-1", T0), ())
    assert retraction is not None
    record = training_retraction(entry(), retraction, T0 + 5, "p-1")
    assert record["candidate_id"] == "r-1" and record["rule_ids"] == ["R15", "R9"]
    assert set(record) == {
        "candidate_id",
        "kind",
        "org_id",
        "created_at_ms",
        "rule_ids",
        "reasons",
        "fact_ids",
        "retracted_at_ms",
        "policy_version",
    }


def test_candidate_index_by_org_and_horizon() -> None:
    index = CandidateIndex()
    index.add(entry("r-1", created=T0))
    index.add(entry("r-2", org="org-b", created=T0 + 10))
    index.add(entry("r-1", created=T0)._replace(retracted=True))  # replaces, not doubles
    assert len(index) == 2
    assert [e.retracted for e in index.of_org("org-a")] == [True]
    old = index.older_than(T0 + 5)
    assert [e.candidate_id for e in old] == ["r-1"]
    index.discard(old[0])
    assert [e.candidate_id for e in index] == ["r-2"]


# === the read barrier (plumbing, with a reader stand-in) ===


class _Reader:
    """The state reader as the barrier sees it: end offsets now, and how far it has read."""

    def __init__(self) -> None:
        self.end = 0
        self.read_to = 0

    def ask_published_ends(self) -> Any:
        ends = {("facts", 0): self.end}
        return type("Answered", (), {"ends": lambda _: ends})()

    def reached(self, ends: dict[tuple[str, int], int]) -> bool:
        return self.read_to >= ends[("facts", 0)]


def _message(offset: int, partition: int = 0) -> FakeMessage:
    return FakeMessage("requests", partition, offset, None, b"")


def test_r15_barrier_holds_records_until_facts_published_before_them_are_read() -> None:
    """A fact published before a batch was read holds every record of that batch back until
    the reader has applied it; a later batch waits for the facts before it too."""
    reader = _Reader()
    barrier = ReadBarrier(reader)  # type: ignore[arg-type]
    reader.end = 5  # five facts published before the batch is read
    barrier.mark([_message(0), _message(1), _message(0, partition=1)])
    barrier.advance()
    assert not barrier.status("requests", 0, 0)[0]
    assert not barrier.status("requests", 1, 0)[0]
    reader.read_to = 5
    barrier.advance()
    assert barrier.status("requests", 0, 1)[0] and barrier.status("requests", 1, 0)[0]
    reader.end = 9
    barrier.mark([_message(2)])
    barrier.advance()
    assert not barrier.status("requests", 0, 2)[0]
    ready, waited = barrier.status("requests", 0, 2)
    assert waited >= 0.0
    # Never marked: not known to be ready (fail closed).
    assert barrier.status("requests", 3, 0) == (False, float("inf"))


def test_r15_barrier_after_a_rewind_an_earlier_mark_still_counts() -> None:
    reader = _Reader()
    barrier = ReadBarrier(reader)  # type: ignore[arg-type]
    reader.end = 1
    barrier.mark([_message(0), _message(1)])
    reader.read_to = 1
    barrier.advance()
    assert barrier.status("requests", 0, 1)[0]
    reader.end = 2
    barrier.mark([_message(0), _message(1)])  # re-read after an aborted transaction
    assert barrier.status("requests", 0, 0)[0]  # read before the first mark: still ready


def test_r15_barrier_answer_not_in_yet_holds_records_and_a_failed_one_is_asked_again() -> None:
    """The end offsets are asked without waiting: until the answer is in, the batch waits
    (fail closed); a failed answer is asked again, not taken as "nothing published"."""
    from concurrent.futures import Future

    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    from streams.kafka.compacted import PendingEnds

    tp = TopicPartition("facts", 0)
    asked: list[Future[Any]] = []

    def ask() -> dict[TopicPartition, Any]:
        asked.append(Future())
        return {tp: asked[-1]}

    renewed: list[bool] = []
    pending = PendingEnds(ask, on_failure=lambda: renewed.append(True))
    assert pending.ends() is None  # not answered yet
    asked[0].set_exception(KafkaException(KafkaError(KafkaError._TRANSPORT)))
    assert pending.ends() is None and len(asked) == 2  # asked again
    assert renewed == [True]  # by a new admin client (a stale leader epoch fails for good)
    asked[1].set_result(type("Answer", (), {"offset": 7})())
    assert pending.ends() == {("facts", 0): 7}

    # An answer that never comes (a client that lost the leader) is asked again too.
    unanswered = PendingEnds(ask, on_failure=lambda: renewed.append(True), answer_s=0.0)
    assert unanswered.ends() is None and len(asked) == 4 and len(renewed) == 2
