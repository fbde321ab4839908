"""Invalid attributes and operand shapes raise `OpError` (a `KilnError`) that says what is wrong.

Each case runs `verify` then `infer_type` (as the verifier does) and matches the message, so a
message that loses its numbers fails here. Also checks that every attribute of the nn / shape /
reduction ops has a type hint the IR text format can print and parse.
"""

from __future__ import annotations

import dataclasses
import typing

import pytest

from kiln.errors import KilnError
from kiln.ir.ops import nn_conv, nn_norm, nn_pool, reduce, shape
from kiln.ir.ops.base import OpDef, OpError
from kiln.ir.types import F32, I32, TensorType


def t(*dims: int, dtype: typing.Any = F32) -> TensorType:
    return TensorType(dims, dtype)


X4 = t(1, 4, 8, 8)
CASES: list[tuple[str, OpDef, list[TensorType], str]] = [
    ("conv-channels", nn_conv.Conv2d(), [X4, t(8, 3, 3, 3)],
     r"weight has 3 input channels per group, input has 4 \(groups=1\)"),
    ("conv-groups", nn_conv.Conv2d(groups=3), [X4, t(3, 1, 3, 3)],
     "groups=3 does not divide the 4 input channels"),
    ("conv-groups-out", nn_conv.Conv2d(groups=2), [X4, t(3, 2, 3, 3)],
     "groups=2 does not divide the 3 output channels"),
    ("conv-stride", nn_conv.Conv2d(stride=(0, 1)), [X4, t(8, 4, 3, 3)],
     r"stride values must be >= 1, got \[0, 1\]"),
    ("conv-padding-len", nn_conv.Conv2d(padding=(1, 1)), [X4, t(8, 4, 3, 3)],
     r"padding needs 4 values, got 2"),
    ("conv-negative-pad", nn_conv.Conv1d(padding=(-1, 0)), [t(1, 2, 5), t(1, 2, 3)],
     "padding values must be >= 0"),
    ("conv-groups-zero", nn_conv.Conv2d(groups=0), [X4, t(8, 4, 3, 3)], "groups must be >= 1"),
    ("conv-too-small", nn_conv.Conv2d(), [t(1, 1, 2, 2), t(1, 1, 3, 3)],
     r"input spatial size \[2, 2\] is too small"),
    ("conv-bias", nn_conv.Conv2d(), [X4, t(8, 4, 3, 3), t(4)],
     r"bias has shape \[4\], expected \[8\]"),
    ("conv-rank", nn_conv.Conv2d(), [t(4, 8, 8), t(8, 4, 3, 3)], "input must have rank 4"),
    ("conv-dtype", nn_conv.Conv2d(), [X4, t(8, 4, 3, 3, dtype=I32)],
     "element types differ: f32 and i32"),
    ("conv-tuple-type", nn_conv.Conv2d(stride=[1, 1]), [X4, t(8, 4, 3, 3)],  # type: ignore
     "stride must be a tuple of integers"),
    ("convt-output-padding", nn_conv.ConvTranspose2d(stride=(2, 2), output_padding=(2, 0)),
     [X4, t(4, 2, 3, 3)], "output_padding .* must be smaller than stride"),
    ("convt-channels", nn_conv.ConvTranspose2d(), [X4, t(3, 2, 3, 3)],
     "weight has 3 input channels, input has 4"),
    ("linear-features", nn_conv.Linear(), [t(5, 7), t(3, 6)],
     "input has 7 features, weight expects 6"),
    ("linear-weight-rank", nn_conv.Linear(), [t(5, 7), t(7)], "weight must be 2-D"),
    ("matmul-contract", nn_conv.MatMul(), [t(3, 4), t(5, 6)],
     r"contracted dimensions differ: lhs \[3, 4\] has 4, rhs \[5, 6\] has 5"),
    ("matmul-batch", nn_conv.MatMul(), [t(2, 3, 4), t(3, 4, 5)], "do not broadcast"),
    ("matmul-scalar", nn_conv.MatMul(), [t(), t(3)], "rank >= 1"),
    ("bn-eps", nn_norm.BatchNorm(eps=0.0), [X4] + [t(4)] * 4, "eps must be positive"),
    ("bn-param", nn_norm.BatchNorm(), [X4, t(4), t(4), t(3), t(4)],
     r"mean has shape \[3\], expected \[4\]"),
    ("bn-int", nn_norm.BatchNorm(), [t(1, 4, 2, dtype=I32)] + [t(4, dtype=I32)] * 4,
     "needs a floating-point input"),
    ("bn-rank", nn_norm.BatchNorm(), [t(4)] * 5, "rank >= 2"),
    ("ln-ndim", nn_norm.LayerNorm(normalized_ndim=3), [t(2, 3)],
     "normalized_ndim 3 exceeds the input rank 2"),
    ("ln-weight", nn_norm.LayerNorm(), [t(2, 3), t(2)], r"weight has shape \[2\], expected \[3\]"),
    ("softmax-axis", nn_norm.Softmax(axis=2), [t(2, 3)], "axis 2 is out of range for rank 2"),
    ("softmax-negative", nn_norm.LogSoftmax(axis=-2), [t(2, 3)], "normalized by the frontend"),
    ("lrn-size", nn_norm.LocalResponseNorm(size=0), [X4], "size must be >= 1"),
    ("lrn-rank", nn_norm.LocalResponseNorm(size=3), [t(2, 4)], "rank >= 3"),
    ("maxpool-kernel", nn_pool.MaxPool2d(kernel=(0, 2), stride=(1, 1)), [X4],
     "kernel values must be >= 1"),
    ("maxpool-pad", nn_pool.MaxPool2d(kernel=(2, 2), stride=(1, 1), padding=(2, 0, 0, 0)),
     [X4], "must be smaller than the window"),
    ("maxpool-small", nn_pool.MaxPool1d(kernel=(5,), stride=(1,)), [t(1, 2, 3)],
     r"input spatial size \[3\] is smaller than the window \[5\]"),
    ("avgpool-rank", nn_pool.AvgPool2d(kernel=(2, 2), stride=(2, 2)), [t(4, 8, 8)],
     "input must have rank 4"),
    ("adaptive-size", nn_pool.AdaptiveAvgPool2d(output_size=(0, 1)), [X4],
     "output_size values must be >= 1"),
    ("adaptive-len", nn_pool.AdaptiveAvgPool1d(output_size=(2, 2)), [t(1, 2, 7)],
     "output_size needs 1 values"),
    ("reshape-numel", shape.Reshape(shape=(3, 3)), [t(2, 4)],
     r"cannot reshape \[2, 4\] \(8 elements\) to \[3, 3\] \(9 elements\)"),
    ("reshape-minus-one", shape.Reshape(shape=(-1,)), [t(2, 4)], "shape values must be >= 0"),
    ("flatten-order", shape.Flatten(start_dim=2, end_dim=1), [t(2, 3, 4)],
     "end_dim 1 comes before start_dim 2"),
    ("flatten-range", shape.Flatten(), [t(3)], "start_dim 1 is out of range for rank 1"),
    ("transpose-perm", shape.Transpose(perm=(0, 0, 1)), [t(2, 3, 4)],
     r"perm \[0, 0, 1\] is not a permutation of 0..2"),
    ("concat-shape", shape.Concat(axis=1), [t(2, 3), t(3, 3)],
     r"input 1 has shape \[3, 3\], which does not match \[2, 3\] outside axis 1"),
    ("concat-empty", shape.Concat(), [], "at least one input"),
    ("concat-dtype", shape.Concat(), [t(2), t(2, dtype=I32)], "element types differ"),
    ("split-sum", shape.Split(axis=1, sizes=(2, 2)), [t(2, 5)],
     r"sizes \[2, 2\] sum to 4, but axis 1 has 5 elements"),
    ("split-zero", shape.Split(sizes=(0, 2)), [t(2)], "sizes values must be >= 1"),
    ("slice-step", shape.Slice(axes=(0,), starts=(0,), ends=(2,), steps=(0,)), [t(4)],
     "steps values must be >= 1"),
    ("slice-bounds", shape.Slice(axes=(0,), starts=(1,), ends=(9,), steps=(1,)), [t(4)],
     "slice 1:9 on axis 0 .size 4. is not normalized"),
    ("slice-lengths", shape.Slice(axes=(0, 1), starts=(0,), ends=(1, 1), steps=(1, 1)),
     [t(4, 4)], "starts needs 2 values, got 1"),
    ("slice-repeat", shape.Slice(axes=(0, 0), starts=(0, 0), ends=(1, 1), steps=(1, 1)),
     [t(4)], r"axes \[0, 0\] repeats an axis"),
    ("pad-mode", shape.Pad(pads=(1, 1), mode="wrap"), [t(4)],
     "mode must be one of constant, reflect, edge, not 'wrap'"),
    ("pad-len", shape.Pad(pads=(1, 1)), [t(4, 4)], r"pads needs 4 values .* got 2"),
    ("pad-reflect", shape.Pad(pads=(4, 0), mode="reflect"), [t(4)],
     "reflect padding 4, 0 on axis 0 must be smaller than its size 4"),
    ("pad-negative", shape.Pad(pads=(-1, 0)), [t(4)], "pads values must be >= 0"),
    ("pad-int-value", shape.Pad(pads=(1, 0), value=0.5), [t(4, dtype=I32)],
     "value 0.5 is not an integer"),
    ("squeeze-size", shape.Squeeze(axes=(1,)), [t(1, 3)],
     r"cannot squeeze axis 1 of size 3 in \[1, 3\]"),
    ("squeeze-negative", shape.Squeeze(axes=(-1,)), [t(3, 1)], "axes entry -1 is out of range"),
    ("unsqueeze-range", shape.Unsqueeze(axes=(3,)), [t(2)], "axes entry 3 is out of range"),
    ("expand", shape.Expand(shape=(2, 4)), [t(3, 1)], r"cannot broadcast \[3, 1\] to \[2, 4\]"),
    ("expand-rank", shape.Expand(shape=(3,)), [t(1, 3)], "cannot broadcast"),
    ("dropout-p", shape.Dropout(p=1.5), [t(3)], r"p must be in \[0, 1\], got 1.5"),
    ("reduce-empty", reduce.ReduceSum(axes=()), [t(3)], "axes must name at least one axis"),
    ("reduce-range", reduce.ReduceMean(axes=(2,)), [t(3, 4)], "axes entry 2 is out of range"),
    ("reduce-repeat", reduce.ReduceMax(axes=(1, 1)), [t(3, 4)], "repeats an axis"),
]


