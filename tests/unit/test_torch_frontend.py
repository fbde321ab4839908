"""The PyTorch frontend: kiln.trace on small models, numerics against PyTorch, source locations,
weights, the fx fallback and the errors a user can meet."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kiln
from kiln.errors import KilnError, UnsupportedOpError
from kiln.frontend import torch_trace
from kiln.frontend.torch_trace import trace
from kiln.ir.graph import Module
from kiln.ir.interpret import interpret
from kiln.ir.verifier import verify

HERE = os.path.basename(__file__)


def line_of(marker: str) -> int:
    """The line number in this file of the source line ending with `# <marker>`."""
    with open(__file__) as f:
        for number, line in enumerate(f, start=1):
            if line.rstrip().endswith(f"# {marker}"):
                return number
    raise AssertionError(f"marker {marker} not found")


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    scale = max(float(np.max(np.abs(want))), 1e-12)
    return float(np.max(np.abs(got.astype(np.float64) - want)) / scale)


# -- models ------------------------------------------------------------------------------------
class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding="same", dilation=2, bias=False)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # conv1-call
        x = self.pool(F.relu(self.bn1(x)))
        x = F.max_pool2d(self.conv2(x), 3, stride=1, padding=1, ceil_mode=True)
        return self.fc(torch.flatten(x, 1))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, 4, 1)
        self.expand = nn.Conv2d(4, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.reduce(self.pool(x)))
        return x * F.hardsigmoid(self.expand(s))


class DepthwiseSeparable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.se = SqueezeExcite(8)
        self.pointwise = nn.Conv2d(8, 16, 1)
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.pointwise(self.se(self.act(self.bn(self.depthwise(x))))))


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(4, 8, 5, padding=2)
        self.bn = nn.BatchNorm1d(8)
        self.conv2 = nn.Conv1d(8, 8, 3, stride=2, groups=2, dilation=2)
        self.pool = nn.AvgPool1d(3, stride=2, padding=1, count_include_pad=False)
        self.head = nn.AdaptiveAvgPool1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool1d(F.silu(self.bn(self.conv1(x))), 2)
        return self.head(self.pool(F.leaky_relu(self.conv2(x), 0.2)))


class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.up1d = nn.ConvTranspose1d(4, 2, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.tanh(self.up(x))
        return y, self.up1d(y.mean(dim=2))


class BasicBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + x)


class ResNetTiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(8), BasicBlock(8))
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(F.relu6(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Attention(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 64), nn.GELU(approximate="tanh"),
                                 nn.Linear(64, dim))
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / (d // self.heads) ** 0.5
        manual = torch.softmax(scores, dim=-1) @ v
        fused = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = (manual + fused).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return self.norm2(x + self.mlp(x))


def encoder_layer() -> nn.Module:
    return nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True,
                                      activation="gelu")


class Functional(nn.Module):
    """Functional calls and tensor methods, one or two of each kind the frontend maps."""

    offset: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.5))
        self.register_buffer("offset", torch.linspace(-1, 1, 6), persistent=False)
        self.lrn = nn.LocalResponseNorm(3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a = (x + 1.0) * 0.5 - torch.pow(x, 2) / 3.0
        a = (1.0 - a).clamp(-2.0, 2.0) + F.elu(x) + F.hardtanh(x, -0.5, 0.5)
        a = torch.sigmoid(a) * torch.tanh(x) + F.gelu(x) - F.silu(x) * self.scale
        a = a + self.offset + torch.arange(6, dtype=torch.float32) + torch.full((6,), 0.25)
        b = torch.cat([a, x.abs().sqrt(), torch.exp(-x.abs())], dim=1)
        first, second = b.split([2, 7], dim=1)
        c = first.permute(0, 3, 1, 2).unsqueeze(1).squeeze(1)[:, :, :1].expand(2, 6, 3, 5)
        d = F.pad(second, (1, 2, 0, 1)) + F.pad(second, (1, 2, 0, 1), mode="reflect")
        e = F.pad(d, (1, 1, 1, 1), mode="replicate")[:, 1:-1:2, 2:, -3]
        f = F.log_softmax(b.mean(dim=(2, 3), keepdim=True), dim=1).squeeze()
        g = b.sum(-1).amax(dim=1) + b.amin(dim=(1, 2)).select(1, 0).unsqueeze(-1)
        h = torch.narrow(x, 3, 1, 3).contiguous().view(2, -1).amax(dim=1, keepdim=True)
        i = F.group_norm(b, 3) + self.lrn(b)
        return c, e, f, g + h, i, torch.maximum(x, -x).clone()


class Statistics(nn.Module):
    """SDPA with an additive mask, causal SDPA, var/std, max(dim), folded constants, int→float,
    and a plain tensor attribute (a lifted constant)."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0, 3.0, -0.5, 0.25])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.triu(torch.full((5, 5), -1e4), diagonal=1)
        a = F.scaled_dot_product_attention(x, x, x, attn_mask=mask, scale=0.3)
        b = F.scaled_dot_product_attention(x, x * 0.5, x, is_causal=True)
        s = x.var(dim=-1, keepdim=True, unbiased=False) + torch.std(x, dim=1, keepdim=True)
        m = torch.max(x, dim=2, keepdim=True).values * torch.arange(8) + self.table
        return a + b + s + m, x.max() - x.min()


