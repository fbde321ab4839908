"""The README's example code and shell commands work as shown."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent


def test_python_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    (code,) = re.findall(r"```python\n(.*?)```", README, re.S)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "kiln.module" in out and "max_rel_error_vs_source" in out


def test_shell_example_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```sh\n(.*?)```", README, re.S)
    commands = [line.split("#")[0].strip() for line in blocks[1].splitlines()]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for command in filter(None, commands):
        command = command.replace("/tmp/", f"{tmp_path}/")
        done = subprocess.run(shlex.split(command), capture_output=True, text=True, env=env,
                              timeout=120, check=False)
        assert done.returncode == 0, f"{command}\n{done.stderr}"
