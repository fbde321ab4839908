"""The verifier: each invariant it checks, and that it reports every problem at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

import numpy as np
import pytest

import kiln.ir.ops.core
import kiln.ir.ops.elementwise  # noqa: F401 - registers the elementwise ops
from kiln.errors import VerifyError
from kiln.ir.graph import Block, Func, Module, Op, Use, make_op
from kiln.ir.location import Location
from kiln.ir.ops.base import OpDef, lookup_op, register_op
from kiln.ir.ops.core import Return, Weight, Yield
from kiln.ir.ops.elementwise import Add, Clamp, Relu
from kiln.ir.types import F32, I8, TensorType
from kiln.ir.verifier import collect_diagnostics, verify, verify_func

T2 = TensorType((2,), F32)
T3 = TensorType((3,), F32)


@dataclass(frozen=True)
class CrashOpForTests(OpDef):
    """A test-only op whose type inference crashes with a plain Python error."""

    NAME = "kiln.test_crash"
    OPERANDS = ("input",)

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        return (operands[0].with_shape([operands[0].shape[0] // 0]),)


@dataclass(frozen=True)
class RegionOpForTests(OpDef):
    """A test-only op with a region: its results are what the region yields."""

    NAME = "kiln.test_region"
    OPERANDS = ("inputs*",)
    NUM_RESULTS = None
    HAS_REGION = True
    label: str = ""


K = TypeVar("K", bound=OpDef)


def _register(cls: type[K]) -> type[K]:
    """Register `cls`, or reuse the class another test module registered under its name."""
    existing = lookup_op(cls.NAME)
    return cast("type[K]", existing) if existing is not None else register_op(cls)


CRASH = _register(CrashOpForTests)
REGION = _register(RegionOpForTests)


def module_with(build: object = None) -> tuple[Module, Func]:
    """`@f(%x: tensor<2xf32>)` computing relu(x) + x, then returning it."""
    module = Module("m")
    func = module.add_func(Func("f", [T2], ["x"]))
    x = func.args[0]
    relu = func.body.append(make_op(Relu(), [x], Location("net.py", 3, "act"), ["r"]))
    add = func.body.append(make_op(Add(), [relu.result, x], names=["s"]))
    func.body.append(make_op(Return(), [add.result]))
    return module, func


def problems(module: Module) -> list[str]:
    return [d.format() for d in collect_diagnostics(module)]


def assert_invalid(module: Module, *messages: str) -> str:
    with pytest.raises(VerifyError) as info:
        verify(module)
    shown = str(info.value)
    for message in messages:
        assert message in shown, shown
    return shown


def test_valid_module_passes() -> None:
    module, func = module_with()
    verify(module)
    verify_func(func)
    assert problems(module) == []


def test_operand_count() -> None:
    module, func = module_with()
    func.body.insert_before(func.ops[0], Op(Relu(), [func.args[0], func.args[0]], [T2]))
    func.body.insert_before(func.ops[0], Op(Add(), [func.args[0]], [T2]))
    assert_invalid(module, "'kiln.relu' op takes 1 operands, got 2",
                   "'kiln.add' op takes 2 operands, got 1")


def test_use_before_definition() -> None:
    module, func = module_with()
    func.ops[0], func.ops[1] = func.ops[1], func.ops[0]
    assert_invalid(module, "operand 0 (%r) is not defined before this op")


def test_value_from_another_function() -> None:
    module, func = module_with()
    other = module.add_func(Func("g", [T2], ["y"]))
    other.body.append(make_op(Return(), [func.args[0]]))
    assert_invalid(module, "'kiln.return' op operand 0 (%x) is not defined")


def test_result_type_disagrees_with_inference() -> None:
    module, func = module_with()
    func.ops[0].results[0].type = T3
    shown = assert_invalid(module, "result types (tensor<3xf32>) differ from the inferred "
                                   "(tensor<2xf32>)")
    assert "net.py:3 (act): error: 'kiln.relu' op" in shown


def test_op_error_from_inference_and_verify() -> None:
    module, func = module_with()
    i8 = func.body.add_arg(TensorType((2,), I8), "i")
    func.body.insert_before(func.return_op, Op(Add(), [func.args[0], i8], [T2]))
    func.body.insert_before(func.return_op, Op(Clamp(min=2.0, max=1.0), [func.args[0]], [T2]))
    assert_invalid(module, "operand element types differ: f32 and i8",
                   "'kiln.clamp' op min 2.0 is greater than max 1.0")


def test_crash_in_op_code_becomes_a_diagnostic() -> None:
    module, func = module_with()
    func.body.insert_before(func.return_op, Op(CRASH(), [func.args[0]], [T2]))
    assert_invalid(module, "type inference failed: ZeroDivisionError")


def test_use_lists() -> None:
    module, func = module_with()
    relu, add = func.ops[0], func.ops[1]
    relu.result.uses.clear()  # add's operand 0 has no use entry
    func.args[0].uses.append(Use(relu, 5))  # a use entry the op does not have
    assert_invalid(module, "operand 0 (%r) has 0 use entries for this op, expected 1",
                   "%x has a use entry (operand 5) that the 'kiln.relu' op does not have")
    assert add.operands[0] is relu.result


def test_stale_use_of_an_erased_op() -> None:
    module, func = module_with()
    dead = Op(Relu(), [func.args[0]], [T2])  # never inserted: its use is stale
    assert dead.block is None
    assert_invalid(module, "%x is used by a 'kiln.relu' op that is not in function @f")


def test_block_back_pointer_and_duplicate_op() -> None:
    module, func = module_with()
    func.ops[0].block = Block()
    func.ops.insert(2, func.ops[1])
    assert_invalid(module, "op.block does not point at the block", "appears twice")


def test_return_rules() -> None:
    module, func = module_with()
    func.ops.pop()
    assert_invalid(module, "function @f does not end with kiln.return")
    module, func = module_with()
    func.body.insert_before(func.ops[0], make_op(Return(), [func.args[0]]))
    assert_invalid(module, "'kiln.return' op must be the last op of its block")
    module, func = module_with()
    func.body.insert_before(func.return_op, make_op(Yield(), []))
    assert_invalid(module, "'kiln.yield' op cannot appear in a function body")


def _region_op(func: Func, yield_types: bool = True) -> Op:
    """A region op over %x whose body adds its argument to the outer relu result."""
    relu = func.ops[0].result
    region = Block([T2], ["p"])
    inner = region.append(make_op(Add(), [region.args[0], relu], names=["in"]))
    if yield_types:
        region.append(make_op(Yield(), [inner.result]))
    op = Op(REGION(), [func.args[0]], [T2], region=region, names=["grp"])
    func.body.insert_before(func.return_op, op)
    return op


def test_region_sees_outer_values_and_yields() -> None:
    module, func = module_with()
    op = _region_op(func)
    verify(module)
    op.results[0].type = T3
    assert_invalid(module, "region yields (tensor<2xf32>) but the op's results are "
                           "(tensor<3xf32>)")


def test_region_rules() -> None:
    module, func = module_with()
    _region_op(func, yield_types=False)
    assert_invalid(module, "region does not end with kiln.yield")
    module, func = module_with()
    op = _region_op(func)
    func.return_op.set_operand(0, op.region.ops[0].result)  # type: ignore[union-attr]
    assert_invalid(module, "'kiln.return' op operand 0 (%in) is not defined")
    module, func = module_with()
    op = _region_op(func)
    op.region = None
    assert_invalid(module, "needs a region")
    module, func = module_with()
    func.ops[0].region = Block()
    assert_invalid(module, "'kiln.relu' op has a region but its kind takes none")


def test_region_cannot_use_its_own_results() -> None:
    module, func = module_with()
    op = _region_op(func)
    region = op.region
    assert region is not None
    region.ops[0].set_operand(1, op.results[0])
    assert_invalid(module, "operand 1 (%grp) is not defined")


def _weight_module() -> tuple[Module, Func]:
    module = Module("w")
    func = module.add_func(Func("f", []))
    w = func.body.append(make_op(Weight(name="fc.weight", type=T2), [], names=["w"]))
    func.body.append(make_op(Return(), [w.result]))
    return module, func


def test_weights_elided_or_checked() -> None:
    module, _ = _weight_module()
    verify(module)  # no weights at all: elided
    module.weights["fc.weight"] = np.zeros(2, np.float32)
    verify(module)
    module.weights["fc.weight"] = np.zeros(3, np.float32)
    assert_invalid(module, "weight @fc.weight is float32[3] but its type tensor<2xf32> needs "
                           "float32[2]")
    module.weights = {"other": np.zeros(1)}
    assert_invalid(module, "weight @fc.weight is missing from the module's weights")
    _, func = _weight_module()
    verify_func(func, module=None)


def test_every_problem_is_reported_at_once() -> None:
    module, func = module_with()
    func.ops[0].results[0].type = T3
    func.ops.pop()
    with pytest.raises(VerifyError) as info:
        verify(module)
    shown = str(info.value)
    assert len(info.value.diagnostics) == 5  # summary + four problems
    assert "module @m is invalid (4 problems)" in shown
    for message in ["differ from the inferred", "do not broadcast", "does not end with",
                    "stale use"]:
        assert message in shown
    with pytest.raises(VerifyError, match="function @f is invalid"):
        verify_func(func)
