"""Sparse weights on the cpu target, end to end: torch model → sparse encodings (`sparsify`)
→ sparse C kernels (`kiln_sparse.c`, chosen per layer by `emit_sparse.choose`) → numerics.

Numerics: fp32 relative error ≤ 1e-4 against `kiln.interpret` on the sparse IR and against
PyTorch with the same (sparse) weights; every format in convolutions (im2col and 1×1) and
linear layers (gather GEMV below 8 rows, transposed GEMM from 8), odd shapes, several
densities. Also: a pruned digits CNN keeps the pruned torch model's accuracy, the cost rule
keeps dense layers dense, the sanitized build runs clean, and the generated code is
deterministic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import kiln
from kiln.compress import apply_masks, remove_masks
from kiln.ir import sparse
from kiln.ir.types import SparseEncoding
from kiln.models import get_model, load_digits_data
from kiln.targets.toolchains import gcc
from tests.conftest import rel_error

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")
TOL = 1e-4
FORMATS = {"csr": SparseEncoding("csr"), "nm": SparseEncoding("nm", (2, 4)),
           "block": SparseEncoding("block", (4, 4))}
OPTIONS = {"csr": "format=csr", "nm": "format=nm,n=2,m=4", "block": "format=block,block=4x4"}
LAYERS = ("0", "2", "5", "7")
"""The weighted layers of `mixed_model` (Sequential indices)."""


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "kiln-cpu-cache"


def mixed_model() -> nn.Module:
    """conv 3×3 (im2col, 7×7: 49 columns, a vector tail) → 1×1 conv (no im2col) → two linear
    layers; every weight tiles nm<2,4> and block<4,4>."""
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 1),
                         nn.Flatten(), nn.ReLU(), nn.Linear(588, 20), nn.ReLU(),
                         nn.Linear(20, 8))


def sparsify_weights(model: nn.Module, formats: dict[str, str], zeros: float,
                     rng: np.random.Generator) -> str:
    """Fresh random weights with each layer's pattern imposed (in place), and the pipeline
    that encodes each layer with its format (one `sparsify` per format, the others skipped)."""
    steps, achieved = [], {fmt: 1.0 for fmt in FORMATS}
    for name, module in model.named_children():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        weight = rng.standard_normal(tuple(module.weight.shape)).astype(np.float32)
        encoding = FORMATS[formats[name]]
        matrix = sparse.enforce(sparse.weight_matrix(weight), encoding, zeros)
        got = (sparse.zero_block_fraction(matrix, 4, 4) if encoding.format == "block"
               else sparse.zero_fraction(matrix))
        achieved[encoding.format] = min(achieved[encoding.format], got)
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(sparse.from_matrix(matrix, weight.shape)))
            module.bias.copy_(torch.from_numpy(rng.standard_normal(module.bias.shape)))
    for fmt in sorted(set(formats.values())):  # small matrices round the sparsity coarsely
        skip = "|".join(n for n, f in formats.items() if f != fmt)
        steps.append(f"sparsify{{{OPTIONS[fmt]},min-sparsity={achieved[fmt] - 1e-6:.6f}"
                     + (f",skip={skip}" if skip else "") + "}")
    return "canonicalize," + ",".join(steps) + ",fuse,cse,dce"


def check(art: Any, model: nn.Module, x: np.ndarray) -> None:
    got = art(x)
    got = got[0] if isinstance(got, (list, tuple)) else got
    assert rel_error(got, kiln.interpret(art.ir, x)[0]) <= TOL
    with torch.no_grad():
        assert rel_error(got, model(torch.from_numpy(x)).numpy()) <= TOL


def kernels(art: Any) -> list[str]:
    return [k["kernel"] for k in art.report()["kernels"]]


ROTATIONS = [("block", "nm", "csr", "block"), ("csr", "block", "nm", "csr"),
             ("nm", "csr", "block", "nm")]


@pytest.mark.parametrize("variant,batch,zeros", [(0, 1, 0.5), (1, 5, 0.9), (2, 9, 0.75),
                                                 (0, 8, 0.95)])
def test_every_format_in_conv_and_linear(variant: int, batch: int, zeros: float, cache: Path,
                                         rng: np.random.Generator) -> None:
    model = mixed_model()
    formats = dict(zip(LAYERS, ROTATIONS[variant]))
    pipeline = sparsify_weights(model, formats, zeros, rng)
    x = rng.standard_normal((batch, 4, 7, 7)).astype(np.float32)
    art = kiln.compile(model, x, target="cpu", pipeline=pipeline, sparse="always",
                       cache_dir=cache)
    encoded = [op.results[0].type.encoding for op in art.ir.main.ops if op.name == "kiln.weight"
               and op.results[0].type.encoding is not None]
    assert sorted(str(e) for e in encoded) == sorted(str(FORMATS[f]) for f in formats.values())
    assert sum("sparse " in k for k in kernels(art)) == 4
    check(art, model, x)


@pytest.mark.parametrize("batch", [1, 5])
def test_odd_linear_chain(batch: int, cache: Path, rng: np.random.Generator) -> None:
    """Shapes 127 → 17 → 7 → 3 → 1 with csr weights at 50-95 % zeros."""
    model = nn.Sequential(nn.Linear(127, 17), nn.ReLU(), nn.Linear(17, 7), nn.Tanh(),
                          nn.Linear(7, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        for layer, zeros in zip(model[::2], (0.95, 0.9, 0.75, 0.5)):
            w = layer.weight.detach().numpy()
            w[...] = sparse.enforce_magnitude(rng.standard_normal(w.shape), zeros)
    x = rng.standard_normal((batch, 127)).astype(np.float32)
    art = kiln.compile(model, x, target="cpu", cache_dir=cache, sparse="always",
                       pipeline="canonicalize,sparsify{min-sparsity=0.45},fuse,cse,dce")
    assert sum(k.startswith("sparse csr kernel") for k in kernels(art)) == 4
    check(art, model, x)


def test_prune_and_sparsify_in_the_pipeline(cache: Path, rng: np.random.Generator) -> None:
    """`default,prune,sparsify` as the pipeline: after `fuse`, the passes see only layers
    outside fused groups (here the last one); before it, every layer."""
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 128))
    x = rng.standard_normal((64, 256)).astype(np.float32)
    after = kiln.compile(model, x, target="cpu", cache_dir=cache,
                         pipeline="default,prune{sparsity=0.9},sparsify{min-sparsity=0.85}")
    assert [k.startswith("sparse csr") for k in kernels(after)] == [False, True]
    before = kiln.compile(model, x, target="cpu", cache_dir=cache,
                          pipeline="canonicalize,prune{sparsity=0.9},sparsify{min-sparsity=0.85},"
                                   "fuse,cse,dce")
    assert kernels(before) == ["sparse csr kernel, density 0.10, clamp relu",
                               "sparse csr kernel, density 0.10"]
    for art in (after, before):
        got = art(x)
        got = got[0] if isinstance(got, (list, tuple)) else got
        assert rel_error(got, kiln.interpret(art.ir, x)[0]) <= TOL


def pruned_digits_cnn() -> nn.Module:
    """The trained digits CNN with 80 % of every conv/linear weight pruned (kiln's `prune`,
    carried back to torch as masks and made permanent: zeros in the torch weights)."""
    model = get_model("digits_cnn").eval()
    x = torch.from_numpy(load_digits_data("test")[0][:1])
    pruned = kiln.run_passes(kiln.trace(model, x), "prune{sparsity=0.8}")
    apply_masks(model, pruned)
    remove_masks(model)
    return model


def test_pruned_digits_cnn_keeps_the_pruned_accuracy(cache: Path) -> None:
    model = pruned_digits_cnn()
    x, y = load_digits_data("test")
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    for mode in ("auto", "always"):
        art = kiln.compile(model, torch.from_numpy(x), target="cpu", cache_dir=cache,
                           sparse=mode)
        got = art(x)
        got = got[0] if isinstance(got, (list, tuple)) else got
        assert rel_error(got, want) <= TOL
        assert np.mean(got.argmax(1) == y) == np.mean(want.argmax(1) == y)
        chosen = kernels(art)
        if mode == "always":  # default pipeline: sparsify found the zeros (csr, 80 %)
            assert sum(k.startswith("sparse csr kernel, density 0.") for k in chosen) == 3
        else:  # these layers are too small for the cost rule
            assert not any(k.startswith("sparse") for k in chosen)
            assert any("too small" in k for k in chosen)


def _linear_art(rng: np.random.Generator, zeros: float, cache: Path, **options: Any) -> Any:
    model = nn.Linear(256, 256)
    with torch.no_grad():
        w = model.weight.detach().numpy()
        w[...] = sparse.enforce_magnitude(rng.standard_normal(w.shape), zeros)
    x = rng.standard_normal((64, 256)).astype(np.float32)
    return kiln.compile(model, x, target="cpu", cache_dir=cache, **options), model, x


def test_cost_rule_keeps_dense_layers_dense(cache: Path, rng: np.random.Generator) -> None:
    pipeline = "canonicalize,sparsify{min-sparsity=0.3},fuse,cse,dce"
    art, model, x = _linear_art(rng, 0.4, cache, pipeline=pipeline)
    assert kernels(art)[0].startswith("dense: sparse would be slower at density 0.60")
    assert "dense: sparse would be slower at density 0.60" in art.files["model.c"]
    check(art, model, x)
    art, model, x = _linear_art(rng, 0.9, cache)  # default pipeline: sparsify finds them
    assert kernels(art)[0] == "sparse csr kernel, density 0.10"
    assert "sparse csr kernel, density 0.10" in art.files["model.c"]
    check(art, model, x)
    off, _, _ = _linear_art(rng, 0.9, cache, sparse="off")
    assert not kernels(off)[0].startswith("sparse")
    with pytest.raises(kiln.KilnError, match="sparse='sometimes'"):
        _linear_art(rng, 0.9, cache, sparse="sometimes")


def test_generated_code_is_deterministic(cache: Path, rng: np.random.Generator) -> None:
    model = mixed_model()
    formats = dict(zip(LAYERS, ROTATIONS[1]))
    pipeline = sparsify_weights(model, formats, 0.8, rng)
    x = rng.standard_normal((9, 4, 7, 7)).astype(np.float32)
    first = kiln.compile(model, x, target="cpu", pipeline=pipeline, sparse="always",
                         cache_dir=cache)
    second = kiln.compile(model, x, target="cpu", pipeline=pipeline, sparse="always",
                          cache_dir=cache)
    assert first.files == second.files
    assert first.artifact.program.weights == second.artifact.program.weights


def test_threads_share_the_sparse_weights(cache: Path, rng: np.random.Generator) -> None:
    """With OpenMP, blocks of rows / columns run in parallel, each thread with its own
    transpose scratch."""
    model = mixed_model()
    pipeline = sparsify_weights(model, dict(zip(LAYERS, ROTATIONS[0])), 0.9, rng)
    x = rng.standard_normal((37, 4, 7, 7)).astype(np.float32)
    art = kiln.compile(model, x, target="cpu", pipeline=pipeline, sparse="always",
                       cache_dir=cache, threads=2, parallel_min_flops=0)
    assert "omp parallel" in art.files["model.c"]
    check(art, model, x)


def test_sanitized_build_runs_clean(cache: Path, rng: np.random.Generator) -> None:
    """ASan + UBSan over the transposes, the spmm tails and the struct's index arrays."""
    model = mixed_model()
    formats = dict(zip(LAYERS, ROTATIONS[2]))
    pipeline = sparsify_weights(model, formats, 0.75, rng)
    x = rng.standard_normal((9, 4, 7, 7)).astype(np.float32)
    art = kiln.compile(model, x, target="cpu", pipeline=pipeline, sparse="always",
                       cache_dir=cache, sanitize=True, const_weights=False)
    assert "sanitized" in art.report()["runtime"]
    check(art, model, x)
