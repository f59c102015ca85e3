"""R3 usage metrics: every request counted, per org, endpoint, model and hourly window.

Pure logic (no Kafka, no faust): validation of a usage event, the tumbling window it
falls in, the metric key, the running totals and the UsageMetric record. The usage job
(``streams.jobs.usage``) wires it to Kafka.

What a metric carries (R3): org, endpoint, model, window, requests, input and output
tokens, policy version. Never content, API key, user, IP or request id: the request
id of a usage event is used only to count a request once (``UsageAggregator``) and is
kept in state only as a digest.

Decisions where the policy is silent (see docs/usage_and_safety_topics.md):
- Window = ``created_at_ms`` of the request (event time), not the time the job saw it,
  so a replay or a late router gives the same totals.
- The same request id seen twice in a window counts once (a gateway retry is one request).
- A window stays open ``allowed_lateness_ms`` after its end (default 7 days, the
  retention of the usage-events topic: nothing older can still be replayed). Its state
  is then dropped; an event for a closed window cannot be added to an exact total any
  more and is dead-lettered and audited (R17/R16) instead of silently overwriting the
  published total with a partial one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from streams.policy.config import PolicyConfig
from streams.policy.models import DAY_MS, HOUR_MS, MAX_TIME_MS, MAX_TOKENS, InvalidRecord

# The fields of a UsageMetric: anything else would be a leak (checked by the unit tests).
METRIC_FIELDS = (
    "org_id",
    "endpoint",
    "model",
    "window_start_ms",
    "window_end_ms",
    "requests",
    "input_tokens",
    "output_tokens",
    "policy_version",
)


@dataclass(frozen=True, slots=True)
class UsageSettings:
    """R3 window parameters (job-level; the policy only says "per time window")."""

    window_ms: int = HOUR_MS
    allowed_lateness_ms: int = 7 * DAY_MS

    def __post_init__(self) -> None:
        if self.window_ms <= 0 or self.allowed_lateness_ms < 0:
            raise ValueError("window_ms must be positive and allowed_lateness_ms not negative")


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One request's usage as the router writes it (schemas/usage_event.avsc)."""

    request_id: str
    org_id: str
    endpoint: str
    model: str
    deployment: str
    created_at_ms: int
    input_tokens: int
    output_tokens: int
    policy_version: str


def validate_usage_event(record: Mapping[str, Any]) -> UsageEvent:
    """R17: a decoded usage event, checked beyond its Avro types. Reasons carry no content."""
    try:
        event = UsageEvent(**record)
    except TypeError:
        raise InvalidRecord("fields do not match contract") from None
    org = event.org_id or None
    if not event.request_id:
        raise InvalidRecord("empty request_id", org)
    if not event.org_id:
        raise InvalidRecord("empty org_id")
    if not event.endpoint:
        raise InvalidRecord("empty endpoint", org)
    if not event.model:
        raise InvalidRecord("empty model", org)
    if event.created_at_ms <= 0:
        raise InvalidRecord("created_at_ms not positive", org)
    if event.created_at_ms > MAX_TIME_MS:
        raise InvalidRecord("created_at_ms out of range", org)
    if event.input_tokens < 0 or event.output_tokens < 0:
        raise InvalidRecord("negative token count", org)
    if event.input_tokens > MAX_TOKENS or event.output_tokens > MAX_TOKENS:
        raise InvalidRecord("token count out of range", org)
    return event


def window_start(created_at_ms: int, window_ms: int = HOUR_MS) -> int:
    """Start of the tumbling window (aligned to the epoch) that ``created_at_ms`` falls in."""
    return created_at_ms - created_at_ms % window_ms


@dataclass(frozen=True, slots=True, order=True)
class MetricKey:
    """R3: what a metric is counted per. No API key, user, IP or request id."""

    org_id: str
    endpoint: str
    model: str
    window_start_ms: int

    @property
    def kafka_key(self) -> str:
        """The record key of the compacted usage-metrics topic.

        The components are joined by "/" as the catalogue's ``key_for`` does; a "/" or
        "%" inside a component is percent-escaped so two different keys never collide
        (an endpoint such as "v1/chat" would otherwise be ambiguous). Keys of ordinary
        names are exactly ``key_for("usage_metrics", record)``.
        """
        parts = (self.org_id, self.endpoint, self.model)
        return "/".join([*(_escape(p) for p in parts), str(self.window_start_ms)])


def series_key(key: MetricKey) -> str:
    """The key without its window: what a windowed table is keyed by."""
    return key.kafka_key.rsplit("/", 1)[0]


def _escape(part: str) -> str:
    return part.replace("%", "%25").replace("/", "%2F")


def metric_key(event: UsageEvent, window_ms: int = HOUR_MS) -> MetricKey:
    return MetricKey(
        event.org_id, event.endpoint, event.model, window_start(event.created_at_ms, window_ms)
    )


@dataclass(frozen=True, slots=True)
class Totals:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, event: UsageEvent) -> Totals:
        return Totals(
            self.requests + 1,
            self.input_tokens + event.input_tokens,
            self.output_tokens + event.output_tokens,
        )

    def as_list(self) -> list[int]:
        return [self.requests, self.input_tokens, self.output_tokens]

    @classmethod
    def from_list(cls, values: Iterable[int]) -> Totals:
        requests, input_tokens, output_tokens = (int(v) for v in values)
        return cls(requests, input_tokens, output_tokens)


