"""The usage job (R3): hourly usage per org, endpoint and model, exact after a crash.

Input: the usage-events topic (one UsageEvent per request, written by the router for every
request whatever the org's settings: ZDR, opted out, private deployment included).
Output: the compacted usage-metrics topic, one upsert per change of a total, keyed by
org/endpoint/model/window start (``MetricKey.kafka_key``). Exceptional decisions (a
duplicate request id, an event for a closed window, bad input) are audited (R16) and bad
or late input is dead-lettered (R17). The counting itself is ``streams.policy.usage``.

Two engines share that logic:

``transactional`` (the default, the one deployed)
    confluent-kafka consume-transform-produce (``streams.kafka.transactional``): consumer
    ``read_committed``; metric upserts, the state changelog and the consumed offsets are
    written in one Kafka transaction. The state changelog is a job-internal compacted
    topic ``<prefix>usage.state``, co-partitioned with usage-events (record of input
    partition p -> state partition p): one record per counted request,
    ``s/<window start>/<request digest>`` -> ``{"k": [org, endpoint, model], "i": .., "o": ..}``,
    tombstoned when its window closes. A worker that is assigned partition p rebuilds p's
    totals and de-duplication set from state partition p, reading until every transaction
    on it is resolved, so state and committed offsets always match: after a SIGKILL no
    request is lost or counted twice.

``faust`` (faust-streaming windowed tables)
    Tumbling hourly windowed tables (totals, and the counted request digests), changelog
    backed. Kept because the issue asks for it and because it is the evidence: with
    ``processing_guarantee="exactly_once"`` it does not survive the SIGKILL test (see
    docs/usage_and_safety_topics.md and tests/integration/test_usage_job.py).

Run one worker:  python -m streams.jobs.usage --bootstrap HOST:PORT --registry URL
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Message

from streams.kafka.metrics import DISABLED, JobMetrics, port_from_env
from streams.kafka.serde import Codec, Contracts, DecodeError, registry_client
from streams.kafka.stateful import (
    StatefulLoop,
    StateReader,
    ensure_copartitioned_topic,
)
from streams.kafka.topics import USAGE, internal_topic
from streams.kafka.transactional import LoopConfig, Output, source_of
from streams.policy.audit import Source, audit_record, dead_letter_decision
from streams.policy.config import PolicyConfig, load_config
from streams.policy.models import InvalidRecord, Route
from streams.policy.usage import (
    Applied,
    MetricKey,
    Outcome,
    Totals,
    UsageAggregator,
    UsageEvent,
    UsageSettings,
    is_closed,
    metric_key,
    metric_record,
    request_digest,
    series_key,
    validate_usage_event,
)

log = logging.getLogger("streams.usage")

JOB = "usage"
TRANSACTIONAL = "transactional"
FAUST = "faust"
_OUTPUTS = ("usage_metrics", "audit", "dead_letters")


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def state_topic(config: PolicyConfig) -> str:
    """The job-internal changelog of the transactional engine: ``<prefix>usage.state``."""
    return internal_topic(config.topics, USAGE, "state")


def faust_app_id(config: PolicyConfig) -> str:
    """The faust engine's app id and consumer group (``streams.kafka.faust_app``)."""
    return internal_topic(config.topics, USAGE, "faust")


def group_id(config: PolicyConfig) -> str:
    """Consumer group and transactional-id prefix: ``<prefix>usage`` (R18 ACLs grant it)."""
    return config.topics.usage_events.removesuffix("usage-events") + JOB


