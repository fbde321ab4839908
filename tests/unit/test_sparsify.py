"""sparsify and kiln.ir.sparse: pattern checks, magnitude enforcement, encoders that round-trip,
encodings on weight types that print, parse and run bit-identically to the dense weights."""

from __future__ import annotations

import numpy as np
import pytest

import kiln
import kiln.passes.prune
import kiln.passes.sparsify  # registers the passes
from kiln.compiler.pass_manager import PassManager, run_passes
from kiln.errors import KilnError
from kiln.ir import sparse
from kiln.ir.builder import new_function
from kiln.ir.graph import Module, Value
from kiln.ir.interpret import interpret, sample_inputs
from kiln.ir.ops.core import Weight
from kiln.ir.ops.elementwise import Relu
from kiln.ir.ops.nn_conv import Conv2d, Linear, MatMul
from kiln.ir.parser import parse
from kiln.ir.types import SparseEncoding, TensorType


def sparse_matrix(rng: np.random.Generator, shape: tuple[int, int], density: float) -> np.ndarray:
    m = rng.standard_normal(shape).astype(np.float32)
    return np.where(rng.random(shape) < density, m, np.float32(0))


# -- kiln.ir.sparse ------------------------------------------------------------------------------
def test_encoders_round_trip(rng: np.random.Generator) -> None:
    for density in (0.0, 0.3, 1.0):
        m = sparse_matrix(rng, (8, 12), density)
        csr = sparse.encode_csr(m)
        assert csr.indptr[-1] == np.count_nonzero(m) and csr.indices.dtype == np.int32
        assert np.array_equal(sparse.decode(csr), m)
        blocks = sparse.encode_blocks(m, 2, 4)
        assert blocks.blocks.shape[1:] == (2, 4)
        assert np.array_equal(sparse.decode(blocks), m)
        nm = sparse.encode_nm(sparse.enforce_nm(m, 2, 4), 2, 4)
        assert nm.values.shape == nm.indices.shape == (8, 6)
        assert np.array_equal(sparse.decode(nm), sparse.enforce_nm(m, 2, 4))


def test_enforce_nm_keeps_the_largest_of_each_group(rng: np.random.Generator) -> None:
    m = rng.standard_normal((5, 16))
    out = sparse.enforce_nm(m, 2, 4)
    assert sparse.is_nm(out, 2, 4) and not sparse.is_nm(m, 2, 4)
    groups, kept = np.abs(m).reshape(5, 4, 4), np.abs(out).reshape(5, 4, 4)
    assert np.array_equal(np.sort(groups, axis=2)[:, :, 2:], np.sort(kept, axis=2)[:, :, 2:])
    with pytest.raises(KilnError, match="m=4 does not divide the 6 reduction inputs"):
        sparse.enforce_nm(np.ones((2, 6)), 2, 4)


def test_block_enforcement_and_fraction(rng: np.random.Generator) -> None:
    m = rng.standard_normal((8, 8))
    out = sparse.enforce_blocks(m, 4, 2, 0.5)
    assert sparse.zero_block_fraction(out, 4, 2) == 0.5
    assert sparse.zero_fraction(out) == 0.5
    with pytest.raises(KilnError, match="block 3x2 does not tile the 8x8"):
        sparse.zero_block_fraction(m, 3, 2)


def test_matrix_views_put_the_reduction_last(rng: np.random.Generator) -> None:
    w = rng.standard_normal((4, 2, 3, 3))
    assert sparse.weight_matrix(w).shape == (4, 18)
    assert np.array_equal(sparse.from_matrix(sparse.weight_matrix(w), w.shape), w)
    rhs = rng.standard_normal((6, 3))  # matmul (K, N): outputs are columns
    assert sparse.weight_matrix(rhs, transposed=True).shape == (3, 6)
    enc = sparse.encode(rhs, SparseEncoding("csr"), transposed=True)
    assert np.array_equal(sparse.decode(enc), rhs.T)


# -- the pass -------------------------------------------------------------------------------------
def mlp_module(rng: np.random.Generator, hidden: int = 16) -> Module:
    module = Module("t")
    func, b = new_function(module, "forward", [TensorType((3, 8))], ["x"])
    w1 = b.weight("fc1.weight", rng.standard_normal((hidden, 8)).astype(np.float32))
    h = b.add(Relu(), b.add(Linear(), func.args[0], w1, name="fc1"))
    w2 = b.weight("fc2.weight", rng.standard_normal((8, hidden)).astype(np.float32))
    out = b.add(MatMul(), h, b.weight("mm.weight", rng.standard_normal((hidden, 4))
                                         .astype(np.float32)), name="mm")
    b.ret(b.add(Linear(), h, w2, name="fc2"), out)
    return module


def encodings(module: Module) -> dict[str, str | None]:
    return {op.kind.name: (str(op.result.type.encoding) if op.result.type.encoding else None)
            for op in module.main.ops if isinstance(op.kind, Weight)}


def same_outputs(a: Module, b: Module) -> bool:
    inputs = sample_inputs(a.main, 7)
    return all(np.array_equal(x, y) for x, y in zip(interpret(a, *inputs), interpret(b, *inputs)))


def test_csr_after_pruning_marks_every_sparse_weight(rng: np.random.Generator) -> None:
    module = mlp_module(rng)
    pruned = run_passes(module, "prune{sparsity=0.6}")
    result = PassManager("sparsify{min-sparsity=0.5}").run(pruned)
    out = result.module
    assert encodings(out) == {"fc1.weight": "csr", "fc2.weight": "csr", "mm.weight": "csr"}
    assert "tensor<16x8xf32, csr>" in str(out)
    assert result.records[0].statistics["encoded"] == 3
    assert same_outputs(out, pruned)  # bit-identical: the data stays dense
    assert str(parse(str(out), weights=out.weights)) == str(out)
    assert all(v.type.encoding is None for op in out.main.ops for v in op.results
               if not isinstance(op.kind, Weight))


