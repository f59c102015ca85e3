"""Shared record factories, fakes and hypothesis strategies for the unit tests.

Factories (``request_log``, ``request_record``, ``finetune_row``, ``controls``,
``change``, ``flag``, ``legal_hold``) build one valid record with overridable
fields. Strategies (``request_logs``, ``data_controls``, ``routing_facts``, ...)
draw whole domains for property tests. ``decide`` wires the ledger and hold
index into ``decide_request`` exactly the way the router job gathers its facts,
so properties can be stated over the whole pure pipeline (R12, R13).

Content fields are drawn with the ``PII:`` sentinel so a test can assert that no
raw content reaches a record that must not carry it (R2, R11, R16).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from streams.policy.config import DEFAULT_CONTROLS, MIGRATION_CUTOFF_MS, PolicyConfig
from streams.policy.data_controls import DataControlsLedger
from streams.policy.holds import HoldIndex
from streams.policy.models import (
    HOUR_MS,
    ControlsWatermark,
    DataControlChange,
    DataControls,
    Decision,
    Deployment,
    FineTuneRow,
    FlagAction,
    FlagScope,
    HoldAction,
    KeyType,
    LegalHold,
    MisuseFlag,
    RequestLog,
    RequestSource,
    Route,
)
from streams.policy.routing import (
    RoutingFacts,
    WatermarkState,
    decide_finetune_row,
    decide_request,
    watermark_state,
)

CONFIG = PolicyConfig()
SENTINEL = "PII:"
T0 = MIGRATION_CUTOFF_MS + 100 * 86_400_000  # a creation time well after the cut-off

# Moderate example counts keep the whole unit suite well under a minute.
PROPS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

CONTENT_ROUTES = frozenset(
    {Route.LOG_STORE.value, Route.TRAINING_CANDIDATE.value, Route.DEAD_LETTER.value}
)

# R9: Google Drive / Workspace connector names as the gateway may spell them.
WORKSPACE_SPELLINGS = (
    "google_drive",
    "Google Drive",
    "google-drive",
    "GOOGLE_DRIVE",
    "GOOGLE_WORKSPACE",
    "Google Workspace",
    "google-workspace",
    " google drive ",
    "GoogleDrive",
    "Google Docs",
    "google_sheets",
    "Google-Slides",
    "gmail",
    "Gmail",
)
OTHER_CONNECTORS = ("slack", "notion", "web_search", "confluence", "dropbox", "onedrive")


# --- factories ----------------------------------------------------------------------


def request_record(**overrides: Any) -> dict[str, Any]:
    """A valid decoded request-log dict (Avro-shaped), SaaS, carrying sentinel content."""
    record: dict[str, Any] = {
        "request_id": "req-1",
        "org_id": "org-a",
        "api_key_id": "key-a-1",
        "key_type": KeyType.PRODUCTION.value,
        "created_at_ms": T0,
        "endpoint": "/v1/chat",
        "model": "command",
        "deployment": Deployment.SAAS.value,
        "source": RequestSource.API.value,
        "connectors": [],
        "prompt": SENTINEL + "prompt alice@example.com",
        "documents": [SENTINEL + "doc one", SENTINEL + "doc two"],
        "generation": SENTINEL + "generation +1 555 0100",
        "input_tokens": 12,
        "output_tokens": 34,
        "client_ip": "203.0.113.7",
        "user_id": "user-1",
        "metadata": {"ticket": SENTINEL + "meta value"},
    }
    record.update(overrides)
    return record


def request_log(**overrides: Any) -> RequestLog:
    return RequestLog(**request_record(**overrides))


def finetune_record(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "dataset_id": "ds-1",
        "row_index": 0,
        "org_id": "org-a",
        "uploaded_at_ms": T0,
        "deployment": Deployment.SAAS.value,
        "text": SENTINEL + "fine-tune row bob@example.com",
    }
    record.update(overrides)
    return record


def finetune_row(**overrides: Any) -> FineTuneRow:
    return FineTuneRow(**finetune_record(**overrides))


def controls(**overrides: Any) -> DataControls:
    """Recorded controls that allow everything (both toggles on, no ZDR, 30 days)."""
    base = DataControls(
        prompts_generations_training=True,
        finetune_training=True,
        zero_data_retention=False,
        retention_days=30,
        training_exclusion=False,
        paying_customer=True,
        consent_version="consent-v7",
        recorded=True,
    )
    return replace(base, **overrides)


def facts(**overrides: Any) -> RoutingFacts:
    base = RoutingFacts(watermark=WatermarkState.PASSED)
    return replace(base, **overrides)


def change(
    org_id: str = "org-a",
    effective_at_ms: int = T0,
    change_id: str | None = None,
    consent_version: str | None = None,
    **fields: Any,
) -> DataControlChange:
    cid = change_id or f"chg-{org_id}-{effective_at_ms}"
    return DataControlChange(
        change_id=cid,
        org_id=org_id,
        effective_at_ms=effective_at_ms,
        consent_version=consent_version or f"consent-{cid}",
        **fields,
    )


def flag(
    flag_id: str = "flag-1",
    *,
    action: str = FlagAction.RAISE.value,
    scope: str = FlagScope.REQUEST.value,
    org_id: str = "org-a",
    request_id: str | None = None,
    api_key_id: str | None = None,
    window_start_ms: int | None = None,
    window_end_ms: int | None = None,
    at_ms: int = T0,
) -> MisuseFlag:
    return MisuseFlag(
        flag_id=flag_id,
        action=action,
        scope=scope,
        org_id=org_id,
        request_id=request_id,
        api_key_id=api_key_id,
        window_start_ms=window_start_ms,
        window_end_ms=window_end_ms,
        reason="abuse",
        at_ms=at_ms,
    )


def legal_hold(
    hold_id: str = "hold-1",
    *,
    action: str = HoldAction.PLACE.value,
    org_id: str = "org-a",
    window_start_ms: int = T0 - HOUR_MS,
    window_end_ms: int = T0 + HOUR_MS,
    at_ms: int = T0,
) -> LegalHold:
    return LegalHold(
        hold_id=hold_id,
        action=action,
        org_id=org_id,
        window_start_ms=window_start_ms,
        window_end_ms=window_end_ms,
        matter="matter-1",
        at_ms=at_ms,
    )


# --- fakes --------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeRedacted:
    text: str
    counts: Mapping[str, int]


@dataclass
class FakeRedactor:
    """An R11 redactor double: replaces every text with a marker derived from it.

    ``mark(text)`` is what the real text becomes, so a test can check that each
    field went through the redactor and that no raw text survived. Counts depend
    on the text so sums across fields are checkable.
    """

    seen: list[str] = field(default_factory=list)
    seen_mappings: list[dict[str, Any]] = field(default_factory=list)

    @staticmethod
    def mark(text: str) -> str:
        return "R11<" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12] + ">"

    @staticmethod
    def counts_for(text: str) -> dict[str, int]:
        return {"EMAIL": 1, "PHONE": len(text) % 3}

    def redact(self, text: str) -> FakeRedacted:
        self.seen.append(text)
        return FakeRedacted(self.mark(text), self.counts_for(text))

    def redact_mapping(self, values: Mapping[str, Any]) -> tuple[dict, Mapping[str, int]]:
        self.seen_mappings.append(dict(values))
        out: dict[str, Any] = {}
        total: dict[str, int] = {}
        for key, value in values.items():
            out[key] = self.mark(str(value))
            for kind, n in self.counts_for(str(value)).items():
                total[kind] = total.get(kind, 0) + n
        return out, total


def strings_in(value: Any) -> Iterable[str]:
    """Every string inside a nested record (keys and values)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, bytes):
        yield value.decode("utf-8", "replace")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from strings_in(k)
            yield from strings_in(v)
    elif isinstance(value, list | tuple | set | frozenset):
        for v in value:
            yield from strings_in(v)


