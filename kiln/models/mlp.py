"""Fully connected models: the hls4ml jet tagger and a small MLP for the 8×8 digits."""

from __future__ import annotations

import torch
from torch import nn


class JetMLP(nn.Module):
    """hls4ml's jet-tagging MLP: 16 → 64 → 32 → 32 → 5, ReLU, softmax output.

    The classic FPGA benchmark (hls4ml tutorial, part 1): 16 jet substructure features in, the
    probabilities of 5 jet classes (g, q, W, Z, t) out. Input (N, 16), output (N, 5), rows sum
    to 1. Parameters: 4,389 (1,088 + 2,080 + 1,056 + 165). Weights are random (seeded): the
    model exists to be compiled, not to tag jets.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 64)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(64, 32)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(32, 32)
        self.relu3 = nn.ReLU()
        self.fc4 = nn.Linear(32, 5)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.fc1(x))
        x = self.relu2(self.fc2(x))
        x = self.relu3(self.fc3(x))
        return self.softmax(self.fc4(x))


class DigitsMLP(nn.Module):
    """MLP for scikit-learn's 8×8 digits: flatten 64 → 32 → ReLU → 10 logits.

    Input (N, 1, 8, 8) with pixels scaled to [0, 1] (the same tensors as `DigitsCNN`; the
    flatten is part of the model), output (N, 10) logits. Parameters: 2,410 (2,080 + 330).
    The shipped weights (weights/digits_mlp.npz, from `python -m kiln.models.train_digits`)
    make it a real classifier, the subject of the pruning and quantization examples.
    """

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, 32)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(self.flatten(x))))
