"""R11 redactor accuracy on presidio-research synth_dataset_v2 (span level, per entity type).

    .venv/bin/python benchmarks/redaction_eval.py            # print the tables
    .venv/bin/python benchmarks/redaction_eval.py --write    # also update docs/redaction_results.md
    .venv/bin/python benchmarks/redaction_eval.py --errors dev --type PERSON   # misses / false hits

Scoring (span level, overlap):
* a gold span is *found* when a predicted span of the label its type maps to overlaps it;
* a predicted span is a *true positive* when it overlaps a gold span whose type maps to the
  predicted label; otherwise it is a false positive (also when it lands on an out-of-scope
  span such as an ORGANIZATION: we redacted something that is not R11 personal information);
* recall per dataset type, precision per placeholder label; overall figures pool the in-scope
  types. Out-of-scope types (no R11 placeholder) are reported with the share that got redacted
  anyway, and excluded from the overall figures.

Split: templates with ``template_id % 5 == 0`` are HELD OUT (never looked at while tuning the
heuristics); the rest is DEV. Both are reported, with the union (FULL).

Beside it, the human-style set of ``benchmarks/data/`` (chat, e-mail, clinical-note and
social-media style text in any letter case, see the README there): the same scoring, per type
and per letter case of the PERSON spans (Title, UPPER, lower, initials, @handles).

    .venv/bin/python benchmarks/redaction_eval.py --set human --errors dev
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams.policy.redaction import Redactor  # noqa: E402

DATASET = ROOT.parent / "shared" / "datasets" / "presidio-research" / "synth_dataset_v2.json"
RESULTS = ROOT / "docs" / "redaction_results.md"
HUMAN_DIR = ROOT / "benchmarks" / "data"
# DEV: tuned on. FRESH: written after the rules were frozen, scored once (see the README).
HUMAN_FILES = {"DEV": "human_style_dev.txt", "FRESH": "human_style_fresh.txt"}
_MARK = re.compile(r"\{([PTE])\|([^{}]*)\}")
_MARK_TYPES = {"P": "PERSON", "T": "PHONE_NUMBER", "E": "EMAIL_ADDRESS"}
HUMAN_TARGETS = {"person_recall": 0.80, "person_precision": 0.60, "phone_recall": 0.95}
CASES = ("Title", "UPPER", "lower", "initials", "handle", "mixed")

# Dataset entity type -> our placeholder label (R11). Types absent here are out of scope.
TYPE_MAP: dict[str, str] = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "CREDIT_CARD": "CREDIT_CARD",
    "IP_ADDRESS": "IP_ADDRESS",
    "IBAN_CODE": "IBAN",
    "US_SSN": "NATIONAL_ID",
    "US_DRIVER_LICENSE": "NATIONAL_ID",
    "STREET_ADDRESS": "STREET_ADDRESS",
    "PERSON": "PERSON",
}
OUT_OF_SCOPE = (
    "ORGANIZATION",
    "GPE",
    "DATE_TIME",
    "TITLE",
    "NRP",
    "AGE",
    "ZIP_CODE",
    "DOMAIN_NAME",
)
# Types R11 names explicitly and for which we target recall >= 0.99.
STRUCTURED = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IP_ADDRESS", "IBAN_CODE", "US_SSN",
              "US_DRIVER_LICENSE")  # fmt: skip
TARGETS = {"recall": 0.84, "precision": 0.87, "structured_recall": 0.99}


def held_out(template_id: Any) -> bool:
    return isinstance(template_id, int) and template_id % 5 == 0


@dataclass
class Scores:
    gold: Counter[str] = field(default_factory=Counter)  # per dataset type
    found: Counter[str] = field(default_factory=Counter)  # right label overlapped
    redacted: Counter[str] = field(default_factory=Counter)  # any placeholder overlapped
    predicted: Counter[str] = field(default_factory=Counter)  # per label
    tp: Counter[str] = field(default_factory=Counter)  # per label
    fp_on: Counter[str] = field(default_factory=Counter)  # FP label -> what it hit
    records: int = 0

    def recall(self, etype: str) -> float:
        return self.found[etype] / self.gold[etype] if self.gold[etype] else float("nan")

    def precision(self, label: str) -> float:
        return self.tp[label] / self.predicted[label] if self.predicted[label] else float("nan")

    @property
    def overall_recall(self) -> float:
        g = sum(self.gold[t] for t in TYPE_MAP)
        return sum(self.found[t] for t in TYPE_MAP) / g if g else float("nan")

    @property
    def overall_precision(self) -> float:
        p = sum(self.predicted.values())
        return sum(self.tp.values()) / p if p else float("nan")

    @property
    def redacted_recall(self) -> float:
        g = sum(self.gold[t] for t in TYPE_MAP)
        return sum(self.redacted[t] for t in TYPE_MAP) / g if g else float("nan")

    def structured_recall(self) -> float:
        g = sum(self.gold[t] for t in STRUCTURED)
        return sum(self.found[t] for t in STRUCTURED) / g if g else float("nan")


def load(path: Path = DATASET) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        data: list[dict[str, Any]] = json.load(f)
    return data


def parse_human(raw: str) -> list[dict[str, Any]]:
    """Records of a human-style file: blocks separated by "=====" lines, spans marked inline
    as ``{P|name}``, ``{T|phone}``, ``{E|e-mail}``; "#" lines before the first block are
    comments. Returned in the presidio-research record format."""
    blocks = raw.split("\n=====\n")[1:]
    records: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        text, spans, last = [], [], 0
        pos = 0
        for m in _MARK.finditer(block):
            text.append(block[last : m.start()])
            pos += m.start() - last
            value = m.group(2)
            spans.append({"start_position": pos, "end_position": pos + len(value),
                          "entity_type": _MARK_TYPES[m.group(1)]})  # fmt: skip
            text.append(value)
            pos += len(value)
            last = m.end()
        text.append(block[last:])
        full = "".join(text).rstrip("\n")
        records.append({"full_text": full, "spans": spans, "template_id": f"human-{i}"})
    return records


def load_human(directory: Path = HUMAN_DIR) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for split, name in HUMAN_FILES.items():
        path = directory / name
        if path.exists():
            out[split] = parse_human(path.read_text(encoding="utf-8"))
    return out


def letter_case(value: str) -> str:
    """Letter case of a name as written: Title ("Anna Lee", "Dr. Reyes"), UPPER, lower,
    initials ("J.K.", "D."), handle ("@mia_rose"), or mixed ("anthonyuJR", "j. Smith")."""
    if value.startswith("@"):
        return "handle"
    words = re.findall(r"[^\W\d_]+", value)
    if not words:
        return "mixed"
    if all(len(w) == 1 for w in words):
        return "initials"
    long_words = [w for w in words if len(w) > 1]
    if all(w.isupper() for w in long_words):
        return "UPPER"
    if all(w.islower() for w in long_words):
        return "lower"
    if all(w[0].isupper() and (w[1:].islower() or "'" in w) for w in long_words):
        return "Title"
    if all(w[0].isupper() for w in long_words):
        return "Title"  # "McDonald", "O'Connor"
    return "mixed"


@dataclass
class CaseScores:
    gold: Counter[str] = field(default_factory=Counter)
    found: Counter[str] = field(default_factory=Counter)
    predicted: Counter[str] = field(default_factory=Counter)
    tp: Counter[str] = field(default_factory=Counter)


def score_cases(records: list[dict[str, Any]], redactor: Redactor) -> CaseScores:
    """PERSON recall per letter case of the gold span; precision per letter case of the
    predicted span's text."""
    cs = CaseScores()
    for rec in records:
        text = rec["full_text"]
        gold = [(s["start_position"], s["end_position"], s["entity_type"]) for s in rec["spans"]]
        pred = [p for p in redactor.detect(text) if p[2] == "PERSON"]
        for gs, ge, etype in gold:
            if etype != "PERSON":
                continue
            case = letter_case(text[gs:ge])
            cs.gold[case] += 1
            if any(_overlaps((gs, ge), (p[0], p[1])) for p in pred):
                cs.found[case] += 1
        for ps, pe, _ in pred:
            case = letter_case(text[ps:pe])
            cs.predicted[case] += 1
            if any(_overlaps((ps, pe), (g[0], g[1])) and g[2] == "PERSON" for g in gold):
                cs.tp[case] += 1
    return cs


