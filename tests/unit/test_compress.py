"""kiln.compress: pruning masks through fine-tuning, channel pruning on the torch side, the
fine-tuning loop (loss falls, deterministic, global RNG untouched) and bad input.

Numerics: a channel-shrunk torch model equals kiln's `fold-batchnorm,prune{method=l1-channel}`
module within 1e-5 relative (max|Δ|/max|ref|) on random normal inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import rel_error
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kiln
from kiln.compress import (
    accuracy,
    apply_masks,
    channel_plan,
    evaluate,
    finetune,
    masked_parameters,
    remove_masks,
    shrink_channels,
    sparsity,
)
from kiln.errors import KilnError
from kiln.models import get_model, load_digits_data
from kiln.passes.prune import pruning_masks

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """300 training digits (enough for a few fast steps)."""
    x, y = load_digits_data("train")
    return torch.from_numpy(x[:300]), torch.from_numpy(y[:300])


def _inputs(rng: np.random.Generator, batch: int = 4) -> tuple[torch.Tensor]:
    return (torch.from_numpy(rng.standard_normal((batch, 1, 8, 8)).astype(np.float32)),)


def _blobs(seed: int, n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Two Gaussian blobs in 8-D: a problem a linear model learns in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 8, generator=g) + 1.5 * (2 * y[:, None].float() - 1)
    return x, y


# -- masks ------------------------------------------------------------------------------------
def test_masks_stay_applied_through_finetune(digits, rng) -> None:
    model = get_model("digits_cnn")
    names = set(model.state_dict())
    pruned = kiln.run_passes(kiln.trace(model, _inputs(rng)),
                             "fold-batchnorm,prune{sparsity=0.6}")
    applied = apply_masks(model, pruned)
    assert set(applied) == {"conv1.weight", "conv2.weight", "fc.weight"}
    masks = masked_parameters(model)
    latent = {k: model.get_parameter(f"{k}_orig").detach().clone() for k in masks}
    finetune(model, digits, 2, optimizer="sgd", lr=0.05, weight_decay=1e-2, progress=False)
    for name, mask in masks.items():
        moved = model.get_parameter(f"{name}_orig")[~mask] != latent[name][~mask]
        assert torch.all(moved)  # weight decay shrinks the latent pruned weights...
        assert torch.all(model.get_submodule(name.rsplit(".", 1)[0]).weight[~mask] == 0)
    assert remove_masks(model) == sorted(masks)
    assert set(model.state_dict()) == names
    retraced = kiln.trace(model, _inputs(rng))
    for name, mask in pruning_masks(retraced).items():
        assert not np.any(mask[~masks[name].numpy()]), name  # ...but they stay zero
    assert sparsity(model)["conv2.weight"] == pytest.approx(applied["conv2.weight"])


def test_apply_masks_from_dict_skips_full_masks() -> None:
    model = get_model("digits_mlp")
    keep = np.ones((32, 64), bool)
    keep[:, ::2] = False
    applied = apply_masks(model, {"fc1.weight": keep, "fc2.weight": np.ones((10, 32), bool)})
    assert applied == {"fc1.weight": 0.5}
    assert torch.all(model.fc1.weight[:, ::2] == 0)
    assert list(masked_parameters(model)) == ["fc1.weight"]


@pytest.mark.parametrize("masks, match", [
    ({"fc3.weight": np.ones((1,), bool)}, "names no parameter"),
    ({"fc1.weight": np.ones((16, 64), bool)}, r"has shape \[16, 64\]"),
    ("conv1", "must be a kiln Module"),
])
def test_apply_masks_bad_input(masks, match) -> None:
    model = get_model("digits_mlp")
    with pytest.raises(KilnError, match=match):
        apply_masks(model, masks)
    assert not masked_parameters(model)  # nothing was installed


# -- channels ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["digits_cnn", "digits_mlp"])
def test_shrunk_torch_model_matches_kiln(name, rng) -> None:
    model = get_model(name)
    x = _inputs(rng)
    folded = kiln.run_passes(kiln.trace(model, x), "fold-batchnorm")
    kept = channel_plan(folded, sparsity=0.5)
    pruned = kiln.run_passes(folded, "prune{method=l1-channel,sparsity=0.5}")
    small = shrink_channels(model, x, kept)
    before = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in small.parameters()) <= 0.6 * before
    assert sum(p.numel() for p in model.parameters()) == before  # the original is untouched
    fresh = _inputs(rng, batch=4)
    got = small(*fresh).detach().numpy()
    assert rel_error(got, kiln.interpret(pruned, *fresh)[0]) <= TOLERANCE


def test_shrink_channels_bad_plan(rng) -> None:
    model = get_model("digits_cnn")
    x = _inputs(rng)
    with pytest.raises(KilnError, match=r"fc9\.weight"):
        shrink_channels(model, x, {"fc9.weight": np.array([0])})
    with pytest.raises(KilnError, match=r"must be in \[0, 8\)"):
        shrink_channels(model, x, {"conv1.weight": np.array([0, 9])})
    with pytest.raises(KilnError, match=r"sparsity=1\.5"):
        channel_plan(kiln.trace(model, x), sparsity=1.5)


class Scale(nn.Module):
    """A per-channel scale kiln can prune through but shrink_channels cannot resize."""

    def __init__(self) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.linspace(0.5, 2.0, 4).reshape(4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s


def test_shrink_channels_refuses(rng) -> None:
    x = _inputs(rng)
    unknown = nn.Sequential(nn.Conv2d(1, 4, 3), Scale(), nn.Flatten(), nn.Linear(144, 3))
    with pytest.raises(KilnError, match=r"cannot resize 1 \(Scale\)"):
        shrink_channels(unknown.eval(), x, {"0.weight": np.array([0, 1])})
    blocked = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(),
                            nn.Linear(144, 3))
    with pytest.raises(KilnError, match=r"0\.weight cannot be pruned: .*reshapes the channel"):
        shrink_channels(blocked.eval(), x, {"0.weight": np.array([0, 1])})


# -- fine-tuning --------------------------------------------------------------------------------
def _linear(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(8, 2)


def test_finetune_reduces_loss_and_is_deterministic() -> None:
    data = _blobs(1)
    state = torch.get_rng_state()
    runs = []
    for _ in range(2):
        model = _linear(3)
        start = evaluate(model, data)["loss"]
        torch.manual_seed(12345)  # global state must not matter...
        history = finetune(model, data, 4, optimizer="sgd", lr=0.1, schedule="step",
                           weight_decay=1e-4, seed=7, progress=False)
        assert [h["epoch"] for h in history] == [1, 2, 3, 4]
        assert history[-1]["loss"] < start and history[-1]["accuracy"] > 0.9
        runs.append(model.weight.detach().clone())
    assert torch.equal(runs[0], runs[1])
    probe = torch.get_rng_state()
    torch.set_rng_state(state)
    model = _linear(3)
    torch.set_rng_state(probe)
    finetune(model, data, 1, seed=8, progress=False)
    assert torch.equal(torch.get_rng_state(), probe)  # ...nor change (fork_rng)
    assert not torch.equal(model.weight, runs[0])  # another seed, another run


def test_finetune_dataloader_and_callback() -> None:
    x, y = _blobs(2)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    model, seen = _linear(0), []
    history = finetune(model, loader, 2, optimizer="adam", schedule="none", eval_data=(x, y),
                       log=seen.append, progress=True)
    assert seen == history and history[0]["lr"] == history[1]["lr"] == 1e-3
    assert history[-1]["eval_accuracy"] == pytest.approx(accuracy(model, (x, y)))
    assert not model.training


@pytest.mark.parametrize("data, kwargs, match", [
    ((torch.zeros(0, 8), torch.zeros(0, dtype=torch.long)), {}, "train_data is empty"),
    ((torch.ones(4, 8), torch.zeros(3, dtype=torch.long)), {}, "4 inputs but 3 labels"),
    ((torch.ones(4, 8), torch.zeros(4)), {}, "integer class indices"),
    ((torch.ones(4, 5), torch.zeros(4, dtype=torch.long)), {}, r"batch of shape \[4, 5\]"),
    ((torch.ones(4, 8), torch.full((4,), 3)), {}, "label 3"),
    (torch.ones(4, 8), {}, "DataLoader or a pair"),
    (DataLoader(TensorDataset(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long))), {},
     "yields no batch"),
    (_blobs(0), {"optimizer": "rmsprop"}, "option optimizer='rmsprop'"),
    (_blobs(0), {"lr": -1.0}, "option lr=-1.0"),
    (_blobs(0), {"schedule": "linear"}, "option schedule='linear'"),
    (_blobs(0), {"weight_decay": -0.1}, "option weight_decay=-0.1"),
])
def test_finetune_bad_input(data, kwargs, match) -> None:
    with pytest.raises(KilnError, match=match):
        finetune(_linear(0), data, 1, progress=False, **kwargs)
