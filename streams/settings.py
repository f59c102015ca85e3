"""The settings of a worker, read once: where it connects, who it is, its knobs.

``streams run <job>`` builds one ``Settings`` from its flags and the environment and hands
it to the job; nothing else reads the environment for these. The policy's own knobs are
``PolicyConfig`` (``streams.policy.config.load_config``), carried here as ``policy``; the
topic names are the ``Topology`` of the topic prefix.

Environment (a flag of ``streams`` wins over its variable):

    KAFKA_BOOTSTRAP_SERVERS      --bootstrap      the brokers
    SCHEMA_REGISTRY_URL          --registry       the schema registry
    STREAMS_WORKER_ID            --worker-id      stable per worker: fences its predecessor
    STREAMS_TOPIC_PREFIX                          every topic, group and id under a prefix
    STREAMS_REPLICATION_FACTOR                    copies of every topic: auto (3 on 3+
    STREAMS_MIN_INSYNC_REPLICAS                   brokers, min ISR 2; else 1 and 1) or counts
    STREAMS_PARTITIONS                            partitions of the scaled topics (6)
    STREAMS_METRICS_PORT                          Prometheus endpoint; 0 any free port, off
    STREAMS_EXIT_WHEN_STUCK_S                     exit when a transaction is stuck (60 s)
    STREAMS_REDACTION_PROCESSES                   router: offload processes (cores - 1)
    STREAMS_STATE_DIR                             retention: its on-disk state (RocksDB)
    STREAMS_CLOCK_FILE                            tests: "now" read from this file
    STREAMS_TICK_S, STREAMS_TICK_LIMIT            retention: expiry ticks and their size

The client security settings (``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_*``) are read where
the clients are configured (``streams.kafka.clients``), so a password never sits in here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from streams.kafka.metrics import DISABLED
from streams.kafka.runtime import Clock, Connection, FileClock, wall_clock_ms
from streams.kafka.topics import Durability, Topology
from streams.policy.config import PolicyConfig, load_config


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the setting, never a secret."""


@dataclass(frozen=True, slots=True)
class Settings:
    bootstrap_servers: str
    registry_url: str
    topology: Topology = field(default_factory=Topology)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    durability: Durability = field(default_factory=Durability)
    worker_id: str = "0"
    metrics_port: int = DISABLED
    exit_when_stuck_s: float | None = None
    redaction_processes: int | None = None  # None: one per core but one
    state_dir: Path | None = None
    clock_file: Path | None = None
    tick_interval_s: float = 1.0
    tick_limit: int = 2000

    @classmethod
    def read(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        bootstrap_servers: str | None = None,
        registry_url: str | None = None,
        worker_id: str | None = None,
    ) -> Settings:
        """From the environment; the arguments (the command's flags) win over it."""
        env = os.environ if environ is None else environ

        def text(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        bootstrap = bootstrap_servers or text("KAFKA_BOOTSTRAP_SERVERS")
        registry = registry_url or text("SCHEMA_REGISTRY_URL")
        if not bootstrap or not registry:
            raise SettingsError(
                "set --bootstrap/--registry or KAFKA_BOOTSTRAP_SERVERS/SCHEMA_REGISTRY_URL"
            )
        try:
            port = text("STREAMS_METRICS_PORT")
            if port is None:
                metrics_port = 0
            elif port.lower() in ("off", "none", "disabled"):
                metrics_port = DISABLED
            else:
                metrics_port = int(port)
            processes = text("STREAMS_REDACTION_PROCESSES")
            state_dir, clock_file = text("STREAMS_STATE_DIR"), text("STREAMS_CLOCK_FILE")
            return cls(
                bootstrap_servers=bootstrap,
                registry_url=registry,
                topology=Topology(text("STREAMS_TOPIC_PREFIX") or ""),
                policy=load_config(),
                durability=Durability.read(env),
                worker_id=worker_id or text("STREAMS_WORKER_ID") or "0",
                metrics_port=metrics_port,
                exit_when_stuck_s=float(text("STREAMS_EXIT_WHEN_STUCK_S") or "60"),
                redaction_processes=None if processes is None else int(processes),
                state_dir=None if state_dir is None else Path(state_dir),
                clock_file=None if clock_file is None else Path(clock_file),
                tick_interval_s=float(text("STREAMS_TICK_S") or "1.0"),
                tick_limit=int(text("STREAMS_TICK_LIMIT") or "2000"),
            )
        except ValueError as exc:
            raise SettingsError(f"malformed setting: {exc}") from None

    def clock(self) -> Clock:
        """The one clock of the worker: the wall clock, or the test's clock file."""
        return FileClock(self.clock_file) if self.clock_file is not None else wall_clock_ms

    def connection(self) -> Connection:
        return Connection(
            bootstrap_servers=self.bootstrap_servers,
            worker_id=self.worker_id,
            exit_when_stuck_s=self.exit_when_stuck_s,
            max_record_bytes=self.policy.max_record_bytes,
        )
