"""Generated, realistic request traffic for the demo, the benchmarks and the tests.

Orgs are split by the mix (ZDR, opted out, Drive connector users, private and
third-party deployments); prompts are ~500 characters and generations ~800,
some carrying personal information so the R11 redactor has work to do.
Everything is deterministic for a given seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from streams.policy.models import DAY_MS

_WORDS = (
    "the quarterly report shows revenue growth across all regions while costs remained "
    "stable please summarise the key risks for the board and suggest three mitigations "
    "our customer support team needs a friendly reply explaining the delayed shipment "
    "translate this paragraph into french keeping the formal tone of the original text "
    "write a python function that parses the log file and returns the slowest requests "
    "compare the two contracts and list every clause where the liability terms differ"
).split()

_PII = (
    "Contact me at jane.doe{n}@example.com for details.",
    "Call +1 415 555 01{n:02d} after five.",
    "My card is 4111 1111 1111 1111, expiry 12/29.",
    "The server at 203.0.113.{n} keeps timing out.",
    "Wire it to DE89 3704 0044 0532 0130 00 please.",
    "My name is Maria Gonzalez and I live at 42 Elm Street, Springfield.",
    "Use the key sk_live_{n:04d}abcdefghijklmnopqrstuv to authenticate.",
)


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


def _text(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:chars]


class TrafficGenerator:
    def __init__(self, mix: TrafficMix = TrafficMix(), seed: int = 7, start_ms: int = 0) -> None:
        self.mix = mix
        self.rng = random.Random(seed)
        self.start_ms = start_ms
        self.org_ids = [f"org-{i:04d}" for i in range(mix.orgs)]
        n_zdr = round(mix.orgs * mix.zdr)
        n_out = round(mix.orgs * mix.opted_out)
        self.zdr_orgs = set(self.org_ids[:n_zdr])
        self.opted_out_orgs = set(self.org_ids[n_zdr : n_zdr + n_out])
        self._prompts = [_text(self.rng, mix.prompt_chars) for _ in range(64)]
        self._generations = [_text(self.rng, mix.generation_chars) for _ in range(64)]
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
        prompt = rng.choice(self._prompts)
        if rng.random() < mix.pii:
            prompt = rng.choice(_PII).format(n=self._counter % 100) + " " + prompt
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
            "generation": rng.choice(self._generations),
            "input_tokens": rng.randrange(50, 400),
            "output_tokens": rng.randrange(50, 600),
            "client_ip": f"198.51.100.{rng.randrange(1, 255)}",
            "user_id": f"user-{rng.randrange(1000)}",
            "metadata": {"app": "demo"},
        }
