"""The cpu target's int8 elementwise kernels and reductions (`emit_qeltwise.py`,
`runtime/kiln_qops.c`, the qmul row path of `emit_qlut.py`), bit for bit.

Each module is quantize → the op → dequantize, compiled and compared with `kiln.interpret` and
the independent `qnn_numpy` on random data whose stored bytes cover the whole storage range
(saturating at both ends), at lengths around the 16-lane vector body, for int8 and uint8, on
the AVX-512 path (-march=native) and the portable one (-march=x86-64), and once under
-fsanitize=address,undefined. `split_term` (the 32-bit form of a qadd operand rescale) is
checked against `requant.rounding_mul_shift` on every stored value for random multipliers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.codegen.c.emit_qeltwise import split_term
from kiln.ir import requant
from kiln.ir.builder import new_function
from kiln.ir.graph import Module
from kiln.ir.interpret import interpret
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.nn_pool import MaxPool1d, MaxPool2d
from kiln.ir.ops.qnn import QAdd, QRescale
from kiln.ir.ops.qnn_eltwise import QMul
from kiln.ir.ops.qnn_pool import QReduceMean
from kiln.ir.ops.quant import Dequantize, Quantize
from kiln.ir.types import F32, I8, U8, QuantType, TensorType
from kiln.targets.toolchains import gcc

sys.path.insert(0, str(Path(__file__).resolve().parent))
import qnn_numpy

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "kiln-cpu-cache"


def _qtype(rng: np.random.Generator, storage: str, scale: tuple[float, float]) -> QuantType:
    zp = int(rng.integers(-60, 60)) + (128 if storage == "u8" else 0)
    return QuantType(U8 if storage == "u8" else I8, (float(rng.uniform(*scale)),), (zp,))


def _covering(rng: np.random.Generator, q: QuantType, shape: tuple[int, ...]) -> np.ndarray:
    """Floats whose stored bytes cover the storage range and saturate at both ends."""
    info = np.iinfo(q.storage.numpy)
    stored = rng.integers(int(info.min) - 3, int(info.max) + 4, shape)
    jitter = rng.uniform(-0.3, 0.3, shape)
    return ((stored - q.zero_point[0] + jitter) * q.scale[0]).astype(np.float32)


def _module(kind: OpDef, types: list[QuantType], shapes: list[tuple[int, ...]]) -> Module:
    """float inputs → quantize each → `kind` → dequantize."""
    m = Module("qops")
    func, b = new_function(m, "forward", [TensorType(s, F32) for s in shapes],
                           [f"x{i}" for i in range(len(shapes))])
    qs = [b.add(Quantize(to=q), arg, name=f"q{i}") for i, (q, arg) in
          enumerate(zip(types, func.args))]
    y = b.add(kind, *qs, name="op")
    b.ret(b.add(Dequantize(), y, name="y"))
    return m


def _check(module: Module, inputs: list[np.ndarray], cache: Path, **options: object) -> str:
    """C == interpreter (== qnn_numpy where it has the op); returns the generated model.c."""
    art = kiln.compile(module, [np.zeros_like(x) for x in inputs], target="cpu",
                       pipeline="dce", cache_dir=cache, **options)
    log = (art.artifact.entry / "build.log").read_text()  # type: ignore[attr-defined]
    assert "warning" not in log, log
    got = art(*inputs)
    want = interpret(art.ir, *inputs)[0]
    np.testing.assert_array_equal(got, want)
    mine = qnn_numpy.run_integer_model(art.ir, *inputs)[art.ir.main.outputs[0]]
    np.testing.assert_array_equal(got, mine)
    return art.artifact.files["model.c"]  # type: ignore[attr-defined, no-any-return]


# -- split_term ------------------------------------------------------------------------------
@pytest.mark.parametrize("storage", [(-128, 127), (0, 255)])
def test_split_term_equals_the_rounding_multiply_shift(storage: tuple[int, int],
                                                       rng: np.random.Generator) -> None:
    """Whenever a split is returned, it reproduces rmul((a - zp) << ls) on every stored a
    (recomputed here independently); typical TFLite rescales (ls = 20) always split."""
    a = np.arange(storage[0], storage[1] + 1, dtype=np.int64)
    for _ in range(300):
        ls = int(rng.choice([0, 4, 8, 12, 16, 20, 22]))
        tiny = bool(rng.random() < 0.2)  # factors that undo the left shift: u beyond 30
        real = float(rng.uniform(0.05, 1.0)) * (2.0 ** -ls if tiny else 1.0)
        mult, shift = requant.quantize_multiplier(real)
        zp = int(rng.integers(storage[0], storage[1] + 1))
        term = split_term(storage, zp, ls, mult, shift)
        if ls == 20 and not tiny:
            assert term is not None
        if term is None:
            continue
        value = a * term.hi + term.bias + ((a * term.lo + term.round) >> term.u)
        want = ((a - zp) * (1 << ls) * mult + (1 << (30 - shift))) >> (31 - shift)
        np.testing.assert_array_equal(value, want)
        assert max(abs(int(v)) for v in value) < 1 << 31


def test_split_term_refuses_what_int32_cannot_carry() -> None:
    """u = 31 - e - ls outside 1..30, or a multiplier too wide for the whole part."""
    assert split_term((-128, 127), 0, 22, 1 << 30, 30) is None  # u < 1
    assert split_term((-128, 127), 0, 0, (1 << 31) - 1, -31) is None  # u > 30
    assert split_term((-128, 127), 5, 0, (1 << 31) - 1, 30) is None  # u = 1: a*hi overflows


# -- qadd --------------------------------------------------------------------------------------
ADD_SHAPES = [(1,), (15,), (16,), (17,), (2, 3, 37), (8, 64, 129)]
"""Lengths around the 16-lane body, and one of 66048 elements: an off-by-one in the low part
of a rescale moves a result only near a rounding boundary, so it needs many elements."""


def _qadd_kind(rng: np.random.Generator, qa: QuantType, qb: QuantType, q_out: QuantType,
               left_shift: int, out_shift: int | None = None) -> QAdd:
    """TFLite's add parameters (inputs rescaled to twice the larger scale)."""
    twice = 2 * max(qa.scale[0], qb.scale[0])
    lm, le = requant.quantize_multiplier(qa.scale[0] / twice)
    rm, re_ = requant.quantize_multiplier(qb.scale[0] / twice)
    m, e = requant.quantize_multiplier(twice / ((1 << left_shift) * q_out.scale[0]))
    if out_shift is not None:
        e = out_shift
    low = int(rng.integers(-128, -100)) + (128 if q_out.storage == U8 else 0)
    return QAdd(to=q_out, multiplier=(m,), shift=(e,), lhs_multiplier=lm, lhs_shift=le,
                rhs_multiplier=rm, rhs_shift=re_, left_shift=left_shift, clamp_min=low,
                clamp_max=low + 200)


