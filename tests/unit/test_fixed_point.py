"""fixed-point: type rules, bit-exact integer ops against plain Python/NumPy re-computations,
accuracy on scikit-learn digits (16-bit calibrated: within 0.5 points of fp32), the per-layer
report, and every user-facing error."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

import kiln
import kiln.passes.fixed_point  # registers the pass
from kiln.compiler.pass_manager import PassManager, run_passes
from kiln.errors import KilnError
from kiln.ir import fixed_arith
from kiln.ir.builder import Builder, new_function
from kiln.ir.fixed import quantize_fixed
from kiln.ir.graph import Module, Value
from kiln.ir.interpret import interpret, interpret_all, sample_inputs
from kiln.ir.ops.base import OpError
from kiln.ir.ops.core import Weight
from kiln.ir.ops.elementwise import Add, Clamp, Exp, LeakyRelu, Maximum, Mul, Relu6, Sub
from kiln.ir.ops.nn_conv import Conv2d, Linear, MatMul
from kiln.ir.ops.nn_norm import Softmax
from kiln.ir.ops.nn_pool import AdaptiveAvgPool2d, AvgPool2d
from kiln.ir.ops.quant import Requantize
from kiln.ir.ops.reduce import ReduceMean, ReduceSum
from kiln.ir.parser import parse
from kiln.ir.types import FixedType, TensorType
from kiln.passes.fixed_point import integer_bits
from kiln.passes.fixed_point_report import fixed_point_report, format_report

BATCH = 50
"""Traced batch: the interpreter runs the 450 test digits in 9 calls."""


def fx(width: int, integer: int, signed: bool = True) -> FixedType:
    return FixedType(width, integer, signed)


# -- type rules ---------------------------------------------------------------------------------
def test_type_rules_follow_ap_fixed() -> None:
    a, b = fx(8, 3), fx(12, 5)
    assert fixed_arith.mul_type(a, b) == fx(20, 8)
    assert fixed_arith.add_type(a, b) == fx(6 + 7, 6)          # I = max(3, 5) + 1, F = 7
    assert fixed_arith.add_type(fx(8, 3, False), fx(8, 3)) == fx(10, 5)  # sign bit for ufixed
    assert fixed_arith.add_type(fx(8, 3, False), fx(8, 3, False), subtract=True).signed
    assert fixed_arith.union_type(fx(8, 2), fx(10, 6)) == fx(12, 6)
    assert fixed_arith.sum_type(a, 1) == a
    assert fixed_arith.sum_type(a, 9) == fx(12, 7)              # ceil(log2 9) = 4
    assert fixed_arith.sum_type(a, 8) == fx(11, 6)


def test_sums_cannot_overflow(rng: np.random.Generator) -> None:
    """The K-term product type holds the extreme sums (all operands at the most negative raw)."""
    for wx, wy, k in [(8, 8, 9), (16, 16, 72), (5, 7, 1000), (16, 6, 3)]:
        t = fixed_arith.sum_type(fixed_arith.mul_type(fx(wx, 2), fx(wy, 1)), k)
        worst = k * (1 << (wx - 1)) * (1 << (wy - 1))  # every product (-2^(W-1))^2
        assert worst <= t.raw_range[1] and -worst >= t.raw_range[0]


def test_too_wide_results_are_rejected() -> None:
    with pytest.raises(fixed_arith.WidthError, match="fixed<66,10>"):
        fixed_arith.mul_type(fx(33, 5), fx(33, 5))
    with pytest.raises(OpError, match="wider than the 63 bits"):
        fixed_arith.make(64, 3, signed=False)


@pytest.mark.parametrize("rounding", ["trn", "trn_zero", "rnd", "rnd_zero", "rnd_min_inf",
                                      "rnd_inf", "rnd_conv"])
def test_divide_round_matches_exact_fractions(rounding: str, rng: np.random.Generator) -> None:
    total = np.concatenate([rng.integers(-1000, 1000, 400), [-6, -5, -3, 3, 5, 6, 0, -1]])
    count = np.concatenate([rng.integers(1, 13, 400), [4, 2, 2, 2, 2, 4, 3, 2]])
    got = fixed_arith.divide_round(total, count, rounding)
    for t, c, g in zip(total, count, got):
        assert g == _round_fraction(Fraction(int(t), int(c)), rounding), (t, c, rounding)


def _round_fraction(v: Fraction, rounding: str) -> int:
    """ap_fixed's rounding modes on an exact rational (the module docstring of kiln.ir.fixed)."""
    floor, frac = math.floor(v), v - math.floor(v)
    half = Fraction(1, 2)
    if rounding == "trn":
        return floor
    if rounding == "trn_zero":
        return math.trunc(v)
    if frac != half:
        return floor + (frac > half)
    tie_up = {"rnd": True, "rnd_zero": v < 0, "rnd_min_inf": False, "rnd_inf": v > 0,
              "rnd_conv": floor % 2 == 1}[rounding]
    return floor + int(tie_up)


