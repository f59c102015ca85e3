"""Run jobs as separate worker processes, the way they are deployed.

Used by the demo, ``streams verify`` and the tests that kill workers: each job
is ``streams run <job>`` configured only through the environment
(bootstrap, registry, topic prefix, worker id, and for retention its clock
file and state directory). Output goes to one log file per worker, which the
canary check reads too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from streams.kafka.topics import Topology

JOBS = ("router", "retention", "usage", "safety-evaluation")


@dataclass(frozen=True, slots=True)
class Cluster:
    bootstrap: str
    registry_url: str
    topology: Topology
    log_dir: Path

    @property
    def prefix(self) -> str:
        return self.topology.prefix


def start_job(
    cluster: Cluster, job: str, worker_id: str = "0", extra_env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    cluster.log_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": cluster.bootstrap,
        "SCHEMA_REGISTRY_URL": cluster.registry_url,
        "STREAMS_TOPIC_PREFIX": cluster.prefix,
        "STREAMS_WORKER_ID": worker_id,
        "STREAMS_METRICS_PORT": "off",
        **(extra_env or {}),
    }
    log = open(cluster.log_dir / f"{cluster.prefix}{job}-{worker_id}.log", "ab")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "run", job],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


class Supervised:
    """One worker kept alive like a deployment would: restarted if it exits on its own.

    A worker exits on purpose when it cannot go on safely (a fatal transactional error, or
    a transaction stuck past its bound); its successor resumes from committed offsets.
    ``kill()`` simulates a crash: that death is not restarted.
    """

    def __init__(
        self,
        cluster: Cluster,
        job: str,
        worker_id: str = "0",
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self._args = (cluster, job, worker_id, extra_env)
        self.process = start_job(cluster, job, worker_id, extra_env)
        self.restarts = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            if self.process.poll() is not None and not self._stopping.is_set():
                self.restarts += 1
                self.process = start_job(*self._args)

    def kill(self) -> None:
        """SIGKILL the current worker and do not restart it (a crash the test restarts)."""
        self._stopping.set()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stopping.set()
        stop_jobs([self.process], timeout_s)


def stop_jobs(processes: list[subprocess.Popen[bytes]], timeout_s: float = 30.0) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextmanager
def running(
    cluster: Cluster, *jobs: str, extra_env: Mapping[str, str] | None = None
) -> Iterator[list[Supervised]]:
    """One supervised worker of each job; all stopped (SIGTERM, then SIGKILL) on exit."""
    workers = [Supervised(cluster, job, extra_env=extra_env) for job in jobs]
    try:
        yield workers
    finally:
        for worker in workers:
            worker.stop()
