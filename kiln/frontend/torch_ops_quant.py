"""Conversions of core PyTorch's quantization ops: fake quantization and quantize/dequantize.

What torch 2.x's core produces in a traced graph (PT2E lives in torchao, which kiln does not
use): `fake_quantize_per_tensor_affine` / `fake_quantize_per_channel_affine` (and their
`_cachemask` forms, which the export decompositions produce; the mask only serves the
backward pass), `quantize_per_tensor` and `dequantize`. Each becomes typed quantization:

    fake_quantize(x, s, zp, qmin, qmax) → dequantize(clamp?(quantize(x){scheme = "mul"}))
    quantize_per_tensor(x, s, zp, dtype) → quantize(x){scheme = "fma" (8-bit) | "mul_add"}
    dequantize(q)                        → dequantize(q)

The storage type is the smallest of u8 / i8 / i32 that holds [qmin, qmax]; a narrower range
(4-bit fake quantization, [-127, 127] weights) adds a `kiln.clamp` on the stored integers. The
schemes reproduce torch's own rounding bit for bit (`kiln.ir.fixed`). `fold-qdq` / `quantize`
turn the resulting dequantize → op → quantize patterns into integer ops.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kiln.frontend.torch_ctx import Converter, Ctx, Unsupported, normalize_axis
from kiln.ir.graph import Value
from kiln.ir.ops.elementwise import Clamp
from kiln.ir.ops.quant import Dequantize, Quantize
from kiln.ir.types import I8, I32, U8, QuantType, ScalarType

_TORCH_STORAGE: dict[torch.dtype, ScalarType] = {
    torch.quint8: U8, torch.qint8: I8, torch.qint32: I32,
}


def _storage(low: int, high: int) -> ScalarType:
    for storage in (U8, I8, I32):
        info = np.iinfo(storage.numpy)
        if info.min <= low <= high <= info.max:
            return storage
    raise Unsupported(f"quantization range [{low}, {high}] does not fit in 32 bits")


def _array(ctx: Ctx, arg: Any) -> np.ndarray:
    """A constant tensor argument (per-channel scales, zero points) as an array."""
    from kiln.passes.fold_constants import known_value
    module = ctx.builder.module
    array = None if module is None else known_value(ctx.value(arg), module)
    if array is None:
        raise Unsupported("per-channel scales and zero points must be constants")
    return np.asarray(array)


def _fake_quantize(per_channel: bool) -> Converter:
    def convert(ctx: Ctx) -> Value | tuple[Value | None, ...]:
        x = ctx.tensor("self")
        low, high = int(ctx.args["quant_min"]), int(ctx.args["quant_max"])
        storage = _storage(low, high)
        if per_channel:
            scales = _array(ctx, ctx.args["scale"]).astype(np.float32).reshape(-1)
            zeros = _array(ctx, ctx.args["zero_point"]).reshape(-1)
            axis = normalize_axis(int(ctx.args["axis"]), x.type.rank)
            q = QuantType(storage, tuple(float(s) for s in scales),
                          tuple(int(z) for z in zeros), axis)
        else:
            q = QuantType(storage, (float(np.float32(ctx.args["scale"])),),
                          (int(ctx.args["zero_point"]),))
        stored = ctx.add(Quantize(to=q, scheme="mul"), x)
        info = np.iinfo(storage.numpy)
        if (low, high) != (info.min, info.max):
            stored = ctx.add(Clamp(min=float(low), max=float(high)), stored)
        out = ctx.add(Dequantize(to=x.type.dtype), stored)
        return (out, None) if "cachemask" in str(ctx.node.target) else out
    return convert


def _quantize_per_tensor(ctx: Ctx) -> Value:
    dtype = ctx.args["dtype"]
    if dtype not in _TORCH_STORAGE:
        raise Unsupported(f"quantize_per_tensor to {dtype} is not supported")
    storage = _TORCH_STORAGE[dtype]
    q = QuantType(storage, (float(np.float32(ctx.args["scale"])),),
                  (int(ctx.args["zero_point"]),))
    scheme = "mul_add" if storage == I32 else "fma"
    return ctx.add(Quantize(to=q, scheme=scheme), ctx.tensor("self"))


def _dequantize(ctx: Ctx) -> Value:
    x = ctx.tensor("self")
    if not isinstance(x.type.dtype, QuantType):
        raise Unsupported(f"dequantize of a {x.type.dtype} tensor (not a quantized one)")
    return ctx.add(Dequantize(), x)


QUANT_CONVERTERS: dict[str, Converter] = {
    "aten.fake_quantize_per_tensor_affine": _fake_quantize(per_channel=False),
    "aten.fake_quantize_per_tensor_affine_cachemask": _fake_quantize(per_channel=False),
    "aten.fake_quantize_per_channel_affine": _fake_quantize(per_channel=True),
    "aten.fake_quantize_per_channel_affine_cachemask": _fake_quantize(per_channel=True),
    "aten.quantize_per_tensor.default": _quantize_per_tensor,
    "aten.dequantize.self": _dequantize,
}