# --- shared by both engines ------------------------------------------------------------
class UsageCore:
    """Decoding, validation, dead letters (R17) and audits (R16) of the usage job.

    Engine-neutral: returns ``Output``s, which the transactional engine writes in its
    transaction and the faust engine sends through faust.
    """

    def __init__(
        self,
        config: PolicyConfig,
        contracts: Contracts,
        settings: UsageSettings,
        metrics: JobMetrics,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.config = config
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.stats: Counter[str] = Counter()
        self.input_codec: Codec = contracts.codec("usage_events")
        self._out = {f: (getattr(config.topics, f), contracts.codec(f)) for f in _OUTPUTS}

    def decode(
        self, source: Source, key: bytes | None, value: bytes | None
    ) -> UsageEvent | list[Output]:
        """The usage event of a record, or the dead letter and audit it becomes (R17)."""
        self.metrics.record_in(source.topic)
        if value is not None and len(value) > self.config.max_record_bytes:
            return self.dead_letter(source, key, value, "oversize record", "Oversize", None)
        try:
            record = self.input_codec.decode(value)
        except DecodeError as exc:
            return self.dead_letter(source, key, value, exc.reason, "DecodeError", None)
        try:
            return validate_usage_event(record)
        except InvalidRecord as exc:
            subject = record.get("request_id")
            return self.dead_letter(
                source,
                key,
                value,
                exc.reason,
                "InvalidRecord",
                exc.org_id,
                subject_id=subject if isinstance(subject, str) and subject else None,
            )

    def upsert(self, applied: Applied) -> Output:
        """R3: the new total of a key, as an upsert of the compacted usage-metrics topic."""
        self.stats["counted"] += 1
        self.metrics.decision("R3")
        record = metric_record(applied.key, applied.totals, self.config, self.settings.window_ms)
        return self.emit("usage_metrics", applied.key.kafka_key, record)

    def not_counted(
        self,
        source: Source,
        key: bytes | None,
        value: bytes | None,
        event: UsageEvent,
        applied: Applied,
    ) -> list[Output]:
        """A duplicate (audited, R3) or an event for a closed window (dead letter, R3/R17)."""
        if applied.outcome is Outcome.DUPLICATE:
            self.stats["duplicate"] += 1
            self.metrics.decision("R3")
            return [
                self.audit(
                    source,
                    event.request_id,
                    "usage_event",
                    event.org_id,
                    [Route.DROPPED],
                    ["R3"],
                    ["R3: request id already counted in this window"],
                )
            ]
        self.stats["late"] += 1
        return self.dead_letter(
            source,
            key,
            value,
            "window closed: event later than the allowed lateness",
            "LateEvent",
            event.org_id,
            subject_id=event.request_id,
            rules=("R3", "R17"),
        )

    def emit(self, field: str, key: str, record: dict[str, Any]) -> Output:
        topic, codec = self._out[field]
        self.metrics.record_out(field)
        return Output(topic, key, codec.encode(record))

    def audit(
        self,
        source: Source,
        subject_id: str,
        kind: str,
        org_id: str | None,
        routes: list[str],
        rules: list[str],
        reasons: list[str],
    ) -> Output:
        record = audit_record(
            job=JOB,
            source=source,
            subject_id=subject_id,
            subject_kind=kind,
            org_id=org_id,
            routes=routes,
            rule_ids=rules,
            reasons=reasons,
            consent_version="",
            policy_version=self.config.policy_version,
            decided_at_ms=self.clock(),
        )
        return self.emit("audit", subject_id, record)

    def dead_letter(
        self,
        source: Source,
        key: bytes | None,
        value: bytes | None,
        reason: str,
        error_class: str,
        org_id: str | None,
        subject_id: str | None = None,
        rules: tuple[str, ...] = ("R17",),
    ) -> list[Output]:
        """R17: reason and coordinates. The original bytes are copied only for a decoded
        usage event of an identified org (a usage event carries no content by contract,
        R3); bytes that did not decode could be anything and are withheld (R2)."""
        keep = org_id is not None and error_class in ("InvalidRecord", "LateEvent")
        letter, audit = dead_letter_decision(
            job=JOB,
            source=source,
            reason=reason,
            error_class=error_class,
            org_id=org_id,
            original_key=key,
            original_value=value,
            keep_content=keep,
            decided_at_ms=self.clock(),
            policy_version=self.config.policy_version,
            rule_ids=rules,
            subject_id=subject_id,
            subject_kind="usage_event",
        )
        self.stats["dead_letter"] += 1
        self.metrics.dead_letter(error_class)
        for rule in rules:
            self.metrics.decision(rule)
        log.warning("dead letter %s: %s", source.id, reason)
        return [
            self.emit("dead_letters", source.id, letter),
            self.emit("audit", subject_id or source.id, audit),
        ]


# --- transactional engine: state changelog ---------------------------------------------
def seen_key(start_ms: int, digest: str) -> str:
    return f"s/{start_ms}/{digest}"


def parse_seen_key(key: str) -> tuple[int, str]:
    kind, start, digest = key.split("/", 2)
    if kind != "s":
        raise ValueError("not a seen key")
    return int(start), digest


def seen_value(event: UsageEvent) -> bytes:
    return json.dumps(
        {
            "k": [event.org_id, event.endpoint, event.model],
            "i": event.input_tokens,
            "o": event.output_tokens,
        },
        separators=(",", ":"),
    ).encode()


class StateRestorer:
    """Rebuilds one partition's aggregator from the state changelog, exactly
    (``streams.kafka.stateful.StateReader``: committed transactions only, none pending)."""

    def __init__(
        self, bootstrap_servers: str, topic: str, timeout_s: float = 120.0, group: str = USAGE
    ) -> None:
        self.reader = StateReader(bootstrap_servers, topic, timeout_s, group_prefix=group)

    def restore(self, partition: int, settings: UsageSettings) -> UsageAggregator:
        return aggregator_from_state(self.reader.read(partition), settings)

    def close(self) -> None:
        self.reader.close()


def aggregator_from_state(live: dict[bytes, bytes], settings: UsageSettings) -> UsageAggregator:
    """The totals are the sums over the counted requests of the open windows."""
    aggregator = UsageAggregator(settings)
    sums: dict[MetricKey, list[int]] = {}
    for raw_key, raw_value in live.items():
        start, digest = parse_seen_key(raw_key.decode())
        data = json.loads(raw_value)
        org, endpoint, model = data["k"]
        aggregator.restore_seen(start, digest)
        total = sums.setdefault(MetricKey(org, endpoint, model, start), [0, 0, 0])
        total[0] += 1
        total[1] += int(data["i"])
        total[2] += int(data["o"])
    for metric, values in sums.items():
        aggregator.restore_totals(metric, Totals.from_list(values))
    return aggregator


class UsageProcessor:
    """The transactional engine's processor: one aggregator per owned input partition."""

    def __init__(
        self,
        core: UsageCore,
        state: str,
        restorer: StateRestorer | None,
        expire_every_s: float = 30.0,
    ) -> None:
        self.core = core
        self.state = state
        self.restorer = restorer
        self.expire_every_s = expire_every_s
        self.metrics = core.metrics
        self.aggregators: dict[int, UsageAggregator] = {}
        self._next_expiry = 0.0

    def aggregator(self, partition: int) -> UsageAggregator:
        aggregator = self.aggregators.get(partition)
        if aggregator is None:
            started = time.monotonic()
            if self.restorer is None:
                aggregator = UsageAggregator(self.core.settings)
            else:
                aggregator = self.restorer.restore(partition, self.core.settings)
            self.aggregators[partition] = aggregator
            log.info(
                "partition %d restored: %d totals, %d windows in %.2fs",
                partition,
                len(aggregator.totals),
                len(aggregator.seen),
                time.monotonic() - started,
            )
        return aggregator

    def arrange(self, outputs: list[Output]) -> list[Output]:
        return outputs

    def forget(self, partitions: list[int] | None = None) -> None:
        """Drop state (revoked partitions, or everything after an aborted transaction)."""
        if partitions is None:
            self.aggregators.clear()
        for partition in partitions or ():
            self.aggregators.pop(partition, None)

    def refresh(self) -> list[Output]:
        """Close windows past their lateness: drop their state, tombstone their changelog."""
        if time.monotonic() < self._next_expiry:
            return []
        self._next_expiry = time.monotonic() + self.expire_every_s
        now = self.core.clock()
        outputs: list[Output] = []
        for partition, aggregator in self.aggregators.items():
            expired = aggregator.expire(now)
            outputs.extend(
                Output(self.state, seen_key(start, digest), None, partition)
                for start, digest in expired.seen
            )
        if outputs:
            self.core.metrics.record_out("usage_state", len(outputs))
        return outputs

    def process(self, message: Message) -> list[Output]:
        source = source_of(message)
        key, value = message.key(), message.value()
        event = self.core.decode(source, key, value)
        if isinstance(event, list):
            return event
        aggregator = self.aggregator(source.partition)
        applied = aggregator.apply(event, self.core.clock())
        if applied.outcome is not Outcome.COUNTED:
            return self.core.not_counted(source, key, value, event, applied)
        self.core.metrics.record_out("usage_state")
        return [
            self.core.upsert(applied),
            Output(
                self.state,
                seen_key(applied.key.window_start_ms, applied.digest),
                seen_value(event),
                source.partition,
            ),
        ]


def ensure_state_topic(bootstrap_servers: str, config: PolicyConfig) -> str:
    """The compacted state changelog, with as many partitions as usage-events."""
    return ensure_copartitioned_topic(
        bootstrap_servers, state_topic(config), config.topics.usage_events
    )


def build_usage_loop(
    bootstrap_servers: str,
    registry_url: str,
    config: PolicyConfig,
    worker_id: str = "0",
    settings: UsageSettings | None = None,
    metrics: JobMetrics | None = None,
    clock: Callable[[], int] = wall_clock_ms,
    exit_when_stuck_s: float | None = None,
) -> tuple[StatefulLoop, UsageProcessor]:
    contracts = Contracts(registry_client(registry_url), config.topics)
    contracts.register_all()  # fail fast, and the same schema ids in every process
    metrics = metrics or JobMetrics(JOB)
    core = UsageCore(config, contracts, settings or UsageSettings(), metrics, clock)
    state = ensure_state_topic(bootstrap_servers, config)
    group = group_id(config)
    processor = UsageProcessor(core, state, StateRestorer(bootstrap_servers, state, group=group))
    loop = StatefulLoop(
        LoopConfig(
            bootstrap_servers=bootstrap_servers,
            group_id=group,
            transactional_id=f"{group}-{worker_id}",  # a restarted worker fences its predecessor
            exit_when_stuck_s=exit_when_stuck_s,
            input_topics=[config.topics.usage_events],
        ),
        processor,
    )
    return loop, processor


# --- faust engine ------------------------------------------------------------------------
def build_faust_app(
    bootstrap_servers: str,
    registry_url: str,
    config: PolicyConfig,
    guarantee: str = "exactly_once",
    settings: UsageSettings | None = None,
    metrics: JobMetrics | None = None,
    state_dir: Path | None = None,
    clock: Callable[[], int] = wall_clock_ms,
    sink_partition: str = "key",
) -> Any:
    """The usage job on faust-streaming windowed tables (see the module docstring), built
    with the project's faust wiring (``streams.kafka.faust_app``)."""
    from streams.kafka.faust_app import FaustSettings, build_app, partition_counts, raw_topic
    from streams.kafka.faust_app import partition_for as crc32_partition

    settings = settings or UsageSettings()
    contracts = Contracts(registry_client(registry_url), config.topics)
    contracts.register_all()
    core = UsageCore(config, contracts, settings, metrics or JobMetrics(JOB), clock)
    sink_names = [getattr(config.topics, f) for f in _OUTPUTS]
    counts = partition_counts(bootstrap_servers, [config.topics.usage_events, *sink_names])
    partitions = counts[config.topics.usage_events]
    app = build_app(
        FaustSettings(
            job=JOB,  # app id and consumer group: faust_app_id(config)
            bootstrap_servers=bootstrap_servers,
            topics=config.topics,
            state_dir=state_dir or Path(tempfile.mkdtemp(prefix="usage-faust-")),
            processing_guarantee=guarantee,
            partitions=partitions,
        )
    )

    def raw(name: str) -> Any:
        return raw_topic(app, name)

    source = raw(config.topics.usage_events)
    sinks = {getattr(config.topics, f): raw(getattr(config.topics, f)) for f in _OUTPUTS}
    event_time = {"s": 0.0}
    size = settings.window_ms / 1000
    expires = timedelta(milliseconds=settings.window_ms + settings.allowed_lateness_ms)

    def relative(event: Any = None) -> float:
        return event_time["s"]  # event time: the request's creation (set before each use)

    # R3: totals per org/endpoint/model in hourly tumbling windows, and the digests of the
    # request ids counted in each window (a request is counted once).
    totals: Any = app.Table(
        "usage-totals",
        default=list,
        partitions=partitions,
    ).tumbling(size, expires=expires)
    seen: Any = app.Table(
        "usage-seen",
        default=int,
        partitions=partitions,
    ).tumbling(size, expires=expires)

    def partition_for(key: bytes | None, topic: str) -> int | None:
        return None if key is None else crc32_partition(key, counts[topic])

    totals, seen = totals.relative_to(relative), seen.relative_to(relative)

    async def send(outputs: list[Output], partition: int) -> None:
        for out in outputs:
            key = out.key.encode() if isinstance(out.key, str) else out.key
            # librdkafka's partitioner (CRC-32), as every other producer of the project
            target = partition if sink_partition == "source" else partition_for(key, out.topic)
            await sinks[out.topic].send(key=key, value=out.value, partition=target)

    @app.agent(source)
    async def count(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            src = Source(message.topic, message.partition, message.offset)
            decoded = core.decode(src, message.key, message.value)
            if isinstance(decoded, list):
                await send(decoded, message.partition)
                continue
            usage = decoded
            event_time["s"] = usage.created_at_ms / 1000
            key = metric_key(usage, settings.window_ms)
            digest = request_digest(usage.request_id)
            stored = totals[series_key(key)].value()
            current = Totals.from_list(stored) if stored else Totals()
            if is_closed(key.window_start_ms, core.clock(), settings):
                outcome = Outcome.LATE
            elif seen[digest].value():
                outcome = Outcome.DUPLICATE
            else:
                outcome = Outcome.COUNTED
            if outcome is not Outcome.COUNTED:
                applied = Applied(outcome, key, current, digest)
                outputs = core.not_counted(src, message.key, message.value, usage, applied)
                await send(outputs, message.partition)
                continue
            updated = current.add(usage)
            seen[digest] = 1
            totals[series_key(key)] = updated.as_list()
            await send([core.upsert(Applied(outcome, key, updated, digest))], message.partition)

    return app


# --- command line ------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one usage worker (R3).")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--registry", default=os.environ.get("SCHEMA_REGISTRY_URL"))
    parser.add_argument("--worker-id", default=os.environ.get("STREAMS_WORKER_ID", "0"))
    parser.add_argument(
        "--engine",
        choices=[TRANSACTIONAL, FAUST],
        default=os.environ.get("STREAMS_USAGE_ENGINE", TRANSACTIONAL),
    )
    parser.add_argument(
        "--processing-guarantee",
        choices=["at_least_once", "exactly_once"],
        default=os.environ.get("STREAMS_PROCESSING_GUARANTEE", "exactly_once"),
        help="faust engine only",
    )
    parser.add_argument("--metrics-port", type=int, default=port_from_env())
    args = parser.parse_args(argv)
    if not args.bootstrap or not args.registry:
        parser.error("--bootstrap and --registry (or their environment variables) are required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = load_config()
    metrics = JobMetrics(JOB)
    if args.metrics_port != DISABLED:
        metrics.serve(args.metrics_port)
    if args.engine == FAUST:
        state_dir = Path(os.environ.get("STREAMS_STATE_DIR") or tempfile.mkdtemp())
        app = build_faust_app(
            args.bootstrap,
            args.registry,
            config,
            args.processing_guarantee,
            metrics=metrics,
            state_dir=state_dir,
            sink_partition=os.environ.get("STREAMS_FAUST_SINK_PARTITION", "key"),
        )
        from faust.worker import Worker

        Worker(app, loglevel="INFO", quiet=True).execute_from_commandline()
        return
    loop, processor = build_usage_loop(
        args.bootstrap,
        args.registry,
        config,
        args.worker_id,
        metrics=metrics,
        # a transaction stuck past this bound exits the worker; its restart resumes exactly
        exit_when_stuck_s=float(os.environ.get("STREAMS_EXIT_WHEN_STUCK_S", "60")),
    )
    loop.install_signal_handlers()
    log.info("usage worker %s started", args.worker_id)
    try:
        loop.run()
    finally:
        metrics.stop()
    log.info("usage worker %s stopped: %s", args.worker_id, dict(processor.core.stats))


if __name__ == "__main__":
    main()
