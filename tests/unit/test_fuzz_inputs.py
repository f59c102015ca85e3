"""R17, R2: every job's input decoding and validation, fuzzed for a few seconds each.

Coverage-guided (atheris / libFuzzer) over the real codecs and job code; the invariants are
in ``tests/fuzz/targets.py``: no exception escapes, no canary of a ZDR, private or
third-party record reaches an output, a control record that fails validation changes no
setting or hold. ``benchmarks/fuzz_inputs.py`` is the longer run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import build_targets

ROOT = Path(__file__).resolve().parents[2]


def test_r17_every_seed_of_every_target_is_handled() -> None:
    """The seeds (valid records of each contract) pass every invariant."""
    for target in build_targets().values():
        for seed in target.seeds:
            target.run(seed)


def test_r17_r2_fuzzing_every_decoder_finds_nothing() -> None:
    pytest.importorskip("atheris")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fuzz_inputs.py"), "--seconds", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 10, proc.stderr[-2000:]
    for result in results:
        assert result["tried"] > 100, result
        assert result["findings"] == [], result
    assert proc.returncode == 0
