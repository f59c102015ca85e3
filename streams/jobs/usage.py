"""The usage job (R3): hourly usage per org, endpoint and model, exact after a crash.

Input: the usage-events topic (one UsageEvent per request, written by the router for every
request whatever the org's settings: ZDR, opted out, private deployment included).
Output: the compacted usage-metrics topic, one upsert per change of a total, keyed by
org/endpoint/model/window start (``MetricKey.kafka_key``). Exceptional decisions (a
duplicate request id, an event for a closed window) are audited (R16) and bad or late
input is dead-lettered (R17). The counting itself is ``streams.policy.usage``.

Runs on ``streams.kafka.runtime`` (exactly once): the metric upserts, the state changelog
and the consumed offsets are written in one Kafka transaction. The state is the store
``state`` (changelog ``<prefix>usage.state``, co-partitioned with usage-events): one entry
per counted request, ``s/<window start>/<request digest>`` ->
``{"k": [org, endpoint, model], "i": .., "o": ..}``, deleted when its window closes. The
totals and the de-duplication set are a view derived from the store's entries, so after a
SIGKILL or a rebalance they are rebuilt from exactly the committed requests: none lost,
none counted twice. (faust-streaming's windowed tables were tried and lose or double
counts across a SIGKILL: docs/usage_and_safety_topics.md.)

Run one worker:  streams run usage
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

from streams.kafka.runtime import (
    Context,
    JobSpec,
    KeyValueStore,
    Punctuator,
    StoreSpec,
    subject_field,
)
from streams.kafka.topics import USAGE
from streams.policy.config import PolicyConfig
from streams.policy.models import InvalidRecord, Route
from streams.policy.usage import (
    MetricKey,
    Outcome,
    Totals,
    UsageAggregator,
    UsageEvent,
    UsageSettings,
    metric_record,
    validate_usage_event,
)
from streams.settings import Settings

log = logging.getLogger("streams.usage")

JOB = USAGE
STATE = "state"  # the store; its changelog is ``<prefix>usage.state``
EXPIRE_EVERY_MS = 30_000


# --- the state store's entries ---------------------------------------------------------
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


def aggregator_from_state(live: Mapping[bytes, bytes], settings: UsageSettings) -> UsageAggregator:
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


class UsageJob:
    """R3: every request counted once into its hourly window."""

    def __init__(
        self,
        config: PolicyConfig,
        settings: UsageSettings | None = None,
        expire_every_ms: int = EXPIRE_EVERY_MS,
    ) -> None:
        self.config = config
        self.settings = settings or UsageSettings()
        self.stats: Counter[str] = Counter()
        self.spec = JobSpec(
            name=JOB,
            inputs=("usage_events",),
            outputs=("usage_metrics", "audit", "dead_letters"),
            stores=(StoreSpec(STATE),),
            punctuators=(Punctuator(expire_every_ms, self.expire),),
            invalid=(InvalidRecord,),
            subject_kind="usage_event",
            subject_of=subject_field("request_id", "usage_event"),
            # A usage event carries no content by contract (R3): the bytes of an invalid
            # one of an identified org are kept, so it can be recounted.
            keep_invalid_content=lambda org_id, _record: org_id is not None,
        )

    def aggregator(self, store: KeyValueStore) -> UsageAggregator:
        """Totals and counted digests of one partition, derived from its store."""
        return store.view(
            "aggregator", lambda s: aggregator_from_state(dict(s.items()), self.settings)
        )

    def process(self, ctx: Context, record: dict[str, Any]) -> None:
        event = validate_usage_event(record)
        store = ctx.store(STATE)
        applied = self.aggregator(store).apply(event, ctx.now())
        if applied.outcome is Outcome.COUNTED:
            self.stats["counted"] += 1
            ctx.decided(("R3",))
            start = applied.key.window_start_ms
            store.put(seen_key(start, applied.digest).encode(), seen_value(event))
            metric = metric_record(
                applied.key, applied.totals, self.config, self.settings.window_ms
            )
            ctx.emit("usage_metrics", applied.key.kafka_key, metric)
        elif applied.outcome is Outcome.DUPLICATE:
            self.stats["duplicate"] += 1
            ctx.audit(
                event.request_id,
                event.org_id,
                [Route.DROPPED],
                ["R3"],
                ["R3: request id already counted in this window"],
            )
        else:
            self.stats["late"] += 1
            ctx.dead_letter(
                "window closed: event later than the allowed lateness",
                "LateEvent",
                org_id=event.org_id,
                subject_id=event.request_id,
                rules=("R3", "R17"),
                keep_content=True,  # no content by contract (R3): kept to recount
            )

    def expire(self, ctx: Context) -> None:
        """Close windows past their lateness: their entries leave the store (tombstones)."""
        store = ctx.store(STATE)
        for start, digest in self.aggregator(store).expire(ctx.now()).seen:
            store.delete(seen_key(start, digest).encode())


def build_job(settings: Settings) -> UsageJob:
    return UsageJob(settings.policy)
