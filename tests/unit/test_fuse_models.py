"""Fusion on every bundled model: numerics within 1e-5 of the traced model, epilogues all fused.

Each model is traced with the PyTorch frontend and run through the clean-up passes, `fuse`,
and clean-up again. The fused module must agree with the traced one to 1e-5 relative error
(`max|a-b| / max|b|`) on fresh inputs; fusion itself is bit-exact (the fused op runs its region),
so any difference comes from the clean-up passes. And fusion must leave no epilogue behind: no
conv / linear / matmul outside a fused op may feed an elementwise op of its own shape.
"""

from __future__ import annotations

import numpy as np
import pytest

import kiln
from kiln.compiler.numerics import rel_error
from kiln.compiler.pass_manager import run_passes
from kiln.ir.fusion_rules import is_elementwise, is_epilogue_anchor, is_reduction, result_shape
from kiln.ir.graph import Module, Op
from kiln.ir.interpret import interpret
from kiln.ir.ops.fused import Fused
from kiln.models import example_inputs, get_model, list_models
from kiln.passes.registry import lookup_pass

CLEANUP = "canonicalize,fold-constants,cse"
PIPELINE = f"{CLEANUP},fuse,cse,dce"
WITH_BN_FOLDING = "canonicalize,fold-batchnorm,fold-constants,cse,fuse,cse,dce"


def fused_ops(module: Module) -> list[Op]:
    return [op for op in module.main.ops if op.isa(Fused)]


def inner_ops(group: Op) -> list[Op]:
    assert group.region is not None
    return group.region.ops[:-1]


def assert_epilogues_fused(module: Module) -> None:
    """Every anchor with an elementwise consumer of its shape sits in a fused op (or its
    consumer joined another anchor's group); each group has exactly one anchor."""
    for op in module.main.ops:
        if is_epilogue_anchor(op):
            left = [u.name for u in op.result.users
                    if is_elementwise(u) and result_shape(u) == result_shape(op)]
            assert not left, f"{op.name} at {op.loc.describe()} left its epilogue {left}"
    for group in fused_ops(module):
        assert isinstance(group.kind, Fused)
        anchors = [op for op in inner_ops(group) if is_epilogue_anchor(op)]
        assert len(anchors) == (group.kind.kind == "epilogue")
        if group.kind.kind == "reduction":
            assert any(is_reduction(op) for op in inner_ops(group))


def top_level_count(module: Module) -> int:
    """Ops that do work: weights, constants and the return do not count."""
    return sum(op.name not in ("kiln.weight", "kiln.constant", "kiln.return")
               for op in module.main.ops)


@pytest.mark.parametrize("name", list_models())
def test_model_fuses_with_its_epilogues(name: str, rng: np.random.Generator) -> None:
    traced = kiln.trace(get_model(name), example_inputs(name))
    cleaned = run_passes(traced, CLEANUP)
    fused = run_passes(traced, PIPELINE)
    assert fused_ops(fused), "no group formed"
    assert_epilogues_fused(fused)
    assert top_level_count(fused) < top_level_count(cleaned)
    absorbed = sum(len(inner_ops(g)) - 1 for g in fused_ops(fused))
    assert top_level_count(fused) + absorbed == top_level_count(cleaned)
    for seed in rng.integers(1, 2**31, size=2):
        inputs = example_inputs(name, seed=int(seed))
        for want, got in zip(interpret(traced, *inputs), interpret(fused, *inputs)):
            assert rel_error(got, want) <= 1e-5
        for want, got in zip(interpret(cleaned, *inputs), interpret(fused, *inputs)):
            assert np.array_equal(got, want), "fusion changed the numbers"


@pytest.mark.skipif(lookup_pass("fold-batchnorm") is None, reason="fold-batchnorm not present")
@pytest.mark.parametrize("name", ["resnet8", "mobilenet_v2ish", "digits_cnn", "conv1d_net"])
def test_models_with_batch_norm_folded_first(name: str, rng: np.random.Generator) -> None:
    traced = kiln.trace(get_model(name), example_inputs(name))
    fused = run_passes(traced, WITH_BN_FOLDING)
    assert "kiln.batch_norm" not in fused.op_counts()
    assert_epilogues_fused(fused)
    inputs = example_inputs(name, seed=int(rng.integers(1, 2**31)))
    for want, got in zip(interpret(traced, *inputs), interpret(fused, *inputs)):
        assert rel_error(got, want) <= 1e-5
