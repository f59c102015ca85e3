"""The topic catalogue: names, partitions, cleanup, retention, contracts and who may read.

One place for all of it. ``ensure_topics`` creates missing topics and brings the
configuration of existing ones in line, so it is safe to run on every start.
``acl_bindings`` turns the catalogue into broker ACLs (R18 least privilege).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

log = logging.getLogger(__name__)

DAY_MS = 86_400_000

# Each topic's name without a prefix, by the field that names it in code.
BASE_NAMES = {
    "request_logs": "request-logs",
    "data_controls": "data-controls",
    "controls_watermark": "controls-watermark",
    "misuse_flags": "misuse-flags",
    "legal_holds": "legal-holds",
    "account_deletions": "account-deletions",
    "finetune_rows": "finetune-rows",
    "log_store": "log-store",
    "deletion_events": "deletion-events",
    "safety_review": "safety-review",
    "safety_evaluation": "safety-evaluation",
    "training_candidates": "training-candidates",
    "training_retractions": "training-retractions",
    "usage_events": "usage-events",
    "usage_metrics": "usage-metrics",
    "audit": "audit-decisions",
    "dead_letters": "dead-letters",
}


@dataclass(frozen=True, slots=True)
class Topology:
    """The topic names of one deployment: every catalogue name under one explicit prefix
    (empty in production; tests and demos share a broker under their own prefixes).
    Consumer groups, transactional ids and job-internal topics are named under the same
    prefix (``group``, ``internal_topic``)."""

    prefix: str = ""
    request_logs: str = field(init=False)
    data_controls: str = field(init=False)
    controls_watermark: str = field(init=False)
    misuse_flags: str = field(init=False)
    legal_holds: str = field(init=False)
    account_deletions: str = field(init=False)
    finetune_rows: str = field(init=False)
    log_store: str = field(init=False)
    deletion_events: str = field(init=False)
    safety_review: str = field(init=False)
    safety_evaluation: str = field(init=False)
    training_candidates: str = field(init=False)
    training_retractions: str = field(init=False)
    usage_events: str = field(init=False)
    usage_metrics: str = field(init=False)
    audit: str = field(init=False)
    dead_letters: str = field(init=False)

    def __post_init__(self) -> None:
        for name, base in BASE_NAMES.items():
            object.__setattr__(self, name, self.prefix + base)

    def name(self, field_name: str) -> str:
        """The topic of a catalogue field, e.g. ``name("audit")``."""
        return self.prefix + BASE_NAMES[field_name]

    def all(self) -> dict[str, str]:
        """Field -> topic name, for every topic of the catalogue."""
        return {name: self.prefix + base for name, base in BASE_NAMES.items()}

    def group(self, role: str) -> str:
        """A job's consumer group and transactional-id prefix, ``<prefix><role>`` (R18: the
        role's ACLs grant groups and transactional ids named after it)."""
        return self.prefix + role


SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"

# Roles (principals ``User:<role>``). Jobs write; people's teams read.
ROUTER = "router"
RETENTION = "retention"
USAGE = "usage"
SAFETY_EVALUATION = "safety-evaluation"
GATEWAY = "gateway"
CONTROL_PLANE = "control-plane"
TRUST_SAFETY = "trust-safety"
LEGAL = "legal"
SAFETY_TEAM = "safety-team"
TRAINING = "training"
ANALYTICS = "analytics"
PRIVACY_AUDIT = "privacy-audit"
LOG_SINK = "log-sink"

ROLES = (
    ROUTER,
    RETENTION,
    USAGE,
    SAFETY_EVALUATION,
    GATEWAY,
    CONTROL_PLANE,
    TRUST_SAFETY,
    LEGAL,
    SAFETY_TEAM,
    TRAINING,
    ANALYTICS,
    PRIVACY_AUDIT,
    LOG_SINK,
)

# The roles that run a job (the others are people's teams and upstream writers).
JOBS = (ROUTER, RETENTION, USAGE, SAFETY_EVALUATION)

COMPACT = "compact"
DELETE = "delete"
COMPACT_DELETE = "compact,delete"
FOREVER = -1

# R4/R15/R17: how long deleted content may stay readable on the broker, at most
# (``STREAMS_DELETION_BOUND_MS``). See ``TopicSpec.configs`` for how it is kept.
DEFAULT_DELETION_BOUND_MS = 3_600_000
# A nudge (``ROLL_KEY`` tombstone) goes to every partition of a compacted content topic at
# least this often (a quarter of the bound), so that an idle partition's segments roll.
ROLL_KEY = b"__deletion-bound-roll__"