def test_dense_weights_stay_dense(rng: np.random.Generator) -> None:
    module = mlp_module(rng)
    result = PassManager("sparsify").run(module)
    assert not result.records[0].changed and result.module == module


def two_of_four(w: np.ndarray, transposed: bool) -> np.ndarray:
    matrix = sparse.enforce_nm(sparse.weight_matrix(w, transposed), 2, 4)
    return sparse.from_matrix(matrix, w.shape, transposed)


def test_nm_enforced_by_magnitude(rng: np.random.Generator) -> None:
    module = mlp_module(rng)
    out = run_passes(module, "sparsify{format=nm,n=2,m=4,enforce=true}")
    assert set(encodings(out).values()) == {"nm<2,4>"}
    assert sparse.is_nm(out.weights["fc1.weight"], 2, 4)
    assert sparse.is_nm(out.weights["mm.weight"].T, 2, 4)  # groups along K of (K, N)
    dense = module.clone()
    dense.weights = {k: two_of_four(v, transposed=k == "mm.weight")
                     for k, v in module.weights.items()}
    assert same_outputs(out, dense)
    again = run_passes(dense, "sparsify{format=nm}")  # already 2:4: encoded, data untouched
    assert set(encodings(again).values()) == {"nm<2,4>"}
    assert all(np.array_equal(again.weights[k], dense.weights[k]) for k in dense.weights)


def test_block_format(rng: np.random.Generator) -> None:
    module = mlp_module(rng)
    out = run_passes(module, "sparsify{format=block,block=4x2,enforce=true,min-sparsity=0.5}")
    assert set(encodings(out).values()) == {"block<4,2>"}
    assert sparse.zero_block_fraction(out.weights["fc2.weight"], 4, 2) == 0.5
    bsr = sparse.encode(out.weights["fc2.weight"], SparseEncoding("block", (4, 2)))
    assert np.array_equal(sparse.decode(bsr), out.weights["fc2.weight"])


def test_conv_pattern_that_does_not_divide_names_option_and_op() -> None:
    from kiln.models import example_inputs, get_model
    module = kiln.trace(get_model("digits_cnn"), example_inputs("digits_cnn", batch=2))
    with pytest.raises(KilnError) as info:
        run_passes(module, "sparsify{format=nm,enforce=true}", reproducer=False)
    text = str(info.value)
    assert "'kiln.conv2d' op option m: m=4 does not divide the 9 reduction inputs" in text
    assert "skip=conv1" in text
    out = run_passes(module, "sparsify{format=nm,enforce=true,skip=conv1}")
    assert encodings(out)["conv2.weight"] == "nm<2,4>"
    assert encodings(out)["conv1.weight"] is None
    with pytest.raises(KilnError, match="option block: block 3x3 does not tile"):
        run_passes(module, "sparsify{format=block,block=3x3}", reproducer=False)


@pytest.mark.parametrize(("pipeline", "message"), [
    ("sparsify{min-sparsity=1.0}", "option min-sparsity=1.0 is outside"),
    ("sparsify{format=nm,n=5,m=4}", "options n=5, m=4"),
    ("sparsify{format=block,block=4by4}", "option block='4by4' is not ROWSxCOLS"),
    ("sparsify{skip=nothing}", "option skip names nothing"),
])
def test_bad_options(pipeline: str, message: str, rng: np.random.Generator) -> None:
    with pytest.raises(KilnError, match=message) as info:
        run_passes(mlp_module(rng), pipeline, reproducer=False)
    assert "pass 'sparsify'" in str(info.value)


def test_layers_accept_encoded_operands(rng: np.random.Generator) -> None:
    """conv/linear/matmul infer plain result types from weights that carry an encoding."""
    module = Module("t")
    func, b = new_function(module, "forward", [TensorType((1, 4, 5, 5))], ["x"])
    enc = TensorType((8, 4, 1, 1), encoding=SparseEncoding("nm", (2, 4)))
    module.weights["w"] = np.zeros((8, 4, 1, 1), np.float32)
    w: Value = b.add(Weight(name="w", type=enc))
    y = b.add(Conv2d(), func.args[0], w)
    assert y.type == TensorType((1, 8, 5, 5))
    b.ret(y)
    assert str(parse(str(module), weights=module.weights)) == str(module)


def test_enforced_sparsity_qualifies_despite_rounding() -> None:
    """0.9 · 256² = 58982.4 rounds to 58982 zeros (a fraction of 0.899994): `enforce` makes
    exactly that many, so the weight must still qualify for min-sparsity 0.9 (it stayed dense)."""

    from kiln.ir.types import SparseEncoding

    rng = np.random.default_rng(20261128)
    w = rng.standard_normal((256, 256)).astype(np.float32) + 3.0  # no zeros to begin with
    pruned = sparse.enforce(w, SparseEncoding("csr", ()), 0.9)
    assert np.count_nonzero(pruned == 0) == 58982
    assert sparse.satisfies(pruned, SparseEncoding("csr", ()), 0.9)
    assert not sparse.satisfies(w, SparseEncoding("csr", ()), 0.9)
    blocks = sparse.enforce(w, SparseEncoding("block", (4, 4)), 0.9)  # 4096 blocks → 3686
    assert sparse.satisfies(blocks, SparseEncoding("block", (4, 4)), 0.9)
