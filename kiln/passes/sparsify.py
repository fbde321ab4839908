"""Sparsify: give conv/linear/matmul weights a sparse encoding on their type when they qualify.

`sparsify{format=csr|nm|block, n=2, m=4, block=4x4, min-sparsity=0.5, enforce=false, skip=...}`
looks at every weight read by a conv, linear or matmul (see `kiln.ir.sparse` for the matrix
view and the patterns). A weight that qualifies gets `TensorType.encoding` — `csr`, `nm<2,4>`
or `block<4,4>` — on its `kiln.weight` op:

- `csr`: at least `min-sparsity` of its entries are zero;
- `nm`: every group of `m` consecutive reduction inputs holds at most `n` non-zeros (the
  pattern fixes the density, so `min-sparsity` plays no part);
- `block`: at least `min-sparsity` of its `r×c` blocks are all zero.

With `enforce=true` the pattern is imposed first, by magnitude: `csr` zeroes the
round(min-sparsity · size) smallest |w|, `nm` keeps the `n` largest |w| of every group, `block`
zeroes the round(min-sparsity · blocks) blocks of least L1 norm. The new values replace the old
ones under the same weight names (as `prune` does). Weights that do not qualify stay dense.

The data stays dense in `module.weights`; the encoding is metadata for code generators (which
call `kiln.ir.sparse.encode`), so the interpreter's results are bit-identical to the dense
model's. Layers read the weight exactly as before: their result types carry no encoding.

A pattern that does not tile a weight (`m=4` with 9 reduction inputs, a block that does not
divide the matrix) is a `KilnError` naming the option and the op; leave such layers out with
`skip=` (same names as `prune`). A weight that some other op also reads, or that a matmul reads
with rank above 2, is left dense (debug log).
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np

from kiln.errors import KilnError
from kiln.ir import sparse
from kiln.ir.graph import Module, Op
from kiln.ir.ops.core import Weight
from kiln.ir.rewriter import Rewriter
from kiln.ir.types import SparseEncoding, TensorType
from kiln.passes.prune import (
    WeightUse,
    check_skip,
    check_sparsity,
    is_skipped,
    torch_name,
    weight_uses,
)
from kiln.passes.registry import PassContext, register_pass

WHERE = "pass 'sparsify'"


def parse_block(text: str) -> tuple[int, int]:
    """`4x4` → (4, 4); anything else is a `KilnError` naming the option."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if match is None or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise KilnError(f"{WHERE}: option block={text!r} is not ROWSxCOLS",
                        hint="write the block size as e.g. block=4x4 or block=1x8")
    return int(match.group(1)), int(match.group(2))


def make_encoding(format: str, n: int, m: int, block: str) -> SparseEncoding:
    """The encoding the options ask for (option errors name the option)."""
    if format == "nm":
        if not 1 <= n <= m:
            raise KilnError(f"{WHERE}: options n={n}, m={m} need 1 <= n <= m",
                            hint="e.g. n=2,m=4 for 2:4 sparsity")
        return SparseEncoding("nm", (n, m))
    if format == "block":
        return SparseEncoding("block", parse_block(block))
    return SparseEncoding("csr")


def _option(encoding: SparseEncoding) -> str:
    return {"nm": "m", "block": "block", "csr": "format"}[encoding.format]


def _label(op: Op) -> str:
    name = op.results[0].name if op.results and op.results[0].name else None
    return f"'{op.name}'" + (f" %{name}" if name else "")


def _candidates(module: Module, skip: tuple[str, ...], ctx: PassContext) -> list[WeightUse]:
    """Layer weights that can take an encoding: float data, read only as this layer's weight."""
    chosen = []
    for use in weight_uses(module):
        value = use.weight.result
        data = module.weights.get(use.symbol)
        if is_skipped(use, skip) or value.type.encoding is not None:
            continue
        if data is None or not np.issubdtype(data.dtype, np.floating):
            ctx.logger.debug("sparsify: %s has no float data", use.symbol)
        elif len(value.uses) != 1 or data.ndim < 2 or (use.transposed and data.ndim != 2):
            ctx.logger.debug("sparsify: %s has other users or an unusual shape", use.symbol)
        else:
            chosen.append(use)
    return chosen


def _short(use: WeightUse) -> str:
    """The shortest name `skip` accepts for a layer (`conv1` for `conv1.weight.bnfold`)."""
    return torch_name(use.symbol).removesuffix(".weight")


def _check_tiling(use: WeightUse, matrix: np.ndarray, encoding: SparseEncoding) -> None:
    reason = sparse.pattern_mismatch((matrix.shape[0], matrix.shape[1]), encoding)
    if reason is not None:
        raise use.op.error(f"option {_option(encoding)}: {reason} of weight @{use.symbol} "
                           f"(matrix view {matrix.shape[0]}x{matrix.shape[1]})",
                           hint=f"leave this layer dense with skip={_short(use)}, or pick a "
                                "pattern that divides it")


def _encode_one(use: WeightUse, encoding: SparseEncoding, min_sparsity: float,
                enforce: bool, rewriter: Rewriter, ctx: PassContext) -> bool:
    """Impose (when `enforce`) and encode one weight; True when anything changed."""
    module = rewriter.module
    data = module.weights[use.symbol]
    matrix = sparse.weight_matrix(data, use.transposed)
    changed = False
    if enforce:
        matrix = sparse.enforce(matrix, encoding, min_sparsity)
        new_data = sparse.from_matrix(matrix, data.shape, use.transposed).astype(data.dtype)
        changed = not np.array_equal(new_data, data)
        module.weights[use.symbol] = data = new_data
    if not sparse.satisfies(matrix, encoding, min_sparsity):
        ctx.logger.debug("sparsify: %s is not sparse enough for %s (%.2f zeros)", use.symbol,
                         encoding, sparse.zero_fraction(matrix))
        ctx.count("dense")
        return changed
    old = use.weight.result
    builder = rewriter.builder_before(use.weight)
    ttype = TensorType(old.type.shape, old.type.dtype, encoding)
    new = builder.add(Weight(name=use.symbol, type=ttype), name=old.name)
    rewriter.set_operand(use.op, use.index, new)
    rewriter.erase_op(use.weight)
    ctx.count("encoded")
    ctx.count("zeros", int(data.size - np.count_nonzero(data)))
    ctx.count("params", int(data.size))
    return True


@register_pass("sparsify")
def sparsify(module: Module, ctx: PassContext, *,
             format: Literal["csr", "nm", "block"] = "csr", n: int = 2, m: int = 4,
             block: str = "4x4", min_sparsity: float = 0.5, enforce: bool = False,
             skip: tuple[str, ...] = ()) -> bool:
    """Mark sparse conv/linear/matmul weights with a csr, N:M or block encoding on their type."""
    check_sparsity(min_sparsity, "min-sparsity", WHERE)
    encoding = make_encoding(format, n, m, block)
    check_skip(skip, weight_uses(module), WHERE)
    uses = _candidates(module, skip, ctx)
    for use in uses:  # every tiling error before any change
        _check_tiling(use, sparse.weight_matrix(module.weights[use.symbol], use.transposed),
                      encoding)
    rewriter = Rewriter(module)
    changed = False
    for use in uses:
        changed = _encode_one(use, encoding, min_sparsity, enforce, rewriter, ctx) or changed
    return changed