def render_human(results: dict[str, Scores], cases: dict[str, CaseScores], seconds: float) -> str:
    names = list(results)
    lines = ["### Human-style set: per type", ""]
    lines += ["| type | placeholder | " + " | ".join(
        f"{n} n | {n} recall | {n} predicted | {n} precision" for n in names
    ) + " |", "|" + "---|" * (2 + 4 * len(names))]  # fmt: skip
    for etype in ("PERSON", "PHONE_NUMBER", "EMAIL_ADDRESS"):
        label = TYPE_MAP[etype]
        cells = [etype, label]
        for n in names:
            sc = results[n]
            cells += [str(sc.gold[etype]), _f(sc.recall(etype)), str(sc.predicted[label]),
                      _f(sc.precision(label))]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "### Human-style set: PERSON per letter case", "",
              "Recall by the case of the gold name; precision by the case of the predicted "
              "span's text (a false hit on \"Foley\" counts under Title).", ""]  # fmt: skip
    lines += ["| letter case | " + " | ".join(
        f"{n} gold | {n} recall | {n} predicted | {n} precision" for n in names
    ) + " |", "|" + "---|" * (1 + 4 * len(names))]  # fmt: skip
    for case in CASES:
        cells = [case]
        for n in names:
            cs = cases[n]
            rec = cs.found[case] / cs.gold[case] if cs.gold[case] else float("nan")
            prec = cs.tp[case] / cs.predicted[case] if cs.predicted[case] else float("nan")
            cells += [str(cs.gold[case]), _f(rec), str(cs.predicted[case]), _f(prec)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| split | records | in-scope gold spans | precision | recall |",
              "|---|---|---|---|---|"]  # fmt: skip
    for n in names:
        sc = results[n]
        g = sum(sc.gold[t] for t in TYPE_MAP)
        lines.append(f"| {n} | {sc.records} | {g} | {_f(sc.overall_precision)} "
                     f"| {_f(sc.overall_recall)} |")  # fmt: skip
    fps = ", ".join(f"{k} {v}" for k, v in results[names[0]].fp_on.most_common())
    lines += ["", f"False positives by what they landed on ({names[0]}): {fps or 'none'}.", "",
              f"Evaluation time: {seconds:.2f} s."]  # fmt: skip
    return "\n".join(lines)


