"""The build cache under concurrency and damage (`kiln/targets/cache.py`).

- Processes racing: two fresh Python processes compile the same model into one empty cache
  at the same moment (released together by a file barrier), in two rounds: the shared cpu
  runtime and the model library built by both at once; then the library damaged by the test
  and repaired by both processes at once. Every process must succeed with correct outputs
  (relative error <= 1e-5 against `kiln.interpret`), and the cache must end with only valid
  entries (no temporary, invalid or failed folders left).
- Damage: a truncated or edited file, a missing file, a stale or foreign `COMPLETE` marker, a
  missing manifest; each is detected on lookup and rebuilt, also end to end (the fpga
  C-simulation binary).
- Failure: a failing build leaves its log under `failed/`, never an entry; an exception or a
  build without its outputs leaves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.errors import KilnError
from kiln.ir.interpret import interpret
from kiln.models import example_inputs, get_model
from kiln.targets.cache import MANIFEST, MARKER, BuildCache, cache_key, problem
from kiln.targets.fpga import FpgaArtifact
from kiln.targets.toolchains.gcc import CompileError

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("g++") is None,
                               reason="needs gcc and g++")
WORKER = """
import json, sys, time
from pathlib import Path
import numpy as np
import kiln
from kiln.ir.interpret import interpret
from kiln.models import example_inputs, get_model
sync, cache, me, seed = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
module = kiln.trace(get_model("jet_mlp"), example_inputs("jet_mlp"))
for step, name in enumerate(["jet_mlp", "jet_mlp"]):
    xs = [x.numpy() for x in example_inputs(name, seed=seed + step)]
    (sync / f"ready-{step}-{me}").touch()
    while not (sync / f"go-{step}").exists():
        time.sleep(0.002)
    art = kiln.compile(module, target="cpu", cache_dir=cache)
    got, want = art(*xs), interpret(art.ir, *xs)[0]
    err = float(np.abs(got - want).max() / np.abs(want).max())
    result = {"entry": str(art.artifact.entry), "err": err, "out": got.ravel().tolist()}
    (sync / f"result-{step}-{me}.json").write_text(json.dumps(result))
