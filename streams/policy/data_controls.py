"""R12: every org's data controls as a versioned ledger, answerable "as of time T".

Changes arrive in any order (the control plane may publish a change after
requests it predates); the ledger keeps them sorted by effective time and folds
them into snapshots, so ``controls_at`` is one binary search. A change whose
fields are null leaves those settings as they were, which is also how R13 is
kept: settings recorded before the 2023-08-10 migration cut-off are never reset
to defaults, they simply stay in effect until a later change.

The controls watermark says "every change effective at or before T has been
published": only then is a request created at or before T safe to decide for
training (``watermark_passed``).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, replace
from typing import Any

from streams.policy.models import ControlsWatermark, DataControlChange, DataControls

_FIELDS = (
    "prompts_generations_training",
    "finetune_training",
    "zero_data_retention",
    "retention_days",
    "training_exclusion",
    "paying_customer",
)


def fold(base: DataControls, change: DataControlChange) -> DataControls:
    """Apply one change on top of the settings in effect before it."""
    updates: dict[str, Any] = {
        name: getattr(change, name) for name in _FIELDS if getattr(change, name) is not None
    }
    return replace(base, consent_version=change.consent_version, recorded=True, **updates)


@dataclass(slots=True)
class _OrgHistory:
    keys: list[tuple[int, str]]  # (effective_at_ms, change_id), sorted
    changes: list[DataControlChange]
    snapshots: list[DataControls]


def _effective_at(key: tuple[int, str]) -> int:
    return key[0]


class DataControlsLedger:
    """Versioned data controls per org (R12), R14 defaults for orgs never recorded."""

    def __init__(self, defaults: DataControls) -> None:
        self._defaults = defaults
        self._orgs: dict[str, _OrgHistory] = {}
        self._watermark_ms: int | None = None
        self._deleted: dict[str, int] = {}

    # --- feeding -----------------------------------------------------------------
    def apply(self, change: DataControlChange) -> bool:
        """Record a change; returns False for a duplicate (replays are harmless)."""
        history = self._orgs.get(change.org_id)
        if history is None:
            history = self._orgs[change.org_id] = _OrgHistory([], [], [])
        key = (change.effective_at_ms, change.change_id)
        index = bisect.bisect_left(history.keys, key)
        if index < len(history.keys) and history.keys[index] == key:
            return False
        history.keys.insert(index, key)
        history.changes.insert(index, change)
        # Re-fold from the insertion point: a late change re-bases everything after it.
        base = history.snapshots[index - 1] if index else self._defaults
        history.snapshots[index:] = []
        for later in history.changes[index:]:
            base = fold(base, later)
            history.snapshots.append(base)
        return True

    def advance_watermark(self, watermark: ControlsWatermark) -> None:
        # A watermark never moves back: an out-of-order publish must not re-open decided time.
        if self._watermark_ms is None or watermark.watermark_ms > self._watermark_ms:
            self._watermark_ms = watermark.watermark_ms

    def record_deletion(self, org_id: str, requested_at_ms: int) -> None:
        """R15: the org asked to be deleted; the earliest request wins."""
        previous = self._deleted.get(org_id)
        if previous is None or requested_at_ms < previous:
            self._deleted[org_id] = requested_at_ms

    # --- asking ------------------------------------------------------------------
    def controls_at(self, org_id: str, at_ms: int) -> DataControls:
        """The settings in effect for ``org_id`` at ``at_ms`` (R12), R14 defaults if none."""
        history = self._orgs.get(org_id)
        if history is None:
            return self._defaults
        # A change effective exactly at at_ms applies (it "took effect" then), whatever its
        # change id: search on the effective time alone (a "\U0010ffff" sentinel in the key
        # missed ids that sort after it).
        index = bisect.bisect_right(history.keys, at_ms, key=_effective_at)
        return history.snapshots[index - 1] if index else self._defaults

    def ever_zero_data_retention(self, org_id: str) -> bool:
        """Whether the org had ZDR at any recorded time: used where no creation time is known."""
        history = self._orgs.get(org_id)
        return history is not None and any(s.zero_data_retention for s in history.snapshots)

    @property
    def watermark_ms(self) -> int | None:
        return self._watermark_ms

    def watermark_passed(self, at_ms: int) -> bool:
        return self._watermark_ms is not None and self._watermark_ms >= at_ms

    def deletion_requested_at(self, org_id: str) -> int | None:
        return self._deleted.get(org_id)

    def orgs(self) -> list[str]:
        return list(self._orgs)