def evaluate_human(
    redactor: Redactor | None = None,
) -> tuple[dict[str, Scores], dict[str, CaseScores]]:
    redactor = redactor or Redactor()
    sets = load_human()
    return ({n: score(r, redactor) for n, r in sets.items()},
            {n: score_cases(r, redactor) for n, r in sets.items()})  # fmt: skip


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def score(
    records: list[dict[str, Any]], redactor: Redactor, errors: list[str] | None = None,
    error_type: str | None = None,
) -> Scores:  # fmt: skip
    sc = Scores()
    for rec in records:
        text = rec["full_text"]
        gold = [(s["start_position"], s["end_position"], s["entity_type"]) for s in rec["spans"]]
        pred = redactor.detect(text)
        sc.records += 1
        for gs, ge, etype in gold:
            sc.gold[etype] += 1
            hits = [p for p in pred if _overlaps((gs, ge), (p[0], p[1]))]
            if hits:
                sc.redacted[etype] += 1
            if etype in TYPE_MAP and any(p[2] == TYPE_MAP[etype] for p in hits):
                sc.found[etype] += 1
            elif errors is not None and etype in TYPE_MAP and error_type in (None, etype):
                errors.append(f"MISS {etype:15s} {text[gs:ge]!r:40s} in {text!r}")
        for ps, pe, label in pred:
            sc.predicted[label] += 1
            hit = [g for g in gold if _overlaps((ps, pe), (g[0], g[1]))]
            if any(TYPE_MAP.get(g[2]) == label for g in hit):
                sc.tp[label] += 1
            else:
                sc.fp_on[f"{label}->{hit[0][2] if hit else 'nothing'}"] += 1
                if (
                    errors is not None
                    and error_type in (None, label)
                    or (
                        errors is not None
                        and error_type in TYPE_MAP
                        and TYPE_MAP[error_type] == label
                    )
                ):
                    errors.append(f"FP   {label:15s} {text[ps:pe]!r:40s} in {text!r}")
    return sc


