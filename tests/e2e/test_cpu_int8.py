"""The cpu target's int8 kernels, bit for bit.

Single quantized ops of odd sizes (u8 and i8 activations, per-channel weights with zero points,
groups, strides, dilations, clamps) built from IR text and compared with the independent
`tests/unit/qnn_numpy.py`; then bundled models compiled with `quantize="int8"` and compared with
`kiln.interpret` on the same quantized IR (exactly; where a float op follows the last
dequantize, e.g. jet_mlp's softmax, the float tail gets the fp32 tolerance of the cpu target).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kiln
from kiln.ir import requant
from kiln.ir.graph import Module
from kiln.ir.ops.quant import Dequantize
from kiln.ir.parser import parse
from kiln.models import example_inputs, get_model
from kiln.targets.toolchains import gcc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
import qnn_numpy

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "kiln-cpu-cache"


def _ints(values: np.ndarray | list[int] | tuple[int, ...]) -> str:
    return "[" + ", ".join(str(int(v)) for v in values) + "]"


def _floats(values: np.ndarray) -> str:
    return "[" + ", ".join(repr(float(np.float32(v))) for v in values) + "]"


def _module(rng: np.random.Generator, x_shape: tuple[int, ...], w_shape: tuple[int, ...],
            op: str, attrs: str, y_shape: tuple[int, ...], storage: str) -> Module:
    """quantize → one q-op (per-channel weights with zero points, bias, clamp) → dequantize."""
    out = w_shape[0]
    zx = int(rng.integers(-100, 100)) + (128 if storage == "u8" else 0)
    zo = int(rng.integers(-20, 20)) + (128 if storage == "u8" else 0)
    scales = rng.uniform(0.001, 0.02, out)
    mult, shift = requant.quantize_multipliers(rng.uniform(2e-4, 3e-3, out))
    xt = f"q<{storage}, 0.03, {zx}>"
    yt = f"q<{storage}, 0.05, {zo}>"
    wt = f"q<i8, {_floats(scales)}, {_ints(rng.integers(-4, 5, out))}, axis=0>"
    dims = "x".join(map(str, x_shape))
    text = f"""
