"""The router job: every request log and fine-tune row routed exactly once.

Wires the pure policy (``streams.policy.routing``) to the runtime
(``streams.kafka.runtime``): the R12 ledger, misuse flags, legal holds and deletions
(the facts) come from compacted topics read in full by every worker; request logs and
fine-tune rows are consumed in a consumer group and routed exactly once. Outputs: log
store (R4), training candidates (R9-R11), their retractions (R15/R5), usage events
(R3), audit (R16), dead letters (R17).

No decision ahead of the facts: a record is decided only once this worker has
applied every fact published before it read the record (``ReadBarrier``, the job's
gate); until then its partition waits, and past ``facts_stall_ms`` it is decided fail
closed. A fact published later than requests it covers (a late deletion or flag)
retracts the training candidates they produced, within the retraction horizon
(``streams.policy.retraction``); the candidates are remembered in the stores
``candidates`` and ``candidates-finetune`` (ids and times, never content).

Run one worker:  streams run router --worker-id 0
"""

from __future__ import annotations

import logging
import marshal
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message

from streams.jobs.wiring import contracts_of, runtime_of
from streams.kafka.compacted import CompactedReader, ReadBarrier
from streams.kafka.metrics import JobMetrics
from streams.kafka.offload import Offload
from streams.kafka.runtime import (
    DEFER,
    Clock,
    Context,
    Defer,
    JobSpec,
    KeyValueStore,
    Punctuator,
    Runtime,
    StoreSpec,
)
from streams.kafka.serde import (
    Codec,
    Contracts,
    DecodeError,
    ExtendingCodec,
    SplicedCodec,
)
from streams.kafka.topics import internal_topic
from streams.kafka.transactional import source_of
from streams.policy.audit import (
    AUDIT_OUTCOME_FIELDS,
    Source,
    audit_outcome,
    audit_subject,
)
from streams.policy.config import PolicyConfig
from streams.policy.data_controls import DataControlsLedger
from streams.policy.holds import HoldIndex, validate_flag, validate_legal_hold
from streams.policy.models import (
    AccountDeletionRequest,
    ControlsWatermark,
    DataControlChange,
    DataControls,
    Decision,
    Deployment,
    FineTuneRow,
    InvalidRecord,
    Route,
)
from streams.policy.redaction import Redactor
from streams.policy.retraction import (
    CandidateEntry,
    CandidateIndex,
    Retraction,
    retraction_rules,
    training_retraction,
)
from streams.policy.routing import (
    PersonalInformationRedactor,
    RequestShape,
    RoutingFacts,
    WatermarkState,
    decide_finetune_row,
    decide_request_shape,
    finetune_candidate,
    log_store_record,
    log_store_stamp,
    request_shape,
    training_candidate,
    usage_event,
    validate_finetune_row,
    validate_request,
    watermark_state,
)
from streams.settings import Settings

log = logging.getLogger("streams.router")

JOB = "router"
_INPUTS = ("request_logs", "finetune_rows")
# The facts: every worker reads them in full; no record is decided ahead of them.
_STATE = (
    "data_controls",
    "controls_watermark",
    "misuse_flags",
    "legal_holds",
    "account_deletions",
)
# The stores of the candidates produced from each input (R15/R5: a late fact takes them back).
_CANDIDATES = {"request_logs": "candidates", "finetune_rows": "candidates-finetune"}
# How often candidates past the retraction horizon are forgotten.
_EXPIRE_EVERY_MS = 60_000


def default_redaction_processes() -> int:
    """One per core but the one the worker runs on (``STREAMS_REDACTION_PROCESSES`` sets
    it, through ``Settings``)."""
    return max(1, (os.cpu_count() or 2) - 1)


# An output to encode: (output field, payload). The payload is the record for most
# fields; (subject fields, encoded outcome) for "audit_decided"; (the validated request
# or fine-tune row, consent version of the decision) for "training_candidates".
OutputItem = tuple[str, Any]
# Encoded in the offload workers when there are any. Only candidates: their redaction is
# the costly part, while handing a small record over costs about what encoding it here
# does (benchmarks/router_bench.py measured all outputs offloaded 10.8k rec/s, candidates
# only 13.0k).
_OFFLOADED = frozenset({"training_candidates"})
_ENCODED = (
    "request_logs",
    "log_store",
    "training_candidates",
    "training_retractions",
    "usage_events",
    "audit",
    "dead_letters",
)