# -- helpers -----------------------------------------------------------------------------------
def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial batch-norm statistics, so inference semantics are actually tested."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model


def check_numerics(model: nn.Module, inputs: tuple[torch.Tensor, ...], method: str = "auto",
                   tol: float = 1e-4) -> Module:
    module = trace(model, inputs, method=method)  # type: ignore[arg-type]
    verify(module)
    got = interpret(module, *inputs)
    model.eval()
    with torch.no_grad():
        want = model(*inputs)
    want_list = [want] if isinstance(want, torch.Tensor) else list(want)
    assert len(got) == len(want_list)
    for g, w in zip(got, want_list):
        assert rel_error(g, w.numpy()) <= tol
    return module


Case = tuple[Callable[[], nn.Module], tuple[int, ...]]
CASES: dict[str, Case] = {
    "mlp": (MLP, (4, 16)),
    "convnet": (ConvNet, (2, 3, 8, 8)),
    "depthwise_se": (DepthwiseSeparable, (2, 8, 12, 12)),
    "conv1d": (Conv1dNet, (2, 4, 32)),
    "conv_transpose": (Decoder, (2, 8, 5, 5)),
    "resnet": (ResNetTiny, (2, 3, 8, 8)),
    "attention": (Attention, (2, 6, 32)),
    "transformer": (encoder_layer, (2, 7, 32)),
    "functional": (Functional, (2, 3, 5, 6)),
    "statistics": (Statistics, (2, 3, 5, 8)),
}
FX_CASES = ["mlp", "convnet", "depthwise_se", "conv1d", "conv_transpose", "resnet", "functional",
            "statistics"]


def make_case(name: str, rng: np.random.Generator) -> tuple[nn.Module, tuple[torch.Tensor]]:
    factory, shape = CASES[name]
    seed = int(rng.integers(1 << 31))
    torch.manual_seed(seed)
    model = randomize(factory(), seed)
    return model, (torch.from_numpy(rng.standard_normal(shape).astype(np.float32)),)


# -- numerics ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_export_matches_torch(name: str, rng: np.random.Generator) -> None:
    model, inputs = make_case(name, rng)
    check_numerics(model, inputs, method="export")


@pytest.mark.parametrize("name", FX_CASES)
def test_fx_matches_torch(name: str, rng: np.random.Generator) -> None:
    model, inputs = make_case(name, rng)
    module = check_numerics(model, inputs, method="fx")
    assert all(op.loc.file == HERE for op in module.main.ops
               if op.name not in ("kiln.weight", "kiln.return", "kiln.constant"))


def test_transformer_is_traced_op_by_op_even_under_no_grad(rng: np.random.Generator) -> None:
    model, inputs = make_case("transformer", rng)
    with torch.no_grad():
        module = kiln.trace(model, inputs)
    counts = module.op_counts()
    assert counts["kiln.layer_norm"] == 2 and counts["kiln.softmax"] == 1
    assert counts["kiln.gelu"] == 1
    want = model.eval()(*inputs).detach().numpy()
    assert rel_error(interpret(module, *inputs)[0], want) <= 1e-4


def test_kept_ops_give_high_level_ir(rng: np.random.Generator) -> None:
    model, inputs = make_case("depthwise_se", rng)
    counts = trace(model, inputs).op_counts()
    for op in ("kiln.conv2d", "kiln.batch_norm", "kiln.hardswish", "kiln.hardsigmoid",
               "kiln.adaptive_avg_pool2d"):
        assert op in counts
    model, inputs = make_case("functional", rng)
    assert "kiln.local_response_norm" in trace(model, inputs).op_counts()


