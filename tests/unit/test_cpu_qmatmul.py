"""The cpu target's int8 matmul and int8 data movement, and int8 buffers of one byte.

- `kiln.qmatmul` (emit_qmatmul.py, runtime/kiln_qmatmul.c): one module holding many cases
  (odd shapes, batch broadcasting, 1-D operands, N over the 64-column block, long K, int8/uint8
  mixes, zero points at the storage extremes, clamps, a per-column constant rhs) compiled once,
  plain and under AddressSanitizer + UBSan; outputs bit-exact with `kiln.interpret` and the
  independent `qnn_numpy.py` on fresh random inputs.
- transpose / slice / concat (with a constant int8 operand) / split on int8: bit-exact with
  NumPy moving the quantized integers.
- the int8 transformer layer: bit-exact with the interpreter on its lowered IR (sanitized
  build), and within the quantization error of PyTorch: RMS error <= 5% of the RMS output and
  max error <= 10% of the max |output| (measured: 1.6% and <= 3% with this calibration).
- the memory plan sizes int8 buffers at 1 byte per element: digits_cnn's int8 arena is at
  most 0.35x the float32 one at batch 8 (at batch 1 the int16 im2col scratch of qconv2d,
  which is not 8-bit, dominates both plans).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import kiln
from kiln.codegen.c.emitter import lower
from kiln.codegen.memory import element_bytes, value_nbytes
from kiln.compiler.driver import to_module
from kiln.compiler.pass_manager import PassManager
from kiln.ir import requant
from kiln.ir.graph import Module
from kiln.ir.parser import parse
from kiln.ir.types import F32, I32, QuantType, ScalarType
from kiln.models import example_inputs, get_model
from kiln.targets.target import get_target
from kiln.targets.toolchains import gcc

sys.path.insert(0, str(Path(__file__).resolve().parent))
import qnn_numpy

needs_gcc = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kiln-qmatmul-cache")


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _ints(values: tuple[int, ...] | list[int]) -> str:
    return "[" + ", ".join(str(int(v)) for v in values) + "]"


@dataclass(frozen=True)
class Case:
    """lhs @ rhs with storages (lhs, rhs, out) and zero points; `weight`: rhs is a constant
    quantized per column with one multiplier per column."""

    lhs: tuple[int, ...]
    rhs: tuple[int, ...]
    out: tuple[int, ...]
    storage: tuple[str, str, str] = ("i8", "i8", "i8")
    zps: tuple[int, int, int] = (0, 0, 0)
    clamp: tuple[int, int] | None = None
    weight: bool = False


CASES = [  # one operand's zero point near its storage's middle keeps the sums centred
    Case((3, 5), (5, 7), (3, 7), zps=(3, -2, 1)),
    Case((2, 3, 4, 9), (3, 9, 6), (2, 3, 4, 6), ("u8", "i8", "u8"), (255, -1, 0)),
    Case((1, 4, 5), (3, 5, 2), (3, 4, 2), ("i8", "u8", "i8"), (-128, 128, 127)),
    Case((9,), (2, 9, 70), (2, 70), ("u8", "u8", "i8"), (128, 255, -128)),
    Case((4, 3, 9), (9,), (4, 3), zps=(127, 5, -5)),
    Case((2, 13, 300), (300, 11), (2, 13, 11), ("i8", "i8", "u8"), (-7, 9, 128), (40, 200)),
    Case((4, 6, 17), (17, 66), (4, 6, 66), ("u8", "i8", "i8"), (128, 0, 3), weight=True),
]


def _qt(storage: str, scale: float, zp: int) -> str:
    return f"q<{storage}, {scale}, {zp}>"


def _case_ir(i: int, case: Case, rng: np.random.Generator,
             weights: dict[str, np.ndarray]) -> tuple[list[str], list[str], str]:
    """(function args, body lines, result name) of case `i`."""
    sa, sb, so = case.storage
    za, zb, zo = case.zps
    at, ot = _qt(sa, 0.02, za), _qt(so, 0.05, zo)
    k = case.lhs[-1]
    per_column = case.out[-1] if case.weight else 1
    factor = rng.uniform(0.5, 2.0, per_column) * 40.0 / (1e4 * np.sqrt(k))  # std ~ 40
    mult, shift = requant.quantize_multipliers(factor)
    args = [f"%a{i}: tensor<{_dims(case.lhs)}xf32>"]
    body = [f"%qa{i} = kiln.quantize(%a{i}) {{to = {at}}} : tensor<{_dims(case.lhs)}x{at}>"]
    if case.weight:
        n = case.rhs[-1]
        scales = ", ".join(repr(float(s)) for s in rng.uniform(0.01, 0.03, n))
        bt = f"q<{sb}, [{scales}], {_ints(list(rng.integers(-128, 128, n)))}, axis=1>"
        weights[f"w{i}"] = rng.integers(-128, 128, case.rhs).astype(np.int8)
        body.append(f"%qb{i} = kiln.weight @w{i} : tensor<{_dims(case.rhs)}x{bt}>")
    else:
        bt = _qt(sb, 0.02, zb)
        args.append(f"%b{i}: tensor<{_dims(case.rhs)}xf32>")
        body.append(f"%qb{i} = kiln.quantize(%b{i}) {{to = {bt}}} : "
                    f"tensor<{_dims(case.rhs)}x{bt}>")
    clamp = f"clamp_max = {case.clamp[1]}, clamp_min = {case.clamp[0]}, " if case.clamp else ""
    body.append(f"%m{i} = kiln.qmatmul(%qa{i}, %qb{i}) {{{clamp}multiplier = {_ints(mult)}, "
                f"shift = {_ints(shift)}, to = {ot}}} : tensor<{_dims(case.out)}x{ot}>")
    body.append(f"%d{i} = kiln.dequantize(%m{i}) : tensor<{_dims(case.out)}xf32>")
    return args, body, f"%d{i}"


def _qmatmul_module(rng: np.random.Generator) -> Module:
    args, body, results, weights = [], [], [], {}  # type: ignore[var-annotated]
    for i, case in enumerate(CASES):
        a, b, r = _case_ir(i, case, rng, weights)
        args += a
        body += b
        results.append(r)
    types = ", ".join(f"tensor<{_dims(c.out)}xf32>" for c in CASES)
    text = (f"kiln.module @qmm {{\n  kiln.func @forward({', '.join(args)}) -> ({types}) {{\n"
            + "".join(f"    {line}\n" for line in body)
            + f"    kiln.return {', '.join(results)}\n  }}\n}}\n")
    return parse(text, weights)


def _random_inputs(module: Module, rng: np.random.Generator) -> list[np.ndarray]:
    """Inputs whose quantized values cover their whole storage range, a few beyond it
    (saturating), whatever the zero point."""
    inputs = []
    for arg in module.main.args:
        q = arg.users[0].results[0].type.dtype
        assert isinstance(q, QuantType)
        info = np.iinfo(q.storage.numpy)
        stored = rng.uniform(info.min - 8, info.max + 8, arg.type.shape)
        inputs.append(((stored - q.zero_point[0]) * q.scale[0]).astype(np.float32))
    return inputs


def _as_list(got: object) -> list[np.ndarray]:
    items = got if isinstance(got, (tuple, list)) else [got]
    return [np.asarray(x) for x in items]


@pytest.fixture(scope="module")
def qmm_module() -> Module:
    return _qmatmul_module(np.random.default_rng(20261128))


@needs_gcc
@pytest.mark.parametrize("sanitize", [False, True])
def test_qmatmul_is_bit_exact(qmm_module: Module, sanitize: bool, cache: Path,
                              rng: np.random.Generator) -> None:
    art = kiln.compile(qmm_module, _random_inputs(qmm_module, rng), target="cpu",
                       pipeline="dce", cache_dir=cache, sanitize=sanitize)
    log = (art.artifact.entry / "build.log").read_text()  # type: ignore[attr-defined]
    assert "warning" not in log, log
    assert sum("qmatmul int8" in k["kernel"] for k in art.report()["kernels"]) == len(CASES)
    for _ in range(1 if sanitize else 2):
        xs = _random_inputs(qmm_module, rng)
        got = _as_list(art(*xs))
        want = kiln.interpret(art.ir, *xs)
        independent = qnn_numpy.run_integer_model(art.ir, *xs)
        for j, (g, w) in enumerate(zip(got, want, strict=True)):
            np.testing.assert_array_equal(g, w, err_msg=f"case {j}: {CASES[j]}")
            np.testing.assert_array_equal(g, independent[art.ir.main.outputs[j]])
        spread = [np.unique(w).size for w in want]
        assert min(spread) > 2, spread  # the cases do not collapse onto a clamp


MOVES_IR = """
kiln.module @moves {
  kiln.func @forward(%x: tensor<2x3x5x7xf32>, %u: tensor<4x6xf32>) -> (
      tensor<7x2x5x3xf32>, tensor<2x2x3x7xf32>, tensor<4x9xf32>, tensor<4x2xf32>,
      tensor<4x4xf32>) {
    %q = kiln.quantize(%x) {to = q<i8, 0.02, -7>} : tensor<2x3x5x7xq<i8, 0.02, -7>>
    %p = kiln.quantize(%u) {to = q<u8, 0.03, 128>} : tensor<4x6xq<u8, 0.03, 128>>
    %t = kiln.transpose(%q) {perm = [3, 0, 2, 1]} : tensor<7x2x5x3xq<i8, 0.02, -7>>
    %s = kiln.slice(%q) {axes = [1, 2], ends = [3, 5], starts = [1, 0], steps = [1, 2]} \
: tensor<2x2x3x7xq<i8, 0.02, -7>>
    %c = kiln.weight @c : tensor<4x3xq<u8, 0.03, 128>>
    %k = kiln.concat(%p, %c) {axis = 1} : tensor<4x9xq<u8, 0.03, 128>>
    %a, %b = kiln.split(%p) {axis = 1, sizes = [2, 4]} : tensor<4x2xq<u8, 0.03, 128>>, \
tensor<4x4xq<u8, 0.03, 128>>
    %t.d = kiln.dequantize(%t) : tensor<7x2x5x3xf32>
    %s.d = kiln.dequantize(%s) : tensor<2x2x3x7xf32>
    %k.d = kiln.dequantize(%k) : tensor<4x9xf32>
    %a.d = kiln.dequantize(%a) : tensor<4x2xf32>
    %b.d = kiln.dequantize(%b) : tensor<4x4xf32>
    kiln.return %t.d, %s.d, %k.d, %a.d, %b.d
  }
}
"""


def _quantize(x: np.ndarray, scale: float, zp: int, dtype: type) -> np.ndarray:
    """fixed.quantize_affine 'div' in NumPy: rint(f32(x / s)) + zp, saturated."""
    info = np.iinfo(dtype)
    q = np.rint(x / np.float32(scale)).astype(np.int64) + zp
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize(q: np.ndarray, scale: float, zp: int) -> np.ndarray:
    return (q.astype(np.int64) - zp).astype(np.float32) * np.float32(scale)


@needs_gcc
def test_int8_moves_match_numpy(cache: Path, rng: np.random.Generator) -> None:
    const = rng.integers(0, 256, (4, 3)).astype(np.uint8)
    module = parse(MOVES_IR, {"c": const})
    x = (rng.standard_normal((2, 3, 5, 7)) * 2).astype(np.float32)
    u = (rng.standard_normal((4, 6)) * 3).astype(np.float32)
    art = kiln.compile(module, [x, u], target="cpu", pipeline="dce", cache_dir=cache)
    kernels = " ".join(k["kernel"] for k in art.report()["kernels"])
    for label in ("transpose int8", "slice int8", "concat int8", "split int8"):
        assert label in kernels
    x = (rng.standard_normal((2, 3, 5, 7)) * 2).astype(np.float32)
    u = (rng.standard_normal((4, 6)) * 3).astype(np.float32)
    q, p = _quantize(x, 0.02, -7, np.int8), _quantize(u, 0.03, 128, np.uint8)
    moved = [(np.transpose(q, (3, 0, 2, 1)), 0.02, -7), (q[:, 1:3, 0:5:2], 0.02, -7),
             (np.concatenate([p, const], axis=1), 0.03, 128), (p[:, :2], 0.03, 128),
             (p[:, 2:], 0.03, 128)]
    got = _as_list(art(x, u))
    for g, w, ref in zip(got, moved, kiln.interpret(art.ir, x, u), strict=True):
        np.testing.assert_array_equal(g, _dequantize(*w))
        np.testing.assert_array_equal(g, ref)


@needs_gcc
def test_int8_transformer_layer(cache: Path) -> None:
    model = get_model("transformer_layer")
    calibration = [example_inputs("transformer_layer", 4, seed=s) for s in (1, 2)]
    art = kiln.compile(model, example_inputs("transformer_layer"), target="cpu",
                       quantize="int8", calibration_data=calibration, cache_dir=cache,
                       sanitize=True)
    names = {op.name for op in art.ir.main.walk()}
    assert {"kiln.qmatmul", "kiln.qlinear", "kiln.transpose"} <= names
    for seed in (11, 12):
        x = example_inputs("transformer_layer", seed=seed)[0]
        got = art(x)
        assert isinstance(got, torch.Tensor)
        np.testing.assert_array_equal(got.numpy(), kiln.interpret(art.ir, x.numpy())[0])
        with torch.no_grad():
            want = model(x).numpy()
        err = got.numpy() - want
        assert np.sqrt(np.mean(err**2)) <= 0.05 * np.sqrt(np.mean(want**2))
        assert np.abs(err).max() <= 0.1 * np.abs(want).max()


def _arena(name: str, batch: int, quantize: str | None) -> tuple[int, Module]:
    """The cpu target's arena for `name` (its pipeline and C lowering; no gcc)."""
    target = get_target("cpu")
    pipeline = target.default_pipeline(target.resolve_options({"quantize": quantize}))
    inputs = example_inputs(name, batch)
    module = to_module(get_model(name), inputs)
    lowered = PassManager(pipeline, calibration_data=[inputs]).run(module).module
    return lower(lowered).arena_bytes, lowered


