"""Quantization-aware training: fake-quantize a torch model where kiln will quantize it.

    qat = fake_quantize(model, x_train, scheme="int8", observer="percentile")
    finetune(qat, (x_train, y_train), epochs=5, lr=1e-4)
    module = export_qat(qat, example_inputs)       # integer kiln.q* ops, via fold-qdq

    qat = fake_quantize(model, x_train, scheme="fixed", width=8)
    finetune(qat, (x_train, y_train), epochs=5)
    module = export_qat(qat, example_inputs, calibration_data=x_calib)   # fixed-point{width=8}

`fake_quantize` returns a new `torch.fx.GraphModule` (the model is not changed):

1. the model is traced with `torch.fx` and batch norms after convs/linears are folded into
   them (torch's `fuse_conv_bn_eval`, eval-mode statistics): quantized hardware computes the
   folded layer, so that is what training must see;
2. the folded float model runs on `calibration_data`; each activation's range is kept in
   kiln's `TensorStats` and mapped to a type by kiln's own rules — `int8`: the `observer`
   (`minmax`, `percentile`, `entropy`, `mse`) and `activation_type` of the quantize pass;
   `fixed`: `fixed<width, I>` with I from max |x| as `fixed-point{policy=calibrated}` picks it;
3. convs and linears become `QuantConv*` / `QuantLinear` (weights symmetric int8 per output
   channel, or `fixed<weight_width, I>` per tensor for weights and biases), and `ActQuant`
   modules (`<node>_fq`) are inserted where kiln quantizes activations:
   - `int8`: the model input and the output of every op, except a conv/linear whose only
     reader is a relu / relu6 (quantized after the activation, as the integer op's clamp) and
     shape ops / max pools (dropout, flatten, reshape, ...), which reuse their input's type
     so that `fold-qdq` needs no rescale;
   - `fixed`: the model input and the output of every op that `fixed-point` requantizes —
     everything but relu-like activations, pools and shape ops, which keep their input's type.

Fine-tuning then trains through the fake quantization (straight-through estimator). Pruning
masks on the model are carried over (BN folding keeps zero patterns); masks can also be applied
to the returned model (`apply_masks`: the layers keep their parameter names).

`export_qat` turns the trained model into a kiln Module: for `int8`, the weight scales are
frozen into buffers, the model is traced (fake-quant ops import as quantize/dequantize pairs)
and `fold-qdq` makes integer ops; for `fixed`, the fake quantization is removed, the float
model is traced and `fixed-point{width, weight-width, rounding, saturation}` runs on
`calibration_data` — the same rules the torch side trained with.

Single-input models that `torch.fx.symbolic_trace` can trace are supported; anything else is
a `KilnError` saying so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from kiln.compress.data import input_batches
from kiln.compress.fake_quant import fixed_type
from kiln.compress.masks import apply_masks, copy_model, masked_parameters, remove_masks
from kiln.compress.qat_layers import FLOAT_OF, QUANT_OF, ActQuant, to_float, to_quant
from kiln.errors import KilnError
from kiln.ir.graph import Module
from kiln.ir.types import I8, FixedType, QuantType
from kiln.passes.calibrate import OBSERVERS, TensorStats, activation_type, observe_range

logger = logging.getLogger("kiln.compress")
ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6)
ACTIVATION_FUNCTIONS = (F.relu, torch.relu, F.relu6, "relu", "relu_")
KEEP_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Identity)
KEEP_FUNCTIONS = (torch.flatten, F.max_pool1d, F.max_pool2d, F.dropout, "flatten", "view",
                  "reshape", "squeeze", "unsqueeze", "permute", "transpose", "contiguous")
"""Shape ops and max pools: they move stored integers and keep the input's quantized type."""
FIXED_KEEP_MODULES = (*KEEP_MODULES, *ACTIVATION_MODULES, nn.AvgPool1d, nn.AvgPool2d,
                      nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.LeakyReLU, nn.Hardtanh)
