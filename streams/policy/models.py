"""Domain records of the data policy, in the policy's own words.

Pure data: no Kafka, no serialization. Times are epoch milliseconds (UTC) so the
hot path never builds datetime objects. Field names match the Avro contracts in
``schemas/`` one to one, so a decoded Avro dict maps onto these classes with
``Cls(**record)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

DAY_MS = 86_400_000
HOUR_MS = 3_600_000


# R17: the most tokens one request may count. No request comes near it, and hourly totals
# of such counts stay far inside an Avro long (fuzzing found a usage event whose counts
# overflowed the usage metric's encoding, a crash loop: it is now a dead letter).
MAX_TOKENS = 2**31 - 1
# R17: the latest creation time accepted (9999-12-31T23:59:59.999Z); times past it leave no
# room for the window and expiry arithmetic an Avro long must hold (fuzzing again).
MAX_TIME_MS = 253_402_300_799_999


class InvalidRecord(ValueError):
    """R17: a decodable record that breaks the contract's rules. The reason carries no content."""

    def __init__(self, reason: str, org_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.org_id = org_id


class Deployment(StrEnum):
    SAAS = "SAAS"
    PRIVATE = "PRIVATE"
    THIRD_PARTY_CLOUD = "THIRD_PARTY_CLOUD"


class KeyType(StrEnum):
    PRODUCTION = "PRODUCTION"
    TRIAL = "TRIAL"


class RequestSource(StrEnum):
    API = "API"
    PLAYGROUND = "PLAYGROUND"
    CHAT_APP = "CHAT_APP"
    SLACK_APP = "SLACK_APP"


class Route(StrEnum):
    """Where a decision sends a record (the output topics of the router)."""

    LOG_STORE = "log_store"
    TRAINING_CANDIDATE = "training_candidate"
    USAGE = "usage"
    DEAD_LETTER = "dead_letter"
    DROPPED = "dropped"
    TRAINING_RETRACTION = "training_retraction"  # a candidate taken back by a late fact


class RequestLog(NamedTuple):
    """One API call as written by the gateway.

    A NamedTuple rather than a frozen dataclass: equally immutable, and built three times
    faster from a decoded record, which the router does for every request.
    """

    request_id: str
    org_id: str
    api_key_id: str
    key_type: str
    created_at_ms: int
    endpoint: str
    model: str
    deployment: str
    source: str
    connectors: list[str]
    prompt: str | None
    documents: list[str]
    generation: str | None
    input_tokens: int
    output_tokens: int
    client_ip: str | None
    user_id: str | None
    metadata: Mapping[str, str]

    @property
    def carries_content(self) -> bool:
        return bool(self.prompt or self.generation or self.documents or self.metadata)


@dataclass(frozen=True, slots=True)
class DataControlChange:
    """A change of an org's data controls, effective from ``effective_at_ms``.

    ``None`` means "unchanged by this change": the ledger carries the previous
    value forward, so a change that only flips ZDR keeps the training toggles.
    """

    change_id: str
    org_id: str
    effective_at_ms: int
    consent_version: str
    prompts_generations_training: bool | None = None
    finetune_training: bool | None = None
    zero_data_retention: bool | None = None
    retention_days: int | None = None
    training_exclusion: bool | None = None
    paying_customer: bool | None = None


@dataclass(frozen=True, slots=True)
class ControlsWatermark:
    """Every data-control change effective at or before ``watermark_ms`` is published."""

    watermark_ms: int
    published_at_ms: int


class FlagAction(StrEnum):
    RAISE = "RAISE"
    RELEASE = "RELEASE"


class FlagScope(StrEnum):
    REQUEST = "REQUEST"
    API_KEY = "API_KEY"
    ORG = "ORG"


@dataclass(frozen=True, slots=True)
class MisuseFlag:
    """Trust & safety flag on one request, an API key over a window, or an org over a window."""

    flag_id: str
    action: str
    scope: str
    org_id: str
    request_id: str | None
    api_key_id: str | None
    window_start_ms: int | None
    window_end_ms: int | None
    reason: str
    at_ms: int


class HoldAction(StrEnum):
    PLACE = "PLACE"
    RELEASE = "RELEASE"


@dataclass(frozen=True, slots=True)
class LegalHold:
    """Legal hold on every record of an org created within a window."""

    hold_id: str
    action: str
    org_id: str
    window_start_ms: int
    window_end_ms: int
    matter: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class AccountDeletionRequest:
    deletion_id: str
    org_id: str
    requested_at_ms: int


@dataclass(frozen=True, slots=True)
class FineTuneRow:
    """One row of an uploaded fine-tune dataset (R10)."""

    dataset_id: str
    row_index: int
    org_id: str
    uploaded_at_ms: int
    deployment: str
    text: str

    @property
    def row_id(self) -> str:
        return f"{self.dataset_id}:{self.row_index}"


@dataclass(frozen=True, slots=True)
class DataControls:
    """The settings of one org in effect at one instant."""

    prompts_generations_training: bool
    finetune_training: bool
    zero_data_retention: bool
    retention_days: int
    training_exclusion: bool
    paying_customer: bool
    consent_version: str
    recorded: bool = True  # False: no setting was ever recorded, the R14 defaults apply


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of the policy for one record: routes and the rules that chose them."""

    routes: frozenset[str]
    rule_ids: tuple[str, ...]
    reasons: tuple[str, ...] = ()
    consent_version: str = ""
    retention_days: int = 30
    redaction_counts: Mapping[str, int] = field(default_factory=dict)

    def has(self, route: str) -> bool:
        return route in self.routes


class Redacted(Protocol):
    """A text with its personal information replaced by typed placeholders (R11)."""

    @property
    def text(self) -> str: ...

    @property
    def counts(self) -> Mapping[str, int]: ...


class PersonalInformationRedactor(Protocol):
    """The R11 redactor (``streams.policy.redaction.Redactor``), as every job uses it."""

    def redact(self, text: str) -> Redacted: ...

    def redact_mapping(self, values: Mapping[str, Any]) -> tuple[dict, Mapping[str, int]]: ...
