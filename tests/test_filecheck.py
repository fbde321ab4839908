"""The filecheck runner, plus `kiln-opt`'s own command-line behaviour.

Every `tests/filecheck/**/*.kir` with `// RUN:` lines is a test case per RUN line: `%s` becomes
the file's path and the line runs in bash (`set -o pipefail`) with the venv's `bin` first on
PATH, so `kiln-opt` and `filecheck` (the pip package, LLVM FileCheck syntax) are this checkout's.
`not CMD` succeeds when CMD fails, for diagnostic tests (`not kiln-opt ... 2>&1 | filecheck`).
A line ending in `\\` continues on the next RUN line.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.tools.kiln_opt import main

ROOT = Path(__file__).parent / "filecheck"
BIN = Path(sys.executable).parent
PRELUDE = "set -o pipefail\nnot() { if \"$@\"; then return 1; else return 0; fi; }\n"


def run_lines(path: Path) -> list[str]:
    """The commands of a file's `// RUN:` lines, continuation lines joined."""
    commands: list[str] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text.startswith("// RUN:"):
            continue
        part = text.removeprefix("// RUN:").strip()
        if part.endswith("\\"):
            pending += part[:-1] + " "
            continue
        commands.append(pending + part)
        pending = ""
    return commands


CASES = [pytest.param(path, command, id=f"{path.relative_to(ROOT)}:{i + 1}")
         for path in sorted(ROOT.rglob("*.kir")) for i, command in enumerate(run_lines(path))]


@pytest.mark.parametrize(("path", "command"), CASES)
def test_filecheck(path: Path, command: str) -> None:
    for tool in ("kiln-opt", "filecheck"):
        if not (BIN / tool).exists():
            pytest.fail(f"{BIN / tool} is missing: run `pip install -e .[dev]` in the venv")
    script = PRELUDE + command.replace("%s", shlex.quote(str(path)))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                          cwd=ROOT.parent.parent, timeout=120, check=False)
    assert done.returncode == 0, (f"RUN: {command}\nexit {done.returncode}\n"
                                  f"--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}")


# -- kiln-opt ------------------------------------------------------------------------------------
GOOD = """kiln.module @m {
  kiln.func @forward(%x: tensor<2xf32>) -> (tensor<2xf32>) {
    %0 = kiln.identity(%x) : tensor<2xf32>
    kiln.return %0
  }
}
"""


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    path = tmp_path / "good.kir"
    path.write_text(GOOD)
    return path


def test_kiln_opt_prints_the_result(good_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(good_file), "-p", "canonicalize", "--print-ir-after-all"]) == 0
    out, err = capsys.readouterr()
    assert "kiln.identity" not in out and "kiln.return %x" in out
    assert err.startswith("// -----// IR Dump After canonicalize //----- //\n")


def test_kiln_opt_writes_kir_and_npz(good_file: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.kir"
    assert main([str(good_file), "-p", "default", "-o", str(out)]) == 0
    assert capsys.readouterr().out == ""
    assert "kiln.identity" not in out.read_text() and out.with_suffix(".npz").exists()


@pytest.mark.parametrize(("args", "text", "message"), [
    (["-p", "cse,dcx"], GOOD, "error: unknown pass 'dcx'\n  hint: did you mean 'dce'?"),
    (["-p", "dce{x=1}"], GOOD, "has no option 'x'"),
    (["-p", "dce"], GOOD.replace("kiln.identity", "kiln.identiti"), "kiln.identiti"),
    (["-p", "dce"], GOOD.replace("tensor<2xf32>\n    kiln", "tensor<3xf32>\n    kiln"),
     "function @forward declares"),
])
def test_kiln_opt_errors_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                args: list[str], text: str, message: str) -> None:
    path = tmp_path / "in.kir"
    path.write_text(text)
    assert main([str(path), *args]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("kiln-opt: ") and message in err


def test_kiln_opt_missing_file_and_bad_usage(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope.kir")]) == 1
    assert "cannot read IR file" in capsys.readouterr().err
    for argv in ([], ["x.kir", "--bogus"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2


def test_kiln_opt_reads_stdin_and_lists_passes_without_torch(good_file: Path) -> None:
    code = ("import sys; from kiln.tools.kiln_opt import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'kiln-opt imported torch'; sys.exit(rc)")
    listed = subprocess.run([sys.executable, "-c", code, "--list-passes"], capture_output=True,
                            text=True, timeout=120, check=True)
    assert "fold-constants: " in listed.stdout and "max-elements: int = 1048576" in listed.stdout
    assert "cleanup: canonicalize,fold-constants,cse,dce" in listed.stdout
    assert "default: canonicalize,fold-batchnorm," in listed.stdout
    piped = subprocess.run([sys.executable, "-c", code, "-", "-p", "canonicalize"],
                           input=GOOD, capture_output=True, text=True, timeout=120, check=True)
    assert "kiln.return %x" in piped.stdout