class OutputEncoder:
    """The router's outputs as bytes; a training candidate is redacted first (R9-R11).

    Pure. Candidates, whose redaction is the costly part, are encoded in the router's
    offload worker processes by default (fed in order, collected before each transaction);
    everything else in the router's own process.
    """

    def __init__(
        self,
        config: PolicyConfig,
        codecs: Mapping[str, Codec],
        redactor: PersonalInformationRedactor | None = None,
    ) -> None:
        """``redactor``: the default ``Redactor`` (compiled on the first candidate) if None."""
        self.config = config
        self.codecs = codecs
        self._redactor = redactor
        self.log_store_stamped = ExtendingCodec(codecs["request_logs"], codecs["log_store"])
        # audit runs: the subject (id, kind, org), the outcome, then time and source
        self.audit_runs = SplicedCodec(codecs["audit"], [AUDIT_OUTCOME_FIELDS[0], "decided_at_ms"])
        if self.audit_runs.runs[1] != AUDIT_OUTCOME_FIELDS:
            raise ValueError("the audit contract's outcome fields are not consecutive")

    def stamp(self, stamp: Mapping[str, Any]) -> bytes:
        """The log-store stamp, encoded once per decision and joined to each request."""
        return self.log_store_stamped.tail(stamp)

    def outcome(self, outcome: Mapping[str, Any]) -> bytes:
        """An audit outcome, encoded once per decision and joined to each subject."""
        return self.audit_runs.encode_run(1, outcome)

    def encode(self, items: Sequence[OutputItem]) -> list[bytes]:
        return [self.encode_one(field, payload) for field, payload in items]

    def encode_one(self, field: str, payload: Any) -> bytes:
        if field == "audit_decided":
            subject, outcome = payload
            return self.audit_runs.encode_around(1, outcome, subject)
        if field == "training_candidates":
            if self._redactor is None:
                self._redactor = Redactor()
            redactor = self._redactor
            subject, consent_version = payload
            if isinstance(subject, FineTuneRow):
                candidate = finetune_candidate(subject, consent_version, redactor, self.config)
            else:
                candidate = training_candidate(subject, consent_version, redactor, self.config)
            return self.codecs[field].encode(candidate)
        return self.codecs[field].encode(payload)


_worker_encoder: OutputEncoder | None = None

# The facts of a record as (read, waited long for them): the three states there are.
_FACTS_READ = (True, False)
_FACTS_WAITED = (True, True)
_FACTS_UNREAD = (False, False)


def start_output_worker(
    config: PolicyConfig, contracts: Mapping[str, tuple[str, str, int]]
) -> None:
    """Run in each offload worker process (``streams.kafka.offload``) at its start;
    ``contracts``: field -> (subject, schema text, registered schema id)."""
    global _worker_encoder
    codecs = {field: Codec(None, *contract) for field, contract in contracts.items()}
    _worker_encoder = OutputEncoder(config, codecs, Redactor())


def encode_outputs(items: Sequence[OutputItem]) -> list[bytes]:
    assert _worker_encoder is not None, "start_output_worker did not run"
    return _worker_encoder.encode(items)


@dataclass(frozen=True, slots=True)
class _Decided:
    """A decision and what every request decided alike shares, encoded once."""

    decision: Decision
    outcome: bytes  # the audit record's outcome fields
    stamp: bytes | None  # the log-store stamp (R4/R7), when the decision stores


# (request shape, controls at creation, (watermark state, misuse flag ids, deletion asked,
# facts read, waited long for them)): everything a request's decision depends on, so equal
# keys share one ``_Decided``.
_DecisionKey = tuple[
    RequestShape, DataControls, tuple[WatermarkState, tuple[str, ...], bool, bool, bool]
]
# Bound on remembered decisions (a few hundred bytes each); past it the memory starts again.
_MAX_DECIDED = 50_000


