"""What the Triton emitter is told: the storage dtype, where the kernels will run, autotuning.

`dtype` is the *storage* type of every activation and parameter (fp32, fp16 or bf16); kernels
always compute in fp32 (loads widen, stores narrow) and accumulate matmul/conv/reductions in
fp32, so fp16 only trades memory traffic and tensor-core speed for rounding at each stored
tensor. `interpreter` says the kernels will run in Triton's CPU interpreter: it changes only
the block-size budget (see `blocks.py`) and one workaround (the interpreter's `tl.dot` mishandles
bf16 operands, so there they are widened first). `autotune` wraps the `tl.dot` kernels in
`triton.autotune` (meaningful on a real GPU only; the target turns it off otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.codegen.triton.exprs import round_bf16
from kiln.errors import KilnError

STORAGE: dict[str, tuple[str, str, int]] = {
    "fp32": ("tl.float32", "torch.float32", 4),
    "fp16": ("tl.float16", "torch.float16", 2),
    "bf16": ("tl.bfloat16", "torch.bfloat16", 2),
}
"""dtype option → (Triton element type, torch dtype, bytes per element)."""


@dataclass(frozen=True)
class TritonOptions:
    """Emitter options (see the module docstring)."""

    dtype: str = "fp32"
    interpreter: bool = False
    autotune: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in STORAGE:
            raise KilnError(f"gpu target: dtype must be one of {', '.join(STORAGE)}, "
                            f"not {self.dtype!r}")

    @property
    def tl_dtype(self) -> str:
        return STORAGE[self.dtype][0]

    @property
    def torch_dtype(self) -> str:
        return STORAGE[self.dtype][1]

    @property
    def itemsize(self) -> int:
        return STORAGE[self.dtype][2]

    @property
    def widen(self) -> str:
        """Suffix that widens a loaded tile to fp32 (empty when storage already is fp32)."""
        return "" if self.dtype == "fp32" else ".to(tl.float32)"

    @property
    def narrow(self) -> str:
        """Suffix that converts an fp32 tile to the storage type before a store."""
        return "" if self.dtype == "fp32" else f".to({self.tl_dtype})"

    def narrowed(self, value: str) -> str:
        """`value` (an fp32 tile) converted to the storage type. bf16 rounds to nearest even
        explicitly first (`exprs.round_bf16`): Triton's interpreter truncates in `.to`, a GPU
        rounds, so without it the two would store different bits."""
        if self.dtype == "bf16":
            return f"({round_bf16(f'({value})')}){self.narrow}"
        return f"({value}){self.narrow}" if self.narrow else value
