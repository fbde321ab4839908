"""Bad input to the gpu target: ops without a Triton lowering, fp16 range, bad options."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import kiln
import kiln.targets.gpu
from kiln.errors import KilnError, UnsupportedOpError
from kiln.targets.gpu_precision import PrecisionWarning

UNSUPPORTED = '''kiln.module @bad {
  kiln.func @forward(%x: tensor<1x4x5x5xf32>) -> (tensor<1x4x5x5xf32>) {
    %y = kiln.fused(%x) {kind = "elementwise", pattern = "local_response_norm+relu"} ({
    ^bb0(%x_1: tensor<1x4x5x5xf32>):
      %n = kiln.local_response_norm(%x_1) {size = 3} : tensor<1x4x5x5xf32> loc("net.py":12 "lrn")
      %r = kiln.relu(%n) : tensor<1x4x5x5xf32> loc("net.py":13 "act")
      kiln.yield %r
    }) : tensor<1x4x5x5xf32> loc(fused["lrn", "act"])
    %z = kiln.local_response_norm(%y) {size = 3} : tensor<1x4x5x5xf32> loc("net.py":20 "lrn2")
    %i = kiln.cast(%z) {to = i32} : tensor<1x4x5x5xi32> loc("net.py":21 "toint")
    %f = kiln.cast(%i) {to = f32} : tensor<1x4x5x5xf32> loc("net.py":22 "back")
    kiln.return %f
  }
}
'''


def test_unsupported_ops_are_listed_at_once_with_lines_and_groups() -> None:
    with pytest.raises(UnsupportedOpError) as info:
        kiln.compile(kiln.parse(UNSUPPORTED), target="gpu", pipeline="dce")
    text = str(info.value)
    assert "4 op(s) cannot be lowered" in text
    assert ("net.py:12 (lrn): error: 'kiln.local_response_norm' op has no Triton lowering in "
            "the GPU target (in fused group %y = elementwise 'local_response_norm+relu')") in text
    assert "net.py:20 (lrn2): error: 'kiln.local_response_norm' op has no Triton lowering" in text
    assert "net.py:21 (toint): error: 'kiln.cast' op casts to i32" in text
    assert "net.py:22 (back): error: 'kiln.cast' op has a i32 value" in text


class WithLrn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.lrn = nn.LocalResponseNorm(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lrn(torch.relu(self.fc(x)).reshape(1, 3, 1, 1))


def test_unsupported_op_from_torch_names_the_model_line() -> None:
    with pytest.raises(UnsupportedOpError, match=r"test_gpu_errors.py:\d+ \(lrn\): error: "
                                                 r"'kiln.local_response_norm' op"):
        kiln.compile(WithLrn().eval(), (torch.randn(1, 4),), target="gpu")


class Scaled(nn.Module):
    """fc's weight has one entry of 1e6 (beyond fp16); `loud` multiplies its input by 1e3."""

    def __init__(self, big_weight: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        if big_weight:
            with torch.no_grad():
                self.fc.weight[0, 0] = 1e6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        loud = x * 1000.0
        return torch.relu(self.fc(loud)) * 1e-6


def test_fp16_range_warning_names_the_weight() -> None:
    with pytest.warns(PrecisionWarning, match=r"weight @fc.weight reaches 1e\+06"):
        kiln.compile(Scaled(True).eval(), (torch.randn(1, 4),), target="gpu", dtype="fp16")


def test_fp16_range_warning_names_the_activation_on_the_example_inputs() -> None:
    x = torch.full((1, 4), 100.0)
    with pytest.warns(PrecisionWarning, match=r"value %mul .*reaches 100000"):
        kiln.compile(Scaled(False).eval(), (x,), target="gpu", dtype="fp16")


def test_fp32_and_in_range_fp16_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        kiln.compile(Scaled(True).eval(), (torch.randn(1, 4),), target="gpu", dtype="fp32")
        kiln.compile(Scaled(False).eval(), (torch.randn(1, 4) * 0.01,), target="gpu",
                     dtype="fp16")


def test_bad_dtype_and_bad_input_shape() -> None:
    with pytest.raises(KilnError, match="dtype must be one of fp32, fp16, bf16"):
        kiln.compile(Scaled(False).eval(), (torch.randn(1, 4),), target="gpu", dtype="int8")
    art = kiln.compile(Scaled(False).eval(), (torch.randn(1, 4),), target="gpu")
    with pytest.raises(KilnError, match=r"input 0 \(%x\) has shape \[2, 4\]"):
        art(np.zeros((2, 4), np.float32))