kiln.module @m {{
  kiln.func @forward(%x: tensor<{dims}xf32>) -> (tensor<{'x'.join(map(str, y_shape))}xf32>) {{
    %xq = kiln.quantize(%x) {{to = {xt}}} : tensor<{dims}x{xt}>
    %w = kiln.weight @w : tensor<{'x'.join(map(str, w_shape))}x{wt}>
    %b = kiln.weight @b : tensor<{out}xi32>
    %y = kiln.{op}(%xq, %w, %b) {{{attrs}clamp_min = {zo - 60}, multiplier = {_ints(mult)}, \
shift = {_ints(shift)}, to = {yt}}} : tensor<{'x'.join(map(str, y_shape))}x{yt}>
    %d = kiln.dequantize(%y) : tensor<{'x'.join(map(str, y_shape))}xf32>
    kiln.return %d
  }}
}}
"""
    weights: dict[str, np.ndarray] = {"w": rng.integers(-127, 128, w_shape).astype(np.int8),
               "b": rng.integers(-3000, 3000, out).astype(np.int32)}
    return parse(text, weights)


def _check_exact(module: Module, x_shape: tuple[int, ...], rng: np.random.Generator,
                 cache: Path, march: str = "native") -> None:
    art = kiln.compile(module, [np.zeros(x_shape, np.float32)], target="cpu",
                       pipeline="dce", cache_dir=cache, march=march)
    x = (rng.standard_normal(x_shape) * 3).astype(np.float32)
    got = art(x)
    want = qnn_numpy.run_integer_model(art.ir, x)[art.ir.main.outputs[0]]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, kiln.interpret(art.ir, x)[0])


CONV_CASES = [  # x shape, weight shape, stride, padding, dilation, groups, result shape
    ((2, 3, 7, 6), (5, 3, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, (2, 5, 7, 6)),
    ((1, 4, 9, 9), (6, 2, 3, 3), (2, 2), (0, 1, 2, 0), (1, 1), 2, (1, 6, 5, 4)),
    ((2, 4, 8, 8), (4, 1, 3, 3), (1, 2), (2, 2, 2, 2), (2, 1), 4, (2, 4, 8, 5)),
    ((1, 7, 5, 5), (13, 7, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, (1, 13, 5, 5)),
]


@pytest.mark.parametrize("storage", ["i8", "u8"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_qconv2d_kernel_is_bit_exact(case: tuple, storage: str, cache: Path) -> None:
    rng = np.random.default_rng(sum(case[0]) + len(storage))
    xs, ws, stride, pad, dil, groups, ys = case
    attrs = (f"dilation = {_ints(dil)}, groups = {groups}, padding = {_ints(pad)}, "
             f"stride = {_ints(stride)}, ")
    _check_exact(_module(rng, xs, ws, "qconv2d", attrs, ys, storage), xs, rng, cache)


def test_portable_kernels_are_bit_exact(cache: Path) -> None:
    """Without AVX-512 (plain C loops instead of vpmaddwd): packed and plain GEMMs."""
    rng = np.random.default_rng(3)
    xs, _, stride, pad, dil, groups, _ = CONV_CASES[1]
    attrs = (f"dilation = {_ints(dil)}, groups = {groups}, padding = {_ints(pad)}, "
             f"stride = {_ints(stride)}, ")
    module = _module(rng, xs, (12, 2, 3, 3), "qconv2d", attrs, (1, 12, 5, 4), "u8")
    _check_exact(module, xs, rng, cache, march="x86-64")


def test_qconv1d_kernel_is_bit_exact(cache: Path) -> None:
    rng = np.random.default_rng(7)
    attrs = "dilation = [2], padding = [3, 1], stride = [2], "
    module = _module(rng, (2, 3, 11), (5, 3, 3), "qconv1d", attrs, (2, 5, 6), "i8")
    _check_exact(module, (2, 3, 11), rng, cache)


@pytest.mark.parametrize(("x_shape", "out"), [((3, 37), 11), ((2, 3, 5), 1), ((1, 130), 65)])
def test_qlinear_kernel_is_bit_exact(x_shape: tuple[int, ...], out: int, cache: Path) -> None:
    rng = np.random.default_rng(out)
    module = _module(rng, x_shape, (out, x_shape[-1]), "qlinear", "", (*x_shape[:-1], out),
                     "u8" if out % 2 else "i8")
    _check_exact(module, x_shape, rng, cache)


def _float_tail(module: Module) -> bool:
    """Whether a float op computes an output from a dequantized value (float rounding)."""
    return any(not v.producer.isa(Dequantize) for v in module.main.outputs
               if v.producer is not None)


@pytest.mark.parametrize("name", ["digits_cnn", "lenet5", "resnet8", "conv1d_net",
                                  "digits_mlp", "jet_mlp", "mobilenet_v2ish"])
def test_bundled_model_int8_matches_the_interpreter(name: str, cache: Path) -> None:
    model = get_model(name)
    inputs = example_inputs(name, 2)
    calibration = [example_inputs(name, 2, seed=s) for s in (1, 2)]
    art = kiln.compile(model, inputs, target="cpu", quantize="int8",
                       calibration_data=calibration, cache_dir=cache)
    log = (art.artifact.entry / "build.log").read_text()  # type: ignore[attr-defined]
    assert "warning" not in log, log
    kinds = {op.name for op in art.ir.main.walk()}
    assert "kiln.quantize" in kinds and kinds & {"kiln.qconv2d", "kiln.qconv1d", "kiln.qlinear"}
    for seed in (5, 6):
        fresh = example_inputs(name, 2, seed=seed)
        got = art(*fresh)
        want = kiln.interpret(art.ir, *(t.numpy() for t in fresh))[0]
        assert isinstance(got, torch.Tensor)
        if _float_tail(art.ir):
            err = np.abs(got.numpy() - want).max() / max(np.abs(want).max(), 1e-12)
            assert err <= 1e-5
        else:
            np.testing.assert_array_equal(got.numpy(), want)


def test_quantize_option_is_checked() -> None:
    with pytest.raises(kiln.KilnError, match="quantize"):
        kiln.compile(get_model("jet_mlp"), example_inputs("jet_mlp"), target="cpu",
                     quantize="int4")
