"""ASIC cost model: Horowitz's 45 nm figures, bit-width scaling, node scaling, counts."""

from __future__ import annotations

import pytest

from kiln.errors import KilnError
from kiln.targets.cost import asic_report
from kiln.targets.cost.asic_estimate import ADD_45NM, MUL_45NM, power_law
from tests.unit.fpga_models import dense


def test_published_points_reproduced() -> None:
    assert power_law(MUL_45NM["pj"], 8 * 8) == pytest.approx(0.2)
    assert power_law(MUL_45NM["pj"], 32 * 32) == pytest.approx(3.1)
    assert power_law(ADD_45NM["pj"], 8) == pytest.approx(0.03)
    assert power_law(ADD_45NM["um2"], 32) == pytest.approx(137.0)
    assert 0.2 < power_law(MUL_45NM["pj"], 16 * 16) < 3.1


def test_counts_and_keys() -> None:
    report = asic_report(dense(16, 8), node="45nm")
    for key in ("area_um2", "energy_pj", "multipliers", "adders", "layers"):
        assert key in report
    assert report["multipliers"] == 128 and report["adders"] >= 128 + 8
    assert report["energy_pj"] > 128 * power_law(MUL_45NM["pj"], 256)
    assert report["layers"][0]["op"] == "dense"


def test_pruning_and_nodes_and_width() -> None:
    full, half = asic_report(dense(32, 32)), asic_report(dense(32, 32, zero_fraction=0.5))
    assert half["multipliers"] == full["multipliers"] // 2
    assert half["energy_pj"] < full["energy_pj"] and half["area_um2"] < full["area_um2"]
    small = asic_report(dense(32, 32), node="7nm")
    assert small["energy_pj"] < full["energy_pj"] / 5 and small["area_um2"] < full["area_um2"]
    narrow = asic_report(dense(32, 32, width=8))
    assert narrow["energy_pj"] < full["energy_pj"] and narrow["area_um2"] < full["area_um2"]


def test_bad_node() -> None:
    with pytest.raises(KilnError, match="known nodes: 45nm"):
        asic_report(dense(4, 4), node="3nm")