FIXED_KEEP_FUNCTIONS = (*KEEP_FUNCTIONS, *ACTIVATION_FUNCTIONS, F.avg_pool1d, F.avg_pool2d,
                        F.adaptive_avg_pool2d, F.leaky_relu, "mean")
"""Ops whose result keeps its input's fixed-point type in `fixed-point` (no requantize)."""


@dataclass(frozen=True)
class QATConfig:
    """How a model was fake-quantized (kept in its `meta["kiln_qat"]`, which deep copies of a
    GraphModule preserve, for `export_qat`)."""

    scheme: str = "int8"
    observer: str = "minmax"
    percentile: float = 99.99
    symmetric: bool = False
    width: int = 8
    weight_width: int = 8
    rounding: str = "rnd"
    saturation: str = "sat"

    def __post_init__(self) -> None:
        if self.scheme not in ("int8", "fixed"):
            raise KilnError(f"fake_quantize: scheme={self.scheme!r} is unknown",
                            hint="use int8 (affine, per-channel weights) or fixed")
        if self.observer not in OBSERVERS:
            raise KilnError(f"fake_quantize: observer={self.observer!r} is unknown",
                            hint=f"use one of {', '.join(OBSERVERS)}")
        for option, value in (("width", self.width), ("weight_width", self.weight_width)):
            if not 2 <= value <= 32:
                raise KilnError(f"fake_quantize: {option}={value} is outside 2..32")
        FixedType(self.width, 0, True, self.rounding, self.saturation)  # unknown modes raise

    def activation(self, stats: TensorStats) -> QuantType | FixedType:
        """The calibrated type of one activation (module docstring, step 2)."""
        if self.scheme == "fixed":
            lo, hi = stats.range
            return fixed_type(max(abs(lo), abs(hi)), self.width, self.rounding, self.saturation)
        lo, hi = observe_range(stats, self.observer, storage=I8, symmetric=self.symmetric,
                               percentile=self.percentile)
        return activation_type(lo, hi, I8, self.symmetric)

    def pipeline(self) -> str:
        """The kiln pass that reproduces this scheme on the float model (fixed point)."""
        return (f"fixed-point{{width={self.width},weight-width={self.weight_width},"
                f"rounding={self.rounding},saturation={self.saturation}}}")


# -- graph queries ---------------------------------------------------------------------------------
def _is(node: torch.fx.Node, modules: dict[str, nn.Module], classes: tuple[type, ...],
        functions: tuple[Any, ...]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], classes)
    return node.op in ("call_function", "call_method") and node.target in functions


FOLDABLE = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Linear, nn.BatchNorm1d))


