"""Testing tools that ship with kiln: random graph generation and differential checking.

- `graphgen`: `random_module(seed)` builds a random valid module over kiln's op set (op
  generators in `genops`, `genops_shape`, motifs in `genops_motifs`, all named in
  `generators`; `conditioning` keeps compared values well conditioned);
- `differential`: `check(module, pipeline, inputs)` runs a pipeline and compares the
  interpreter's outputs before and after (1e-5 relative, NaN in the same places);
- `shrink`: delta debugging of a failing module down to a small reproducer;
- `targets`: what the pass fuzzer runs (pipelines, passes with options, combinations).

Fuzzers build on these: `bench/fuzz_passes.py` and `tests/unit/test_fuzz_passes.py` for passes,
and later ones for targets.
"""

from kiln.testing.graphgen import random_inputs, random_module

__all__ = ["random_inputs", "random_module"]
