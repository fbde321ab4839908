"""`kiln.compile(..., target="fpga", budget=...)`: the search's per-layer reuse factors are
built, the budget is met, and the C-simulation stays bit-exact (RFs change pragmas only)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.errors import KilnError
from kiln.ir.interpret import interpret, interpret_all, sample_inputs
from kiln.models import example_inputs, get_model
from kiln.targets.fpga import FpgaArtifact

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


def test_dsp_budget_is_met_and_csim_stays_bit_exact(tmp_path: Path) -> None:
    art = kiln.compile(get_model("jet_mlp"), example_inputs("jet_mlp"), target="fpga",
                       part="xczu9eg", budget={"dsp": 300}, cache_dir=str(tmp_path))
    report = art.report()
    assert report["dsp"] <= 300
    chosen = report["budget"]["chosen_reuse_factor"]
    assert report["budget"]["requested"] == {"dsp": 300}
    assert max(chosen.values()) > 1 and report["budget"]["pareto"]
    fpga = art.artifact
    assert isinstance(fpga, FpgaArtifact)
    dense = {la.label: la.reuse_factor for la in fpga.lowered.layers if la.kind == "dense"}
    assert dense == {k: chosen[k] for k in dense}
    assert f"#pragma HLS PIPELINE II={chosen['fc1']}" in art.files["firmware/jetmlp.cpp"]
    samples = [sample_inputs(fpga.module.main, seed) for seed in (11, 12)]
    batch = [np.concatenate(xs, axis=0) for xs in zip(*samples)]
    raws, got = fpga.run_raw(*batch), art(*batch)
    for i, xs in enumerate(samples):
        values = interpret_all(fpga.module, *xs)
        want = np.concatenate([values[v].reshape(-1) for v in fpga.lowered.output_values])
        np.testing.assert_array_equal(raws[i], want)
        np.testing.assert_array_equal(got[i:i + 1], interpret(fpga.module, *xs)[0])


def test_impossible_budget_names_the_binding_resource(tmp_path: Path) -> None:
    with pytest.raises(KilnError, match=r"'dsp' is binding.*nearest achievable"):
        kiln.compile(get_model("jet_mlp"), example_inputs("jet_mlp"), target="fpga",
                     budget={"dsp": 1}, cache_dir=str(tmp_path))
    assert not (tmp_path / "failed").exists()