_STORES = tuple(_CANDIDATES.values())
_STORE_INPUT = {store: field for field, store in _CANDIDATES.items()}


def _readable_subject(is_request: bool, record: Mapping[str, Any]) -> tuple[str | None, str]:
    """R16: the id of a record that failed validation, when one can be read."""
    if is_request:
        request_id = record.get("request_id")
        if isinstance(request_id, str) and request_id:
            return request_id, "request"
        return None, "undecodable"
    dataset, index = record.get("dataset_id"), record.get("row_index")
    if isinstance(dataset, str) and dataset and isinstance(index, int):
        return f"{dataset}:{index}", "finetune_row"
    return None, "undecodable"


def _entry_value(topic: str, entry: CandidateEntry) -> bytes:
    """A candidate's store entry: ids and times, never content. marshal: the input topic and
    the entry's fields (str, int, bool), written and read back by this job only; a tenth of
    the CPU of JSON on the router's hot path."""
    return marshal.dumps((topic, *entry[1:]))


def _entry(candidate_id: str, value: bytes) -> CandidateEntry:
    _topic, *fields = marshal.loads(value)
    return CandidateEntry(candidate_id, *fields)


class DecisionMemory:
    """The decision layer's speed trick: requests of equal ``_DecisionKey`` (shape, controls
    at creation, facts) are decided alike, so their decision, encoded audit outcome and
    encoded log-store stamp are computed once and remembered (bounded)."""

    def __init__(self, config: PolicyConfig, encoder: OutputEncoder) -> None:
        self.config = config
        self.encoder = encoder
        self._decided: dict[_DecisionKey, _Decided] = {}

    def request(self, key: _DecisionKey) -> _Decided:
        """R1-R4, R7, R9, R11-R15 for one decision key (see ``RequestShape``)."""
        decided = self._decided.get(key)
        if decided is not None:
            return decided
        shape, controls, (state, flag_ids, deletion_requested, facts_read, waited) = key
        facts = RoutingFacts(
            watermark=state,
            misuse_flag_ids=flag_ids,
            deletion_requested=deletion_requested,
            facts_read=facts_read,
            waited_for_facts=waited,
        )
        decision = decide_request_shape(shape, controls, facts, self.config)
        stamp = log_store_stamp(decision, self.config) if decision.has(Route.LOG_STORE) else None
        decided = _Decided(
            decision,
            self.outcome(decision),
            None if stamp is None else self.encoder.stamp(stamp),
        )
        if len(self._decided) >= _MAX_DECIDED:
            self._decided.clear()
        self._decided[key] = decided
        return decided

    def outcome(self, decision: Decision) -> bytes:
        """R16: the audit fields a decision fixes (routes, rules, reasons, versions), encoded."""
        outcome = audit_outcome(
            job=JOB,
            routes=decision.routes,
            rule_ids=decision.rule_ids,
            reasons=decision.reasons,
            consent_version=decision.consent_version,
            policy_version=self.config.policy_version,
        )
        return self.encoder.outcome(outcome)