def test_integer_bits_cover_the_range() -> None:
    for amax in [0.01, 0.5, 0.9, 1.0, 1.5, 3.99, 4.0, 100.0]:
        i = integer_bits(amax, 16)
        assert amax < 2.0 ** (i - 1) and (i == -7 or amax >= 2.0 ** (i - 2))
    assert integer_bits(0.0, 16) == 1 and integer_bits(1e-30, 16) == -7


# -- ops on fixed point, against independent re-computations -------------------------------------
def _raw(rng: np.random.Generator, t: FixedType, shape: tuple[int, ...]) -> np.ndarray:
    lo, hi = t.raw_range
    return rng.integers(lo, hi + 1, size=shape, dtype=np.int64)


def _module(shapes: list[TensorType], body) -> Module:  # type: ignore[no-untyped-def]
    module = Module("t")
    func, b = new_function(module, "forward", shapes)
    b.ret(*body(b, func.args))
    return module


def _weight(b: Builder, name: str, raw: np.ndarray, t: FixedType) -> Value:
    assert b.module is not None
    symbol = b.module.add_weight(name, raw)
    return b.add(Weight(name=symbol, type=TensorType(raw.shape, t)), name=symbol)


def _python_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int, shift_acc: int,
                 shift_b: int) -> list:
    """Conv2d with Python ints, loop by loop: Σ x·w, aligned, plus the aligned bias."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))).tolist()
    wl, bl = w.tolist(), b.tolist()
    out = []
    for ni, oi in itertools.product(range(n), range(o)):
        for i, j in itertools.product(range(h + 2 * pad - kh + 1), range(wd + 2 * pad - kw + 1)):
            acc = sum(xp[ni][ci][i + di][j + dj] * wl[oi][ci][di][dj]
                      for ci in range(c) for di in range(kh) for dj in range(kw))
            out.append((acc << shift_acc) + (bl[oi] << shift_b))
    return out


def test_conv2d_fixed_is_bit_exact(rng: np.random.Generator) -> None:
    tx, tw, tb = fx(10, 3), fx(8, 1), fx(12, 4)
    x = _raw(rng, tx, (2, 3, 5, 5))
    w, bias = _raw(rng, tw, (4, 3, 3, 3)), _raw(rng, tb, (4,))

    def body(b: Builder, args: list[Value]) -> list[Value]:
        return [b.add(Conv2d(padding=(1, 1, 1, 1)), args[0], _weight(b, "w", w, tw),
                      _weight(b, "b", bias, tb))]

    module = _module([TensorType(x.shape, tx)], body)
    out_type = module.main.outputs[0].type.dtype
    assert out_type == fixed_arith.add_type(fixed_arith.sum_type(fixed_arith.mul_type(tx, tw),
                                                                27), tb)
    (got,) = interpret(module, x)
    frac = tx.frac_bits + tw.frac_bits
    want = _python_conv(x, w, bias, 1, out_type.frac_bits - frac,
                        out_type.frac_bits - tb.frac_bits)
    assert got.reshape(-1).tolist() == want


def test_linear_and_matmul_fixed_are_bit_exact(rng: np.random.Generator) -> None:
    tx, tw, tb = fx(16, 5), fx(12, 2), fx(9, 6)
    x, w, bias = _raw(rng, tx, (3, 7)), _raw(rng, tw, (5, 7)), _raw(rng, tb, (5,))

    def body(b: Builder, args: list[Value]) -> list[Value]:
        wv = _weight(b, "w", w, tw)
        return [b.add(Linear(), args[0], wv, _weight(b, "b", bias, tb)),
                b.add(MatMul(), args[0], _weight(b, "wt", w.T.copy(), tw))]

    module = _module([TensorType(x.shape, tx)], body)
    lin, mm = interpret(module, x)
    t_lin = module.main.outputs[0].type.dtype
    assert isinstance(t_lin, FixedType)
    products = [[sum(int(a) * int(c) for a, c in zip(row, col)) for col in w] for row in x]
    shift_b = t_lin.frac_bits - tb.frac_bits
    shift_acc = t_lin.frac_bits - tx.frac_bits - tw.frac_bits
    assert lin.tolist() == [[(p << shift_acc) + (int(bb) << shift_b)
                             for p, bb in zip(row, bias)] for row in products]
    assert mm.tolist() == products


def _real(raw: np.ndarray, t: FixedType) -> list[Fraction]:
    return [Fraction(int(r)) / (1 << t.frac_bits) for r in np.asarray(raw).reshape(-1)]


@pytest.mark.parametrize("kind", [Add(), Sub(), Mul(), Maximum()], ids=lambda k: k.NAME)
def test_binary_fixed_ops_are_exact(kind, rng: np.random.Generator) -> None:  # type: ignore
    ta, tb = fx(9, 3), fx(12, 7, signed=False)
    a, b = _raw(rng, ta, (4, 6)), _raw(rng, tb, (6,))
    module = _module([TensorType(a.shape, ta), TensorType(b.shape, tb)],
                     lambda bld, args: [bld.add(kind, *args)])
    (got,) = interpret(module, a, b)
    t = module.main.outputs[0].type.dtype
    assert isinstance(t, FixedType)
    fn = {"kiln.add": lambda p, q: p + q, "kiln.sub": lambda p, q: p - q,
          "kiln.mul": lambda p, q: p * q, "kiln.maximum": max}[kind.NAME]
    want = [fn(p, q) for p, q in zip(_real(a, ta), _real(np.broadcast_to(b, a.shape), tb))]
    assert _real(got, t) == want
    assert all(t.raw_range[0] <= r <= t.raw_range[1] for r in got.reshape(-1))


def test_unary_fixed_ops_keep_the_type(rng: np.random.Generator) -> None:
    t = FixedType(12, 4, rounding="rnd", saturation="sat")
    x = _raw(rng, t, (64,))
    ops = [Relu6(), Clamp(min=-1.3, max=2.1), LeakyRelu(slope=0.1)]
    module = _module([TensorType(x.shape, t)], lambda b, args: [b.add(k, args[0]) for k in ops])
    relu6, clamp, leaky = interpret(module, x)
    assert all(v.type.dtype == t for v in module.main.outputs)
    real = _real(x, t)
    assert _real(relu6, t) == [min(max(v, Fraction(0)), Fraction(6)) for v in real]
    lo, hi = Fraction(math.ceil(Fraction(-1.3) * 256), 256), Fraction(math.floor(2.1 * 256), 256)
    assert _real(clamp, t) == [min(max(v, lo), hi) for v in real]
    slope = Fraction(int(quantize_fixed(np.array([0.1]), fixed_arith.SLOPE_TYPE)[0]), 1 << 16)
    want = [v if v >= 0 else Fraction(_round_fraction(v * slope * 256, "rnd"), 256)
            for v in real]
    assert _real(leaky, t) == want


def test_average_pools_and_means_round_with_the_type(rng: np.random.Generator) -> None:
    t = FixedType(10, 3, rounding="rnd_conv")
    x = _raw(rng, t, (1, 2, 5, 5))
    ops = [AvgPool2d(kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1)),
           AdaptiveAvgPool2d(output_size=(1, 1)), ReduceMean(axes=(2, 3)),
           ReduceSum(axes=(2, 3))]
    module = _module([TensorType(x.shape, t)], lambda b, args: [b.add(k, args[0]) for k in ops])
    avg, gap, mean, total = interpret(module, x)
    sums = x.sum(axis=(2, 3))
    assert gap.reshape(2).tolist() == mean.reshape(2).tolist() == [
        _round_fraction(Fraction(int(s), 25), "rnd_conv") for s in sums[0]]
    assert module.main.outputs[3].type.dtype == FixedType(15, 8)
    assert total.reshape(2).tolist() == sums[0].tolist()
    corner = x[0, :, :2, :2].sum(axis=(1, 2))  # count_include_pad: 9 positions, 4 real
    assert avg[0, :, 0, 0].tolist() == [_round_fraction(Fraction(int(s), 9), "rnd_conv")
                                        for s in corner]


def test_fixed_operands_do_not_mix_with_floats() -> None:
    t = fx(8, 2)
    with pytest.raises(KilnError, match="mix fixed point with f32"):
        _module([TensorType((2, 3), t), TensorType((4, 3))],
                lambda b, args: [b.add(Linear(), *args)])
    with pytest.raises(KilnError, match="does not take fixed-point operands"):
        _module([TensorType((2, 3), t)], lambda b, args: [b.add(Exp(), args[0])])
    with pytest.raises(KilnError, match="needs a floating-point input"):
        _module([TensorType((2, 3), t)], lambda b, args: [b.add(Softmax(axis=1), args[0])])


# -- the pass on the digits CNN -------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits() -> dict[str, object]:
    """The trained digits CNN traced at batch 50, with batch norms folded, and the data."""
    from kiln.models import example_inputs, get_model, load_digits_data
    module = kiln.trace(get_model("digits_cnn"), example_inputs("digits_cnn", batch=BATCH))
    folded = run_passes(module, "fold-batchnorm")
    x_train, _ = load_digits_data("train")
    x_test, y_test = load_digits_data("test")
    calib = [x_train[i:i + BATCH] for i in range(0, 400, BATCH)]
    return {"module": module, "folded": folded, "calib": calib, "x": x_test, "y": y_test}


def accuracy(module: Module, x: np.ndarray, y: np.ndarray) -> float:
    hits = sum(int((interpret(module, x[i:i + BATCH])[0].argmax(1) == y[i:i + BATCH]).sum())
               for i in range(0, len(x), BATCH))
    return 100.0 * hits / len(x)


def test_16_bit_calibrated_keeps_digits_accuracy(digits: dict) -> None:  # type: ignore
    x, y, calib = digits["x"], digits["y"], digits["calib"]
    base = accuracy(digits["folded"], x, y)
    runs = {}
    for width in (16, 8):
        out = run_passes(digits["folded"], f"fixed-point{{width={width}}}",
                         calibration_data=calib)
        runs[width] = accuracy(out, x, y)
    print(f"digits_cnn test accuracy: fp32 {base:.2f}, fixed16 {runs[16]:.2f}, "
          f"fixed8 {runs[8]:.2f}")
    assert abs(runs[16] - base) <= 0.5
    assert runs[8] >= base - 3.0


def test_pass_output_is_typed_as_documented(digits: dict) -> None:  # type: ignore
    result = PassManager("fixed-point{width=12,weight-width=8}",
                         calibration_data=digits["calib"]).run(digits["folded"])
    out, stats = result.module, result.records[-1].statistics
    text = str(out)
    assert "kiln.quantize(%x) {to = fixed<12," in text
    assert "%conv1 = kiln.requantize(%conv1.acc) {to = fixed<12," in text
    weights = [op for op in out.main.ops if op.isa(Weight)]
    assert weights and all(str(op.result.type.dtype).startswith("fixed<8,") for op in weights)
    assert all(out.weights[op.kind.name].dtype == np.int64 for op in weights)
    assert not any(op.kind.name.endswith(".bnfold") for op in weights)  # float data dropped
    assert stats["requantize"] == 3 and stats["weights"] == 6
    assert stats["max-accumulator-bits"] == max(
        op.operands[0].type.dtype.width for op in out.main.ops if op.isa(Requantize))
    assert out.main.result_types == digits["folded"].main.result_types


def _conv_numpy(x: np.ndarray, w: np.ndarray, pad: int) -> np.ndarray:
    """Unlike the reference's im2col: a sum over kernel offsets of int64 einsums."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    _, _, kh, kw = w.shape
    h, wd = xp.shape[2] - kh + 1, xp.shape[3] - kw + 1
    out = np.zeros((x.shape[0], w.shape[0], h, wd), np.int64)
    for i, j in itertools.product(range(kh), range(kw)):
        out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + wd], w[:, :, i, j])
    return out


