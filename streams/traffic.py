"""Generated, realistic request traffic for the demo, the benchmarks and the tests.

Orgs are split by the mix (ZDR, opted out, Drive connector users, private and
third-party deployments); prompts are ~500 characters and generations ~800,
some carrying personal information so the R11 redactor has work to do.
Everything is deterministic for a given seed.
"""

from __future__ import annotations

import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.policy.models import DAY_MS

SENTENCES = [
    "The quarterly report shows revenue growth of 12% across all regions while costs remained "
    "stable.",
    "Please summarise the key risks for the Board and suggest three mitigations.",
    "Our customer support team in Berlin needs a friendly reply explaining the delayed shipment.",
    "Translate this paragraph into French, keeping the formal tone of the original text.",
    "Write a Python function that parses the log file and returns the 10 slowest requests.",
    "Compare the two contracts and list every clause where the liability terms differ.",
    "In 2023 the company moved its data platform to Kubernetes 1.27 on AWS.",
    "Version 3.11 of Python added exception groups and the new `tomllib` module.",
    "See https://docs.python.org/3/library/re.html for the regular expression syntax.",
    "The meeting is scheduled for Tuesday, 14 March 2024 at 10:30 in Building B.",
    "Explain the difference between TCP and UDP to a first-year student.",
    "The SQL query joins the orders table with customers on customer_id and groups by month.",
    "Our Q3 target is 1,250 new accounts, up from 980 in Q2.",
    "Use `git rebase -i HEAD~3` to squash the last three commits.",
    "The European Commission published new guidance on AI transparency last week.",
    "Summarise the attached PDF in five bullet points for the Marketing team.",
    "What are the main causes of the French Revolution, in order of importance?",
    "The function should return a dict mapping each user id to the number of sessions.",
    "Draft an email to the London office about the new travel policy.",
    "Set max_tokens to 512 and temperature to 0.7 for the summarisation endpoint.",
    "The dataset has 48,000 rows and 37 columns; 12% of the values are missing.",
    "Rewrite the introduction so it is clearer for a non-technical audience.",
    "The Amazon River flows through Brazil, Peru and Colombia.",
    "Kafka consumers in the same group share the partitions of a topic.",
    "Our API returns HTTP 429 when the rate limit of 1000 requests per minute is exceeded.",
    "The Treaty of Versailles was signed in 1919 after the First World War.",
    "Generate unit tests for the `parse_invoice` function using pytest.",
    "The patient education leaflet must be readable at a sixth-grade level.",
    'Convert the following JSON to YAML: {"name": "service", "replicas": 3}.',
    "Microsoft, Google and Apple all reported earnings on Thursday.",
]
CODE = [
    "```python\ndef slowest(path: str, n: int = 10) -> list[tuple[str, float]]:\n"
    "    rows = [line.split() for line in open(path)]\n"
    "    return sorted(((r[0], float(r[-1])) for r in rows), key=lambda x: -x[1])[:n]\n```",
    "```sql\nSELECT c.region, date_trunc('month', o.created_at) AS m, sum(o.total)\n"
    "FROM orders o JOIN customers c ON c.id = o.customer_id GROUP BY 1, 2;\n```",
    "```bash\nkubectl -n prod rollout restart deployment/api && kubectl get pods -w\n```",
]
PII = [
    "Contact me at jane.doe{n}@example.com for details.",
    "Call +1 415 555 01{n:02d} after five.",
    "My card is 4111 1111 1111 1111, expiry 12/29.",
    "The server at 203.0.113.{n} keeps timing out.",
    "Wire it to DE89 3704 0044 0532 0130 00 please.",
    "My name is Maria Gonzalez and I live at 42 Elm Street, Springfield.",
    "Use the key sk_live_{n:04d}abcdefghijklmnopqrstuv to authenticate.",
    "Dear Mr. Thompson, thank you for your letter.",
    "Her SSN is 123-45-67{n:02d}.",
    "export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY{n}",
]


def realistic_text(rng: random.Random, chars: int, pii: bool) -> str:
    """LLM-style English of about ``chars`` characters: prose with names of places and
    companies, numbers, versions, dates, URLs and some code; with one piece of personal
    information when ``pii``. Also the corpus of ``benchmarks/redaction_speed.py``."""
    parts: list[str] = []
    size = 0
    if pii:
        parts.append(rng.choice(PII).format(n=rng.randrange(100)))
    while size < chars:
        part = rng.choice(CODE) if rng.random() < 0.08 else rng.choice(SENTENCES)
        parts.append(part)
        size += len(part) + 1
    rng.shuffle(parts)
    text = " ".join(parts)
    return text if len(text) <= chars * 1.3 else text[: int(chars * 1.3)]


