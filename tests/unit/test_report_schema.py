"""The report schema's validator: what it accepts and what it names when it rejects."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import kiln
from kiln.errors import KilnError
from kiln.report import SCHEMA_VERSION, load_report, problems_of, validate_report


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    return kiln.compile(model.eval(), (torch.randn(1, 6),)).report()


def test_a_fresh_report_is_valid(report: dict[str, Any]) -> None:
    assert problems_of(report) == [] and report["schema_version"] == SCHEMA_VERSION


@pytest.mark.parametrize(("change", "expected"), [
    (lambda r: r.pop("manifest"), "report lacks 'manifest'"),
    (lambda r: r.__setitem__("schema_version", 99), "schema_version is 99"),
    (lambda r: r["per_layer"][0].pop("flops"), "per_layer[0] lacks 'flops'"),
    (lambda r: r["per_layer"][0]["latency"].__setitem__("source", "guessed"),
     "per_layer[0].latency.source is 'guessed'"),
    (lambda r: r["totals"].__setitem__("flops", True), "totals.flops is bool"),
    (lambda r: r["totals"]["latency"].pop("method"), "totals.latency lacks 'method'"),
    (lambda r: r["passes"].append("cse"), "passes[7] is str"),
])
def test_each_problem_is_named(report: dict[str, Any], change: Any, expected: str) -> None:
    bad = copy.deepcopy(report)
    change(bad)
    problems = problems_of(bad)
    assert any(p.startswith(expected) for p in problems), problems
    with pytest.raises(KilnError, match="does not follow kiln's report schema"):
        validate_report(bad)


def test_load_report_errors_are_clear(tmp_path: Path, report: dict[str, Any]) -> None:
    with pytest.raises(KilnError, match="no report at"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(KilnError, match="cannot read the report"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps({"target": "cpu"}))
    with pytest.raises(KilnError, match="lacks 'schema_version'"):
        load_report(tmp_path / "report.json")
