"""Budget search over per-layer reuse factors (and widths): meets budgets, keeps a Pareto
table, and names the binding resource when nothing fits."""

from __future__ import annotations

import pytest
import torch

from kiln.errors import KilnError
from kiln.targets.cost import estimate, search
from tests.unit.fpga_models import lower


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32),
                              torch.nn.ReLU(), torch.nn.Linear(32, 5))
    return lower(net, (1, 16))


def test_meets_dsp_budget(mlp) -> None:
    result = search(mlp, "xczu9eg", {"dsp": 500})
    report = result.estimate.report()
    assert report["dsp"] <= 500 and report["fits"]
    again = estimate(mlp, reuse_factor=result.reuse_factor).report()
    assert again["dsp"] == report["dsp"]  # the chosen configuration reproduces the estimate
    assert len(result.explored) > 1


def test_no_budget_keeps_fully_parallel(mlp) -> None:
    result = search(mlp, "xcu250")
    assert set(result.reuse_factor.values()) == {1} and len(result.explored) == 1


def test_part_limits_apply_without_budget(mlp) -> None:
    result = search(mlp, "xc7z020")
    assert result.estimate.fits and result.estimate.report()["dsp"] <= 220


def test_pareto_is_non_dominated(mlp) -> None:
    table = search(mlp, "xczu9eg", {"dsp": 100}).pareto
    assert table
    for a in table:
        for b in table:
            keys = ("latency_cycles", "dsp", "lut")
            assert not (all(b[k] <= a[k] for k in keys) and any(b[k] < a[k] for k in keys))


def test_precision_search_moves_products_to_luts(mlp) -> None:
    result = search(mlp, "xczu9eg", {"dsp": 0, "latency_ns": 1000}, precisions=[8, 5])
    assert result.estimate.report()["dsp"] == 0
    assert set(result.bits.values()) <= {8, 5}


def test_impossible_budget_names_binding_resource(mlp) -> None:
    with pytest.raises(KilnError, match=r"'dsp' is binding .*nearest achievable"):
        search(mlp, "xczu9eg", {"dsp": 1})
    with pytest.raises(KilnError, match="'latency_ns' is binding"):
        search(mlp, "xczu9eg", {"dsp": 300, "latency_ns": 10})
    with pytest.raises(KilnError, match="unknown keys"):
        search(mlp, "xczu9eg", {"dsps": 1})
