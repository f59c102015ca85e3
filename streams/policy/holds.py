"""Which holds cover a request: misuse flags (R5) and legal holds (R6).

A hold covers a record when it names the record (REQUEST scope), or the
record's API key (API_KEY scope) or org (ORG scope, legal holds) and the
record's creation time falls in the hold's window. Windows are half-open
``[start, end)``; a missing end means "until further notice". The index keeps
the latest state per flag/hold id, so replaying a compacted topic rebuilds it.
Used by the router (R9: a flagged request is never a training candidate) and by
the retention job (held records are never deleted).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streams.policy.models import (
    FlagAction,
    FlagScope,
    HoldAction,
    InvalidRecord,
    LegalHold,
    MisuseFlag,
)

_OPEN_END = 2**62
_FLAG_ACTIONS = frozenset(FlagAction)
_FLAG_SCOPES = frozenset(FlagScope)
_HOLD_ACTIONS = frozenset(HoldAction)


@dataclass(frozen=True, slots=True)
class Hold:
    hold_id: str
    kind: str  # "misuse" (R5) or "legal" (R6)
    scope: str  # REQUEST | API_KEY | ORG
    org_id: str
    request_id: str | None
    api_key_id: str | None
    window_start_ms: int
    window_end_ms: int
    reason: str
    placed_at_ms: int

    def covers(self, org_id: str, api_key_id: str, request_id: str, created_at_ms: int) -> bool:
        # R13: a hold never reaches across orgs, whatever else it names.
        if org_id != self.org_id:
            return False
        if self.scope == FlagScope.REQUEST:
            return request_id == self.request_id
        if self.scope == FlagScope.API_KEY and api_key_id != self.api_key_id:
            return False
        return self.window_start_ms <= created_at_ms < self.window_end_ms


def validate_flag(record: Mapping[str, Any]) -> MisuseFlag:
    """R17: a decoded misuse flag whose action, scope and target make sense; fail closed on
    anything else rather than guess (an unknown action must never release a hold)."""
    flag = MisuseFlag(**record)
    org = flag.org_id or None
    if not flag.flag_id or not flag.org_id:
        raise InvalidRecord("empty flag_id or org_id", org)
    if flag.action not in _FLAG_ACTIONS:
        raise InvalidRecord("unknown flag action", org)
    if flag.scope not in _FLAG_SCOPES:
        raise InvalidRecord("unknown flag scope", org)
    if flag.scope == FlagScope.REQUEST and not flag.request_id:
        raise InvalidRecord("REQUEST flag without request_id", org)
    if flag.scope == FlagScope.API_KEY and not flag.api_key_id:
        raise InvalidRecord("API_KEY flag without api_key_id", org)
    return flag


def validate_legal_hold(record: Mapping[str, Any]) -> LegalHold:
    """R17: a decoded legal hold with a known action and a non-empty window."""
    hold = LegalHold(**record)
    org = hold.org_id or None
    if not hold.hold_id or not hold.org_id:
        raise InvalidRecord("empty hold_id or org_id", org)
    if hold.action not in _HOLD_ACTIONS:
        raise InvalidRecord("unknown hold action", org)
    if hold.window_end_ms <= hold.window_start_ms:
        raise InvalidRecord("empty legal hold window", org)
    return hold


def hold_from_flag(flag: MisuseFlag) -> Hold:
    return Hold(
        hold_id=flag.flag_id,
        kind="misuse",
        scope=flag.scope,
        org_id=flag.org_id,
        request_id=flag.request_id,
        api_key_id=flag.api_key_id,
        window_start_ms=flag.window_start_ms if flag.window_start_ms is not None else 0,
        window_end_ms=flag.window_end_ms if flag.window_end_ms is not None else _OPEN_END,
        reason=flag.reason,
        placed_at_ms=flag.at_ms,
    )


def hold_from_legal(hold: LegalHold) -> Hold:
    return Hold(
        hold_id=hold.hold_id,
        kind="legal",
        scope=FlagScope.ORG,
        org_id=hold.org_id,
        request_id=None,
        api_key_id=None,
        window_start_ms=hold.window_start_ms,
        window_end_ms=hold.window_end_ms,
        reason=hold.matter,
        placed_at_ms=hold.at_ms,
    )


class HoldIndex:
    """Active holds per org; a released hold is removed (its release time is returned).

    R13 / R6: holds are keyed by (org, kind, id). Trust & safety and legal number
    their ids independently and orgs share no id space, so a release only ever
    lifts (or pre-empts) the hold of its own org and kind.
    """

    def __init__(self) -> None:
        self._by_org: dict[str, dict[tuple[str, str], Hold]] = {}
        self._released: dict[tuple[str, str, str], int] = {}

    def apply_flag(self, flag: MisuseFlag) -> Hold | None:
        """R5: raise or release a misuse flag. Returns the hold affected, or None if unknown."""
        if flag.action == FlagAction.RAISE:
            return self._place(hold_from_flag(flag))
        return self._release(flag.org_id, "misuse", flag.flag_id, flag.at_ms)

    def apply_legal_hold(self, hold: LegalHold) -> Hold | None:
        """R6: place or release a legal hold."""
        if hold.action == HoldAction.PLACE:
            return self._place(hold_from_legal(hold))
        return self._release(hold.org_id, "legal", hold.hold_id, hold.at_ms)

    def _place(self, hold: Hold) -> Hold | None:
        if (hold.org_id, hold.kind, hold.hold_id) in self._released:
            # A release already seen wins over a replayed or reordered raise.
            return None
        self._by_org.setdefault(hold.org_id, {})[(hold.kind, hold.hold_id)] = hold
        return hold

    def _release(self, org_id: str, kind: str, hold_id: str, at_ms: int) -> Hold | None:
        self._released[(org_id, kind, hold_id)] = at_ms
        holds = self._by_org.get(org_id)
        if not holds:
            return None
        return holds.pop((kind, hold_id), None)

    def covering(
        self, org_id: str, api_key_id: str, request_id: str, created_at_ms: int, kind: str = ""
    ) -> tuple[Hold, ...]:
        holds = self._by_org.get(org_id)
        if not holds:
            return ()
        return tuple(
            h
            for h in holds.values()
            if (not kind or h.kind == kind)
            and h.covers(org_id, api_key_id, request_id, created_at_ms)
        )

    def active(self, org_id: str | None = None) -> tuple[Hold, ...]:
        if org_id is not None:
            return tuple(self._by_org.get(org_id, {}).values())
        return tuple(h for holds in self._by_org.values() for h in holds.values())

    def released_at(self, hold_id: str, org_id: str | None = None, kind: str = "") -> int | None:
        """When ``hold_id`` was released (latest match when org/kind are not given)."""
        times = [
            at
            for (org, k, hid), at in self._released.items()
            if hid == hold_id and (org_id is None or org == org_id) and (not kind or k == kind)
        ]
        return max(times) if times else None
