"""The static memory planner: reuse by liveness, in place, views, outputs, scratch, packing."""

from __future__ import annotations

import numpy as np

from kiln.codegen.memory import MemoryPlan, PlanRules, plan_memory
from kiln.ir.builder import new_function
from kiln.ir.graph import Func, Module, Op, Value
from kiln.ir.ops.elementwise import Add, Exp, Relu
from kiln.ir.ops.shape import Reshape
from kiln.ir.types import TensorType

T = TensorType((4, 8))  # 128 bytes


def nbytes(value: Value) -> int:
    return 4 * value.type.numel


def alias(op: Op) -> int | None:
    return 0 if op.isa(Reshape) else None


def inplace(op: Op, result: int) -> tuple[int, ...]:
    return tuple(range(len(op.operands))) if op.isa((Relu, Exp, Add)) else ()


def chain(n: int, returned: int | None = None) -> tuple[Module, Func, list[Value]]:
    module = Module("chain")
    func, b = new_function(module, "forward", [T], ["x"])
    values = [func.args[0]]
    for _ in range(n):
        values.append(b.add(Relu(), values[-1]))
    b.ret(values[-1] if returned is None else values[returned])
    return module, func, values


def check_no_overlap(plan: MemoryPlan) -> None:
    """Buffers alive at the same time never share a byte; offsets are aligned."""
    for i, a in enumerate(plan.buffers):
        assert a.offset % 64 == 0
        for b in plan.buffers[i + 1:]:
            if a.start <= b.end and b.start <= a.end:
                assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset, (a, b)
        assert a.offset + a.size <= plan.arena_bytes


def test_chain_reuses_two_buffers_without_inplace() -> None:
    _, func, values = chain(5)
    plan = plan_memory(func, PlanRules(nbytes=nbytes))
    assert plan.storage[values[0]].kind == "input"
    assert plan.storage[values[-1]].kind == "output"
    offsets = {plan.storage[v].offset for v in values[1:-1]}
    assert len(offsets) == 2 and plan.arena_bytes == 2 * 128
    check_no_overlap(plan)


def test_chain_runs_in_place() -> None:
    _, func, values = chain(5)
    plan = plan_memory(func, PlanRules(nbytes=nbytes, inplace=inplace))
    assert len({plan.storage[v].offset for v in values[1:-1]}) == 1
    assert plan.arena_bytes == 128
    assert plan.naive_bytes() == 128


def test_inputs_and_live_values_are_never_overwritten() -> None:
    module = Module("fork")
    func, b = new_function(module, "forward", [T], ["x"])
    x = func.args[0]
    a = b.add(Exp(), x)          # x is an input: not in place
    c = b.add(Relu(), a)         # a is still read below: not in place
    d = b.add(Add(), a, c)       # a and c die here: d may take one of them
    b.ret(b.add(Relu(), d), c)   # c is an output... of an op before: stays its own
    plan = plan_memory(func, PlanRules(nbytes=nbytes, inplace=inplace))
    s = plan.storage
    assert s[a].kind == "arena" and s[c].kind == "output"
    assert s[a].offset != s[x].offset or s[x].kind == "input"
    assert s[d].kind == "arena" and s[d].offset == s[a].offset
    check_no_overlap(plan)


def test_views_share_storage_and_outputs_get_copies() -> None:
    module = Module("views")
    func, b = new_function(module, "forward", [T], ["x"])
    x = func.args[0]
    r = b.add(Relu(), x)
    flat = b.add(Reshape(shape=(32,)), r)
    again = b.add(Reshape(shape=(8, 4)), r)
    view_of_input = b.add(Reshape(shape=(32,)), x)
    b.ret(flat, again, view_of_input)
    plan = plan_memory(func, PlanRules(nbytes=nbytes, alias=alias))
    assert plan.storage[r].kind == "output" and plan.storage[r].index == 0
    assert plan.storage[flat] == plan.storage[r]
    assert [(j, v) for j, v in plan.output_copies] == [(1, again), (2, view_of_input)]
    assert plan.arena_bytes == 0


def test_scratch_lives_only_during_its_op() -> None:
    _, func, _values = chain(3)
    ops = func.ops
    plan = plan_memory(func, PlanRules(nbytes=nbytes, scratch=lambda op: 1000
                                       if op is ops[1] else 0))
    _offset, size = plan.scratch[ops[1]]
    assert size == 1000
    check_no_overlap(plan)
    assert plan.arena_bytes >= 1000 + 128


def test_random_graphs_never_overlap(rng: np.random.Generator) -> None:
    for trial in range(20):
        module = Module(f"random{trial}")
        func, b = new_function(module, "forward", [TensorType((int(rng.integers(1, 9)), 8))],
                               ["x"])
        pool = [func.args[0]]
        for _ in range(int(rng.integers(3, 25))):
            pick = pool[int(rng.integers(len(pool)))]
            same = [v for v in pool if v.type.shape == pick.type.shape]
            if rng.random() < 0.4 and len(same) > 1:
                other = same[int(rng.integers(len(same)))]
                pool.append(b.add(Add(), pick, other))
            elif rng.random() < 0.2:
                pool.append(b.add(Reshape(shape=(pick.type.numel,)), pick) if pick.type.rank
                            == 2 else b.add(Relu(), pick))
            else:
                pool.append(b.add(Relu(), pick))
        outs = [pool[-1]] + [pool[int(i)] for i in rng.integers(1, len(pool), size=2)]
        b.ret(*outs)
        plan = plan_memory(func, PlanRules(nbytes=nbytes, alias=alias, inplace=inplace,
                                           scratch=lambda op: 64 if op.isa(Add) else 0))
        check_no_overlap(plan)
        # every value has a home, and values alive together never share one, unless in place
        for value in [*func.args, *(r for op in func.ops for r in op.results)]:
            assert value in plan.storage


def test_plan_is_deterministic() -> None:
    _, f1, _ = chain(6)
    _, f2, _ = chain(6)
    p1 = plan_memory(f1, PlanRules(nbytes=nbytes, inplace=inplace))
    p2 = plan_memory(f2, PlanRules(nbytes=nbytes, inplace=inplace))
    assert [(b.offset, b.size, b.start, b.end) for b in p1.buffers] == \
        [(b.offset, b.size, b.start, b.end) for b in p2.buffers]
