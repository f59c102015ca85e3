"""What every job's wiring shares: the policy's audit trail, and a worker's life.

``streams run <job>`` (``streams.cli``) reads the ``Settings`` once, builds the job with
its module's ``build_job(settings)`` and runs it here on ``streams.kafka.runtime``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from streams.kafka.metrics import DISABLED, JobMetrics
from streams.kafka.runtime import Clock, Job, Runtime
from streams.kafka.serde import Contracts, registry_client
from streams.kafka.state import DiskStores, MemoryStore, StoreBackend
from streams.policy.audit import audit_record, dead_letter_decision
from streams.policy.config import PolicyConfig
from streams.settings import Settings

log = logging.getLogger("streams.jobs")


class PolicyAuditTrail:
    """The runtime's ``AuditTrail`` (its protocol spells out the fields): R16 audit and R17
    dead-letter records as the policy defines them (``streams.policy.audit``), stamped with
    the policy version."""

    def __init__(self, config: PolicyConfig) -> None:
        self.policy_version = config.policy_version

    def decision(self, **fields: Any) -> Mapping[str, Any]:
        return audit_record(policy_version=self.policy_version, **fields)

    def dead_letter(self, **fields: Any) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        return dead_letter_decision(policy_version=self.policy_version, **fields)


def contracts_of(settings: Settings) -> Contracts:
    """Every contract of the catalogue, registered: fails fast on an incompatible registry,
    and gives every process the same schema ids even on an in-memory registry."""
    contracts = Contracts(registry_client(settings.registry_url), settings.topology)
    contracts.register_all()
    return contracts


def runtime_of(
    job: Job,
    settings: Settings,
    *,
    contracts: Contracts | None = None,
    metrics: JobMetrics | None = None,
    clock: Clock | None = None,
    group_id: str | None = None,
    backend: StoreBackend | DiskStores = MemoryStore,
) -> Runtime:
    """One worker of ``job`` on the runtime, connected as ``settings`` say."""
    return Runtime(
        job,
        contracts or contracts_of(settings),
        PolicyAuditTrail(settings.policy),
        settings.connection(),
        metrics=metrics,
        clock=clock or settings.clock(),
        group_id=group_id,
        backend=backend,
    )


def serve(runtime: Runtime, settings: Settings) -> None:
    """Run a worker until SIGTERM/SIGINT, with its metrics endpoint, then close it."""
    name = runtime.job.spec.name
    if settings.metrics_port != DISABLED:
        runtime.metrics.serve(settings.metrics_port)
    runtime.install_signal_handlers()
    log.info("%s worker %s started", name, settings.worker_id)
    try:
        runtime.run()
    finally:
        runtime.metrics.stop()
    log.info("%s worker %s stopped: %s", name, settings.worker_id, runtime.summary())
