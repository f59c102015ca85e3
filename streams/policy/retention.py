"""R4, R5, R6, R7, R15: when a retained log record is deleted, and what a misuse flag sends
to safety review.

Pure logic: no Kafka, no faust. ``streams.jobs.retention`` feeds it and turns its effects
into records.

One ``RetentionBook`` per log-store partition. Its ``TrackedStore`` keeps

* the *tracked* records of its partition (``Tracked``: ids, creation time, the retention
  days the router stamped (R7 already applied there), and the log-store offset of the
  value, so the job can read the content back for a safety review; never the content
  itself), findable by org and creation time;
* the expiry schedule: (due time, request id) entries read in time order, so a tick
  reads only what is due; and the records found due but held (*parked*);
* the hold facts it was told about (R5 misuse flags, R6 legal holds) and account deletions
  (R15), persisted as *facts* so a restart rebuilds them.

Only the holds and deletions live in the book's memory (``load`` reads them back from the
store's facts): they are few. Tracked records, schedule and parked records stay in the
store, which may be on disk: a book's memory does not grow with what it tracks.

Inputs are applied in order and each returns ``Effect``s: a ``Deletion`` (tombstone plus
deletion event), a ``Review`` (the record's full log to the safety review topic) or a
``Note`` (an audit-only decision). Every effect becomes one R16 audit record.

The book writes to its store as it decides; the job writes those writes in the same
transaction as the effects' output records (exactly once).

Rules, as decided here:

* R4: a record is due ``retention_days`` after its creation, to the millisecond: at day 30
  exactly, not at day 30 minus 1 ms.
* R7: the router stamps the contractual period into ``retention_days``; a period other
  than the default is reported as contract retention.
* R5 / R6: a record covered by an active hold is never deleted. A released hold keeps
  covering until its release time, so a record is deleted at the later of its normal
  expiry and the release.
* R15: an org's deletion makes every one of its records due at the request time; only a
  legal hold (R6) defers that, and its release deletes at once. Records of the org that
  arrive later are due on arrival.
* R5 review: each misuse flag sends each covered, still retained record to safety review
  once (the flag id is remembered on the tracked record). A REQUEST flag naming a record
  that is not retained is reported as not found / already expired.

Where the policy is silent (choices that protect the customer's data):

* A misuse hold does not stop an account deletion: R15 names legal holds as its only
  exception.
* Records of a deleted org are not sent to safety review: they are kept only because a
  legal hold requires it.
* A release at a future instant keeps the hold until that instant.
* "Not found" and "already expired" are one outcome: remembering every deleted request
  id to tell them apart would keep state about data that must be gone.
* A log-store value that cannot be read is tracked as if created when it arrived, with
  the default 30 days (``untrusted_tracked``): kept for an operator, never forever.
"""

from __future__ import annotations

import bisect
import json
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

from streams.policy.config import PolicyConfig
from streams.policy.holds import Hold, HoldIndex
from streams.policy.models import (
    DAY_MS,
    AccountDeletionRequest,
    FlagAction,
    FlagScope,
    HoldAction,
    InvalidRecord,
    LegalHold,
    MisuseFlag,
)

# Schedule entries read per store query when sweeping what is due.
SWEEP_CHUNK = 2048


class DeletionReason(StrEnum):
    EXPIRED = "EXPIRED"  # R4
    CONTRACT_RETENTION_EXPIRED = "CONTRACT_RETENTION_EXPIRED"  # R4 + R7
    HOLD_RELEASED = "HOLD_RELEASED"  # R4 after R5/R6
    ACCOUNT_DELETED = "ACCOUNT_DELETED"  # R15


class Outcome(StrEnum):
    """The routes a retention decision takes (the ``routes`` of its audit record)."""

    RETAINED = "retained"
    DELETED = "deleted"  # tombstone + deletion event
    HELD = "held"
    SAFETY_REVIEW = "safety_review"
    NOT_FOUND_OR_EXPIRED = "not_found_or_expired"
    HOLD_PLACED = "hold_placed"
    HOLD_RELEASED = "hold_released"
    IGNORED = "ignored"
    ACCOUNT_DELETION = "account_deletion"