def _requantize_python(acc: np.ndarray, src: FixedType, dst: FixedType) -> list[int]:
    """rnd (ties up) and sat with Python ints."""
    shift = src.frac_bits - dst.frac_bits
    lo, hi = dst.raw_range
    out = []
    for v in acc.reshape(-1).tolist():
        r = (v + (1 << (shift - 1))) >> shift if shift > 0 else v << -shift
        out.append(min(max(r, lo), hi))
    return out


def test_model_integer_path_matches_plain_numpy(digits: dict) -> None:  # type: ignore
    """conv2 and fc of the 16-bit model, recomputed from their fixed operands."""
    out = run_passes(digits["folded"], "fixed-point{width=16}", calibration_data=digits["calib"])
    values = interpret_all(out, digits["x"][:BATCH])
    ops = {op.results[0].name: op for op in out.main.ops if op.results}
    for layer in ("conv2", "fc"):
        acc_op, req = ops[f"{layer}.acc"], ops[layer]
        x, w, b = (values[v] if v in values else out.weights[v.producer.kind.name]
                   for v in acc_op.operands)
        tx, tw, tb, ta = (v.type.dtype for v in (*acc_op.operands, acc_op.result))
        raw = _conv_numpy(x, w, 1) if layer == "conv2" else x @ w.T
        want = ((raw << (ta.frac_bits - tx.frac_bits - tw.frac_bits))
                + (b << (ta.frac_bits - tb.frac_bits)).reshape((1, -1) + (1,) * (raw.ndim - 2)))
        assert np.array_equal(values[acc_op.result], want)
        assert values[req.result].reshape(-1).tolist() == _requantize_python(
            want, ta, req.result.type.dtype)


