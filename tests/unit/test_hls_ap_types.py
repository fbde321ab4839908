"""Synthesizable bit widths: the generated HLS C++ built with the vendor's `ap_int<W>` types
(`-DKILN_USE_AP_TYPES`, Xilinx's ap_int.h / hls_stream.h shipped in the hls4ml wheel) gives
exactly the raws of the plain g++ build (native integers) and of kiln's interpreter, on random
inputs from a fresh seed (printed on failure); tolerance 0 everywhere.

Also: kiln_fixed.h's conversions under ap types (from int64 raws; the exact-width
intermediates from ap_int raws: tests/unit/test_hls_requantize_width.py), every array of the
generated code declared with its tensor's width, and pools with padding / ceil_mode /
count_include_pad (io parallel and stream) bit-exact with the interpreter.
The default run builds the ap_int C-simulation of the digits CNN (io parallel) and of a
conv / padded-pool / dense net (io stream), ~45 s on a loaded machine; every other bundled
model and io mode is `slow` (~15-35 s each; the digits CNN's stream case also declares the
weight ROMs as ap_int, as synthesis does). Skipped with the reason when g++ or hls4ml is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import kiln
from kiln.codegen.hls.emitter import model_name, runtime_header
from kiln.ir import fixed
from kiln.ir.interpret import interpret_all, sample_inputs
from kiln.models import example_inputs, get_model
from kiln.targets.fpga import FpgaArtifact
from kiln.targets.fpga_csim import build_csim
from tests.unit.hls_cases import edge_raws
from tests.unit.test_hls_fixed import CASES, SAMPLES, _program

ONE_PER_MODE = [CASES[(j % 6) * 28 + j] for j in range(28)]  # CASES: conversion, Q, O
"""Every (rounding, saturation) pair once, over varying conversions (fast to compile)."""

hls4ml = pytest.importorskip("hls4ml", reason="hls4ml (ships ap_int.h) is not installed")
pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
AP_TYPES = str(Path(hls4ml.__file__).parent / "templates" / "vivado" / "ap_types")
FAST = [("digits_cnn", "parallel")]  # (+ a stream net in test_padded_ceil_mode_pools)
MODELS = ["jet_mlp", "digits_mlp", "lenet5", "digits_cnn", "conv1d_net", "resnet8",
          "mobilenet_v2ish"]
SLOW = [(m, io) for m in MODELS for io in ("parallel", "stream") if (m, io) not in FAST]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kiln-ap-cache")


def _seed() -> int:
    return int(np.random.SeedSequence().generate_state(1)[0] % (1 << 31))


def _fpga(model: torch.nn.Module, xs: Any, cache: Path, **options: Any) -> FpgaArtifact:
    art = kiln.compile(model, xs, target="fpga", cache_dir=str(cache), **options)
    assert isinstance(art.artifact, FpgaArtifact)
    return art.artifact


def _check_against_ap(fpga: FpgaArtifact, cache: Path, samples: int = 3,
                      ap_weights: bool = False) -> None:
    """Native C-sim == ap_int C-sim == interpreter, raw for raw, on fresh random inputs;
    `ap_weights`: the weight ROMs as ap_int too, as synthesis declares them (kiln_fixed.h)."""
    seed = _seed()
    batch = [sample_inputs(fpga.module.main, seed + k) for k in range(samples)]
    raws = np.concatenate([fpga.raws_in(xs) for xs in batch])
    n_out = sum(t.size for t in fpga.lowered.outputs)
    files = dict(fpga.files)
    if ap_weights:
        files["firmware/kiln_fixed.h"] = "#define KILN_AP_WEIGHTS 1\n" + files[
            "firmware/kiln_fixed.h"]
    ap = build_csim(files, model_name(fpga.module), n_out, str(cache), ap_types=AP_TYPES)
    native, vendor = fpga.csim.run(raws), ap.run(raws)
    want = np.stack([np.concatenate([interpret_all(fpga.module, *xs)[v].reshape(-1)
                                     for v in fpga.lowered.output_values]) for xs in batch])
    np.testing.assert_array_equal(vendor, native, err_msg=f"ap_int vs native, seed {seed}")
    np.testing.assert_array_equal(native, want, err_msg=f"native vs interpreter, seed {seed}")


def _model_case(name: str, io: str, cache: Path) -> None:
    fpga = _fpga(get_model(name), example_inputs(name), cache, io=io)
    _check_against_ap(fpga, cache, ap_weights=(name, io) == ("digits_cnn", "stream"))


@pytest.mark.parametrize(("name", "io"), FAST)
def test_ap_types_build_matches_native(name: str, io: str, cache: Path) -> None:
    _model_case(name, io, cache)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "io"), SLOW)
def test_ap_types_build_matches_native_all_models(name: str, io: str, cache: Path) -> None:
    _model_case(name, io, cache)


def test_kiln_fixed_conversions_under_ap_types(tmp_path: Path) -> None:
    """requantize (every rounding/saturation mode) from int64 raws, and divide_round."""
    (tmp_path / "kiln_fixed.h").write_text(runtime_header("kiln_fixed.h"))
    (tmp_path / "t.cpp").write_text(_program(ONE_PER_MODE))
    subprocess.run(["g++", "-O1", "-std=c++14", "-w", "-DKILN_USE_AP_TYPES", "-isystem",
                    AP_TYPES, "-o", "t", "t.cpp"], cwd=tmp_path, check=True)
    rng = np.random.default_rng(_seed())
    feed, want = [], []
    for src, dst in ONE_PER_MODE:
        raw = edge_raws(src, dst, rng, SAMPLES)
        feed.append(raw.astype(str))
        want.append(fixed.requantize_fixed(raw, src, dst))
    for _ in range(7):  # divide_round: one block per rounding mode (checked in test_hls_fixed)
        feed.append(np.array(["7 2"] * SAMPLES))
    run = subprocess.run([str(tmp_path / "t")], input="\n".join(np.concatenate(feed)) + "\n",
                         capture_output=True, text=True, check=True)
    n = len(ONE_PER_MODE)
    got = np.array(run.stdout.split(), dtype=np.int64)[:n * SAMPLES].reshape(n, SAMPLES)
    bad = [f"{s}->{d}" for (s, d), g, w in zip(ONE_PER_MODE, got, want)
           if not np.array_equal(g, w)]
    assert not bad, f"kiln_fixed.h under KILN_USE_AP_TYPES differs from kiln.ir.fixed: {bad}"


def test_every_array_has_its_tensor_width(cache: Path) -> None:
    """No int64_t array is left in the digits CNN's body; each tensor's typedef is its width."""
    fpga = _fpga(get_model("digits_cnn"), example_inputs("digits_cnn"), cache)
    name = model_name(fpga.module)
    source, header = fpga.files[f"firmware/{name}.cpp"], fpga.files[f"firmware/{name}.h"]
    assert not re.search(r"\bint64_t\b", source), "an int64_t array left in the body"
    typedefs = {n: w for w, n in re.findall(r"typedef kiln::raw_t<(\d+), \w+> (\w+);", header)}
    for layer in fpga.lowered.layers:
        for t in (*layer.inputs, layer.output):
            assert typedefs[f"{t.name}_t"] == str(t.dtype.width), t
    assert "kiln::raw_t<32, true> layer2_conv1_acc_p_t" in source  # 16-bit x * 16-bit w
    assert "-DKILN_USE_AP_TYPES" in fpga.files["run_hls.tcl"]
    assert "csim-ap" in fpga.files["Makefile"] and "ap_int<W>" in fpga.files["README.md"]


class _Pools(torch.nn.Module):
    """conv -> padded, ceil-mode max pool -> padded average pools (with and without the pads
    in the divisor) -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.max = torch.nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.avg = torch.nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.avg_x = torch.nn.AvgPool2d((2, 3), stride=(1, 2), padding=(1, 1),
                                        count_include_pad=False)
        self.fc = torch.nn.Linear(4 * 5 * 2, 5)  # 11x9 -> 6x5 -> 4x3 -> 5x2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.max(self.conv(x))  # no relu: a padded tap read as 0 would win somewhere
        return self.fc(torch.flatten(self.avg_x(self.avg(y)), 1))


