"""The cpu target around the generated code: export, sanitizers, hostile names, determinism,
the build cache, and every user-facing error."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import kiln
from kiln.codegen.c import COptions, lower
from kiln.errors import KilnError
from kiln.ir.builder import new_function
from kiln.ir.graph import Module
from kiln.ir.interpret import interpret
from kiln.ir.location import Location
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops.nn_conv import Conv2d, Linear
from kiln.ir.ops.quant import Quantize
from kiln.ir.ops.shape import Reshape
from kiln.ir.types import I8, QuantType, TensorType
from kiln.models import example_inputs, get_model
from kiln.targets import cpu
from kiln.targets.toolchains import gcc

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None or shutil.which("make") is None,
                                reason="needs gcc and make")
SANITIZE = "-O1 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
HOSTILE = 'a"; system("rm -rf /"); //*/ \\\n??/'


def cache_dir(factory: pytest.TempPathFactory) -> Path:
    return factory.getbasetemp() / "kiln-cpu-cache"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cache_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def lenet(cache: Path) -> kiln.CompiledModel:
    """A model whose weights live in weights.bin (blob mode)."""
    return kiln.compile(get_model("lenet5"), example_inputs("lenet5"), target="cpu",
                        cache_dir=cache)


def run_export(directory: Path, inputs: list[np.ndarray], extra: str = "") -> np.ndarray:
    """`make example` in an exported directory, run it, parse what it prints."""
    subprocess.run(["make", "-s", "-j2", "example", f"EXTRA_CFLAGS=-Werror {extra}"],
                   cwd=directory, check=True, capture_output=True, timeout=600)
    return run_example(directory, inputs)


def run_example(directory: Path, inputs: list[np.ndarray]) -> np.ndarray:
    (directory / "input.bin").write_bytes(b"".join(x.astype("<f4").tobytes() for x in inputs))
    result = subprocess.run(["./example", "input.bin"], cwd=directory, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "runtime error" not in result.stderr and "Sanitizer" not in result.stderr
    return np.array(result.stdout.split(), dtype=np.float32)


def hostile_module() -> Module:
    """Every name a user controls carries C syntax: module, weights, arguments, locations."""
    module = Module(HOSTILE)
    func, b = new_function(module, "forward", [TensorType((1, 2, 5, 5))], [HOSTILE])
    loc = Location(file=HOSTILE + ".py", line=3, scope=HOSTILE)
    x = func.args[0]
    rng = np.random.default_rng(0)
    w = b.weight(HOSTILE, rng.standard_normal((3, 2, 3, 3)).astype(np.float32), loc=loc,
                 value_name=HOSTILE)
    y = b.add(Conv2d(padding=(1, 1, 1, 1)), x, w, name=HOSTILE, loc=loc)
    y = b.add(ew.Relu(), y, name="*/ int main", loc=loc)
    flat = b.add(Reshape(shape=(1, 75)), y, name="kiln_sgemm")
    fc = b.weight("in0", rng.standard_normal((4, 75)).astype(np.float32), value_name="out0")
    b.ret(b.add(Linear(), flat, fc, name="int"), y)
    return module


@pytest.fixture(scope="module")
def lenet_export(lenet: kiln.CompiledModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LeNet exported and its example program built with make (once for this module)."""
    out = lenet.export(tmp_path_factory.mktemp("lenet-export"))
    x = example_inputs("lenet5", seed=3)[0].numpy()
    assert np.array_equal(run_export(out, [x]), lenet(x).ravel())
    return out


def test_export_builds_with_gcc_and_make_only(lenet: kiln.CompiledModel,
                                              lenet_export: Path) -> None:
    names = sorted(p.name for p in lenet_export.iterdir())
    for required in ("Makefile", "example.c", "model.c", "model.h", "weights.bin",
                     "kiln_runtime.h", "kiln_gemm.c", "example"):
        assert required in names
    x = example_inputs("lenet5", seed=4)[0].numpy()
    assert np.array_equal(run_example(lenet_export, [x]), lenet(x).ravel())


def test_export_with_compiled_in_weights(cache: Path, tmp_path: Path) -> None:
    art = kiln.compile(get_model("jet_mlp"), example_inputs("jet_mlp"), target="cpu",
                       cache_dir=cache)
    assert art.report()["const_weights"] and art.report()["weights_bytes"] == 0
    out = art.export(tmp_path / "jet")
    assert not (out / "weights.bin").exists()
    x = example_inputs("jet_mlp", seed=5)[0].numpy()
    assert np.array_equal(run_export(out, [x]), art(x).ravel())