def test_batch_norm_and_softmax_stay_float(digits: dict) -> None:  # type: ignore
    """Without fold-batchnorm the batch norms run in float between dequantize and quantize."""
    out = run_passes(digits["module"], "fixed-point{width=16}", calibration_data=digits["calib"])
    counts = out.op_counts()
    assert counts["kiln.batch_norm"] == 2 and counts["kiln.dequantize"] == 3
    assert abs(accuracy(out, digits["x"], digits["y"])
               - accuracy(digits["module"], digits["x"], digits["y"])) <= 0.5


def test_transformer_layer_converts_with_float_islands() -> None:
    from kiln.models import example_inputs, get_model
    module = kiln.trace(get_model("transformer_layer"), example_inputs("transformer_layer", 2))
    calib = [sample_inputs(module.main, seed) for seed in range(3)]
    out = run_passes(module, "fixed-point{width=16}", calibration_data=calib)
    counts = out.op_counts()
    assert counts.get("kiln.requantize", 0) >= 4 and counts["kiln.softmax"] >= 1
    inputs = sample_inputs(module.main, 17)
    got, want = interpret(out, *inputs)[0], interpret(module, *inputs)[0]
    assert np.max(np.abs(got - want)) <= 2e-2 * np.max(np.abs(want))


def test_report_lists_range_bits_overflow_and_sqnr(digits: dict) -> None:  # type: ignore
    calib = digits["calib"]
    out = run_passes(digits["folded"], "fixed-point{width=8}", calibration_data=calib)
    rows = fixed_point_report(out, calib[:2], reference=digits["folded"])
    by_name = {r["name"]: r for r in rows}
    assert {"x.q", "conv1", "conv2", "fc", "fc.weight.fixed"} <= set(by_name)
    for r in rows:
        assert r["overflow_rate"] == 0.0 or r["kind"] == "input"
        assert r["sqnr_db"] > 20.0 and r["width"] == 8
        lo, hi = FixedType(r["width"], r["integer"]).value_range
        assert lo <= r["min"] and r["max"] <= hi
    assert "conv2" in format_report(rows)
    tight = run_passes(digits["folded"], "fixed-point{width=8,policy=uniform,integer=2}")
    tight_rows = {r["name"]: r for r in fixed_point_report(tight, calib[:1])}
    assert tight_rows["fc"]["overflow_rate"] > 0.1
    assert tight_rows["fc.weight.fixed"]["sqnr_db"] is None  # no reference given


