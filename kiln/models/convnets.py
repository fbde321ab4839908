"""Small convolutional models: LeNet-5, the 8×8-digits CNN and a 1-D conv net."""

from __future__ import annotations

import torch
from torch import nn


class LeNet5(nn.Module):
    """LeNet-5 for 1×28×28 images, the modern variant: ReLU and max pooling.

    conv 6@5×5 (pad 2) → ReLU → maxpool 2 → conv 16@5×5 → ReLU → maxpool 2 → flatten 400 →
    fc 120 → ReLU → fc 84 → ReLU → fc 10. LeCun's original used tanh and trainable subsampling;
    ReLU and max pooling are what every current tutorial (and hls4ml's examples) compile.
    Input (N, 1, 28, 28), output (N, 10) logits. Parameters: 61,706
    (156 + 2,416 + 48,120 + 10,164 + 850). Weights are random (seeded).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, kernel_size=5, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.fc1(self.flatten(x)))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)


class DigitsCNN(nn.Module):
    """CNN for scikit-learn's 8×8 digits, small enough for an FPGA demo.

    conv 8@3×3 (pad 1, no bias) → BN → ReLU → maxpool 2 → conv 16@3×3 (pad 1, no bias) → BN →
    ReLU → maxpool 2 → flatten 64 → linear 10. Input (N, 1, 8, 8) with pixels scaled to [0, 1],
    output (N, 10) logits. Parameters: 1,922 (72 + 16 + 1,152 + 32 + 650; the running
    statistics are buffers, not parameters). The shipped weights (weights/digits_cnn.npz, from
    `python -m kiln.models.train_digits`) reach over 95 % test accuracy.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        return self.fc(self.flatten(x))


class Conv1dNet(nn.Module):
    """1-D conv net for multichannel signals (the "1-D conv nets" family).

    conv1d 16@5 (pad 2, no bias) → BN → ReLU → maxpool1d 2 → conv1d 32@3 (pad 1) → ReLU →
    adaptive avg pool 1 → flatten → linear 5. Input (N, 4, 64), output (N, 5) logits.
    Parameters: 2,085 (320 + 32 + 1,568 + 165). Weights random, batch-norm statistics
    randomized (seeded).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(4, 16, kernel_size=5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm1d(16)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool1d(2)
        self.conv2 = nn.Conv1d(16, 32, kernel_size=3, padding=1)
        self.relu2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool1d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        x = self.gap(self.relu2(self.conv2(x)))
        return self.fc(self.flatten(x))
