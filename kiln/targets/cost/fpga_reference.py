"""Published C-synthesis results of hls4ml designs: the data the FPGA estimator is fitted to
and checked against (`tests/unit/test_fpga_reference.py` holds it to stated error bands).

No vendor tool runs on this machine, so the only ground truth is what others synthesized and
published. Every number below is copied from the cited report; nothing is computed by kiln.
`reference_shapes` rebuilds a published design as the estimator's `LayerShape`s (same layer
sizes, widths and accumulator width as the synthesized design: hls4ml used one
`ap_fixed<16,6>` for every type, accumulators included), so `estimate_layers` costs exactly
what was synthesized.

What was searched and not usable: hls4ml's other synthesis-test baselines
(`test/pytest/baselines/**`) cover single small layers whose weights are random per run;
the hls4ml papers give their resource-vs-reuse curves as plots, not tables; FINN's figures
are for its own (non-hls4ml) architecture. The trained weights of the tutorial MLP are not
published in text form, so the DSP/LUT split of its constant multipliers cannot be fitted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.targets.cost.fpga_layers import LayerShape


@dataclass(frozen=True)
class RefLayer:
    """One layer row of a published report. A `pair` field holds the two rows of layers the
    report cannot tell apart (same size, anonymous instance names): compare as a sorted pair."""

    kind: str
    n_in: int
    n_out: int
    latency_cycles: int
    dsp: int | tuple[int, int]
    ff: int | tuple[int, int]
    lut: int | tuple[int, int]
    bram: int = 0


@dataclass(frozen=True)
class RefDesign:
    """A synthesized design: where it comes from, its settings, totals and layer rows."""

    name: str
    source: str
    what: str
    part: str
    clock_mhz: float
    reuse_factor: int
    bits: int
    total: dict[str, int]
    layers: tuple[RefLayer, ...] = field(default_factory=tuple)


TUTORIAL_MLP = RefDesign(
    "hls4ml_tutorial_part1_jet_mlp",
    "https://github.com/Liu-Zhiheng/hls4ml-pynqz2-vivado2019-2-results/blob/main/notebooks/"
    "part1_getting_started_vivado2019_2.ipynb (an executed copy of "
    "fastmachinelearning/hls4ml-tutorial part 1: the output of "
    "hls4ml.report.read_vivado_report in its last cell)",
    "hls4ml 1.2.0, Vivado HLS 2019.2, xcu250-figd2104-2L-e, 5 ns clock, io_parallel, Latency "
    "strategy, ReuseFactor 1, every type ap_fixed<16,6> (accumulators too); Keras MLP "
    "16-64-32-32-5, ReLU, softmax, trained with L1(1e-4), not pruned",
    "xcu250", 200, 1, 16,
    {"latency_cycles": 12, "ii": 1, "bram": 4, "dsp": 2118, "ff": 12562, "lut": 109753},
    (RefLayer("dense", 16, 64, 1, (495, 650), (2353, 2423), (24303, 27185)),
     RefLayer("relu", 64, 64, 0, 0, 0, 1792),
     RefLayer("dense", 64, 32, 1, 850, 3837, 50347),
     RefLayer("relu", 32, 32, 0, 0, 0, 896),
     RefLayer("dense", 32, 32, 1, (495, 650), (2353, 2423), (24303, 27185)),
     RefLayer("relu", 32, 32, 0, 0, 0, 896),
     RefLayer("dense", 32, 5, 1, 118, 417, 4031),
     RefLayer("softmax", 5, 5, 3, 5, 109, 261, bram=4)),
)
"""fc1 and fc3 (1024 products each) are the report's `dense_latency_..._s` and
`dense_latency_...` instances, which do not say which is which: both rows carry the pair."""

DENSE_1X2_ELU = RefDesign(
    "hls4ml_test_dense_1x2_elu",
    "https://github.com/fastmachinelearning/hls4ml/blob/main/test/pytest/baselines/Vivado/"
    "2020.1/test_dense-Vivado-io_parallel.json (model: test/pytest/test_keras_api.py "
    "test_dense)",
    "hls4ml synthesis-test baseline, Vivado HLS 2020.1, xcu250, 5 ns clock, io_parallel, "
    "ReuseFactor 1, ap_fixed<16,6>; Keras Dense(2) on one input with weights uniform in "
    "[1, 10) (wide constants: no shift-add shortcut), then an ELU lookup table. The Vitis "
    "2023.1 baseline reports the same figures",
    "xcu250", 200, 1, 16,
    {"latency_cycles": 2, "ii": 1, "bram": 1, "dsp": 2, "ff": 89, "lut": 190},
    (RefLayer("dense", 1, 2, 1, 2, 0, 0), RefLayer("elu", 2, 2, 1, 0, 0, 0, bram=1)),
)
"""Only the totals are published; the layer rows fix the design's shape (their resource
fields are not data and are not compared)."""

@dataclass(frozen=True)
class LutMultiplierRef:
    """LUT counts published for one multiplier size built in the fabric."""

    source: str
    what: str
    a_bits: int
    b_bits: int
    luts: tuple[int, ...]


LUT_MULTIPLIERS = LutMultiplierRef(
    "https://github.com/fastmachinelearning/hls4ml/issues/99 (2018-09-13)",
    "18x18-bit non-constant multipliers in LUTs: Vivado's LUT multiplier IP core 365 or 401 "
    "LUTs (by optimisation goal); hls4ml's products forced onto Mul_LUT in Vivado HLS 2018.2: "
    "~411 LUTs per multiplication",
    18, 18, (365, 401, 411))

DESIGNS = (TUTORIAL_MLP, DENSE_1X2_ELU)
OPS = {"dense": ("kiln.linear", "dense"), "relu": ("kiln.relu", "elementwise"),
       "softmax": ("kiln.softmax", "table"), "elu": ("kiln.elu", "table")}


def reference_shapes(design: RefDesign) -> list[LayerShape]:
    """The design's layers as estimator input (module docstring); names `<kind><index>`."""
    bits = design.bits
    shapes = []
    for i, ref in enumerate(design.layers):
        op, kind = OPS[ref.kind]
        name = f"{ref.kind}{i}"
        if kind == "dense":
            n = ref.n_in * ref.n_out
            shapes.append(LayerShape(name, op, kind, ref.n_in, ref.n_out, 1, n, n, bits, bits,
                                     bits, bits, n * bits, ref.n_out))
        else:
            shapes.append(LayerShape(name, op, kind, 1, ref.n_out, 1, 0, 0, bits, 0, bits,
                                     bits, 0, ref.n_out, row=ref.n_out))
    return shapes


__all__ = ["DENSE_1X2_ELU", "DESIGNS", "LUT_MULTIPLIERS", "TUTORIAL_MLP", "LutMultiplierRef",
           "RefDesign", "RefLayer", "reference_shapes"]
