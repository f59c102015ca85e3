"""The safety-evaluation job (R8): flagged prompts/generations, de-identified, exactly once.

Input: the safety-review topic (the full log of each flagged request, R5, written by the
retention job). Output: the safety-evaluation topic, one SafetyEvaluationRecord per
(flag, request) with customer identifiers scrubbed and R11 redaction applied
(``streams.policy.safety_evaluation``); every decision audited (R16); bad input
dead-lettered with its coordinates, never its content (R17); the job keeps running.

Why a plain confluent-kafka transactional loop, not faust: ``evaluation_id`` must be
random (R8: nothing derived from the customer's ids), so a record processed twice would
give two evaluation records that no reader could recognise as one. Only a transaction
that writes the evaluation record, its audit record, the de-duplication entry and the
consumed offset together makes a crash or a rebalance neither lose nor repeat one; faust's
``exactly_once`` does not survive a SIGKILL (see docs/usage_and_safety_topics.md). The
loop is ``streams.kafka.stateful.StatefulLoop``.

De-duplication: a review repeated upstream (the same flag and request) is evaluated
once. The job keeps a digest of "flag id/request id" per input partition in a job-internal
compacted changelog ``<prefix>safety-evaluation.state`` (co-partitioned with safety-review,
entries deleted after 60 days); the digest never leaves the job and is not stored with
the evaluation record, so it links nothing.

Unlinkability beyond the record's fields: the record key is the random evaluation id (so
the partition says nothing about the input), the Kafka timestamp is the start of the
coarse time bucket (not the processing time), and the records of one transaction are
written in random order.

Run one worker:  python -m streams.jobs.safety_evaluation --bootstrap HOST:PORT --registry URL
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from confluent_kafka import Message

from streams.kafka.metrics import DISABLED, JobMetrics, port_from_env
from streams.kafka.serde import Codec, Contracts, DecodeError, registry_client
from streams.kafka.stateful import (
    StatefulLoop,
    StateReader,
    ensure_copartitioned_topic,
)
from streams.kafka.topics import SAFETY_EVALUATION, internal_topic
from streams.kafka.transactional import LoopConfig, Output, source_of
from streams.policy.audit import Source, audit_record, dead_letter_decision
from streams.policy.config import PolicyConfig, load_config
from streams.policy.models import DAY_MS, InvalidRecord, Route
from streams.policy.safety_evaluation import (
    PersonalInformationRedactor,
    SafetyReview,
    evaluate,
    validate_review,
)

log = logging.getLogger("streams.safety_evaluation")

JOB = "safety-evaluation"
EVALUATION_ROUTE = "safety_evaluation"
DEDUP_RETENTION_MS = 60 * DAY_MS  # longer than the 30 days a review can be re-read


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def state_topic(config: PolicyConfig) -> str:
    """The job-internal de-duplication changelog: ``<prefix>safety-evaluation.state``."""
    return internal_topic(config.topics, SAFETY_EVALUATION, "state")


def group_id(config: PolicyConfig) -> str:
    """Consumer group and transactional-id prefix (R18 ACLs grant ``safety-evaluation*``)."""
    return config.topics.safety_review.removesuffix("safety-review") + JOB


def review_digest(flag_id: str, request_id: str) -> bytes:
    """The de-duplication key of a review: a digest, never the ids themselves."""
    return hashlib.blake2b(f"{flag_id}/{request_id}".encode(), digest_size=16).hexdigest().encode()


def ensure_state_topic(bootstrap_servers: str, config: PolicyConfig) -> str:
    return ensure_copartitioned_topic(
        bootstrap_servers,
        state_topic(config),
        config.topics.safety_review,
        {"cleanup.policy": "compact,delete", "retention.ms": str(DEDUP_RETENTION_MS)},
    )


class SafetyEvaluator:
    """The processor: decode, validate, de-duplicate, evaluate (R8/R11), audit (R16)."""

    def __init__(
        self,
        config: PolicyConfig,
        contracts: Contracts,
        redactor: PersonalInformationRedactor,
        metrics: JobMetrics,
        state: str,
        reader: StateReader | None,
        clock: Callable[[], int] = wall_clock_ms,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.config = config
        self.redactor = redactor
        self.metrics = metrics
        self.state = state
        self.reader = reader
        self.clock = clock
        self.new_id = new_id
        self.stats: Counter[str] = Counter()
        self.seen: dict[int, set[bytes]] = {}
        self._input: Codec = contracts.codec("safety_review")
        self._out = {
            f: (getattr(config.topics, f), contracts.codec(f))
            for f in ("safety_evaluation", "audit", "dead_letters")
        }
        self._shuffle = random.Random(os.urandom(16)).shuffle

    # --- StatefulProcessor ------------------------------------------------------------
    def refresh(self) -> list[Output]:
        return []

    def forget(self, partitions: list[int] | None = None) -> None:
        if partitions is None:
            self.seen.clear()
        for partition in partitions or ():
            self.seen.pop(partition, None)

    def arrange(self, outputs: list[Output]) -> list[Output]:
        """Random order within a transaction: the output order says nothing of the input's."""
        self._shuffle(outputs)
        return outputs

    def process(self, message: Message) -> list[Output]:
        source = source_of(message)
        key, value = message.key(), message.value()
        self.metrics.record_in(source.topic)
        if value is not None and len(value) > self.config.max_record_bytes:
            return self._dead_letter(source, key, "oversize record", "Oversize", None, None)
        try:
            record = self._input.decode(value)
        except DecodeError as exc:
            return self._dead_letter(source, key, exc.reason, "DecodeError", None, None)
        try:
            review = validate_review(record)
        except InvalidRecord as exc:
            subject = record.get("request_id")
            subject = subject if isinstance(subject, str) and subject else None
            return self._dead_letter(source, key, exc.reason, "InvalidRecord", exc.org_id, subject)
        seen = self._seen(source.partition)
        digest = review_digest(review.flag_id, review.request_id)
        if digest in seen:
            self.stats["duplicate"] += 1
            self.metrics.decision("R8")
            return [
                self._audit(
                    source,
                    review,
                    [Route.DROPPED],
                    ["R8"],
                    ["R8: this flag's review of the request was already evaluated"],
                )
            ]
        return self._evaluate(source, review, digest, seen)

    # --- decisions --------------------------------------------------------------------
    def _evaluate(
        self, source: Source, review: SafetyReview, digest: bytes, seen: set[bytes]
    ) -> list[Output]:
        evaluation = evaluate(review, self.redactor, self.config, self.new_id)
        outputs: list[Output] = []
        routes: list[str] = [Route.DROPPED]
        if evaluation.record is not None:
            topic, codec = self._out["safety_evaluation"]
            outputs.append(
                Output(
                    topic,
                    evaluation.record["evaluation_id"],
                    codec.encode(evaluation.record),
                    timestamp_ms=evaluation.record["time_bucket_start_ms"],
                )
            )
            self.metrics.record_out(EVALUATION_ROUTE)
            routes = [EVALUATION_ROUTE]
            self.stats["evaluated"] += 1
        else:
            self.stats["nothing_to_evaluate"] += 1
        for rule in evaluation.rule_ids:
            self.metrics.decision(rule)
        outputs.append(
            self._audit(source, review, routes, list(evaluation.rule_ids), evaluation.reasons)
        )
        outputs.append(Output(self.state, digest, b"1", source.partition))
        seen.add(digest)
        return outputs

    def _seen(self, partition: int) -> set[bytes]:
        seen = self.seen.get(partition)
        if seen is None:
            seen = set(self.reader.read(partition)) if self.reader is not None else set()
            self.seen[partition] = seen
            log.info("partition %d restored: %d reviews already evaluated", partition, len(seen))
        return seen

    def _emit(self, field: str, key: str, record: dict[str, Any]) -> Output:
        topic, codec = self._out[field]
        self.metrics.record_out(field)
        return Output(topic, key, codec.encode(record))

    def _audit(
        self,
        source: Source,
        review: SafetyReview,
        routes: list[str],
        rules: list[str],
        reasons: tuple[str, ...] | list[str],
    ) -> Output:
        """R16: the decision about a request, never with content nor the evaluation id
        (which would link the evaluation record back to the request)."""
        record = audit_record(
            job=JOB,
            source=source,
            subject_id=review.request_id,
            subject_kind="safety_review",
            org_id=review.org_id,
            routes=routes,
            rule_ids=rules,
            reasons=reasons,
            consent_version="",
            policy_version=self.config.policy_version,
            decided_at_ms=self.clock(),
        )
        return self._emit("audit", review.request_id, record)

    def _dead_letter(
        self,
        source: Source,
        key: bytes | None,
        reason: str,
        error_class: str,
        org_id: str | None,
        subject_id: str | None,
    ) -> list[Output]:
        """R17: reason and coordinates only. A safety review carries prompts and generations
        of an identified customer: its bytes are never copied (R2/R8); the record stays
        findable at its coordinates in safety-review for that topic's 30 days."""
        letter, audit = dead_letter_decision(
            job=JOB,
            source=source,
            reason=reason,
            error_class=error_class,
            org_id=org_id,
            original_key=key,
            original_value=None,
            keep_content=False,
            decided_at_ms=self.clock(),
            policy_version=self.config.policy_version,
            rule_ids=("R17", "R8"),
            subject_id=subject_id,
            subject_kind="safety_review",
        )
        self.stats["dead_letter"] += 1
        self.metrics.dead_letter(error_class)
        self.metrics.decision("R17")
        log.warning("dead letter %s: %s", source.id, reason)
        return [
            self._emit("dead_letters", source.id, letter),
            self._emit("audit", subject_id or source.id, audit),
        ]


