"""The bundled PyTorch models: they build, run, keep their documented shapes and sizes, are
deterministic, and the shipped digits weights are accurate (no training here)."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.fx

from kiln.errors import KilnError
from kiln.models import MODELS, example_inputs, get_model, list_models, load_digits_data

# name: (output shape for batch B, with B in place of the batch dim; parameter count)
EXPECTED = {
    "jet_mlp": ((5,), 4_389),
    "lenet5": ((10,), 61_706),
    "digits_cnn": ((10,), 1_922),
    "digits_mlp": ((10,), 2_410),
    "resnet8": ((10,), 78_186),
    "mobilenet_v2ish": ((10,), 30_108),
    "transformer_layer": ((16, 64), 33_472),
    "conv1d_net": ((5,), 2_085),
}


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def test_registry_lists_every_model():
    assert list_models() == sorted(EXPECTED)
    for name, spec in MODELS.items():
        assert spec.name == name and spec.description and spec.input_shape[0] == 1


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("batch", [1, 4])
def test_model_runs_with_documented_shapes(name, batch):
    model = get_model(name)
    assert not model.training
    inputs = example_inputs(name, batch=batch)
    assert inputs[0].shape == (batch, *MODELS[name].input_shape[1:])
    assert inputs[0].dtype == torch.float32
    out = model(*inputs)
    assert out.shape == (batch, *EXPECTED[name][0])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_count_matches_docstring(name):
    model = get_model(name)
    count = sum(p.numel() for p in model.parameters())
    assert count == EXPECTED[name][1]
    assert f"Parameters: {count:,}" in (type(model).__doc__ or "")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_construction_is_deterministic_and_keeps_caller_rng(name):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first, second = get_model(name, seed=7), get_model(name, seed=7)
    assert torch.equal(torch.rand(1), before)  # building a model leaves the global RNG alone
    inputs = example_inputs(name, batch=2, seed=3)
    assert torch.equal(inputs[0], example_inputs(name, batch=2, seed=3)[0])
    assert torch.equal(first(*inputs), second(*inputs))


def test_seed_changes_random_weights():
    x = example_inputs("lenet5")
    assert not torch.equal(get_model("lenet5", seed=0)(*x), get_model("lenet5", seed=1)(*x))


@pytest.mark.parametrize("name", ["resnet8", "mobilenet_v2ish", "conv1d_net"])
def test_batch_norm_statistics_are_not_trivial(name):
    batch_norms = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)
    norms = [m for m in get_model(name).modules() if isinstance(m, batch_norms)]
    assert norms
    for bn in norms:
        mean, var = bn.running_mean, bn.running_var
        assert mean is not None and var is not None
        ones = torch.ones_like(bn.weight)
        assert mean.abs().max() > 0
        assert not torch.allclose(var, ones) and not torch.allclose(bn.weight, ones)
        assert var.min() >= 0.5 and var.max() <= 1.5


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_models_trace_with_torch_fx(name):
    model = get_model(name)
    inputs = example_inputs(name, batch=2)
    assert torch.equal(torch.fx.symbolic_trace(model)(*inputs), model(*inputs))


def test_jet_mlp_outputs_probabilities():
    out = get_model("jet_mlp")(*example_inputs("jet_mlp", batch=3))
    assert torch.allclose(out.sum(dim=-1), torch.ones(3))


def test_transformer_layer_dropout_is_inert_in_eval():
    model = get_model("transformer_layer")
    x = example_inputs("transformer_layer", batch=2)
    assert torch.equal(model(*x), model(*x))


@pytest.mark.parametrize(("name", "minimum"), [("digits_cnn", 0.95), ("digits_mlp", 0.93)])
def test_shipped_digits_weights_are_accurate(name, minimum):
    x, y = load_digits_data("test")
    logits = get_model(name)(torch.from_numpy(x))
    accuracy = float((logits.argmax(dim=1) == torch.from_numpy(y)).float().mean())
    assert accuracy >= minimum


def test_digits_data_split():
    x_train, y_train = load_digits_data("train")
    x_test, y_test = load_digits_data("test")
    assert x_train.shape == (1347, 1, 8, 8) and x_test.shape == (450, 1, 8, 8)
    assert str(x_test.dtype) == "float32" and str(y_test.dtype) == "int64"
    assert x_test.min() >= 0.0 and x_test.max() <= 1.0
    assert sorted(set(y_train.tolist())) == list(range(10))
    digits = example_inputs("digits_cnn", batch=4)[0]
    assert any(torch.equal(digits[0], torch.from_numpy(row)) for row in x_test)


def test_unknown_names_raise_kiln_error():
    with pytest.raises(KilnError, match=r"valid models: .*digits_cnn"):
        get_model("resnet50")
    with pytest.raises(KilnError, match="valid models"):
        example_inputs("nope")
    with pytest.raises(KilnError, match="valid splits"):
        load_digits_data("validation")
    with pytest.raises(KilnError, match="batch"):
        example_inputs("lenet5", batch=0)


def test_train_script_is_importable():
    module = importlib.import_module("kiln.models.train_digits")
    assert callable(module.main) and set(module.TRAINED) == {"digits_cnn", "digits_mlp"}