@dataclass(frozen=True, slots=True)
class Tracked:
    """What the retention job keeps about one retained record: ids and times, no content."""

    request_id: str
    org_id: str
    api_key_id: str
    created_at_ms: int
    retention_days: int
    partition: int
    offset: int  # log-store offset of the retained value (R5: content read back for review)
    reviewed: tuple[str, ...] = ()  # misuse flag ids already sent to safety review (R5)
    consent_version: str = ""

    @property
    def expires_at_ms(self) -> int:
        """R4/R7: the normal expiry, ``retention_days`` after creation."""
        return self.created_at_ms + self.retention_days * DAY_MS


def tracked_from_log_record(
    record: Mapping[str, Any], key: str | None, partition: int, offset: int
) -> Tracked:
    """R17: a decoded LogStoreRecord that the job can schedule, or ``InvalidRecord``."""
    request_id = record.get("request_id")
    org_id = record.get("org_id")
    org = org_id if isinstance(org_id, str) and org_id else None
    if not isinstance(request_id, str) or not request_id:
        raise InvalidRecord("empty request_id", org)
    if key is not None and key != request_id:
        raise InvalidRecord("log-store key differs from request_id", org)
    if org is None:
        raise InvalidRecord("empty org_id", None)
    days = record.get("retention_days")
    if not isinstance(days, int) or days < 1:
        raise InvalidRecord("retention_days must be a positive number of days", org)
    created = record.get("created_at_ms")
    if not isinstance(created, int) or created <= 0:
        raise InvalidRecord("created_at_ms must be positive", org)
    return Tracked(
        request_id=request_id,
        org_id=org,
        api_key_id=str(record.get("api_key_id") or ""),
        created_at_ms=created,
        retention_days=days,
        partition=partition,
        offset=offset,
        consent_version=str(record.get("consent_version") or ""),
    )


def untrusted_tracked(
    key: str, partition: int, offset: int, received_at_ms: int, config: PolicyConfig
) -> Tracked:
    """R4 + R17: a log-store value that cannot be read still must not be kept forever.

    Its creation time is unknown, so it is tracked as if created when the job received it,
    with the default retention; it stays until then for an operator (and any REQUEST-scope
    hold naming its key), and is deleted after. Its org is unknown, so only a hold naming
    the request id can cover it.
    """
    return Tracked(
        request_id=key,
        org_id="",
        api_key_id="",
        created_at_ms=received_at_ms,
        retention_days=config.defaults.retention_days,
        partition=partition,
        offset=offset,
    )


# --- effects ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Deletion:
    """R4/R15: write a tombstone to the log store and a deletion event."""

    record: Tracked
    reason: str  # a DeletionReason
    rule_ids: tuple[str, ...]
    reasons: tuple[str, ...]
    deleted_at_ms: int

    @property
    def decision_key(self) -> str:
        return f"/delete/{self.record.request_id}"


@dataclass(frozen=True, slots=True)
class Review:
    """R5: send the record's full log to the safety review topic for this flag."""

    record: Tracked
    hold: Hold

    rule_ids: tuple[str, ...] = ("R5",)

    @property
    def decision_key(self) -> str:
        return f"/review/{self.hold.hold_id}/{self.record.request_id}"


@dataclass(frozen=True, slots=True)
class Note:
    """An audit-only decision (R16): retained, held, not found, hold placed/released, ..."""

    subject_id: str
    subject_kind: str
    org_id: str | None
    routes: tuple[str, ...]
    rule_ids: tuple[str, ...]
    reasons: tuple[str, ...]
    consent_version: str = ""
    key: str = ""

    @property
    def decision_key(self) -> str:
        return f"/{self.routes[0] if self.routes else 'note'}/{self.key or self.subject_id}"


Effect = Deletion | Review | Note


@dataclass(slots=True)
class TickResult:
    effects: list[Effect] = field(default_factory=list)
    more: bool = False  # the batch limit was reached with records still due


