"""The ``streams`` command line: options before or after the command, help for every
argument, one-line errors; the demo summary's tables and the rule legend (R16)."""

from __future__ import annotations

import argparse

import pytest

from streams.cli import main, parser
from streams.demo import _table
from streams.infra.stack import StackState
from streams.jobs.audit_index import rule_titles


@pytest.mark.parametrize(
    "argv",
    [
        ["--bootstrap", "b:1", "--registry", "http://r", "explain", "r-1"],
        ["explain", "r-1", "--bootstrap", "b:1", "--registry", "http://r"],
        ["--bootstrap", "b:1", "explain", "--registry", "http://r", "r-1"],
    ],
)
def test_connection_options_go_before_or_after_the_command(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    assert (args.bootstrap, args.registry, args.request_id) == ("b:1", "http://r", "r-1")


def test_an_option_before_the_command_is_not_lost_to_the_subcommand_default() -> None:
    args = parser().parse_args(["--topic-prefix", "p.", "verify"])
    assert args.topic_prefix == "p." and args.bootstrap is None


def _parsers(root: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [root]
    for action in root._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _parsers(sub)
    return found


def test_every_argument_has_help() -> None:
    for command in _parsers(parser()):
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{command.prog}: {action.option_strings or action.dest}"


def test_missing_settings_are_one_line_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("SCHEMA_REGISTRY_URL", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["explain", "r-1"])
    assert exit_.value.code == 2
    _, err = capsys.readouterr()
    assert err.startswith("streams: error: set --bootstrap/--registry") and err.count("\n") == 1


def test_rule_legend_has_every_rule_in_the_policy_words_R16() -> None:
    titles = rule_titles()
    assert sorted(titles, key=lambda r: int(r[1:])) == [f"R{i}" for i in range(1, 19)]
    assert titles["R2"] == "Zero data retention" and titles["R17"] == "Bad input"


def test_demo_tables_add_up_and_fit_their_longest_cell() -> None:
    rows = [("log_store + training_candidate + usage", 3_054, "R3 R4"), ("usage", 471, "R2")]
    lines = _table(rows, "requests", notes_header="rules")
    assert lines[-1].split() == ["total", "3,525"]
    # The counts end in one column, right under the end of their header.
    ends = {
        line.index(n) + len(n) for line in lines for n in ("3,054", "471", "3,525") if n in line
    }
    assert ends == {lines[0].index("requests") + len("requests")}


def test_demo_notes_wrap_within_the_summary_width() -> None:
    lines = _table([("log-store", 4_272, "a long note " * 20)], "records", total=False)
    assert len(lines) > 2 and max(len(line) for line in lines) <= 100


def test_stack_exports_are_shell_lines() -> None:
    state = StackState("127.0.0.1:9", "http://r", "http://e", "demo1.", 1, 2, 3)
    assert state.exports().splitlines() == [
        "export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9",
        "export SCHEMA_REGISTRY_URL=http://r",
        "export STREAMS_EXPLAIN_URL=http://e",
        "export STREAMS_TOPIC_PREFIX=demo1.",
    ]


def test_explanation_orders_the_pipeline_and_shows_iso_times_in_reasons_R16() -> None:
    from streams.jobs.audit_index import explanation, merge

    def record(job: str, decision_id: str, reason: str) -> dict[str, object]:
        return {
            "decision_id": decision_id,
            "job": job,
            "decided_at_ms": 1_780_000_000_000,
            "reasons": [reason],
        }

    stored = merge(None, record("retention", "a", "R4: retained until 1799132183295"))
    stored = merge(stored, record("router", "b", "R9: training candidate"))
    answer = explanation("r-1", stored)
    assert [d["job"] for d in answer["decisions"]] == ["router", "retention"]
    assert answer["decisions"][1]["reasons"] == ["R4: retained until 2027-01-05T06:56:23.295Z"]
