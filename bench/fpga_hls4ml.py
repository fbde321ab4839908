"""The hls4ml half of `bench/fpga.py`: same model, same precision, C-simulation outputs
compared bit for bit with kiln's fixed-point model (see bench/fpga.py's docstring)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

import kiln
from kiln.ir.interpret import interpret
from kiln.models import example_inputs, get_model

TYPE = "ap_fixed<16,6>"
ACCUM = "ap_fixed<48,24>"  # exact for every layer here: 20 fraction bits, < 2^23 magnitude
KILN_PIPELINE = ("canonicalize,fixed-point{policy=uniform,width=16,integer=6,rounding=trn,"
                 "saturation=wrap}")


def as_compared(model: torch.nn.Module) -> torch.nn.Sequential:
    """The model as the chain of its children (true of the three benchmarked models) with
    each conv+batchnorm pair folded in float (so both tools see the same conv weights) and a
    final softmax dropped (hls4ml: lookup tables; kiln's target: the float reference)."""
    layers: list[torch.nn.Module] = []
    for child in model.children():
        if isinstance(child, torch.nn.BatchNorm2d) and isinstance(layers[-1], torch.nn.Conv2d):
            layers[-1] = fuse_conv_bn_eval(layers[-1], child)
        else:
            layers.append(child)
    if isinstance(layers[-1], torch.nn.Softmax):
        layers.pop()
    return torch.nn.Sequential(*layers).eval()


def hls_config(hls4ml: Any, model: torch.nn.Module, shape: tuple[int, ...], rf: int) -> Any:
    cfg = hls4ml.utils.config_from_pytorch_model(
        model, input_shape=shape, granularity="name", default_precision=TYPE,
        default_reuse_factor=rf, backend="Vitis")
    for layer in cfg["LayerName"].values():
        prec = layer.setdefault("Precision", {})
        for key in list(prec) or ["result"]:
            prec[key] = ACCUM if key == "accum" else TYPE
        prec["result"] = TYPE
    return cfg


def compare(name: str, rf: int, samples: int, hls4ml: Any) -> list[object]:
    """One table row: model, RF, C-sim build time, bit-identical outputs, max |diff|."""
    model = as_compared(get_model(name).eval())
    shape = tuple(np.shape(example_inputs(name)[0]))
    x = np.random.default_rng(7).uniform(-4, 4, (samples, *shape[1:])).astype(np.float32)
    module = kiln.run_passes(kiln.trace(model, (x[:1],)), KILN_PIPELINE)
    ours = np.concatenate([np.asarray(interpret(module, x[i:i + 1])[0]).reshape(1, -1)
                           for i in range(samples)])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        hm = hls4ml.converters.convert_from_pytorch_model(
            model, hls_config=hls_config(hls4ml, model, shape[1:], rf), output_dir=out,
            backend="Vitis", io_type="io_parallel")
        hm.compile()
        theirs = np.asarray(hm.predict(np.ascontiguousarray(x))).reshape(samples, -1)
    build = time.perf_counter() - start
    same = int(np.sum(np.all(ours == theirs, axis=1)))
    diff = float(np.max(np.abs(ours - theirs)))
    return [name, rf, f"{build:.1f}", f"{same}/{samples}", f"{diff:.3g}"]


def compare_all(models: Sequence[str], reuse: Sequence[int], samples: int) -> str:
    """The hls4ml comparison as text (a table, or why it could not run)."""
    from kiln.targets.cost.fpga_format import format_rows
    try:
        import hls4ml
    except ImportError as err:
        return f"hls4ml comparison: not run (hls4ml cannot be imported: {err})."
    rows = []
    for name in models:
        for rf in reuse:
            try:
                rows.append(compare(name, rf, samples, hls4ml))
            except Exception as err:  # report, keep going: the bench must print its table
                rows.append([name, rf, "-", "-", f"failed: {type(err).__name__}: {err}"[:80]])
    headers = ("model", "RF", "hls4ml build+csim (s)", "bit-identical", "max |diff|")
    return (f"hls4ml {hls4ml.__version__} (Vitis backend, io_parallel, every type {TYPE}, "
            f"accumulators {ACCUM}) vs kiln (`{KILN_PIPELINE}`, exact accumulators, "
            f"interpreter = kiln's fpga C-sim), {samples} inputs uniform in [-4, 4], outputs "
            "before any final softmax:\n\n```\n" + format_rows(headers, rows) + "\n```")