def metric_record(
    key: MetricKey, totals: Totals, config: PolicyConfig, window_ms: int = HOUR_MS
) -> dict[str, Any]:
    """R3: the UsageMetric upsert (schemas/usage_metric.avsc): counts only."""
    return {
        "org_id": key.org_id,
        "endpoint": key.endpoint,
        "model": key.model,
        "window_start_ms": key.window_start_ms,
        "window_end_ms": key.window_start_ms + window_ms,
        "requests": totals.requests,
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "policy_version": config.policy_version,
    }


def request_digest(request_id: str) -> str:
    """What the de-duplication state keeps of a request id: a digest, never the id."""
    return hashlib.blake2b(request_id.encode(), digest_size=16).hexdigest()


def is_closed(window_start_ms: int, now_ms: int, settings: UsageSettings) -> bool:
    """A window is closed once ``allowed_lateness_ms`` have passed since its end."""
    return window_start_ms + settings.window_ms + settings.allowed_lateness_ms <= now_ms


class Outcome(StrEnum):
    COUNTED = "counted"
    DUPLICATE = "duplicate"  # same request id already counted in this window
    LATE = "late"  # its window is closed: see the module docstring


@dataclass(frozen=True, slots=True)
class Applied:
    outcome: Outcome
    key: MetricKey
    totals: Totals  # the key's totals after the event (unchanged unless COUNTED)
    digest: str


@dataclass(slots=True)
class UsageAggregator:
    """The running totals and the counted request digests of the open windows.

    Deterministic: the same events in the same order give the same totals, whatever
    the engine. ``restore_*`` rebuild it from a changelog after a restart.
    """

    settings: UsageSettings = field(default_factory=UsageSettings)
    totals: dict[MetricKey, Totals] = field(default_factory=dict)
    seen: dict[int, set[str]] = field(default_factory=dict)  # window start -> digests
    closed_before: int = 0  # every window starting before this is closed (monotonic)

    def apply(self, event: UsageEvent, now_ms: int) -> Applied:
        key = metric_key(event, self.settings.window_ms)
        digest = request_digest(event.request_id)
        current = self.totals.get(key, Totals())
        if key.window_start_ms < self.closed_before or is_closed(
            key.window_start_ms, now_ms, self.settings
        ):
            return Applied(Outcome.LATE, key, current, digest)
        seen = self.seen.setdefault(key.window_start_ms, set())
        if digest in seen:
            return Applied(Outcome.DUPLICATE, key, current, digest)
        seen.add(digest)
        updated = current.add(event)
        self.totals[key] = updated
        return Applied(Outcome.COUNTED, key, updated, digest)

    def expire(self, now_ms: int) -> Expired:
        """Drop the state of every window closed at ``now_ms``; say what was dropped."""
        # A window starting at s is closed iff s <= now - window - lateness (see is_closed).
        horizon = now_ms - self.settings.window_ms - self.settings.allowed_lateness_ms
        boundary = window_start(horizon, self.settings.window_ms) + self.settings.window_ms
        self.closed_before = max(self.closed_before, boundary)
        keys = sorted(k for k in self.totals if k.window_start_ms < self.closed_before)
        for key in keys:
            del self.totals[key]
        seen: list[tuple[int, str]] = []
        for start in sorted(s for s in self.seen if s < self.closed_before):
            seen.extend((start, digest) for digest in sorted(self.seen.pop(start)))
        return Expired(tuple(keys), tuple(seen))

    def restore_totals(self, key: MetricKey, totals: Totals | None) -> None:
        if totals is None:
            self.totals.pop(key, None)
        else:
            self.totals[key] = totals

    def restore_seen(self, start: int, digest: str, present: bool = True) -> None:
        if present:
            self.seen.setdefault(start, set()).add(digest)
        else:
            digests = self.seen.get(start)
            if digests is not None:
                digests.discard(digest)
                if not digests:
                    del self.seen[start]


@dataclass(frozen=True, slots=True)
class Expired:
    keys: tuple[MetricKey, ...]
    seen: tuple[tuple[int, str], ...]

    def __bool__(self) -> bool:
        return bool(self.keys or self.seen)


def reference_totals(
    events: Iterable[UsageEvent], window_ms: int = HOUR_MS
) -> dict[MetricKey, Totals]:
    """What the totals must be: each distinct request id counted once (tests use this)."""
    out: dict[MetricKey, Totals] = {}
    counted: set[tuple[int, str]] = set()
    for event in events:
        key = metric_key(event, window_ms)
        mark = (key.window_start_ms, event.request_id)
        if mark in counted:
            continue
        counted.add(mark)
        out[key] = out.get(key, Totals()).add(event)
    return out


def iter_metric_records(
    totals: Mapping[MetricKey, Totals], config: PolicyConfig, window_ms: int = HOUR_MS
) -> Iterator[tuple[str, dict[str, Any]]]:
    for key in sorted(totals):
        yield key.kafka_key, metric_record(key, totals[key], config, window_ms)