def test_int8_arena_is_sized_in_bytes() -> None:
    int8, module = _arena("digits_cnn", 8, "int8")
    fp32, _ = _arena("digits_cnn", 8, None)
    assert int8 <= 0.35 * fp32, (int8, fp32)
    plan = lower(module).plan
    assert plan is not None
    quantized = [v for op in module.main.ops for v in op.results
                 if isinstance(v.type.dtype, QuantType) and plan.storage[v].kind == "arena"]
    assert quantized
    for buf in plan.buffers:
        if buf.scratch_of is None and buf.values[0] in quantized:
            assert buf.size == buf.values[0].type.numel


def test_element_bytes() -> None:
    q = QuantType(ScalarType("u8"), (0.1,), (3,))
    assert [element_bytes(t) for t in (F32, I32, q, ScalarType("bool"), ScalarType("i16"))] \
        == [4, 4, 1, 1, 2]
    module = parse(MOVES_IR, {"c": np.zeros((4, 3), np.uint8)})
    sizes = {v.name: value_nbytes(v) for op in module.main.ops for v in op.results}
    assert sizes["t"] == 210 and sizes["t.d"] == 840


QUANT_OUT_IR = """
kiln.module @bad {
  kiln.func @forward(%x: tensor<3x4xf32>) -> (tensor<4x3xq<i8, 0.1, 0>>) {
    %q = kiln.quantize(%x) {to = q<i8, 0.1, 0>} : tensor<3x4xq<i8, 0.1, 0>>
    %t = kiln.transpose(%q) {perm = [1, 0]} : tensor<4x3xq<i8, 0.1, 0>>
    kiln.return %t
  }
}
"""

I16_IR = """
kiln.module @wide {
  kiln.func @forward(%x: tensor<3x4xf32>, %y: tensor<4x2xf32>) -> (tensor<3x2xf32>) {
    %q = kiln.quantize(%x) {to = q<i8, 0.1, 0>} : tensor<3x4xq<i8, 0.1, 0>>
    %r = kiln.quantize(%y) {to = q<i8, 0.1, 0>} : tensor<4x2xq<i8, 0.1, 0>>
    %m = kiln.qmatmul(%q, %r) {multiplier = [1073741824], shift = [0], to = q<i16, 0.1, 0>} \
: tensor<3x2xq<i16, 0.1, 0>>
    %d = kiln.dequantize(%m) : tensor<3x2xf32>
    kiln.return %d
  }
}
"""


@pytest.mark.parametrize(("text", "op", "words"), [
    (QUANT_OUT_IR, "kiln.transpose", "model output"),
    (I16_IR, "kiln.qmatmul", "8-bit"),
])
def test_unsupported_int8_is_refused_by_name(text: str, op: str, words: str) -> None:
    with pytest.raises(kiln.KilnError) as info:
        lower(parse(text, {}))
    message = str(info.value)
    assert op in message and words in message, message
