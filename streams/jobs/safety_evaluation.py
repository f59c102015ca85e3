"""The safety-evaluation job (R8): flagged prompts/generations, de-identified, exactly once.

Input: the safety-review topic (the full log of each flagged request, R5, written by the
retention job). Output: the safety-evaluation topic, one SafetyEvaluationRecord per
(flag, request) with customer identifiers scrubbed and R11 redaction applied
(``streams.policy.safety_evaluation``); every decision audited (R16); bad input
dead-lettered with its coordinates, never its content (R17); the job keeps running.

Why exactly once (``streams.kafka.runtime``), not faust: ``evaluation_id`` must be random
(R8: nothing derived from the customer's ids), so a record processed twice would give two
evaluation records that no reader could recognise as one. Only a transaction that writes
the evaluation record, its audit record, the de-duplication entry and the consumed offset
together makes a crash or a rebalance neither lose nor repeat one; faust's
``exactly_once`` does not survive a SIGKILL (see docs/usage_and_safety_topics.md).

De-duplication: a review repeated upstream (the same flag and request) is evaluated
once. The job keeps a digest of "flag id/request id" per input partition in the store
``state`` (changelog ``<prefix>safety-evaluation.state``, co-partitioned with
safety-review, entries deleted after 60 days); the digest never leaves the job and is not
stored with the evaluation record, so it links nothing.

Unlinkability beyond the record's fields: the record key is the random evaluation id (so
the partition says nothing about the input), the Kafka timestamp is the start of the
coarse time bucket (not the processing time), and the records of one transaction are
written in random order.

Run one worker:  streams run safety-evaluation
"""

from __future__ import annotations

import hashlib
import os
import random
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from streams.kafka.runtime import (
    Context,
    JobSpec,
    StoreSpec,
    subject_field,
)
from streams.kafka.topics import SAFETY_EVALUATION
from streams.kafka.transactional import Output
from streams.policy.config import PolicyConfig
from streams.policy.models import DAY_MS, InvalidRecord, PersonalInformationRedactor, Route
from streams.policy.safety_evaluation import evaluate, validate_review
from streams.settings import Settings

JOB = SAFETY_EVALUATION
EVALUATION_ROUTE = "safety_evaluation"
STATE = "state"  # the de-duplication store; its changelog is ``<prefix>safety-evaluation.state``
DEDUP_RETENTION_MS = 60 * DAY_MS  # longer than the 30 days a review can be re-read


def review_digest(flag_id: str, request_id: str) -> bytes:
    """The de-duplication key of a review: a digest, never the ids themselves."""
    return hashlib.blake2b(f"{flag_id}/{request_id}".encode(), digest_size=16).hexdigest().encode()


class SafetyEvaluationJob:
    """Decode, validate, de-duplicate, evaluate (R8/R11), audit (R16)."""

    def __init__(
        self,
        config: PolicyConfig,
        redactor: PersonalInformationRedactor,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.config = config
        self.redactor = redactor
        self.new_id = new_id
        self.stats: Counter[str] = Counter()
        self._shuffle = random.Random(os.urandom(16)).shuffle
        self.spec = JobSpec(
            name=JOB,
            inputs=("safety_review",),
            outputs=(EVALUATION_ROUTE, "audit", "dead_letters"),
            stores=(
                StoreSpec(
                    STATE,
                    {"cleanup.policy": "compact,delete", "retention.ms": str(DEDUP_RETENTION_MS)},
                ),
            ),
            invalid=(InvalidRecord,),
            subject_kind="safety_review",
            subject_of=subject_field("request_id", "safety_review"),
            # R17: a safety review carries prompts and generations of an identified
            # customer: its bytes are never copied (R2/R8); the record stays findable at
            # its coordinates in safety-review for that topic's 30 days.
            dead_letter_rules=("R17", "R8"),
            arrange=self.arrange,
            batch_size=200,  # redaction is costly: short transactions
            tombstone=self.copy_deleted,
        )

    @staticmethod
    def copy_deleted(ctx: Context) -> None:
        """A tombstone in safety-review: the retention job deleted a copy (R4/R15) or rolled
        an idle partition. Nothing to evaluate, and not a bad record (R17)."""

    def arrange(self, outputs: list[Output]) -> list[Output]:
        """Random order within a transaction: the output order says nothing of the input's."""
        self._shuffle(outputs)
        return outputs

    def process(self, ctx: Context, record: dict[str, Any]) -> None:
        review = validate_review(record)
        seen = ctx.store(STATE)
        digest = review_digest(review.flag_id, review.request_id)
        if digest in seen:
            self.stats["duplicate"] += 1
            self._audit(
                ctx,
                review.request_id,
                review.org_id,
                [Route.DROPPED],
                ["R8"],
                ["R8: this flag's review of the request was already evaluated"],
            )
            return
        evaluation = evaluate(review, self.redactor, self.config, self.new_id)
        routes: list[str] = [Route.DROPPED]
        if evaluation.record is not None:
            ctx.emit(
                EVALUATION_ROUTE,
                evaluation.record["evaluation_id"],
                evaluation.record,
                timestamp_ms=evaluation.record["time_bucket_start_ms"],
            )
            routes = [EVALUATION_ROUTE]
            self.stats["evaluated"] += 1
        else:
            self.stats["nothing_to_evaluate"] += 1
        self._audit(
            ctx,
            review.request_id,
            review.org_id,
            routes,
            list(evaluation.rule_ids),
            evaluation.reasons,
        )
        seen.put(digest, b"1")

    @staticmethod
    def _audit(
        ctx: Context,
        request_id: str,
        org_id: str,
        routes: list[str],
        rules: list[str],
        reasons: tuple[str, ...] | list[str],
    ) -> None:
        """R16: the decision about a request, never with content nor the evaluation id
        (which would link the evaluation record back to the request)."""
        ctx.audit(request_id, org_id, routes, rules, reasons)


def build_job(
    settings: Settings, redactor: PersonalInformationRedactor | None = None
) -> SafetyEvaluationJob:
    if redactor is None:
        from streams.policy.redaction import Redactor

        redactor = Redactor()
    return SafetyEvaluationJob(settings.policy, redactor)
