"""kiln.compress: the PyTorch side of model compression, for what needs gradients.

kiln's passes decide *what* to compress on the IR — `prune`, `sparsify`, `quantize`,
`fixed-point` — and this package carries those decisions back to the torch model so that
fine-tuning can win back the accuracy they cost, before the model is traced and compiled again:

- **masks** (`apply_masks`, `remove_masks`): unstructured pruning masks from a pruned kiln
  module, installed on the torch parameters of the same names; pruned weights stay exactly zero
  through training;
- **channels** (`channel_plan`, `shrink_channels`): structured pruning — a physically smaller
  torch model keeping the channels `prune{method=l1-channel}` keeps;
- **fake quantization** (`fake_quantize`, `export_qat`, `float_model`): quantization-aware
  training with kiln's int8 or `fixed<W,I>` numerics and a straight-through estimator, then
  back to a kiln Module with integer (`fold-qdq`) or fixed-point ops;
- **fine-tuning** (`finetune`, `evaluate`, `accuracy`): cross-entropy gradient descent with the
  user's optimizer, learning rate, schedule and L2 weight decay, deterministic from a seed.

A typical round trip (see each module's docstring for details):

    module = kiln.run_passes(kiln.trace(model, x), "fold-batchnorm,prune{sparsity=0.7}")
    apply_masks(model, module)
    finetune(model, (x_train, y_train), epochs=10, weight_decay=1e-4)
    remove_masks(model)
    module = kiln.run_passes(kiln.trace(model, x), "fold-batchnorm,quantize",
                             calibration_data=x_train[:512])
"""

from __future__ import annotations

from kiln.compress.channels import channel_plan, shrink_channels
from kiln.compress.fake_quant import fake_quantize_affine, fake_quantize_fixed
from kiln.compress.finetune import accuracy, evaluate, finetune
from kiln.compress.masks import apply_masks, masked_parameters, remove_masks, sparsity
from kiln.compress.qat import QATConfig, export_qat, fake_quantize, float_model

__all__ = ["QATConfig", "accuracy", "apply_masks", "channel_plan", "evaluate", "export_qat",
           "fake_quantize", "fake_quantize_affine", "fake_quantize_fixed", "finetune",
           "float_model", "masked_parameters", "remove_masks", "shrink_channels", "sparsity"]
