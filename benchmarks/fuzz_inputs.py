"""Fuzz every job's input decoding and validation (R17, R2), coverage-guided with atheris.

One target per input topic (``tests/fuzz/targets.py``): request logs, fine-tune rows,
data-control changes, watermarks, misuse flags, legal holds, account deletions, log-store
records, usage events, safety-review records. Each runs in its own process (libFuzzer ends
the process when it is done), starting from valid records of the topic's contract, and
prints the records tried, libFuzzer's coverage (edges ``cov``, features ``ft``) and the
findings: invariants broken or exceptions escaping, by type and place, never the input.

    .venv/bin/python benchmarks/fuzz_inputs.py [--seconds 60] [--target request_logs ...]

Not a test: ``tests/unit/test_fuzz_inputs.py`` runs a few seconds of each in the suite.
Exits 1 when anything was found.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_STATS = re.compile(r"#(\d+)\s+\S+\s+cov: (\d+) ft: (\d+)")
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
TARGETS = (
    "request_logs",
    "finetune_rows",
    "data_controls",
    "controls_watermark",
    "misuse_flags",
    "legal_holds",
    "account_deletions",
    "log_store",
    "usage_events",
    "safety_review",
)


def child(name: str, seconds: int, findings_path: Path, corpus: Path) -> None:
    """Runs in its own process: one target under libFuzzer until ``seconds`` pass."""
    import atheris

    with atheris.instrument_imports(include=["streams", "tests.fuzz"]):
        from tests.fuzz.targets import build_targets, finding_line

    target = build_targets()[name]
    for i, seed in enumerate(target.seeds):
        (corpus / f"seed-{i}").write_bytes(seed)
    seen: set[str] = set()

    def one_input(data: bytes) -> None:
        try:
            target.run(data)
        except Exception as exc:  # every escape is a finding; the fuzzer goes on
            line = finding_line(name, exc)
            if line not in seen:
                seen.add(line)
                with findings_path.open("a") as out:
                    out.write(line + "\n")

    atheris.Setup(
        [
            sys.argv[0],
            f"-max_total_time={seconds}",
            "-max_len=4096",
            "-rss_limit_mb=4096",
            "-print_final_stats=1",
            str(corpus),
        ],
        one_input,
    )
    atheris.Fuzz()


def run(name: str, seconds: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        findings = Path(tmp) / "findings.jsonl"
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, __file__, "--child", name, "--seconds", str(seconds), "--dir", tmp],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=seconds + 300,
        )
        output = proc.stdout + proc.stderr
        stats = _STATS.findall(output)
        done = _DONE.findall(output)
        tried = int(done[-1][0]) if done else (int(stats[-1][0]) if stats else 0)
        lines = findings.read_text().splitlines() if findings.exists() else []
        if proc.returncode not in (0,) and not lines:
            lines = [json.dumps({"target": name, "finding": f"fuzzer exited {proc.returncode}"})]
        return {
            "target": name,
            "tried": tried,
            "cov": int(stats[-1][1]) if stats else 0,
            "ft": int(stats[-1][2]) if stats else 0,
            "seconds": round(time.monotonic() - started, 1),
            "findings": [json.loads(line) for line in lines],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time per target")
    parser.add_argument("--target", action="append", choices=TARGETS, help="default: all")
    parser.add_argument("--json", action="store_true", help="one JSON object per target")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        tmp = Path(args.dir)
        child(args.child, args.seconds, tmp / "findings.jsonl", tmp / "corpus")
        return
    results = [run(name, args.seconds) for name in args.target or TARGETS]
    if args.json:
        for result in results:
            print(json.dumps(result))
    else:
        print(f"{'target':<20} {'records tried':>14} {'cov':>6} {'ft':>7} {'s':>6}  findings")
        for r in results:
            found = "; ".join(
                f["finding"] + (f" at {f['where']}" if "where" in f else "")
                for f in r["findings"]  # type: ignore[attr-defined]
            )
            print(
                f"{r['target']:<20} {r['tried']:>14,} {r['cov']:>6} {r['ft']:>7} "
                f"{r['seconds']:>6}  {found or 'none'}"
            )
    sys.exit(1 if any(r["findings"] for r in results) else 0)


if __name__ == "__main__":
    main()