def contains_sentinel(record: Any) -> bool:
    return any(SENTINEL in s for s in strings_in(record))


# --- the pure pipeline, as the router job wires it ------------------------------------


def decide(
    ledger: DataControlsLedger,
    holds: HoldIndex,
    request: RequestLog,
    now_ms: int,
    config: PolicyConfig = CONFIG,
) -> Decision:
    """Facts for ``request`` gathered from ledger + holds, then ``decide_request``."""
    state = watermark_state(
        request.created_at_ms, ledger.watermark_ms, now_ms, config.watermark_stall_ms
    )
    flags = holds.covering(
        request.org_id, request.api_key_id, request.request_id, request.created_at_ms, "misuse"
    )
    routing = RoutingFacts(
        watermark=state,
        misuse_flag_ids=tuple(h.hold_id for h in flags),
        deletion_requested=ledger.deletion_requested_at(request.org_id) is not None,
    )
    return decide_request(
        request, ledger.controls_at(request.org_id, request.created_at_ms), routing, config
    )


def decide_row(
    ledger: DataControlsLedger,
    holds: HoldIndex,
    row: FineTuneRow,
    now_ms: int,
    config: PolicyConfig = CONFIG,
) -> Decision:
    state = watermark_state(
        row.uploaded_at_ms, ledger.watermark_ms, now_ms, config.watermark_stall_ms
    )
    flags = holds.covering(row.org_id, "", row.row_id, row.uploaded_at_ms, "misuse")
    routing = RoutingFacts(
        watermark=state,
        misuse_flag_ids=tuple(h.hold_id for h in flags),
        deletion_requested=ledger.deletion_requested_at(row.org_id) is not None,
    )
    return decide_finetune_row(
        row, ledger.controls_at(row.org_id, row.uploaded_at_ms), routing, config
    )


