"""Bad input for the fpga target: clear `KilnError`s before (or instead of) a g++ dump."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import kiln
from kiln.errors import KilnError
from kiln.models import example_inputs, get_model
from kiln.targets.toolchains.gcc import CompileError

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


class FloatIslands(nn.Module):
    """sigmoid and tanh between fixed-point layers: no HLS implementation (yet)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.tanh(self.fc2(torch.sigmoid(self.fc1(x)))))


def test_ops_without_hls_code_are_all_named(tmp_path: Path) -> None:
    torch.manual_seed(0)
    with pytest.raises(KilnError) as info:
        kiln.compile(FloatIslands(), torch.randn(1, 8), target="fpga", cache_dir=str(tmp_path),
                     activations="host")  # "lut" (default) makes sigmoid / tanh HLS layers
    text = str(info.value)
    assert "kiln.sigmoid" in text and "kiln.tanh" in text
    assert "has no HLS implementation" in text
    assert not (tmp_path / "failed").exists()  # nothing was compiled


def test_too_narrow_precision_names_layer_and_width(tmp_path: Path) -> None:
    with pytest.raises(KilnError, match=r"too narrow.*\n(.*\n)*.*narrowest precision that "
                                        r"works is \d+"):
        kiln.compile(get_model("lenet5"), example_inputs("lenet5"), target="fpga",
                     precision=2, cache_dir=str(tmp_path))


def test_failed_build_points_at_the_log(tmp_path: Path) -> None:
    with pytest.raises(CompileError) as info:
        kiln.compile(get_model("jet_mlp"), example_inputs("jet_mlp"), target="fpga",
                     cxx="false", cache_dir=str(tmp_path))
    assert info.value.log.is_file()
    assert "compiler log" in str(info.value)


def test_unknown_io_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(KilnError, match="io='axi' is not one of parallel, stream"):
        kiln.compile(get_model("jet_mlp"), example_inputs("jet_mlp"), target="fpga",
                     io="axi", cache_dir=str(tmp_path))