@pytest.mark.parametrize("shape", ADD_SHAPES)
@pytest.mark.parametrize("storages", [("i8", "i8", "i8"), ("u8", "i8", "u8"),
                                      ("i8", "u8", "i8")])
def test_qadd_kernel_is_bit_exact(shape: tuple[int, ...], storages: tuple[str, str, str],
                                  rng: np.random.Generator, cache: Path) -> None:
    qa, qb = _qtype(rng, storages[0], (0.01, 0.05)), _qtype(rng, storages[1], (0.01, 0.05))
    q_out = _qtype(rng, storages[2], (0.02, 0.08))
    kind = _qadd_kind(rng, qa, qb, q_out, 20)
    source = _check(_module(kind, [qa, qb], [shape, shape]),
                    [_covering(rng, qa, shape), _covering(rng, qb, shape)], cache)
    assert "kiln_qadd(" in source


@pytest.mark.parametrize("left_shift", [0, 9, 22])
def test_qadd_other_left_shifts_and_the_int64_fallback(left_shift: int, rng: np.random.Generator,
                                                       cache: Path) -> None:
    """Small left shifts make u = t - ls too large to split: the int64 loop must agree too."""
    qa, qb, q_out = (_qtype(rng, "i8", (0.01, 0.05)) for _ in range(3))
    kind = _qadd_kind(rng, qa, qb, q_out, left_shift)
    shape = (3, 41)
    source = _check(_module(kind, [qa, qb], [shape, shape]),
                    [_covering(rng, qa, shape), _covering(rng, qb, shape)], cache)
    splits = all(split_term((-128, 127), q.zero_point[0], left_shift, m, e) is not None
                 for q, m, e in ((qa, kind.lhs_multiplier, kind.lhs_shift),
                                 (qb, kind.rhs_multiplier, kind.rhs_shift)))
    assert ("kiln_qadd(" in source) == splits


