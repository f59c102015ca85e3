"""The ``streams`` command: run jobs, create topics, explain a decision, run the demo.

    streams topics                      create/align every topic of the catalogue
    streams run JOB [--worker-id N]     one worker of router, retention, usage or
                                        safety-evaluation
    streams explain REQUEST_ID          why a request went where it went (R16)
    streams verify                      leak-canary check against a running cluster
    streams demo                        everything end to end on an embedded broker

Settings are read once (``streams.settings.Settings``): ``--bootstrap``/``--registry``
or ``KAFKA_BOOTSTRAP_SERVERS``/``SCHEMA_REGISTRY_URL``, and the ``STREAMS_*`` variables.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

from confluent_kafka.admin import AdminClient

from streams.jobs.processes import JOBS
from streams.kafka.clients import client_config
from streams.kafka.compacted import read_topic
from streams.kafka.serde import Contracts, DecodeError, registry_client
from streams.kafka.topics import DurabilityError, apply_topics
from streams.settings import Settings, SettingsError


def explain(request_id: str, settings: Settings) -> str:
    """R16: every audited decision about ``request_id``, rendered for a person."""
    topology = settings.topology
    codec = Contracts(registry_client(settings.registry_url), topology).codec("audit")
    lines = []
    for key, value, _, _ in read_topic(settings.bootstrap_servers, topology.audit):
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


def run_job(job: str, settings: Settings) -> None:
    """One worker of ``job`` until SIGTERM/SIGINT (``streams run JOB``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from streams.jobs.wiring import runtime_of, serve

    if job == "retention":
        from streams.jobs import retention

        retention.run(settings)
    elif job == "router":
        from streams.jobs.router import build_router_loop

        serve(build_router_loop(settings)[0], settings)
    elif job == "usage":
        from streams.jobs.usage import build_job as build_usage

        serve(runtime_of(build_usage(settings), settings), settings)
    elif job == "safety-evaluation":
        from streams.jobs.safety_evaluation import build_job as build_evaluation

        serve(runtime_of(build_evaluation(settings), settings), settings)
    else:
        raise SettingsError(f"no job {job!r}; jobs: {', '.join(JOBS)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="streams", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers")
    parser.add_argument("--registry", help="schema registry URL")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("topics", help="create/align the topics of the catalogue")
    run = commands.add_parser("run", help="run one worker of a job")
    run.add_argument("job", choices=JOBS)
    run.add_argument("--worker-id", help="stable per worker (default: STREAMS_WORKER_ID or 0)")
    why = commands.add_parser("explain", help="why a request went where it went (R16)")
    why.add_argument("request_id")
    commands.add_parser("demo", help="run every job end to end on an embedded broker")
    check = commands.add_parser(
        "verify", help="leak-canary check against a running cluster (jobs must be running)"
    )
    check.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)

    if args.command == "demo":
        from streams.demo import run_demo

        sys.exit(run_demo())
    try:
        settings = Settings.read(
            bootstrap_servers=args.bootstrap,
            registry_url=args.registry,
            worker_id=getattr(args, "worker_id", None),
        )
    except SettingsError as exc:
        sys.exit(str(exc))
    if args.command == "topics":
        admin = AdminClient(client_config(settings.bootstrap_servers))
        try:
            outcome = apply_topics(admin, settings.topology, durability=settings.durability)
        except DurabilityError as exc:
            sys.exit(str(exc))
        print("\n".join(outcome.lines))
        Contracts(registry_client(settings.registry_url), settings.topology).register_all()
        print("schemas registered")
    elif args.command == "run":
        run_job(args.job, settings)
    elif args.command == "explain":
        print(explain(args.request_id, settings))
    elif args.command == "verify":
        sys.exit(_verify_cluster(settings, args.timeout))


def _verify_cluster(settings: Settings, timeout_s: float) -> int:
    """Canaries through the jobs already running on the cluster; exit 1 on any finding."""
    from streams.verify import verify

    contracts = Contracts(registry_client(settings.registry_url), settings.topology)
    report = verify(
        settings.bootstrap_servers,
        settings.policy,
        contracts,
        int(time.time() * 1000),
        timeout_s=timeout_s,
    )
    print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    main()
