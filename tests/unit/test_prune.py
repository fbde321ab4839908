"""prune: magnitude pruning (per layer and global, names kept for the torch side) and l1-channel
pruning that physically shrinks layers (parameters and FLOPs fall by >= 40 % at 50 %).

Numerics: a channel-pruned model equals the unpruned model whose consumers ignore the removed
channels (their input weights zeroed there), within 1e-5 relative (max|Δ|/max|ref|) on random
inputs — the kept channels are computed exactly as before."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pytest
from conftest import rel_error

import kiln
import kiln.passes.prune  # registers the pass
from kiln.compiler.pass_manager import PassManager, run_passes
from kiln.errors import KilnError
from kiln.ir.builder import Builder, new_function
from kiln.ir.costs import module_summary
from kiln.ir.graph import Module, Value
from kiln.ir.interpret import interpret, sample_inputs
from kiln.ir.ops.elementwise import Add, Relu
from kiln.ir.ops.nn_conv import Conv2d, Linear
from kiln.ir.ops.nn_norm import BatchNorm
from kiln.ir.ops.nn_pool import AdaptiveAvgPool2d, MaxPool2d
from kiln.ir.ops.shape import Concat, Flatten, Reshape
from kiln.ir.types import TensorType
from kiln.passes.prune import pruning_masks, torch_name
from kiln.passes.prune_channels import kept_channels, plan_channels
from kiln.passes.registry import PassContext

TOLERANCE = 1e-5
Body = Callable[[Builder, Value, np.random.Generator], list[Value]]


def build(body: Body, shape: tuple[int, ...], rng: np.random.Generator) -> Module:
    module = Module("t")
    func, b = new_function(module, "forward", [TensorType(shape)], ["x"])
    b.ret(*body(b, func.args[0], rng))
    return module


def randn(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def conv(b: Builder, x: Value, rng: np.random.Generator, name: str, out: int,
         groups: int = 1) -> Value:
    w = b.weight(f"{name}.weight", randn(rng, out, x.type.shape[1] // groups, 3, 3))
    bias = b.weight(f"{name}.bias", randn(rng, out))
    return b.add(Conv2d(padding=(1, 1, 1, 1), groups=groups), x, w, bias, name=name)


def linear(b: Builder, x: Value, rng: np.random.Generator, name: str, out: int) -> Value:
    w = b.weight(f"{name}.weight", randn(rng, out, x.type.shape[-1]))
    return b.add(Linear(), x, w, b.weight(f"{name}.bias", randn(rng, out)), name=name)


def batch_norm(b: Builder, x: Value, rng: np.random.Generator, name: str) -> Value:
    c = x.type.shape[1]
    params = [b.weight(f"{name}.{p}", rng.uniform(0.5, 1.5, c).astype(np.float32))
              for p in ("weight", "bias", "running_mean", "running_var")]
    return b.add(BatchNorm(), x, *params, name=name)


def ctx() -> PassContext:
    return PassContext("prune")


def consumers_ignoring_removed(module: Module, sparsity: float, scope: str = "layer") -> Module:
    """The unpruned module whose conv/linear inputs ignore the channels prune removes."""
    plan = plan_channels(module, sparsity, scope, (), ctx())
    copy = module.clone()
    copy.weights = dict(module.weights)
    for op, cuts in plan.slices.items():
        if not op.isa((Conv2d, Linear)):
            continue
        for index, axis, space in cuts:
            if (index, axis) != (1, 1):  # (1, 0) and (2, 0): the layer's own outputs
                continue
            name = op.operands[index].producer.kind.name  # type: ignore[union-attr]
            w = np.array(copy.weights[name])
            removed = np.setdiff1d(np.arange(w.shape[1]), plan.indices(space))
            w[:, removed] = 0
            copy.weights[name] = w
    return copy


def check_channels(module: Module, sparsity: float = 0.5, scope: str = "layer",
                   seeds: int = 2) -> Module:
    """Prune; outputs match `consumers_ignoring_removed` within TOLERANCE."""
    out = run_passes(module, f"prune{{method=l1-channel,sparsity={sparsity},scope={scope}}}")
    want_module = consumers_ignoring_removed(module, sparsity, scope)
    for seed in range(200, 200 + seeds):
        inputs = sample_inputs(module.main, seed)
        for got, want in zip(interpret(out, *inputs), interpret(want_module, *inputs)):
            assert rel_error(got, want) <= TOLERANCE
    return out


def weight_shape(module: Module, name: str) -> tuple[int, ...]:
    return tuple(module.weights[name].shape)


# -- magnitude -----------------------------------------------------------------------------------
def mlp(b: Builder, x: Value, rng: np.random.Generator) -> list[Value]:
    h = b.add(Relu(), linear(b, x, rng, "fc1", 32))
    return [linear(b, h, rng, "fc2", 10)]


def test_magnitude_layer_zeroes_the_smallest_of_each_weight(rng: np.random.Generator) -> None:
    module = build(mlp, (4, 20), rng)
    out = run_passes(module, "prune{sparsity=0.7}")
    assert str(out) == str(module)  # same names, same types
    for name in ("fc1.weight", "fc2.weight"):
        before, after = module.weights[name], out.weights[name]
        zeros = after == 0
        assert zeros.sum() == round(0.7 * after.size)
        assert np.abs(before[zeros]).max() <= np.abs(before[~zeros]).min()
        assert np.array_equal(after[~zeros], before[~zeros])
    assert np.array_equal(out.weights["fc1.bias"], module.weights["fc1.bias"])


def test_magnitude_global_uses_one_threshold(rng: np.random.Generator) -> None:
    module = build(mlp, (4, 20), rng)
    module.weights["fc2.weight"] = module.weights["fc2.weight"] * 0.1  # small layer
    result = PassManager("prune{sparsity=0.5,scope=global}").run(module)
    out = result.module
    names = ("fc1.weight", "fc2.weight")
    removed = np.concatenate([module.weights[n][out.weights[n] == 0] for n in names])
    kept = np.concatenate([module.weights[n][out.weights[n] != 0] for n in names])
    total = sum(module.weights[n].size for n in names)
    assert removed.size == round(0.5 * total)
    assert np.abs(removed).max() <= np.abs(kept).min()
    assert (out.weights["fc2.weight"] == 0).mean() > 0.9  # the small layer goes first
    assert result.records[0].statistics["zeroed"] == removed.size


def test_masks_map_to_torch_names_after_fold_batchnorm() -> None:
    from kiln.models import example_inputs, get_model
    module = kiln.trace(get_model("digits_cnn"), example_inputs("digits_cnn", batch=2))
    out = run_passes(module, "fold-batchnorm,prune{sparsity=0.5,skip=fc}")
    assert torch_name("conv1.weight.bnfold") == "conv1.weight"
    masks = pruning_masks(out)
    assert set(masks) == {"conv1.weight", "conv2.weight", "fc.weight"}
    assert masks["conv2.weight"].mean() == pytest.approx(0.5, abs=0.01)
    assert masks["fc.weight"].all()  # skipped
    torch_params = dict(get_model("digits_cnn").named_parameters())
    for name, mask in masks.items():
        assert tuple(torch_params[name].shape) == mask.shape


def test_skip_and_bad_options_name_the_option(rng: np.random.Generator) -> None:
    module = build(mlp, (4, 20), rng)
    out = run_passes(module, "prune{sparsity=0.5,skip=fc1}")
    assert np.array_equal(out.weights["fc1.weight"], module.weights["fc1.weight"])
    for pipeline, message in [("prune{sparsity=1.0}", "option sparsity=1.0 is outside"),
                              ("prune{sparsity=-0.1}", "option sparsity=-0.1 is outside"),
                              ("prune{method=l1-channel,sparsity=1.5}", "sparsity=1.5"),
                              ("prune{skip=conv9}", "option skip names conv9")]:
        with pytest.raises(KilnError, match=message) as info:
            run_passes(module, pipeline, reproducer=False)
        assert "pass 'prune'" in str(info.value)


def test_zero_sparsity_changes_nothing(rng: np.random.Generator) -> None:
    module = build(mlp, (4, 20), rng)
    for method in ("magnitude", "l1-channel"):
        result = PassManager(f"prune{{method={method},sparsity=0.0}}").run(module)
        assert not result.records[0].changed and result.module == module


# -- channels ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["digits_cnn", "resnet8"])
def test_channel_pruning_shrinks_params_and_flops(name: str) -> None:
    from kiln.models import example_inputs, get_model
    module = kiln.trace(get_model(name), example_inputs(name, batch=1))
    for pipeline in ("", "fold-batchnorm"):
        start = run_passes(module, pipeline) if pipeline else module
        out = check_channels(start, seeds=1)
        before, after = module_summary(start), module_summary(out)
        assert after["params"] <= 0.6 * before["params"]  # type: ignore[operator]
        assert after["flops"] <= 0.6 * before["flops"]  # type: ignore[operator]
        assert out.main.result_types == start.main.result_types


def cnn(b: Builder, x: Value, rng: np.random.Generator) -> list[Value]:
    """conv → bn → relu → pool → conv → flatten → linear."""
    h = b.add(Relu(), batch_norm(b, conv(b, x, rng, "c1", 8), rng, "bn1"))
    h = b.add(MaxPool2d(kernel=(2, 2), stride=(2, 2)), h)
    h = b.add(Flatten(), conv(b, h, rng, "c2", 6))
    return [linear(b, h, rng, "fc", 3)]


def test_flatten_into_linear_slices_channel_blocks(rng: np.random.Generator) -> None:
    module = build(cnn, (2, 3, 6, 6), rng)
    out = check_channels(module)
    assert weight_shape(out, "c1.weight") == (4, 3, 3, 3)
    assert weight_shape(out, "bn1.running_var") == (4,)
    assert weight_shape(out, "c2.weight") == (3, 4, 3, 3)
    assert weight_shape(out, "fc.weight") == (3, 3 * 9)  # 3 channels x 3x3 features
    assert weight_shape(out, "fc.bias") == (3,)  # the output layer keeps its channels


def residual(b: Builder, x: Value, rng: np.random.Generator) -> list[Value]:
    """Two convs feeding one add, then a depthwise conv, a concat and global pooling."""
    a = conv(b, x, rng, "a", 8)
    s = b.add(Add(), conv(b, b.add(Relu(), a), rng, "b", 8), a, name="sum")
    d = conv(b, s, rng, "dw", 8, groups=8)
    cat = b.add(Concat(axis=1), b.add(Relu(), d), conv(b, x, rng, "side", 4), name="cat")
    pooled = b.add(AdaptiveAvgPool2d(), conv(b, cat, rng, "c", 6))
    return [linear(b, b.add(Reshape(shape=(2, 6)), pooled), rng, "fc", 5)]


def test_residual_depthwise_and_concat_prune_consistently(rng: np.random.Generator) -> None:
    module = build(residual, (2, 3, 5, 5), rng)
    out = check_channels(module)
    assert weight_shape(out, "a.weight")[0] == weight_shape(out, "b.weight")[0] == 4
    assert weight_shape(out, "dw.weight") == (4, 1, 3, 3)
    assert weight_shape(out, "side.weight")[0] == 2
    assert weight_shape(out, "c.weight") == (3, 6, 3, 3)  # concat: 4 + 2 input channels
    dw = next(op for op in out.main.ops if op.results and op.results[0].name == "dw")
    assert dw.kind.groups == 4  # type: ignore[attr-defined]


def blocked(b: Builder, x: Value, rng: np.random.Generator) -> list[Value]:
    """conv `r` is added to the input itself; conv `s` is reshaped across its channels."""
    r = b.add(Add(), conv(b, x, rng, "r", 4), x, name="res")
    s = conv(b, r, rng, "s", 4)
    t = conv(b, r, rng, "t", 4)
    split = b.add(Reshape(shape=(2, 2, 2, 25)), s, name="split")
    return [split, b.add(Relu(), conv(b, t, rng, "u", 2))]


def test_refusals_are_logged_and_the_rest_is_pruned(rng: np.random.Generator,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    module = build(blocked, (2, 4, 5, 5), rng)
    with caplog.at_level(logging.WARNING, logger="kiln.passes"):
        result = PassManager("prune{method=l1-channel,sparsity=0.5}").run(module)
    text = caplog.text
    assert "'kiln.conv2d' %r: 'kiln.add' %res combines the channels with a value whose" in text
    assert "%s: 'kiln.reshape' %split reshapes the channel axis" in text
    out = result.module
    assert weight_shape(out, "r.weight")[0] == weight_shape(out, "s.weight")[0] == 4
    assert weight_shape(out, "t.weight") == (2, 4, 3, 3)
    assert weight_shape(out, "u.weight") == (2, 2, 3, 3)
    assert result.records[0].statistics["refused-layers"] == 3  # r, s and the output layer u
    check_channels(module)


def test_global_channel_scope_ranks_all_layers(rng: np.random.Generator) -> None:
    module = build(cnn, (2, 3, 6, 6), rng)
    module.weights["c2.weight"] = module.weights["c2.weight"] * 0.01
    out = check_channels(module, sparsity=0.3, scope="global")
    assert weight_shape(out, "c2.weight")[0] == 2  # 4 of the 14 channels, all from c2
    assert weight_shape(out, "c1.weight")[0] == 8


def test_skipped_layers_keep_their_channels(rng: np.random.Generator) -> None:
    module = build(cnn, (2, 3, 6, 6), rng)
    out = run_passes(module, "prune{method=l1-channel,sparsity=0.5,skip=c1}")
    assert weight_shape(out, "c1.weight") == (8, 3, 3, 3)
    assert weight_shape(out, "c2.weight") == (3, 8, 3, 3)


def test_kept_channels_name_torch_parameters() -> None:
    from kiln.models import example_inputs, get_model
    module = run_passes(kiln.trace(get_model("digits_cnn"), example_inputs("digits_cnn", 2)),
                        "fold-batchnorm")
    kept = kept_channels(plan_channels(module, 0.5, "layer", (), ctx()), module)
    assert {k: len(v) for k, v in kept.items()} == {"conv1.weight": 4, "conv2.weight": 8}
    out = run_passes(module, "prune{method=l1-channel,sparsity=0.5}")
    folded = module.weights["conv2.weight.bnfold"]
    assert np.array_equal(out.weights["conv2.weight.bnfold"],
                          folded[kept["conv2.weight"]][:, kept["conv1.weight"]])
