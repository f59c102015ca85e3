"""R15, R5, R9: taking back training candidates that a late fact covers.

The router decides a request only after it has read every fact published before it read
the request (the facts barrier, ``streams.jobs.router``). A fact can still be *late*: an
account deletion or a misuse flag published after requests it covers were routed
(the control plane or trust & safety lagged behind the gateway). Such a fact takes back
what those requests produced: every training candidate it covers gets a retraction, keyed
to the candidate, that the training reader applies.

Pure: ``CandidateIndex`` remembers, per org, the candidates a worker produced within the
retraction horizon; ``retraction_rules`` says whether the facts as known now cover one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from streams.policy.holds import Hold


class CandidateEntry(NamedTuple):
    """What the facts are matched against; no content (ids and times only)."""

    candidate_id: str  # the candidate's source_id (request id or fine-tune row id)
    kind: str  # PROMPT_GENERATION | FINETUNE_ROW, as in the candidate
    org_id: str
    api_key_id: str  # "" for fine-tune rows
    created_at_ms: int
    retracted: bool = False


class CandidateIndex:
    """The candidates produced within the horizon, by org (a fact names an org first).

    Entries are kept as plain tuples of strings, ints and bools, which Python's cyclic
    collector stops tracking (a NamedTuple stays tracked): the index holds a horizon's
    worth of candidates, and every full collection would walk them all."""

    def __init__(self) -> None:
        self._by_org: dict[str, dict[str, tuple[str, str, str, str, int, bool]]] = {}

    def add(self, entry: CandidateEntry) -> None:
        entries = self._by_org.get(entry.org_id)
        if entries is None:
            entries = self._by_org[entry.org_id] = {}
        entries[entry.candidate_id] = tuple(entry)  # type: ignore[assignment]

    def of_org(self, org_id: str) -> Iterator[CandidateEntry]:
        for values in list(self._by_org.get(org_id, {}).values()):
            yield CandidateEntry._make(values)

    def __iter__(self) -> Iterator[CandidateEntry]:
        for entries in list(self._by_org.values()):
            for values in list(entries.values()):
                yield CandidateEntry._make(values)

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._by_org.values())

    def discard(self, entry: CandidateEntry) -> None:
        entries = self._by_org.get(entry.org_id)
        if entries is not None:
            entries.pop(entry.candidate_id, None)
            if not entries:
                del self._by_org[entry.org_id]

    def older_than(self, created_before_ms: int) -> list[CandidateEntry]:
        """Entries past the horizon (created before ``created_before_ms``)."""
        return [e for e in self if e.created_at_ms < created_before_ms]


class Retraction(NamedTuple):
    rule_ids: tuple[str, ...]
    reasons: tuple[str, ...]
    fact_ids: tuple[str, ...]


def retraction_rules(
    entry: CandidateEntry,
    deletion: tuple[str, int] | None,
    misuse_holds: Iterable[Hold],
) -> Retraction | None:
    """Whether the facts known now take ``entry`` back, and by which rules; None if not.

    ``deletion``: (deletion id, requested at) of the org's account deletion, if any (R15: no
    candidate from a request created at or after it). ``misuse_holds``: the misuse flags
    standing now (R5, R9: a flagged request is never a candidate). A request-scope flag
    raised after its request became a candidate retracts it too: the flag says the request
    is misuse, whenever it was raised, and a misuse request is not training data (fail
    closed).
    """
    rules: list[str] = []
    reasons: list[str] = []
    facts: list[str] = []
    if deletion is not None and entry.created_at_ms >= deletion[1]:
        rules += ["R15", "R9"]
        reasons.append("R15: account deletion requested before the request was created")
        facts.append(deletion[0])
    flags = [
        h
        for h in misuse_holds
        if h.covers(entry.org_id, entry.api_key_id, entry.candidate_id, entry.created_at_ms)
    ]
    if flags:
        rules += ["R5", "R9"]
        reasons.append("R9: flagged for misuse (R5) by a flag that arrived after routing")
        facts += [h.hold_id for h in flags]
    if not rules:
        return None
    return Retraction(tuple(dict.fromkeys(rules)), tuple(reasons), tuple(facts))


def training_retraction(
    entry: CandidateEntry, retraction: Retraction, retracted_at_ms: int, policy_version: str
) -> dict[str, object]:
    """The Avro-shaped retraction of one candidate (``schemas/training_retraction.avsc``)."""
    return {
        "candidate_id": entry.candidate_id,
        "kind": entry.kind,
        "org_id": entry.org_id,
        "created_at_ms": entry.created_at_ms,
        "rule_ids": list(retraction.rule_ids),
        "reasons": list(retraction.reasons),
        "fact_ids": list(retraction.fact_ids),
        "retracted_at_ms": retracted_at_ms,
        "policy_version": policy_version,
    }
