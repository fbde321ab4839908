"""The `tvm` target: kiln's fp32 IR lowered to TVM Relax, built for LLVM, checked numerically.

Bundled models against PyTorch (fresh random inputs, fp32 relative error max|a-b|/max|b| at most
1e-4), every lowering rule against `kiln.interpret` on one module of awkward shapes and
attributes (ceil-mode pools, asymmetric padding, groups, dilation, channel-last twins,
broadcasting), the errors a user can meet (unsupported ops, quantized IR, bad options, CUDA
without a GPU, a broken rule), the report, export, and that kiln loads TVM only for this
target. Model builds are shared through a module-scoped fixture; four models (their ops all in
the ops module) are marked slow.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm", reason="target tvm needs Apache TVM: pip install 'kiln[tvm]'")

import kiln  # noqa: E402
from kiln.errors import KilnError  # noqa: E402
from kiln.ir.builder import Builder  # noqa: E402
from kiln.ir.graph import Module, Value  # noqa: E402
from kiln.ir.interpret import interpret  # noqa: E402
from kiln.ir.ops import elementwise as ew  # noqa: E402
from kiln.ir.ops import layout  # noqa: E402
from kiln.ir.ops import nn_conv as cv  # noqa: E402
from kiln.ir.ops import nn_norm as nm  # noqa: E402
from kiln.ir.ops import nn_pool as pl  # noqa: E402
from kiln.ir.ops import reduce as rd  # noqa: E402
from kiln.ir.ops import shape as sh  # noqa: E402
from kiln.ir.ops.base import builtin_ops  # noqa: E402
from kiln.ir.ops.core import Cast  # noqa: E402
from kiln.ir.types import F32  # noqa: E402
from kiln.models import example_inputs, get_model, list_models  # noqa: E402
from kiln.targets.tvm_lower import RULES, STRUCTURAL, problems  # noqa: E402
from kiln.testing.graphgen import random_module  # noqa: E402
from kiln.testing.opnet import OpNet  # noqa: E402

TOL = 1e-4
SLOW_MODELS = {"digits_cnn", "conv1d_net", "resnet8", "mobilenet_v2ish"}
"""Behind `-m slow` (TVM builds take seconds each); their ops are all in `ops_module`."""
NOT_LOWERED = {"kiln.quantize", "kiln.dequantize", "kiln.requantize", "kiln.qadd",
               "kiln.qavg_pool1d", "kiln.qavg_pool2d", "kiln.qconv1d", "kiln.qconv2d",
               "kiln.qlinear", "kiln.qmatmul", "kiln.qreduce_mean", "kiln.qrescale",
               "kiln.fixed_activation", "kiln.lut_softmax", "kiln.fixed_layer_norm",
               "kiln.fixed_gelu", "kiln.qlut", "kiln.qmul"}
"""Integer ops: the target takes fp32 IR."""


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-12))


def fresh_inputs(shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    rng = np.random.default_rng()
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


@pytest.fixture(scope="module")
def compiled() -> Callable[..., kiln.CompiledModel]:
    """compiled(name, batch): each bundled model built once per test module."""
    cache: dict[tuple[str, int], kiln.CompiledModel] = {}

    def get(name: str, batch: int = 1) -> kiln.CompiledModel:
        if (name, batch) not in cache:
            cache[name, batch] = kiln.compile(get_model(name), example_inputs(name, batch),
                                              target="tvm")
        return cache[name, batch]

    return get


def check_against_torch(art: kiln.CompiledModel, name: str) -> None:
    model = get_model(name)
    shapes = [a.type.shape for a in art.ir.main.args]
    xs = fresh_inputs(shapes)
    with torch.no_grad():
        want = model(*[torch.from_numpy(x) for x in xs]).numpy()
    got = art(*xs)
    assert got.shape == want.shape
    assert rel_error(got, want) <= TOL


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_MODELS
                                  else n for n in list_models()])
def test_bundled_model_matches_pytorch(name: str, compiled: Callable[..., kiln.CompiledModel]
                                       ) -> None:
    check_against_torch(compiled(name), name)


def test_batch_4(compiled: Callable[..., kiln.CompiledModel]) -> None:
    art = compiled("lenet5", 4)
    assert art.ir.main.args[0].type.shape[0] == 4
    check_against_torch(art, "lenet5")


def test_fused_regions_are_inlined(compiled: Callable[..., kiln.CompiledModel]) -> None:
    art = compiled("transformer_layer")
    report = art.artifact.report()
    assert art.ir.op_counts()["kiln.fused"] == report["fused_regions_inlined"] > 0
    assert "R.nn.layer_norm" in art.files["model.relax.py"]


def test_report_names_versions_and_target(compiled: Callable[..., kiln.CompiledModel]) -> None:
    report = compiled("jet_mlp").artifact.report()
    assert report["kiln_version"] == kiln.__version__
    assert report["tvm_version"] == tvm.__version__
    assert report["tvm_target"].startswith('{"kind":"llvm"')
    assert report["device"] == "llvm" and report["opt_level"] == 3
    assert report["ops_lowered"]["kiln.linear"] >= 1


def test_export_loads_without_kiln(compiled: Callable[..., kiln.CompiledModel],
                                   tmp_path: Path) -> None:
    art = compiled("lenet5")
    out = art.export(tmp_path / "lenet5")
    assert {"model.so", "model.relax.py", "signature.json", "run_model.py"} <= {
        p.name for p in out.iterdir()}
    vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(str(out / "model.so")), tvm.cpu())
    (x,) = fresh_inputs([art.ir.main.args[0].type.shape])
    got = vm["main"](tvm.runtime.tensor(x, tvm.cpu())).numpy()
    np.testing.assert_array_equal(got, art(x))


# -- every rule against the interpreter -------------------------------------------------------



def conv_ops(n: OpNet, x: Value, v: Value) -> None:
    c1 = n.add(cv.Conv2d(stride=(2, 2), padding=(1, 0, 1, 2)), x, n.w(6, 3, 3, 3), n.w(6))
    n.out(c1,
          n.add(cv.Conv2d(padding=(1, 1, 1, 1), groups=6), c1, n.w(6, 1, 3, 3), n.w(6)),
          n.add(cv.Conv2d(padding=(2, 2, 2, 2), dilation=(2, 2), groups=3), c1, n.w(6, 2, 3, 3)),
          n.add(cv.ConvTranspose2d(stride=(2, 2), padding=(1, 1, 1, 1), output_padding=(1, 1),
                                   groups=2), c1, n.w(6, 2, 3, 3), n.w(4)),
          n.add(cv.ConvTranspose2d(padding=(1, 0, 1, 1), dilation=(2, 3), output_padding=(1, 2)),
                c1, n.w(6, 3, 2, 2), n.w(3)),
          n.add(nm.BatchNorm(eps=1e-3), x, n.w(3), n.w(3), n.w(3), n.w(3, positive=True)),
          n.add(cv.Conv1d(stride=(2,), padding=(2, 1), dilation=(2,)), v, n.w(4, 5, 3), n.w(4)),
          n.add(cv.Linear(), v, n.w(7, 16), n.w(7)),
          n.add(cv.MatMul(), v, n.add(sh.Transpose(perm=(0, 2, 1)), v)),
          n.add(cv.MatMul(), n.w(3, 1, 4, 5), v),
          n.add(cv.MatMul(), v, n.w(16)))


def pool_ops(n: OpNet, x: Value, v: Value) -> None:
    n.out(n.add(pl.MaxPool2d(kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1),
                             dilation=(1, 1), ceil_mode=True), x),
          n.add(pl.MaxPool2d(kernel=(2, 2), stride=(1, 2), dilation=(2, 1)), x),
          n.add(pl.AvgPool2d(kernel=(3, 3), stride=(2, 2), padding=(1, 0, 1, 0), ceil_mode=True,
                             count_include_pad=False), x),
          n.add(pl.AvgPool2d(kernel=(3, 3), stride=(2, 2), ceil_mode=True), x),  # overhangs
          n.add(pl.AvgPool2d(kernel=(2, 3), stride=(2, 2), padding=(1, 1, 0, 1)), x),
          n.add(pl.AdaptiveAvgPool2d(output_size=(3, 4)), x),
          n.add(pl.MaxPool1d(kernel=(3,), stride=(2,), padding=(1, 1)), v),
          n.add(pl.AvgPool1d(kernel=(3,), stride=(2,), ceil_mode=True), v),
          n.add(pl.AdaptiveAvgPool1d(output_size=(5,)), v),
          n.add(nm.LocalResponseNorm(size=3, alpha=1e-2), x))


def channels_last_ops(n: OpNet, x: Value) -> None:
    xl = n.add(sh.Transpose(perm=layout.NHWC_FROM_NCHW), x)
    n.out(n.add(layout.Conv2dNhwc(stride=(2, 1), padding=(1, 1, 0, 1)), xl, n.w(3, 3, 3, 4),
                n.w(4)),
          n.add(layout.MaxPool2dNhwc(kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1),
                                     dilation=(1, 1), ceil_mode=True), xl),
          n.add(layout.AvgPool2dNhwc(kernel=(3, 3), stride=(2, 2), padding=(0, 0, 0, 0),
                                     ceil_mode=True), xl),
          n.add(layout.AdaptiveAvgPool2dNhwc(output_size=(2, 3)), xl))


def shape_ops(n: OpNet, x: Value, v: Value) -> None:
    n.out(*n.b.create(sh.Split(sizes=(4, 5), axis=3), x).results,
          n.add(sh.Slice(axes=(1, 3), starts=(1, 0), ends=(3, 9), steps=(1, 3)), x),
          n.add(sh.Concat(axis=1), x, n.add(ew.Neg(), x), x),
          n.add(sh.Pad(pads=(0, 1, 2, 0, 0, 0, 1, 3), value=0.5), x),
          n.add(sh.Pad(pads=(0, 0, 2, 1, 0, 0, 1, 2), mode="reflect"), x),
          n.add(sh.Pad(pads=(0, 0, 1, 0, 0, 0, 0, 2), mode="edge"), x),
          n.add(sh.Expand(shape=(2, 2, 5, 16)), n.add(sh.Unsqueeze(axes=(1,)), v)),
          n.add(sh.Flatten(start_dim=1), n.add(sh.Identity(), n.add(sh.Dropout(p=0.2), x))),
          n.add(sh.Squeeze(axes=(0,)), n.add(Cast(to=F32), n.add(sh.Reshape(shape=(1, 160)), v))),
          x)


def row_ops(n: OpNet, v: Value) -> None:
    n.out(n.add(nm.Softmax(axis=1), v), n.add(nm.LogSoftmax(axis=2), v),
          n.add(nm.LayerNorm(normalized_ndim=1), v, n.w(16), n.w(16)),
          n.add(nm.LayerNorm(normalized_ndim=2, eps=1e-3), v),
          n.add(rd.ReduceSum(axes=(2,), keepdims=True), v), n.add(rd.ReduceMean(axes=(1, 2)), v),
          n.add(rd.ReduceMax(axes=(0,)), v), n.add(rd.ReduceMin(axes=(1,)), v))


def pointwise_ops(n: OpNet, v: Value) -> None:
    pos = n.add(ew.Add(), n.add(ew.Abs(), v), n.b.constant(np.array(0.5, np.float32)))
    unary = [ew.Neg(), ew.Exp(), ew.Erf(), ew.Relu(), ew.Relu6(), ew.Sigmoid(), ew.Tanh(),
             ew.Silu(), ew.Hardsigmoid(), ew.Hardswish(), ew.LeakyRelu(slope=0.2),
             ew.Gelu(), ew.Gelu(approximate="tanh"), ew.Clamp(min=-0.5, max=1.0),
             ew.Clamp(min=0.1), ew.Clamp(max=0.2), ew.Reciprocal()]
    n.out(*(n.add(k, v) for k in unary))
    n.out(*(n.add(k, pos) for k in (ew.Log(), ew.Sqrt(), ew.Rsqrt())))
    row, col = n.w(16), n.w(5, 1)
    n.out(n.add(ew.Sub(), v, row), n.add(ew.Mul(), col, v), n.add(ew.Div(), v, pos),
          n.add(ew.Pow(), pos, n.w(16)), n.add(ew.Maximum(), v, row),
          n.add(ew.Minimum(), col, v))


def ops_module() -> Module:
    n = OpNet("tvm_ops")
    x, v = n.func.args
    conv_ops(n, x, v)
    pool_ops(n, x, v)
    channels_last_ops(n, x)
    shape_ops(n, x, v)
    row_ops(n, v)
    pointwise_ops(n, v)
    Builder(n.func.body, module=n.module).ret(*n.outs)
    return n.module


def test_every_registered_op_is_lowered_or_integer() -> None:
    for name, cls in builtin_ops().items():
        lowered = cls in RULES or issubclass(cls, STRUCTURAL)
        assert lowered != (name in NOT_LOWERED), name


def test_the_ops_module_uses_every_rule() -> None:
    used = {type(op.kind) for op in ops_module().main.walk()}
    assert not {cls.NAME for cls in RULES if cls not in used}


def test_every_rule_matches_the_interpreter() -> None:
    """One build for every rule (fused regions: the bundled models' tests)."""
    module = ops_module()
    art = kiln.compile(module, target="tvm", pipeline="canonicalize")
    xs = fresh_inputs([(2, 3, 8, 9), (2, 5, 16)])
    got, want = art(*xs), interpret(module, *xs)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, i
        assert rel_error(g, w) <= TOL, f"output {i} ({module.main.outputs[i].name})"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [3, 11, 29, 47])
