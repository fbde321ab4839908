"""Train the digits models and write their shipped weights: `python -m kiln.models.train_digits`.

Deterministic: one thread, fixed seeds, fixed split, shuffling from a private generator, so a
rerun on the same torch version writes the same kiln/models/weights/*.npz bytes. Takes a few
seconds on one core. Prints each epoch's mean training loss and test accuracy.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kiln.models.convnets import DigitsCNN
from kiln.models.digits import load_digits_data, save_state_dict
from kiln.models.mlp import DigitsMLP

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SEED = 0
BATCH_SIZE = 64
TRAINED: dict[str, tuple[Callable[[], nn.Module], int, float]] = {
    # name: (constructor, epochs, learning rate)
    "digits_cnn": (DigitsCNN, 30, 1e-2),
    "digits_mlp": (DigitsMLP, 40, 1e-2),
}


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of `model` (in eval mode) on (x, y)."""
    model.eval()
    return float((model(x).argmax(dim=1) == y).float().mean())


def train_one(name: str, *, epochs: int | None = None, log: Callable[[str], None] = print
              ) -> tuple[nn.Module, float]:
    """Train model `name` from seed `SEED`; return it (eval mode) and its test accuracy."""
    make, default_epochs, lr = TRAINED[name]
    torch.manual_seed(SEED)
    model = make()
    x_train, y_train = (torch.from_numpy(a) for a in load_digits_data("train"))
    x_test, y_test = (torch.from_numpy(a) for a in load_digits_data("test"))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    total_epochs = epochs or default_epochs
    # Cosine decay to zero: the last epochs settle instead of ending on an Adam spike.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_epochs)
    loss_fn = nn.CrossEntropyLoss()
    order = torch.Generator().manual_seed(SEED)
    test_acc = 0.0
    for epoch in range(1, total_epochs + 1):
        model.train()
        total = 0.0
        for idx in torch.randperm(len(x_train), generator=order).split(BATCH_SIZE):
            optimizer.zero_grad()
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        schedule.step()
        test_acc = accuracy(model, x_test, y_test)
        log(f"{name} epoch {epoch:3d}  loss {total / len(x_train):.4f}  test acc {test_acc:.4f}")
    return model.eval(), test_acc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR,
                        help="where to write <name>.npz (default: the package's weights/)")
    parser.add_argument("--models", nargs="+", choices=sorted(TRAINED), default=sorted(TRAINED))
    parser.add_argument("--epochs", type=int, default=None, help="override every model's epochs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    np.random.seed(SEED)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        start = time.perf_counter()
        model, test_acc = train_one(name, epochs=args.epochs)
        path = args.out_dir / f"{name}.npz"
        save_state_dict(model, path)
        params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {params} parameters, test accuracy {test_acc:.4f}, "
              f"{time.perf_counter() - start:.1f} s -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
