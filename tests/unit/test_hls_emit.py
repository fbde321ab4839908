"""The HLS emitter without a compiler: pure output, reuse-factor pragmas, zero-weight skipping,
and unsupported ops named all at once."""

from __future__ import annotations

import numpy as np
import pytest

import kiln
from kiln.codegen.hls import HlsOptions, emit, lower
from kiln.errors import KilnError
from kiln.ir.graph import Module
from tests.unit.fpga_models import convnet, dense


@pytest.fixture(scope="module")
def net() -> Module:
    return convnet()


def test_emit_is_pure_and_complete(net: Module) -> None:
    first, second = emit(net, HlsOptions()), emit(net, HlsOptions())
    assert first == second
    name = next(k for k in first if k.startswith("tb_")).removeprefix("tb_").removesuffix(".cpp")
    for path in (f"firmware/{name}.cpp", f"firmware/{name}.h", f"firmware/{name}_weights.h",
                 "firmware/kiln_fixed.h", "firmware/kiln_layers.h", "firmware/kiln_stream.h",
                 "Makefile", "run_hls.tcl", "hls_config.cfg", "README.md"):
        assert path in first, path
    top = first[f"firmware/{name}.cpp"]
    assert "#pragma HLS INTERFACE mode=ap_ctrl_hs port=return" in top
    assert "kiln::conv2d<" in top and "kiln::max_pool2d<" in top and "kiln::dense<" in top


def test_reuse_factor_sets_pragmas(net: Module) -> None:
    files = emit(net, HlsOptions(reuse_factor=4))
    top = next(v for k, v in files.items() if k.endswith(".cpp") and k.startswith("firmware"))
    assert "#pragma HLS PIPELINE II=4" in top and "#pragma HLS DATAFLOW" in top
    assert "cyclic factor=" in top and "variable=in0 complete" in top
    assert all(layer.reuse_factor == 4 for layer in lower(net, 4).layers)


def test_pruned_weights_are_not_emitted() -> None:
    module = dense(16, 8, zero_fraction=0.75)
    layer = next(lay for lay in lower(module).layers if lay.kind == "dense")
    assert layer.weight is not None
    assert layer.nonzero_weights == int(np.count_nonzero(layer.weight)) == 32
    weights = next(v for k, v in emit(module, HlsOptions()).items() if k.endswith("_weights.h"))
    assert f"_w[{layer.nonzero_weights}]" in weights  # CSR values: non-zeros only


def test_float_module_is_refused() -> None:
    module = kiln.run_passes(dense(4, 4), "canonicalize")
    float_module = kiln.trace(__import__("torch").nn.Linear(4, 2), (np.ones((1, 4), "f4"),))
    with pytest.raises(KilnError, match="no fixed-point input"):
        lower(float_module)
    assert lower(module).layers


def test_bad_options() -> None:
    with pytest.raises(KilnError, match="reuse_factor"):
        HlsOptions(reuse_factor=0).check()
    with pytest.raises(KilnError, match="io='axi'"):
        HlsOptions(io="axi").check()