def test_wrong_weights_are_refused(lenet_export: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(lenet_export, out)
    blob = bytearray((out / "weights.bin").read_bytes())
    blob[200] ^= 1
    (out / "weights.bin").write_bytes(bytes(blob))
    (out / "input.bin").write_bytes(np.zeros(784, np.float32).tobytes())
    result = subprocess.run(["./example", "input.bin"], cwd=out, capture_output=True, text=True)
    assert result.returncode == 3 and "init failed: -5" in result.stderr


@pytest.mark.parametrize("name", ["transformer_layer", "mobilenet_v2ish"])
def test_sanitized_export_runs_clean(name: str, cache: Path, tmp_path: Path) -> None:
    art = kiln.compile(get_model(name), example_inputs(name), target="cpu", cache_dir=cache)
    x = example_inputs(name, seed=2)[0].numpy()
    got = run_export(art.export(tmp_path / name), [x], SANITIZE)
    want = art(x).ravel()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_sanitize_option_runs_the_sanitized_program(cache: Path) -> None:
    model, inputs = get_model("digits_cnn"), example_inputs("digits_cnn", 2)
    art = kiln.compile(model, inputs, target="cpu", cache_dir=cache, sanitize=True)
    assert "sanitized" in art.report()["runtime"]
    with torch.no_grad():
        want = model(*inputs).numpy()
    got = art(*inputs).numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_hostile_names_compile_to_safe_code(cache: Path, tmp_path: Path) -> None:
    module = hostile_module()
    art = kiln.compile(module, target="cpu", cache_dir=cache)
    for name, text in art.files.items():
        for bad in ("system(", "*/ int", '"; ', "??/"):
            assert bad not in text, (name, bad)
    x = np.random.default_rng(1).standard_normal((1, 2, 5, 5)).astype(np.float32)
    for got, want in zip(art(x), interpret(module, x)):
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    exported = art.export(tmp_path / "hostile")
    assert sorted(p.name for p in exported.iterdir()) == sorted(art.files)
    assert run_export(exported, [x]).size == 4 + 75


def test_torch_module_names_with_c_syntax(cache: Path) -> None:
    """torch refuses quotes in submodule names (its own code generation breaks), but takes
    these; they reach kiln as weight names and source scopes."""
    net = torch.nn.Sequential()
    net.add_module("fc); system(0); (", torch.nn.Linear(6, 3))
    net.add_module("*/ int x; /*", torch.nn.ReLU())
    net.add_module("a\\b??/", torch.nn.Linear(3, 2))
    x = torch.randn(2, 6)
    art = kiln.compile(net.eval(), (x,), target="cpu", cache_dir=cache)
    assert all("system(" not in text for text in art.files.values())
    with torch.no_grad():
        assert np.allclose(art(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-6)


def test_generated_files_are_deterministic() -> None:
    model, inputs = get_model("mobilenet_v2ish"), example_inputs("mobilenet_v2ish")
    first = kiln.run_passes(kiln.trace(model, inputs), "cpu")
    second = kiln.run_passes(kiln.trace(model, inputs), "cpu")
    a, b = lower(first, COptions()), lower(second, COptions())
    assert a.sources == b.sources and a.weights == b.weights
    c = lower(first, COptions(vector_width=8, const_weights=True))
    assert c.sources["kiln_config.h"] != a.sources["kiln_config.h"]


def test_second_compile_hits_the_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, inputs = get_model("digits_mlp"), example_inputs("digits_mlp")
    kiln.compile(model, inputs, target="cpu", cache_dir=cache)

    def no_compiler(*args: object, **kwargs: object) -> None:
        raise AssertionError("the compiler ran on a cache hit")

    monkeypatch.setattr(gcc, "compile_c", no_compiler)
    monkeypatch.setattr(gcc, "compile_objects", no_compiler)
    again = kiln.compile(model, inputs, target="cpu", cache_dir=cache)
    assert again.report()["cache_hit"]
    assert np.array_equal(again(*inputs).numpy(), again(*inputs).numpy())


def test_threads_build_with_openmp(cache: Path) -> None:
    model, inputs = get_model("resnet8"), example_inputs("resnet8", 2)
    # every region parallel (parallel_min_flops=0): the default cost rule leaves ResNet-8 at
    # batch 2 serial, and this test is about the threaded code
    art = kiln.compile(model, inputs, target="cpu", cache_dir=cache, threads=2,
                       parallel_min_flops=0)
    assert "-fopenmp" in art.report()["flags"]
    export = cache / "export"
    art.export(export)
    assert "#pragma omp parallel" in (export / "model.c").read_text()
    with torch.no_grad():
        want = model(*inputs).numpy()
    assert np.abs(art(*inputs).numpy() - want).max() <= 1e-4 * np.abs(want).max()


def test_bad_inputs_are_clear_errors(lenet: kiln.CompiledModel) -> None:
    x = example_inputs("lenet5")[0]
    with pytest.raises(KilnError, match=r"takes 1 input\(s\).*got 2"):
        lenet(x, x)
    with pytest.raises(KilnError, match=r"shape \[1, 1, 28, 27\], expected \[1, 1, 28, 28\]"):
        lenet(x[..., :27])
    with pytest.raises(KilnError, match=r"dtype float64, expected float32"):
        lenet(x.double())
    with pytest.raises(KilnError, match=r"not contiguous"):
        lenet(x.transpose(2, 3))


def test_missing_compiler_is_a_clear_error() -> None:
    with pytest.raises(KilnError, match="'no-such-cc' was not found"):
        kiln.compile(hostile_module(), target="cpu", cc="no-such-cc")


def test_failed_build_points_at_its_log(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = cpu.lower

    def broken(module: Module, options: COptions) -> object:
        program = real(module, options)
        program.sources["model.c"] += "\n#error kiln test failure\n"
        return program

    monkeypatch.setattr(cpu, "lower", broken)
    with pytest.raises(KilnError) as info:
        kiln.compile(hostile_module(), target="cpu", cache_dir=cache)
    hint = info.value.diagnostics[0].hint or ""
    log = Path(hint.split("the compiler log is ")[1])
    assert log.is_file() and "kiln test failure" in log.read_text()


def test_failed_runtime_object_points_at_its_own_log(cache: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime file that fails (built as its own cache entry inside the model's build) is
    reported with ITS log, not the model's (which compiled cleanly)."""
    real = cpu.lower

    def broken(module: Module, options: COptions) -> object:
        program = real(module, options)
        runtime = sorted(n for n in program.sources if n.startswith("kiln_") and n.endswith(".c"))
        assert runtime, "the model links no runtime file"
        program.sources[runtime[0]] += "\n#error kiln runtime test failure\n"
        return program

    monkeypatch.setattr(cpu, "lower", broken)
    with pytest.raises(KilnError) as info:
        kiln.compile(get_model("lenet5"), example_inputs("lenet5"), target="cpu",
                     cache_dir=cache)
    hint = info.value.diagnostics[0].hint or ""
    log = Path(hint.split("the compiler log is ")[1])
    assert log.is_file() and "kiln runtime test failure" in log.read_text()


def test_ops_without_kernels_are_named_before_gcc(monkeypatch: pytest.MonkeyPatch) -> None:
    module = Module("quantized")
    func, b = new_function(module, "forward", [TensorType((2, 3))], ["x"])
    q = TensorType((2, 3), QuantType(I8, (0.1,), (0,)))
    loc = Location(file="net.py", line=12, scope="quant")
    y = b.add(Quantize(to=q.dtype), func.args[0], loc=loc)
    b.ret(y)
    monkeypatch.setattr(gcc, "find", lambda cc: pytest.fail("gcc was looked for"))
    with pytest.raises(KilnError, match="cannot be compiled for the cpu target") as info:
        cpu.build(module, {})
    text = str(info.value)
    assert "net.py:12" in text and "kiln.quantize" in text and "int8" in text


def test_export_makefile_uses_the_march_option() -> None:
    """The exported Makefile builds for the `march` the artifact was compiled with."""
    module = kiln.trace(get_model("jet_mlp"), example_inputs("jet_mlp"))
    for march in ("native", "x86-64-v3"):
        makefile = lower(module, COptions(vector_width=8, march=march)).sources["Makefile"]
        assert f"-march={march} " in makefile
