"""R18 and the deployment: the Kubernetes manifests are valid and carry what a worker needs.

Validated against the Kubernetes API schemas that ``kubernetes-validate`` ships (no cluster
here). Checked beyond the schemas: every job runs as a StatefulSet whose worker id (and so
its transactional id) is the pod's stable name, with probes on the metrics endpoint,
resource requests, a PodDisruptionBudget and its own principal's SASL credentials from a
Secret; the topics command runs as a Job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
JOBS = ("router", "retention", "usage", "safety-evaluation")
KUBERNETES_VERSION = "1.30.0"


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def resources() -> list[dict[str, Any]]:
    kustomization = documents("kustomization.yaml")[0]
    return [d for name in kustomization["resources"] for d in documents(name)]


def test_every_manifest_is_valid_for_kubernetes() -> None:
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    listed = documents("kustomization.yaml")[0]["resources"]
    assert sorted(listed) == [f for f in files if f != "secrets.example.yaml"]
    for name in files:
        for document in documents(name):
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in resources() if d["kind"] == kind}


@pytest.mark.parametrize("job", JOBS)
def test_r18_each_job_is_a_statefulset_with_a_stable_worker_id_and_its_own_principal(
    job: str,
) -> None:
    statefulset = by_kind("StatefulSet")[job]
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["run", job]
    env = {e["name"]: e for e in container["env"]}
    assert env["STREAMS_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    for variable in ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"):
        assert env[variable]["valueFrom"]["secretKeyRef"]["name"] == f"{job}-kafka"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "metrics"
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["requests"]["memory"]
    assert by_kind("PodDisruptionBudget")[job]["spec"]["maxUnavailable"] == 1
    assert statefulset["spec"]["serviceName"] in by_kind("Service")


def test_topics_run_as_a_job_and_the_deletion_bound_is_configured() -> None:
    job = by_kind("Job")["streams-topics"]
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["topics"]
    config = by_kind("ConfigMap")["privacy-streams"]["data"]
    assert int(config["STREAMS_DELETION_BOUND_MS"]) > 0


def test_the_manifests_and_compose_carry_valid_durability_settings() -> None:
    """Issue 15: replication 3, min ISR 2 and the partition count are set per deployment,
    in values ``Settings.read`` accepts."""
    from streams.kafka.topics import Durability

    config = by_kind("ConfigMap")["privacy-streams"]["data"]
    assert Durability.read(config) == Durability(3, 2, int(config["STREAMS_PARTITIONS"]))
    compose = yaml.safe_load((K8S.parents[1] / "docker-compose.yml").read_text())
    env = compose["services"]["topics"]["environment"]
    assert Durability.read({k: str(v) for k, v in env.items()}).replication_factor is None
    for job in JOBS:  # every job reads them too (internal topics)
        assert compose["services"][job]["environment"]["STREAMS_PARTITIONS"] == "6"


def test_compose_replicas_of_a_job_get_distinct_worker_ids() -> None:
    """``docker compose up --scale router=3``: each replica's worker id (and transactional
    id) is its container's hostname, not one id shared by all (they would fence each
    other's transactions)."""
    compose = yaml.safe_load((K8S.parents[1] / "docker-compose.yml").read_text())
    for job in JOBS:
        service = compose["services"][job]
        assert "STREAMS_WORKER_ID" not in service.get("environment", {})
        assert service["entrypoint"][-1] == f'exec streams run {job} --worker-id "$$HOSTNAME"'