# --- storage -----------------------------------------------------------------------------
class TrackedStore(Protocol):
    """The book's persistent state for one partition: tracked records (by id, and by org and
    creation time), the expiry schedule, parked records and facts."""

    def get(self, request_id: str) -> Tracked | None: ...

    def put(self, record: Tracked, due_ms: int | None = None) -> None:
        """Store ``record``; with ``due_ms``, schedule it then too (``schedule``)."""
        ...

    def delete(self, request_id: str) -> None: ...

    def scan(
        self, org_id: str, created_from_ms: int = 0, created_to_ms: int | None = None
    ) -> Iterable[Tracked]:
        """The org's records created in [from, to) (None: no upper bound)."""
        ...

    def schedule(self, request_id: str, due_ms: int) -> None: ...

    def unschedule(self, due_ms: int, request_id: str) -> None: ...

    def due(
        self, until_ms: int, limit: int, after: tuple[int, str] | None = None
    ) -> list[tuple[int, str]]:
        """Up to ``limit`` schedule entries due at or before ``until_ms``, earliest first
        (only those after the entry ``after``, when given)."""
        ...

    def park(self, request_id: str, hold_ids: tuple[str, ...]) -> None: ...

    def unpark(self, request_id: str) -> None: ...

    def is_parked(self, request_id: str) -> bool: ...

    def parked(self) -> Iterable[str]: ...

    def put_fact(self, key: str, value: Mapping[str, Any]) -> None: ...

    def has_fact(self, key: str) -> bool: ...

    def facts(self) -> Iterable[tuple[str, Mapping[str, Any]]]: ...

    def __len__(self) -> int: ...


class DictStore:
    """In-memory ``TrackedStore`` (tests; the job's is on disk)."""

    def __init__(self) -> None:
        self.rows: dict[str, Tracked] = {}
        self.entries: list[tuple[int, str]] = []  # sorted
        self.held: dict[str, tuple[str, ...]] = {}
        self.fact_rows: dict[str, dict[str, Any]] = {}

    def get(self, request_id: str) -> Tracked | None:
        return self.rows.get(request_id)

    def put(self, record: Tracked, due_ms: int | None = None) -> None:
        self.rows[record.request_id] = record
        if due_ms is not None:
            self.schedule(record.request_id, due_ms)

    def delete(self, request_id: str) -> None:
        self.rows.pop(request_id, None)

    def scan(
        self, org_id: str, created_from_ms: int = 0, created_to_ms: int | None = None
    ) -> Iterator[Tracked]:
        for record in list(self.rows.values()):
            if (
                record.org_id == org_id
                and created_from_ms <= record.created_at_ms
                and (created_to_ms is None or record.created_at_ms < created_to_ms)
            ):
                yield record

    def schedule(self, request_id: str, due_ms: int) -> None:
        entry = (due_ms, request_id)
        at = bisect.bisect_left(self.entries, entry)
        if at == len(self.entries) or self.entries[at] != entry:
            self.entries.insert(at, entry)

    def unschedule(self, due_ms: int, request_id: str) -> None:
        entry = (due_ms, request_id)
        at = bisect.bisect_left(self.entries, entry)
        if at < len(self.entries) and self.entries[at] == entry:
            del self.entries[at]

    def due(
        self, until_ms: int, limit: int, after: tuple[int, str] | None = None
    ) -> list[tuple[int, str]]:
        first = 0 if after is None else bisect.bisect_right(self.entries, after)
        end = bisect.bisect_right(self.entries, (until_ms, "\U0010ffff"))
        return self.entries[first : min(end, first + limit)]

    def park(self, request_id: str, hold_ids: tuple[str, ...]) -> None:
        self.held[request_id] = hold_ids

    def unpark(self, request_id: str) -> None:
        self.held.pop(request_id, None)

    def is_parked(self, request_id: str) -> bool:
        return request_id in self.held

    def parked(self) -> Iterable[str]:
        return list(self.held)

    def put_fact(self, key: str, value: Mapping[str, Any]) -> None:
        self.fact_rows[key] = dict(value)

    def has_fact(self, key: str) -> bool:
        return key in self.fact_rows

    def facts(self) -> Iterable[tuple[str, Mapping[str, Any]]]:
        return list(self.fact_rows.items())

    def __len__(self) -> int:
        return len(self.rows)