def _fold_batchnorm(gm: torch.fx.GraphModule) -> None:
    """bn(layer(x)) → layer'(x) with the eval-mode statistics folded in, when the layer's
    result has no other reader (torch's own `fuse_conv_bn_eval` / `fuse_linear_bn_eval`)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        source = node.args[0] if node.op == "call_module" and node.args else None
        if not isinstance(source, torch.fx.Node) or source.op != "call_module":
            continue
        layer, bn = modules[str(source.target)], modules[str(node.target)]
        if (not any(isinstance(layer, a) and isinstance(bn, b) for a, b in FOLDABLE)
                or len(source.users) != 1 or not bn.track_running_stats):
            continue
        fuse = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
        gm.set_submodule(str(source.target), fuse(layer, bn))  # type: ignore[arg-type]
        node.replace_all_uses_with(source)
        gm.graph.erase_node(node)
    gm.delete_all_unused_submodules()
    gm.recompile()


def _symbolic_trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        gm = torch.fx.symbolic_trace(model.eval())
    except Exception as exc:  # fx raises many types for untraceable code
        raise KilnError(f"fake_quantize needs a model torch.fx can trace; "
                        f"{type(model).__name__} fails: {str(exc).splitlines()[0]}") from exc
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise KilnError(f"fake_quantize handles single-input models; {type(model).__name__} "
                        f"takes {len(inputs)} inputs")
    _fold_batchnorm(gm)
    return gm


def _calibrate(gm: torch.fx.GraphModule, batches: list[torch.Tensor]) -> dict[str, TensorStats]:
    """Statistics of every float tensor a node produces, over the calibration batches."""
    stats: dict[str, TensorStats] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            out = super().run_node(n)
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                stats.setdefault(n.name, TensorStats()).update(out.detach().cpu().numpy())
            return out

    recorder = Recorder(gm)
    with torch.no_grad():
        for i, x in enumerate(batches):
            try:
                recorder.run(x)
            except RuntimeError as exc:
                raise KilnError(f"calibration_data batch {i} of shape {list(x.shape)} does "
                                f"not fit the model: {str(exc).splitlines()[0]}") from exc
    return stats


# -- the transformation ----------------------------------------------------------------------------
class _Inserter:
    """Swaps layers for their quantized twins and inserts `ActQuant` nodes (module doc, 3)."""

    def __init__(self, gm: torch.fx.GraphModule, config: QATConfig,
                 stats: dict[str, TensorStats]) -> None:
        self.gm, self.config, self.stats = gm, config, stats
        self.modules = dict(gm.named_modules())
        self.types: dict[torch.fx.Node, QuantType | FixedType] = {}

    def run(self) -> None:
        for node in list(self.gm.graph.nodes):
            self.swap_layer(node)
            qtype = self.type_after(node)
            if qtype is not None:
                self.insert(node, qtype)
        self.gm.graph.lint()
        self.gm.recompile()

    def swap_layer(self, node: torch.fx.Node) -> None:
        layer = self.modules.get(str(node.target)) if node.op == "call_module" else None
        if layer is not None and type(layer) in QUANT_OF:
            width = self.config.weight_width
            quant = to_quant(layer, self.config.scheme, width, rounding=self.config.rounding,
                             saturation=self.config.saturation)
            self.gm.set_submodule(str(node.target), quant)
            self.modules[str(node.target)] = quant

    def type_after(self, node: torch.fx.Node) -> QuantType | FixedType | None:
        """The type to fake-quantize `node`'s result to, or None (module docstring, 3)."""
        if node.name not in self.stats or node.op in ("output", "get_attr"):
            return None
        if self.config.scheme == "fixed":
            if _is(node, self.modules, FIXED_KEEP_MODULES, FIXED_KEEP_FUNCTIONS):
                return None
            return self.config.activation(self.stats[node.name])
        users = list(node.users)
        fused = len(users) == 1 and _is(users[0], self.modules, ACTIVATION_MODULES,
                                         ACTIVATION_FUNCTIONS)
        if fused and node.op == "call_module" and type(self.modules[str(node.target)]) in FLOAT_OF:
            return None
        source = node.args[0] if node.args else None
        if (_is(node, self.modules, KEEP_MODULES, KEEP_FUNCTIONS)
                and isinstance(source, torch.fx.Node) and source in self.types):
            return self.types[source]
        return self.config.activation(self.stats[node.name])

    def insert(self, node: torch.fx.Node, qtype: QuantType | FixedType) -> None:
        name = f"{node.name}_fq"
        self.gm.add_submodule(name, ActQuant(qtype))
        users = list(node.users)
        with self.gm.graph.inserting_after(node):
            fq = self.gm.graph.call_module(name, (node,))
        for user in users:
            user.replace_input_with(node, fq)
        self.types[node] = self.types[fq] = qtype
        logger.debug("fake_quantize: %s → %s", node.name, qtype)


