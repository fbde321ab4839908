"""`kiln.qlut` / `kiln.qmul`: IR round trip, tables vs NumPy/PyTorch, C kernels bit for bit.

The C kernels are compared with `kiln.interpret` and with the independent `qnn_numpy` on random
stored data (every one of the 256 input bytes, odd lengths that exercise the 64-byte vector
body and the scalar tail), on the VBMI path (-march=native) and the portable one
(-march=x86-64), and once under -fsanitize=address,undefined. The quantize pass turns
mobilenet_v2ish's hardswish / hardsigmoid / squeeze-excitation product into them: the whole
network then runs in integers, bit-exact with the interpreter, no less accurate than with
those ops kept in float.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kiln
from kiln.codegen.c.emit_qlut import broadcast_loops, byte_table
from kiln.ir.builder import new_function
from kiln.ir.graph import Module
from kiln.ir.interpret import interpret
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.qnn_eltwise import QLut, QMul, lut_table
from kiln.ir.ops.quant import Dequantize, Quantize
from kiln.ir.parser import parse
from kiln.ir.printer import print_module
from kiln.ir.requant import quantize_multiplier
from kiln.ir.types import F32, I8, U8, QuantType, TensorType
from kiln.models import example_inputs, get_model
from kiln.passes.quantize_lower import error_of
from kiln.targets.toolchains import gcc

sys.path.insert(0, str(Path(__file__).resolve().parent))
import qnn_numpy

needs_gcc = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")
F64 = torch.float64
FUNCTIONS: dict[str, tuple[OpDef, object]] = {  # kiln float op, independent torch function
    "hardswish": (ew.Hardswish(), torch.nn.functional.hardswish),
    "hardsigmoid": (ew.Hardsigmoid(), torch.nn.functional.hardsigmoid),
    "sigmoid": (ew.Sigmoid(), torch.sigmoid),
    "tanh": (ew.Tanh(), torch.tanh),
    "silu": (ew.Silu(), torch.nn.functional.silu),
    "gelu": (ew.Gelu(), torch.nn.functional.gelu),
    "gelu_tanh": (ew.Gelu(approximate="tanh"),
                  lambda t: torch.nn.functional.gelu(t, approximate="tanh")),
    "leaky_relu": (ew.LeakyRelu(slope=0.1), lambda t: torch.nn.functional.leaky_relu(t, 0.1)),
    "erf": (ew.Erf(), torch.erf),
    "exp": (ew.Exp(), torch.exp),
    "abs": (ew.Abs(), torch.abs),
    "neg": (ew.Neg(), torch.neg),
}


def _random_type(rng: np.random.Generator, storage: str, scale: tuple[float, float]) -> QuantType:
    lo, hi = scale
    zp = int(rng.integers(-40, 40)) + (128 if storage == "u8" else 0)
    return QuantType(U8 if storage == "u8" else I8, (float(rng.uniform(lo, hi)),), (zp,))


def _table_kind(name: str, q_in: QuantType, q_out: QuantType) -> QLut:
    kind, _ = FUNCTIONS[name]
    table = lut_table(lambda r: kind.reference(r)[0], q_in, q_out)
    return QLut(to=q_out, table=table, function=name)


def _lut_module(kind: QLut, q_in: QuantType, shape: tuple[int, ...]) -> Module:
    """float → quantize(q_in) → qlut → dequantize."""
    m = Module("lut")
    func, b = new_function(m, "forward", [TensorType(shape, F32)], ["x"])
    xq = b.add(Quantize(to=q_in), func.args[0], name="xq")
    y = b.add(kind, xq, name="act")
    b.ret(b.add(Dequantize(), y, name="y"))
    return m


def _mul_module(kind: QMul, qa: QuantType, qb: QuantType, sa: tuple[int, ...],
                sb: tuple[int, ...]) -> Module:
    m = Module("mul")
    func, b = new_function(m, "forward", [TensorType(sa, F32), TensorType(sb, F32)], ["a", "b"])
    a = b.add(Quantize(to=qa), func.args[0], name="aq")
    g = b.add(Quantize(to=qb), func.args[1], name="gate")
    y = b.add(kind, a, g, name="scaled")
    b.ret(b.add(Dequantize(), y, name="y"))
    return m


def _covering(rng: np.random.Generator, q: QuantType, shape: tuple[int, ...]) -> np.ndarray:
    """Floats whose quantized bytes cover the storage range (and saturate at both ends)."""
    info = np.iinfo(q.storage.numpy)
    stored = rng.integers(int(info.min) - 3, int(info.max) + 4, shape)
    jitter = rng.uniform(-0.3, 0.3, shape)
    return ((stored - q.zero_point[0] + jitter) * q.scale[0]).astype(np.float32)


# -- the op ------------------------------------------------------------------------------------
def test_qlut_and_qmul_print_parse_and_interpret(rng: np.random.Generator) -> None:
    q_in, q_out = _random_type(rng, "i8", (0.02, 0.05)), _random_type(rng, "u8", (0.01, 0.03))
    m = _lut_module(_table_kind("hardswish", q_in, q_out), q_in, (3, 5))
    text = print_module(m)
    assert 'kiln.qlut(%xq) {function = "hardswish", table = [' in text
    again = parse(text)
    assert print_module(again) == text
    x = _covering(rng, q_in, (3, 5))
    np.testing.assert_array_equal(interpret(again, x)[0], interpret(m, x)[0])
    mult, shift = quantize_multiplier(q_in.scale[0] * q_out.scale[0] / 0.004)
    kind = QMul(to=q_in, multiplier=(mult,), shift=(shift,), clamp_min=-100)
    mul = _mul_module(kind, q_in, q_out, (2, 3, 4), (3, 1))
    text = print_module(mul)
    assert "kiln.qmul(%aq, %gate) {clamp_min = -100, multiplier = [" in text
    assert print_module(parse(text)) == text


def test_qlut_verify_rejects_bad_tables() -> None:
    q = QuantType(I8, (0.1,), (0,))
    x = TensorType((4,), q)
    with pytest.raises(kiln.KilnError, match="256"):
        QLut(to=q, table=(0,) * 255).infer_type([x])
    with pytest.raises(kiln.KilnError, match="outside"):
        QLut(to=q, table=(0,) * 255 + (128,)).infer_type([x])
    with pytest.raises(kiln.KilnError, match="quantized"):
        QLut(to=q, table=(0,) * 256).infer_type([TensorType((4,), F32)])


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_table_matches_torch_float64(name: str, rng: np.random.Generator) -> None:
    """Each entry is torch's float64 function of the dequantized input, rounded into `to`;
    the interpreter and the independent qnn_numpy index it alike."""
    q_in, q_out = _random_type(rng, "i8", (0.01, 0.06)), _random_type(rng, "i8", (0.005, 0.04))
    kind = _table_kind(name, q_in, q_out)
    real = (torch.arange(-128, 128, dtype=F64) - q_in.zero_point[0]) * q_in.scale[0]
    f = FUNCTIONS[name][1](real).numpy()  # type: ignore[operator]
    want = np.clip(np.rint(f / q_out.scale[0]) + q_out.zero_point[0], -128, 127)
    assert list(kind.table) == want.astype(int).tolist()
    stored = rng.integers(-128, 128, (7, 37)).astype(np.int8)
    types = [TensorType(stored.shape, q_in)]
    (got,) = kind.reference_typed(types, stored)
    np.testing.assert_array_equal(got, want.astype(np.int8)[stored.astype(int) + 128])
    np.testing.assert_array_equal(got, qnn_numpy.qlut(types, [stored], kind))


def test_table_saturates_and_maps_nan_to_the_minimum() -> None:
    q_in = QuantType(U8, (0.5,), (128,))
    q_out = QuantType(I8, (0.01,), (0,))
    table = lut_table(lambda r: np.where(r > 0, np.log(r), np.nan), q_in, q_out)
    assert table[:129] == (-128,) * 129  # log of <= 0: NaN (and -inf at 0) → min
    assert table[-1] == 127  # log(63.5) / 0.01 saturates


def test_byte_table_reindexes_signed_inputs() -> None:
    q = QuantType(I8, (0.1,), (0,))
    kind = QLut(to=QuantType(U8, (0.1,), (0,)), table=tuple(range(256)))
    t = byte_table(kind, q, kind.to)
    assert t[0] == 128 and t[127] == 255 and t[128] == 0 and t[255] == 127


@pytest.mark.parametrize(("out", "shapes", "want"), [
    ((2, 3, 5, 7), [(2, 3, 5, 7), (2, 3, 1, 1)], [(6, (35, 1)), (35, (1, 0))]),
    ((4, 5), [(4, 5), (5,)], [(4, (5, 0)), (5, (1, 1))]),
    ((3, 4), [(1,), (3, 4)], [(12, (0, 1))]),
    ((2, 1, 3), [(2, 1, 3), (2, 1, 3)], [(6, (1, 1))]),
    ((2, 3, 4), [(1, 3, 1), (2, 1, 4)], [(2, (0, 4)), (3, (1, 0)), (4, (0, 1))]),
])
def test_broadcast_loops(out: tuple[int, ...], shapes: list[tuple[int, ...]],
                         want: list[tuple[int, tuple[int, ...]]]) -> None:
    assert broadcast_loops(out, shapes) == want


# -- the C kernels -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "kiln-cpu-cache"


def _check_c(module: Module, inputs: list[np.ndarray], cache: Path, **options: object) -> str:
    """C output == interpreter == qnn_numpy on the quantized IR; returns the generated C."""
    art = kiln.compile(module, [np.zeros_like(x) for x in inputs], target="cpu",
                       pipeline="dce", cache_dir=cache, **options)
    got = art(*inputs)
    want = interpret(art.ir, *inputs)[0]
    np.testing.assert_array_equal(got, want)
    mine = qnn_numpy.run_integer_model(art.ir, *inputs)[art.ir.main.outputs[0]]
    np.testing.assert_array_equal(got, mine)
    return art.artifact.files["model.c"]  # type: ignore[attr-defined]


LUT_SHAPES = [(1,), (3, 67), (2, 5, 7), (4, 64), (1, 200), (2, 3, 129)]


@needs_gcc
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_qlut_kernel_is_bit_exact(name: str, rng: np.random.Generator, cache: Path) -> None:
    for storage_in, storage_out in (("i8", "i8"), ("u8", "i8"), ("i8", "u8")):
        q_in = _random_type(rng, storage_in, (0.01, 0.05))
        q_out = _random_type(rng, storage_out, (0.005, 0.03))
        shape = LUT_SHAPES[int(rng.integers(len(LUT_SHAPES)))]
        module = _lut_module(_table_kind(name, q_in, q_out), q_in, shape)
        source = _check_c(module, [_covering(rng, q_in, shape)], cache)
        assert "__builtin_shuffle" in source and f"/* {name}: q<" in source


@needs_gcc
@pytest.mark.parametrize("march", ["native", "x86-64"])
def test_qlut_kernel_every_byte_every_length(march: str, rng: np.random.Generator,
                                             cache: Path) -> None:
    """All 256 inputs, in lengths around the 64-byte vector body (VBMI and portable path)."""
    q_in, q_out = _random_type(rng, "i8", (0.02, 0.04)), _random_type(rng, "i8", (0.01, 0.02))
    kind = _table_kind("hardswish", q_in, q_out)
    for n in (63, 64, 65, 256 + 31):
        x = _covering(rng, q_in, (n,))
        if n > 256:
            x[:256] = ((np.arange(-128, 128) - q_in.zero_point[0]) * q_in.scale[0])
        _check_c(_lut_module(kind, q_in, (n,)), [x], cache, march=march)


MUL_CASES = [  # lhs shape, rhs shape
    ((2, 8, 5, 7), (2, 8, 1, 1)),  # the squeeze-excitation gate
    ((3, 4, 6), (3, 4, 6)),
    ((2, 1, 9), (4, 1)),
    ((5,), (3, 1, 5)),
    ((1, 33), (1,)),
]


@needs_gcc
@pytest.mark.parametrize(("sa", "sb"), MUL_CASES)
def test_qmul_kernel_is_bit_exact(sa: tuple[int, ...], sb: tuple[int, ...],
                                  rng: np.random.Generator, cache: Path) -> None:
    qa, qb = _random_type(rng, "i8", (0.01, 0.05)), _random_type(rng, "u8", (0.002, 0.006))
    q_out = _random_type(rng, "i8", (0.002, 0.01))
    mult, shift = quantize_multiplier(qa.scale[0] * qb.scale[0] / q_out.scale[0])
    low = int(rng.integers(-128, -60))
    kind = QMul(to=q_out, multiplier=(mult,), shift=(shift,), clamp_min=low, clamp_max=low + 170)
    _check_c(_mul_module(kind, qa, qb, sa, sb),
             [_covering(rng, qa, sa), _covering(rng, qb, sb)], cache)


@needs_gcc
def test_kernels_are_clean_under_sanitizers(rng: np.random.Generator, cache: Path) -> None:
    """qlut (vector body + tail) → qmul (broadcast) in one module, ASan + UBSan build."""
    q_in, q_act = _random_type(rng, "i8", (0.02, 0.04)), _random_type(rng, "i8", (0.01, 0.02))
    q_gate, q_out = _random_type(rng, "u8", (0.003, 0.005)), _random_type(rng, "i8", (0.01, 0.02))
    act = _table_kind("hardswish", q_in, q_act)
    mult, shift = quantize_multiplier(q_act.scale[0] * q_gate.scale[0] / q_out.scale[0])
    m = Module("se")
    shape, gate_shape = (2, 3, 11, 7), (2, 3, 1, 1)
    func, b = new_function(m, "forward", [TensorType(shape, F32), TensorType(gate_shape, F32)],
                           ["x", "g"])
    a = b.add(act, b.add(Quantize(to=q_in), func.args[0], name="xq"), name="act")
    g = b.add(_table_kind("hardsigmoid", q_in, q_gate),
              b.add(Quantize(to=q_in), func.args[1], name="gq"), name="gate")
    y = b.add(QMul(to=q_out, multiplier=(mult,), shift=(shift,)), a, g, name="se")
    b.ret(b.add(Dequantize(), y, name="y"))
    _check_c(m, [_covering(rng, q_in, shape), _covering(rng, q_in, gate_shape)], cache,
             sanitize=True)


# -- the quantize pass on mobilenet_v2ish ------------------------------------------------------
def _int8(model: torch.nn.Module, keep_float: tuple[str, ...] = ()) -> Module:
    calibration = [example_inputs("mobilenet_v2ish", 4, seed=s) for s in (1, 2)]
    keep = "{keep-float=" + "|".join(keep_float) + "}" if keep_float else ""
    module = kiln.trace(model, example_inputs("mobilenet_v2ish", 4))
    return kiln.run_passes(module, f"canonicalize,fold-batchnorm,fold-constants,cse,"
                           f"quantize{keep},dce", calibration_data=calibration)


def test_mobilenet_runs_in_integers_and_stays_as_accurate() -> None:
    """Every hardswish / hardsigmoid / SE product becomes qlut / qmul (one quantize in, one
    dequantize out), and the error vs PyTorch is no worse than with them kept in float."""
    model = get_model("mobilenet_v2ish")
    tables = _int8(model)
    counts = tables.op_counts()
    assert counts["kiln.quantize"] == 1 and counts["kiln.dequantize"] == 1, counts
    assert counts["kiln.qlut"] == 11 and counts["kiln.qmul"] == 3, counts
    assert not {"kiln.hardswish", "kiln.hardsigmoid", "kiln.mul"} & set(counts)
    floats = _int8(model, ("hardswish", "hardsigmoid", "mul"))
    assert "kiln.qlut" not in floats.op_counts()
    x = example_inputs("mobilenet_v2ish", 4, seed=23)
    want = model(*x).detach().numpy()
    xs = [t.numpy() for t in x]
    rel_tables = error_of(interpret(tables, *xs)[0], want)[1]
    rel_floats = error_of(interpret(floats, *xs)[0], want)[1]
    assert rel_tables <= 1.1 * rel_floats, (rel_tables, rel_floats)
    np.testing.assert_array_equal(interpret(tables, *xs)[0],
                                  qnn_numpy.run_integer_model(tables, *xs)[
                                      tables.main.outputs[0]])