class Router:
    """The router job: state from compacted topics, a decision per record."""

    def __init__(
        self,
        config: PolicyConfig,
        contracts: Contracts,
        redactor: PersonalInformationRedactor | None = None,
        redaction_processes: int = 0,
    ) -> None:
        """``redaction_processes`` > 0 builds candidates in that many worker processes
        (with the default redactor); 0 builds them in this process with ``redactor``."""
        self.config = config
        self.topics = contracts.topics
        self.ledger = DataControlsLedger(config.defaults)
        self.holds = HoldIndex()
        # Per decision outcome (routes, rule ids): one cheap count per record on the hot path,
        # expanded into per-route counts only when asked (``stats``).
        self._outcomes: Counter[tuple[frozenset[str], tuple[str, ...]]] = Counter()
        codec = contracts.codec
        self._state_codecs: dict[str, Codec] = {
            self.topics.name(field): codec(field) for field in _STATE
        }
        self._encoder = OutputEncoder(config, {field: codec(field) for field in _ENCODED}, redactor)
        self._decisions = DecisionMemory(config, self._encoder)
        self._offload: Offload[OutputItem] | None = None
        if redaction_processes > 0:
            if redactor is not None:
                raise ValueError("worker processes use the default redactor")
            contracts_spec = {
                field: (codec(field).subject, codec(field).schema_text, codec(field).schema_id)
                for field in _ENCODED
            }
            self._offload = Offload(
                start_output_worker,
                encode_outputs,
                (config, contracts_spec),
                processes=redaction_processes,
            )
        self._bad_state: list[tuple[Source, bytes | None, str, str]] = []
        self._watermarks: list[tuple[ControlsWatermark, dict[tuple[str, int], int]]] = []
        self._state_reader: CompactedReader | None = None
        self.barrier: ReadBarrier | None = None
        self._facts = _FACTS_READ  # of the record in hand (``_gate``)
        # R15/R5: the orgs with a fact since the last look, whose candidates may have to be
        # taken back, and what names the facts in the audit records of retractions.
        self._late_orgs: set[str] = set()
        self._deletion_ids: dict[str, str] = {}
        self._fact_sources: dict[str, Source] = {}
        self._changelogs = {name: internal_topic(self.topics, JOB, name) for name in _STORES}
        self.retractions = 0
        self.spec = JobSpec(
            name=JOB,
            inputs=_INPUTS,
            outputs=tuple(field for field in _ENCODED if field not in _INPUTS),
            stores=tuple(StoreSpec(store, input=field) for field, store in _CANDIDATES.items()),
            punctuators=(
                Punctuator(0, self.refresh, per_partition=False),  # every turn, first
                Punctuator(_EXPIRE_EVERY_MS, self.expire_candidates, per_partition=False),
            ),
            invalid=(InvalidRecord, TypeError),
            subject_of=lambda topic, record: _readable_subject(
                topic == self.topics.request_logs, record
            ),
            # R17/R2 fail closed: a record that failed decoding or validation has no
            # trustworthy field, its org id included (a corrupted id can name another org,
            # or one without settings whose defaults say "no ZDR"), so its bytes are never
            # copied; it stays in its topic for that topic's retention, at its coordinates.
            withheld_rules=("R2",),
            gate=self._gate,
        )

    # --- state topics -------------------------------------------------------------
    def attach_state_reader(
        self, bootstrap_servers: str, group_id: str = "unused-state-reader"
    ) -> CompactedReader:
        self._state_reader = CompactedReader(
            bootstrap_servers,
            [self.topics.name(f) for f in _STATE],
            self.apply_state,
            group_id=group_id,
        )
        self.barrier = ReadBarrier(self._state_reader)
        return self._state_reader

    def apply_state(self, message: Message) -> None:
        source = source_of(message)
        value = message.value()
        if value is None:
            return  # a compacted-away entry; nothing to apply
        try:
            record = self._state_codecs[source.topic].decode(value)
            t = self.topics
            if source.topic == t.data_controls:
                self.ledger.apply(DataControlChange(**record))
            elif source.topic == t.controls_watermark:
                # R12: the watermark vouches for changes *published* before it; it only
                # counts once this worker has also *read* them (see refresh).
                ends = self._state_reader.end_offsets(t.data_controls) if self._state_reader else {}
                self._watermarks.append((ControlsWatermark(**record), ends))
            elif source.topic == t.misuse_flags:
                flag = validate_flag(record)
                if self.holds.apply_flag(flag) is not None:
                    self._late_orgs.add(flag.org_id)
                    self._fact_sources[flag.flag_id] = source
            elif source.topic == t.legal_holds:
                self.holds.apply_legal_hold(validate_legal_hold(record))
            elif source.topic == t.account_deletions:
                deletion = AccountDeletionRequest(**record)
                self.ledger.record_deletion(deletion.org_id, deletion.requested_at_ms)
                if self.ledger.deletion_requested_at(deletion.org_id) == deletion.requested_at_ms:
                    self._deletion_ids.setdefault(deletion.org_id, deletion.deletion_id)
                self._fact_sources[deletion.deletion_id] = source
                self._late_orgs.add(deletion.org_id)
        except (DecodeError, InvalidRecord, TypeError) as exc:
            reason = getattr(exc, "reason", "fields do not match contract")
            # R17: a bad control record is set aside and reported; the state stays as it was.
            self._bad_state.append((source, message.key(), reason, type(exc).__name__))

    def refresh(self, ctx: Context) -> None:
        """Every turn: read what the fact topics brought, advance the watermark and the read
        barrier, take back the candidates late facts cover, report bad control records (R17;
        written with the next batch, even if this one aborts)."""
        self._read_facts()
        self._retract_late(ctx)
        bad, self._bad_state = self._bad_state, []
        for source, key, reason, error_class in bad:
            ctx.dead_letter(reason, error_class, about=(source, key))

    def facts_before(self, messages: list[Message]) -> None:
        """With every batch read, before any of it is decided: mark it in the read barrier,
        then read the facts that are already here, so a batch whose facts were all read
        (the usual case) is decided in the same turn instead of being deferred to the
        next one."""
        if self.barrier is not None:
            self.barrier.mark(messages)
            self._read_facts()

    def _read_facts(self) -> None:
        reader = self._state_reader
        if reader is not None:
            reader.poll()
        while self._watermarks and (reader is None or reader.reached(self._watermarks[0][1])):
            self.ledger.advance_watermark(self._watermarks.pop(0)[0])
        if self.barrier is not None:
            self.barrier.advance()

    def _gate(self, ctx: Context) -> Defer | None:
        """R15/R5/R12: no decision ahead of the facts published before the record was read;
        past ``facts_stall_ms`` it is decided without them (fail closed)."""
        self._facts = _FACTS_READ
        if self.barrier is None:
            return None
        ready, waited_s = self.barrier.status(*ctx.source)
        if not ready and waited_s * 1000 < self.config.facts_stall_ms:
            return DEFER
        if not ready:
            self._facts = _FACTS_UNREAD
        elif waited_s * 1000 > self.config.facts_wait_audited_ms:
            self._facts = _FACTS_WAITED
        return None

    # --- late facts (R15, R5) ------------------------------------------------------
    def _index(self, store: KeyValueStore) -> CandidateIndex:
        """The candidates of one store, derived from its entries; when a partition is taken
        over (restored), its candidates are checked against every fact known now."""

        def build(restored: KeyValueStore) -> CandidateIndex:
            index = CandidateIndex()
            for key, value in restored.items():
                index.add(_entry(key.decode(), value))
            self._late_orgs.update(entry.org_id for entry in index)
            return index

        return store.view("candidates", build)

    def _remember(self, ctx: Context, field: str, entry: CandidateEntry) -> None:
        """R15/R5: a candidate produced, in the batch's transaction (its store's changelog)."""
        store = ctx.store(_CANDIDATES[field])
        self._index(store).add(entry)
        store.put(entry.candidate_id.encode(), _entry_value(ctx.source.topic, entry))

    def _retract_late(self, ctx: Context) -> None:
        owned = [
            (name, partition, store, self._index(store))
            for name in _STORES
            for partition, store in ctx.stores(name).items()
        ]
        if not self._late_orgs:
            return
        now = ctx.now()
        orgs, self._late_orgs = self._late_orgs, set()
        for org in orgs:
            deletion_at = self.ledger.deletion_requested_at(org)
            deletion = (
                None if deletion_at is None else (self._deletion_ids.get(org, ""), deletion_at)
            )
            flags = [h for h in self.holds.active(org) if h.kind == "misuse"]
            if deletion is None and not flags:
                continue
            for name, partition, store, index in owned:
                for entry in list(index.of_org(org)):
                    if entry.retracted:
                        continue
                    retraction = retraction_rules(entry, deletion, flags)
                    if retraction is not None:
                        self._retract(ctx, name, partition, store, index, entry, retraction, now)

    def _retract(
        self,
        ctx: Context,
        name: str,
        partition: int,
        store: KeyValueStore,
        index: CandidateIndex,
        entry: CandidateEntry,
        retraction: Retraction,
        now: int,
    ) -> None:
        """R15/R5: a candidate's retraction, its audit and its store mark, together."""
        record = training_retraction(entry, retraction, now, self.config.policy_version)
        source = next(
            (self._fact_sources[f] for f in retraction.fact_ids if f in self._fact_sources),
            Source(self._changelogs[name], partition, -1),
        )
        decision = Decision(
            routes=frozenset({Route.TRAINING_RETRACTION.value}),
            rule_ids=retraction.rule_ids,
            reasons=retraction.reasons,
        )
        subject = audit_subject(
            job=JOB,
            source=source,
            subject_id=entry.candidate_id,
            subject_kind="training_candidate",
            org_id=entry.org_id,
            decided_at_ms=now,
            decision_suffix=f"/retract/{entry.candidate_id}",
        )
        self.retractions += 1
        self._emit(ctx, "training_retractions", entry.candidate_id, record)
        outcome = self._decisions.outcome(decision)
        ctx.emit(
            "audit",
            entry.candidate_id,
            self._encoder.encode_one("audit_decided", (subject, outcome)),
        )
        self._outcomes[decision.routes, decision.rule_ids] += 1
        ctx.decided(decision.rule_ids)
        marked = entry._replace(retracted=True)
        index.add(marked)
        topic = self.topics.name(_STORE_INPUT[name])
        store.put(entry.candidate_id.encode(), _entry_value(topic, marked))

    def expire_candidates(self, ctx: Context) -> None:
        """Forget candidates past the retraction horizon (their store entries are deleted)."""
        before = ctx.now() - self.config.retraction_horizon_ms
        for name in _STORES:
            for store in ctx.stores(name).values():
                index = self._index(store)
                for entry in index.older_than(before):
                    index.discard(entry)
                    store.delete(entry.candidate_id.encode())

    # --- records ------------------------------------------------------------------
    def process(self, ctx: Context, record: dict[str, Any]) -> Defer | None:
        if ctx.source.topic == self.topics.request_logs:
            return self._route_request(ctx, record)
        return self._route_finetune_row(ctx, record)

    def _route_request(self, ctx: Context, record: dict[str, Any]) -> Defer | None:
        request = validate_request(record)
        now = ctx.now()
        state = watermark_state(
            request.created_at_ms, self.ledger.watermark_ms, now, self.config.watermark_stall_ms
        )
        if state == WatermarkState.WAITING and request.deployment == Deployment.SAAS:
            return DEFER  # R12: decided once every control change up to its creation is known
        controls = self.ledger.controls_at(request.org_id, request.created_at_ms)
        flags = self.holds.covering(
            request.org_id, request.api_key_id, request.request_id, request.created_at_ms, "misuse"
        )
        deletion_requested = self.ledger.deletion_requested_at(request.org_id) is not None
        flag_ids = tuple([h.hold_id for h in flags]) if flags else ()
        decided = self._decisions.request(
            (request_shape(request), controls, (state, flag_ids, deletion_requested, *self._facts))
        )
        decision = decided.decision
        self._emit(ctx, "usage_events", request.org_id, usage_event(request, self.config))
        if decided.stamp is not None:
            # R4: the request's own bytes plus the stamp; no re-encoding of the content
            raw = ctx.value
            stored = (
                None if raw is None else self._encoder.log_store_stamped.join(raw, decided.stamp)
            )
            if stored is None:  # written with another version of the request contract
                record_ = log_store_record(request, decision, self.config)
                stored = self._encoder.encode_one("log_store", record_)
            ctx.emit("log_store", request.request_id, stored)
        if decision.has(Route.TRAINING_CANDIDATE):
            # The validated request: unpickling it costs the offload a third of decoding the
            # bytes again (benchmarks/router_bench.py measured less CPU per record in all).
            candidate = (request, decision.consent_version)
            self._emit(ctx, "training_candidates", request.request_id, candidate)
            entry = CandidateEntry(
                request.request_id,
                "PROMPT_GENERATION",
                request.org_id,
                request.api_key_id,
                request.created_at_ms,
            )
            self._remember(ctx, "request_logs", entry)
        self._audit(ctx, request.request_id, "request", request.org_id, decided, now)
        return None

    def _route_finetune_row(self, ctx: Context, record: dict[str, Any]) -> Defer | None:
        row = validate_finetune_row(record)
        now = ctx.now()
        state = watermark_state(
            row.uploaded_at_ms, self.ledger.watermark_ms, now, self.config.watermark_stall_ms
        )
        if state == WatermarkState.WAITING:
            return DEFER
        controls = self.ledger.controls_at(row.org_id, row.uploaded_at_ms)
        flags = self.holds.covering(row.org_id, "", row.row_id, row.uploaded_at_ms, "misuse")
        facts = RoutingFacts(
            watermark=state,
            misuse_flag_ids=tuple(h.hold_id for h in flags),
            deletion_requested=self.ledger.deletion_requested_at(row.org_id) is not None,
            facts_read=self._facts[0],
            waited_for_facts=self._facts[1],
        )
        decision = decide_finetune_row(row, controls, facts, self.config)
        if decision.has(Route.TRAINING_CANDIDATE):
            candidate = (row, decision.consent_version)
            self._emit(ctx, "training_candidates", row.row_id, candidate)
            entry = CandidateEntry(row.row_id, "FINETUNE_ROW", row.org_id, "", row.uploaded_at_ms)
            self._remember(ctx, "finetune_rows", entry)
        decided = _Decided(decision, self._decisions.outcome(decision), None)
        self._audit(ctx, row.row_id, "finetune_row", row.org_id, decided, now)
        return None

    # --- outputs ------------------------------------------------------------------
    def close(self) -> None:
        """Stops the offload worker processes, if any, and the fact reader."""
        if self._offload is not None:
            self._offload.close()
        if self._state_reader is not None:
            self._state_reader.close()

    def _emit(self, ctx: Context, field: str, key: str, payload: Any) -> None:
        if self._offload is not None and field in _OFFLOADED:
            ctx.emit(field, key, self._offload.submit((field, payload)))
        else:
            ctx.emit(field, key, self._encoder.encode_one(field, payload))

    def _audit(
        self,
        ctx: Context,
        subject_id: str,
        kind: str,
        org_id: str | None,
        decided: _Decided,
        now: int,
    ) -> None:
        """R16: one audit record, a decision's encoded outcome joined to its subject."""
        subject = audit_subject(
            job=JOB,
            source=ctx.source,
            subject_id=subject_id,
            subject_kind=kind,
            org_id=org_id,
            decided_at_ms=now,
        )
        ctx.emit(
            "audit",
            subject_id,
            self._encoder.encode_one("audit_decided", (subject, decided.outcome)),
        )
        decision = decided.decision
        self._outcomes[decision.routes, decision.rule_ids] += 1
        ctx.decided(decision.rule_ids)

    @property
    def stats(self) -> Counter[str]:
        """Decisions, and records per route."""
        stats: Counter[str] = Counter()
        for (routes, _), n in self._outcomes.items():
            stats["decisions"] += n
            for route in routes:
                stats[route] += n
        return stats


def build_router_loop(
    settings: Settings,
    *,
    clock: Clock | None = None,
    group_id: str | None = None,
    metrics: JobMetrics | None = None,
    redaction_processes: int | None = None,
) -> tuple[Runtime, Router]:
    """One router worker on the runtime; ``redaction_processes`` defaults to the
    settings', else ``default_redaction_processes()``."""
    contracts = contracts_of(settings)
    if redaction_processes is None:
        redaction_processes = settings.redaction_processes
    if redaction_processes is None:
        redaction_processes = default_redaction_processes()
    router = Router(settings.policy, contracts, redaction_processes=redaction_processes)
    try:
        group = group_id or settings.topology.group(JOB)
        reader = router.attach_state_reader(settings.bootstrap_servers, f"{group}-state-reader")
        reader.catch_up()
        loop = runtime_of(
            router, settings, contracts=contracts, metrics=metrics, clock=clock, group_id=group
        )
    except BaseException:
        router.close()
        raise
    loop.on_read.append(router.facts_before)
    loop.on_close.append(router.close)
    return loop, router