"""


def _wait_for(paths: list[Path], procs: list[subprocess.Popen[str]]) -> None:
    deadline = time.monotonic() + 600
    while not all(p.exists() for p in paths):
        failed = [p for p in procs if p.poll() not in (None, 0)]
        if failed:
            pytest.fail(f"a worker died: {failed[0].communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, "workers did not get ready"
        time.sleep(0.01)


def _damage(entry: Path) -> None:
    """Truncate the model library.

    The library is replaced by a truncated copy (a new inode), not truncated in place: the
    workers have it mapped, and truncating a mapped file kills the mapping process with
    SIGBUS whatever any cache does. What the cache owes is that the next load finds a good file.
    """
    lib = entry / "libmodel.so"
    (entry / "cut").write_bytes(lib.read_bytes()[: lib.stat().st_size // 2])
    os.replace(entry / "cut", lib)


def _leftovers(root: Path) -> list[Path]:
    """Anything in the cache that is not a finished entry or a lock file."""
    out = []
    for shard in root.iterdir():
        for item in shard.iterdir():
            if item.name.endswith(".lock"):
                continue
            if shard.name == "failed" or item.name.startswith(".") or \
                    problem(item, item.name) is not None:
                out.append(item)
    return out


@needs_gcc
def test_processes_racing_on_one_cache(tmp_path: Path) -> None:
    sync, cache = tmp_path / "sync", tmp_path / "cache"
    sync.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(sync), str(cache), str(me),
                               str(1000 + 7 * me)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, HOME=str(tmp_path / "home")))
             for me in range(2)]
    try:
        for step in range(2):
            _wait_for([sync / f"ready-{step}-{me}" for me in range(2)], procs)
            if step == 1:  # both processes find a damaged entry and rebuild it at once
                entry = Path(json.loads((sync / "result-0-0.json").read_text())["entry"])
                _damage(entry)
            (sync / f"go-{step}").touch()
            _wait_for([sync / f"result-{step}-{me}.json" for me in range(2)], procs)
            results = [json.loads((sync / f"result-{step}-{me}.json").read_text())
                       for me in range(2)]
            assert all(r["err"] <= 1e-5 for r in results)
            assert results[0]["entry"] == results[1]["entry"]
    finally:
        for proc in procs:
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-3000:]
    assert not _leftovers(cache)
    assert problem(Path(results[0]["entry"]), Path(results[0]["entry"]).name) is None


# -- the cache alone: damage and failures ------------------------------------------------------
def _build(work: Path) -> None:
    (work / "lib.so").write_bytes(bytes(range(256)) * 64)
    (work / "sub").mkdir()
    (work / "sub" / "model.c").write_text("int x;\n")


def _corrupt_truncate(entry: Path) -> None:
    (entry / "lib.so").write_bytes((entry / "lib.so").read_bytes()[:100])


def _corrupt_flip(entry: Path) -> None:
    data = bytearray((entry / "lib.so").read_bytes())
    data[5000] ^= 1
    (entry / "lib.so").write_bytes(bytes(data))


def _corrupt_missing(entry: Path) -> None:
    (entry / "sub" / "model.c").unlink()


def _corrupt_stale_marker(entry: Path) -> None:
    """A marker from another build of the same key (its manifest digest is not this one's)."""
    (entry / MARKER).write_text(entry.name + "\n" + "0" * 64 + "\n")


def _corrupt_foreign_marker(entry: Path) -> None:
    (entry / MARKER).write_text(cache_key("another entry") + "\n")


def _corrupt_no_manifest(entry: Path) -> None:
    (entry / MANIFEST).unlink()


def _corrupt_no_marker(entry: Path) -> None:
    (entry / MARKER).unlink()


@pytest.mark.parametrize("corrupt", [_corrupt_truncate, _corrupt_flip, _corrupt_missing,
                                     _corrupt_stale_marker, _corrupt_foreign_marker,
                                     _corrupt_no_manifest, _corrupt_no_marker])
def test_damaged_entry_is_detected_and_rebuilt(corrupt: object, tmp_path: Path) -> None:
    cache, key = BuildCache(tmp_path), cache_key("model")
    entry = cache.get(key, _build, ["lib.so"])
    assert cache.lookup(key) == entry and problem(entry, key) is None
    assert callable(corrupt)
    corrupt(entry)
    assert problem(entry, key) is not None
    assert cache.lookup(key) is None and not entry.exists()
    built: list[Path] = []

    def rebuild(work: Path) -> None:
        built.append(work)
        _build(work)

    again = cache.get(key, rebuild)
    assert len(built) == 1 and again == entry and problem(entry, key) is None
    assert (entry / "lib.so").read_bytes() == bytes(range(256)) * 64


def test_invalid_entry_in_the_way_is_replaced_on_store(tmp_path: Path) -> None:
    """A build racing with a damaged entry (lookup ran before the damage) still publishes."""
    cache, key = BuildCache(tmp_path), cache_key("model")
    entry = cache.get(key, _build)
    _corrupt_flip(entry)
    assert cache.store(key, _build) == entry and problem(entry, key) is None


def test_failing_builds_never_poison_the_cache(tmp_path: Path) -> None:
    cache, key = BuildCache(tmp_path), cache_key("model")

    def failing(work: Path) -> None:
        (work / "lib.so").write_bytes(b"half")
        (work / "build.log").write_text("error: kiln test\n")
        raise CompileError("gcc failed", work / "build.log")

    with pytest.raises(CompileError) as info:
        cache.store(key, failing)
    log = Path((info.value.diagnostics[0].hint or "").split("the compiler log is ")[1])
    assert log == tmp_path / "failed" / key / "build.log" and "kiln test" in log.read_text()
    assert cache.lookup(key) is None

    def interrupted(work: Path) -> None:
        (work / "lib.so").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.store(key, interrupted)
    def no_output(work: Path) -> None:
        (work / "log").write_text("no output")

    with pytest.raises(KilnError, match=r"finished without lib\.so"):
        cache.store(key, no_output, ["lib.so"])
    assert cache.lookup(key) is None
    assert [p.name for p in (tmp_path / key[:2]).iterdir() if p.suffix != ".lock"] == []
    entry = cache.get(key, _build, ["lib.so"])
    assert problem(entry, key) is None


@needs_gcc
def test_damaged_csim_is_rebuilt_end_to_end(tmp_path: Path, rng: np.random.Generator) -> None:
    def compile_digits() -> FpgaArtifact:
        art = kiln.compile(get_model("digits_mlp"), example_inputs("digits_mlp"), target="fpga",
                           cache_dir=str(tmp_path))
        assert isinstance(art.artifact, FpgaArtifact)
        return art.artifact

    first = compile_digits()
    binary = first.csim.binary
    data = bytearray(binary.read_bytes())
    data[len(data) // 3: len(data) // 3 + 64] = bytes(64)  # zeroed code: a crash or garbage
    binary.write_bytes(bytes(data))
    again = compile_digits()
    assert again.csim.binary == binary and problem(binary.parent, binary.parent.name) is None
    x = example_inputs("digits_mlp", seed=int(rng.integers(1, 2**31)))[0].numpy()
    np.testing.assert_array_equal(again.run(x)[0], interpret(again.module, x)[0])
