"""The topic catalogue: names, partitions, cleanup, retention, contracts and who may read.

One place for all of it. ``ensure_topics`` creates missing topics and brings the
configuration of existing ones in line, so it is safe to run on every start.
``acl_bindings`` turns the catalogue into broker ACLs (R18 least privilege).

Durability is per deployment (``Durability``: replication factor, ``min.insync.replicas``,
partition count) and reaches every topic the project creates, job-internal ones included
(``create_topic``). What ``streams topics`` changes on existing topics is decided by a pure
function (``plan_topic``); the admin calls around it stay thin (``apply_topics``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from streams.kafka.clients import client_config

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


# --- durability and partitions per deployment (issue 15) -------------------------------
DEFAULT_PARTITIONS = 6
# The settings, read with the other STREAMS_* variables (``streams.settings``) and, where
# no Settings reach (a job-internal topic made deep in a job), from the environment.
REPLICATION_ENV = "STREAMS_REPLICATION_FACTOR"
MIN_ISR_ENV = "STREAMS_MIN_INSYNC_REPLICAS"
PARTITIONS_ENV = "STREAMS_PARTITIONS"
AUTO = "auto"
MIN_ISR = "min.insync.replicas"


class DurabilityError(ValueError):
    """A deployment asks for more copies than the cluster can hold; one line naming the
    setting and the broker count."""


class Replication(NamedTuple):
    """Copies of every partition, and how many must have a write before it is acknowledged
    (``acks=all`` on every producer of the project)."""

    factor: int
    min_insync: int


@dataclass(frozen=True, slots=True)
class Durability:
    """Replication factor, ``min.insync.replicas`` and partition count of one deployment.

    ``None`` is "auto": replication 3 with ``min.insync.replicas`` 2 on a cluster of at least
    three brokers, so one broker may fail (or restart) without stopping a write or losing an
    acknowledged one; on smaller clusters as many copies as there are brokers and
    ``min.insync.replicas`` 1 (a single local broker: 1 and 1). An explicit request above
    the cluster's broker count is refused, never silently lowered (``resolve``).
    """

    replication_factor: int | None = None
    min_insync_replicas: int | None = None
    partitions: int = DEFAULT_PARTITIONS

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> Durability:
        """From ``STREAMS_REPLICATION_FACTOR``, ``STREAMS_MIN_INSYNC_REPLICAS`` (each a count
        or ``auto``, the default) and ``STREAMS_PARTITIONS`` (default 6); ValueError names
        the malformed one."""
        env = os.environ if environ is None else environ

        def count(name: str, default: int | None) -> int | None:
            value = env.get(name, "").strip().lower()
            if not value or value == AUTO:
                return default
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{name} must be a positive count or {AUTO}, got {value!r}")
            return int(value)

        partitions = count(PARTITIONS_ENV, DEFAULT_PARTITIONS)
        assert partitions is not None
        return cls(count(REPLICATION_ENV, None), count(MIN_ISR_ENV, None), partitions)

    def resolve(self, brokers: int) -> Replication:
        """The replication on a cluster of ``brokers`` live brokers; DurabilityError when an
        explicit setting cannot be met (Kafka would refuse the topic, or a
        ``min.insync.replicas`` above the replication would refuse every write)."""
        factor = self.replication_factor
        if factor is None:
            factor = min(3, max(brokers, 1))
        elif factor > brokers:
            raise DurabilityError(
                f"{REPLICATION_ENV}={factor} but the cluster has {brokers} broker"
                f"{'' if brokers == 1 else 's'}"
            )
        min_insync = self.min_insync_replicas
        if min_insync is None:
            min_insync = 2 if factor >= 3 else 1
        elif min_insync > factor:
            raise DurabilityError(
                f"{MIN_ISR_ENV}={min_insync} is more than the replication factor {factor}"
                f" ({brokers} broker{'' if brokers == 1 else 's'})"
            )
        return Replication(factor, min_insync)

    def describe(self, brokers: int) -> str:
        """One line for the operator: what the deployment gets on this cluster."""
        replication = self.resolve(brokers)
        how = "auto" if self.replication_factor is None else "set"
        return (
            f"replication {replication.factor} ({how}), min.insync.replicas"
            f" {replication.min_insync}, {self.partitions} partitions per scaled topic,"
            f" on {brokers} broker{'' if brokers == 1 else 's'}"
        )


def cluster_brokers(admin: AdminClient, timeout: float = 30.0) -> int:
    """The brokers of the cluster: those its metadata lists, and those that hold a replica of
    some partition. Metadata lists live brokers only, so a broker down for a restart would
    otherwise make "auto" create a topic with fewer copies in the meantime."""
    metadata = admin.list_topics(timeout=timeout)
    ids = set(metadata.brokers)
    for topic in metadata.topics.values():
        for partition in topic.partitions.values():
            ids.update(partition.replicas)
    return len(ids)


def replication_of(admin: AdminClient, durability: Durability | None = None) -> Replication:
    """The deployment's replication resolved against the cluster ``admin`` talks to."""
    wanted = Durability.read() if durability is None else durability
    return wanted.resolve(cluster_brokers(admin))


