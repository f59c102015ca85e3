"""R8 safety evaluation: a flagged prompt/generation, with nothing that links to the customer.

Pure logic (no Kafka). A SafetyReviewRecord (the full log of a flagged request, R5) becomes
a SafetyEvaluationRecord only after:

1. the customer identifiers are scrubbed from every text that is kept, wherever they are
   quoted (prompt, generation, flag reason, model, endpoint): org id, API key id, user id,
   client IP; and, because either leads straight back to the request and so to the
   customer, the request id and the flag id. Matching is case-insensitive and ignores the
   separators inside an identifier ("org-42" also matches "ORG_42", "org 42", "org42"),
   longest identifier first; each is replaced by a typed placeholder ([ORG_ID], ...);
2. the R11 redactor has run on the same texts (personal information -> typed placeholders);
   the identifiers are scrubbed once more afterwards, so nothing the redactor leaves or
   rewrites can bring one back;
3. the identifying fields themselves are dropped: the record has no org, key, user, IP,
   request id, flag id, source, documents or metadata, and its time is only the coarse
   bucket (``PolicyConfig.safety_time_bucket_ms``, default 7 days) of the request's
   creation.

``evaluation_id`` is random (``uuid4`` by default), never derived from an identifier.

Decisions where the policy is silent (see docs/usage_and_safety_topics.md):
- Documents and metadata are not carried at all (R8 names prompts and generations only).
- A review with neither prompt nor generation yields no evaluation record (nothing to
  evaluate); it is audited.
- An identifier is scrubbed whatever its length; an identifier that is only separators is
  ignored (it cannot identify anyone).
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from streams.policy.config import PolicyConfig
from streams.policy.models import InvalidRecord, PersonalInformationRedactor

# Typed placeholders of the customer identifiers (R8); the IP one is R11's.
ORG_ID = "ORG_ID"
API_KEY_ID = "API_KEY_ID"
USER_ID = "USER_ID"
IP_ADDRESS = "IP_ADDRESS"
REQUEST_ID = "REQUEST_ID"
FLAG_ID = "FLAG_ID"

# The fields of a SafetyEvaluationRecord: anything else would be a leak (tests check it).
EVALUATION_FIELDS = (
    "evaluation_id",
    "flag_reason",
    "time_bucket_start_ms",
    "model",
    "endpoint",
    "prompt",
    "generation",
    "redaction_counts",
    "policy_version",
)


@dataclass(frozen=True, slots=True)
class SafetyReview:
    """A flagged request's full log as the retention job writes it (safety_review_record)."""

    flag_id: str
    flag_reason: str
    flagged_at_ms: int
    request_id: str
    org_id: str
    api_key_id: str
    created_at_ms: int
    endpoint: str
    model: str
    source: str
    prompt: str | None
    documents: list[str]
    generation: str | None
    client_ip: str | None
    user_id: str | None
    metadata: Mapping[str, str]
    policy_version: str

    def identifiers(self) -> list[tuple[str, str]]:
        """(placeholder label, value) of every customer identifier of the record."""
        pairs = [
            (ORG_ID, self.org_id),
            (API_KEY_ID, self.api_key_id),
            (USER_ID, self.user_id or ""),
            (IP_ADDRESS, self.client_ip or ""),
            (REQUEST_ID, self.request_id),
            (FLAG_ID, self.flag_id),
        ]
        return [(label, value) for label, value in pairs if value]


def validate_review(record: Mapping[str, Any]) -> SafetyReview:
    """R17: a decoded safety review, checked beyond its Avro types (reasons carry no content)."""
    try:
        review = SafetyReview(**record)
    except TypeError:
        raise InvalidRecord("fields do not match contract") from None
    org = review.org_id or None
    if not review.flag_id:
        raise InvalidRecord("empty flag_id", org)
    if not review.request_id:
        raise InvalidRecord("empty request_id", org)
    if not review.org_id:
        raise InvalidRecord("empty org_id")
    if review.created_at_ms <= 0:
        raise InvalidRecord("created_at_ms not positive", org)
    return review


class IdentifierScrubber:
    """Replaces every occurrence of the given identifiers with typed placeholders.

    One pass per identifier, longest first (an identifier containing another is replaced
    whole); a pass never rewrites a placeholder already in the text ("[ORG_ID]" stays as it
    is even if a user id is "id").
    """

    def __init__(self, identifiers: Iterable[tuple[str, str]]) -> None:
        patterns: list[tuple[int, str, re.Pattern[str]]] = []
        for label, value in identifiers:
            pattern = identifier_pattern(value)
            if pattern is not None:
                patterns.append((len(value), label, pattern))
        patterns.sort(key=lambda item: -item[0])
        self._patterns = [(label, pattern) for _, label, pattern in patterns]

    def scrub(self, text: str, counts: Counter[str]) -> str:
        for label, pattern in self._patterns:
            replacement = f"[{label}]"

            def replace(match: re.Match[str], replacement: str = replacement) -> str:
                if match.group("placeholder") is not None:
                    return match.group(0)
                counts[replacement[1:-1]] += 1
                return replacement

            text = pattern.sub(replace, text)
        return text


_PLACEHOLDER = r"(?P<placeholder>\[[A-Z][A-Z_]*\])"


def identifier_pattern(value: str) -> re.Pattern[str] | None:
    """Case- and separator-insensitive pattern of one identifier, placeholders excepted
    (None: the identifier has nothing to match)."""
    parts = [p for p in re.split(r"[\W_]+", value) if p]
    if not parts:
        return None
    body = r"[\W_]*".join(re.escape(p) for p in parts)
    return re.compile(f"{_PLACEHOLDER}|(?:{body})", re.IGNORECASE)


def time_bucket(created_at_ms: int, bucket_ms: int) -> int:
    """Start of the coarse bucket (aligned to the epoch) the request was created in."""
    return created_at_ms - created_at_ms % bucket_ms


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The outcome for one review: the record to write (None: nothing to evaluate)."""

    record: dict[str, Any] | None
    rule_ids: tuple[str, ...]
    reasons: tuple[str, ...]


def evaluate(
    review: SafetyReview,
    redactor: PersonalInformationRedactor,
    config: PolicyConfig,
    new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> Evaluation:
    """R8/R11: the de-identified evaluation record of a flagged request."""
    if not review.prompt and not review.generation:
        return Evaluation(
            None, ("R8",), ("R8: no prompt or generation to evaluate; nothing written",)
        )
    scrubber = IdentifierScrubber(review.identifiers())
    counts: Counter[str] = Counter()

    def clean(text: str) -> str:
        text = scrubber.scrub(text, counts)  # R8: identifiers quoted in the text
        redacted = redactor.redact(text)  # R11: personal information
        counts.update(redacted.counts)
        return scrubber.scrub(redacted.text, counts)

    record = {
        "evaluation_id": new_id(),
        "flag_reason": clean(review.flag_reason),
        "time_bucket_start_ms": time_bucket(review.created_at_ms, config.safety_time_bucket_ms),
        "model": clean(review.model),
        "endpoint": clean(review.endpoint),
        "prompt": clean(review.prompt) if review.prompt else None,
        "generation": clean(review.generation) if review.generation else None,
        "redaction_counts": {label: int(n) for label, n in sorted(counts.items()) if n},
        "policy_version": config.policy_version,
    }
    reasons = ["R8: customer identifiers removed; org, key, user, IP, request and flag ids dropped"]
    reasons.append(
        "R11: personal information redacted"
        + (f" ({sum(counts.values())} replacements)" if counts else " (none found)")
    )
    return Evaluation(record, ("R8", "R11"), tuple(reasons))
