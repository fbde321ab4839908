"""Calibration for post-training quantization: run the float model, observe, pick ranges.

**Data.** `calibration_batches` turns what the user passed as `calibration_data` (an iterable of
input tuples, or of arrays for one-input models) into a list of input tuples matching the entry
function exactly. An array whose leading dimension is a multiple of the traced batch size is
split into batches of that size, so a whole data set can be passed at once. Missing data, an
empty data set, or arrays of the wrong shape raise a `KilnError` naming the option and the
pass.

**Statistics.** `collect_statistics` interprets the float module on every batch with an
observer callback and keeps, per float value: the exact minimum and maximum, a uniform random
sample of at most `SAMPLES_PER_BATCH` elements of each batch (what the histogram observers see;
seeded by the batch index; never a stride, which aliases with the tensor's layout), and the
whole value of the first batch (for per-layer error analysis).

**Observers** (`observe_range`) map statistics to a clipping range [lo, hi]:
- `minmax`: the exact extremes.
- `percentile`: the `percentile`-th percentile of the samples (of |x| when symmetric; of x at
  both tails otherwise).
- `entropy`: TensorRT's KL-divergence calibration (pytorch-quantization's
  `_compute_amax_entropy`): a 2048-bin histogram of |x| over [0, max|x|] whose first bin (the
  spike of exact zeros) is set to the second's; for every candidate cut i in 128..2048 bins,
  P = the first i bins with the outliers folded into the last, Q = those bins merged into the
  levels [0, t] really gets (256 for a non-negative tensor on an asymmetric range, else 128)
  and spread back over the non-empty bins; the cut with the least KL(P || Q) gives the
  threshold t, and the range is [max(lo, -t), min(hi, t)]. The search matches the reference
  (pytorch-quantization; MXNet/ONNX Runtime differ only in merge rounding and smoothing); on a
  histogram with a tall spike just below a cut (a conv's bias where its input is all zero) it
  can still clip hard — an inherent trait of KL calibration, which `minmax`/`mse` do not share.
  A tensor with fewer than 16 samples per bin (a model's logits on a few batches) gets fewer
  bins, down to the number of levels — where the only cut left is max|x| (min/max).
- `mse`: scale the min/max range by each of 100 factors in (0, 1] and keep the one whose
  quantize-dequantize round trip of the samples has the least mean squared error.

`activation_type` turns a range into an affine `q<>` type: the range is widened to contain 0
(so real zero is exact: padding and relu rely on it), scales are float32 values (what every
runtime multiplies by) and zero points lie in the storage range. `weight_type` gives weights
symmetric int8 ([-127, 127], zero point 0), per output channel (axis 0) or per tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.errors import KilnError
from kiln.ir.graph import Func, Module, Op, Value
from kiln.ir.interpret import interpret, to_numpy
from kiln.ir.types import I8, QuantType, ScalarType

OBSERVERS = ("minmax", "percentile", "entropy", "mse")
SAMPLES_PER_BATCH = 1 << 16
HISTOGRAM_BINS = 2048
SAMPLES_PER_BIN = 16
"""Fewer samples than this per bin make the KL histogram too sparse to trust: it shrinks."""
MSE_CANDIDATES = 100


# -- data --------------------------------------------------------------------------------------
def _as_tuple(item: Any) -> tuple[np.ndarray, ...]:
    if isinstance(item, (tuple, list)):
        return tuple(to_numpy(x) for x in item)
    return (to_numpy(item),)


def _split(item: tuple[np.ndarray, ...], func: Func,
           where: str) -> list[tuple[np.ndarray, ...]]:
    """`item` as batches of the function's exact input shapes (split along axis 0)."""
    shapes = [a.type.shape for a in func.args]
    if len(item) != len(shapes):
        raise KilnError(f"{where}: a calibration_data sample has {len(item)} input(s), "
                        f"@{func.name} takes {len(shapes)}")
    if all(tuple(x.shape) == s for x, s in zip(item, shapes)):
        return [item]
    counts = set()
    for i, (x, s) in enumerate(zip(item, shapes)):
        ok = x.ndim == len(s) and len(s) > 0 and s[0] > 0 and tuple(x.shape[1:]) == s[1:]
        if not ok or x.shape[0] % s[0] or x.shape[0] == 0:
            arg = f" (%{func.args[i].name})" if func.args[i].name else ""
            raise KilnError(f"{where}: calibration_data input {i}{arg} has shape "
                            f"{list(x.shape)}, @{func.name} expects {list(s)}",
                            hint="pass batches of the traced shape, or an array whose first "
                                 "dimension is a multiple of the traced batch size")
        counts.add(x.shape[0] // s[0])
    if len(counts) != 1:
        raise KilnError(f"{where}: calibration_data inputs hold different numbers of batches")
    n = counts.pop()
    return [tuple(np.split(x, n)[k] for x in item) for k in range(n)]


def calibration_batches(data: Any, func: Func,
                        where: str = "pass 'quantize'") -> list[tuple[np.ndarray, ...]]:
    """The user's `calibration_data` as input tuples of `func`'s exact shapes (module doc)."""
    if data is None:
        raise KilnError(f"{where} needs calibration data: the option calibration_data was "
                        "not given",
                        hint="run_passes(module, pipeline, calibration_data=batches)")
    if isinstance(data, np.ndarray) or hasattr(data, "detach"):
        data = [data]
    if not isinstance(data, Iterable):
        raise KilnError(f"{where}: calibration_data must be an iterable of input tuples or "
                        f"arrays, got {type(data).__name__}")
    batches = [b for item in data for b in _split(_as_tuple(item), func, where)]
    if not batches:
        raise KilnError(f"{where}: the option calibration_data is empty",
                        hint="pass at least one batch of representative inputs")
    return batches


# -- statistics --------------------------------------------------------------------------------
def _subsample(flat: np.ndarray, seed: int) -> np.ndarray:
    """At most `SAMPLES_PER_BATCH` elements, drawn uniformly without replacement.

    Not a stride: every k-th element of a laid-out tensor aliases with its shape (k = 4 over an
    NCHW map of width 8 sees only columns 0 and 4 — the image border, where a conv outputs its
    bias), and the histogram observers then calibrate a distribution the tensor does not have.
    The generator is seeded by the batch index, so calibration stays deterministic."""
    if flat.size <= SAMPLES_PER_BATCH:
        return flat.copy()
    picked = np.random.default_rng(seed).choice(flat.size, SAMPLES_PER_BATCH, replace=False)
    return flat[np.sort(picked)]


@dataclass
class TensorStats:
    """What calibration keeps about one float value (module docstring)."""

    lo: float = math.inf
    hi: float = -math.inf
    samples: list[np.ndarray] = field(default_factory=list)
    first: np.ndarray | None = None

    def update(self, array: np.ndarray) -> None:
        flat = np.asarray(array, np.float32).reshape(-1)
        finite = flat[np.isfinite(flat)]
        if finite.size:
            self.lo = min(self.lo, float(finite.min()))
            self.hi = max(self.hi, float(finite.max()))
        self.samples.append(_subsample(finite, seed=len(self.samples)))
        if self.first is None:
            self.first = np.array(array, copy=True)

    def values(self) -> np.ndarray:
        return np.concatenate(self.samples) if self.samples else np.zeros(0, np.float32)

    @property
    def range(self) -> tuple[float, float]:
        if self.lo > self.hi:
            return 0.0, 0.0
        return self.lo, self.hi


def collect_statistics(module: Module, batches: Sequence[tuple[np.ndarray, ...]],
                       wanted: set[Value] | None = None) -> dict[Value, TensorStats]:
    """Statistics of the entry function's float arguments and top-level op results."""
    func = module.main
    stats: dict[Value, TensorStats] = {}

    def keep(value: Value, array: np.ndarray) -> None:
        if value.type.dtype.is_float and (wanted is None or value in wanted):
            stats.setdefault(value, TensorStats()).update(array)

    def observe(op: Op, outs: Sequence[np.ndarray]) -> None:
        for value, out in zip(op.results, outs):
            keep(value, out)

    for batch in batches:
        for arg, x in zip(func.args, batch):
            keep(arg, np.asarray(x))
        interpret(module, *batch, observer=observe)
    return stats


# -- observers ---------------------------------------------------------------------------------
def _entropy_threshold(magnitudes: np.ndarray, levels: int) -> float:
    """TensorRT's KL-divergence threshold on |x| (module docstring)."""
    amax = float(magnitudes.max()) if magnitudes.size else 0.0
    if amax == 0.0:
        return 0.0
    bins = min(HISTOGRAM_BINS, max(levels, magnitudes.size // SAMPLES_PER_BIN))
    hist, edges = np.histogram(magnitudes, bins=bins, range=(0.0, amax))
    hist = hist.astype(np.float64)
    hist[0] = hist[1]  # TensorRT: the spike of exact zeros (relu, padding) must not dominate
    best_kl, best = math.inf, bins
    for cut in range(levels, bins + 1):
        kl = _kl_for_cut(hist, cut, levels)
        if kl < best_kl:
            best_kl, best = kl, cut
    return float(edges[best])


def _kl_for_cut(hist: np.ndarray, cut: int, levels: int) -> float:
    """KL(P || Q): P = the first `cut` bins, outliers folded into the last; Q = those bins
    merged into `levels` levels, each level's mass spread evenly over its non-empty bins."""
    p = hist[:cut].copy()
    p[-1] += hist[cut:].sum()
    candidate = hist[:cut]
    level = np.digitize(np.arange(cut), np.linspace(0, cut, levels + 1)) - 1
    nonzero = candidate != 0
    totals = np.bincount(level[nonzero], weights=candidate[nonzero], minlength=levels)
    counts = np.bincount(level[nonzero], minlength=levels)
    per_level = np.divide(totals, counts, out=np.zeros(levels), where=counts > 0)
    q = np.where(nonzero, per_level[level], 0.0)
    p_sum, q_sum = p.sum(), q.sum()
    if p_sum == 0 or q_sum == 0:
        return math.inf
    p, q = p / p_sum, q / q_sum
    support = p > 0
    if np.any(q[support] == 0):
        return math.inf
    return float(np.sum(p[support] * np.log(p[support] / q[support])))


def _entropy_levels(lo: float, storage: ScalarType, symmetric: bool) -> int:
    """Quantization levels [0, t] gets: all of the storage's (256) for a non-negative tensor
    on an asymmetric range, else one sign's half (128) — a symmetric type spends the other
    half on negatives even when the tensor has none (`activation_type`)."""
    info = np.iinfo(storage.numpy)
    full = int(info.max) - int(info.min) + 1
    return full if lo >= 0 and not symmetric else full // 2


def _mse_range(values: np.ndarray, lo: float, hi: float, storage: ScalarType,
               symmetric: bool) -> tuple[float, float]:
    sample = values[:: max(1, values.size // SAMPLES_PER_BATCH)].astype(np.float64)
    best, best_err = (lo, hi), math.inf
    for alpha in np.linspace(1.0, 1.0 / MSE_CANDIDATES, MSE_CANDIDATES):
        q = activation_type(lo * alpha, hi * alpha, storage, symmetric)
        err = float(np.mean((fake_quantize(sample, q) - sample) ** 2))
        if err < best_err:
            best, best_err = (lo * alpha, hi * alpha), err
    return best


def observe_range(stats: TensorStats, observer: str, *, storage: ScalarType,
                  symmetric: bool, percentile: float = 99.99) -> tuple[float, float]:
    """The clipping range [lo, hi] the observer picks for one tensor (module docstring)."""
    lo, hi = stats.range
    if observer == "minmax" or lo == hi:
        return lo, hi
    values = stats.values()
    if observer == "percentile":
        if symmetric:
            t = float(np.percentile(np.abs(values), percentile))
            return max(lo, -t), min(hi, t)
        return (float(np.percentile(values, 100.0 - percentile)),
                float(np.percentile(values, percentile)))
    if observer == "entropy":
        t = _entropy_threshold(np.abs(values), _entropy_levels(lo, storage, symmetric))
        return max(lo, -t), min(hi, t)
    if observer == "mse":
        return _mse_range(values, lo, hi, storage, symmetric)
    raise KilnError(f"unknown observer '{observer}'", hint=f"use one of {', '.join(OBSERVERS)}")


# -- quantization parameters -------------------------------------------------------------------
def _f32_scale(scale: float) -> float:
    """A positive float32-representable scale (1.0 for an all-zero range)."""
    s = float(np.float32(scale))
    return s if s > 0 and math.isfinite(s) else 1.0


def activation_type(lo: float, hi: float, storage: ScalarType, symmetric: bool) -> QuantType:
    """Per-tensor affine type covering [lo, hi] ∪ {0} (module docstring)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    info = np.iinfo(storage.numpy)
    if symmetric:
        half = (int(info.max) - int(info.min)) // 2
        scale = _f32_scale(max(-lo, hi) / half)
        zp = 0 if info.min < 0 else half + 1
        return QuantType(storage, (scale,), (zp,))
    scale = _f32_scale((hi - lo) / (int(info.max) - int(info.min)))
    zp = int(np.clip(round(info.min - lo / scale), info.min, info.max))
    return QuantType(storage, (scale,), (zp,))


def weight_type(w: np.ndarray, per_channel: bool) -> QuantType:
    """Symmetric int8 ([-127, 127]) per output channel (axis 0) or per tensor."""
    mags = np.abs(w.reshape(w.shape[0], -1)).max(axis=1) if per_channel else np.abs(w).max()
    scales = tuple(_f32_scale(float(m) / 127.0) for m in np.atleast_1d(mags))
    if not per_channel:
        return QuantType(I8, scales, (0,))
    return QuantType(I8, scales, (0,) * len(scales), axis=0)


def fake_quantize(x: np.ndarray, q: QuantType) -> np.ndarray:
    """x rounded to q's grid and saturated (float64; per tensor)."""
    info = np.iinfo(q.storage.numpy)
    scale, zp = q.scale[0], q.zero_point[0]
    stored = np.clip(np.rint(x / scale) + zp, info.min, info.max)
    return (stored - zp) * scale
