"""kiln.compress fake quantization: torch's forward equals kiln's numerics, QAT exports.

Tolerances: fake quantization is bit-exact against kiln's references (affine: `quantize
{scheme = "mul"}` + `dequantize`; fixed point: `quantize_fixed` + `fixed_to_float`). The int8
QAT model and its `export_qat` integer module (fold-qdq) agree within 1 LSB of the output
scale: the integer requantization and torch's float rounding may differ by one step on ties,
and one step in a hidden layer moves the logits by less than one output step. The fixed-point
QAT model and its `fixed-point` export agree exactly (same types, same rounding)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln
from kiln.compress import (
    apply_masks,
    export_qat,
    fake_quantize,
    fake_quantize_affine,
    fake_quantize_fixed,
    finetune,
    float_model,
    masked_parameters,
)
from kiln.compress.qat_layers import ActQuant, QuantConv2d, QuantLinear
from kiln.errors import KilnError
from kiln.ir import fixed
from kiln.ir.ops.qnn import QNN_OPS
from kiln.ir.types import I8, U8, FixedType, QuantType
from kiln.models import get_model, load_digits_data

ROUNDINGS = ("trn", "trn_zero", "rnd", "rnd_zero", "rnd_min_inf", "rnd_inf", "rnd_conv")
SATURATIONS = ("sat", "sat_sym", "sat_zero", "wrap")


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = load_digits_data("train")
    xt, yt = load_digits_data("test")
    return (torch.from_numpy(x[:400]), torch.from_numpy(y[:400]),
            torch.from_numpy(xt[:100]), torch.from_numpy(yt[:100]))


# -- tensor numerics -------------------------------------------------------------------------------
@pytest.mark.parametrize("q", [
    QuantType(I8, (0.037,), (-5,)),
    QuantType(U8, (0.011,), (128,)),
    QuantType(I8, (0.02, 0.05, 0.003), (0, 3, -7), axis=1),
])
def test_fake_quantize_affine_equals_kiln(q, rng) -> None:
    x = (rng.standard_normal((4, 3, 5)) * 2).astype(np.float32)
    x[0, 0, :3] = np.float32(q.scale[0]) * np.array([0.5, 1.5, -2.5], np.float32)  # ties
    got = fake_quantize_affine(torch.from_numpy(x), q).numpy()
    stored = fixed.quantize_affine(x, q, scheme="mul")
    np.testing.assert_array_equal(got, fixed.dequantize_affine(stored, q))


@pytest.mark.parametrize("saturation", SATURATIONS)
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_fake_quantize_fixed_equals_kiln(rounding, saturation, rng) -> None:
    t = FixedType(8, 3, True, rounding, saturation)
    x = (rng.standard_normal(400) * 3).astype(np.float32)
    ties = (np.arange(-40, 40) + 0.5) / 2 ** t.frac_bits
    x = np.concatenate([x, ties.astype(np.float32), [0.0, 4.0, -4.0, 100.0, -100.0]])
    got = fake_quantize_fixed(torch.from_numpy(x.astype(np.float32)), t).numpy()
    want = fixed.fixed_to_float(fixed.quantize_fixed(x.astype(np.float32), t), t, np.float32)
    np.testing.assert_array_equal(got, want)


def test_straight_through_gradients() -> None:
    t = FixedType(6, 2, True, "rnd", "sat")  # range [-2, 1.9375]
    x = torch.tensor([-3.0, -1.01, 0.3, 1.9, 2.5], requires_grad=True)
    fake_quantize_fixed(x, t).sum().backward()
    assert x.grad is not None
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    with pytest.raises(KilnError, match="wrap_sm"):
        fake_quantize_fixed(x, FixedType(6, 2, True, "rnd", "wrap_sm"))


# -- quantization-aware models ---------------------------------------------------------------------
def test_int8_qat_exports_integer_ops_within_one_lsb(digits) -> None:
    x, y, xt, _ = digits
    qat = fake_quantize(get_model("digits_cnn"), x, observer="percentile")
    kinds = {type(m) for m in qat.modules()}
    assert {QuantConv2d, QuantLinear, ActQuant} <= kinds
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in qat.modules())  # folded
    finetune(qat, (x, y), 1, lr=1e-4, progress=False)
    module = export_qat(qat, (xt,))
    ops = [op for op in module.main.ops if not op.name.startswith("kiln.weight")]
    assert sum(isinstance(op.kind, QNN_OPS) for op in ops) == 3
    assert not any(op.name in ("kiln.conv2d", "kiln.linear") for op in ops)
    got = kiln.interpret(module, xt.numpy())[0]
    want = qat(xt).detach().numpy()
    out_type = module.main.ops[-2].operands[0].type.dtype  # the final dequantize's input
    assert isinstance(out_type, QuantType)
    assert np.max(np.abs(got - want)) <= out_type.scale[0] * 1.0001
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.99


def test_fixed_qat_exports_exactly(digits) -> None:
    x, _, xt, _ = digits
    qat = fake_quantize(get_model("digits_mlp"), x, scheme="fixed", width=8)
    module = export_qat(qat, (xt,), calibration_data=x)
    types = {str(op.result.type.dtype) for op in module.main.ops if op.results}
    assert any(t.startswith("fixed<8,") for t in types)
    got = kiln.interpret(module, xt.numpy())[0]
    np.testing.assert_array_equal(got, qat(xt).detach().numpy())
    plain = float_model(qat)
    assert not any(isinstance(m, (ActQuant, QuantLinear)) for m in plain.modules())
    with pytest.raises(KilnError, match="needs calibration_data"):
        export_qat(qat, (xt,))


def test_qat_keeps_masks(digits) -> None:
    x, y, xt, _ = digits
    model = get_model("digits_mlp")
    keep = np.ones((32, 64), bool)
    keep[::3] = False
    apply_masks(model, {"fc1.weight": keep})
    qat = fake_quantize(model, x)
    assert list(masked_parameters(qat)) == ["fc1.weight"]
    finetune(qat, (x, y), 1, weight_decay=1e-3, progress=False)
    module = export_qat(qat, (xt,))
    weight = next(w for name, w in module.weights.items() if name.startswith("fc1"))
    assert not np.any(weight[::3])


@pytest.mark.parametrize("kwargs, match", [
    ({"scheme": "int4"}, "scheme='int4'"),
    ({"observer": "max"}, "observer='max'"),
    ({"scheme": "fixed", "width": 40}, "width=40"),
    ({"scheme": "fixed", "rounding": "nearest"}, "rounding mode 'nearest'"),
])
def test_fake_quantize_bad_options(kwargs, match, digits) -> None:
    with pytest.raises(KilnError, match=match):
        fake_quantize(get_model("digits_mlp"), digits[0], **kwargs)


def test_fake_quantize_bad_data(digits) -> None:
    model = get_model("digits_mlp")
    with pytest.raises(KilnError, match="calibration_data is empty"):
        fake_quantize(model, torch.zeros(0, 1, 8, 8))
    with pytest.raises(KilnError, match="calibration_data is required"):
        fake_quantize(model, None)
    with pytest.raises(KilnError, match=r"shape \[5, 3\] does not fit"):
        fake_quantize(model, torch.ones(5, 3))
    with pytest.raises(KilnError, match=r"not made by kiln\.compress\.fake_quantize"):
        export_qat(model, (digits[2],))
