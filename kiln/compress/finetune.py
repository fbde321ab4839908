"""Fine-tuning: gradient descent that wins back what pruning and quantization cost.

    history = finetune(model, (x_train, y_train), epochs=10, optimizer="adam", lr=1e-3,
                       schedule="cosine", weight_decay=1e-4, seed=0)

The loop minimizes the cross-entropy of the model's logits over `train_data` (a DataLoader of
`(inputs, labels)` or a pair `(X, y)`, see `kiln.compress.data`). It only calls the model, so
whatever the model holds stays in force while it trains: pruning masks (`apply_masks`: pruned
weights stay exactly zero), fake quantization (`fake_quantize`: the straight-through estimator
carries gradients through the rounding), a channel-pruned architecture (`shrink_channels`).

**The user's knobs** and the recommended values for fine-tuning an already trained model:
- `optimizer`: `"adam"` (default; robust without tuning) or `"sgd"` (with `momentum`, 0.9).
- `lr`: the step size. Fine-tuning starts from a good solution, so it wants about a tenth of
  the training rate: the default is 1e-3 for Adam and 1e-2 for SGD; for QAT of an int8 model,
  1e-4 .. 1e-3 (larger steps jump between quantization levels).
- `schedule`: `"cosine"` (default: decays to 0 over the run, so the last epochs settle),
  `"step"` (multiply by `gamma`, 0.1, every `step_size` epochs, default a third of the run) or
  `"none"`.
- `weight_decay`: L2 regularization λ (adds λ·w to every gradient; for Adam, classic L2, not
  AdamW). 0 by default; 1e-4 .. 5e-4 helps a pruned model generalize. Masked weights are not
  revived by it.
- `batch_size` (pairs only; 64), `epochs`, `seed`.

**Determinism**: with the same seed and data, two runs give the same weights. A pair is
shuffled by a private `torch.Generator(seed)`; randomness inside the model (dropout) and a
DataLoader's own shuffling draw from the global generator, which is seeded with `seed` inside
`torch.random.fork_rng` — its state outside is restored afterwards, so nothing global changes.

**Reporting**: a tqdm progress bar over the batches (when tqdm is installed and `progress`),
one INFO line per epoch on the `kiln.compress` logger (loss, training accuracy, learning rate,
and the accuracy on `eval_data` when given), the same dict passed to `log` if given; the
history (a list of those dicts) is returned. The model is left in eval mode.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kiln.compress.data import TrainData, training_data
from kiln.errors import KilnError

logger = logging.getLogger("kiln.compress")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "step", "none")
DEFAULT_LR = {"adam": 1e-3, "sgd": 1e-2}
Record = dict[str, float]


@dataclass(frozen=True)
class TrainOptions:
    """The checked options of one `finetune` call (module docstring)."""

    epochs: int
    optimizer: str
    lr: float
    schedule: str
    weight_decay: float
    momentum: float
    batch_size: int
    step_size: int
    gamma: float

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs", "at least 1"),
            (self.optimizer in OPTIMIZERS, "optimizer", " or ".join(OPTIMIZERS)),
            (self.lr > 0 and math.isfinite(self.lr), "lr", "a positive number"),
            (self.schedule in SCHEDULES, "schedule", ", ".join(SCHEDULES)),
            (self.weight_decay >= 0, "weight_decay", "non-negative (L2 strength)"),
            (0 <= self.momentum < 1, "momentum", "in [0, 1)"),
            (self.batch_size >= 1, "batch_size", "at least 1"),
            (self.step_size >= 1, "step_size", "at least 1"),
            (0 < self.gamma <= 1, "gamma", "in (0, 1]"),
        ]
        for ok, option, want in checks:
            if not ok:
                raise KilnError(f"finetune: option {option}={getattr(self, option)!r} is "
                                f"invalid: must be {want}")

    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                                   weight_decay=self.weight_decay)
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)

    def make_schedule(self, optimizer: torch.optim.Optimizer
                      ) -> torch.optim.lr_scheduler.LRScheduler | None:
        if self.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs)
        if self.schedule == "step":
            return torch.optim.lr_scheduler.StepLR(optimizer, self.step_size, self.gamma)
        return None


def _progress(total: int | None, enabled: bool) -> Any:
    """A tqdm bar when tqdm is installed and wanted, else None."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="finetune", unit="batch", leave=False)


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, batch_size: int = 512) -> Record:
    """Mean cross-entropy and top-1 accuracy of `model` (eval mode) on `data`."""
    checked = training_data(data)
    model.eval()
    loss, correct, count = 0.0, 0, 0
    for x, y in checked.epoch(batch_size, torch.Generator().manual_seed(0)):
        logits = _forward(model, x)
        loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(dim=1) == y).sum())
        count += len(y)
    return {"loss": loss / max(count, 1), "accuracy": correct / max(count, 1)}


