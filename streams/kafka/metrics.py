"""Operational metrics of a job, in the Prometheus text format.

One ``JobMetrics`` per job process, with its own ``CollectorRegistry`` (two jobs in one
process, as in the demo or the tests, never share counters) and an optional HTTP
endpoint (``serve``) on a configurable port::

    metrics = JobMetrics("usage")
    metrics.serve(port_from_env())        # GET http://127.0.0.1:<port>/metrics
    metrics.record_in(topic)              # one record consumed
    metrics.record_out(route)             # one record written, per route/output
    metrics.decision("R3")                # one decision, per rule id
    metrics.dead_letter("DecodeError")    # R17, per reason class
    metrics.lag(partition, value)         # consumer lag per input partition
    metrics.state_size(store, entries)    # entries of a managed state store
    metrics.observe_consumer_lag(consumer)  # ... computed from a confluent-kafka consumer

Label values are operational names only (topic, route, rule id, error class,
partition). R2/R3: never a prompt, document, generation, IP, API key, user or
request id; ``safe_label`` enforces a conservative shape, so a caller that passes
anything that looks like free text gets "other" instead of a new series.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, start_http_server

log = logging.getLogger(__name__)

DISABLED = -1
_LABEL = re.compile(r"^[A-Za-z0-9_.:\-]{1,120}$")
_MAX_SERIES_PER_LABEL = 1000  # guard against unbounded cardinality


def safe_label(value: object) -> str:
    """An operational label value, or "other" if it could be free text."""
    text = str(value)
    return text if _LABEL.match(text) else "other"


def port_from_env(variable: str = "STREAMS_METRICS_PORT", default: int = 0) -> int:
    """The metrics port: 0 picks a free port, a negative value or "off" disables the endpoint."""
    raw = os.environ.get(variable, "").strip().lower()
    if not raw:
        return default
    if raw in ("off", "none", "disabled"):
        return DISABLED
    return int(raw)


class JobMetrics:
    def __init__(self, job: str, registry: CollectorRegistry | None = None) -> None:
        self.job = safe_label(job)
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.port: int | None = None
        self._server: Any = None
        self._seen: dict[str, set[str]] = {}
        self._last_lag_check = 0.0
        r = self.registry
        self._in = Counter("streams_records_in", "Records consumed", ["job", "topic"], registry=r)
        self._out = Counter(
            "streams_records_out", "Records written, per route", ["job", "route"], registry=r
        )
        self._decisions = Counter(
            "streams_decisions", "Decisions, per rule id", ["job", "rule"], registry=r
        )
        self._dead = Counter(
            "streams_dead_letters",
            "Dead letters (R17), per reason class",
            ["job", "reason"],
            registry=r,
        )
        self._lag = Gauge(
            "streams_consumer_lag",
            "Records not yet consumed, per input partition",
            ["job", "topic", "partition"],
            registry=r,
        )
        self._state = Gauge(
            "streams_state_entries",
            "Entries in a managed state store (all owned partitions)",
            ["job", "store"],
            registry=r,
        )
        self._up = Gauge("streams_up", "1 while the job runs", ["job"], registry=r)
        self._up.labels(self.job).set(1)
        self._deletion_bound = Gauge(
            "streams_deletion_bound_seconds",
            "R4/R15: how long deleted content may stay readable (STREAMS_DELETION_BOUND_MS)",
            ["job"],
            registry=r,
        )
        self._deleted_readable = Gauge(
            "streams_deleted_content_readable_oldest_seconds",
            "R4/R15: age of the oldest deleted log-store value still readable on the broker "
            "(0 when none); alert when it nears the bound",
            ["job"],
            registry=r,
        )

        self._facts_behind = Gauge(
            "streams_facts_behind_seconds",
            "R4/R5/R6/R15: how far behind the job's clock the instant is up to which every "
            "published flag, hold and deletion is applied; deletions wait for it, so alert "
            "when it nears the deletion bound",
            ["job"],
            registry=r,
        )

    # --- helpers -----------------------------------------------------------------------
    def _label(self, kind: str, value: object) -> str:
        label = safe_label(value)
        seen = self._seen.setdefault(kind, set())
        if label not in seen:
            if len(seen) >= _MAX_SERIES_PER_LABEL:
                return "other"
            seen.add(label)
        return label

    def deletion(self, bound_s: float, oldest_readable_s: float) -> None:
        self._deletion_bound.labels(self.job).set(bound_s)
        self._deleted_readable.labels(self.job).set(oldest_readable_s)

    def facts_behind(self, seconds: float) -> None:
        self._facts_behind.labels(self.job).set(seconds)

    def record_in(self, topic: str, n: int = 1) -> None:
        self._in.labels(self.job, self._label("topic", topic)).inc(n)

    def record_out(self, route: str, n: int = 1) -> None:
        self._out.labels(self.job, self._label("route", route)).inc(n)

    def decision(self, rule_id: str, n: int = 1) -> None:
        self._decisions.labels(self.job, self._label("rule", rule_id)).inc(n)

    def dead_letter(self, reason_class: str, n: int = 1) -> None:
        self._dead.labels(self.job, self._label("reason", reason_class)).inc(n)

    def lag(self, partition: int | str, value: int, topic: str = "") -> None:
        self._lag.labels(
            self.job, self._label("topic", topic or "-"), self._label("partition", partition)
        ).set(max(0, int(value)))

    def state_size(self, store: str, entries: int) -> None:
        self._state.labels(self.job, self._label("store", store)).set(entries)

    def observe_consumer_lag(self, consumer: Any, every_s: float = 5.0) -> None:
        """Lag of each assigned partition of a confluent-kafka consumer (at most every ``every_s``).

        Lag = end offset (the last stable offset for a read_committed consumer) minus the
        consumer's position. Errors are logged, never raised: metrics never stop a job.
        """
        now = time.monotonic()
        if now - self._last_lag_check < every_s:
            return
        self._last_lag_check = now
        try:
            assignment = consumer.assignment()
            if not assignment:
                return
            for tp in consumer.position(assignment):
                _, high = consumer.get_watermark_offsets(tp, timeout=1.0, cached=False)
                position = tp.offset if tp.offset >= 0 else 0
                self.lag(tp.partition, high - position, tp.topic)
        except Exception as exc:  # metrics are best effort
            log.debug("lag check failed: %s", type(exc).__name__)

    # --- exposition ----------------------------------------------------------------------
    def exposition(self) -> bytes:
        """The current metrics in the Prometheus text format."""
        return bytes(generate_latest(self.registry))

    def serve(self, port: int = 0, addr: str | None = None) -> int | None:
        """Start the HTTP endpoint (``/metrics``); returns the bound port, None if disabled."""
        if port < 0:
            return None
        addr = addr or os.environ.get("STREAMS_METRICS_ADDR", "127.0.0.1")
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        self.port = int(server.server_address[1])
        log.info("metrics endpoint on http://%s:%d/metrics", addr, self.port)
        port_file = os.environ.get("STREAMS_METRICS_PORT_FILE")
        if port_file:
            tmp = f"{port_file}.tmp"
            with open(tmp, "w") as out:
                out.write(str(self.port))
            os.replace(tmp, port_file)
        return self.port

    def stop(self) -> None:
        self._up.labels(self.job).set(0)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
