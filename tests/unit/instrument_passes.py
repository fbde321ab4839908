"""Deliberately broken passes for the instrument tests, registered when this file is imported.

Tests import it with `kiln.tools.kiln_opt.load_passes(<this file>)` and unregister the passes
afterwards; reproducers name this file with `--load-passes`, so a fresh `kiln-opt` knows them.
"""

from __future__ import annotations

import numpy as np

from kiln.ir.graph import Module, Op
from kiln.ir.ops.elementwise import Mul, Relu
from kiln.ir.rewriter import Rewriter
from kiln.passes.registry import PassContext, register_pass

BROKEN_PASSES = ("broken-scale", "broken-crash")


def first_relu(module: Module) -> Op:
    """The first `kiln.relu` of the entry function (the tests' models all have one)."""
    return next(op for op in module.main.ops if op.isa(Relu))


@register_pass("broken-scale")
def broken_scale(module: Module, ctx: PassContext, *, factor: float = 1.5,
                 keep_name: bool = True) -> bool:
    """Multiply the first relu's input by `factor` (wrong on purpose); the product keeps the
    input's name, as a careless rewrite would (or, without `keep-name`, is named `scaled`)."""
    relu = first_relu(module)
    rewriter = Rewriter(module)
    source = relu.operands[0]
    b = rewriter.builder_before(relu)
    scale = b.constant(np.array(factor, dtype=np.float32), name="scale")
    product = b.add(Mul(), source, scale, name=source.name if keep_name else "scaled")
    rewriter.set_operand(relu, 0, product)
    return True


@register_pass("broken-crash")
def broken_crash(module: Module, ctx: PassContext) -> bool:
    """Fail on the first relu with a diagnostic."""
    raise first_relu(module).error("broken-crash refuses this op")