@dataclass(frozen=True, slots=True)
class TrafficMix:
    orgs: int = 200
    zdr: float = 0.10
    opted_out: float = 0.20
    drive_connector: float = 0.05
    private_deployment: float = 0.02
    third_party_deployment: float = 0.02
    pii: float = 0.10
    prompt_chars: int = 500
    generation_chars: int = 800


def unseen_text_corpus(limit_bytes: int = 32 << 20) -> str:
    """Text no benchmark sentence repeats: the standard library's Python sources (code,
    comments, docstrings; a few e-mail addresses and URLs), up to ``limit_bytes``.

    The default traffic repeats a few dozen sentences, so the redactor's RE2 pre-filter
    finds its DFA states built; on text it has not seen it builds new ones, as on real
    traffic (``benchmarks/router_bench.py --unseen-text``)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts: list[str] = []
    size = 0
    for path in sorted(root.rglob("*.py")):
        if size >= limit_bytes:
            break
        if "site-packages" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(text)
        size += len(text)
    return "\n".join(parts)


class TrafficGenerator:
    def __init__(
        self,
        mix: TrafficMix = TrafficMix(),
        seed: int = 7,
        start_ms: int = 0,
        corpus: str | None = None,
    ) -> None:
        """``corpus``: every prompt and generation is a window of it at a random offset
        (e.g. ``unseen_text_corpus()``) instead of one of 64 generated texts."""
        self.mix = mix
        self.corpus = corpus
        self.rng = random.Random(seed)
        self.start_ms = start_ms
        self.org_ids = [f"org-{i:04d}" for i in range(mix.orgs)]
        n_zdr = round(mix.orgs * mix.zdr)
        n_out = round(mix.orgs * mix.opted_out)
        self.zdr_orgs = set(self.org_ids[:n_zdr])
        self.opted_out_orgs = set(self.org_ids[n_zdr : n_zdr + n_out])
        self._prompts = [realistic_text(self.rng, mix.prompt_chars, False) for _ in range(64)]
        self._generations = [
            realistic_text(self.rng, mix.generation_chars, False) for _ in range(64)
        ]
        self._counter = 0

    def control_changes(self) -> list[dict[str, Any]]:
        """Data-control changes that put the ZDR and opted-out orgs in place a day before start."""
        effective = self.start_ms - DAY_MS
        changes = []
        for org in sorted(self.zdr_orgs | self.opted_out_orgs):
            changes.append(
                {
                    "change_id": f"setup-{org}",
                    "org_id": org,
                    "effective_at_ms": effective,
                    "consent_version": "setup-1",
                    "prompts_generations_training": False if org in self.opted_out_orgs else None,
                    "finetune_training": False if org in self.opted_out_orgs else None,
                    "zero_data_retention": True if org in self.zdr_orgs else None,
                    "retention_days": None,
                    "training_exclusion": None,
                    "paying_customer": True,
                }
            )
        return changes

    def request(self, created_at_ms: int, org_id: str | None = None) -> dict[str, Any]:
        rng = self.rng
        self._counter += 1
        org = org_id or rng.choice(self.org_ids)
        roll = rng.random()
        mix = self.mix
        if roll < mix.private_deployment:
            deployment = "PRIVATE"
        elif roll < mix.private_deployment + mix.third_party_deployment:
            deployment = "THIRD_PARTY_CLOUD"
        else:
            deployment = "SAAS"
        connectors = ["google_drive"] if rng.random() < mix.drive_connector else []
        if self.corpus:
            prompt, generation = self._window(mix.prompt_chars), self._window(mix.generation_chars)
        else:
            prompt, generation = rng.choice(self._prompts), None
        if rng.random() < mix.pii:
            prompt = rng.choice(PII).format(n=self._counter % 100) + " " + prompt
        return {
            "request_id": f"req-{self._counter:09d}-{rng.getrandbits(32):08x}",
            "org_id": org,
            "api_key_id": f"key-{org}-{rng.randrange(3)}",
            "key_type": "PRODUCTION",
            "created_at_ms": created_at_ms,
            "endpoint": rng.choice(("chat", "generate", "embed", "rerank")),
            "model": rng.choice(("command-r", "command-r-plus", "embed-v3")),
            "deployment": deployment,
            "source": "SLACK_APP" if connectors and rng.random() < 0.5 else "API",
            "connectors": connectors,
            "prompt": prompt,
            "documents": [],
            "generation": generation if generation is not None else rng.choice(self._generations),
            "input_tokens": rng.randrange(50, 400),
            "output_tokens": rng.randrange(50, 600),
            "client_ip": f"198.51.100.{rng.randrange(1, 255)}",
            "user_id": f"user-{rng.randrange(1000)}",
            "metadata": {"app": "demo"},
        }

    def _window(self, chars: int) -> str:
        assert self.corpus is not None
        start = self.rng.randrange(max(1, len(self.corpus) - chars))
        return self.corpus[start : start + chars]