def test_random_graphs_match_the_interpreter(seed: int) -> None:
    """Random fp32 graphs from kiln's pass fuzzer (seed 47: a transposed convolution whose
    output padding exceeds its stride, which Relax alone refuses)."""
    module = random_module(seed, max_ops=8)
    assert problems(module) == ([], [])
    art = kiln.compile(module, target="tvm", pipeline="canonicalize")
    xs = fresh_inputs([a.type.shape for a in module.main.args])
    got, want = art(*xs), interpret(module, *xs)
    for g, w in zip(got if isinstance(got, tuple) else (got,), want):
        assert g.shape == w.shape
        assert rel_error(g, w) <= TOL


# -- errors -----------------------------------------------------------------------------------

SMALL = """
kiln.module @small {
  kiln.func @forward(%x: tensor<2x4xf32>) -> (tensor<2x4xf32>) {
    %y = kiln.relu(%x) : tensor<2x4xf32>
    kiln.return %y
  }
}
"""
UNSUPPORTED = """
kiln.module @bad {
  kiln.func @forward(%x: tensor<1x4xf32>) -> (tensor<1x4xf32>) {
    %q = kiln.quantize(%x) {to = q<i8, 0.1, 0>} : tensor<1x4xq<i8, 0.1, 0>> loc("net.py":3 "q1")
    %d = kiln.dequantize(%q) : tensor<1x4xf32> loc("net.py":4 "dq1")
    kiln.return %d
  }
}
"""


