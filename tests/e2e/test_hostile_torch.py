"""Awkward PyTorch models and inputs: unsupported ops, data-dependent control flow, in-place
ops, non-contiguous and zero-size inputs, NaN/Inf parameters.

Each ends either in correct numerics (checked against the eager model) or in a clear
`KilnError` naming what, where and what to do: never another exception or a wrong answer.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import kiln
from kiln.errors import KilnError, KilnWarning, UnsupportedOpError
from tests.conftest import rel_error

THIS_FILE = Path(__file__).name
TARGETS = ["reference", "cpu", "gpu"]
"""Float targets whose outputs match torch to float32 accuracy (fpga: see its own tests)."""

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


def torch_input(rng: np.random.Generator, *shape: int) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal(shape).astype(np.float32))


def eager(model: nn.Module, *inputs: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return np.asarray(model(*[x.clone() for x in inputs]).numpy())


# -- unsupported ops, all at once ------------------------------------------------------------------
class ThreeUnsupported(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.cumsum(x, 1)
        b = torch.sort(x, 1).values
        c = torch.fft.rfft(x).abs().sum()
        return a + b + c


def test_every_unsupported_op_is_reported_with_its_line(rng: np.random.Generator) -> None:
    with pytest.raises(UnsupportedOpError) as info:
        kiln.trace(ThreeUnsupported(), torch_input(rng, 2, 8))
    text = str(info.value)
    assert "3 operation(s) kiln cannot convert" in text
    for op in ("cumsum", "sort", "fft"):
        assert op in text
    lines = [line for line in text.splitlines() if line.startswith(f"{THIS_FILE}:")]
    assert len(lines) == 3 and len({line.split(":")[1] for line in lines}) == 3  # 3 lines
    assert "hint:" in text


# -- data-dependent control flow -------------------------------------------------------------------
class DataIf(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # the branch depends on the values
            return x * 2
        return x - 1


class DataLoop(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(int(x.abs().sum().item()) % 3 + 1):  # trip count from the values
            x = x * 2
        return x


class DataWhile(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        while x.max() < 10:  # a loop until a value condition
            x = x * 2
        return x


def _line_of(cls: type, marker: str) -> int:
    import inspect
    source, start = inspect.getsourcelines(cls)
    return start + next(i for i, line in enumerate(source) if marker in line)


@pytest.mark.parametrize("cls, marker", [(DataIf, "if x.sum()"), (DataLoop, "for _ in"),
                                         (DataWhile, "while x.max()")])
def test_data_dependent_control_flow_says_make_it_static(cls: type, marker: str,
                                                        rng: np.random.Generator) -> None:
    x = torch.from_numpy(rng.uniform(0.1, 1.0, (2, 8)).astype(np.float32))
    with pytest.raises(KilnError) as info:
        kiln.trace(cls(), x)
    text = str(info.value)
    assert "data-dependent control flow" in text
    assert "hint: kiln compiles static graphs" in text and "torch.where" in text
    assert text.startswith(f"{THIS_FILE}:{_line_of(cls, marker)}:"), text[:200]


# -- in-place ops ----------------------------------------------------------------------------------
class InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        y.add_(0.5)
        y = self.act(y)
        y.mul_(x)
        z = torch.relu_(y - 0.25)
        z.clamp_(max=2.0)
        y.sub_(z)
        return self.fc2(torch.nn.functional.relu(y, inplace=True))


class UpdatesItsInput(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(3.0)
        x.add_(1.0)
        return torch.tanh(x)


@needs_gcc
@pytest.mark.parametrize("target", TARGETS)
def test_in_place_ops_trace_correctly(target: str, rng: np.random.Generator) -> None:
    model = InPlace().eval()
    x = torch_input(rng, 2, 8)
    art = kiln.compile(model, (x,), target=target)
    fresh = torch_input(rng, 2, 8)
    assert rel_error(np.asarray(art(fresh.clone())), eager(model, fresh)) < 1e-5


def test_tracing_does_not_change_the_callers_input(rng: np.random.Generator) -> None:
    x = torch_input(rng, 2, 8)
    before = x.clone()
    module = kiln.trace(UpdatesItsInput(), x)
    assert torch.equal(x, before)  # the model's x.mul_ ran on a copy
    fresh = torch_input(rng, 2, 8)
    got = kiln.interpret(module, fresh.numpy())[0]
    assert rel_error(got, np.tanh(fresh.numpy() * 3 + 1)) < 1e-6


# -- non-contiguous inputs -------------------------------------------------------------------------
class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _views(rng: np.random.Generator) -> dict[str, torch.Tensor]:
    base = torch_input(rng, 1, 3, 6, 6)
    return {"channels_last": base.clone().to(memory_format=torch.channels_last),
            "transposed": torch_input(rng, 1, 3, 6, 6).transpose(2, 3),
            "strided": torch_input(rng, 1, 3, 6, 12)[..., ::2],
            "numpy_view": torch.from_numpy(
                np.ascontiguousarray(base.numpy().transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2))}


def test_non_contiguous_example_inputs_trace(rng: np.random.Generator) -> None:
    model = ConvNet().eval()
    for name, x in _views(rng).items():
        assert not x.is_contiguous(), name
        module = kiln.trace(model, x)
        fresh = torch_input(rng, 1, 3, 6, 6)
        assert rel_error(kiln.interpret(module, fresh.numpy())[0], eager(model, fresh)) < 1e-5
    linear = nn.Linear(4, 3).eval()
    xt = torch_input(rng, 4, 2).t()
    module = kiln.trace(linear, xt)
    assert rel_error(kiln.interpret(module, xt.numpy())[0], eager(linear, xt)) < 1e-6


@needs_gcc
@pytest.mark.parametrize("target", TARGETS)
def test_non_contiguous_inputs_at_call_time(target: str, rng: np.random.Generator) -> None:
    """The reference and gpu targets take any strides; the cpu target, whose ctypes call
    passes raw pointers, refuses them with a hint instead of reading the wrong elements."""
    model = ConvNet().eval()
    art = kiln.compile(model, (torch_input(rng, 1, 3, 6, 6),), target=target)
    for name, x in _views(rng).items():
        want = eager(model, x)
        if target == "cpu":
            with pytest.raises(KilnError, match="is not contiguous") as info:
                art(x)
            assert "contiguous()" in str(info.value)
            got = art(x.contiguous())
        else:
            got = art(x)
        assert rel_error(np.asarray(got), want) < 1e-5, name


# -- zero-size inputs ------------------------------------------------------------------------------
@needs_gcc
@pytest.mark.parametrize("target", TARGETS)
def test_batch_zero_compiles_and_runs(target: str, rng: np.random.Generator) -> None:
    model = ConvNet().eval()
    art = kiln.compile(model, (torch.zeros(0, 3, 6, 6),), target=target)
    out = np.asarray(art(torch.zeros(0, 3, 6, 6)))
    assert out.shape == (0, 5)
    with pytest.raises(KilnError, match=r"shape \[1, 3, 6, 6\]"):
        art(torch_input(rng, 1, 3, 6, 6))  # compiled for batch 0: a clear mismatch


@needs_gcc
@pytest.mark.parametrize("target", TARGETS)
def test_batch_zero_at_call_time_is_a_clear_error(target: str, rng: np.random.Generator) -> None:
    model = ConvNet().eval()
    art = kiln.compile(model, (torch_input(rng, 1, 3, 6, 6),), target=target)
    with pytest.raises(KilnError, match=r"shape \[0, 3, 6, 6\]"):
        art(torch.zeros(0, 3, 6, 6))


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_fpga_awkward_inputs(rng: np.random.Generator) -> None:
    """Views are read by value (bit-exact with the interpreter on the contiguous copy);
    batch 0 is refused."""
    model = ConvNet().eval()
    art = kiln.compile(model, (torch_input(rng, 1, 3, 6, 6),), target="fpga")
    for name, x in _views(rng).items():
        want = kiln.interpret(art.artifact.module, x.contiguous().numpy())[0]  # bit-exact spec
        np.testing.assert_array_equal(np.asarray(art(x)), want, err_msg=name)
    with pytest.raises(KilnError, match="batch size 0") as info:
        art(torch.zeros(0, 3, 6, 6))
    assert "at least one sample" in str(info.value)
    with pytest.raises(KilnError, match="processes one sample"):
        kiln.compile(model, (torch.zeros(0, 3, 6, 6),), target="fpga")


# -- NaN / Inf parameters --------------------------------------------------------------------------
def _poisoned() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    with torch.no_grad():
        model[0].weight[1, 2] = float("nan")
        model[2].bias[0] = float("inf")
    return model


def test_nonfinite_parameters_warn_at_trace(rng: np.random.Generator) -> None:
    with pytest.warns(KilnWarning) as record:
        module = kiln.trace(_poisoned(), torch_input(rng, 2, 4))
    text = "\n".join(str(w.message) for w in record)
    assert "'0.weight'" in text and "1 NaN and 0 Inf" in text
    assert "'2.bias'" in text and "0 NaN and 1 Inf" in text
    assert "Sequential" in text
    assert len(module.weights) == 4


def test_nonfinite_weights_warn_at_load(rng: np.random.Generator, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KilnWarning)
        module = kiln.trace(_poisoned(), torch_input(rng, 2, 4))
    module.save(tmp_path / "net.kir")
    with pytest.warns(KilnWarning, match=r"weight '0.weight' \(from weights file .*net.npz\) "
                                         r"holds 1 NaN"):
        loaded = kiln.load(tmp_path / "net.kir")
    x = rng.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(kiln.interpret(loaded, x)[0], kiln.interpret(module, x)[0])


def test_finite_models_do_not_warn(rng: np.random.Generator, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", KilnWarning)
        module = kiln.trace(ConvNet().eval(), torch_input(rng, 1, 3, 6, 6))
        module.save(tmp_path / "net.kir")
        kiln.load(tmp_path / "net.kir")
