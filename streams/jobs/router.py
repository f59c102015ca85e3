"""The router job: every request log and fine-tune row routed exactly once.

Wires the pure policy (``streams.policy.routing``) to Kafka: the R12 ledger,
misuse flags, legal holds and deletions (the facts) come from compacted topics
read in full by every worker; request logs and fine-tune rows are consumed in a
consumer group and routed inside Kafka transactions
(``streams.kafka.transactional``). Outputs: log store (R4), training candidates
(R9-R11), their retractions (R15/R5), usage events (R3), audit (R16), dead
letters (R17).

No decision ahead of the facts: a record is decided only once this worker has
applied every fact published before it read the record (``ReadBarrier``); until
then its partition waits, and past ``facts_stall_ms`` it is decided fail closed.
A fact published later than requests it covers (a late deletion or flag)
retracts the training candidates they produced, within the retraction horizon
(``streams.policy.retraction``).

Run one worker:  python -m streams.jobs.router --worker-id 0
"""

from __future__ import annotations

import argparse
import logging
import marshal
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message

from streams.kafka.compacted import CompactedReader, ReadBarrier
from streams.kafka.metrics import JobMetrics, port_from_env
from streams.kafka.offload import Offload
from streams.kafka.serde import (
    Codec,
    Contracts,
    DecodeError,
    ExtendingCodec,
    SplicedCodec,
    registry_client,
)
from streams.kafka.stateful import StateReader, ensure_copartitioned_topic
from streams.kafka.topics import ROUTER, internal_topic
from streams.kafka.transactional import LoopConfig, Output, TransactionalLoop, source_of
from streams.policy.audit import (
    AUDIT_OUTCOME_FIELDS,
    Source,
    audit_outcome,
    audit_subject,
    dead_letter_decision,
)
from streams.policy.config import PolicyConfig, load_config
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
# How often candidates past the retraction horizon are forgotten.
_EXPIRE_EVERY_S = 60.0


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def default_redaction_processes() -> int:
    """``STREAMS_REDACTION_PROCESSES``, else one per core but the one the worker runs on."""
    configured = os.environ.get("STREAMS_REDACTION_PROCESSES")
    if configured is not None:
        return int(configured)
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


def _readable_subject(is_request: bool, record: dict[str, Any] | None) -> tuple[str | None, str]:
    """The id of a record that failed validation, when one can be read (R16)."""
    if record is None:
        return None, "undecodable"
    if is_request:
        request_id = record.get("request_id")
        if isinstance(request_id, str) and request_id:
            return request_id, "request"
        return None, "undecodable"
    dataset, index = record.get("dataset_id"), record.get("row_index")
    if isinstance(dataset, str) and dataset and isinstance(index, int):
        return f"{dataset}:{index}", "finetune_row"
    return None, "undecodable"


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


def candidates_topic(config: PolicyConfig) -> str:
    """The router's internal changelog of the candidates it produced:
    ``<prefix>router.candidates``, co-partitioned with the inputs."""
    return internal_topic(config.topics, ROUTER, "candidates")