def accuracy(model: nn.Module, data: Any) -> float:
    """Top-1 accuracy of `model` on `data` (a pair (X, y) or a DataLoader)."""
    return evaluate(model, data)["accuracy"]


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    try:
        logits = model(x)
    except RuntimeError as exc:
        raise KilnError(f"train_data: {type(model).__name__} fails on a batch of shape "
                        f"{list(x.shape)}: {str(exc).splitlines()[0]}",
                        hint="the inputs must have the shape the model was built for") from exc
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise KilnError(f"finetune: {type(model).__name__} must return (N, classes) logits, "
                        f"got {getattr(logits, 'shape', type(logits).__name__)}")
    return logits


def _epoch(model: nn.Module, data: TrainData, opts: TrainOptions, optimizer: torch.optim.Optimizer,
           order: torch.Generator, bar: Any) -> Record:
    model.train()
    total, correct, count = 0.0, 0, 0
    for x, y in data.epoch(opts.batch_size, order):
        logits = _forward(model, x)
        if logits.shape[1] <= int(y.max()):
            raise KilnError(f"train_data has label {int(y.max())}, the model returns "
                            f"{logits.shape[1]} classes")
        loss = nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(y)
        correct += int((logits.detach().argmax(dim=1) == y).sum())
        count += len(y)
        if bar is not None:
            bar.update(1)
    return {"loss": total / max(count, 1), "accuracy": correct / max(count, 1)}


def _describe(record: Record, epochs: int) -> str:
    line = (f"epoch {int(record['epoch'])}/{epochs}: loss {record['loss']:.4f}, "
            f"train acc {100 * record['accuracy']:.2f} %, lr {record['lr']:.2e}")
    if "eval_accuracy" in record:
        line += f", eval acc {100 * record['eval_accuracy']:.2f} %"
    return line


def _train(model: nn.Module, data: TrainData, opts: TrainOptions, seed: int,
           eval_data: Any, bar: Any) -> Iterator[Record]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise KilnError(f"finetune: {type(model).__name__} has no trainable parameter")
    optimizer = opts.make_optimizer(params)
    schedule = opts.make_schedule(optimizer)
    order = torch.Generator().manual_seed(seed)
    for epoch in range(1, opts.epochs + 1):
        lr = float(optimizer.param_groups[0]["lr"])
        record = {"epoch": float(epoch), "lr": lr,
                  **_epoch(model, data, opts, optimizer, order, bar)}
        if schedule is not None:
            schedule.step()
        if eval_data is not None:
            measured = evaluate(model, eval_data)
            record.update(eval_loss=measured["loss"], eval_accuracy=measured["accuracy"])
        yield record


def finetune(model: nn.Module, train_data: Any, epochs: int = 5, *, optimizer: str = "adam",
             lr: float | None = None, schedule: str = "cosine", weight_decay: float = 0.0,
             momentum: float = 0.9, batch_size: int = 64, step_size: int | None = None,
             gamma: float = 0.1, seed: int = 0, eval_data: Any = None, progress: bool = True,
             log: Callable[[Record], None] | None = None) -> list[Record]:
    """Train `model` in place with cross-entropy (module docstring); returns the history, one
    dict per epoch: epoch, lr, loss, accuracy (training), eval_loss / eval_accuracy."""
    opts = TrainOptions(epochs, optimizer, DEFAULT_LR.get(optimizer, 1.0) if lr is None else lr,
                        schedule, weight_decay, momentum, batch_size,
                        step_size or max(1, epochs // 3), gamma)
    data = training_data(train_data)
    per_epoch = data.batches_per_epoch(batch_size)
    bar = _progress(None if per_epoch is None else per_epoch * epochs, progress)
    history: list[Record] = []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for record in _train(model, data, opts, seed, eval_data, bar):
                history.append(record)
                logger.info("finetune: %s", _describe(record, epochs))
                if log is not None:
                    log(record)
    finally:
        if bar is not None:
            bar.close()
        model.eval()
    return history


__all__ = ["OPTIMIZERS", "SCHEDULES", "TrainOptions", "accuracy", "evaluate", "finetune"]