def build_safety_evaluation_loop(
    bootstrap_servers: str,
    registry_url: str,
    config: PolicyConfig,
    worker_id: str = "0",
    metrics: JobMetrics | None = None,
    redactor: PersonalInformationRedactor | None = None,
    clock: Callable[[], int] = wall_clock_ms,
    exit_when_stuck_s: float | None = None,
) -> tuple[StatefulLoop, SafetyEvaluator]:
    contracts = Contracts(registry_client(registry_url), config.topics)
    contracts.register_all()  # fail fast, and the same schema ids in every process
    if redactor is None:
        from streams.policy.redaction import Redactor

        redactor = Redactor()
    state = ensure_state_topic(bootstrap_servers, config)
    processor = SafetyEvaluator(
        config,
        contracts,
        redactor,
        metrics or JobMetrics(JOB),
        state,
        StateReader(bootstrap_servers, state, group_prefix=group_id(config)),
        clock,
    )
    group = group_id(config)
    loop = StatefulLoop(
        LoopConfig(
            bootstrap_servers=bootstrap_servers,
            group_id=group,
            transactional_id=f"{group}-{worker_id}",
            exit_when_stuck_s=exit_when_stuck_s,
            input_topics=[config.topics.safety_review],
            batch_size=200,
        ),
        processor,
    )
    return loop, processor


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one safety-evaluation worker (R8).")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--registry", default=os.environ.get("SCHEMA_REGISTRY_URL"))
    parser.add_argument("--worker-id", default=os.environ.get("STREAMS_WORKER_ID", "0"))
    parser.add_argument("--metrics-port", type=int, default=port_from_env())
    args = parser.parse_args(argv)
    if not args.bootstrap or not args.registry:
        parser.error("--bootstrap and --registry (or their environment variables) are required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    metrics = JobMetrics(JOB)
    if args.metrics_port != DISABLED:
        metrics.serve(args.metrics_port)
    loop, processor = build_safety_evaluation_loop(
        args.bootstrap,
        args.registry,
        load_config(),
        args.worker_id,
        metrics=metrics,
        # a transaction stuck past this bound exits the worker; its restart resumes exactly
        exit_when_stuck_s=float(os.environ.get("STREAMS_EXIT_WHEN_STUCK_S", "60")),
    )
    loop.install_signal_handlers()
    log.info("safety-evaluation worker %s started", args.worker_id)
    try:
        loop.run()
    finally:
        metrics.stop()
    log.info("safety-evaluation worker %s stopped: %s", args.worker_id, dict(processor.stats))


if __name__ == "__main__":
    main()