def owner_partition(request_id: str, partitions: int) -> int:
    """The log-store partition of ``request_id``.

    The router writes the log store with librdkafka's default partitioner
    (``consistent_random``: CRC-32 of the key modulo the partition count); the retention
    job needs the same answer to decide which partition reports a REQUEST-scope flag whose
    record it does not hold (R5). Holds themselves go to every partition, so a different
    partitioner could only misplace a "not found" report, never a hold.
    """
    return zlib.crc32(request_id.encode()) % partitions


def _fact_key(kind: str, org_id: str, fact_id: str, action: str) -> str:
    return json.dumps([kind, org_id, fact_id, action], separators=(",", ":"))


def fact_key(fact: MisuseFlag | LegalHold | AccountDeletionRequest) -> str:
    """The key a book files ``fact`` under once it has applied it (``TrackedStore.has_fact``:
    the job applies each fact to each partition's book once)."""
    if isinstance(fact, MisuseFlag):
        return _fact_key("flag", fact.org_id, fact.flag_id, fact.action)
    if isinstance(fact, LegalHold):
        return _fact_key("legal", fact.org_id, fact.hold_id, fact.action)
    return _fact_key("deletion", fact.org_id, "", "")


# --- the book ----------------------------------------------------------------------------
class RetentionBook:
    """Retention state and decisions for one log-store partition."""

    def __init__(
        self,
        config: PolicyConfig,
        store: TrackedStore,
        partition: int = 0,
        partitions: int | None = None,
        load: bool = True,
    ) -> None:
        """``partitions``: the log store's partition count (None: this book owns every id)."""
        self.config = config
        self.store = store
        self.partition = partition
        self.partitions = partitions
        self.default_days = config.defaults.retention_days
        self.holds = HoldIndex()
        # org -> (kind, id) -> (hold, release time): a released hold covers until then.
        self._released: dict[str, dict[tuple[str, str], tuple[Hold, int]]] = {}
        self._deleted_orgs: dict[str, int] = {}  # R15: org -> deletion requested at
        if load:
            self.load()

    # --- recovery ------------------------------------------------------------------
    def load(self) -> None:
        """Rebuild holds and deletions from the store's facts (after a restart); the tracked
        records and their schedule stay in the store."""
        facts = sorted(self.store.facts(), key=lambda kv: _FACT_ORDER.get(json.loads(kv[0])[3], 9))
        for key, value in facts:
            kind = json.loads(key)[0]
            if not value:
                continue  # a released hold, pruned (``prune_released``)
            if kind == "flag":
                self._apply_flag(MisuseFlag(**value))
            elif kind == "legal":
                self._apply_legal(LegalHold(**value))
            elif kind == "deletion":
                request = AccountDeletionRequest(**value)
                self._note_deletion(request)

    # --- queries -------------------------------------------------------------------
    def due_at(self, record: Tracked) -> int:
        """When the record falls due if nothing holds it (R4/R7, R15)."""
        due = record.expires_at_ms
        deleted = self._deleted_orgs.get(record.org_id) if record.org_id else None
        return due if deleted is None else min(due, deleted)

    def blocking(self, record: Tracked, now_ms: int) -> tuple[Hold, ...]:
        """The holds that keep the record at ``now_ms`` (R5, R6; R15 yields to legal only)."""
        return self._active_holds(record) + tuple(h for h, _ in self._releasing(record, now_ms))

    def _active_holds(self, record: Tracked) -> tuple[Hold, ...]:
        kind = "legal" if record.org_id in self._deleted_orgs else ""
        return self.holds.covering(
            record.org_id, record.api_key_id, record.request_id, record.created_at_ms, kind
        )

    def _releasing(self, record: Tracked, now_ms: int) -> list[tuple[Hold, int]]:
        """Released holds whose release instant is still ahead: they cover until then."""
        kind = "legal" if record.org_id in self._deleted_orgs else ""
        return [
            (hold, released)
            for (k, _), (hold, released) in self._released.get(record.org_id, {}).items()
            if released > now_ms
            and (not kind or k == kind)
            and hold.covers(
                record.org_id, record.api_key_id, record.request_id, record.created_at_ms
            )
        ]

    def owns(self, request_id: str) -> bool:
        """Whether this partition answers for ``request_id`` (see ``owner_partition``)."""
        if self.partitions is None:
            return True
        return owner_partition(request_id, self.partitions) == self.partition

    def is_held(self, request_id: str) -> bool:
        return self.store.is_parked(request_id)

    def has_applied(self, fact: MisuseFlag | LegalHold | AccountDeletionRequest) -> bool:
        """Whether this book already applied ``fact`` (see ``fact_key``)."""
        return self.store.has_fact(fact_key(fact))

    def deletion_requested_at(self, org_id: str) -> int | None:
        return self._deleted_orgs.get(org_id)

    def __len__(self) -> int:
        return len(self.store)

    # --- inputs --------------------------------------------------------------------
    def record(self, record: Tracked, now_ms: int, limit: int = 1000) -> list[Effect]:
        """R4/R7: a retained record arrived in the log store (or arrived again)."""
        previous = self.store.get(record.request_id)
        if previous is not None:
            # R5: a flag already sent this record to review; a replay must not send it twice.
            record = replace(record, reviewed=previous.reviewed)
        due = self.due_at(record)
        self.store.put(record, due)
        if previous is not None:  # only a record seen before can have been held
            self.store.unpark(record.request_id)
        effects: list[Effect] = [self._retained_note(record, due)]
        if record.org_id not in self._deleted_orgs:
            for hold in self.holds.covering(
                record.org_id,
                record.api_key_id,
                record.request_id,
                record.created_at_ms,
                "misuse",
            ):
                effects.extend(self._review(record, hold))
        if due <= now_ms:
            effects.extend(self._sweep(now_ms, limit).effects)
        return effects

    def forget(self, request_id: str) -> None:
        """A tombstone in the log store (ours, read back): nothing is retained any more."""
        self.store.delete(request_id)
        self.store.unpark(request_id)

    def flag(self, flag: MisuseFlag, now_ms: int, limit: int = 1000) -> list[Effect]:
        """R5: a misuse flag is raised (hold + safety review) or released."""
        subject = _Subject(flag.flag_id, "misuse_flag", flag.org_id, self.partition)
        held = self._apply_flag(flag)
        self.store.put_fact(
            _fact_key("flag", flag.org_id, flag.flag_id, flag.action), _asdict(flag)
        )
        effects: list[Effect]
        if flag.action == FlagAction.RAISE:
            if held is None:
                effects = [subject.note(Outcome.IGNORED, ("R5",), "R5: flag already released")]
            else:
                effects = self._placed(subject, held)
        else:
            effects = self._lifted(subject, held, flag.at_ms, "R5", now_ms, limit)
        if flag.scope == FlagScope.REQUEST and not self.owns(flag.request_id or ""):
            # Every partition holds the flag; the one owning the request reports it.
            effects = [e for e in effects if not _about(e, subject)]
        return effects

    def legal_hold(self, hold: LegalHold, now_ms: int, limit: int = 1000) -> list[Effect]:
        """R6: a legal hold is placed or released."""
        subject = _Subject(hold.hold_id, "legal_hold", hold.org_id, self.partition)
        held = self._apply_legal(hold)
        self.store.put_fact(
            _fact_key("legal", hold.org_id, hold.hold_id, hold.action), _asdict(hold)
        )
        if hold.action == HoldAction.PLACE:
            if held is None:
                return [subject.note(Outcome.IGNORED, ("R6",), "R6: hold already released")]
            return self._placed(subject, held)
        return self._lifted(subject, held, hold.at_ms, "R6", now_ms, limit)

    def delete_account(
        self, request: AccountDeletionRequest, now_ms: int, limit: int = 1000
    ) -> list[Effect]:
        """R15: every retained record of the org falls due now; legal holds defer it."""
        self.store.put_fact(_fact_key("deletion", request.org_id, "", ""), _asdict(request))
        self._note_deletion(request)
        due = self._deleted_orgs[request.org_id]
        matched = 0
        for record in self.store.scan(request.org_id):
            if record.org_id == request.org_id:
                matched += 1
                self.store.unpark(record.request_id)
                self._schedule(record.request_id, min(due, record.expires_at_ms))
        subject = _Subject(request.deletion_id, "account_deletion", request.org_id, self.partition)
        effects: list[Effect] = [
            subject.note(
                Outcome.ACCOUNT_DELETION,
                ("R15",),
                f"R15: {matched} retained records of the org in partition {self.partition} "
                "fall due; records under legal hold wait for its release",
            )
        ]
        effects.extend(self._sweep(now_ms, limit).effects)
        return effects

    def tick(self, now_ms: int, limit: int = 1000) -> TickResult:
        """R4: delete whatever is due at ``now_ms`` and not held (at most ``limit``)."""
        return self._sweep(now_ms, limit)

    # --- holds ---------------------------------------------------------------------
    def _apply_flag(self, flag: MisuseFlag) -> Hold | None:
        if flag.action == FlagAction.RAISE:
            return self.holds.apply_flag(flag)
        released = self.holds.apply_flag(flag)
        self._remember_release(released, flag.org_id, "misuse", flag.flag_id, flag.at_ms)
        return released

    def _apply_legal(self, hold: LegalHold) -> Hold | None:
        if hold.action == HoldAction.PLACE:
            return self.holds.apply_legal_hold(hold)
        released = self.holds.apply_legal_hold(hold)
        self._remember_release(released, hold.org_id, "legal", hold.hold_id, hold.at_ms)
        return released

    def _remember_release(
        self, released: Hold | None, org_id: str, kind: str, hold_id: str, at_ms: int
    ) -> None:
        """Keep a released hold with its release instant: it covers until then (R5/R6) and
        tells a deletion that the hold outlived the expiry. A release of a hold that was never
        placed here covers nothing."""
        if released is not None:  # a repeated release finds nothing: the first instant stands
            self._released.setdefault(org_id, {})[(kind, hold_id)] = (released, at_ms)

    def prune_released(self, now_ms: int, keep_ms: int = DAY_MS) -> int:
        """Forget holds released more than ``keep_ms`` before ``now_ms``: by then every
        record they held was due at the release and has been swept. Their facts stay filed
        as empty markers, so the hold is not applied again when it is read again."""
        pruned = 0
        for org_id, released in list(self._released.items()):
            for (kind, hold_id), (_, at_ms) in list(released.items()):
                if at_ms + keep_ms > now_ms:
                    continue
                del released[(kind, hold_id)]
                fact_kind, placed = ("flag", "RAISE") if kind == "misuse" else ("legal", "PLACE")
                for action in (placed, "RELEASE"):
                    self.store.put_fact(_fact_key(fact_kind, org_id, hold_id, action), {})
                pruned += 1
            if not released:
                del self._released[org_id]
        return pruned

    def released_hold(self, org_id: str, kind: str, hold_id: str) -> Hold | None:
        entry = self._released.get(org_id, {}).get((kind, hold_id))
        return entry[0] if entry else None

    def _note_deletion(self, request: AccountDeletionRequest) -> None:
        current = self._deleted_orgs.get(request.org_id)
        at = request.requested_at_ms
        self._deleted_orgs[request.org_id] = at if current is None else min(current, at)

    def _placed(self, subject: _Subject, hold: Hold) -> list[Effect]:
        rule = "R5" if hold.kind == "misuse" else "R6"
        effects: list[Effect] = []
        covered = 0
        if hold.scope == FlagScope.REQUEST:
            record = self.store.get(hold.request_id or "")
            candidates = [record] if record is not None else []
        else:
            candidates = [
                r
                for r in self.store.scan(hold.org_id, hold.window_start_ms, hold.window_end_ms)
                if hold.covers(r.org_id, r.api_key_id, r.request_id, r.created_at_ms)
            ]
        for record in candidates:
            if not hold.covers(
                record.org_id, record.api_key_id, record.request_id, record.created_at_ms
            ):
                continue
            covered += 1
            if hold.kind == "misuse":
                if record.org_id in self._deleted_orgs:
                    effects.append(
                        subject.note(
                            Outcome.HELD,
                            ("R5", "R15"),
                            "R15: org deleted; record kept only under legal hold, not reviewed",
                            key=record.request_id,
                        )
                    )
                else:
                    effects.extend(self._review(record, hold))
        if hold.scope == FlagScope.REQUEST and covered == 0:
            request_id = hold.request_id or ""
            if self.owns(request_id):
                # R5: a flag for a record no longer retained is reported, never dropped.
                effects.append(
                    Note(
                        subject_id=request_id,
                        subject_kind="log_record",
                        org_id=hold.org_id,
                        routes=(Outcome.NOT_FOUND_OR_EXPIRED,),
                        rule_ids=(rule, "R4"),
                        reasons=(
                            f"{rule}: flag {hold.hold_id} names a record that is not retained "
                            "(already expired and deleted, or never retained)",
                        ),
                        key=f"{hold.hold_id}/{request_id}",
                    )
                )
            return effects  # only the partition that owns the request reports the flag
        effects.insert(
            0,
            subject.note(
                Outcome.HOLD_PLACED,
                (rule,),
                f"{rule}: hold placed; {covered} retained records covered in partition "
                f"{self.partition}",
            ),
        )
        return effects

    def _lifted(
        self,
        subject: _Subject,
        released: Hold | None,
        release_at_ms: int,
        rule: str,
        now_ms: int,
        limit: int,
    ) -> list[Effect]:
        if released is None:
            return [
                subject.note(
                    Outcome.IGNORED,
                    (rule,),
                    f"{rule}: release of a hold not in force here (already released or never "
                    "placed)",
                )
            ]
        requeued = 0
        for request_id in list(self.store.parked()):
            record = self.store.get(request_id)
            if record is None:
                self.store.unpark(request_id)
                continue
            if not released.covers(
                record.org_id, record.api_key_id, record.request_id, record.created_at_ms
            ):
                continue
            # R5/R6: deleted at the later of its normal expiry and the release.
            self.store.unpark(request_id)
            self._schedule(request_id, max(self.due_at(record), release_at_ms))
            requeued += 1
        effects: list[Effect] = [
            subject.note(
                Outcome.HOLD_RELEASED,
                (rule, "R4"),
                f"{rule}: hold released at {release_at_ms}; {requeued} held records fall due "
                "at the later of their expiry and the release",
            )
        ]
        effects.extend(self._sweep(now_ms, limit).effects)
        return effects

    # --- reviews -------------------------------------------------------------------
    def _review(self, record: Tracked, hold: Hold) -> list[Effect]:
        if hold.hold_id in record.reviewed:
            return []  # R5: once per flag
        self.store.put(replace(record, reviewed=(*record.reviewed, hold.hold_id)))
        return [Review(record, hold)]

    # --- schedule ------------------------------------------------------------------
    def _schedule(self, request_id: str, due_ms: int) -> None:
        # An earlier entry of the record stays: the sweep finds the record not due at it
        # and drops it, so a due time changes with one write, not a lookup and two.
        self.store.schedule(request_id, due_ms)

    def _sweep(self, now_ms: int, limit: int) -> TickResult:
        result = TickResult()
        deleted = 0
        store = self.store
        after: tuple[int, str] | None = None
        while True:
            entries = store.due(now_ms, SWEEP_CHUNK, after)
            for due_ms, request_id in entries:
                after = (due_ms, request_id)
                if deleted >= limit:
                    result.more = True
                    return result
                store.unschedule(due_ms, request_id)
                record = store.get(request_id)
                if record is None or store.is_parked(request_id):
                    continue  # already deleted, or already known to be held
                due = self.due_at(record)
                if due > now_ms:
                    # Rescheduled since: a later entry exists. Scheduled again all the same,
                    # for a store that keeps one entry per record (the job's).
                    self._schedule(request_id, due)
                    continue
                holds = self._active_holds(record)
                if holds:
                    store.park(request_id, tuple(h.hold_id for h in holds))
                    result.effects.append(self._held_note(record, holds))
                    continue
                releasing = self._releasing(record, now_ms)
                if releasing:
                    # R5/R6: released with effect from a later instant: due then.
                    self._schedule(request_id, max(at for _, at in releasing))
                    continue
                store.delete(request_id)
                result.effects.append(self._deletion(record, now_ms))
                deleted += 1
            if len(entries) < SWEEP_CHUNK:
                return result

    # --- decisions -----------------------------------------------------------------
    def _deletion(self, record: Tracked, now_ms: int) -> Deletion:
        deleted_org_at = self._deleted_orgs.get(record.org_id) if record.org_id else None
        releases = self._releases_covering(record)
        expiry = record.expires_at_ms
        contract = record.retention_days != self.default_days
        if deleted_org_at is not None and deleted_org_at < expiry:
            reason = DeletionReason.ACCOUNT_DELETED
            rules = ["R15"]
            if any(kind == "legal" and at > deleted_org_at for kind, at in releases):
                rules.append("R6")
            text = "R15: account deleted"
        elif any(at >= expiry for _, at in releases):
            reason = DeletionReason.HOLD_RELEASED
            rules = ["R4"]
            rules += sorted({"R5" if k == "misuse" else "R6" for k, at in releases if at >= expiry})
            text = "R4: deleted at the later of its expiry and the release of its holds"
        elif contract:
            reason = DeletionReason.CONTRACT_RETENTION_EXPIRED
            rules = ["R4"]
            text = f"R7: contractual retention of {record.retention_days} days ended"
        else:
            reason = DeletionReason.EXPIRED
            rules = ["R4"]
            text = f"R4: {record.retention_days} days after creation"
        if contract and "R7" not in rules:
            rules.append("R7")
        return Deletion(record, reason.value, tuple(rules), (text,), now_ms)

    def _releases_covering(self, record: Tracked) -> list[tuple[str, int]]:
        return [
            (kind, released)
            for (kind, _), (hold, released) in self._released.get(record.org_id, {}).items()
            if hold.covers(
                record.org_id, record.api_key_id, record.request_id, record.created_at_ms
            )
        ]

    def _retained_note(self, record: Tracked, due: int) -> Note:
        rules = ["R4"]
        reasons = [f"R4: retained until {record.expires_at_ms}"]
        if record.retention_days != self.default_days:
            rules.append("R7")
            reasons.append(f"R7: contractual retention of {record.retention_days} days")
        if record.org_id in self._deleted_orgs:
            rules.append("R15")
            reasons.append(f"R15: account deletion requested; due at {due}")
        return Note(
            subject_id=record.request_id,
            subject_kind="log_record",
            org_id=record.org_id or None,
            routes=(Outcome.RETAINED,),
            rule_ids=tuple(rules),
            reasons=tuple(reasons),
            consent_version=record.consent_version,
        )

    def _held_note(self, record: Tracked, holds: tuple[Hold, ...]) -> Note:
        rules = sorted({"R5" if h.kind == "misuse" else "R6" for h in holds})
        return Note(
            subject_id=record.request_id,
            subject_kind="log_record",
            org_id=record.org_id or None,
            routes=(Outcome.HELD,),
            rule_ids=(*rules, "R4"),
            reasons=tuple(
                f"{'R5' if h.kind == 'misuse' else 'R6'}: held by {h.hold_id}" for h in holds
            ),
            key=f"{record.request_id}/{'+'.join(sorted(h.hold_id for h in holds))}",
        )


_FACT_ORDER = {"RAISE": 0, "PLACE": 0, "": 1, "RELEASE": 2}


@dataclass(frozen=True, slots=True)
class _Subject:
    subject_id: str
    kind: str
    org_id: str | None
    partition: int

    def note(self, outcome: str, rules: tuple[str, ...], reason: str, key: str = "") -> Note:
        return Note(
            subject_id=self.subject_id,
            subject_kind=self.kind,
            org_id=self.org_id,
            routes=(outcome,),
            rule_ids=rules,
            reasons=(reason,),
            key=key or f"{self.subject_id}/p{self.partition}",
        )


def _about(effect: Effect, subject: _Subject) -> bool:
    return (
        isinstance(effect, Note)
        and effect.subject_id == subject.subject_id
        and effect.subject_kind == subject.kind
    )


def _asdict(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}
