"""FPGA estimator: hls4ml's rules of thumb, monotonicity in the reuse factor, narrow products
on LUTs, pruning, stream FIFOs, the fit verdict and bad input."""

from __future__ import annotations

import itertools

import pytest

from kiln.errors import KilnError
from kiln.targets.cost import estimate, get_part
from kiln.targets.cost.fpga_estimate import valid_reuse_factors
from kiln.targets.cost.fpga_layers import layer_shapes
from kiln.targets.cost.fpga_parts import DSP48E1, DSP48E2
from kiln.targets.cost.fpga_resources import memory_cost, multiplier_cost
from tests.unit.fpga_models import convnet, dense


@pytest.fixture(scope="module")
def mlp():
    return dense(16, 64)


def test_dense_dsp_rule_of_thumb(mlp) -> None:
    """16-bit dense: DSP = n_in * n_out / RF (hls4ml's documented rule)."""
    for rf in (1, 2, 4, 8, 16, 64):
        report = estimate(mlp, reuse_factor=rf).report()
        layer = report["layers"][0]
        assert layer["dsp"] == 16 * 64 // rf and layer["reuse_factor"] == rf


def test_monotone_in_reuse_factor(mlp) -> None:
    rows = [estimate(mlp, reuse_factor=rf).report() for rf in (1, 2, 4, 8, 16, 32, 64)]
    for a, b in itertools.pairwise(rows):
        assert b["dsp"] < a["dsp"]
        assert b["latency_cycles"] > a["latency_cycles"] and b["ii"] > a["ii"]


def test_report_keys_and_ns(mlp) -> None:
    report = estimate(mlp, clock_mhz=250, reuse_factor=4).report()
    for key in ("latency_cycles", "latency_ns", "ii", "dsp", "bram", "lut", "ff", "uram",
                "fits", "part", "layers"):
        assert key in report
    assert report["latency_ns"] == pytest.approx(report["latency_cycles"] * 4.0)
    assert {"name", "op", "reuse_factor", "mults", "precision"} <= set(report["layers"][0])


def test_narrow_precision_uses_luts() -> None:
    wide, narrow = (estimate(dense(16, 8, width=w)).report() for w in (16, 4))
    assert wide["dsp"] == 128 and narrow["dsp"] == 0
    assert narrow["layers"][0]["lut"] >= 128 * 16  # 4x4 products at one LUT per bit-product


def test_multiplier_mapping_rule() -> None:
    assert multiplier_cost(16, 16, DSP48E2) == (1, 0)
    assert multiplier_cost(27, 18, DSP48E2) == (1, 0)
    assert multiplier_cost(26, 18, DSP48E1) == (2, 0)
    assert multiplier_cost(32, 32, DSP48E2) == (4, 0)
    assert multiplier_cost(5, 5, DSP48E2) == (0, 30)  # 1.2 LUT per bit-product (fitted)
    assert multiplier_cost(2, 16, DSP48E2) == (0, 39)


def test_memory_mapping() -> None:
    zu9, vu9 = get_part("xczu9eg"), get_part("xcvu9p")
    assert memory_cost(32, 100, zu9).lutram == 100
    assert memory_cost(1024, 18, zu9).bram == 1
    assert memory_cost(1024, 36, zu9).bram == 2
    assert memory_cost(8192, 72, vu9).uram == 2 and memory_cost(8192, 72, zu9).bram == 32


def test_pruned_weights_skip_multipliers() -> None:
    full = estimate(dense(32, 32)).report()["layers"][0]
    half = estimate(dense(32, 32, zero_fraction=0.5)).report()["layers"][0]
    assert full["mults"] == 1024 and half["mults"] == 512 and half["dsp"] == 512


def test_nm_sparsity_shrinks_count() -> None:
    module = dense(32, 16, before="sparsify{format=nm,n=2,m=4,enforce=true}")
    (layer, *_) = layer_shapes(module)
    assert layer.dense_mults == 512 and layer.mults <= 256
    assert estimate(module).report()["dsp"] == layer.mults


