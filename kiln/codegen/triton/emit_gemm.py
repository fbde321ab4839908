"""GEMM kernels with fused epilogues: linear, matmul, convolutions (see `gemm_anchors.py`).

One program computes a [BLOCK_M, BLOCK_N] tile of the anchor's output, looping over K in
BLOCK_K steps, accumulating in fp32:

- with `tl.dot` (tensor cores) when M and N are >= 16 (K padded); fp32 operands ask for
  `input_precision="ieee"` (TF32 would miss the 1e-4 accuracy contract), fp16/bf16 operands go
  to the dot unconverted (fp32 accumulation is `tl.dot`'s default);
- otherwise as a [BLOCK_M, BLOCK_K, BLOCK_N] broadcast product summed over K (CUDA cores), which
  serves batch-1 linear layers and depthwise convolutions without padding them to 16.

The epilogue then adds the bias and runs the group's elementwise ops on the tile while it is
still in registers (bias, activation, residual add, scale), reading other operands at the
output positions, and stores each yielded value.
"""

from __future__ import annotations

from kiln.codegen.triton import blocks
from kiln.codegen.triton.gemm_anchors import Anchor, make_anchor
from kiln.codegen.triton.group import Group
from kiln.codegen.triton.kernel import Kernel, KernelBuilder
from kiln.codegen.triton.options import TritonOptions
from kiln.codegen.triton.space import Space, right_aligned
from kiln.codegen.triton.support import family
from kiln.ir.graph import Value


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _program(kb: KernelBuilder, anchor: Anchor) -> None:
    """Program ids, the tile's rows and columns with their masks, the anchor's prologue."""
    kb.line("pid_m = tl.program_id(0)")
    kb.line("pid_n = tl.program_id(1)")
    if anchor.batch > 1:
        kb.line("pid_b = tl.program_id(2)")
    kb.line("rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)")
    kb.line("rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)")
    kb.line(f"mask_m = rm < {anchor.m}")
    kb.line(f"mask_n = rn < {anchor.n}")
    anchor.prologue(kb)


def _loop(kb: KernelBuilder, anchor: Anchor, dot: bool) -> None:
    options = kb.options
    kb.line("acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)")
    kb.line(f"for k0 in range(0, {anchor.k}, BLOCK_K):")
    with kb.body.indented():
        kb.line("rk = k0 + tl.arange(0, BLOCK_K)")
        kb.line(f"mask_k = rk < {anchor.k}")
        a_off, a_mask, b_off, b_mask = anchor.step(kb)
        widen = "" if dot else options.widen
        x, w = kb.pointer(kb.group.outer[anchor.x]), kb.pointer(kb.group.outer[anchor.w])
        kb.line(f"a = tl.load({x} + {a_off}, mask={a_mask}, other=0.0){widen}")
        kb.line(f"b = tl.load({w} + {b_off}, mask={b_mask}, other=0.0){widen}")
        kb.line(_product(options, dot, anchor.a3d))


def _product(options: TritonOptions, dot: bool, a3d: bool) -> str:
    if a3d:
        return "acc += tl.sum(a * b[None, :, :], axis=1)"
    if not dot:
        return "acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)"
    if options.dtype == "fp32":
        return 'acc += tl.dot(a, b, input_precision="ieee")'
    if options.dtype == "bf16" and options.interpreter:
        # the interpreter's dot mishandles bf16 operands; widen them (exact)
        return "acc += tl.dot(a.to(tl.float32), b.to(tl.float32))"
    return "acc += tl.dot(a, b)"


def _epilogue(kb: KernelBuilder, anchor: Anchor) -> None:
    out = anchor.op.results[0]
    space = Space(out.type.shape, lambda d: anchor.coord(kb, d), anchor.flats)
    kb.line("")
    for op in kb.group.ops:
        if op is not anchor.op:
            kb.compute(op, space, right_aligned(op.results[0].type.shape, space.identity))
            continue
        value = "acc"
        if anchor.bias is not None:
            value += " + " + kb.read(space, anchor.bias, (anchor.bias_dim,))
        kb.set_tile(out, kb.assign(out.name, value), space.identity)
    kb.store_outputs(space, {})


def _inplace(group: Group, anchor: Anchor) -> set[Value]:
    """Operands only the epilogue reads, at the output's shape, may share the output buffer."""
    shape = anchor.op.results[0].type.shape
    read_by_anchor = {group.outer.get(v) for v in anchor.op.operands}
    return {outer for outer in group.outer.values()
            if outer not in read_by_anchor and outer.type.shape == shape}


def gemm_kernel(name: str, group: Group, options: TritonOptions) -> Kernel:
    """The kernel of a contraction op or of an epilogue group anchored on one."""
    anchor = make_anchor(next(op for op in group.ops if family(op) == "gemm"))
    dot = blocks.uses_dot(anchor.m, anchor.n, anchor.k) and not anchor.a3d
    bm, bn, bk = blocks.gemm_blocks(anchor.m, anchor.n, anchor.k, options.interpreter)
    tune = options.autotune and dot and not options.interpreter
    kb = KernelBuilder(name, group, options, "gemm")
    for meta, size in (("BLOCK_M", bm), ("BLOCK_N", bn), ("BLOCK_K", bk)):
        kb.constexpr(meta, size)
    _program(kb, anchor)
    _loop(kb, anchor, dot)
    _epilogue(kb, anchor)
    grid = (_cdiv(anchor.m, bm), _cdiv(anchor.n, bn), anchor.batch)
    notes = [f"{anchor.describe()}, {'tl.dot' if dot else 'FMA'} tiles {bm}x{bn}x{bk}"]
    configs = blocks.autotune_configs(anchor.m, anchor.n, anchor.k) if tune else None
    return kb.finish(grid, notes, num_warps=blocks.num_warps(bm * bn * (1 if dot else bk)),
                     inplace=set() if tune else _inplace(group, anchor),
                     decorator=_autotune(configs) if configs else "", autotune=configs,
                     grid_dims=(anchor.m, anchor.n, anchor.batch))


def _autotune(configs: list[tuple[int, ...]]) -> str:
    lines = ["@triton.autotune(configs=["]
    for bm, bn, bk, warps, stages in configs:
        lines.append(f'    triton.Config({{"BLOCK_M": {bm}, "BLOCK_N": {bn}, "BLOCK_K": {bk}}}, '
                     f"num_warps={warps}, num_stages={stages}),")
    lines.append("], key=[])")
    return "\n".join(lines)
