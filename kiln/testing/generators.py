"""The generator table of the random graph generator: every op generator and motif by name.

Op generators are named after the op they add (`conv2d`, `reduce_sum`; see `genops` and
`genops_shape`), motifs `motif_*` (`genops_motifs`). `random_module(ops=[...])` draws from a
subset of these names.
"""

from __future__ import annotations

from kiln.testing.genops import NN_GENERATORS, Generator
from kiln.testing.genops_motifs import MOTIF_GENERATORS
from kiln.testing.genops_shape import SHAPE_GENERATORS

GENERATORS: dict[str, Generator] = {**NN_GENERATORS, **SHAPE_GENERATORS, **MOTIF_GENERATORS}
"""Generator name → generator (each adds one op, or one motif, to a `GraphGen`)."""

OP_GENERATORS: tuple[str, ...] = tuple(sorted({**NN_GENERATORS, **SHAPE_GENERATORS}))
"""The names that stand for single ops (the op's name without `kiln.`)."""