def fake_quantize(model: nn.Module, calibration_data: Any, *, scheme: str = "int8",
                  observer: str = "minmax", percentile: float = 99.99, symmetric: bool = False,
                  width: int = 8, weight_width: int | None = None, rounding: str = "rnd",
                  saturation: str = "sat") -> torch.fx.GraphModule:
    """A quantization-aware copy of `model` (module docstring); `model` is not changed.

    `scheme="int8"`: per-channel symmetric int8 weights, per-tensor affine int8 activations
    from `observer` (and `percentile`; `symmetric` activations optional). `scheme="fixed"`:
    `fixed<width, I>` activations, `fixed<weight_width, I>` weights and biases (default: width),
    with ap_fixed `rounding` / `saturation` modes.
    """
    config = QATConfig(scheme, observer, percentile, symmetric, width,
                       weight_width or width, rounding, saturation)
    batches = input_batches(calibration_data)
    float_copy = copy_model(model)
    masks = {k: v.detach().cpu().numpy() for k, v in masked_parameters(float_copy).items()}
    remove_masks(float_copy)
    gm = _symbolic_trace(float_copy)
    stats = _calibrate(gm, batches)
    _Inserter(gm, config, stats).run()
    gm.meta["kiln_qat"] = config
    if masks:
        apply_masks(gm, masks)
    inserted = sum(isinstance(m, ActQuant) for m in gm.modules())
    logger.info("fake_quantize: %s, %d activation quantizers, %d layers", scheme, inserted,
                sum(type(m) in FLOAT_OF for m in gm.modules()))
    return gm


# -- export ----------------------------------------------------------------------------------------
def _config(model: nn.Module) -> QATConfig:
    meta = getattr(model, "meta", None)
    config = meta.get("kiln_qat") if isinstance(meta, dict) else None
    if not isinstance(config, QATConfig):
        raise KilnError(f"export_qat: {type(model).__name__} was not made by "
                        "kiln.compress.fake_quantize",
                        hint="trace a plain model with kiln.trace and quantize it with passes")
    return config


def _map_layers(gm: torch.fx.GraphModule, change: Callable[[nn.Module], nn.Module]) -> None:
    for node in gm.graph.nodes:
        if node.op == "call_module" and type(gm.get_submodule(node.target)) in FLOAT_OF:
            gm.set_submodule(node.target, change(gm.get_submodule(node.target)))


def float_model(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy of a fake-quantized model without fake quantization (the trained weights,
    batch norms folded); masks are made permanent."""
    _config(model)
    gm = copy_model(model)
    assert isinstance(gm, torch.fx.GraphModule)
    remove_masks(gm)
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), ActQuant):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    _map_layers(gm, to_float)
    gm.delete_all_unused_submodules()
    gm.recompile()
    del gm.meta["kiln_qat"]
    return gm.eval()


def _kiln_calibration(calibration_data: Any, batch: int) -> np.ndarray:
    """One array of inputs whose length is a multiple of the traced batch size."""
    x = torch.cat(input_batches(calibration_data, "export_qat: calibration_data"))
    usable = len(x) - len(x) % batch
    if usable == 0:
        raise KilnError(f"export_qat: calibration_data holds {len(x)} inputs, fewer than the "
                        f"example batch of {batch}")
    return x[:usable].numpy()


def export_qat(model: torch.fx.GraphModule, example_inputs: Any, *,
               calibration_data: Any = None, fold: bool = True) -> Module:
    """The kiln Module of a fake-quantized, fine-tuned model (module docstring).

    int8: the QDQ trace, folded into integer ops by `fold-qdq` unless `fold=False`. fixed:
    the float trace converted by `fixed-point` on `calibration_data` (required).
    """
    import kiln
    config = _config(model)
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if config.scheme == "fixed":
        if calibration_data is None:
            raise KilnError("export_qat: a fixed-point model needs calibration_data",
                            hint="the fixed-point pass picks integer bits from it")
        traced = kiln.trace(float_model(model), inputs)
        data = _kiln_calibration(calibration_data, int(inputs[0].shape[0]))
        return kiln.run_passes(traced, config.pipeline(), calibration_data=data)
    frozen = copy_model(model).eval()
    remove_masks(frozen)
    for layer in frozen.modules():
        if type(layer) in FLOAT_OF:
            layer.freeze()  # type: ignore[operator]
    traced = kiln.trace(frozen, inputs)
    return kiln.run_passes(traced, "fold-qdq") if fold else traced


__all__ = ["QATConfig", "export_qat", "fake_quantize", "float_model"]
