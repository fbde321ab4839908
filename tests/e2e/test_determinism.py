"""The same model compiled twice gives byte-identical artifacts, on every target.

Two fresh processes (different `PYTHONHASHSEED`, so no set or dict order may leak into the
output; separate caches, so every library is built twice) compile, `save` and `export` the same
models; the trees must be equal byte for byte: generated sources, weights blobs, `model.kir` +
`.npz`, the saved inputs, the exported projects, and the built binaries in the caches (gcc and
g++ are deterministic for the same sources and flags: `libmodel.so`, the runtime objects, the
C-simulation). Allowed to differ, and only these: the reports (`report.json`, `report.html`:
timings), `artifact.json` only in its timing and cache-path fields, build logs (their command
lines name the cache folder) and the cache's own bookkeeping (`MANIFEST` lists the logs'
checksums, `COMPLETE` the manifest's). The zoo-wide in-process check is `slow`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kiln
from kiln.models import MODELS, example_inputs, get_model

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("g++") is None,
                                reason="needs gcc and g++")
REPORTS = {"report.json", "report.html"}
BOOKKEEPING = {"MANIFEST", "COMPLETE"}
BUILDS: list[tuple[str, str, dict[str, str]]] = [
    ("cpu", "lenet5", {}), ("fpga", "digits_mlp", {}), ("gpu", "jet_mlp", {})]
"""A conv net whose weights go to weights.bin, an HLS project and Triton kernels; int8 and the
rest of the zoo are in the slow test."""
SCRIPT = """
import sys
from pathlib import Path
import kiln
from kiln.models import example_inputs, get_model
out, cache = Path(sys.argv[1]), sys.argv[2]
for target, name, options in {builds!r}:
    tag = "-".join([target, name, *map(str, options.values())])
    if target != "gpu" and cache != "default":
        options = dict(options, cache_dir=cache)
    art = kiln.compile(get_model(name), example_inputs(name), target=target, **options)
    art.save(out / "save" / tag)
    art.export(out / "export" / tag)
"""


def _volatile_free(data: Any) -> Any:
    """`artifact.json` without its timings and cache paths."""
    if isinstance(data, dict):
        return {k: _volatile_free(v) for k, v in data.items()
                if not (k.endswith("_seconds") or k in ("cache_dir", "library"))}
    if isinstance(data, list):
        return [_volatile_free(v) for v in data]
    return data


def tree(root: Path) -> dict[str, bytes]:
    """Relative path → bytes of every file that must be deterministic under `root`."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if path.name in REPORTS | BOOKKEEPING or path.suffix in (".log", ".lock"):
            continue
        data = path.read_bytes()
        if path.name == "artifact.json":
            data = json.dumps(_volatile_free(json.loads(data)), sort_keys=True).encode()
        out[rel] = data
    return out


def _differences(a: dict[str, bytes], b: dict[str, bytes]) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _folders(root: Path, seed: str) -> dict[str, Path]:
    names = ("home", "tmp", "cwd", "out")
    folders = {name: root / f"{name}{seed}" for name in names}
    for path in folders.values():
        path.mkdir()
    return folders


def _listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_two_processes_write_identical_artifacts_and_nothing_else(tmp_path: Path) -> None:
    """Also the no-stray-files check of compile/save/export (see test_resource_limits.py):
    each process runs with fresh HOME, TMPDIR and working folder; the first names its cache,
    the second uses the default one (`~/.cache/kiln`, here inside its HOME). Afterwards the
    working folders and TMPDIRs are empty (temporaries cleaned up), the first HOME is empty
    and the second holds only the cache (TMPDIR may keep torch's empty inductor folder)."""
    script = SCRIPT.format(builds=BUILDS)
    runs = []
    for seed in ("1", "2"):
        where = _folders(tmp_path, seed)
        env = dict(os.environ, PYTHONHASHSEED=seed, HOME=str(where["home"]),
                   TMPDIR=str(where["tmp"]))
        cache = str(tmp_path / "cache1") if seed == "1" else "default"
        proc = subprocess.Popen([sys.executable, "-c", script, str(where["out"]), cache],
                                env=env, cwd=where["cwd"], stderr=subprocess.PIPE, text=True)
        runs.append((where, proc))
    for _, proc in runs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    (one, _), (two, _) = runs
    for where in (one, two):
        assert _listing(where["cwd"]) == []
        # torch.export makes an empty `torchinductor_<user>` folder in TMPDIR (torch's own
        # cache location, made on import); kiln's temporaries must all be gone
        assert [p for p in _listing(where["tmp"])
                if "/" in p or not p.startswith("torchinductor_")] == []
    assert _listing(one["home"]) == []
    assert {p.split("/")[0] for p in _listing(two["home"])} == {".cache"}
    assert {"/".join(p.split("/")[:2]) for p in _listing(two["home"])} == {".cache",
                                                                          ".cache/kiln"}
    first = {**tree(one["out"]), **{f"cache/{k}": v for k, v in tree(tmp_path / "cache1").items()}}
    second = {**tree(two["out"]),
              **{f"cache/{k}": v for k, v in tree(two["home"] / ".cache" / "kiln").items()}}
    assert not _differences(first, second)
    names = {Path(k).name for k in first}
    for built in ("libmodel.so", "csim", "kiln_gemm.o", "model.kir", "model.npz", "weights.bin",
                  "params.npz", "kernels.py", "tb_digitsmlp.cpp", "model_fixed.npz"):
        assert built in names, built  # the comparison covered what it claims to


def test_the_comparison_sees_a_changed_byte(tmp_path: Path) -> None:
    """`tree` compares what it should: one flipped byte in a blob is a difference."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "weights.bin").write_bytes(b"\x00\x01")
    (tmp_path / "a" / "report.json").write_text("{}")
    before = tree(tmp_path / "a")
    (tmp_path / "a" / "weights.bin").write_bytes(b"\x00\x03")
    (tmp_path / "a" / "report.json").write_text('{"compile_seconds": 2}')
    assert _differences(before, tree(tmp_path / "a")) == ["weights.bin"]


def _zoo() -> list[Any]:
    out = []
    for name in MODELS:
        out += [pytest.param("cpu", name, {}, id=f"cpu-{name}"),
                pytest.param("gpu", name, {}, id=f"gpu-{name}")]
        if name != "transformer_layer":
            out.append(pytest.param("cpu", name, {"quantize": "int8"}, id=f"int8-{name}"))
        if name not in ("transformer_layer", "mobilenet_v2ish"):
            out.append(pytest.param("fpga", name, {}, id=f"fpga-{name}"))
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("target", "name", "options"), _zoo())
def test_zoo_compiles_identically_twice(target: str, name: str, options: dict[str, Any],
                                        tmp_path: Path, rng: np.random.Generator) -> None:
    if target != "gpu":
        options = dict(options, cache_dir=str(tmp_path / "cache"))
    arts = [kiln.compile(get_model(name), example_inputs(name), target=target, **options)
            for _ in range(2)]
    assert arts[0].files == arts[1].files
    for i, art in enumerate(arts):
        art.save(tmp_path / f"save{i}")
        art.export(tmp_path / f"export{i}")
    for kind in ("save", "export"):
        assert not _differences(tree(tmp_path / f"{kind}0"), tree(tmp_path / f"{kind}1"))
    x = [t.numpy() for t in example_inputs(name, seed=int(rng.integers(1, 2**31)))]
    a, b = arts[0](*x), arts[1](*x)
    for got, want in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        np.testing.assert_array_equal(got, want)
