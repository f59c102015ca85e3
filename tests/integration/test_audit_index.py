"""The audit index on faust-streaming (R16): why a request went where it went, by key.

Runs the index as its own process (its faust worker, on-disk store and web views) against
the real broker and registry, after the real router has decided a few requests.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from streams.jobs.audit_index import ask_service, render_text, scan_for
from tests.integration.conftest import Stack, explain_service
from tests.integration.test_router import request, run_router, watermark

pytestmark = pytest.mark.integration

NOW = int(time.time() * 1000)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except OSError:
        return 0, ""


def explain(base: str, subject_id: str, timeout_s: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        status, body = get(f"{base}/explain/{subject_id}")
        if status == 200 and json.loads(body)["found"]:
            return dict(json.loads(body))
        if time.monotonic() > deadline:
            raise AssertionError(f"no answer for {subject_id}: {status}")
        time.sleep(0.5)


def test_audit_index_explains_by_subject_id_over_http_R16(stack: Stack, tmp_path: Path) -> None:
    """``GET /explain/<id>``: every decision about the request, times in ISO 8601, rule ids;
    the page shows them to a person with each rule linked to its text; an unknown id says
    so; no content anywhere in the answers."""
    watermark(stack, NOW)
    stack.produce(
        "request_logs",
        [
            ("r-ok", request("org-ok", "r-ok", created=NOW - 60_000)),
            ("r-private", request("org-p", "r-private", deployment="PRIVATE")),
        ],
    )
    run_router(stack, decisions=2)
    with explain_service(stack, tmp_path) as base:
        answer = explain(base, "r-ok")
        (decision,) = answer["decisions"]
        assert decision["job"] == "router"
        assert "training_candidate" in decision["routes"] and "R9" in decision["rule_ids"]
        assert decision["decided_at"].endswith("Z") and "T" in decision["decided_at"]
        private = explain(base, "r-private")["decisions"][0]
        assert "R1" in private["rule_ids"]
        _, unknown = get(f"{base}/explain/never-seen")
        assert json.loads(unknown) == {"subject_id": "never-seen", "found": False, "decisions": []}
        status, page = get(f"{base}/?id=r-ok")
        assert status == 200 and "training_candidate" in page and 'href="/policy#r9"' in page
        status, policy = get(f"{base}/policy")
        assert status == 200 and "id='r9'" in policy
        for text in (json.dumps(answer), page):
            assert "CANARY" not in text  # R16: audit records carry no content
        # Without the service, only the partition the key hashes to is read: same answer.
        url = stack.registry_url
        assert scan_for("r-ok", stack.bootstrap, url, stack.topology) == answer
        assert ask_service(base, "r-ok") == answer
        assert "R9" in render_text(answer) and "T" in render_text(answer)
    assert "CANARY" not in (tmp_path / "index.log").read_text(errors="replace")