def splits(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return {
        "FULL": records,
        "DEV": [r for r in records if not held_out(r.get("template_id"))],
        "HELD-OUT": [r for r in records if held_out(r.get("template_id"))],
    }


def evaluate(path: Path = DATASET, redactor: Redactor | None = None) -> dict[str, Scores]:
    redactor = redactor or Redactor()
    return {name: score(recs, redactor) for name, recs in splits(load(path)).items()}


def _f(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"


def render(results: dict[str, Scores], seconds: float) -> str:
    names = list(results)
    lines = ["### Per entity type (recall: gold spans found with the right placeholder)", ""]
    head = (
        "| dataset type | placeholder | "
        + " | ".join(f"{n} n | {n} recall | {n} redacted" for n in names)
        + " |"
    )
    lines += [head, "|" + "---|" * (2 + 3 * len(names))]
    for etype in list(TYPE_MAP) + list(OUT_OF_SCOPE):
        cells = [etype, TYPE_MAP.get(etype, "— (out of scope)")]
        for n in names:
            sc = results[n]
            rec = _f(sc.recall(etype)) if etype in TYPE_MAP else "—"
            red = sc.redacted[etype] / sc.gold[etype] if sc.gold[etype] else float("nan")
            cells += [str(sc.gold[etype]), rec, _f(red)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "### Per placeholder (precision: predicted spans that overlap a gold span of "
              "the same kind)", ""]  # fmt: skip
    lines += ["| placeholder | " + " | ".join(f"{n} predicted | {n} precision" for n in names)
              + " |", "|" + "---|" * (1 + 2 * len(names))]  # fmt: skip
    predicted = {lab for sc in results.values() for lab in sc.predicted}
    labels = sorted(predicted | set(TYPE_MAP.values()))
    for label in labels:
        cells = [label]
        for n in names:
            cells += [str(results[n].predicted[label]), _f(results[n].precision(label))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "### Overall, in-scope types only", ""]
    lines += [
        "| split | records | in-scope gold spans | precision | recall "
        "| redacted (any placeholder) | structured-types recall |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in names:
        sc = results[n]
        g = sum(sc.gold[t] for t in TYPE_MAP)
        lines.append(
            f"| {n} | {sc.records} | {g} | {_f(sc.overall_precision)} | {_f(sc.overall_recall)}"
            f" | {_f(sc.redacted_recall)} | {_f(sc.structured_recall())} |"
        )
    lines += ["", "False positives by what they landed on (FULL): " + ", ".join(
        f"{k} {v}" for k, v in results["FULL"].fp_on.most_common()
    ) + ".", "", f"Evaluation time: {seconds:.1f} s for all splits."]  # fmt: skip
    return "\n".join(lines)


def write_section(markdown: str, marker: str, path: Path = RESULTS) -> None:
    """Replace the ``<!-- marker:start -->..<!-- marker:end -->`` block of the results file."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    block = f"{start}\n{markdown}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# R11 redaction results\n"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=DATASET)
    ap.add_argument("--write", action="store_true", help="update docs/redaction_results.md")
    ap.add_argument("--errors", choices=["dev", "held-out", "full"], help="print misses and FPs")
    ap.add_argument("--type", help="restrict --errors to a dataset type or a placeholder label")
    ap.add_argument("--set", choices=["synthetic", "human", "both"], default="both")
    args = ap.parse_args()
    redactor = Redactor()
    if args.set == "human" and args.errors:
        key = {"dev": "DEV", "held-out": "FRESH", "full": "DEV"}[args.errors]
        errs: list[str] = []
        score(load_human()[key], redactor, errs, args.type)
        print("\n".join(errs))
        return
    if args.set != "synthetic":
        t0 = time.perf_counter()
        human, cases = evaluate_human(redactor)
        md_human = render_human(human, cases, time.perf_counter() - t0)
        print(md_human + "\n")
        if args.write:
            write_section(md_human, "eval-human")
        if args.set == "human":
            return
    records = load(args.dataset)
    if args.errors:
        key = {"dev": "DEV", "held-out": "HELD-OUT", "full": "FULL"}[args.errors]
        errs = []
        score(splits(records)[key], redactor, errs, args.type)
        print("\n".join(errs))
        return
    t0 = time.perf_counter()
    results = {name: score(recs, redactor) for name, recs in splits(records).items()}
    seconds = time.perf_counter() - t0
    md = render(results, seconds)
    print(md)
    if args.write:
        write_section(md, "eval")
        print(f"\nwrote {RESULTS.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
