"""Per-layer reuse factors and the ASIC flavor in the HLS emitter (no compiler needed)."""

from __future__ import annotations

import pytest

from kiln.codegen.hls import HlsOptions, emit, lower
from kiln.errors import KilnError
from kiln.ir.graph import Module
from kiln.targets.cost.fpga_estimate import estimate
from tests.unit.fpga_models import convnet

FPGA_ONLY = ("#pragma", "ap_ctrl", "m_axi", "ARRAY_PARTITION", "INTERFACE", "hls_stream")


@pytest.fixture(scope="module")
def net() -> Module:
    return convnet()


def _top(files: dict[str, str]) -> str:
    return next(v for k, v in files.items() if k.endswith(".cpp") and k.startswith("firmware"))


def test_dict_reuse_factor_reaches_each_layer(net: Module) -> None:
    layers = lower(net, {"4": 8}).layers
    assert {(la.label, la.reuse_factor) for la in layers if la.kind == "dense"} == {("4", 8)}
    assert all(la.reuse_factor == 1 for la in layers if la.label != "4")
    top = _top(emit(net, HlsOptions(reuse_factor={"4": 8})))
    assert "#pragma HLS PIPELINE II=8" in top and "#pragma HLS PIPELINE II=1" in top
    assert "reuse factor 4=8" in top
    per_layer = estimate(net, reuse_factor={"4": 8}).layers
    assert [c.reuse_factor for c in per_layer if c.name == "4"] == [8]


def test_unknown_layer_name_lists_the_valid_ones(net: Module) -> None:
    with pytest.raises(KilnError, match=r"unknown layers \['fc9'\]; layers: 0, 1, 2, 4"):
        lower(net, {"fc9": 2})
    with pytest.raises(KilnError, match="must be >= 1"):
        HlsOptions(reuse_factor={"4": 0}).check()


def test_asic_flavor_has_no_fpga_pragmas(net: Module) -> None:
    files = emit(net, HlsOptions(reuse_factor={"4": 2}, flavor="asic"))
    sources = {k: v for k, v in files.items() if k.endswith((".cpp", ".h"))}
    for name, text in sources.items():
        for word in FPGA_ONLY:
            assert word not in text, (name, word)
    assert "run_hls.tcl" not in files and "firmware/kiln_stream.h" not in files
    weights = next(v for k, v in files.items() if k.endswith("_weights.h"))
    assert "ROM" in weights and "static const" in weights
    with pytest.raises(KilnError, match="flavor"):
        HlsOptions(flavor="gpu").check()
