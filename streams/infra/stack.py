"""The broker and registry a command talks to: the environment's, embedded ones, or a local
stack that stays up (``streams stack up|down|env``).

The stack is a KRaft broker, a schema registry and the explain service (the audit index,
R16) started in the background, with the topics made and the contracts registered, so that
``streams explain``, ``streams verify`` and a browser have something to talk to after the
command that started them has exited. Its pids and addresses live in ``STREAMS_STACK_DIR``
(default ``var/stack``); ``down`` stops what they name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STACK_DIR_ENV = "STREAMS_STACK_DIR"


def broker_and_registry(stack: ExitStack) -> tuple[str, str]:
    """``KAFKA_BOOTSTRAP_SERVERS``/``SCHEMA_REGISTRY_URL`` when set, otherwise a local broker
    and registry started now and stopped when ``stack`` closes."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    registry_url = os.environ.get("SCHEMA_REGISTRY_URL")
    if not bootstrap:
        from streams.infra.broker import LocalKafka

        bootstrap = stack.enter_context(LocalKafka()).bootstrap_servers
    if not registry_url:
        from streams.infra.registry import LocalSchemaRegistry

        registry_url = stack.enter_context(LocalSchemaRegistry()).url
    return bootstrap, registry_url


def stack_dir() -> Path:
    return Path(os.environ.get(STACK_DIR_ENV) or ROOT / "var" / "stack")


@dataclass(frozen=True, slots=True)
class StackState:
    """What ``streams stack up`` started: addresses to export, pids to stop."""

    bootstrap: str
    registry_url: str
    explain_url: str
    topic_prefix: str
    broker_pid: int
    registry_pid: int
    explain_pid: int

    def exports(self) -> str:
        """Shell lines that point every ``streams`` command (and the tests) at the stack."""
        lines = [
            f"export KAFKA_BOOTSTRAP_SERVERS={self.bootstrap}",
            f"export SCHEMA_REGISTRY_URL={self.registry_url}",
            f"export STREAMS_EXPLAIN_URL={self.explain_url}",
        ]
        if self.topic_prefix:
            lines.append(f"export STREAMS_TOPIC_PREFIX={self.topic_prefix}")
        return "\n".join(lines)


def current(directory: Path | None = None) -> StackState | None:
    """The running stack, if its broker still runs."""
    path = (directory or stack_dir()) / "stack.json"
    try:
        state = StackState(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return state if _alive(state.broker_pid, BROKER) else None


def up(topic_prefix: str = "", directory: Path | None = None) -> StackState:
    """Start the stack (or reuse the running one); the explain service indexes the audit
    topic of ``topic_prefix`` (restarted when the running one indexes another prefix)."""
    directory = directory or stack_dir()
    state = current(directory)
    if state is None:
        down(directory)  # what a half-dead stack left behind
        bootstrap, broker_pid = _start_broker(directory)
        registry_url, registry_pid = _start_registry(directory)
    else:
        bootstrap, broker_pid = state.bootstrap, state.broker_pid
        registry_url, registry_pid = state.registry_url, state.registry_pid
        if state.topic_prefix == topic_prefix and _alive(state.explain_pid, EXPLAIN):
            return state
        _stop(state.explain_pid, EXPLAIN)
    _make_topics(bootstrap, registry_url, topic_prefix)
    explain_url, explain_pid = _start_explain(directory, bootstrap, registry_url, topic_prefix)
    state = StackState(
        bootstrap, registry_url, explain_url, topic_prefix, broker_pid, registry_pid, explain_pid
    )
    (directory / "stack.json").write_text(json.dumps(asdict(state), indent=2) + "\n")
    return state


def down(directory: Path | None = None) -> bool:
    """Stop the explain service, the registry and the broker (clients before the broker),
    and remove their data. True if a stack was running."""
    directory = directory or stack_dir()
    path = directory / "stack.json"
    try:
        state = StackState(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        state = None
    if state is not None:
        _stop(state.explain_pid, EXPLAIN)
        _stop(state.registry_pid, REGISTRY, group=True)
        _stop(state.broker_pid, BROKER)
    path.unlink(missing_ok=True)
    for name in ("kafka", "registry", "explain"):
        shutil.rmtree(directory / name, ignore_errors=True)
    return state is not None


def _start_broker(directory: Path) -> tuple[str, int]:
    from streams.infra.broker import LocalKafka

    kafka = LocalKafka(directory / "kafka", die_with_parent=False).start()
    assert kafka.process is not None
    pid = kafka.process.pid
    kafka.process = None  # detach: this command exits, the broker keeps running
    return kafka.bootstrap_servers, pid


def _start_registry(directory: Path) -> tuple[str, int]:
    from streams.infra.registry import LocalSchemaRegistry

    run_dir = directory / "registry"
    run_dir.mkdir(parents=True, exist_ok=True)
    registry = LocalSchemaRegistry(run_dir=run_dir).start()
    registry.detach()
    assert registry.process is not None
    return registry.url, registry.process.pid


def _make_topics(bootstrap: str, registry_url: str, topic_prefix: str) -> None:
    from confluent_kafka.admin import AdminClient

    from streams.kafka.clients import client_config
    from streams.kafka.serde import Contracts, registry_client
    from streams.kafka.topics import Topology, ensure_topics

    topology = Topology(topic_prefix)
    ensure_topics(AdminClient(client_config(bootstrap)), topology)
    Contracts(registry_client(registry_url), topology).register_all()


def _start_explain(
    directory: Path, bootstrap: str, registry_url: str, topic_prefix: str, timeout_s: float = 90
) -> tuple[str, int]:
    from streams.infra.broker import free_port

    state_dir = directory / "explain"
    state_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with (directory / "explain.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "run", "audit-index"],
            env={
                **os.environ,
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "SCHEMA_REGISTRY_URL": registry_url,
                "STREAMS_TOPIC_PREFIX": topic_prefix,
                "STREAMS_STATE_DIR": str(state_dir / (topic_prefix or "default")),
                "STREAMS_EXPLAIN_PORT": str(port),
            },
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this command
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError), urllib.request.urlopen(url + "/", timeout=2):
            return url, process.pid
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the explain service did not start; see {directory}/explain.log")
        time.sleep(0.3)


# What each of the stack's processes has on its command line: a pid recycled since the stack
# started is somebody else's process and is left alone.
BROKER, REGISTRY, EXPLAIN = b"kafka.Kafka", b"java", b"audit-index"


def _alive(pid: int, marker: bytes = BROKER) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return marker in cmdline and status.rsplit(")", 1)[1].split()[0] != "Z"


def _stop(pid: int, marker: bytes, group: bool = False, timeout_s: float = 30.0) -> None:
    """SIGTERM, wait, then SIGKILL."""
    if not _alive(pid, marker):
        return
    with contextlib.suppress(ProcessLookupError):
        (os.killpg if group else os.kill)(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid, marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid, marker):
        with contextlib.suppress(ProcessLookupError):
            (os.killpg if group else os.kill)(pid, signal.SIGKILL)