@pytest.mark.parametrize(("op", "types", "message"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_invalid_op_raises(op: OpDef, types: list[TensorType], message: str) -> None:
    with pytest.raises(OpError, match=message) as info:
        op.verify(types)
        op.infer_type(types)
    assert isinstance(info.value, KilnError)


@pytest.mark.parametrize(("op", "types", "message"), [c[1:] for c in CASES if c[0] in {
    "conv-stride", "maxpool-kernel", "dropout-p", "bn-eps", "convt-output-padding"}])
def test_infer_type_checks_attributes_too(op: OpDef, types: list[TensorType],
                                          message: str) -> None:
    """Graph building calls only infer_type; bad attributes must still fail cleanly there."""
    with pytest.raises(OpError, match=message):
        op.infer_type(types)


ALLOWED_HINTS = {int, float, bool, str, tuple[int, ...], int | None, float | None}
OP_CLASSES = [cls for module in (nn_conv, nn_norm, nn_pool, reduce, shape)
              for cls in vars(module).values()
              if isinstance(cls, type) and issubclass(cls, OpDef) and cls.NAME
              and cls.__module__ == module.__name__]


@pytest.mark.parametrize("cls", OP_CLASSES, ids=lambda c: c.NAME)
def test_attributes_have_printable_type_hints(cls: type[OpDef]) -> None:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        assert hints[field.name] in ALLOWED_HINTS, f"{cls.NAME}.{field.name}: {hints[field.name]}"
    assert cls.summary(), f"{cls.NAME} needs a one-line docstring"
