"""`target="asic"`: the HLS C++ without FPGA pragmas, C-simulated bit-exactly, with an area
and energy report that shrinks with pruning and with a smaller node."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kiln
from kiln.compiler.driver import CompiledModel
from kiln.ir.interpret import interpret, interpret_all, sample_inputs
from kiln.models import example_inputs, get_model
from kiln.targets.asic import AsicArtifact

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
FPGA_ONLY = ("#pragma", "ap_ctrl", "m_axi", "ARRAY_PARTITION", "INTERFACE", "hls_stream",
             "DATAFLOW")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kiln-asic-cache")


def _compile(model: Any, name: str, cache: Path, **options: Any) -> CompiledModel:
    return kiln.compile(model, example_inputs(name), target="asic", cache_dir=str(cache),
                        **options)


@pytest.mark.parametrize("name", ["jet_mlp", "digits_cnn"])
def test_asic_csim_is_bit_exact_and_pragma_free(name: str, cache: Path) -> None:
    art = _compile(get_model(name), name, cache)
    asic = art.artifact
    assert isinstance(asic, AsicArtifact)
    samples = [sample_inputs(asic.module.main, seed) for seed in (31, 32)]
    batch = [np.concatenate(xs, axis=0) for xs in zip(*samples)]
    raws, got = asic.run_raw(*batch), art(*batch)
    for i, xs in enumerate(samples):
        values = interpret_all(asic.module, *xs)
        want = np.concatenate([values[v].reshape(-1) for v in asic.hls.lowered.output_values])
        np.testing.assert_array_equal(raws[i], want)
        np.testing.assert_array_equal(got[i:i + 1], interpret(asic.module, *xs)[0])
    report = art.report()
    for key in ("area_um2", "energy_pj", "multipliers", "adders"):
        assert report[key] > 0, key
    assert report["layers"] and all(row["area_um2"] >= 0 for row in report["layers"])
    for path, text in art.files.items():
        if path.endswith((".cpp", ".h")):
            assert not [w for w in FPGA_ONLY if w in text], path
    assert "run_hls.tcl" not in art.files


def test_area_and_energy_drop_when_pruned_or_at_a_smaller_node(cache: Path) -> None:
    x = example_inputs("jet_mlp")
    module = kiln.trace(get_model("jet_mlp"), x)
    base = _compile(module, "jet_mlp", cache).report()
    pruned_module = kiln.run_passes(module, "prune{sparsity=0.5}")
    pruned = _compile(pruned_module, "jet_mlp", cache).report()
    small = _compile(module, "jet_mlp", cache, node="7nm").report()
    shared = _compile(module, "jet_mlp", cache, reuse_factor=4).report()
    for key in ("area_um2", "energy_pj"):
        assert pruned[key] < base[key] and small[key] < base[key], key
    assert pruned["multipliers"] < base["multipliers"]
    assert shared["area_um2"] < base["area_um2"]


def test_unknown_node_is_refused(cache: Path) -> None:
    with pytest.raises(kiln.KilnError, match="unknown ASIC node '3nm'"):
        _compile(get_model("jet_mlp"), "jet_mlp", cache, node="3nm")
