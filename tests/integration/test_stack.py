"""``streams stack up|env|down``: a local broker, registry and explain service that outlive
the command (R16: the explain service answers ``streams explain``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from streams.kafka.serde import Contracts, registry_client
from streams.kafka.topics import Topology
from tests.integration.conftest import audit_decision

pytestmark = pytest.mark.integration


def streams(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_stack_up_env_explain_down_R16(tmp_path: Path) -> None:
    """``up`` prints export lines that point ``streams explain`` at the stack's explain
    service; ``env`` prints them again; ``down`` stops every process of the stack."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "SCHEMA_", "STREAMS_"))
    }
    env["STREAMS_STACK_DIR"] = str(tmp_path)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    up = streams("stack", "up", env=env)
    try:
        assert up.returncode == 0, up.stderr
        exports = dict(
            line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines()
        )
        assert set(exports) == {
            "KAFKA_BOOTSTRAP_SERVERS",
            "SCHEMA_REGISTRY_URL",
            "STREAMS_EXPLAIN_URL",
        }
        assert streams("stack", "env", env=env).stdout == up.stdout
        topology = Topology("")
        codec = Contracts(registry_client(exports["SCHEMA_REGISTRY_URL"]), topology).reader("audit")
        record = audit_decision("r-stack")
        producer = Producer({"bootstrap.servers": exports["KAFKA_BOOTSTRAP_SERVERS"]})
        producer.produce(topology.audit, key="r-stack", value=codec.encode(record))
        assert producer.flush(30) == 0
        del producer  # no client outlives the broker
        deadline = time.monotonic() + 60
        while True:
            # The service answers; a partition read would say so on stderr.
            asked = streams("explain", "r-stack", env={**env, **exports})
            if asked.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert asked.returncode == 0 and asked.stderr == "", asked.stderr
        assert "rules:  R2, R3" in asked.stdout
    finally:
        down = streams("stack", "down", env=env)
    assert down.stdout.strip() == "stopped"
    assert streams("stack", "env", env=env).returncode == 2
    assert not (tmp_path / "stack.json").exists()
