"""Every `.kir` file under tests/ round-trips: print(parse(file)) parses and prints identically.

Files may hold `// RUN:` and `// CHECK:` lines (comments to the parser). Files written to fail
(`expected-error` diagnostics tests) are skipped: their job is to be rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

import kiln.ir.ops
import kiln.ir.ops.core
import kiln.ir.ops.elementwise  # noqa: F401 - kiln.ir.ops registers every family once complete
from kiln.ir.ops.base import OpDef, lookup_op, register_op
from kiln.ir.parser import parse

TESTS = Path(__file__).parents[1]
KIR_FILES = sorted(TESTS.rglob("*.kir"))


@dataclass(frozen=True)
class RegionOpForTests(OpDef):
    """A test-only op with a region: its results are what the region yields."""

    NAME = "kiln.test_region"
    OPERANDS = ("inputs*",)
    NUM_RESULTS = None
    HAS_REGION = True
    label: str = ""


if lookup_op(RegionOpForTests.NAME) is None:
    register_op(RegionOpForTests)


def test_the_samples_are_found() -> None:
    names = {p.name for p in KIR_FILES}
    assert {"basic.kir", "types.kir", "attrs.kir", "locations.kir", "region.kir"} <= names


@pytest.mark.parametrize("path", KIR_FILES, ids=[str(p.relative_to(TESTS)) for p in KIR_FILES])
def test_print_parse_print_is_stable(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if "expected-error" in text:
        pytest.skip("a diagnostics test: the file is meant to be rejected")
    first = parse(text, verify=False, filename=str(path)).to_text()
    second = parse(first, verify=False).to_text()
    assert second == first