def test_stream_counts_fifos_and_line_buffers() -> None:
    module = convnet(channels=8, size=32)
    stream = estimate(module, io="stream").report()
    parallel = estimate(module, io="parallel").report()
    assert stream["fifo_bram"] > 0 and parallel["fifo_bram"] == 0
    assert stream["ff"] < parallel["ff"]  # activations not held in registers
    conv = stream["layers"][0]
    assert conv["op"] == "conv2d" and conv["ii"] == 32 * 32 and conv["bram"] >= 1


def test_too_large_for_z7020() -> None:
    est = estimate(dense(256, 256), part="xc7z020")
    assert not est.fits and "dsp" in est.over()
    assert "does NOT fit" in est.table()
    with pytest.raises(KilnError, match=r"does not fit xc7z020: dsp 65536 > 220"):
        est.require_fit()
    assert estimate(dense(256, 256), part="xcu250", reuse_factor=16).fits


def test_reuse_factor_snaps_and_dict(mlp) -> None:
    (layer, *_) = layer_shapes(mlp)
    assert 3 not in valid_reuse_factors(layer) and 4 in valid_reuse_factors(layer)
    name = layer.name
    per_layer = estimate(mlp, reuse_factor={name: 8}).report()["layers"][0]
    assert per_layer["reuse_factor"] == 8
    with pytest.raises(KilnError, match="unknown layers"):
        estimate(mlp, reuse_factor={"nope": 2})


def test_bad_input(mlp) -> None:
    with pytest.raises(KilnError, match="known parts: xc7z020, xcu250"):
        estimate(mlp, part="xc9999")
    with pytest.raises(KilnError, match="io="):
        estimate(mlp, io="serial")  # type: ignore[arg-type]
    assert get_part("xczu9eg-ffvb1156-2-e").dsp == 2520


def test_float_module_costed_at_default_width() -> None:
    """An unlowered (float) module is costed as the target's default fixed<16,I>."""
    import numpy as np
    import torch

    import kiln

    torch.manual_seed(0)
    x = np.random.default_rng(2).standard_normal((1, 8)).astype(np.float32)
    module = kiln.trace(torch.nn.Linear(8, 4).eval(), (x,))
    (layer,) = estimate(module).report()["layers"]
    assert layer["dsp"] == 32 and "w 16b" in layer["precision"]


def test_lookup_rom_copies_follow_the_reads_per_cycle() -> None:
    """A layer reading a lookup-table ROM (GELU's Φ, layer norm's 1/sqrt) pays BRAM for it:
    one dual-port copy per two reads a cycle needs, so the count falls with the reuse factor."""
    from kiln.targets.cost.fpga_estimate import dot_cost
    from kiln.targets.cost.fpga_layers import LayerShape

    part = get_part("xcvu9p")
    rom = 1024 * 17  # one BRAM18K
    gelu = LayerShape("g", "kiln.fixed_gelu", "gelu", 1, 64, 1, 64, 64, 16, 17, 33, 16, 0, 64,
                      rom_bits=rom, rom_reads=64)
    brams = {rf: dot_cost(gelu, rf, "parallel", part).bram for rf in (1, 2, 8, 64)}
    assert brams == {1: 32, 2: 16, 8: 4, 64: 1}
    norm = LayerShape("n", "kiln.fixed_layer_norm", "layer_norm", 16, 16, 4, 48, 48, 16, 16,
                      40, 16, 512, 64, rom_bits=3 * 18432 + 1, rom_reads=1)
    assert dot_cost(norm, 1, "parallel", part).bram == 4
    plain = LayerShape("n", "kiln.fixed_layer_norm", "layer_norm", 16, 16, 4, 48, 48, 16, 16,
                       40, 16, 512, 64)
    assert dot_cost(plain, 1, "parallel", part).bram == 0