def deletion_bound_ms() -> int:
    """The deployment's deletion bound: ``STREAMS_DELETION_BOUND_MS``, else one hour."""
    value = os.environ.get("STREAMS_DELETION_BOUND_MS")
    bound = int(value) if value else DEFAULT_DELETION_BOUND_MS
    if bound < 4_000:
        raise ValueError("STREAMS_DELETION_BOUND_MS must be at least 4000 ms")
    return bound


def roll_interval_ms(bound_ms: int) -> int:
    """Segment roll, compaction lag and nudge period of content topics: a quarter of the
    bound, so a deleted value is gone within about half the bound plus the cleaner's
    back-off (``TopicSpec.configs``)."""
    return bound_ms // 4


@dataclass(frozen=True, slots=True)
class TopicSpec:
    field: str  # attribute of ``Topology``
    schema: str  # file in schemas/
    partitions: int
    cleanup: str
    retention_ms: int
    writers: tuple[str, ...]
    readers: tuple[str, ...]
    doc: str
    key_fields: tuple[str, ...] = ()  # the record fields the key is made of, joined by "/"
    # Carries prompts, documents or generations that the pipeline promises to delete
    # (R4/R5/R15/R17): its configs keep the deletion bound.
    deletable_content: bool = False

    def name(self, topics: Topology) -> str:
        return str(getattr(topics, self.field))

    def schema_path(self) -> Path:
        return SCHEMAS_DIR / self.schema

    def configs(self, deletion_bound: int = DEFAULT_DELETION_BOUND_MS) -> dict[str, str]:
        """The topic's configs; for deletable content, within ``deletion_bound`` ms.

        Kafka never compacts or deletes the active segment of a partition, and rolls it only
        when a record is appended after ``min(segment.ms, max.compaction.lag.ms)``
        (apache/kafka#22489 documents both). With both at a quarter of the bound, and a
        record appended to every partition at least that often (the retention job's
        ``ROLL_KEY`` nudges, for idle partitions), a tombstoned value's segment rolls within
        half the bound and the cleaner must compact it a quarter later at most (plus its
        ``log.cleaner.backoff.ms``). Time-retained content (dead letters, safety-review
        copies) is kept ``retention.ms`` less the bound, so it is gone by its promised age
        even though a segment is deleted only once its newest record has expired (plus
        ``log.retention.check.interval.ms``).
        """
        retention = self.retention_ms
        if self.deletable_content and retention != FOREVER:
            retention -= deletion_bound
        configs = {"cleanup.policy": self.cleanup, "retention.ms": str(retention)}
        if COMPACT in self.cleanup:
            # Tombstones must outlive a consumer's restart so sinks see deletions.
            configs["delete.retention.ms"] = str(DAY_MS)
        if self.deletable_content:
            roll = str(roll_interval_ms(deletion_bound))
            configs["segment.ms"] = roll
            if COMPACT in self.cleanup:
                configs["max.compaction.lag.ms"] = roll
        return configs


PARTITIONS = 6