# -- weights, names, locations -----------------------------------------------------------------
def test_weights_are_named_by_fqn_and_float32(rng: np.random.Generator) -> None:
    model, inputs = make_case("resnet", rng)
    module = trace(model, inputs)
    assert "layer1.0.bn1.running_mean" in module.weights
    assert "layer1.1.conv2.weight" in module.weights
    state = model.state_dict()
    for name, array in module.weights.items():
        assert array.dtype == np.float32
        np.testing.assert_array_equal(array, state[name].numpy())
    assert not any("num_batches_tracked" in name for name in module.weights)
    names = {op.result.name for op in module.main.ops if op.name == "kiln.conv2d"}
    assert "layer1.0.conv1" in names


@pytest.mark.parametrize("method", ["export", "fx"])
def test_scalar_parameters_and_lifted_constants(method: str, rng: np.random.Generator) -> None:
    model, inputs = make_case("functional", rng)
    module = trace(model, inputs, method=method)  # type: ignore[arg-type]
    assert module.weights["scale"].shape == ()
    assert "offset" in module.weights
    model, inputs = make_case("statistics", rng)
    module = trace(model, inputs, method=method)  # type: ignore[arg-type]
    np.testing.assert_array_equal(module.weights["table"], Statistics().table.numpy())


def test_locations_name_file_line_and_module(rng: np.random.Generator) -> None:
    model, inputs = make_case("convnet", rng)
    for method in ("export", "fx"):
        module = trace(model, inputs, method=method)  # type: ignore[arg-type]
        conv = next(op for op in module.main.ops if op.name == "kiln.conv2d")
        assert (conv.loc.file, conv.loc.line, conv.loc.scope) == (HERE, line_of("conv1-call"),
                                                                   "conv1")
        assert conv.result.name == "conv1"


def test_arguments_are_named_from_forward_and_numpy_inputs_work() -> None:
    class TwoInputs(nn.Module):
        def forward(self, image: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            return image * 2.0 + bias

    x, b = np.ones((2, 3), np.float32), np.arange(3, dtype=np.float32)
    module = trace(TwoInputs(), (x, b))
    assert [a.name for a in module.main.args] == ["image", "bias"]
    np.testing.assert_allclose(interpret(module, x, b)[0], x * 2 + b)


def test_nested_outputs_are_flattened_and_mode_is_restored() -> None:
    class Nested(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = nn.Dropout(0.5)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
            return self.drop(x), [x + 1, x * 3]

    model = Nested().train()
    x = torch.randn(3, 4)
    module = trace(model, x)
    assert model.training and model.drop.training
    outs = interpret(module, x)
    assert len(outs) == 3
    np.testing.assert_allclose(outs[0], x.numpy())


# -- errors ------------------------------------------------------------------------------------
class UsesSortAndCumsum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.sort(self.fc(x), dim=-1).values  # sort-call
        return torch.cumsum(y, dim=-1) + 1.0  # cumsum-call


@pytest.mark.parametrize("method", ["export", "fx"])
def test_unsupported_ops_are_reported_together(method: str) -> None:
    with pytest.raises(UnsupportedOpError) as info:
        trace(UsesSortAndCumsum(), torch.randn(2, 8), method=method)  # type: ignore[arg-type]
    message = str(info.value)
    assert "aten.sort" in message and "aten.cumsum" in message
    assert f"{HERE}:{line_of('sort-call')}" in message
    assert f"{HERE}:{line_of('cumsum-call')}" in message
    assert "hint:" in message
    assert len(info.value.diagnostics) == 3  # the summary plus one per op


def test_data_dependent_control_flow_explains_both_failures() -> None:
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:
                return x * 2
            return x - 1

    with pytest.raises(KilnError) as info:
        trace(Branchy(), torch.randn(3))
    message = str(info.value)
    assert "torch.export failed" in message and "torch.fx symbolic tracing failed" in message
    assert len(message.splitlines()) <= 6


def test_wrong_input_shape_is_a_kiln_error() -> None:
    with pytest.raises(KilnError, match="fails on the example inputs"):
        trace(MLP(), torch.randn(4, 15))


def test_bad_inputs_and_method_are_rejected() -> None:
    with pytest.raises(KilnError, match="not a tensor"):
        trace(MLP(), [torch.randn(4, 16), "text"])
    with pytest.raises(KilnError, match="unknown trace method"):
        trace(MLP(), torch.randn(4, 16), method="jit")  # type: ignore[arg-type]


def test_auto_falls_back_to_fx_when_export_fails(monkeypatch: pytest.MonkeyPatch,
                                                 rng: np.random.Generator) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("export is broken today")

    monkeypatch.setattr(torch_trace, "capture_export", broken)
    model, inputs = make_case("mlp", rng)
    module = check_numerics(model, inputs, method="auto")
    assert module.op_counts()["kiln.linear"] == 2