def test_quantized_ir_is_rejected_with_every_op_named() -> None:
    module = kiln.parse(UNSUPPORTED)
    with pytest.raises(KilnError) as info:
        kiln.compile(module, target="tvm", pipeline="canonicalize")
    text = str(info.value)
    assert "target tvm takes fp32 IR" in text
    assert "net.py:3 (q1)" in text and "net.py:4 (dq1)" in text
    assert "'kiln.quantize' op" in text and "'kiln.dequantize' op" in text


def test_unsupported_ops_are_all_named(monkeypatch: pytest.MonkeyPatch,
                                       compiled: Callable[..., kiln.CompiledModel]) -> None:
    """fp32 ops without a rule (simulated: two rules removed) are all named, with locations,
    fused regions included, before TVM builds anything."""
    from kiln.targets import tvm_lower
    from kiln.targets.tvm import build

    monkeypatch.delitem(tvm_lower.RULES, ew.Relu)
    monkeypatch.delitem(tvm_lower.RULES, cv.Linear)
    with pytest.raises(KilnError) as info:
        build(compiled("jet_mlp").ir, {})
    text = str(info.value)
    assert "cannot be lowered to TVM Relax" in text
    assert text.count("has no TVM lowering rule") == 7  # 4 linear + 3 relu, all at once
    assert "(fc1): error: 'kiln.linear' op has no TVM lowering rule" in text
    assert "(relu3): error: 'kiln.relu' op has no TVM lowering rule" in text


