"""Testing tools that ship with kiln: random graph generation and differential checking.

- `graphgen`: `random_module(seed)` builds a random valid module over kiln's op set (op
  generators in `genops`, `genops_shape`, motifs in `genops_motifs`, all named in
  `generators`; `conditioning` keeps compared values well conditioned);
- `differential`: `check(module, pipeline, inputs)` runs a pipeline and compares the
  interpreter's outputs before and after (1e-5 relative, NaN in the same places);
- `shrink`: delta debugging of a failing module down to a small reproducer;
- `targets`: what the pass fuzzer runs (pipelines, passes with options, combinations).

Fuzzers build on these: `bench/fuzz_passes.py` and `tests/unit/test_fuzz_passes.py` for passes;
`bench/fuzz.py` and `tests/unit/test_fuzz_targets.py` across targets (`xtarget`: cases, runners
and tallies; `xtarget_cases` the models and the pipeline / PyTorch runners; `xtarget_cpu`,
`xtarget_gpu`, `xtarget_hls` the batched target runners; `xtarget_shrink` reproducers;
`torchgen` random PyTorch modules).
"""

from kiln.testing.graphgen import random_inputs, random_module

__all__ = ["random_inputs", "random_module"]