CATALOGUE: tuple[TopicSpec, ...] = (
    TopicSpec(
        "request_logs",
        "request_log.avsc",
        PARTITIONS,
        DELETE,
        7 * DAY_MS,
        (GATEWAY,),
        (ROUTER,),
        "Request logs from the API gateway, keyed by request_id.",
        key_fields=("request_id",),
    ),
    TopicSpec(
        "data_controls",
        "data_control_change.avsc",
        1,
        COMPACT,
        FOREVER,
        (CONTROL_PLANE,),
        (ROUTER, RETENTION),
        "R12: every version of every org's data controls; keyed org/effective/change.",
        key_fields=("org_id", "effective_at_ms", "change_id"),
    ),
    TopicSpec(
        "controls_watermark",
        "controls_watermark.avsc",
        1,
        COMPACT,
        FOREVER,
        (CONTROL_PLANE,),
        (ROUTER, RETENTION),
        "R12: the control plane's published-up-to time.",
        key_fields=(),
    ),
    TopicSpec(
        "misuse_flags",
        "misuse_flag.avsc",
        1,
        COMPACT,
        FOREVER,
        (TRUST_SAFETY,),
        (ROUTER, RETENTION),
        "R5: misuse flags, latest state per flag_id.",
        key_fields=("flag_id",),
    ),
    TopicSpec(
        "legal_holds",
        "legal_hold.avsc",
        1,
        COMPACT,
        FOREVER,
        (LEGAL,),
        (ROUTER, RETENTION),
        "R6: legal holds, latest state per hold_id.",
        key_fields=("hold_id",),
    ),
    TopicSpec(
        "account_deletions",
        "account_deletion_request.avsc",
        1,
        COMPACT,
        FOREVER,
        (CONTROL_PLANE,),
        (ROUTER, RETENTION),
        "R15: account deletion requests, keyed by org_id.",
        key_fields=("org_id",),
    ),
    TopicSpec(
        "finetune_rows",
        "finetune_row.avsc",
        PARTITIONS,
        DELETE,
        7 * DAY_MS,
        (GATEWAY,),
        (ROUTER,),
        "R10: uploaded fine-tune dataset rows.",
        key_fields=("dataset_id", "row_index"),
    ),
    # R4: the log store is compacted and never time-expired by the broker: only
    # the retention job deletes, so a held record can never be lost to retention.ms.
    TopicSpec(
        "log_store",
        "log_store_record.avsc",
        PARTITIONS,
        COMPACT,
        FOREVER,
        (ROUTER, RETENTION),
        (RETENTION, LOG_SINK),
        "R4: retained request logs keyed by request_id; tombstone = deleted.",
        key_fields=("request_id",),
        deletable_content=True,
    ),
    TopicSpec(
        "deletion_events",
        "deletion_event.avsc",
        PARTITIONS,
        DELETE,
        90 * DAY_MS,
        (RETENTION,),
        (LOG_SINK, TRAINING, PRIVACY_AUDIT, ROUTER),
        "R4/R15: deletions that downstream sinks must apply.",
        key_fields=("request_id",),
    ),
    TopicSpec(
        "safety_review",
        "safety_review_record.avsc",
        PARTITIONS,
        # R15/R4: compacted too, so the copy of a deleted record can be tombstoned.
        COMPACT_DELETE,
        30 * DAY_MS,
        (RETENTION,),
        (SAFETY_TEAM, SAFETY_EVALUATION),
        "R5: full logs of flagged requests, for the safety team only.",
        key_fields=("flag_id", "request_id"),
        deletable_content=True,
    ),
    TopicSpec(
        "safety_evaluation",
        "safety_evaluation_record.avsc",
        PARTITIONS,
        DELETE,
        FOREVER,
        (SAFETY_EVALUATION,),
        (SAFETY_TEAM,),
        "R8: de-identified flagged prompts/generations for safety evaluation.",
        key_fields=("evaluation_id",),
    ),
    TopicSpec(
        "training_candidates",
        "training_candidate.avsc",
        PARTITIONS,
        DELETE,
        FOREVER,
        (ROUTER,),
        (TRAINING,),
        "R9/R10: PII-stripped training candidates, for the training team only.",
        key_fields=("source_id",),
    ),
    # R15/R5: compacted by candidate, kept as long as the candidates they take back.
    TopicSpec(
        "training_retractions",
        "training_retraction.avsc",
        PARTITIONS,
        COMPACT,
        FOREVER,
        (ROUTER,),
        (TRAINING,),
        "R15/R5/R9: training candidates taken back by a late deletion or misuse flag.",
        key_fields=("candidate_id",),
    ),
    TopicSpec(
        "usage_events",
        "usage_event.avsc",
        PARTITIONS,
        DELETE,
        7 * DAY_MS,
        (ROUTER,),
        (USAGE,),
        "R3: one usage event per request, no content.",
        key_fields=("org_id",),
    ),
    TopicSpec(
        "usage_metrics",
        "usage_metric.avsc",
        PARTITIONS,
        COMPACT,
        FOREVER,
        (USAGE,),
        (ANALYTICS,),
        "R3: hourly usage aggregates, upserts keyed org|endpoint|model|window.",
        key_fields=("org_id", "endpoint", "model", "window_start_ms"),
    ),
    TopicSpec(
        "audit",
        "audit_decision.avsc",
        PARTITIONS,
        DELETE,
        400 * DAY_MS,
        (ROUTER, RETENTION, USAGE, SAFETY_EVALUATION),
        (PRIVACY_AUDIT,),
        "R16: one record per decision with its rule ids, no content.",
        key_fields=("subject_id",),
    ),
    # R17 + R4: dead letters expire with the 30 days.
    TopicSpec(
        "dead_letters",
        "dead_letter.avsc",
        PARTITIONS,
        DELETE,
        30 * DAY_MS,
        (ROUTER, RETENTION, USAGE, SAFETY_EVALUATION),
        (PRIVACY_AUDIT,),
        "R17: undecodable/invalid records with reason and source coordinates.",
        key_fields=("source_topic", "source_partition", "source_offset"),
        deletable_content=True,
    ),
)

BY_FIELD = {spec.field: spec for spec in CATALOGUE}


def spec_for(field: str) -> TopicSpec:
    return BY_FIELD[field]


