"""R8 safety evaluation: the pure de-identification core, exhaustively.

Every test names the rule it checks (R8, R11, R16, R17 of ../shared/POLICY.md).
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.kafka.serde import load_schema_text
from streams.policy.config import PolicyConfig
from streams.policy.models import DAY_MS, InvalidRecord
from streams.policy.safety_evaluation import (
    EVALUATION_FIELDS,
    IdentifierScrubber,
    SafetyReview,
    evaluate,
    identifier_pattern,
    time_bucket,
    validate_review,
)

CONFIG = PolicyConfig()
CREATED = 1_790_123_456_789


def review_record(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "flag_id": "flag-77",
        "flag_reason": "self-harm",
        "flagged_at_ms": CREATED + 1000,
        "request_id": "req-9a8b7c",
        "org_id": "org-acme-42",
        "api_key_id": "key-3f2e1d",
        "created_at_ms": CREATED,
        "endpoint": "chat",
        "model": "command-r",
        "source": "API",
        "prompt": "hello",
        "documents": ["doc of org-acme-42"],
        "generation": "hi",
        "client_ip": "198.51.100.23",
        "user_id": "user-5150",
        "metadata": {"team": "org-acme-42"},
        "policy_version": "p",
    }
    base.update(overrides)
    return base


def review(**overrides: Any) -> SafetyReview:
    return SafetyReview(**review_record(**overrides))


@dataclass
class Redaction:
    text: str
    counts: Mapping[str, int] = field(default_factory=dict)


class FakeRedactor:
    """Replaces the word "Alice" by [PERSON] and records what it was given."""

    def __init__(self, inject: str = "") -> None:
        self.seen: list[str] = []
        self.inject = inject

    def redact(self, text: str) -> Redaction:
        self.seen.append(text)
        n = text.count("Alice")
        return Redaction(
            text.replace("Alice", "[PERSON]") + self.inject, {"PERSON": n} if n else {}
        )


# --- validation (R17) ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "reason", "org"),
    [
        ({"flag_id": ""}, "empty flag_id", "org-acme-42"),
        ({"request_id": ""}, "empty request_id", "org-acme-42"),
        ({"org_id": ""}, "empty org_id", None),
        ({"created_at_ms": 0}, "created_at_ms not positive", "org-acme-42"),
    ],
)
def test_R17_invalid_review_rejected_with_reason_and_no_content(
    overrides: dict[str, Any], reason: str, org: str | None
) -> None:
    with pytest.raises(InvalidRecord) as err:
        validate_review(review_record(**overrides))
    assert err.value.reason == reason and err.value.org_id == org


def test_R17_review_with_wrong_fields_rejected() -> None:
    with pytest.raises(InvalidRecord, match="fields do not match contract"):
        validate_review({**review_record(), "extra": 1})


def test_R8_review_dataclass_and_evaluation_fields_match_the_contracts() -> None:
    review_fields = json.loads(load_schema_text("safety_review_record.avsc"))["fields"]
    assert list(review_record()) == [f["name"] for f in review_fields]
    eval_fields = json.loads(load_schema_text("safety_evaluation_record.avsc"))["fields"]
    assert tuple(f["name"] for f in eval_fields) == EVALUATION_FIELDS


# --- identifiers ---------------------------------------------------------------------------
def test_R8_identifiers_of_a_review() -> None:
    assert dict(review().identifiers()) == {
        "ORG_ID": "org-acme-42",
        "API_KEY_ID": "key-3f2e1d",
        "USER_ID": "user-5150",
        "IP_ADDRESS": "198.51.100.23",
        "REQUEST_ID": "req-9a8b7c",
        "FLAG_ID": "flag-77",
    }
    assert "USER_ID" not in dict(review(user_id=None, client_ip=None).identifiers())
    assert "IP_ADDRESS" not in dict(review(user_id=None, client_ip=None).identifiers())


@pytest.mark.parametrize(
    "spelling",
    ["org-acme-42", "ORG-ACME-42", "org_acme_42", "org acme 42", "orgacme42", "Org.Acme/42"],
)
def test_R8_identifier_matches_in_any_case_and_separators(spelling: str) -> None:
    pattern = identifier_pattern("org-acme-42")
    assert pattern is not None
    assert pattern.sub("X", f"<{spelling}>") == "<X>"


def test_R8_identifier_pattern_escapes_regex_and_ignores_empty_ones() -> None:
    pattern = identifier_pattern("a.b*c(1)")
    assert pattern is not None
    # separators around an identifier are not part of it
    assert pattern.sub("X", "a.b*c(1) and abc1 and aXbc1") == "X) and X and aXbc1"
    assert identifier_pattern("") is None
    assert identifier_pattern("--_ .") is None


def test_R8_longest_identifier_replaced_first() -> None:
    scrubber = IdentifierScrubber([("ORG_ID", "acme"), ("USER_ID", "acme-bob")])
    counts: Counter[str] = Counter()
    assert scrubber.scrub("acme-bob works at acme", counts) == "[USER_ID] works at [ORG_ID]"
    assert counts == {"USER_ID": 1, "ORG_ID": 1}


def test_R8_placeholders_are_never_rewritten() -> None:
    scrubber = IdentifierScrubber([("ORG_ID", "org-1"), ("USER_ID", "id"), ("FLAG_ID", "org")])
    counts: Counter[str] = Counter()
    text = scrubber.scrub("org-1 id ORG [EMAIL] [ORG_ID]", counts)
    assert text == "[ORG_ID] [USER_ID] [FLAG_ID] [EMAIL] [ORG_ID]"
    assert counts == {"ORG_ID": 1, "USER_ID": 1, "FLAG_ID": 1}


# --- time bucket ---------------------------------------------------------------------------
@given(st.integers(1, 4_000_000_000_000), st.integers(1, 30 * DAY_MS))
def test_R8_time_bucket_is_coarse_and_contains_the_creation_property(
    created: int, bucket: int
) -> None:
    start = time_bucket(created, bucket)
    assert start % bucket == 0 and start <= created < start + bucket


def test_R8_default_bucket_is_a_week() -> None:
    assert CONFIG.safety_time_bucket_ms == 7 * DAY_MS
    rec = evaluate(review(), FakeRedactor(), CONFIG).record
    assert rec is not None and rec["time_bucket_start_ms"] == time_bucket(CREATED, 7 * DAY_MS)


# --- evaluate --------------------------------------------------------------------------------
def test_R8_R11_evaluation_keeps_reason_model_endpoint_and_redacted_text_only() -> None:
    quoted = review(
        prompt="Alice here, org ORG_ACME_42, key key-3f2e1d, user user-5150, ip 198.51.100.23",
        generation="Alice: request req-9a8b7c, flag FLAG-77",
        flag_reason="self-harm, reported by org-acme-42",
    )
    redactor = FakeRedactor()
    evaluation = evaluate(quoted, redactor, CONFIG, new_id=lambda: "fixed-id")
    rec = evaluation.record
    assert rec is not None and tuple(rec) == EVALUATION_FIELDS
    assert rec == {
        "evaluation_id": "fixed-id",
        "flag_reason": "self-harm, reported by [ORG_ID]",
        "time_bucket_start_ms": time_bucket(CREATED, CONFIG.safety_time_bucket_ms),
        "model": "command-r",
        "endpoint": "chat",
        "prompt": "[PERSON] here, org [ORG_ID], key [API_KEY_ID], user [USER_ID], ip [IP_ADDRESS]",
        "generation": "[PERSON]: request [REQUEST_ID], flag [FLAG_ID]",
        "redaction_counts": {
            "API_KEY_ID": 1,
            "FLAG_ID": 1,
            "IP_ADDRESS": 1,
            "ORG_ID": 2,
            "PERSON": 2,
            "REQUEST_ID": 1,
            "USER_ID": 1,
        },
        "policy_version": CONFIG.policy_version,
    }
    assert evaluation.rule_ids == ("R8", "R11")
    # R8 before R11: the redactor never sees a customer identifier
    for text in redactor.seen:
        for _, value in quoted.identifiers():
            assert value.lower() not in text.lower()


def test_R8_identifiers_scrubbed_again_after_redaction() -> None:
    """Whatever the redactor returns, an identifier cannot come back."""
    evaluation = evaluate(review(), FakeRedactor(inject=" org-acme-42"), CONFIG)
    rec = evaluation.record
    assert rec is not None
    assert "org-acme-42" not in json.dumps(rec)
    assert rec["prompt"] == "hello [ORG_ID]"


def test_R8_documents_metadata_source_and_ids_are_never_carried() -> None:
    rec = evaluate(review(), FakeRedactor(), CONFIG).record
    assert rec is not None
    text = json.dumps(rec)
    for value in ("doc of", "team", "API", "flag-77", "req-9a8b7c", "198.51.100.23", "user-5150"):
        assert value not in text


def test_R8_nothing_to_evaluate_without_prompt_or_generation() -> None:
    for prompt, generation in ((None, None), ("", None), (None, ""), ("", "")):
        evaluation = evaluate(review(prompt=prompt, generation=generation), FakeRedactor(), CONFIG)
        assert evaluation.record is None and evaluation.rule_ids == ("R8",)


def test_R8_only_one_side_present() -> None:
    rec = evaluate(review(prompt=None), FakeRedactor(), CONFIG).record
    assert rec is not None and rec["prompt"] is None and rec["generation"] == "hi"


def test_R8_evaluation_id_is_random_not_derived_from_ids() -> None:
    ids = {evaluate(review(), FakeRedactor(), CONFIG).record["evaluation_id"] for _ in range(50)}  # type: ignore[index]
    assert len(ids) == 50
    for value in ids:
        assert uuid.UUID(value).version == 4


identifier_text = st.text(
    alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789"), min_size=5, max_size=12
)
separator = st.sampled_from(["-", "_", ".", " ", ":", ""])


@settings(max_examples=300)
@given(
    st.lists(identifier_text, min_size=6, max_size=6, unique=True),
    st.lists(st.tuples(st.integers(0, 5), separator, st.booleans()), max_size=12),
    st.text(alphabet="xyz ,.!?\n", max_size=30),
)
def test_R8_no_identifier_survives_in_any_spelling_property(
    raw_ids: list[str], mentions: list[tuple[int, str, bool]], filler: str
) -> None:
    """Identifiers (with inner separators) quoted anywhere, in any case and with any
    separators, never appear in the evaluation record."""
    ids = [f"q{v[:3]}-{v[3:]}" for v in raw_ids]  # an inner separator in every identifier
    org, key, user, ip, req, flag = ids

    def spell(i: int, sep: str, upper: bool) -> str:
        value = ids[i].replace("-", sep)
        return value.upper() if upper else value

    quoted = " ".join(spell(*m) for m in mentions)
    r = review(
        org_id=org,
        api_key_id=key,
        user_id=user,
        client_ip=ip,
        request_id=req,
        flag_id=flag,
        prompt=f"{filler}{quoted}{filler}",
        generation=quoted or "ok",
        flag_reason=f"reason {quoted}",
        model=f"ft:{spell(0, '_', False)}",
        endpoint="chat",
    )
    rec = evaluate(r, FakeRedactor(), CONFIG).record
    assert rec is not None
    text = json.dumps(rec).lower()
    for value in ids:
        for sep in ("-", "_", ".", " ", ":", ""):
            assert value.replace("-", sep).lower() not in text


def test_R8_R11_with_the_real_redactor() -> None:
    redaction = pytest.importorskip("streams.policy.redaction")
    prompt = (
        "I'm Jane Roe, jane.roe@example.com, +1 415 555 0136, card 4111 1111 1111 1111, "
        "org ORG-ACME-42 from 198.51.100.23"
    )
    rec = evaluate(review(prompt=prompt), redaction.Redactor(), CONFIG).record
    assert rec is not None
    for secret in ("Jane Roe", "jane.roe@example.com", "555 0136", "4111", "ACME", "198.51"):
        assert secret not in rec["prompt"]
    assert {"EMAIL", "PHONE", "CREDIT_CARD", "ORG_ID", "IP_ADDRESS"} <= set(rec["redaction_counts"])
