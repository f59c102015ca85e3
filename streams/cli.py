"""The ``streams`` command: run jobs, create topics, explain a decision, run the demo.

    streams topics                      create/align every topic of the catalogue
    streams router [--worker-id N]      run one router worker
    streams explain REQUEST_ID          why a request went where it went (R16)
    streams demo                        everything end to end on an embedded broker

Connection settings come from ``--bootstrap``/``--registry`` or the
``KAFKA_BOOTSTRAP_SERVERS``/``SCHEMA_REGISTRY_URL`` environment variables.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from confluent_kafka.admin import AdminClient

from streams.kafka.clients import client_config
from streams.kafka.compacted import read_topic
from streams.kafka.serde import Contracts, DecodeError, registry_client
from streams.kafka.topics import ensure_topics
from streams.policy.config import PolicyConfig, load_config


def explain(
    request_id: str, bootstrap_servers: str, registry_url: str, config: PolicyConfig
) -> str:
    """R16: every audited decision about ``request_id``, rendered for a person."""
    codec = Contracts(registry_client(registry_url), config.topics).codec("audit")
    lines = []
    for key, value, _, _ in read_topic(bootstrap_servers, config.topics.audit):
        if key is None or key.decode(errors="replace") != request_id or value is None:
            continue
        try:
            record: dict[str, Any] = codec.decode(value)
        except DecodeError:
            continue
        decided = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record["decided_at_ms"] / 1000))
        source = f"{record['source_topic']}/{record['source_partition']}/{record['source_offset']}"
        lines.append(
            f"{record['job']} decided at {decided}Z"
            f" (policy {record['policy_version']}, consent {record['consent_version'] or '-'})\n"
            f"  routes: {', '.join(record['routes']) or '-'}\n"
            f"  rules:  {', '.join(record['rule_ids'])}\n"
            + "".join(f"  - {reason}\n" for reason in record["reasons"])
            + f"  from {source}"
        )
    if not lines:
        return f"no audited decision for {request_id}"
    return f"request {request_id}:\n" + "\n".join(lines)


def _connection(args: argparse.Namespace) -> tuple[str, str]:
    bootstrap = args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    registry = args.registry or os.environ.get("SCHEMA_REGISTRY_URL")
    if not bootstrap or not registry:
        sys.exit("set --bootstrap/--registry or KAFKA_BOOTSTRAP_SERVERS/SCHEMA_REGISTRY_URL")
    return bootstrap, registry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="streams", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers")
    parser.add_argument("--registry", help="schema registry URL")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("topics", help="create/align the topics of the catalogue")
    router = commands.add_parser("router", help="run one router worker")
    router.add_argument("--worker-id", default=os.environ.get("STREAMS_WORKER_ID", "0"))
    why = commands.add_parser("explain", help="why a request went where it went (R16)")
    why.add_argument("request_id")
    commands.add_parser("demo", help="run every job end to end on an embedded broker")
    check = commands.add_parser(
        "verify", help="leak-canary check against a running cluster (jobs must be running)"
    )
    check.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    config = load_config()

    if args.command == "demo":
        from streams.demo import run_demo

        sys.exit(run_demo())
    bootstrap, registry = _connection(args)
    if args.command == "topics":
        created = ensure_topics(AdminClient(client_config(bootstrap)), config.topics)
        Contracts(registry_client(registry), config.topics).register_all()
        print(f"topics ready ({len(created)} created); schemas registered")
    elif args.command == "router":
        from streams.jobs import router as router_job

        router_job.main(
            ["--bootstrap", bootstrap, "--registry", registry, "--worker-id", args.worker_id]
        )
    elif args.command == "explain":
        print(explain(args.request_id, bootstrap, registry, config))
    elif args.command == "verify":
        sys.exit(_verify_cluster(bootstrap, registry, config, args.timeout))


def _verify_cluster(bootstrap: str, registry: str, config: PolicyConfig, timeout_s: float) -> int:
    """Canaries through the jobs already running on ``bootstrap``; exit 1 on any finding."""
    from streams.verify import verify

    contracts = Contracts(registry_client(registry), config.topics)
    report = verify(bootstrap, config, contracts, int(time.time() * 1000), timeout_s=timeout_s)
    print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    main()