def key_for(field: str, record: Mapping[str, Any]) -> str:
    """The key a record of topic ``field`` is written with (compaction and partitioning use it).

    Data-control changes are keyed by org, effective time and change id, so that
    compaction keeps every version of an org's settings (R12 needs the history).
    """
    fields = spec_for(field).key_fields
    return "/".join(str(record[name]) for name in fields) if fields else field


def ensure_topics(
    admin: AdminClient,
    topics: Topology,
    timeout: float = 30.0,
    deletion_bound: int | None = None,
) -> list[str]:
    """Create missing topics and align configs of existing ones. Returns the names created.

    ``deletion_bound``: ms, ``deletion_bound_ms()`` (the environment) when None."""
    bound = deletion_bound_ms() if deletion_bound is None else deletion_bound
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = {spec.name(topics): spec for spec in CATALOGUE}
    new = [
        NewTopic(
            name, num_partitions=spec.partitions, replication_factor=1, config=spec.configs(bound)
        )
        for name, spec in wanted.items()
        if name not in existing
    ]
    created: list[str] = []
    if new:
        for name, future in admin.create_topics(new, operation_timeout=timeout).items():
            try:
                future.result()
                created.append(name)
            except Exception as exc:  # another worker won the race: fine if it exists now
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
    resources = [
        ConfigResource(
            ResourceType.TOPIC,
            name,
            incremental_configs=[
                ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
                for key, value in spec.configs(bound).items()
            ],
        )
        for name, spec in wanted.items()
        if name in existing
    ]
    if resources:
        for future in admin.incremental_alter_configs(resources).values():
            future.result()
    _wait_for_leaders(admin, created, timeout)
    log.info("topics ensured: %d created, %d aligned", len(created), len(resources))
    return created


def create_topic(
    admin: AdminClient,
    name: str,
    partitions: int,
    config: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> None:
    """Create a topic outside the catalogue (a job-internal one) unless it exists, and wait
    until it is usable. Another worker creating it at the same time is fine."""
    futures = admin.create_topics(
        [
            NewTopic(
                name, num_partitions=partitions, replication_factor=1, config=dict(config or {})
            )
        ],
        operation_timeout=timeout,
    )
    for future in futures.values():
        try:
            future.result()
        except Exception as exc:  # another worker created it first
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    _wait_for_leaders(admin, [name], timeout)


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout: float) -> None:
    """A topic is usable once every partition has a leader; creation returns before that."""
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending and time.monotonic() < deadline:
        metadata = admin.list_topics(timeout=timeout).topics
        pending = {
            name
            for name in pending
            if name not in metadata
            or metadata[name].error is not None
            or any(p.leader < 0 for p in metadata[name].partitions.values())
        }
        if pending:
            time.sleep(0.1)


def acl_bindings(topics: Topology, prefix_groups: str = "") -> list[AclBinding]:
    """R18: each role may write the topics it owns and read only the topics it needs."""
    grants: set[tuple[ResourceType, str, ResourcePatternType, str, AclOperation]] = set()
    for spec in CATALOGUE:
        name = spec.name(topics)
        for roles, operation in (
            (spec.writers, AclOperation.WRITE),
            (spec.readers, AclOperation.READ),
        ):
            for role in roles:
                for op in (operation, AclOperation.DESCRIBE):
                    grants.add((ResourceType.TOPIC, name, ResourcePatternType.LITERAL, role, op))
    for role in JOBS:
        # A job's internal topics (state changelogs, see ``internal_topic``): that job only.
        grants.add(
            (
                ResourceType.TOPIC,
                internal_topic(topics, role, ""),
                ResourcePatternType.PREFIXED,
                role,
                AclOperation.ALL,
            )
        )
    for role in ROLES:
        # Each role may use consumer groups and transactional ids named after itself.
        for resource in (ResourceType.GROUP, ResourceType.TRANSACTIONAL_ID):
            grants.add(
                (
                    resource,
                    f"{prefix_groups}{role}",
                    ResourcePatternType.PREFIXED,
                    role,
                    AclOperation.ALL,
                )
            )
    return [
        AclBinding(resource, name, pattern, f"User:{role}", "*", op, AclPermissionType.ALLOW)
        for resource, name, pattern, role, op in sorted(grants, key=repr)
    ]


def internal_topic(topics: Topology, role: str, name: str) -> str:
    """A job-internal topic, "<topic prefix><role>.<name>" (e.g. "usage.state"); only
    ``role`` has access to its prefix (``acl_bindings``). A "." never follows a role name
    in the catalogue, so no catalogue topic falls under that prefix."""
    return f"{topics.prefix}{role}.{name}"


def readers_of(field: str) -> tuple[str, ...]:
    return spec_for(field).readers