@pytest.mark.parametrize("left_shift", [12, 20])
@pytest.mark.parametrize("storages", [("i8", "i8"), ("u8", "i8")])
def test_qadd_two_general_rescales(storages: tuple[str, str], left_shift: int,
                                   rng: np.random.Generator, cache: Path) -> None:
    """Neither input multiplier a power of two (kiln_qadd's general loop; TFLite's own
    parameters make the larger-scale one exactly 1/2, the loop with a plain second term)."""
    qa, qb = _qtype(rng, storages[0], (0.01, 0.05)), _qtype(rng, storages[1], (0.01, 0.05))
    q_out = _qtype(rng, "i8", (0.02, 0.08))
    base = _qadd_kind(rng, qa, qb, q_out, left_shift)
    lm, le = requant.quantize_multiplier(float(rng.uniform(0.3, 0.49)))
    rm, re_ = requant.quantize_multiplier(float(rng.uniform(0.3, 0.49)))
    kind = QAdd(to=q_out, multiplier=base.multiplier, shift=base.shift, lhs_multiplier=lm,
                lhs_shift=le, rhs_multiplier=rm, rhs_shift=re_, left_shift=left_shift)
    for q, m, e in ((qa, lm, le), (qb, rm, re_)):
        info = np.iinfo(q.storage.numpy)
        term = split_term((int(info.min), int(info.max)), q.zero_point[0], left_shift, m, e)
        assert term is not None and term.lo != 0
    shape = (64, 1031)
    _check(_module(kind, [qa, qb], [shape, shape]),
           [_covering(rng, qa, shape), _covering(rng, qb, shape)], cache)


def _every_byte(q: QuantType, axis: int) -> np.ndarray:
    """A (256, 256) float input whose stored bytes run through the whole storage range along
    `axis` (exact: rint(f32(k · s) / s) = k for |k| < 2^8)."""
    info = np.iinfo(q.storage.numpy)
    k = np.arange(int(info.min), int(info.max) + 1) - q.zero_point[0]
    values = (k.astype(np.float32) * np.float32(q.scale[0])).astype(np.float32)
    return np.ascontiguousarray(np.broadcast_to(values[:, None] if axis == 0 else values,
                                                (256, 256)))


@pytest.mark.parametrize("general", [False, True])
@pytest.mark.parametrize("storages", [("i8", "i8"), ("u8", "i8"), ("i8", "u8")])
def test_qadd_every_byte_pair(storages: tuple[str, str], general: bool,
                              rng: np.random.Generator, cache: Path) -> None:
    """All 65536 (a, b) pairs at once: the kernel equals the interpreter on its whole
    domain for these parameters (TFLite's, or two general rescales)."""
    qa, qb = _qtype(rng, storages[0], (0.01, 0.05)), _qtype(rng, storages[1], (0.01, 0.05))
    kind = _qadd_kind(rng, qa, qb, _qtype(rng, "i8", (0.02, 0.08)), 20)
    if general:
        lm, le = requant.quantize_multiplier(float(rng.uniform(0.3, 0.49)))
        rm, re_ = requant.quantize_multiplier(float(rng.uniform(0.3, 0.49)))
        kind = QAdd(to=kind.to, multiplier=kind.multiplier, shift=kind.shift,
                    lhs_multiplier=lm, lhs_shift=le, rhs_multiplier=rm, rhs_shift=re_,
                    left_shift=20, clamp_min=kind.clamp_min, clamp_max=kind.clamp_max)
    source = _check(_module(kind, [qa, qb], [(256, 256), (256, 256)]),
                    [_every_byte(qa, 0), _every_byte(qb, 1)], cache)
    assert "kiln_qadd(" in source


