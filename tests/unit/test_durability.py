"""Durability per deployment (issue 15): replication, min.insync.replicas and partitions,
what ``streams topics`` changes on existing topics, and acks=all + idempotence on every
producer the project builds. Without a broker; ``tests/integration/test_cluster_chaos.py``
runs them on three."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from streams.kafka import transactional
from streams.kafka.clients import DURABLE_PRODUCER, producer_config
from streams.kafka.topics import (
    CATALOGUE,
    MIN_ISR,
    Durability,
    DurabilityError,
    Replication,
    TopicNow,
    plan_topic,
)
from streams.settings import Settings, SettingsError

STREAMS = Path(__file__).resolve().parents[2] / "streams"


def test_defaults_are_auto_and_six_partitions() -> None:
    durability = Durability.read({})
    assert durability == Durability(None, None, 6)
    assert Durability.read({"STREAMS_REPLICATION_FACTOR": "auto"}) == durability


def test_settings_read_the_durability_and_name_a_malformed_one() -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "b:9092",
        "SCHEMA_REGISTRY_URL": "http://r",
        "STREAMS_REPLICATION_FACTOR": "3",
        "STREAMS_MIN_INSYNC_REPLICAS": "2",
        "STREAMS_PARTITIONS": "12",
    }
    assert Settings.read(env).durability == Durability(3, 2, 12)
    with pytest.raises(SettingsError, match="STREAMS_PARTITIONS"):
        Settings.read({**env, "STREAMS_PARTITIONS": "0"})
    with pytest.raises(SettingsError, match="STREAMS_REPLICATION_FACTOR"):
        Settings.read({**env, "STREAMS_REPLICATION_FACTOR": "three"})


@pytest.mark.parametrize(
    ("brokers", "expected"),
    [
        (1, Replication(1, 1)),
        (2, Replication(2, 1)),
        (3, Replication(3, 2)),
        (5, Replication(3, 2)),
    ],
)
def test_auto_is_three_copies_and_min_isr_two_on_three_brokers(
    brokers: int, expected: Replication
) -> None:
    assert Durability().resolve(brokers) == expected


def test_an_explicit_request_above_the_cluster_is_refused_in_one_line() -> None:
    with pytest.raises(DurabilityError) as refused:
        Durability(replication_factor=3).resolve(1)
    assert str(refused.value) == "STREAMS_REPLICATION_FACTOR=3 but the cluster has 1 broker"
    with pytest.raises(DurabilityError, match="STREAMS_MIN_INSYNC_REPLICAS=2 is more than"):
        Durability(min_insync_replicas=2).resolve(1)  # auto gives one copy on one broker
    assert Durability(3, 3).resolve(3) == Replication(3, 3)
    assert Durability(2).resolve(3) == Replication(2, 1)


def test_the_catalogue_scales_with_the_deployment_except_the_facts() -> None:
    durability = Durability(partitions=12)
    counts = {spec.field: spec.partition_count(durability) for spec in CATALOGUE}
    assert counts["request_logs"] == counts["log_store"] == counts["audit"] == 12
    for fact in ("data_controls", "controls_watermark", "misuse_flags", "legal_holds"):
        assert counts[fact] == 1  # every router and retention worker reads them in full


NOW = TopicNow(6, 3, {"retention.ms": "1000", MIN_ISR: "1", "cleanup.policy": "delete"})
WANTED = {"retention.ms": "604800000", "cleanup.policy": "delete"}


def test_an_aligned_topic_needs_nothing() -> None:
    now = TopicNow(6, 3, {**WANTED, MIN_ISR: "2"})
    assert plan_topic("t", now, 6, Replication(3, 2), WANTED) == plan_topic(
        "t", now, None, Replication(3, 2), WANTED
    )
    plan = plan_topic("t", now, 6, Replication(3, 2), WANTED)
    assert plan.grow_to is None and not plan.set_configs and not plan.lines


def test_configs_and_min_isr_are_aligned_and_said() -> None:
    plan = plan_topic("t", NOW, 6, Replication(3, 2), WANTED)
    assert plan.set_configs == {"retention.ms": "604800000", MIN_ISR: "2"}
    assert "t: min.insync.replicas 1 -> 2" in plan.lines


def test_partitions_grow_but_never_shrink() -> None:
    grown = plan_topic("t", NOW, 12, Replication(3, 2), WANTED)
    assert grown.grow_to == 12
    assert "t: partitions 6 -> 12" in grown.lines
    kept = plan_topic("t", NOW, 3, Replication(3, 2), WANTED)
    assert kept.grow_to is None
    assert any("cannot shrink" in line for line in kept.lines)


def test_a_compacted_topic_is_not_grown_R4_R15() -> None:
    """R4/R15: a tombstone hashed to a new partition would leave the old value readable."""
    plan = plan_topic("log-store", NOW, 12, Replication(3, 2), WANTED, compacted=True)
    assert plan.grow_to is None
    assert any("not grown, it is compacted" in line for line in plan.lines)


def test_a_replication_below_the_deployment_is_reported_and_min_isr_waits_for_it() -> None:
    """Setting min.insync.replicas 2 on a one-copy topic would refuse every acks=all write."""
    now = TopicNow(6, 1, {**WANTED, MIN_ISR: "1"})
    plan = plan_topic("t", now, 6, Replication(3, 2), WANTED)
    assert MIN_ISR not in plan.set_configs
    (line,) = plan.lines
    assert "replication 1, the deployment asks 3" in line
    assert "kafka-reassign-partitions" in line
    higher = plan_topic("t", TopicNow(6, 3, {**WANTED, MIN_ISR: "1"}), 6, Replication(1, 1), {})
    assert any("above the deployment's 1: left as is" in line for line in higher.lines)


def test_producer_config_cannot_be_weakened() -> None:
    config = producer_config("b:9092", {"acks": "1", "enable.idempotence": False, "linger.ms": 5})
    assert config["acks"] == "all" and config["enable.idempotence"] is True
    assert config["linger.ms"] == 5


def test_the_transactional_loop_producer_is_durable(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[dict[str, Any]] = []
    monkeypatch.setattr(transactional, "Producer", lambda conf: built.append(conf))
    monkeypatch.setattr(transactional, "Consumer", lambda conf: None)
    config = transactional.LoopConfig(
        "127.0.0.1:9", "g", "txn", ["in"], extra_producer={"acks": "1"}
    )
    transactional.TransactionalLoop(config, processor=None)  # type: ignore[arg-type]
    (conf,) = built
    assert conf["acks"] == "all" and conf["enable.idempotence"] is True
    assert conf["transactional.id"] == "txn"


def test_every_producer_the_project_builds_uses_producer_config() -> None:
    """Every ``Producer(...)`` in streams/ is given ``producer_config(...)``, so acks=all and
    idempotence hold for producers added later too."""
    calls = []
    for path in sorted(STREAMS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "Producer"
            ):
                calls.append((path.name, node))
    assert len(calls) >= 3  # the runtime's, verify's and the demo's
    for name, call in calls:
        argument = call.args[0] if call.args else None
        is_durable = (
            isinstance(argument, ast.Call)
            and isinstance(argument.func, ast.Name)
            and argument.func.id == "producer_config"
        ) or (isinstance(argument, ast.Name) and argument.id == "producer_conf")
        assert is_durable, f"{name}:{call.lineno} builds a producer without producer_config"
    assert DURABLE_PRODUCER == {"acks": "all", "enable.idempotence": True}


def test_auto_counts_a_broker_that_is_down_but_holds_replicas() -> None:
    """A broker down for a restart is missing from the metadata's broker list, but not
    from the partitions' replica lists: "auto" keeps 3 copies meanwhile."""
    from types import SimpleNamespace

    from streams.kafka.topics import cluster_brokers, replication_of

    partition = SimpleNamespace(replicas=[1, 2, 3])
    metadata = SimpleNamespace(
        brokers={1: None, 2: None},
        topics={"t": SimpleNamespace(partitions={0: partition})},
    )
    admin: Any = SimpleNamespace(list_topics=lambda timeout: metadata)
    assert cluster_brokers(admin) == 3
    assert replication_of(admin, Durability()) == Replication(3, 2)