@dataclass(frozen=True, slots=True)
class TopicSpec:
    field: str  # attribute of ``Topology``
    schema: str  # file in schemas/
    partitions: int | None  # None: the deployment's count (``Durability.partitions``)
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

    def partition_count(self, durability: Durability) -> int:
        return durability.partitions if self.partitions is None else self.partitions

    @property
    def compacted(self) -> bool:
        return COMPACT in self.cleanup

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


# The topics that scale with the deployment (``STREAMS_PARTITIONS``): the facts topics stay
# single-partition, since every router and retention worker reads them in full.
SCALED = None

CATALOGUE: tuple[TopicSpec, ...] = (
    TopicSpec(
        "request_logs",
        "request_log.avsc",
        SCALED,
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
        SCALED,
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
        SCALED,
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
        SCALED,
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
        SCALED,
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
        SCALED,
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
        SCALED,
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
        SCALED,
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
        SCALED,
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
        SCALED,
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
        SCALED,
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
        SCALED,
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


# What growing a topic means, printed by ``streams topics`` before it grows one.
GROWING = (
    "Growing partitions: records already written stay where they are; a key's new records"
    " go to partition CRC-32(key) mod the new count, so one key's records span two"
    " partitions and keep no order across the change.",
    "State co-partitioned with a grown input (<job>.<store> changelogs) grows with it when"
    " the job starts; keys whose new records move keep their old state in the old"
    " partition's store: the usage job counts an hour open during the change in two"
    " halves, the later overwriting the earlier on usage-metrics. Grow between hours, with"
    " the router stopped and the usage job caught up; the router's candidate memory needs"
    " nothing (facts are read in full by every worker).",
    "Workers beyond the old count get partitions only after the growth; add them after.",
)


class TopicNow(NamedTuple):
    """What the broker has of one topic."""

    partitions: int
    replication_factor: int  # the fewest replicas of any of its partitions
    configs: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class TopicPlan:
    """What ``streams topics`` does to one existing topic, and what it says about it."""

    name: str
    grow_to: int | None = None
    set_configs: Mapping[str, str] = field(default_factory=dict)
    lines: tuple[str, ...] = ()


def plan_topic(
    name: str,
    now: TopicNow,
    partitions: int | None,
    replication: Replication,
    configs: Mapping[str, str],
    *,
    compacted: bool = False,
) -> TopicPlan:
    """The changes that bring an existing topic to what the deployment asks, and a line for
    each change or for what cannot be changed. ``partitions`` None: keep the count.

    Never shrinks (Kafka cannot), never grows a compacted topic (compaction keeps one value
    per key *within a partition*: a key's new value or tombstone in another partition would
    leave the old value live, so a deleted log-store record would stay readable, R4/R15),
    and never changes the replication factor (that takes a partition reassignment)."""
    lines: list[str] = []
    grow_to = None
    if partitions is not None and partitions < now.partitions:
        lines.append(
            f"{name}: {now.partitions} partitions, the deployment asks {partitions}: Kafka"
            " cannot shrink a topic; left as is (extra partitions only leave workers idle)"
        )
    elif partitions is not None and partitions > now.partitions:
        if compacted:
            lines.append(
                f"{name}: {now.partitions} partitions, the deployment asks {partitions}: not"
                " grown, it is compacted (a key's new value in another partition would"
                " leave the old one readable); move it to a new topic instead"
            )
        else:
            grow_to = partitions
            lines.append(f"{name}: partitions {now.partitions} -> {partitions}")
    wanted = dict(configs)
    if now.replication_factor < replication.factor:
        # A min.insync.replicas above the copies a partition has refuses every acks=all write.
        wanted.pop(MIN_ISR, None)
        lines.append(
            f"{name}: replication {now.replication_factor}, the deployment asks"
            f" {replication.factor}: Kafka raises it only by a reassignment"
            " (kafka-reassign-partitions.sh --bootstrap-server <broker>"
            " --reassignment-json-file <plan.json> --execute, one replica list per"
            f" partition); {MIN_ISR} is set to {replication.min_insync} by the next run after it"
        )
    else:
        wanted[MIN_ISR] = str(replication.min_insync)
        if now.replication_factor > replication.factor:
            lines.append(
                f"{name}: replication {now.replication_factor}, above the deployment's"
                f" {replication.factor}: left as is"
            )
    changed = {k: v for k, v in wanted.items() if now.configs.get(k) != v}
    lines.extend(f"{name}: {k} {now.configs.get(k, '-')} -> {v}" for k, v in changed.items())
    return TopicPlan(name, grow_to, changed, tuple(lines))


@dataclass(frozen=True, slots=True)
class TopicsOutcome:
    """What ``apply_topics`` did: the topics created, and printable lines."""

    created: list[str]
    lines: list[str]


def ensure_topics(
    admin: AdminClient,
    topics: Topology,
    timeout: float = 30.0,
    deletion_bound: int | None = None,
    durability: Durability | None = None,
) -> list[str]:
    """Create missing topics and align existing ones (``apply_topics``); the names created."""
    outcome = apply_topics(admin, topics, timeout, deletion_bound, durability)
    for line in outcome.lines:
        log.info("%s", line)
    return outcome.created


def apply_topics(
    admin: AdminClient,
    topics: Topology,
    timeout: float = 30.0,
    deletion_bound: int | None = None,
    durability: Durability | None = None,
) -> TopicsOutcome:
    """Create the catalogue's missing topics; align existing ones (configs with
    ``min.insync.replicas``, partitions grown, never shrunk) and the jobs' internal topics
    (``min.insync.replicas``); say what cannot be changed (``plan_topic``).

    ``deletion_bound`` (ms) and ``durability``: from the environment when None.
    DurabilityError when the deployment asks for more replicas than the cluster has."""
    bound = deletion_bound_ms() if deletion_bound is None else deletion_bound
    wanted_durability = Durability.read() if durability is None else durability
    brokers = cluster_brokers(admin, timeout)
    replication = wanted_durability.resolve(brokers)
    lines = [wanted_durability.describe(brokers)]
    metadata = admin.list_topics(timeout=timeout).topics
    wanted = {spec.name(topics): spec for spec in CATALOGUE}
    new = [
        NewTopic(
            name,
            num_partitions=spec.partition_count(wanted_durability),
            replication_factor=replication.factor,
            config={**spec.configs(bound), MIN_ISR: str(replication.min_insync)},
        )
        for name, spec in wanted.items()
        if name not in metadata
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
    internal = [
        name
        for name in metadata
        if any(name.startswith(internal_topic(topics, role, "")) for role in JOBS)
    ]
    existing = [name for name in wanted if name in metadata] + sorted(internal)
    described = _describe(admin, existing, metadata)
    plans = []
    for name in existing:
        spec = wanted.get(name)
        if spec is None:  # internal: its partitions follow its input (state.py)
            plans.append(plan_topic(name, described[name], None, replication, {}))
            continue
        plans.append(
            plan_topic(
                name,
                described[name],
                spec.partition_count(wanted_durability),
                replication,
                spec.configs(bound),
                compacted=spec.compacted,
            )
        )
    grow = [NewPartitions(p.name, p.grow_to) for p in plans if p.grow_to is not None]
    if grow:
        lines.extend(GROWING)
        for future in admin.create_partitions(grow, operation_timeout=timeout).values():
            future.result()
    resources = [
        ConfigResource(
            ResourceType.TOPIC,
            plan.name,
            incremental_configs=[
                ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
                for key, value in plan.set_configs.items()
            ],
        )
        for plan in plans
        if plan.set_configs
    ]
    if resources:
        for future in admin.incremental_alter_configs(resources).values():
            future.result()
    for plan in plans:
        lines.extend(plan.lines)
    _wait_for_leaders(admin, created + [g.topic for g in grow], timeout)
    lines.append(
        f"topics: {len(created)} created, {len(resources)} configs aligned, {len(grow)} grown"
    )
    return TopicsOutcome(created, lines)


def _describe(
    admin: AdminClient, names: list[str], metadata: Mapping[str, Any]
) -> dict[str, TopicNow]:
    if not names:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
    configs = {r.name: f.result() for r, f in admin.describe_configs(resources).items()}
    return {
        name: TopicNow(
            len(metadata[name].partitions),
            min((len(p.replicas) for p in metadata[name].partitions.values()), default=0),
            {key: entry.value for key, entry in configs[name].items()},
        )
        for name in names
    }


def create_topic(
    admin: AdminClient,
    name: str,
    partitions: int,
    config: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    durability: Durability | None = None,
) -> None:
    """Create a topic outside the catalogue (a job-internal one: state changelogs, command
    topics) unless it exists, with the deployment's replication (the environment's when
    ``durability`` is None), and wait until it is usable. Another worker creating it at the
    same time is fine."""
    replication = replication_of(admin, durability)
    futures = admin.create_topics(
        [
            NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=replication.factor,
                config={MIN_ISR: str(replication.min_insync), **(config or {})},
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


def grow_copartitioned(admin: AdminClient, name: str, partitions: int, timeout: float) -> None:
    """Grow a job-internal topic to its grown input's count (another worker may have)."""
    log.warning("growing %s to %d partitions like its input", name, partitions)
    for future in admin.create_partitions(
        [NewPartitions(name, partitions)], operation_timeout=timeout
    ).values():
        try:
            future.result()
        except Exception as exc:  # another worker grew it first
            if "INVALID_PARTITIONS" not in str(exc):
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


def partition_counts(
    bootstrap_servers: str, names: list[str], timeout: float = 30.0
) -> dict[str, int]:
    """The partition count of each topic; a missing one raises, naming `streams topics`."""
    admin = AdminClient(client_config(bootstrap_servers))
    metadata = admin.list_topics(timeout=timeout)
    counts: dict[str, int] = {}
    for name in names:
        info = metadata.topics.get(name)
        if info is None or info.error is not None:
            raise RuntimeError(f"topic {name} does not exist: run `streams topics`")
        counts[name] = len(info.partitions)
    return counts