@pytest.mark.parametrize(("rule", "message"), [
    (lambda op, args: tvm.relax.op.reshape(args[0], [999]), "could not be lowered to Relax"),
    (lambda op, args: tvm.relax.op.sum(args[0], axis=[1]),
     r"lowers to a Relax tensor of shape \[2\], kiln infers \[2, 4\]"),
])
def test_a_broken_rule_is_a_kiln_error(monkeypatch: pytest.MonkeyPatch, rule: object,
                                       message: str) -> None:
    """A rule TVM rejects, or one whose Relax shape disagrees with kiln's, names the op."""
    from kiln.targets import tvm_lower

    monkeypatch.setitem(tvm_lower.RULES, ew.Relu, rule)
    with pytest.raises(KilnError, match=message) as info:
        kiln.compile(kiln.parse(SMALL), target="tvm")
    assert "'kiln.relu' op" in str(info.value)


@pytest.mark.parametrize(("options", "message"), [
    ({"device": "tpu"}, "target tvm has no device 'tpu'"),
    ({"opt_level": 7}, "opt_level must be an integer from 0 to 3"),
    ({"mcpu": "not-a-cpu"}, "unknown to TVM's LLVM"),
    ({"threads": 2}, "target 'tvm' has no option threads"),
])
def test_bad_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(KilnError, match=message):
        kiln.compile(kiln.parse(SMALL), target="tvm", **options)


