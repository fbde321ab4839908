"""The io_stream HLS architecture: plan, C++ and estimator on small nets that exercise every
stream template (strided / padded / dilated / depthwise convolutions, max / avg / adaptive /
global pools, a residual join with a three-way fork, an output that is also read further on,
flatten into dense, a pass-through activation on the input, conv1d).

The C-simulations are checked bit for bit (tolerance 0) against kiln's interpreter on the
fixed-point IR with fresh random inputs; one of them is also built against Xilinx's own
`hls_stream.h` / `ap_fixed.h` from the hls4ml wheel, and one as a concurrent dataflow (a
thread per stage, FIFOs bounded at the depths the estimator sized: no deadlock, same bits).
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import kiln
from kiln.codegen.hls import HlsOptions, emit, lower
from kiln.codegen.hls.emit_stream_plan import plan_stream
from kiln.errors import KilnError
from kiln.ir.graph import Module
from kiln.ir.interpret import interpret_all, sample_inputs
from kiln.targets.cost.fpga_estimate import estimate
from kiln.targets.cost.fpga_parts import get_part
from kiln.targets.cost.fpga_resources import memory_cost
from kiln.targets.cost.fpga_stream import estimate_stream
from kiln.targets.fpga import FpgaArtifact, build_hls
from tests.unit.fpga_models import dense
from tests.unit.fpga_models import lower as to_fixed

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


class Zoo2d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4)
        self.pw = nn.Conv2d(4, 4, 1)
        self.mp = nn.MaxPool2d(2, stride=1)
        self.ap = nn.AvgPool2d(2, stride=1)
        self.aap = nn.AdaptiveAvgPool2d((2, 2))
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.relu(self.c1(x))  # 9x7 -> 5x4, read by dw, the add and the maximum
        z = self.pw(torch.relu(self.dw(y))) + y
        a = self.mp(torch.maximum(z, y))  # 4x3, an output and read by the avg pool
        b = self.aap(self.ap(a))  # 3x2 -> overlapping adaptive bins 2x2
        return self.fc(torch.flatten(b, 1)), a


class Zoo1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(3, 4, 5, padding=2)
        self.mp = nn.MaxPool1d(2)
        self.c2 = nn.Conv1d(4, 6, 3, stride=2)
        self.gap = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mp(torch.relu(self.c1(torch.relu(x))))  # relu on the input: its own stage
        z = self.c2(y)
        return self.fc(torch.flatten(self.gap(z - torch.relu(z)), 1))


NETS = {"zoo2d": (Zoo2d, (1, 2, 9, 7), 3), "zoo1d": (Zoo1d, (1, 3, 20), 1)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kiln-stream-cache")


@pytest.fixture(scope="module")
def fixed() -> dict[str, Module]:
    out = {}
    for name, (cls, shape, _) in NETS.items():
        torch.manual_seed(3)
        out[name] = to_fixed(cls(), shape)
    return out


@pytest.fixture(scope="module")
def built(fixed: dict[str, Module], cache: Path) -> dict[str, FpgaArtifact]:
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    return {name: build_hls(fixed[name], {"cache_dir": str(cache)},
                            HlsOptions(reuse_factor=NETS[name][2], io="stream", part="xczu9eg"))
            for name in NETS}


def _want(module: Module, art: FpgaArtifact, xs: list[np.ndarray]) -> np.ndarray:
    values = interpret_all(module, *xs)
    return np.concatenate([values[v].reshape(-1) for v in art.lowered.output_values])


@needs_gxx
@pytest.mark.parametrize("name", list(NETS))
def test_stream_csim_is_bit_exact(name: str, fixed: dict[str, Module],
                                  built: dict[str, FpgaArtifact]) -> None:
    art, module = built[name], fixed[name]
    samples = [sample_inputs(module.main, seed, scale=2.0) for seed in (11, 12, 13, 14)]
    raws = art.run_raw(*[np.concatenate(xs) for xs in zip(*samples)])
    for i, xs in enumerate(samples):
        np.testing.assert_array_equal(raws[i], _want(module, art, xs))


def test_plan_fuses_epilogues_and_forks(fixed: dict[str, Module]) -> None:
    plan = plan_stream(lower(fixed["zoo2d"], 1, "stream"))
    kinds = [s.kind for s in plan.stages]
    assert "map" not in kinds  # every requantize / relu fused into the stage before it
    assert kinds.count("fork") == 3  # y: three consumers (two forks), a: output + avg pool
    assert [e.name for e in plan.inputs] == ["in0"]
    assert [e.name for e in plan.outputs] == ["out0", "out1"]
    names = [e.name for e in plan.edges]
    assert len(names) == len(set(names))
    for stage in plan.stages:
        assert all(e.consumer == stage.name for e in stage.inputs)
        assert all(e.producer == stage.name for e in stage.outputs)
    dense_stage = next(s for s in plan.stages if s.kind == "dense")
    assert (dense_stage.in_layouts[0].beats, dense_stage.in_layouts[0].lanes) == (4, 4)
    one_d = [s.kind for s in plan_stream(lower(fixed["zoo1d"], 1, "stream")).stages]
    assert one_d[0] == "map" and "conv1d" in one_d and "avg_pool1d" in one_d


def test_emit_stream_is_pure_with_dataflow_pragmas(fixed: dict[str, Module]) -> None:
    first, second = (emit(fixed["zoo2d"], HlsOptions(io="stream", reuse_factor=2))
                     for _ in range(2))
    assert first == second
    top = next(v for k, v in first.items() if k.startswith("firmware/") and k.endswith(".cpp"))
    for text in ("#pragma HLS DATAFLOW", "#pragma HLS INTERFACE mode=axis port=in0",
                 "#pragma HLS STREAM variable=", "kiln::conv2d_stream<", "kiln::duplicate<",
                 "kiln::binary_stream<", "kiln::dense_stream<", "kiln::avg_pool2d_stream<",
                 "cyclic factor="):
        assert text in top, text
    assert "firmware/kiln_stream_layers.h" in first and "run_hls.tcl" in first


@needs_gxx
def test_fifo_depths_are_sized_for_the_residual(built: dict[str, FpgaArtifact]) -> None:
    art = built["zoo2d"]
    report = art.report()
    fifos = {row["name"]: row for row in report["fifos"]}
    into = [row["to"] for row in fifos.values()]
    bypass = [row for row in fifos.values() if into.count(row["to"]) == 2
              and row["from"].startswith("fork")]
    assert len(bypass) == 2 and all(row["depth"] > 2 for row in bypass)  # holds the lag
    chain = [row for row in fifos.values() if into.count(row["to"]) == 1]
    assert chain and all(row["depth"] == 2 for row in chain)
    top = next(v for k, v in art.files.items() if k.endswith(".cpp") and "firmware" in k)
    for row in fifos.values():
        assert f"#pragma HLS STREAM variable={row['name']} depth={row['depth']}" in top
    fifo_bram = sum(row["bram"] for row in report["fifos"])
    assert report["bram"] == sum(row["bram"] for row in report["layers"]) + fifo_bram
    assert report["ii"] == max(row["ii"] for row in report["layers"])
    assert report["io"] == "stream" and report["latency_cycles"] > report["ii"]


def run_threaded(art: FpgaArtifact, raws: np.ndarray, work: Path,
                 depth: int | None = None) -> subprocess.CompletedProcess[str]:
    """Build the project with one thread per stage and FIFOs bounded at their depths
    (`kiln_dataflow.h`; `depth` forces every FIFO to that depth) and run it on `raws`."""
    top = next(k for k in art.files if k.startswith("firmware/") and k.endswith(".cpp"))
    for rel, text in art.files.items():
        if rel == top and depth is not None:
            text = re.sub(r"KILN_STREAM_DEPTH\((\w+), \d+\)", rf"KILN_STREAM_DEPTH(\1, {depth})",
                          text)
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(text)
    tb = next(k for k in art.files if k.startswith("tb_"))
    subprocess.run(["g++", "-std=c++14", "-O0", "-w", "-DKILN_DATAFLOW_THREADS", "-pthread",
                    "-Ifirmware", "-o", "threaded", tb, top], cwd=work, check=True,
                   capture_output=True)
    np.savetxt(work / "in.dat", raws, fmt="%d")
    return subprocess.run(["./threaded", "in.dat", "out.dat"], cwd=work, capture_output=True,
                          text=True, timeout=120)


@needs_gxx
def test_sized_fifos_run_as_concurrent_dataflow(fixed: dict[str, Module],
                                                built: dict[str, FpgaArtifact],
                                                tmp_path: Path) -> None:
    """Every stage in its own thread, every FIFO blocking at its sized depth: the design runs
    to the same bits; with every FIFO at depth 2 the residual's bypass deadlocks (and the
    simulation says so instead of hanging)."""
    art, module = built["zoo2d"], fixed["zoo2d"]
    xs = sample_inputs(module.main, 31, scale=2.0)
    run = run_threaded(art, art.raws_in(xs), tmp_path / "sized")
    assert run.returncode == 0, run.stderr
    got = np.loadtxt(tmp_path / "sized" / "out.dat", dtype=np.int64, ndmin=2)[0]
    np.testing.assert_array_equal(got, _want(module, art, xs))
    shallow = run_threaded(art, art.raws_in(xs), tmp_path / "shallow", depth=2)
    assert shallow.returncode == 3 and "deadlock" in shallow.stderr


def test_single_dense_latency_matches_the_parallel_rule() -> None:
    """Dense + relu: the parallel dense layer's latency, one cycle for the fused relu, one to
    read the input beat and one to write the result; the same multipliers."""
    module = dense(16, 8)
    for rf in (1, 4, 16):
        par = estimate(module, reuse_factor=rf).report()
        stream = estimate_stream(module, reuse_factor=rf).report()
        assert [row["op"] for row in stream["layers"]] == ["dense"]  # relu fused
        assert stream["latency_cycles"] == par["layers"][0]["latency_cycles"] + 3
        assert stream["dsp"] == par["dsp"] == 16 * 8 // rf
        assert stream["ii"] == rf


def test_stream_ii_follows_the_slowest_layer(fixed: dict[str, Module]) -> None:
    rows = [estimate_stream(fixed["zoo2d"], reuse_factor=rf).report() for rf in (1, 4, 16)]
    for a, b in itertools.pairwise(rows):
        assert b["dsp"] < a["dsp"] and b["ii"] > a["ii"]
    for report in rows:
        conv = next(r for r in report["layers"] if r["op"] == "conv2d")
        assert conv["ii"] == max(63, 20 * conv["reuse_factor"])  # 9x7 in, 5x4 out pixels


def test_line_buffer_memory() -> None:
    """A 3x3 conv over 128 columns of 8 x 16-bit channels keeps two rows of 128 pixels."""
    torch.manual_seed(0)
    module = to_fixed(nn.Conv2d(8, 4, 3, padding=1), (1, 8, 5, 128))
    row = estimate_stream(module).report()["layers"][0]
    per_row = memory_cost(128, 8 * 16, get_part("xczu9eg"))
    assert per_row.bram > 0 and row["bram"] == 2 * per_row.bram


def test_layout_changing_reshape_is_refused() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(16, 16)
            self.conv = nn.Conv2d(4, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.fc(x).reshape(1, 4, 2, 2))

    module = to_fixed(Net(), (1, 16))
    lower(module, 1, "parallel")  # fine in io_parallel
    with pytest.raises(KilnError, match=r"io='stream'.*changes the pixel layout") as info:
        plan_stream(lower(module, 1, "stream"))
    assert "reshape" in str(info.value) and "io='parallel'" in str(info.value)


def test_unsupported_layer_is_refused_by_name(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Softmax(dim=-1), nn.Linear(8, 4))
    x = np.random.default_rng(5).standard_normal((1, 8)).astype(np.float32)
    with pytest.raises(KilnError, match=r"kiln\.softmax"):
        kiln.compile(model, x, target="fpga", io="stream", cache_dir=str(tmp_path),
                     activations="host")  # "lut" (default) puts the softmax on the FPGA


def test_bad_stream_options() -> None:
    with pytest.raises(KilnError, match="FPGA architecture"):
        HlsOptions(io="stream", flavor="asic").check()
    with pytest.raises(KilnError, match="io='axi'"):
        HlsOptions(io="axi").check()


@needs_gxx
def test_compiles_and_runs_with_xilinx_headers(fixed: dict[str, Module],
                                               built: dict[str, FpgaArtifact],
                                               tmp_path: Path) -> None:
    """The stream C++ against Xilinx's `hls_stream.h` and `ap_fixed.h` (hls4ml wheel): it
    compiles, and its C-simulation gives the same bits."""
    hls4ml = pytest.importorskip("hls4ml", reason="hls4ml (ships hls_stream.h) is missing")
    ap_types = Path(hls4ml.__file__).parent / "templates" / "vivado" / "ap_types"
    art = built["zoo2d"]
    for rel, text in art.files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    tb = next(k for k in art.files if k.startswith("tb_"))
    top = next(k for k in art.files if k.startswith("firmware/") and k.endswith(".cpp"))
    flags = ["g++", "-std=c++14", "-O0", "-w", "-DKILN_USE_AP_TYPES", f"-I{ap_types}",
             "-Ifirmware", "-include", "ap_fixed.h"]  # both vendor headers in one build
    build = subprocess.run([*flags, "-o", "csim_ap", tb, top], cwd=tmp_path,
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    xs = sample_inputs(fixed["zoo2d"].main, 21, scale=2.0)
    raws = art.raws_in(xs)
    np.savetxt(tmp_path / "in.dat", raws, fmt="%d")
    subprocess.run(["./csim_ap", "in.dat", "out.dat"], cwd=tmp_path, check=True,
                   capture_output=True)
    got = np.loadtxt(tmp_path / "out.dat", dtype=np.int64, ndmin=2)[0]
    np.testing.assert_array_equal(got, _want(fixed["zoo2d"], art, xs))