@pytest.mark.parametrize("march", ["native", "x86-64"])
def test_qmul_rows_every_byte_pair(march: str, rng: np.random.Generator, cache: Path) -> None:
    """Rows of every stored byte times every gate byte (the invariant factor); -march=x86-64
    takes the plain loops."""
    qa, qb = _qtype(rng, "i8", (0.01, 0.05)), _qtype(rng, "u8", (0.002, 0.006))
    q_out = _qtype(rng, "i8", (0.002, 0.01))
    m, e = requant.quantize_multiplier(qa.scale[0] * qb.scale[0] / q_out.scale[0])
    kind = QMul(to=q_out, multiplier=(m,), shift=(e,))
    gate = np.ascontiguousarray(_every_byte(qb, 0)[:, :1])
    source = _check(_module(kind, [qa, qb], [(256, 256), (256, 1)]),
                    [_every_byte(qa, 1), gate], cache, march=march)
    assert "kiln_qmul_invariant(" in source


def test_qadd_final_shift_below_32_bits(rng: np.random.Generator, cache: Path) -> None:
    """An output multiplier with t = 31 - e < 32 takes the int64 clamp of `kiln_qops_out16`."""
    qa, qb, q_out = (_qtype(rng, "i8", (0.01, 0.05)) for _ in range(3))
    for e in (0, 3):
        kind = _qadd_kind(rng, qa, qb, q_out, 20, out_shift=e)
        shape = (5, 19)
        _check(_module(kind, [qa, qb], [shape, shape]),
               [_covering(rng, qa, shape), _covering(rng, qb, shape)], cache)


@pytest.mark.parametrize("march", ["x86-64"])
def test_qadd_portable_path(march: str, rng: np.random.Generator, cache: Path) -> None:
    qa, qb, q_out = _qtype(rng, "u8", (0.01, 0.05)), _qtype(rng, "i8", (0.01, 0.05)), \
        _qtype(rng, "i8", (0.02, 0.08))
    kind = _qadd_kind(rng, qa, qb, q_out, 20)
    shape = (2, 77)
    _check(_module(kind, [qa, qb], [shape, shape]),
           [_covering(rng, qa, shape), _covering(rng, qb, shape)], cache, march=march)


# -- qrescale and qmul rows ----------------------------------------------------------------------
@pytest.mark.parametrize("march", ["native", "x86-64"])
def test_qrescale_kernel_is_bit_exact(march: str, rng: np.random.Generator, cache: Path) -> None:
    for storages in (("i8", "u8"), ("u8", "i8")):
        q_in, q_out = _qtype(rng, storages[0], (0.01, 0.05)), _qtype(rng, storages[1],
                                                                     (0.005, 0.2))
        m, e = requant.quantize_multiplier(q_in.scale[0] / q_out.scale[0])
        for shift in (e, 2):  # t >= 32 and t < 32
            low = 10 if storages[1] == "u8" else -100
            kind = QRescale(to=q_out, multiplier=(m,), shift=(shift,), clamp_min=low,
                            clamp_max=low + 150)
            shape = (3, 5, 13)
            source = _check(_module(kind, [q_in], [shape]), [_covering(rng, q_in, shape)],
                            cache, march=march)
            assert "kiln_qmul_invariant(" in source


@pytest.mark.parametrize(("sa", "sb"), [((2, 8, 5, 7), (2, 8, 1, 1)), ((3, 1), (3, 40)),
                                        ((1, 33), (1,)), ((2, 3, 16), (3, 1))])
def test_qmul_rows_are_bit_exact(sa: tuple[int, ...], sb: tuple[int, ...],
                                 rng: np.random.Generator, cache: Path) -> None:
    """The invariant operand on either side, rows shorter and longer than 16 lanes."""
    qa, qb = _qtype(rng, "i8", (0.01, 0.05)), _qtype(rng, "u8", (0.002, 0.006))
    q_out = _qtype(rng, "i8", (0.002, 0.01))
    m, e = requant.quantize_multiplier(qa.scale[0] * qb.scale[0] / q_out.scale[0])
    low = int(rng.integers(-128, -60))
    kind = QMul(to=q_out, multiplier=(m,), shift=(e,), clamp_min=low, clamp_max=low + 170)
    source = _check(_module(kind, [qa, qb], [sa, sb]),
                    [_covering(rng, qa, sa), _covering(rng, qb, sb)], cache)
    assert "kiln_qmul_invariant(" in source


# -- qreduce_mean and max pooling ------------------------------------------------------------------
@pytest.mark.parametrize(("shape", "axes"), [((2, 3, 5, 7), (2, 3)), ((4, 64), (1,)),
                                             ((2, 6, 8, 8), (1, 2, 3)), ((3, 1), (1,))])