def test_fixed_module_prints_parses_and_runs_identically(digits: dict) -> None:  # type: ignore
    out = run_passes(digits["folded"], "fixed-point{width=16}", calibration_data=digits["calib"])
    again = parse(str(out), weights=out.weights)
    assert str(again) == str(out)
    x = digits["x"][:BATCH]
    assert np.array_equal(interpret(again, x)[0], interpret(out, x)[0])


def test_pruned_sparse_models_convert_with_their_encodings(digits: dict) -> None:  # type: ignore
    import kiln.passes.prune
    import kiln.passes.sparsify  # noqa: F401  (register the passes)
    sparse = run_passes(digits["folded"], "prune{sparsity=0.6},sparsify")
    out = run_passes(sparse, "fixed-point{width=16}", calibration_data=digits["calib"])
    weights = [op for op in out.main.ops if op.isa(Weight)]
    assert {str(op.result.type.encoding) for op in weights if op.result.type.rank > 1} == {"csr"}
    x, y = digits["x"], digits["y"]
    assert abs(accuracy(out, x, y) - accuracy(sparse, x, y)) <= 0.5


def test_not_converted_twice(digits: dict) -> None:  # type: ignore
    once = run_passes(digits["folded"], "fixed-point{width=16}", calibration_data=digits["calib"])
    result = PassManager("fixed-point{width=8}", calibration_data=digits["calib"]).run(once)
    assert result.records[-1].statistics == {"already-quantized": 1}
    assert not result.records[-1].changed and result.module == once


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("pipeline", "data", "message"), [
    ("fixed-point", None, "calibration_data was not given"),
    ("fixed-point", [], "calibration_data is empty"),
    ("fixed-point", [np.zeros((3, 1, 8, 8), np.float32)], r"shape \[3, 1, 8, 8\]"),
    ("fixed-point{policy=uniform}", None, "needs the option integer"),
    ("fixed-point{integer=4}", None, "option integer=4 applies to policy=uniform"),
    ("fixed-point{width=1}", None, "option width=1 is outside 2..64"),
    ("fixed-point{width=8,weight-width=99}", None, "option weight-width=99"),
])
def test_bad_input_names_the_option(digits: dict, pipeline: str, data: object,  # type: ignore
                                    message: str) -> None:
    with pytest.raises(KilnError, match=message) as info:
        run_passes(digits["folded"], pipeline, calibration_data=data, reproducer=False)
    assert "fixed-point" in str(info.value)


def test_accumulators_wider_than_int64_are_rejected(digits: dict) -> None:  # type: ignore
    with pytest.raises(KilnError, match=r"'kiln.conv2d' op .*wider than the 64 bits") as info:
        run_passes(digits["folded"], "fixed-point{width=40}",
                   calibration_data=digits["calib"], reproducer=False)
    assert "option width" in str(info.value)