class CandidateMemory:
    """R15/R5: the training candidates produced from the input partitions this worker owns,
    so that a late fact finds the ones it covers.

    Each candidate is also written, in the transaction that writes the candidate, to a
    compacted changelog (ids and times, never content) on the partition of its input
    record, so a worker that takes a partition over (or restarts) reads that partition's
    candidates back (``StateReader``: committed transactions only). A retraction marks its
    entry there too, so it is never written twice.
    """

    def __init__(self, topic: str, reader: StateReader | None) -> None:
        self.topic = topic
        self._reader = reader
        self._owned: dict[tuple[str, int], CandidateIndex] = {}
        self._read_back: list[CandidateIndex] = []  # read back since ``follow`` last ran

    def follow(self, assignment: Sequence[tuple[str, int]]) -> list[CandidateIndex]:
        """Forget partitions no longer owned, read newly owned ones back; returns what was
        read back since the last call (also by ``index``, for a record of a new partition)."""
        owned = set(assignment)
        for tp in [tp for tp in self._owned if tp not in owned]:
            del self._owned[tp]
        for tp in assignment:
            self.index(tp)
        read_back, self._read_back = self._read_back, []
        return read_back

    def index(self, tp: tuple[str, int]) -> CandidateIndex:
        index = self._owned.get(tp)
        if index is None:
            index = self._owned[tp] = CandidateIndex()
            if self._reader is not None:
                for key, value in self._reader.read(tp[1]).items():
                    topic, *fields = marshal.loads(value)
                    if topic == tp[0]:
                        index.add(CandidateEntry(key.decode(), *fields))
            self._read_back.append(index)
        return index

    def owned(self) -> list[tuple[tuple[str, int], CandidateIndex]]:
        return list(self._owned.items())

    def record(self, tp: tuple[str, int], entry: CandidateEntry) -> Output:
        self.index(tp).add(entry)
        return self._changelog(tp, entry)

    def _changelog(self, tp: tuple[str, int], entry: CandidateEntry) -> Output:
        # marshal: the input topic and the entry's fields (str, int, bool), written and read
        # back by this job only; a tenth of the CPU of JSON on the router's hot path.
        value = marshal.dumps((tp[0], *entry[1:]))
        return Output(self.topic, entry.candidate_id, value, tp[1])

    def retracted(self, tp: tuple[str, int], entry: CandidateEntry) -> Output:
        marked = entry._replace(retracted=True)
        self.index(tp).add(marked)
        return self._changelog(tp, marked)

    def expire(self, created_before_ms: int) -> list[Output]:
        """Forget candidates past the retraction horizon; tombstone their changelog entries."""
        outputs = []
        for (_, partition), index in self._owned.items():
            for entry in index.older_than(created_before_ms):
                index.discard(entry)
                outputs.append(Output(self.topic, entry.candidate_id, None, partition))
        return outputs

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


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