class _Pools1d(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(3, 4, 3)
        self.max = torch.nn.MaxPool1d(2, stride=2, padding=1, ceil_mode=True)
        self.avg = torch.nn.AvgPool1d(3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avg(self.max(self.conv(x))), 1)


POOL_NETS = {"pools2d": (_Pools, (1, 2, 11, 9)), "pools1d": (_Pools1d, (1, 3, 14))}


@pytest.mark.parametrize("io", ["parallel", "stream"])
@pytest.mark.parametrize("net", sorted(POOL_NETS))
def test_padded_ceil_mode_pools(net: str, io: str, cache: Path) -> None:
    """Pools the HLS templates used to refuse: C-simulation == interpreter, bit for bit (the
    stream 2-D case also through the ap_int build)."""
    torch.manual_seed(0)
    cls, shape = POOL_NETS[net]
    x = np.random.default_rng(_seed()).standard_normal(shape).astype(np.float32)
    fpga = _fpga(cls().eval(), (x,), cache, io=io, precision=16)
    pools = [la for la in fpga.lowered.layers if "pool" in la.kind]
    assert len(pools) >= 2 and any(any(getattr(la.op.kind, "padding", ())) for la in pools)
    if net == "pools2d" and io == "stream":
        _check_against_ap(fpga, cache)
        return
    seed = _seed()
    batch = [sample_inputs(fpga.module.main, seed + k) for k in range(3)]
    got = fpga.csim.run(np.concatenate([fpga.raws_in(xs) for xs in batch]))
    for row, xs in zip(got, batch):
        values = interpret_all(fpga.module, *xs)
        want = np.concatenate([values[v].reshape(-1) for v in fpga.lowered.output_values])
        np.testing.assert_array_equal(row, want, err_msg=f"seed {seed}")
