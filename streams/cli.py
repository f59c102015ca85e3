"""The ``streams`` command: run jobs, create topics, explain a decision, run the demo.

    streams topics                      create/align every topic, register every contract
    streams run JOB [--worker-id N]     one worker of router, retention, usage,
                                        safety-evaluation, or the audit index
    streams explain REQUEST_ID          why a request went where it went (R16)
    streams verify                      leak-canary check against a running cluster
    streams demo [--keep]               everything end to end on a local broker
    streams stack up|down|env           a local broker, registry and explain service

Settings are read once (``streams.settings.Settings``): ``--bootstrap``/``--registry``
or ``KAFKA_BOOTSTRAP_SERVERS``/``SCHEMA_REGISTRY_URL``, and the ``STREAMS_*`` variables.
The connection options go before or after the command.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import urllib.error
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from streams.jobs.processes import JOBS
from streams.kafka.clients import client_config
from streams.kafka.serde import Contracts, registry_client
from streams.kafka.topics import DurabilityError, apply_topics
from streams.settings import Settings, SettingsError

AUDIT_INDEX = "audit-index"
RUNNABLE = (*JOBS, AUDIT_INDEX)
EXPLAIN_URL_ENV = "STREAMS_EXPLAIN_URL"
PROBE_TIMEOUT_S = 5.0

# The probe's refused connections are the error this command reports in one line; librdkafka
# would print each of them to stderr besides.
_PROBE_LOG = logging.getLogger("streams.cli.librdkafka")
_PROBE_LOG.propagate = False
_PROBE_LOG.addHandler(logging.NullHandler())


class CommandError(Exception):
    """Why a command cannot go on, in one line for a person: names a place (a broker, a
    registry, a topic), never the content of a record."""


# --- reaching the cluster -----------------------------------------------------------------
def topic_names(bootstrap_servers: str) -> set[str]:
    """The topics on the cluster; ``CommandError`` when no broker answers in a few seconds."""
    config: dict[str, Any] = {**client_config(bootstrap_servers), "logger": _PROBE_LOG}
    admin = AdminClient(config)
    try:
        metadata = admin.list_topics(timeout=PROBE_TIMEOUT_S)
    except KafkaException as exc:
        raise CommandError(
            f"cannot reach Kafka at {bootstrap_servers} ({exc.args[0].name()}): is the broker"
            " up? (`streams stack up` starts a local one)"
        ) from None
    return {name for name, info in metadata.topics.items() if info.error is None}


def require_topics(settings: Settings, fields: Sequence[str], hint: str) -> None:
    """Fail fast, naming the missing topics, instead of waiting on topics that never fill."""
    present = topic_names(settings.bootstrap_servers)
    missing = [settings.topology.name(f) for f in fields]
    missing = [name for name in missing if name not in present]
    if missing:
        more = len(missing) - 3
        shown = ", ".join(missing[:3]) + (f" and {more} more" if more > 0 else "")
        noun = "topic" if len(missing) == 1 else "topics"
        raise CommandError(f"no {noun} {shown} on {settings.bootstrap_servers}: {hint}")


def reader_contracts(settings: Settings) -> Contracts:
    """Contracts for reading; ``CommandError`` when the registry does not answer."""
    try:
        registry_client(settings.registry_url).get_subjects()
    except SchemaRegistryError as exc:
        raise CommandError(
            f"the schema registry at {settings.registry_url} answered {exc.http_status_code}"
        ) from None
    except Exception as exc:  # the registry client's transport errors (httpx2) are its own
        raise CommandError(
            f"cannot reach the schema registry at {settings.registry_url} ({type(exc).__name__})"
        ) from None
    return Contracts(registry_client(settings.registry_url), settings.topology)


# --- explain (R16) --------------------------------------------------------------------------
def explain(request_id: str, settings: Settings, explain_url: str | None = None) -> dict[str, Any]:
    """R16: every audited decision about ``request_id`` (the audit index's JSON answer).

    Asks the explain service when its URL is given and it answers; otherwise reads only the
    audit partition the key hashes to. Never registers a schema."""
    from streams.jobs.audit_index import ask_service, scan_for

    if explain_url:
        try:
            return ask_service(explain_url, request_id)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            print(
                f"streams: explain service at {explain_url} did not answer ({reason});"
                " reading the audit partition instead",
                file=sys.stderr,
            )
    audit = settings.topology.audit
    require_topics(
        settings,
        ["audit"],
        "run `streams topics`, and are the jobs deployed (`streams run router`)?",
    )
    reader_contracts(settings)
    try:
        return scan_for(
            request_id, settings.bootstrap_servers, settings.registry_url, settings.topology
        )
    except SchemaRegistryError as exc:
        if exc.http_status_code == 404:
            raise CommandError(
                f"no audit contract registered for {audit} at {settings.registry_url}:"
                " run `streams topics`"
            ) from None
        raise


# --- jobs -------------------------------------------------------------------------------------
def run_job(job: str, settings: Settings) -> None:
    """One worker of ``job`` until SIGTERM/SIGINT (``streams run JOB``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if job == AUDIT_INDEX:
        from streams.jobs import audit_index

        audit_index.serve(settings)
        return
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
        raise SettingsError(f"no job {job!r}; jobs: {', '.join(RUNNABLE)}")


def _verify_cluster(settings: Settings, timeout_s: float) -> int:
    """Canaries through the jobs already running on the cluster; exit 1 on any finding."""
    from streams.kafka.topics import CATALOGUE
    from streams.verify import verify

    require_topics(
        settings,
        [spec.field for spec in CATALOGUE],
        "run `streams topics` and deploy the jobs (`streams run JOB`) before verifying",
    )
    report = verify(
        settings.bootstrap_servers,
        settings.policy,
        reader_contracts(settings),
        int(time.time() * 1000),
        timeout_s=timeout_s,
    )
    print(report.render())
    return 0 if report.ok else 1


# --- the command line -------------------------------------------------------------------------
def _connection(suppress: bool) -> argparse.ArgumentParser:
    """The connection options, accepted before and after the command (argparse parents).

    After the command their default is ``SUPPRESS``, so a value given before the command is
    not overwritten by the subcommand's unset default."""
    default = argparse.SUPPRESS if suppress else None
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("connection")
    group.add_argument(
        "--bootstrap",
        default=default,
        metavar="HOST:PORT[,...]",
        help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS)",
    )
    group.add_argument(
        "--registry",
        default=default,
        metavar="URL",
        help="schema registry URL (default: SCHEMA_REGISTRY_URL)",
    )
    group.add_argument(
        "--topic-prefix",
        default=default,
        metavar="PREFIX",
        help="every topic name under this prefix (default: STREAMS_TOPIC_PREFIX, or none)",
    )
    return options


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="streams", description=__doc__.split("\n\n")[0], parents=[_connection(False)]
    )
    after = [_connection(True)]
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "topics",
        parents=after,
        help="create/align the topics of the catalogue, register every contract (idempotent)",
    )
    run = commands.add_parser("run", parents=after, help="run one worker of a job")
    run.add_argument("job", choices=RUNNABLE, help="the job: " + ", ".join(RUNNABLE))
    run.add_argument(
        "--worker-id",
        help="stable per worker; fences its predecessor (default: STREAMS_WORKER_ID or 0)",
    )
    why = commands.add_parser(
        "explain", parents=after, help="why a request went where it went (R16)"
    )
    why.add_argument("request_id", help="a request id (or a fine-tune row or candidate id)")
    why.add_argument(
        "--explain-url",
        metavar="URL",
        help=f"the explain service (default: {EXPLAIN_URL_ENV}); without it, or when it does "
        "not answer, only the audit partition the id hashes to is read",
    )
    why.add_argument("--json", action="store_true", help="print the answer as JSON")
    demo = commands.add_parser(
        "demo", help="run every job end to end on a local broker and registry"
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="leave the stack (broker, registry, explain service) and the results up, and "
        "print request ids to explain; `streams stack down` stops it",
    )
    check = commands.add_parser(
        "verify",
        parents=after,
        help="leak-canary check against a running cluster (topics made, jobs running)",
    )
    check.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long to wait for the jobs to decide the canaries (default 120)",
    )
    stack = commands.add_parser(
        "stack", help="a local broker, schema registry and explain service that stay up"
    )
    stack.add_argument(
        "action",
        choices=("up", "down", "env"),
        help="up: start them and print their export lines; env: print the lines again; "
        "down: stop them all",
    )
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        sys.exit(_dispatch(args))
    except (CommandError, SettingsError) as exc:
        print(f"streams: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KafkaException as exc:
        # librdkafka's error names the failing operation, never a record's bytes.
        print(f"streams: error: Kafka: {exc.args[0].str()}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from streams.demo import run_demo

        return run_demo(keep=args.keep)
    if args.command == "stack":
        return _stack(args.action)
    environ = dict(os.environ)
    if args.topic_prefix is not None:
        environ["STREAMS_TOPIC_PREFIX"] = args.topic_prefix
    settings = Settings.read(
        environ,
        bootstrap_servers=args.bootstrap,
        registry_url=args.registry,
        worker_id=getattr(args, "worker_id", None),
    )
    if args.command == "topics":
        topic_names(settings.bootstrap_servers)  # one clear line when no broker answers
        admin = AdminClient(client_config(settings.bootstrap_servers))
        try:
            outcome = apply_topics(admin, settings.topology, durability=settings.durability)
        except DurabilityError as exc:
            raise CommandError(str(exc)) from None
        print("\n".join(outcome.lines))
        reader_contracts(settings).register_all()
        print("schemas registered")
    elif args.command == "run":
        run_job(args.job, settings)
    elif args.command == "explain":
        import json

        from streams.jobs.audit_index import render_text

        url = args.explain_url or os.environ.get(EXPLAIN_URL_ENV, "").strip() or None
        answer = explain(args.request_id, settings, url)
        print(json.dumps(answer, indent=2) if args.json else render_text(answer))
        return 0 if answer["found"] else 1
    elif args.command == "verify":
        return _verify_cluster(settings, args.timeout)
    return 0


def _stack(action: str) -> int:
    from streams.infra import stack

    if action == "up":
        state = stack.up()
    elif action == "env":
        found = stack.current()
        if found is None:
            raise CommandError("no local stack is running: `streams stack up` starts one")
        state = found
    else:
        print("stopped" if stack.down() else "no local stack was running")
        return 0
    print(state.exports())
    return 0


if __name__ == "__main__":
    main()
