"""``streams explain`` and the command's errors against the real broker and registry (R16).

The command asks the explain service when one answers, else reads only the audit partition
the request id hashes to; it never registers a schema, prints ISO 8601 times, and says in
one line, without a traceback, when the broker, the registry or a topic is not there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from streams.cli import main
from streams.infra.broker import free_port
from streams.kafka.serde import registry_client
from streams.kafka.topics import Topology, ensure_topics
from tests.integration.conftest import Stack, audit_decision

pytestmark = pytest.mark.integration

NOW = int(time.time() * 1000)


def decision(subject_id: str, job: str, routes: tuple[str, ...], rules: tuple[str, ...]) -> dict:
    return audit_decision(subject_id, job, routes, rules, NOW if job == "router" else NOW + 1000)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), out, err


def connection(stack: Stack, prefix: str | None = None) -> list[str]:
    prefix = stack.topology.prefix if prefix is None else prefix
    return [
        "--bootstrap",
        stack.bootstrap,
        "--registry",
        stack.registry_url,
        "--topic-prefix",
        prefix,
    ]


def test_streams_explain_reads_the_key_partition_with_iso_times_R16(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every decision about the request (router, then retention), times in ISO 8601, rule
    ids; an explain service that does not answer is named and the partition read instead;
    connection options work after the command."""
    stack.produce(
        "audit",
        [
            ("r-1", decision("r-1", "router", ("log_store", "usage"), ("R3", "R4"))),
            ("r-1", decision("r-1", "retention", ("held",), ("R5",))),
            ("r-2", decision("r-2", "router", ("usage",), ("R2", "R3"))),
        ],
    )
    dead = f"http://127.0.0.1:{free_port()}"
    code, out, err = run(["explain", "r-1", "--explain-url", dead, *connection(stack)], capsys)
    assert code == 0, err
    assert f"explain service at {dead} did not answer" in err
    router, retention = out.index("router decided"), out.index("retention decided")
    assert router < retention
    assert "routes: log_store, usage" in out and "rules:  R5" in out
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(NOW // 1000))
    assert iso in out and "Z" in out
    code, out, _ = run(["explain", "never-seen", *connection(stack)], capsys)
    assert code == 1 and "no audited decision for never-seen" in out


def test_streams_explain_never_registers_a_schema_R16(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """Topics made but no contract registered: the command says so and registers nothing."""
    topology = Topology(f"t{uuid.uuid4().hex[:8]}.")
    ensure_topics(AdminClient({"bootstrap.servers": stack.bootstrap}), topology)
    code, _, err = run(["explain", "r-1", *connection(stack, topology.prefix)], capsys)
    assert code == 2
    assert (
        err.startswith("streams: error: no audit contract registered") and "streams topics" in err
    )
    subjects = registry_client(stack.registry_url).get_subjects()
    assert f"{topology.audit}-value" not in subjects


def test_missing_topics_fail_fast_with_what_to_do_R16(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """No audit topic: explain says which and on which broker, not "no audited decision";
    verify against a cluster without topics fails in seconds, naming the topics."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    code, out, err = run(["explain", "r-1", *connection(stack, prefix)], capsys)
    assert code == 2 and not out
    assert err == (
        f"streams: error: no topic {prefix}audit-decisions on {stack.bootstrap}: run `streams"
        " topics`, and are the jobs deployed (`streams run router`)?\n"
    )
    started = time.monotonic()
    code, _, err = run([*connection(stack, prefix), "verify"], capsys)
    assert code == 2 and time.monotonic() - started < 15
    assert err.startswith(f"streams: error: no topics {prefix}") and "streams topics" in err
    assert "more on" in err  # every topic is missing; three are named


def test_unreachable_broker_and_registry_are_one_line_without_traceback_R16(
    stack: Stack, tmp_path: Path
) -> None:
    """A broker or registry that does not answer: one line naming it, exit code 2, no
    traceback and no librdkafka noise."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL", "STREAMS_EXPLAIN_URL"):
        env.pop(name, None)
    nobody = f"127.0.0.1:{free_port()}"
    cases = {
        f"cannot reach Kafka at {nobody}": ["--bootstrap", nobody, "--registry", "http://x"],
        f"cannot reach the schema registry at http://{nobody}": [
            "--bootstrap",
            stack.bootstrap,
            "--registry",
            f"http://{nobody}",
            "--topic-prefix",
            stack.topology.prefix,
        ],
    }
    for expected, options in cases.items():
        done = subprocess.run(
            [sys.executable, "-m", "streams.cli", "explain", "r-1", *options],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2
        assert done.stdout == ""
        (line,) = done.stderr.splitlines()
        assert line.startswith(f"streams: error: {expected}")


def test_streams_topics_then_explain_finds_the_topic_R16(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """``streams topics`` (options after the command) makes the topics and registers the
    contracts; explain then answers "no audited decision", not "no audit topic"."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    code, out, err = run(["topics", *connection(stack, prefix)], capsys)
    assert code == 0, err
    assert out.rstrip().endswith("schemas registered")
    code, out, err = run(["explain", "r-1", *connection(stack, prefix)], capsys)
    assert code == 1 and err == "" and "no audited decision for r-1" in out