def new_ledger(watermark_ms: int | None = None) -> DataControlsLedger:
    ledger = DataControlsLedger(DEFAULT_CONTROLS)
    if watermark_ms is not None:
        ledger.advance_watermark(ControlsWatermark(watermark_ms, watermark_ms))
    return ledger


# --- hypothesis strategies ------------------------------------------------------------

# Times cluster around a few instants (including the migration cut-off) so that
# "exactly at T" boundaries are hit often.
ANCHORS = (MIGRATION_CUTOFF_MS, T0, T0 + HOUR_MS)
times = st.one_of(
    st.sampled_from(ANCHORS),
    st.builds(lambda a, d: a + d, st.sampled_from(ANCHORS), st.integers(-3 * HOUR_MS, 3 * HOUR_MS)),
    st.integers(1, 2 * T0),
)
small_times = st.integers(0, 40)  # a compact clock for ordering properties

content_text = st.text(max_size=20).map(lambda s: SENTINEL + s)
optional_content = st.one_of(st.none(), st.just(""), content_text)
connector_names = st.sampled_from(WORKSPACE_SPELLINGS + OTHER_CONNECTORS)
org_ids = st.sampled_from(("org-a", "org-b", "org-c"))


@st.composite
def request_logs(draw: st.DrawFn, org_id: st.SearchStrategy[str] | None = None) -> RequestLog:
    return RequestLog(
        request_id=draw(st.sampled_from(("req-1", "req-2", "req-3", "req-4"))),
        org_id=draw(org_id if org_id is not None else org_ids),
        api_key_id=draw(st.sampled_from(("key-1", "key-2"))),
        key_type=draw(st.sampled_from(list(KeyType))).value,
        created_at_ms=draw(times),
        endpoint=draw(st.sampled_from(("/v1/chat", "/v1/embed", "/v1/rerank"))),
        model=draw(st.sampled_from(("command", "embed"))),
        deployment=draw(st.sampled_from(list(Deployment))).value,
        source=draw(st.sampled_from(list(RequestSource))).value,
        connectors=draw(st.lists(connector_names, max_size=3)),
        prompt=draw(optional_content),
        documents=draw(st.lists(content_text, max_size=3)),
        generation=draw(optional_content),
        input_tokens=draw(st.integers(0, 10_000)),
        output_tokens=draw(st.integers(0, 10_000)),
        client_ip=draw(st.one_of(st.none(), st.just("198.51.100.9"))),
        user_id=draw(st.one_of(st.none(), st.just("user-9"))),
        metadata=draw(
            st.dictionaries(st.sampled_from(("k1", "k2", "k3")), content_text, max_size=3)
        ),
    )


@st.composite
def finetune_rows(draw: st.DrawFn) -> FineTuneRow:
    return FineTuneRow(
        dataset_id=draw(st.sampled_from(("ds-1", "ds-2"))),
        row_index=draw(st.integers(0, 5)),
        org_id=draw(org_ids),
        uploaded_at_ms=draw(times),
        deployment=draw(st.sampled_from(list(Deployment))).value,
        text=draw(content_text),
    )


data_controls = st.builds(
    DataControls,
    prompts_generations_training=st.booleans(),
    finetune_training=st.booleans(),
    zero_data_retention=st.booleans(),
    retention_days=st.sampled_from((1, 7, 30, 90, 365)),
    training_exclusion=st.booleans(),
    paying_customer=st.booleans(),
    consent_version=st.sampled_from(("default", "v1", "v2", "contract-9")),
    recorded=st.booleans(),
)

