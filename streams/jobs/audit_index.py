"""The audit index: "why did this request go there?" answered at any volume (R16).

A faust-streaming app, used the way faust is meant to be used:

* an agent over the audit topic (at-least-once: a record may be read twice after a crash);
* a table keyed by subject id (request id, fine-tune row id, candidate id, ...) holding that
  subject's decisions by decision id, so a repeated record changes nothing: at-least-once
  is exact by construction;
* faust's on-disk store (RocksDB, through ``rocksdict``): the index lives on disk, not in
  memory, and a restart with its disk reads back only what it missed;
* faust web views: ``GET /explain/<id>`` (JSON) and ``GET /`` (a page where a privacy or
  support engineer types an id and reads why it went where it went).

Audit records never carry content (R16), so neither does the index.

Run it:  streams run audit-index   (port ``STREAMS_EXPLAIN_PORT``, default 6066), or
         python -m streams.jobs.audit_index --port N
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faust
from faust.web import Request, Response, View

from streams.kafka.compacted import read_topic
from streams.kafka.faust_app import (
    FaustSettings,
    build_app,
    partition_for,
    raw_topic,
)
from streams.kafka.serde import Codec, Contracts, DecodeError, load_schema_text, registry_client
from streams.kafka.topics import Topology, partition_counts, spec_for
from streams.settings import Settings, SettingsError

log = logging.getLogger("streams.audit_index")

JOB = "audit-index"
DEFAULT_PORT = 6066
# The fields of an audit record the index keeps: all but the subject, which is the key.
_KEPT = tuple(
    f["name"]
    for f in json.loads(load_schema_text(spec_for("audit").schema))["fields"]
    if f["name"] != "subject_id"
)


def iso(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 in UTC."""
    seconds, millis = divmod(int(ms), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def merge(stored: bytes | None, record: Mapping[str, Any]) -> bytes:
    """The subject's decisions with ``record`` added, keyed by decision id (idempotent)."""
    decisions: dict[str, Any] = json.loads(stored) if stored else {}
    decisions[str(record["decision_id"])] = {name: record.get(name) for name in _KEPT}
    return json.dumps(decisions, separators=(",", ":"), sort_keys=True).encode()


# Decisions made in the same millisecond are shown in the order the pipeline makes them.
_STAGE = {"router": 0, "retention": 1, "usage": 2, "safety-evaluation": 3}
# Epoch milliseconds in a reason ("R4: retained until 1799132183295"), years 2001 to 2286.
_EPOCH_MS = re.compile(r"\b[1-9]\d{12}\b")


def explanation(subject_id: str, stored: bytes | None) -> dict[str, Any]:
    """The JSON answer: every decision about the subject, oldest first, times in ISO 8601
    (the times inside the reasons too)."""
    decisions = sorted(
        (json.loads(stored) if stored else {}).values(),
        key=lambda d: (d["decided_at_ms"], _STAGE.get(d["job"], 9), d["decision_id"]),
    )
    for decision in decisions:
        decision["decided_at"] = iso(decision.pop("decided_at_ms"))
        decision["reasons"] = [
            _EPOCH_MS.sub(lambda m: iso(int(m.group())), reason) for reason in decision["reasons"]
        ]
    return {"subject_id": subject_id, "found": bool(decisions), "decisions": decisions}


class AuditIndex:
    """The faust app, its table and its views."""

    def __init__(
        self,
        bootstrap_servers: str,
        registry_url: str,
        topology: Topology,
        state_dir: Path,
        port: int = DEFAULT_PORT,
        bind: str = "127.0.0.1",
    ) -> None:
        self.topology = topology
        self.codec: Codec = Contracts(registry_client(registry_url), topology).reader("audit")
        audit = topology.audit
        partitions = partition_counts(bootstrap_servers, [audit])[audit]
        self.app = build_app(
            FaustSettings(
                job=JOB,
                bootstrap_servers=bootstrap_servers,
                topics=topology,
                state_dir=state_dir,
                partitions=partitions,
                extra={
                    "store": "rocksdb://",
                    "web_enabled": True,
                    "web_port": port,
                    "web_bind": bind,
                    "web_host": bind,
                },
            )
        )
        self.decisions = self.app.Table(
            "decisions", key_type=str, value_type=bytes, partitions=partitions
        )
        self.indexed = 0
        self.app.agent(raw_topic(self.app, audit), name=f"{JOB}-agent")(self._index)
        index = self

        @self.app.page("/explain/{subject_id}")
        class Explain(View):
            async def get(self, request: Request, subject_id: str) -> Response:
                return self.json(explanation(subject_id, index.decisions.get(subject_id)))

        @self.app.page("/policy")
        class Policy(View):
            async def get(self, request: Request) -> Response:
                return self.html(render_policy(POLICY_FILE.read_text()))

        @self.app.page("/")
        class Page(View):
            async def get(self, request: Request) -> Response:
                subject_id = request.query.get("id", "").strip()
                answer = explanation(subject_id, index.decisions.get(subject_id))
                return self.html(render_page(subject_id, answer) if subject_id else render_page())

    async def _index(self, stream: faust.StreamT) -> None:
        async for event in stream.events():
            value = event.message.value
            try:
                record = self.codec.decode(value)
            except DecodeError:
                continue  # not an audit record of this contract: nothing to explain
            subject_id = str(record["subject_id"])
            self.decisions[subject_id] = merge(self.decisions.get(subject_id), record)
            self.indexed += 1


def render_page(subject_id: str = "", answer: Mapping[str, Any] | None = None) -> str:
    """The page: a form, and the decisions about ``subject_id`` (rule ids link to their text
    in docs/policy.md)."""
    body = [
        "<h1>Why did it go there?</h1>",
        '<form method="get" action="/"><label for="id">Request id</label> ',
        f'<input id="id" name="id" value="{html.escape(subject_id)}" autofocus> ',
        '<button type="submit">Explain</button></form>',
    ]
    if answer is not None:
        if not answer["decisions"]:
            body.append(f"<p id='none'>No audited decision for {html.escape(subject_id)}.</p>")
        for decision in answer["decisions"]:
            rules = ", ".join(
                f'<a href="{POLICY_DOC}#{html.escape(r.lower())}">{html.escape(r)}</a>'
                for r in decision["rule_ids"]
            )
            reasons = "".join(f"<li>{html.escape(r)}</li>" for r in decision["reasons"])
            body.append(
                "<section class='decision'>"
                f"<h2>{html.escape(decision['job'])} at <time>{decision['decided_at']}</time></h2>"
                f"<p>routes: <b class='routes'>{html.escape(', '.join(decision['routes']) or '-')}"
                f"</b></p><p>rules: {rules}</p><ul>{reasons}</ul>"
                f"<p>policy {html.escape(decision['policy_version'])}, consent "
                f"{html.escape(decision['consent_version'] or '-')}</p></section>"
            )
    return _html("explain", "".join(body))


# Rule ids link to the rules' text, served from the repository's docs/policy.md.
POLICY_DOC = "/policy"
POLICY_FILE = Path(__file__).resolve().parents[2] / "docs" / "policy.md"
_RULE_LINE = re.compile(r"^- \*\*(R\d+) ")
_RULE_TITLE = re.compile(r"^- \*\*(R\d+) (.+?)\.?\*\*")


def rule_titles(markdown: str | None = None) -> dict[str, str]:
    """Each rule id with its title in the policy's words (``R2``: ``Zero data retention``),
    from docs/policy.md."""
    text = POLICY_FILE.read_text() if markdown is None else markdown
    titles: dict[str, str] = {}
    for match in map(_RULE_TITLE.match, text.splitlines()):
        if match is not None:  # the rules come first; later lines are decisions about them
            titles.setdefault(match.group(1), match.group(2))
    return titles


def render_policy(markdown: str) -> str:
    """docs/policy.md as a page, each rule with an anchor (``/policy#r5``)."""
    lines = []
    for line in markdown.splitlines():
        match = _RULE_LINE.match(line)
        anchor = f" id='{match.group(1).lower()}'" if match else ""
        lines.append(f"<p{anchor}>{html.escape(line)}</p>" if line.strip() else "")
    return _html("the policy", "".join(lines))


def _html(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>privacy-streams: {title}</title></head><body>{body}</body></html>"
    )


# --- asking: the service, else the one partition the key hashes to -------------------------
def ask_service(url: str, subject_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The explain service's answer (``GET <url>/explain/<id>``)."""
    quoted = urllib.parse.quote(subject_id, safe="")
    with urllib.request.urlopen(f"{url.rstrip('/')}/explain/{quoted}", timeout=timeout_s) as r:
        return dict(json.loads(r.read()))


def scan_for(
    subject_id: str, bootstrap_servers: str, registry_url: str, topology: Topology
) -> dict[str, Any]:
    """The same answer without the service: the audit topic is keyed by subject id, so only
    the partition the key hashes to is read (librdkafka's partitioner, as every job writes)."""
    audit = topology.audit
    codec = Contracts(registry_client(registry_url), topology).reader("audit")
    partition = partition_for(subject_id, partition_counts(bootstrap_servers, [audit])[audit])
    stored: bytes | None = None
    wanted = subject_id.encode()
    for key, value, _, _ in read_topic(bootstrap_servers, audit, partitions=[partition]):
        if key != wanted or value is None:
            continue
        try:
            stored = merge(stored, codec.decode(value))
        except DecodeError:
            continue
    return explanation(subject_id, stored)


def render_text(answer: Mapping[str, Any]) -> str:
    """An answer for a person in a terminal (``streams explain``)."""
    subject_id = answer["subject_id"]
    if not answer["decisions"]:
        return f"no audited decision for {subject_id}"
    lines = [f"request {subject_id}:"]
    for d in answer["decisions"]:
        source = f"{d['source_topic']}/{d['source_partition']}/{d['source_offset']}"
        lines.append(
            f"{d['job']} decided at {d['decided_at']}"
            f" (policy {d['policy_version']}, consent {d['consent_version'] or '-'})\n"
            f"  routes: {', '.join(d['routes']) or '-'}\n"
            f"  rules:  {', '.join(d['rule_ids'])} (docs/policy.md)\n"
            + "".join(f"  - {reason}\n" for reason in d["reasons"])
            + f"  from {source}"
        )
    return "\n".join(lines)


def serve(settings: Settings, port: int | None = None, bind: str | None = None) -> None:
    """Index the audit topic and answer on ``port`` until SIGTERM/SIGINT (``streams run
    audit-index``); port and bind default to ``STREAMS_EXPLAIN_PORT``/``STREAMS_EXPLAIN_BIND``."""
    topology = settings.topology
    state_dir = settings.state_dir or Path("var") / "audit-index" / topology.audit
    index = AuditIndex(
        settings.bootstrap_servers,
        settings.registry_url,
        topology,
        state_dir,
        port if port is not None else int(os.environ.get("STREAMS_EXPLAIN_PORT", DEFAULT_PORT)),
        bind or os.environ.get("STREAMS_EXPLAIN_BIND", "127.0.0.1"),
    )
    worker = faust.Worker(index.app, loglevel="INFO", quiet=True)
    worker.execute_from_commandline()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the audit index and its explain service.")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (KAFKA_BOOTSTRAP_SERVERS)")
    parser.add_argument("--registry", help="schema registry URL (SCHEMA_REGISTRY_URL)")
    parser.add_argument(
        "--port", type=int, help=f"HTTP port (STREAMS_EXPLAIN_PORT, default {DEFAULT_PORT})"
    )
    parser.add_argument("--bind", help="address to listen on (STREAMS_EXPLAIN_BIND, 127.0.0.1)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.read(bootstrap_servers=args.bootstrap, registry_url=args.registry)
    except SettingsError as exc:
        parser.error(str(exc))
    serve(settings, args.port, args.bind)


if __name__ == "__main__":
    main()