@pytest.mark.parametrize("storage", ["i8", "u8"])
def test_qreduce_mean_kernel_is_bit_exact(shape: tuple[int, ...], axes: tuple[int, ...],
                                          storage: str, rng: np.random.Generator,
                                          cache: Path) -> None:
    q = _qtype(rng, storage, (0.01, 0.05))
    _check(_module(QReduceMean(axes=axes), [q], [shape]), [_covering(rng, q, shape)], cache)


POOLS: list[tuple[OpDef, tuple[int, ...]]] = [
    (MaxPool2d(kernel=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0)), (2, 3, 12, 10)),
    (MaxPool2d(kernel=(3, 3), stride=(2, 2), padding=(0, 0, 0, 0), dilation=(1, 2)),
     (1, 2, 9, 11)),
    (MaxPool2d(kernel=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0), ceil_mode=True),
     (2, 2, 7, 9)),
    (MaxPool2d(kernel=(3, 3), stride=(1, 1), padding=(1, 1, 1, 1)), (1, 3, 6, 5)),
    (MaxPool1d(kernel=(3,), stride=(2,), padding=(0, 0)), (2, 4, 17)),
]


@pytest.mark.parametrize("case", range(len(POOLS)))
@pytest.mark.parametrize("storage", ["i8", "u8"])
def test_qmax_pool_kernel_is_bit_exact(case: int, storage: str, rng: np.random.Generator,
                                       cache: Path) -> None:
    """Windows inside the input (unrolled taps) and padded / ceil-mode ones (checked)."""
    kind, shape = POOLS[case]
    q = _qtype(rng, storage, (0.01, 0.05))
    source = _check(_module(kind, [q], [shape]), [_covering(rng, q, shape)], cache)
    inside = case in (0, 1, 4)
    assert ("windows inside" in source) == inside


# -- sanitizers ----------------------------------------------------------------------------------
def test_kernels_are_clean_under_sanitizers(rng: np.random.Generator, cache: Path) -> None:
    """qadd (vector body + tail) → qrescale → qmul rows → max pool → qreduce_mean, one
    module, ASan + UBSan."""
    qa, qb = _qtype(rng, "i8", (0.01, 0.05)), _qtype(rng, "u8", (0.01, 0.05))
    q_sum, q_res = _qtype(rng, "i8", (0.02, 0.08)), _qtype(rng, "u8", (0.01, 0.05))
    q_gate, q_out = _qtype(rng, "u8", (0.002, 0.006)), _qtype(rng, "i8", (0.0005, 0.002))
    shape, gate = (2, 3, 6, 7), (2, 3, 1, 1)
    m = Module("chain")
    func, b = new_function(m, "forward", [TensorType(s, F32) for s in (shape, shape, gate)],
                           ["a", "b", "g"])
    a = b.add(Quantize(to=qa), func.args[0], name="aq")
    bq = b.add(Quantize(to=qb), func.args[1], name="bq")
    g = b.add(Quantize(to=q_gate), func.args[2], name="gq")
    s = b.add(_qadd_kind(rng, qa, qb, q_sum, 20), a, bq, name="sum")
    rm, re_ = requant.quantize_multiplier(q_sum.scale[0] / q_res.scale[0])
    r = b.add(QRescale(to=q_res, multiplier=(rm,), shift=(re_,)), s, name="res")
    mm, me = requant.quantize_multiplier(q_res.scale[0] * q_gate.scale[0] / q_out.scale[0])
    p = b.add(QMul(to=q_out, multiplier=(mm,), shift=(me,)), r, g, name="gated")
    pooled = b.add(MaxPool2d(kernel=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0)), p,
                   name="pool")
    mean = b.add(QReduceMean(axes=(2, 3)), pooled, name="mean")
    b.ret(b.add(Dequantize(), mean, name="y"))
    inputs = [_covering(rng, qa, shape), _covering(rng, qb, shape), _covering(rng, q_gate, gate)]
    art = kiln.compile(m, [np.zeros_like(x) for x in inputs], target="cpu", pipeline="dce",
                       cache_dir=cache, sanitize=True)
    np.testing.assert_array_equal(art(*inputs), interpret(art.ir, *inputs)[0])
    source = art.artifact.files["model.c"]  # type: ignore[attr-defined]
    for call in ("kiln_qadd(", "kiln_qmul_invariant(", "windows inside"):
        assert call in source