routing_facts = st.builds(
    RoutingFacts,
    watermark=st.sampled_from(list(WatermarkState)),
    misuse_flag_ids=st.lists(st.sampled_from(("f1", "f2")), max_size=2).map(tuple),
    deletion_requested=st.booleans(),
    facts_read=st.booleans(),
    waited_for_facts=st.booleans(),
)

optional_bool = st.one_of(st.none(), st.booleans())


@st.composite
def changes(
    draw: st.DrawFn,
    org_id: st.SearchStrategy[str] | None = None,
    effective: st.SearchStrategy[int] = small_times,
) -> DataControlChange:
    return DataControlChange(
        change_id=draw(st.sampled_from(("c1", "c2", "c3", "c4", "c5", "c6"))),
        org_id=draw(org_id if org_id is not None else org_ids),
        effective_at_ms=draw(effective),
        consent_version=draw(st.sampled_from(("v1", "v2", "v3"))),
        prompts_generations_training=draw(optional_bool),
        finetune_training=draw(optional_bool),
        zero_data_retention=draw(optional_bool),
        retention_days=draw(st.one_of(st.none(), st.sampled_from((7, 30, 90)))),
        training_exclusion=draw(optional_bool),
        paying_customer=draw(optional_bool),
    )


def unique_changes(
    org_id: st.SearchStrategy[str] | None = None,
    effective: st.SearchStrategy[int] = small_times,
    max_size: int = 8,
) -> st.SearchStrategy[list[DataControlChange]]:
    """Changes with distinct (effective time, change id): no two are replays of one key."""
    return st.lists(
        changes(org_id=org_id, effective=effective),
        max_size=max_size,
        unique_by=lambda c: (c.org_id, c.effective_at_ms, c.change_id),
    )


hold_ids = st.sampled_from(("h1", "h2", "h3"))


@st.composite
def misuse_flags(draw: st.DrawFn, org_id: st.SearchStrategy[str] | None = None) -> MisuseFlag:
    scope = draw(st.sampled_from(list(FlagScope))).value
    start = draw(st.one_of(st.none(), small_times))
    end = draw(st.one_of(st.none(), small_times))
    return MisuseFlag(
        flag_id=draw(hold_ids),
        action=draw(st.sampled_from(list(FlagAction))).value,
        scope=scope,
        org_id=draw(org_id if org_id is not None else org_ids),
        request_id=draw(st.sampled_from(("req-1", "req-2")))
        if scope == FlagScope.REQUEST
        else None,
        api_key_id=draw(st.sampled_from(("key-1", "key-2")))
        if scope == FlagScope.API_KEY
        else None,
        window_start_ms=start,
        window_end_ms=end,
        reason="abuse",
        at_ms=draw(small_times),
    )


@st.composite
def legal_holds(draw: st.DrawFn, org_id: st.SearchStrategy[str] | None = None) -> LegalHold:
    return LegalHold(
        hold_id=draw(hold_ids),
        action=draw(st.sampled_from(list(HoldAction))).value,
        org_id=draw(org_id if org_id is not None else org_ids),
        window_start_ms=draw(small_times),
        window_end_ms=draw(small_times),
        matter="matter",
        at_ms=draw(small_times),
    )


def apply_event(ledger: DataControlsLedger, holds: HoldIndex, event: Any) -> None:
    """Feed one control-plane / trust & safety / legal / deletion event."""
    if isinstance(event, DataControlChange):
        ledger.apply(event)
    elif isinstance(event, MisuseFlag):
        holds.apply_flag(event)
    elif isinstance(event, LegalHold):
        holds.apply_legal_hold(event)
    elif isinstance(event, tuple) and event[0] == "delete":
        ledger.record_deletion(event[1], event[2])
    else:  # pragma: no cover - a test wiring mistake
        raise AssertionError(f"unknown event {event!r}")


def org_events(org_id: str, max_size: int = 8) -> st.SearchStrategy[list[Any]]:
    """Every kind of per-org input event for one org, on the compact clock."""
    org = st.just(org_id)
    return st.lists(
        st.one_of(
            changes(org_id=org),
            misuse_flags(org_id=org),
            legal_holds(org_id=org),
            st.tuples(st.just("delete"), org, small_times),
        ),
        max_size=max_size,
    )
