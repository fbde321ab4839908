"""Transformer layers in io="stream": one token row per beat (`emit_stream_rows`).

Every C-simulation is compared bit for bit (tolerance 0) with `kiln.interpret` on the lowered
fixed-point IR and with the io="parallel" build of the same model, on fresh random inputs
and odd sizes. The whole `transformer_layer` also runs as a concurrent dataflow (a thread per
stage, FIFOs bounded at the depths the stream estimator sized: no deadlock, same bits; at
depth 2 everywhere the attention's bypassing paths deadlock, which the check reports), and
its estimator rows account for the matmuls' buffered operands and the FIFOs they imply.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import kiln
from kiln.codegen.hls.emit_stream_plan import plan_stream
from kiln.errors import KilnError
from kiln.ir.interpret import interpret
from kiln.models import example_inputs, get_model
from kiln.models.transformer import MultiHeadSelfAttention
from kiln.targets.cost.fpga_parts import get_part
from kiln.targets.cost.fpga_resources import memory_cost
from kiln.targets.fpga import FpgaArtifact
from tests.unit.test_hls_stream import run_threaded

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kiln-hls-stream-transformer-cache")


def _pair(model: nn.Module, x: torch.Tensor, cache: Path,
          **options: Any) -> dict[str, kiln.CompiledModel]:
    """The model in both architectures, calibrated on the same fresh random batches."""
    rng = np.random.default_rng()
    calib = [(torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32)),)
             for _ in range(3)]
    return {io: kiln.compile(model.eval(), (x,), target="fpga", cache_dir=str(cache), fit="off",
                             calibration_data=calib, io=io, **options)
            for io in ("stream", "parallel")}


def _fpga(art: kiln.CompiledModel) -> FpgaArtifact:
    fpga = art.artifact
    assert isinstance(fpga, FpgaArtifact)
    return fpga


def _check(arts: dict[str, kiln.CompiledModel], shape: tuple[int, ...], runs: int = 2,
           scale: float = 1.0) -> None:
    """Stream C-sim == interpreter == parallel C-sim, bit for bit, on fresh inputs."""
    rng = np.random.default_rng()
    for _ in range(runs):
        x = (rng.standard_normal(shape) * scale).astype(np.float32)
        got = np.asarray(arts["stream"](x))
        want = interpret(_fpga(arts["stream"]).module, x)[0]
        assert np.array_equal(got.reshape(want.shape), want)
        assert np.array_equal(got, np.asarray(arts["parallel"](x)))


@needs_gxx
def test_row_layers_stream_bit_exact(cache: Path) -> None:
    norm = nn.LayerNorm(13)
    with torch.no_grad():  # randomized affine parameters (the defaults are ones and zeros)
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    model = nn.Sequential(norm, nn.Linear(13, 7), nn.GELU(), nn.Linear(7, 13))
    arts = _pair(model, torch.randn(1, 5, 13), cache)
    _check(arts, (1, 5, 13))
    source = "".join(_fpga(arts["stream"]).files.values())
    for template in ("layer_norm_stream<5, 1, 13, ", "dense_rows_stream<5, 1, 13, 7, ",
                     "gelu_stream<5, 7, "):
        assert f"kiln::{template}" in source


@needs_gxx
def test_attention_streams_bit_exact_with_buffered_keys(cache: Path) -> None:
    arts = _pair(MultiHeadSelfAttention(d_model=9, num_heads=3, dropout=0.0),
                 torch.randn(1, 5, 9), cache)
    _check(arts, (1, 5, 9))
    fpga = _fpga(arts["stream"])
    source = "".join(fpga.files.values())
    # keys buffered by columns (K^T streams along N), values by rows (along K)
    assert "kiln::matmul_stream<3, 5, 3, 5, " in source
    assert {"false", "true"} == {line.split(", ")[5] for line in source.splitlines()
                                 if "kiln::matmul_stream<" in line}
    plan = plan_stream(fpga.lowered)
    assert not any(s.layer is not None and s.layer.kind == "transpose" for s in plan.stages)


@needs_gxx
def test_generated_stream_code_is_warning_free(cache: Path, tmp_path: Path) -> None:
    arts = _pair(MultiHeadSelfAttention(d_model=8, num_heads=2, dropout=0.0),
                 torch.randn(1, 3, 8), cache)
    for name, text in _fpga(arts["stream"]).files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    cpp = next(p for p in (tmp_path / "firmware").glob("*.cpp"))
    done = subprocess.run(["g++", "-std=c++14", "-fsyntax-only", "-Wall", "-Wextra",
                           "-Werror", "-Wno-unknown-pragmas", "-Wno-unused-label", str(cpp)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_reordered_packed_axes_are_refused(cache: Path) -> None:
    class Swap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(5, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.transpose(1, 2))  # a linear over the token axis

    with pytest.raises(KilnError, match=r"(?s)io='stream'.*rows streamed.*io='parallel'"):
        _pair(Swap(), torch.randn(1, 5, 6), cache)


@needs_gxx
def test_transformer_layer_streams_bit_exact_with_sized_fifos(cache: Path,
                                                              tmp_path: Path) -> None:
    model = get_model("transformer_layer")
    (x,) = example_inputs("transformer_layer")
    arts = _pair(model, x, cache)
    _check(arts, tuple(x.shape), runs=1, scale=0.5)
    fpga = _fpga(arts["stream"])
    report: Any = arts["stream"].report()
    fifos = {row["name"]: row for row in report["fifos"]}
    top = next(v for k, v in fpga.files.items() if k.startswith("firmware/")
               and k.endswith(".cpp"))
    for row in fifos.values():
        assert f"#pragma HLS STREAM variable={row['name']} depth={row['depth']}" in top
    seq = x.shape[1]
    # the queries wait while the keys are buffered; the residual waits for the attention
    assert fifos["s_attn_q_proj"]["depth"] >= seq - 1
    assert fifos["s_x_q_to_layer26_add_acc"]["depth"] >= seq - 1
    matmuls = [r for r in report["layers"] if r["op"] == "matmul"]
    assert len(matmuls) == 2
    held = memory_cost(seq, x.shape[2] * 16, get_part("xczu9eg"))
    for row in matmuls:  # the buffered operand: a seq x (heads * d_head) memory at least
        assert row["lut"] >= held.lutram and row["bram"] >= held.bram
    assert report["latency_cycles"] > 2 * seq and report["ii"] >= 2 * seq  # B, then A
    assert report["bram"] == sum(r["bram"] for r in report["layers"]) + \
        sum(r["bram"] for r in report["fifos"])
    rng = np.random.default_rng()
    xs = (rng.standard_normal(tuple(x.shape)) * 0.5).astype(np.float32)
    want = fpga.run_raw(xs)[0]
    run = run_threaded(fpga, fpga.raws_in([xs]), tmp_path / "sized")
    assert run.returncode == 0, run.stderr
    got = np.loadtxt(tmp_path / "sized" / "out.dat", dtype=np.int64, ndmin=2)[0]
    np.testing.assert_array_equal(got, want)
    shallow = run_threaded(fpga, fpga.raws_in([xs]), tmp_path / "shallow", depth=2)
    assert shallow.returncode == 3 and "deadlock" in shallow.stderr
