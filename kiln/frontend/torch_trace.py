"""`trace(model, example_inputs)`: a PyTorch model → a kiln Module.

The model runs once eagerly (so shape errors in the example inputs surface as torch reported
them), is captured with torch.export (falling back to torch.fx symbolic tracing), and the ATen
graph is converted op by op (`torch_convert`). Tracing happens in eval mode with gradients
enabled: eval gives BatchNorm/Dropout their inference semantics, and enabled gradients keep
PyTorch off fused inference fast paths (`nn.TransformerEncoderLayer` under `no_grad()` becomes
one opaque op). The model's train/eval flags are restored afterwards, module by module.

Hostile or awkward input: the example inputs are cloned first (a model that updates its input
in place, `x.add_(1)`, must not change the caller's tensor while being traced); Python control
flow on tensor values is reported as such, with the user's source line; parameters holding NaN
or Inf get a `KilnWarning` naming them.
"""

from __future__ import annotations

import inspect
import logging
import os
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch

from kiln.errors import Diagnostic, KilnError
from kiln.frontend.torch_capture import Captured
from kiln.frontend.torch_convert import convert_graph
from kiln.frontend.torch_export import capture_export
from kiln.frontend.torch_fx import capture_fx
from kiln.frontend.torch_source import user_frame
from kiln.ir.graph import Module
from kiln.ir.location import Location
from kiln.ir.serialize import warn_nonfinite

log = logging.getLogger("kiln.frontend.torch")

Method = Literal["auto", "export", "fx"]


def trace(model: Any, example_inputs: Any, *, method: Method = "auto") -> Module:
    """Trace `model` on `example_inputs` (a tensor, NumPy array, or a tuple/list of them).

    `method` forces one capture path: "export" (torch.export), "fx" (torch.fx symbolic
    tracing); "auto" tries export first and falls back to fx.
    """
    if not isinstance(model, torch.nn.Module):
        raise KilnError(f"kiln.trace needs a torch.nn.Module, got {type(model).__name__}")
    args = as_tensors(example_inputs)
    names = arg_names(model, len(args))
    with eval_mode(model), torch.enable_grad():
        check_runs(model, args)
        captured = capture(model, args, names, method)
    module = convert_graph(captured, model, type(model).__name__)
    warn_nonfinite(module.weights, f"the parameters and buffers of {type(model).__name__}",
                   what="torch tensor")
    return module


def as_tensors(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    """The example inputs as a tuple of tensors (NumPy arrays are converted)."""
    items = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    tensors = []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            item = torch.from_numpy(np.ascontiguousarray(item))
        if not isinstance(item, torch.Tensor):
            raise KilnError(f"example input {i} is a {type(item).__name__}, not a tensor",
                            hint="pass a tensor, a NumPy array, or a tuple/list of them")
        tensors.append(item.detach().clone())  # the model may update its inputs in place
    return tuple(tensors)


def arg_names(model: torch.nn.Module, count: int) -> list[str]:
    """Names of the first `count` positional parameters of `model.forward` (`x`, ...)."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return [f"arg{i}" for i in range(count)]
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in params if p.kind in kinds]
    return [names[i] if i < len(names) else f"arg{i}" for i in range(count)]


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's flag on exit."""
    saved = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in saved:
            module.training = training


def brief(exc: BaseException, limit: int = 240) -> str:
    """`Type: first line of the message`, shortened: torch's errors can be pages long."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_runs(model: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
    """Run the model once; a failure means the example inputs do not fit it."""
    try:
        with torch.no_grad():
            model(*args)
    except Exception as exc:
        shapes = ", ".join(f"{list(a.shape)} {a.dtype}" for a in args)
        raise KilnError(f"the model fails on the example inputs ({shapes}): {brief(exc)}",
                        hint="check the number, shapes and dtypes of example_inputs against "
                             "the model's forward()") from None


def capture(model: torch.nn.Module, args: tuple[torch.Tensor, ...], names: Sequence[str],
            method: Method) -> Captured:
    """torch.export first (unless `method` says otherwise), then torch.fx."""
    if method not in ("auto", "export", "fx"):
        raise KilnError(f"unknown trace method '{method}'", hint="use 'auto', 'export' or 'fx'")
    failures: list[str] = []
    errors: list[Exception] = []
    if method in ("auto", "export"):
        try:
            return capture_export(model, args, names)
        except KilnError:
            raise
        except Exception as exc:
            failures.append(f"torch.export failed: {brief(exc)}")
            errors.append(exc)
            log.info("torch.export failed, falling back to torch.fx: %s", brief(exc))
    if method in ("auto", "fx"):
        try:
            return capture_fx(model, args, names)
        except KilnError:
            raise
        except Exception as exc:
            failures.append(f"torch.fx symbolic tracing failed: {brief(exc)}")
            errors.append(exc)
    dynamic = [exc for exc in errors if is_data_dependent(exc)]
    if dynamic:
        raise data_dependent_error(dynamic, failures)
    if errors and all(isinstance(exc, SyntaxError) for exc in errors):
        names = [name for name, _ in model.named_modules() if name and not name.isidentifier()
                 and not all(part.isidentifier() or part.isdigit() for part in name.split("."))]
        raise KilnError("torch could not capture the model's graph: the code it generates "
                        "from the model does not parse\n  " + "\n  ".join(failures),
                        hint="name submodules and parameters with Python identifiers"
                             + (f" (these are not: {names[:4]})" if names else ""))
    raise KilnError("could not capture the model's graph\n  " + "\n  ".join(failures),
                    hint="often the cause is Python control flow on tensor values (`if "
                         "x.sum() > 0:`); make it depend only on shapes or module attributes")


_DATA_DEPENDENT = ("DataDependent", "data-dependent", "data dependent",
                   "cannot be used as inputs to control flow", "'Proxy'")


def is_data_dependent(exc: BaseException) -> bool:
    """Whether a capture failure is Python control flow (or `int()`/`.item()`) on a tensor value:
    torch.export's data-dependent guards, torch.fx's proxies in `if`/`for`/`int()`."""
    text = f"{type(exc).__name__}: {exc}"
    return any(marker in text for marker in _DATA_DEPENDENT)


def data_dependent_error(errors: Sequence[BaseException], failures: Sequence[str]) -> KilnError:
    """The error for a model whose graph depends on its input values, at the user's line."""
    frames = [user_frame("".join(traceback.format_tb(e.__traceback__))) for e in errors]
    frame = next((f for f in frames if f is not None), None)
    loc = Location(file=os.path.basename(frame[0]), line=frame[1]) if frame else None
    return KilnError(diagnostics=[Diagnostic(
        "the model has data-dependent control flow: an `if`, loop or `int()`/`.item()` "
        "depends on the values of a tensor, so the graph differs from input to input "
        "(" + "; ".join(failures) + ")", loc=loc,
        hint="kiln compiles static graphs: make the branch or loop count depend only on "
             "shapes or module attributes, or compute both branches and pick with "
             "torch.where(cond, a, b)")])
