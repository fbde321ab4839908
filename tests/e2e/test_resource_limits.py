"""Resource limits: a model too large for its FPGA part, the cpu arena limit, stray files.

- fpga `fit` option (`kiln/targets/fpga_fit.py`): a model far too large for the named part
  fails before any g++ run, naming the resource, by how much it is exceeded and what to do;
  `fit="strict"` refuses any configuration over the part and names a reuse factor that fits;
  `fit="off"` skips the check.
- cpu `max_arena_bytes`: `report()["arena_bytes"]` is the planned activation arena; a plan
  over the limit fails before gcc runs, a plan at the limit builds.
- stray files: nothing in kiln writes to a hard-coded /tmp (temporaries go through `tempfile`,
  i.e. TMPDIR); the end-to-end check that compile/save/export for cpu, fpga and gpu leave
  nothing outside their output and cache folders (fresh HOME, TMPDIR and working folder) is
  `test_determinism.py::test_two_processes_write_identical_artifacts_and_nothing_else`, which
  runs exactly those processes.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import kiln
from kiln.errors import KilnError
from kiln.ir.interpret import interpret
from kiln.models import example_inputs, get_model
from kiln.targets import fpga, fpga_csim
from kiln.targets.cost.fpga_estimate import estimate
from kiln.targets.fpga_fit import FAR_FACTOR
from kiln.targets.toolchains import gcc, gxx

KILN = Path(kiln.__file__).parent


def _wide_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
                               torch.nn.Linear(1024, 10)).eval()


@pytest.fixture
def no_compilers(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        pytest.fail("a compiler ran")

    for module, names in ((gxx, ("find", "build")), (gcc, ("compile_c", "compile_objects"))):
        for name in names:
            monkeypatch.setattr(module, name, refuse)


def test_far_too_large_for_the_part_fails_before_gxx(no_compilers: None, tmp_path: Path) -> None:
    with pytest.raises(KilnError) as info:
        kiln.compile(_wide_mlp(), torch.randn(1, 1024), target="fpga", part="xc7z020",
                     cache_dir=str(tmp_path))
    text = str(info.value)
    assert "far too large for xc7z020" in text and "largest reuse factor" in text
    factor = re.search(r"lut ([\d,]+) of 53,200 available \((\d+\.\d)x\)", text)
    assert factor is not None and float(factor.group(2)) > FAR_FACTOR
    assert "prune or narrow the precision" in text and "fit='off'" in text
    assert not any(tmp_path.iterdir())  # nothing was built or cached


def test_far_too_large_names_the_parts_that_would_hold_it(no_compilers: None,
                                                        tmp_path: Path) -> None:
    """resnet8 on the small Zynq: the error lists the known parts its cheapest design fits."""
    with pytest.raises(KilnError, match=r"far too large for xc7z020") as info:
        kiln.compile(get_model("resnet8"), example_inputs("resnet8"), target="fpga",
                     part="xc7z020", cache_dir=str(tmp_path))
    hint = info.value.diagnostics[0].hint or ""
    assert re.search(r"pick a larger part \((xc\w+)(, xc\w+)* would hold it\)", hint), hint


def test_strict_fit_names_a_reuse_factor_that_fits(no_compilers: None) -> None:
    with pytest.raises(KilnError) as info:
        kiln.compile(get_model("jet_mlp"), example_inputs("jet_mlp"), target="fpga",
                     fit="strict")
    text = str(info.value)
    assert "does not fit xczu9eg as requested" in text and "dsp 4,261 of 2,520" in text
    rf = int(re.search(r"reuse_factor=(\d+) fits", text).group(1))  # type: ignore[union-attr]
    fixed = fpga.to_fixed(kiln.run_passes(kiln.trace(get_model("jet_mlp"),
                                                     example_inputs("jet_mlp")), "fpga"),
                          {"example_inputs": example_inputs("jet_mlp")})
    assert estimate(fixed, reuse_factor=rf).fits
    assert not estimate(fixed, reuse_factor=max(rf // 2, 1)).fits


def test_fit_off_skips_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    built = []

    def fake_build(*args: object, **kwargs: object) -> None:
        built.append(1)
        raise KilnError("stop here")

    monkeypatch.setattr(fpga, "build_hls", fake_build)
    with pytest.raises(KilnError, match="stop here"):
        kiln.compile(_wide_mlp(), torch.randn(1, 1024), target="fpga", part="xc7z020",
                     fit="off")
    assert built == [1]
    with pytest.raises(KilnError, match=r"fit='sometimes' is not one of"):
        kiln.compile(get_model("jet_mlp"), example_inputs("jet_mlp"), target="fpga",
                     fit="sometimes")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cpu tests' shared cache (the runtime is built once per session and worker)."""
    return tmp_path_factory.getbasetemp() / "kiln-cpu-cache"


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_cpu_arena_is_reported_and_bounded(cache: Path, monkeypatch: pytest.MonkeyPatch,
                                           rng: np.random.Generator) -> None:
    model, inputs = get_model("digits_cnn"), example_inputs("digits_cnn")
    art = kiln.compile(model, inputs, target="cpu", cache_dir=cache)
    need = art.artifact.program.arena_bytes  # type: ignore[attr-defined]
    assert need > 0 and art.report()["arena_bytes"] == need
    at_limit = kiln.compile(model, inputs, target="cpu", cache_dir=cache, max_arena_bytes=need)
    x = example_inputs("digits_cnn", seed=int(rng.integers(1, 2**31)))[0].numpy()
    want = interpret(at_limit.ir, x)[0]
    assert np.abs(at_limit(x) - want).max() <= 1e-5 * np.abs(want).max()
    for name in ("compile_c", "compile_objects"):  # gcc is asked only for its vector width
        monkeypatch.setattr(gcc, name, lambda *a, **k: pytest.fail("gcc compiled something"))
    with pytest.raises(KilnError) as info:
        kiln.compile(model, inputs, target="cpu", cache_dir=cache, max_arena_bytes=need - 1)
    text = str(info.value)
    assert f"arena of {need:,} bytes, over max_arena_bytes={need - 1:,} (by 1 bytes" in text
    assert "raise max_arena_bytes" in text
    for bad in (-1, 1.5, "1k", True):
        with pytest.raises(KilnError, match="max_arena_bytes must be"):
            kiln.compile(model, inputs, target="cpu", max_arena_bytes=bad)


def test_library_writes_no_hard_coded_temp_paths() -> None:
    """Temporaries go through `tempfile` (TMPDIR) or the cache folder, never a literal /tmp;
    the csim and sanitized runs clean theirs (`TemporaryDirectory`)."""
    offenders = [str(p.relative_to(KILN)) for p in KILN.rglob("*.py")
                 if re.search(r"""["']/tmp\b""", p.read_text())]
    assert offenders == []
    assert "TemporaryDirectory" in Path(fpga_csim.__file__).read_text()