class Router:
    """The router's processor: state from compacted topics, decisions per record."""

    def __init__(
        self,
        config: PolicyConfig,
        contracts: Contracts,
        redactor: PersonalInformationRedactor | None = None,
        clock: Callable[[], int] = wall_clock_ms,
        metrics: JobMetrics | None = None,
        redaction_processes: int = 0,
    ) -> None:
        """``redaction_processes`` > 0 builds candidates in that many worker processes
        (with the default redactor); 0 builds them in this process with ``redactor``."""
        self.config = config
        self.topics = config.topics
        self.clock = clock
        self.ledger = DataControlsLedger(config.defaults)
        self.holds = HoldIndex()
        # Per decision outcome (routes, rule ids): one cheap count per record on the hot path,
        # expanded into per-route and per-rule counts only when asked (stats, rules).
        self._outcomes: Counter[tuple[frozenset[str], tuple[str, ...]]] = Counter()
        self.inputs: Counter[str] = Counter()
        self.dead_letters: Counter[str] = Counter()
        self.metrics = metrics
        self.lag_source: Any = None  # the group consumer, for the lag gauge
        self._published: dict[str, Counter[str]] = {}
        self._next_publish = 0.0
        codec = contracts.codec
        self._codecs: dict[str, Codec] = {
            getattr(self.topics, field): codec(field) for field in _INPUTS + _STATE
        }
        self._topic = {field: getattr(self.topics, field) for field in _ENCODED}
        self._topic["audit_decided"] = self.topics.audit
        self._decided: dict[_DecisionKey, _Decided] = {}
        codecs = {field: codec(field) for field in _ENCODED}
        self._encoder = OutputEncoder(config, codecs, redactor)
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
        self._state_outputs: list[Output] = []
        self._watermarks: list[tuple[ControlsWatermark, dict[tuple[str, int], int]]] = []
        self._state_reader: CompactedReader | None = None
        self.barrier: ReadBarrier | None = None
        # R15/R5: candidates produced (None: not remembered, no retractions) and the orgs
        # with a fact since the last look, whose candidates may have to be taken back.
        self.candidates: CandidateMemory | None = None
        self._late_orgs: set[str] = set()
        self._deletion_ids: dict[str, str] = {}
        self._fact_sources: dict[str, Source] = {}
        self._next_expiry = 0.0
        self.retractions = 0
        # The input partitions this worker owns now (the group consumer's assignment).
        self.assignment: Callable[[], list[tuple[str, int]]] | None = None

    # --- state topics -------------------------------------------------------------
    def attach_state_reader(
        self, bootstrap_servers: str, group_id: str = "unused-state-reader"
    ) -> CompactedReader:
        self._state_reader = CompactedReader(
            bootstrap_servers,
            [getattr(self.topics, f) for f in _STATE],
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
            record = self._codecs[source.topic].decode(value)
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
            self._state_outputs.extend(
                self._dead_letter(source, message.key(), None, reason, type(exc).__name__, None)
            )

    def refresh(self) -> list[Output]:
        reader = self._state_reader
        if reader is not None:
            reader.poll()
        while self._watermarks and (reader is None or reader.reached(self._watermarks[0][1])):
            self.ledger.advance_watermark(self._watermarks.pop(0)[0])
        if self.barrier is not None:
            self.barrier.advance()
        if self.candidates is not None:
            if self.assignment is not None:
                self.follow_assignment(self.assignment())
            self._retract_late()
        outputs, self._state_outputs = self._state_outputs, []
        if self.metrics is not None and time.monotonic() >= self._next_publish:
            self.publish_metrics(self.metrics)
        return outputs

    # --- late facts (R15, R5) ------------------------------------------------------
    def follow_assignment(self, assignment: Sequence[tuple[str, int]]) -> None:
        """Keep the candidates of the owned input partitions; a partition taken over is read
        back and checked against every fact known now (one may have come meanwhile)."""
        if self.candidates is None:
            return
        for index in self.candidates.follow(assignment):
            self._late_orgs.update(entry.org_id for entry in index)

    def _retract_late(self) -> None:
        memory = self.candidates
        assert memory is not None
        now = self.clock()
        if time.monotonic() >= self._next_expiry:
            self._next_expiry = time.monotonic() + _EXPIRE_EVERY_S
            self._state_outputs += memory.expire(now - self.config.retraction_horizon_ms)
        if not self._late_orgs:
            return
        orgs, self._late_orgs = self._late_orgs, set()
        for org in orgs:
            deletion_at = self.ledger.deletion_requested_at(org)
            deletion = (
                None if deletion_at is None else (self._deletion_ids.get(org, ""), deletion_at)
            )
            flags = [h for h in self.holds.active(org) if h.kind == "misuse"]
            if deletion is None and not flags:
                continue
            for tp, index in memory.owned():
                for entry in index.of_org(org):
                    if entry.retracted:
                        continue
                    retraction = retraction_rules(entry, deletion, flags)
                    if retraction is not None:
                        self._state_outputs += self._retract(tp, entry, retraction, now)

    def _retract(
        self, tp: tuple[str, int], entry: CandidateEntry, retraction: Retraction, now: int
    ) -> list[Output]:
        """R15/R5: a candidate's retraction, its audit and its changelog mark, together."""
        assert self.candidates is not None
        record = training_retraction(entry, retraction, now, self.config.policy_version)
        source = next(
            (self._fact_sources[f] for f in retraction.fact_ids if f in self._fact_sources),
            Source(self.candidates.topic, tp[1], -1),
        )
        outcome = self._outcome(
            Decision(
                routes=frozenset({Route.TRAINING_RETRACTION.value}),
                rule_ids=retraction.rule_ids,
                reasons=retraction.reasons,
            )
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
        self._outcomes[frozenset({Route.TRAINING_RETRACTION.value}), retraction.rule_ids] += 1
        return [
            self._emit("training_retractions", entry.candidate_id, record),
            self._emit("audit_decided", entry.candidate_id, (subject, outcome)),
            self.candidates.retracted(tp, entry),
        ]

    def publish_metrics(self, metrics: JobMetrics) -> None:
        """Counters are kept in plain Counters on the hot path and pushed once a second."""
        self._next_publish = time.monotonic() + 1.0
        for name, counts, push in (
            ("in", self.inputs, metrics.record_in),
            ("out", self.stats, metrics.record_out),
            ("rules", self.rules, metrics.decision),
            ("dead", self.dead_letters, metrics.dead_letter),
        ):
            seen = self._published.setdefault(name, Counter())
            for key, total in counts.items():
                if key != "decisions" and total > seen[key]:
                    push(key, total - seen[key])
                    seen[key] = total
        if self.lag_source is not None:
            metrics.observe_consumer_lag(self.lag_source)

    # --- records ------------------------------------------------------------------
    def process(self, message: Message) -> list[Output] | None:
        source = source_of(message)
        facts = _FACTS_READ
        if self.barrier is not None:
            # R15/R5/R12: no decision ahead of the facts published before the record was read.
            ready, waited_s = self.barrier.status(*source)
            if not ready and waited_s * 1000 < self.config.facts_stall_ms:
                return None
            if not ready:
                facts = _FACTS_UNREAD
            elif waited_s * 1000 > self.config.facts_wait_audited_ms:
                facts = _FACTS_WAITED
        self.inputs[source.topic] += 1
        value = message.value()
        if value is not None and len(value) > self.config.max_record_bytes:
            return self._dead_letter(
                source, message.key(), None, "oversize record", "Oversize", None
            )
        codec = self._codecs[source.topic]
        try:
            record = codec.decode(value)
        except DecodeError as exc:
            return self._dead_letter(source, message.key(), value, exc.reason, "DecodeError", None)
        try:
            if source.topic == self.topics.request_logs:
                return self._route_request(source, record, value, facts)
            return self._route_finetune_row(source, record, facts)
        except InvalidRecord as exc:
            return self._dead_letter(
                source, message.key(), value, exc.reason, "InvalidRecord", record
            )
        except TypeError:
            return self._dead_letter(
                source,
                message.key(),
                value,
                "fields do not match contract",
                "TypeError",
                record,
            )

    def _route_request(
        self,
        source: Source,
        record: dict[str, Any],
        raw: bytes | None = None,
        facts: tuple[bool, bool] = (True, False),
    ) -> list[Output] | None:
        request = validate_request(record)
        now = self.clock()
        state = watermark_state(
            request.created_at_ms, self.ledger.watermark_ms, now, self.config.watermark_stall_ms
        )
        if state == WatermarkState.WAITING and request.deployment == Deployment.SAAS:
            return None  # R12: decided once every control change up to its creation is known
        controls = self.ledger.controls_at(request.org_id, request.created_at_ms)
        flags = self.holds.covering(
            request.org_id, request.api_key_id, request.request_id, request.created_at_ms, "misuse"
        )
        deletion_requested = self.ledger.deletion_requested_at(request.org_id) is not None
        flag_ids = tuple([h.hold_id for h in flags]) if flags else ()
        key = (request_shape(request), controls, (state, flag_ids, deletion_requested, *facts))
        decided = self._decided.get(key) or self._decide(key)
        decision = decided.decision
        outputs = [self._emit("usage_events", request.org_id, usage_event(request, self.config))]
        if decided.stamp is not None:
            # R4: the request's own bytes plus the stamp; no re-encoding of the content
            stored = (
                None if raw is None else self._encoder.log_store_stamped.join(raw, decided.stamp)
            )
            if stored is None:  # written with another version of the request contract
                record_ = log_store_record(request, decision, self.config)
                stored = self._encoder.encode_one("log_store", record_)
            outputs.append(Output(self._topic["log_store"], request.request_id, stored))
        if decision.has(Route.TRAINING_CANDIDATE):
            # The validated request: unpickling it costs the offload a third of decoding the
            # bytes again (benchmarks/router_bench.py measured less CPU per record in all).
            candidate = (request, decision.consent_version)
            outputs.append(self._emit("training_candidates", request.request_id, candidate))
            if self.candidates is not None:
                entry = CandidateEntry(
                    request.request_id,
                    "PROMPT_GENERATION",
                    request.org_id,
                    request.api_key_id,
                    request.created_at_ms,
                )
                outputs.append(self.candidates.record(source[:2], entry))
        outputs.append(
            self._audit(source, request.request_id, "request", request.org_id, decided.outcome, now)
        )
        self._count(decision)
        return outputs

    def _decide(self, key: _DecisionKey) -> _Decided:
        """R1-R4, R7, R9, R11-R15 for one decision key (see ``RequestShape``), remembered."""
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
            self._outcome(decision),
            None if stamp is None else self._encoder.stamp(stamp),
        )
        if len(self._decided) >= _MAX_DECIDED:
            self._decided.clear()
        self._decided[key] = decided
        return decided

    def _route_finetune_row(
        self, source: Source, record: dict[str, Any], facts: tuple[bool, bool] = (True, False)
    ) -> list[Output] | None:
        row = validate_finetune_row(record)
        now = self.clock()
        state = watermark_state(
            row.uploaded_at_ms, self.ledger.watermark_ms, now, self.config.watermark_stall_ms
        )
        if state == WatermarkState.WAITING:
            return None
        controls = self.ledger.controls_at(row.org_id, row.uploaded_at_ms)
        flags = self.holds.covering(row.org_id, "", row.row_id, row.uploaded_at_ms, "misuse")
        routing_facts = RoutingFacts(
            watermark=state,
            misuse_flag_ids=tuple(h.hold_id for h in flags),
            deletion_requested=self.ledger.deletion_requested_at(row.org_id) is not None,
            facts_read=facts[0],
            waited_for_facts=facts[1],
        )
        decision = decide_finetune_row(row, controls, routing_facts, self.config)
        outputs = []
        if decision.has(Route.TRAINING_CANDIDATE):
            candidate = (row, decision.consent_version)
            outputs.append(self._emit("training_candidates", row.row_id, candidate))
            if self.candidates is not None:
                entry = CandidateEntry(
                    row.row_id, "FINETUNE_ROW", row.org_id, "", row.uploaded_at_ms
                )
                outputs.append(self.candidates.record(source[:2], entry))
        outcome = self._outcome(decision)
        outputs.append(self._audit(source, row.row_id, "finetune_row", row.org_id, outcome, now))
        self._count(decision)
        return outputs

    # --- outputs ------------------------------------------------------------------
    def close(self) -> None:
        """Stops the offload worker processes, if any."""
        if self._offload is not None:
            self._offload.close()
        if self.candidates is not None:
            self.candidates.close()
        if self._state_reader is not None:
            self._state_reader.close()

    def _emit(self, field: str, key: str, payload: Any) -> Output:
        if self._offload is not None and field in _OFFLOADED:
            return Output(self._topic[field], key, self._offload.submit((field, payload)))
        return Output(self._topic[field], key, self._encoder.encode_one(field, payload))

    def _outcome(self, decision: Decision) -> bytes:
        """R16: the audit fields a decision fixes (routes, rules, reasons, versions), encoded."""
        outcome = audit_outcome(
            job=JOB,
            routes=decision.routes,
            rule_ids=decision.rule_ids,
            reasons=decision.reasons,
            consent_version=decision.consent_version,
            policy_version=self.config.policy_version,
        )
        return self._encoder.outcome(outcome)

    def _audit(
        self,
        source: Source,
        subject_id: str,
        kind: str,
        org_id: str | None,
        outcome: bytes,
        now: int,
    ) -> Output:
        """R16: one audit record, a decision's encoded ``outcome`` joined to its subject."""
        subject = audit_subject(
            job=JOB,
            source=source,
            subject_id=subject_id,
            subject_kind=kind,
            org_id=org_id,
            decided_at_ms=now,
        )
        return self._emit("audit_decided", subject_id, (subject, outcome))

    def _dead_letter(
        self,
        source: Source,
        key: bytes | None,
        value: bytes | None,
        reason: str,
        error_class: str,
        record: dict[str, Any] | None,
    ) -> list[Output]:
        """R17: set the record aside with its reason and coordinates, never its bytes.

        R2 fail closed: a record that failed decoding or validation has no trustworthy
        field, its org id included. A corrupted id can name another org, or one without
        recorded settings, whose defaults say "no ZDR". So nothing can show positively that
        its org is not ZDR, and its content is withheld. The input stays in its topic for
        that topic's retention, where the coordinates find it.

        R16: a record whose id is readable is audited under that id (``streams explain``
        finds it), with its coordinates; the ids are as read, unverified."""
        org_id = record.get("org_id") if record else None
        org_id = org_id if isinstance(org_id, str) and org_id else None
        is_request = source.topic == self.topics.request_logs
        subject_id, subject_kind = _readable_subject(is_request, record)
        rule_ids = ("R17", "R2")
        letter, audit = dead_letter_decision(
            job=JOB,
            source=source,
            reason=reason,
            error_class=error_class,
            org_id=org_id,
            original_key=key,
            original_value=value,
            keep_content=False,
            decided_at_ms=self.clock(),
            policy_version=self.config.policy_version,
            rule_ids=rule_ids,
            subject_id=subject_id,
            subject_kind=subject_kind,
        )
        self.dead_letters[error_class] += 1
        self._outcomes[frozenset({Route.DEAD_LETTER.value}), rule_ids] += 1
        log.warning("dead letter %s: %s", source.id, reason)
        return [
            self._emit("dead_letters", source.id, letter),
            self._emit("audit", subject_id or source.id, audit),
        ]

    def _count(self, decision: Decision) -> None:
        self._outcomes[decision.routes, decision.rule_ids] += 1

    @property
    def stats(self) -> Counter[str]:
        """Decisions, and records per route."""
        stats: Counter[str] = Counter()
        for (routes, _), n in self._outcomes.items():
            stats["decisions"] += n
            for route in routes:
                stats[route] += n
        return stats

    @property
    def rules(self) -> Counter[str]:
        """Decisions per rule id."""
        rules: Counter[str] = Counter()
        for (_, rule_ids), n in self._outcomes.items():
            for rule in rule_ids:
                rules[rule] += n
        return rules


def build_router_loop(
    bootstrap_servers: str,
    registry_url: str,
    config: PolicyConfig,
    worker_id: str = "0",
    clock: Callable[[], int] = wall_clock_ms,
    group_id: str | None = None,
    metrics: JobMetrics | None = None,
    exit_when_stuck_s: float | None = None,
    redaction_processes: int | None = None,
) -> tuple[TransactionalLoop, Router]:
    """One router worker; ``redaction_processes`` defaults to
    ``default_redaction_processes()``."""
    contracts = Contracts(registry_client(registry_url), config.topics)
    # Registering every contract up front fails fast on an incompatible registry state,
    # and gives every process the same schema ids even on an in-memory registry.
    contracts.register_all()
    if redaction_processes is None:
        redaction_processes = default_redaction_processes()
    router = Router(
        config, contracts, clock=clock, metrics=metrics, redaction_processes=redaction_processes
    )
    group = group_id or config.topics.request_logs.removesuffix("request-logs") + "router"
    reader = router.attach_state_reader(bootstrap_servers, f"{group}-state-reader")
    reader.catch_up()
    changelog = ensure_copartitioned_topic(
        bootstrap_servers, candidates_topic(config), config.topics.request_logs
    )
    router.candidates = CandidateMemory(
        changelog, StateReader(bootstrap_servers, changelog, group_prefix=group)
    )
    loop = TransactionalLoop(
        LoopConfig(
            bootstrap_servers=bootstrap_servers,
            group_id=group,
            # Stable per worker: a restarted worker fences its dead predecessor.
            transactional_id=f"{group}-{worker_id}",
            input_topics=[getattr(config.topics, f) for f in _INPUTS],
            exit_when_stuck_s=exit_when_stuck_s,
        ),
        router,
    )
    router.lag_source = loop.consumer
    consumer = loop.consumer
    router.assignment = lambda: [(tp.topic, tp.partition) for tp in consumer.assignment()]
    assert router.barrier is not None
    loop.on_read.append(router.barrier.mark)
    loop.on_close.append(router.close)
    return loop, router


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one router worker.")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--registry", default=os.environ.get("SCHEMA_REGISTRY_URL"))
    parser.add_argument("--worker-id", default=os.environ.get("STREAMS_WORKER_ID", "0"))
    args = parser.parse_args(argv)
    if not args.bootstrap or not args.registry:
        parser.error("--bootstrap and --registry (or their environment variables) are required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    metrics = JobMetrics(JOB)
    metrics.serve(port_from_env())
    loop, router = build_router_loop(
        args.bootstrap,
        args.registry,
        load_config(),
        args.worker_id,
        metrics=metrics,
        exit_when_stuck_s=float(os.environ.get("STREAMS_EXIT_WHEN_STUCK_S", "60")),
    )
    loop.install_signal_handlers()
    log.info("router worker %s started", args.worker_id)
    loop.run()
    log.info("router worker %s stopped: %s", args.worker_id, dict(router.stats))


if __name__ == "__main__":
    main()
