"""Bad input to `kiln`: exit 1 with a message that says what and what to do, exit 2 for bad
usage, and never a Python traceback — in-process and through the installed entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kiln.tools.cli import main

KILN = Path(sys.executable).parent / "kiln"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reference-target artifact (no toolchain: the cheapest folder to run)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("cli_errors") / "art"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["compile", "digits_mlp", "-t", "reference", "-o", str(out), "-q"]) == 0
    return out


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """(exit code, stderr); argparse's SystemExit becomes its code."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_missing_and_malformed_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "o")
    code, err = run_main(["compile", str(tmp_path / "none.onnx"), "-t", "cpu", "-o", out], capsys)
    assert code == 1 and "no such model file" in err
    (tmp_path / "bad.kir").write_text("kiln.module @m {\n  kiln.func @f( {\n")
    code, err = run_main(["compile", str(tmp_path / "bad.kir"), "-t", "cpu", "-o", out], capsys)
    assert code == 1 and "bad.kir:2" in err
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage, not a protobuf")
    code, err = run_main(["explain", str(tmp_path / "bad.onnx"), "-t", "cpu"], capsys)
    assert code == 1 and "bad.onnx" in err
    code, err = run_main(["compile", "no_such_model", "-t", "cpu", "-o", out], capsys)
    assert code == 1 and "cannot tell what model" in err and "jet_mlp" in err
    code, err = run_main(["explain", "no_such_pkg.net:make", "--input-shape", "1x4", "-t", "cpu"],
                         capsys)
    assert code == 1 and "cannot load 'no_such_pkg.net:make'" in err
    code, err = run_main(["compile", "jet_mlp", "-t", "cpu", "--option", "nope=1", "-o", out],
                         capsys)
    assert code == 1 and "no option nope" in err and "hint" in err


def test_unknown_target_lists_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    """Target names are checked after --plugin modules load (a plugin may register one)."""
    code, err = run_main(["compile", "jet_mlp", "-t", "tpu", "-o", "x"], capsys)
    assert code == 1 and "unknown target 'tpu'" in err and "cpu, fpga" in err


@pytest.mark.parametrize("argv", [
    ["compile", "jet_mlp", "-t", "cpu"],
    ["compile", "jet_mlp", "-t", "cpu", "--input-shape", "1xA", "-o", "x"],
    ["compile", "jet_mlp", "-t", "cpu", "--prune", "1.5", "-o", "x"],
    ["bench", "x", "--runs", "0"],
    ["frobnicate"],
])
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(argv, capsys)
    assert code == 2 and "usage:" in err


def test_bad_run_inputs(artifact: Path, tmp_path: Path, rng: np.random.Generator,
                        capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "wide.npy", rng.standard_normal((1, 1, 8, 9)).astype(np.float32))
    np.save(tmp_path / "ints.npy", rng.integers(0, 9, (1, 1, 8, 8)))
    (tmp_path / "junk.npy").write_text("not numpy")
    cases = [("wide.npy", "has shape [1, 1, 8, 9], the model expects [1, 1, 8, 8]"),
             ("ints.npy", "has dtype int64, the model expects float32"),
             ("junk.npy", "cannot read"), ("missing.npy", "no such input file")]
    for name, message in cases:
        code, err = run_main(["run", str(artifact), "--input", str(tmp_path / name)], capsys)
        assert code == 1 and message in err, (name, err)
    code, err = run_main(["run", str(artifact), "-i", str(tmp_path / "wide.npy"), "-i",
                          str(tmp_path / "wide.npy")], capsys)
    assert code == 1 and "takes 1 input(s)" in err
    np.save(tmp_path / "x.npy", rng.standard_normal((1, 1, 8, 8)).astype(np.float32))
    code, err = run_main(["run", str(artifact), "-i", str(tmp_path / "x.npy"), "-o",
                          str(tmp_path / "no" / "dir" / "y.npy")], capsys)
    assert code == 1 and "No such file or directory" in err
    code, err = run_main(["bench", str(artifact), "--batch", "2", "--runs", "1"], capsys)
    assert code == 1 and "does not run batch 2" in err and "--input-shape 2x1x8x8" in err
    code, err = run_main(["run", str(tmp_path / "nothing")], capsys)
    assert code == 1 and "no artifact folder" in err
    code, err = run_main(["report", str(tmp_path)], capsys)
    assert code == 1 and "not a kiln artifact folder" in err and "kiln compile" in err


def test_float64_input_is_converted(artifact: Path, tmp_path: Path, rng: np.random.Generator,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    import kiln

    x = rng.standard_normal((1, 1, 8, 8))
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(artifact), "-i", str(tmp_path / "x.npy"), "--json"]) == 0
    got = np.asarray(json.loads(capsys.readouterr().out)["outputs"][0]["values"])
    want = kiln.interpret(kiln.load(artifact / "model.kir"), x.astype(np.float32))[0]
    np.testing.assert_array_equal(got.astype(np.float32), want)  # same interpreter: exact


def _kiln(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(KILN), *args], capture_output=True, text=True, timeout=300,
                          env=env, check=False)


@pytest.mark.skipif(not KILN.exists(), reason="the kiln entry point is not installed")
def test_installed_entry_point(artifact: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    import kiln

    x = rng.standard_normal((1, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    done = _kiln("run", str(artifact), "--input", str(tmp_path / "x.npy"), "--json")
    assert done.returncode == 0, done.stderr
    got = np.asarray(json.loads(done.stdout)["outputs"][0]["values"], np.float32)
    want = kiln.interpret(kiln.load(artifact / "model.kir"), x)[0]
    np.testing.assert_array_equal(got, want)
    bad = _kiln("run", str(artifact), "--input", str(tmp_path / "missing.npy"))
    assert bad.returncode == 1 and "no such input file" in bad.stderr
    assert "Traceback" not in bad.stderr and bad.stdout == ""
    usage = _kiln("compile", "--help")
    assert usage.returncode == 0 and "example" in usage.stdout
