"""Capture path 1: `torch.export.export` → core ATen (with kiln's kept ops).

torch.export records every parameter, buffer and lifted constant as a placeholder named in the
graph signature with its fully qualified name (`layer1.0.bn1.running_mean`), so those become
kiln weights under the same names.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch.export.graph_signature import InputKind, OutputKind

from kiln.errors import KilnError
from kiln.frontend.torch_capture import Captured, GraphInput, decomposition_table, to_numpy

_TENSOR_KINDS = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)


def capture_export(model: torch.nn.Module, args: tuple[torch.Tensor, ...],
                   arg_names: Sequence[str]) -> Captured:
    """Export `model` on `args` and decompose to the ops kiln converts."""
    with warnings.catch_warnings():
        # torch's own pytree code warns about its own deprecated LeafSpec use: not the user's
        warnings.filterwarnings("ignore", category=FutureWarning, module="copyreg")
        program = torch.export.export(model, args)
        program = program.run_decompositions(decomposition_table())
    return Captured(graph=program.graph, inputs=_inputs(program, arg_names),
                    outputs=_outputs(program), owner=program.graph_module, method="export")


def _tensor(program: Any, target: str) -> torch.Tensor:
    if target in program.state_dict:
        return program.state_dict[target]
    if target in program.constants:
        value = program.constants[target]
        if isinstance(value, torch.Tensor):
            return value
    raise KilnError(f"torch.export lists '{target}' as an input but holds no tensor for it")


def _inputs(program: Any, arg_names: Sequence[str]) -> dict[str, GraphInput]:
    inputs: dict[str, GraphInput] = {}
    user = 0
    for spec in program.graph_signature.input_specs:
        name = spec.arg.name
        if spec.kind == InputKind.USER_INPUT:
            label = arg_names[user] if user < len(arg_names) else name
            inputs[name] = GraphInput(label)
            user += 1
        elif spec.kind in _TENSOR_KINDS and spec.target is not None:
            inputs[name] = GraphInput(spec.target, to_numpy(_tensor(program, spec.target)))
        else:
            raise KilnError(f"torch.export produced an input of kind {spec.kind.name} "
                            f"('{name}'), which kiln cannot represent",
                            hint="remove custom objects and tokens from the model's inputs")
    return inputs


def _outputs(program: Any) -> list[Any]:
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    by_name = {getattr(a, "name", None): a for a in output_node.args[0]}
    outputs = []
    for spec in program.graph_signature.output_specs:
        if spec.kind != OutputKind.USER_OUTPUT:
            continue
        name = getattr(spec.arg, "name", None)
        if name is None or name not in by_name:
            raise KilnError(f"model output {spec.arg} is not a tensor",
                            hint="return only tensors (a tensor or a tuple/list of tensors)")
        outputs.append(by_name[name])
    return outputs
