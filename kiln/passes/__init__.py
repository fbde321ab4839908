"""kiln's passes. Registration is explicit: each built-in pass module is imported here by name.

Importing a module runs its `@register_pass` decorators; a duplicate pass name raises at import.
`kiln.passes.registry` holds the registry and the pass calling convention.
"""

from kiln.passes import (  # noqa: F401  (imported for their registrations)
    canonicalize,
    cse,
    dce,
    decompose,
    fixed_activations,
    fixed_point,
    fixed_transformer,
    fold_batchnorm,
    fold_constants,
    fold_qdq,
    fuse,
    layout,
    prune,
    quantize,
    sparsify,
)
