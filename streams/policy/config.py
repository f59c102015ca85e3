"""One typed configuration of the policy's knobs: versions, defaults and thresholds.

R14: the published defaults (both training toggles on, no ZDR, 30 days) live
here and nowhere else. Every output carries ``policy_version`` so a record can
always be traced to the rules that let it through. Topic names are the plumbing's
(``streams.kafka.topics.Topology``); where the jobs connect is ``streams.settings``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from streams.policy.models import DAY_MS, DataControls

# R13: opt-out selections made before this instant are kept as they were.
MIGRATION_CUTOFF_MS = 1_691_625_600_000  # 2023-08-10T00:00:00Z

POLICY_VERSION = "2026-11-21.1"

# R14: the published defaults, applied to an org with no recorded settings.
DEFAULT_CONTROLS = DataControls(
    prompts_generations_training=True,
    finetune_training=True,
    zero_data_retention=False,
    retention_days=30,
    training_exclusion=False,
    paying_customer=False,
    consent_version="default",
    recorded=False,
)

# R9 / R1: connectors whose content may never be used for training (Google
# Workspace Data, whatever the surface). Compared case-insensitively.
WORKSPACE_CONNECTORS = frozenset(
    {"google_drive", "google_workspace", "google_docs", "google_sheets", "google_slides", "gmail"}
)


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    policy_version: str = POLICY_VERSION
    defaults: DataControls = DEFAULT_CONTROLS
    migration_cutoff_ms: int = MIGRATION_CUTOFF_MS
    workspace_connectors: frozenset[str] = WORKSPACE_CONNECTORS
    # R12: how long a request may wait for the controls watermark before it is
    # decided without training (fail closed).
    watermark_stall_ms: int = 5 * 60_000
    # R15/R5/R12: how long a request may wait for the facts published before it was read
    # (deletions, flags, holds, control changes) before it is decided fail closed: usage only.
    facts_stall_ms: int = 5 * 60_000
    # R16: a wait for facts longer than this is named in the request's audit record.
    facts_wait_audited_ms: int = 1_000
    # R15/R5: how long after a request's creation a late deletion or misuse flag still
    # retracts the training candidate it produced (the router remembers candidates this
    # long: about 200 bytes each, in memory).
    retraction_horizon_ms: int = 30 * 60_000
    # R17: records larger than this are dead-lettered instead of processed.
    max_record_bytes: int = 1_000_000
    # R4 / R17: dead letters expire with the log store's 30 days.
    dead_letter_retention_ms: int = 30 * DAY_MS
    # R8: safety-evaluation records keep only a coarse time bucket.
    safety_time_bucket_ms: int = 7 * DAY_MS
    # R4: expiry must happen within this bound after a record falls due.
    deletion_bound_ms: int = 60_000


def load_config() -> PolicyConfig:
    """Configuration from the environment; unset values keep the defaults above."""
    config = PolicyConfig()
    stall = os.environ.get("STREAMS_WATERMARK_STALL_MS")
    if stall:
        config = replace(config, watermark_stall_ms=int(stall))
    facts_stall = os.environ.get("STREAMS_FACTS_STALL_MS")
    if facts_stall:
        config = replace(config, facts_stall_ms=int(facts_stall))
    horizon = os.environ.get("STREAMS_RETRACTION_HORIZON_MS")
    if horizon:
        config = replace(config, retraction_horizon_ms=int(horizon))
    return config