def test_missing_tvm_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from kiln.targets.tvm import import_tvm

    monkeypatch.setitem(sys.modules, "tvm", None)  # `import tvm` now raises ImportError
    with pytest.raises(KilnError, match="target tvm needs Apache TVM") as info:
        import_tvm()
    assert 'pip install "kiln[tvm]"' in str(info.value)


def test_bad_inputs_are_clear_errors(compiled: Callable[..., kiln.CompiledModel]) -> None:
    art = compiled("jet_mlp")
    with pytest.raises(KilnError, match=r"has shape \[2, 16\], expected \[1, 16\]"):
        art(np.ones((2, 16), np.float32))
    with pytest.raises(KilnError, match="has dtype float64, expected float32"):
        art(np.ones((1, 16)))
    with pytest.raises(KilnError, match="takes 1 input"):
        art(np.ones((1, 16), np.float32), np.ones((1, 16), np.float32))


@pytest.mark.skipif(tvm.cuda(0).exist, reason="a CUDA GPU is present")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(KilnError, match="device='cuda', but TVM sees no CUDA GPU"):
        kiln.compile(kiln.parse(SMALL), target="tvm", device="cuda")


def test_generic_cpu_and_opt_level_0_build() -> None:
    art = kiln.compile(get_model("digits_mlp"), example_inputs("digits_mlp"), target="tvm",
                       mcpu=None, opt_level=0)
    assert '"mcpu"' not in art.artifact.report()["tvm_target"]
    check_against_torch(art, "digits_mlp")


def test_kiln_imports_tvm_only_for_the_tvm_target() -> None:
    code = ("import sys, kiln\n"
            "from kiln.targets.target import get_target\n"
            "get_target('tvm')\n"
            f"kiln.compile(kiln.parse({SMALL!r}), target='reference')\n"
            "assert 'tvm' not in sys.modules, 'tvm was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
