"""The bundled model zoo: small, deterministic PyTorch models that kiln compiles in its demo,
tests and benchmarks.

`MODELS` is built explicitly below (no scanning): each `ModelSpec` names a factory that returns
an eval-mode `nn.Module` whose weights come from a seed (or, for the digits models, from the
trained weights shipped in `kiln/models/weights/`), its batch-1 input shape and a way to make
example inputs. Random models get non-trivial normalization statistics (see `seeding`), so
passes such as batch-norm folding are tested on more than the identity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kiln.errors import KilnError
from kiln.models.convnets import Conv1dNet, DigitsCNN, LeNet5
from kiln.models.digits import load_digits_data, load_shipped_weights
from kiln.models.mlp import DigitsMLP, JetMLP
from kiln.models.mobilenet import MobileNetV2ish
from kiln.models.resnet import ResNet8
from kiln.models.seeding import build
from kiln.models.transformer import TransformerLayer

__all__ = [
    "MODELS",
    "ModelSpec",
    "example_inputs",
    "get_model",
    "list_models",
    "load_digits_data",
]

Factory = Callable[[int], nn.Module]
InputMaker = Callable[[tuple[int, ...], int], tuple[torch.Tensor, ...]]


def random_inputs(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, ...]:
    """One standard-normal float32 tensor of `shape`, drawn from a private generator."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator, dtype=torch.float32),)


def digits_inputs(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, ...]:
    """`shape[0]` distinct real test-split digits, chosen by `seed`, shaped (N, 1, 8, 8)."""
    x, _ = load_digits_data("test")
    if shape[0] > len(x):
        raise KilnError(f"batch {shape[0]} exceeds the {len(x)} digits in the test split")
    rows = np.random.default_rng(seed).choice(len(x), size=shape[0], replace=False)
    return (torch.from_numpy(x[np.sort(rows)]).reshape(shape),)


@dataclass(frozen=True)
class ModelSpec:
    """A bundled model: how to build it, what it eats, and what it is."""

    name: str
    factory: Factory
    input_shape: tuple[int, ...]
    description: str
    make_inputs: InputMaker = random_inputs

    def example_inputs(self, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Inputs for `factory(...)(*inputs)`: `input_shape` with its batch dim set to `batch`."""
        if batch < 1:
            raise KilnError(f"batch must be at least 1, got {batch}")
        return self.make_inputs((batch, *self.input_shape[1:]), seed)


def _seeded(cls: Callable[[], nn.Module], *, random_norms: bool = False) -> Factory:
    def factory(seed: int = 0) -> nn.Module:
        return build(cls, seed, random_norms=random_norms)
    return factory


def _trained(cls: Callable[[], nn.Module], filename: str) -> Factory:
    def factory(seed: int = 0) -> nn.Module:
        """`seed` is accepted for a uniform signature; trained weights make it irrelevant."""
        del seed
        return load_shipped_weights(build(cls, 0), filename)
    return factory


MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("jet_mlp", _seeded(JetMLP), (1, 16),
              "hls4ml jet-tagging MLP 16-64-32-32-5 with softmax (random weights)"),
    ModelSpec("lenet5", _seeded(LeNet5), (1, 1, 28, 28),
              "LeNet-5 for 1x28x28 with ReLU and max pooling (random weights)"),
    ModelSpec("digits_cnn", _trained(DigitsCNN, "digits_cnn.npz"), (1, 1, 8, 8),
              "two-conv CNN with batch norm for sklearn 8x8 digits (trained)",
              make_inputs=digits_inputs),
    ModelSpec("digits_mlp", _trained(DigitsMLP, "digits_mlp.npz"), (1, 1, 8, 8),
              "MLP 64-32-10 for sklearn 8x8 digits (trained)", make_inputs=digits_inputs),
    ModelSpec("resnet8", _seeded(ResNet8, random_norms=True), (1, 3, 32, 32),
              "MLPerf Tiny ResNet-8 for 3x32x32 (random weights and BN statistics)"),
    ModelSpec("mobilenet_v2ish", _seeded(MobileNetV2ish, random_norms=True), (1, 3, 32, 32),
              "MobileNetV2/V3-style net: inverted residuals, depthwise, SE, hardswish"),
    ModelSpec("transformer_layer", _seeded(TransformerLayer, random_norms=True), (1, 16, 64),
              "pre-LN transformer encoder layer, d_model 64, 4 heads, GELU MLP 128"),
    ModelSpec("conv1d_net", _seeded(Conv1dNet, random_norms=True), (1, 4, 64),
              "1-D conv net: conv1d-BN-ReLU-maxpool-conv1d-GAP-linear for (4, 64) signals"),
)}


def list_models() -> list[str]:
    """Names of the bundled models, sorted."""
    return sorted(MODELS)


def _spec(name: str) -> ModelSpec:
    spec = MODELS.get(name)
    if spec is None:
        raise KilnError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    return spec


def get_model(name: str, seed: int = 0) -> nn.Module:
    """Build bundled model `name` in eval mode, deterministically from `seed`."""
    return _spec(name).factory(seed)


def example_inputs(name: str, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Example inputs for bundled model `name` (real test digits for the digits models)."""
    return _spec(name).example_inputs(batch, seed)
