"""The bundled zoo under AddressSanitizer + UBSan (non-recoverable) and valgrind.

- cpu, float32 and int8: `sanitize=True` builds the example program with
  `-fsanitize=address,undefined -fno-sanitize-recover=all` and runs it per call; a report is a
  `KilnError`, so a finding fails the test. Outputs are compared with `kiln.interpret` on the
  same IR (float32: relative error <= 1e-5; int8: bit-exact, except jet_mlp's float softmax
  tail, <= 1e-6).
- fpga: `sanitize=True` builds the HLS C-simulation with the same flags; its output raws must
  equal the interpreter's on the fixed-point IR exactly.
- valgrind (`--error-exitcode=1`, leaks counted as errors): the exported example program of
  jet_mlp and digits_cnn (built for AVX2: valgrind 3.19 decodes no AVX-512) and digits_cnn's
  C-simulation.

The default run sanitizes transformer_layer (float32), digits_cnn (int8 and fpga) and
conv1d_net (fpga), and runs digits_cnn's C-simulation under valgrind
(`test_cpu_target.py` already sanitizes the float32 exports of transformer_layer and
mobilenet_v2ish); `pytest -m slow` covers the rest of the zoo and the valgrind runs of the
exported programs. Every bundled model is in each zoo (int8 transformer_layer through the
int8 qmatmul/transpose kernels; mobilenet_v2ish and transformer_layer on the fpga through the
hardswish/mul and fixed-point layer-norm/attention layers).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kiln
from kiln.ir.interpret import interpret, interpret_all
from kiln.models import MODELS, example_inputs, get_model
from kiln.targets.fpga import FpgaArtifact

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("g++") is None,
                                reason="needs gcc and g++")
INT8_MODELS = list(MODELS)
FPGA_MODELS = list(MODELS)
VALGRIND = ["valgrind", "--error-exitcode=1", "--leak-check=full", "--errors-for-leak-kinds=all",
            "-q"]
AVX2 = "-std=c99 -O3 -march=x86-64-v3 -ffp-contract=fast -fno-math-errno -g"


def zoo(names: list[str], default: set[str]) -> list[Any]:
    """`names` as parameters, those outside `default` marked slow."""
    return [pytest.param(n, marks=() if n in default else pytest.mark.slow) for n in names]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kiln-sanitize-cache")


def _inputs(name: str, rng: np.random.Generator) -> list[np.ndarray]:
    seed = int(rng.integers(1, 2**31))
    return [x.numpy() for x in example_inputs(name, seed=seed)]


def _outputs(art: kiln.CompiledModel, xs: list[np.ndarray]) -> list[np.ndarray]:
    got = art(*xs)
    return list(got) if isinstance(got, tuple) else [got]


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))


@pytest.mark.parametrize("name", zoo(list(MODELS), {"transformer_layer"}))
def test_cpu_fp32_sanitized(name: str, cache: Path, rng: np.random.Generator) -> None:
    art = kiln.compile(get_model(name), example_inputs(name), target="cpu", cache_dir=cache,
                       sanitize=True)
    assert art.artifact.options.sanitize  # type: ignore[attr-defined]
    xs = _inputs(name, rng)
    for got, want in zip(_outputs(art, xs), interpret(art.ir, *xs), strict=True):
        assert _rel(got, want) <= 1e-5


@pytest.mark.parametrize("name", zoo(INT8_MODELS, {"digits_cnn"}))
def test_cpu_int8_sanitized(name: str, cache: Path, rng: np.random.Generator) -> None:
    art = kiln.compile(get_model(name), example_inputs(name), target="cpu", cache_dir=cache,
                       sanitize=True, quantize="int8")
    assert any(op.name == "kiln.quantize" for op in art.ir.walk())
    xs = _inputs(name, rng)
    for got, want in zip(_outputs(art, xs), interpret(art.ir, *xs), strict=True):
        if name == "jet_mlp":  # a float softmax follows the last dequantize
            assert _rel(got, want) <= 1e-6
        else:
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("io", ["parallel", pytest.param("stream", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", zoo(FPGA_MODELS, {"digits_cnn", "conv1d_net"}))
def test_fpga_csim_sanitized(name: str, io: str, cache: Path, rng: np.random.Generator) -> None:
    art = kiln.compile(get_model(name), example_inputs(name), target="fpga", cache_dir=cache,
                       sanitize=True, io=io, precision=16)
    fpga = art.artifact
    assert isinstance(fpga, FpgaArtifact) and fpga.csim.sanitized
    assert "-fsanitize=address,undefined" in fpga.csim.log.read_text()
    xs = _inputs(name, rng)
    values = interpret_all(fpga.module, *xs)
    want = np.concatenate([values[v].reshape(-1) for v in fpga.lowered.output_values])
    np.testing.assert_array_equal(fpga.run_raw(*xs)[0], want)
    for got, ref in zip(_outputs(art, xs), interpret(fpga.module, *xs), strict=True):
        np.testing.assert_array_equal(got, ref)


UB_TESTBENCH = """#include <cstdio>
#include "ub.h"
int main(int argc, char** argv) {
    if (argc < 3) return 2;
    long long v = argc - 1000;  /* negative, known only at run time */
    std::FILE* out = std::fopen(argv[2], "w");
    std::fprintf(out, "%lld\\n", kiln_ub(v));
    std::fclose(out);
    return 0;
}
"""


@pytest.mark.parametrize("sanitize", [True, False])
def test_sanitized_csim_reports_a_finding(sanitize: bool, cache: Path) -> None:
    """The check can fail: a left shift of a negative value (the undefined behaviour UBSan
    found in kiln_fixed.h's rounding) aborts a sanitized C-simulation with a `KilnError`; the
    same program unsanitized runs."""
    from kiln.targets.fpga_csim import build_csim

    files = {"tb_ub.cpp": UB_TESTBENCH,
             "firmware/ub.h": "long long kiln_ub(long long v);\n",
             "firmware/ub.cpp": "long long kiln_ub(long long v) { return v << 3; }\n"}
    csim = build_csim(files, "ub", 1, str(cache), sanitize=sanitize)
    if sanitize:
        with pytest.raises(kiln.KilnError, match="reported a finding") as info:
            csim.run(np.array([[5]]))
        assert "left shift of negative value" in str(info.value)
    else:
        assert csim.run(np.array([[5]])).shape == (1, 1)


def _valgrind(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*VALGRIND, *cmd], cwd=cwd, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


needs_valgrind = pytest.mark.skipif(shutil.which("valgrind") is None or shutil.which("make")
                                    is None, reason="needs valgrind and make")


@needs_valgrind
@pytest.mark.slow
@pytest.mark.parametrize("name", ["jet_mlp", "digits_cnn"])
def test_exported_example_under_valgrind(name: str, cache: Path, tmp_path: Path,
                                         rng: np.random.Generator) -> None:
    art = kiln.compile(get_model(name), example_inputs(name), target="cpu", cache_dir=cache,
                       march="x86-64-v3")
    out = art.export(tmp_path / name)
    subprocess.run(["make", "-s", "-B", "example", f"CFLAGS={AVX2}"], cwd=out, check=True,
                   capture_output=True, timeout=600)
    xs = _inputs(name, rng)
    (out / "input.bin").write_bytes(b"".join(x.astype("<f4").tobytes() for x in xs))
    result = _valgrind(["./example", "input.bin"], out)
    got = np.array(result.stdout.split(), dtype=np.float32)
    want = np.concatenate([o.ravel() for o in _outputs(art, xs)])
    assert _rel(got, want) <= 1e-5


@needs_valgrind
def test_csim_under_valgrind(cache: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    art = kiln.compile(get_model("digits_cnn"), example_inputs("digits_cnn"), target="fpga",
                       cache_dir=cache)
    fpga = art.artifact
    assert isinstance(fpga, FpgaArtifact)
    xs = _inputs("digits_cnn", rng)
    np.savetxt(tmp_path / "in.dat", fpga.raws_in(xs), fmt="%d")
    _valgrind([str(fpga.csim.binary), "in.dat", "out.dat"], tmp_path)
    got = np.loadtxt(tmp_path / "out.dat", dtype=np.int64, ndmin=2)
    np.testing.assert_array_equal(got, fpga.run_raw(*xs))
