"""Hostile names in an ONNX model: C/C++/Tcl/Python syntax, path separators, non-ASCII, empty.

Model names are user input that ends up in identifiers, comments, file names and Tcl scripts.
Each test imports one ONNX model whose every node, tensor and the graph itself carries a hostile
name, compiles it for cpu, fpga (HLS project + Tcl) and gpu (Triton), and checks that
- the numerics still match onnxruntime (and the fpga C-simulation is bit-exact with kiln's
  interpreter on the fixed-point IR),
- no generated source, script or README holds a hostile fragment verbatim (sanitized comments
  turn `"; system(` into `__ system[`, so the fragments cannot appear even inside comments),
- every generated file name is a plain relative path, and `save`/`export` write only under the
  folder they are given.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.codegen import names
from tests.conftest import rel_error

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs gcc/g++")

HOSTILE = {
    "c_call": '"; system("rm -rf /"); //',
    "tcl": "]]; exec ls; set x [",
    "comment_end": "*/ int evil; /*",
    "include": "#include </etc/passwd>",
    "define": "a\n#define PWNED 1\nimport os",
    "path": "../../etc/passwd",
    "abs_path": "/tmp/../../root/.bashrc",
    "backslash": "w\\",
    "python": '"""\nimport os; os.system("ls")\n"""',
    "tcl_subst": "${env(HOME)}[exec id]",
    "non_ascii": "Ωμέγα\u202e\u0000",
}
"""Each a name for a different tensor or node: one model exercises them all."""

CODE_FRAGMENTS = ("system(", "exec ls", "exec id", "*/", "#include </", "os.system",
                  "../", "${", "\u202e", "\x00", "Ω")
"""Pieces of the hostile names that must never reach generated code outside its comments (the
sanitized comments keep harmless characters: `../../etc/passwd` may be quoted in one)."""

INJECTED_LINES = ("\n#define PWNED", "\nimport os", 'os.system("ls")', "\n#include </etc")
"""What a name that escaped its comment or string would look like, anywhere in a file."""

_COMMENTS = {
    "c": re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL),
    "py": re.compile(r'"""(?:.|\n)*?"""|#[^\n]*'),
    "hash": re.compile(r"#[^\n]*"),
}
_STYLE = {".c": "c", ".h": "c", ".cpp": "c", ".hpp": "c", ".py": "py", ".tcl": "hash",
          ".cfg": "hash", "Makefile": "hash"}


GRAPH_NAMES = ["../../etc/passwd", '"; system("ls"); //', "", "Ωμέγα"]


def hostile_model(graph_name: str, rng: np.random.Generator) -> onnx.ModelProto:
    """x → Gemm(W, b) → Relu → Add(relu, gemm) → Gemm(W2, b2) → y, every name hostile."""
    h = HOSTILE
    x, y = h["c_call"], h["path"] + "/y"
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for shape, name in [((6, 4), h["tcl"]), ((6,), h["comment_end"]),
                                 ((3, 6), h["include"]), ((3,), h["backslash"])]]
    nodes = [
        helper.make_node("Gemm", [x, h["tcl"], h["comment_end"]], [h["define"]],
                         name=h["python"], transB=1),
        helper.make_node("Relu", [h["define"]], [h["abs_path"]], name=h["tcl_subst"]),
        helper.make_node("Add", [h["abs_path"], h["define"]], [h["non_ascii"]], name=""),
        helper.make_node("Gemm", [h["non_ascii"], h["include"], h["backslash"]], [y],
                         name=h["non_ascii"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, graph_name, [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def onnxruntime_outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {HOSTILE["c_call"]: x})[0])


def code_of(name: str, text: str) -> str | None:
    """`text` without its comments and docstrings; None for documentation and data files."""
    path = Path(name)
    style = _STYLE.get(path.suffix) or _STYLE.get(path.name)
    return None if style is None else _COMMENTS[style].sub(" ", text)


def check_files(files: dict[str, str]) -> None:
    """Plain relative names; no hostile name or fragment in any generated code."""
    assert files
    for name, text in files.items():
        parts = Path(name).parts
        assert name.isascii() and not Path(name).is_absolute(), name
        assert ".." not in parts and "\\" not in name and "\n" not in name, name
        for line in INJECTED_LINES:
            assert line not in text, f"{line!r} injected into {name}"
        code = code_of(name, text)
        if code is None:
            continue
        for hostile in HOSTILE.values():
            assert hostile not in code, f"{hostile!r} reached the code of {name}"
        for fragment in CODE_FRAGMENTS:
            assert fragment not in code, f"{fragment!r} reached the code of {name}"


def check_written_under(root: Path, *folders: str) -> None:
    """Every file below `root` lies inside one of `folders`, none is a symlink."""
    found = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            rel = path.relative_to(root)
            assert rel.parts[0] in folders, f"{rel} written outside the output folders"
            assert not path.is_symlink(), rel
            found += 1
    assert found > 0


@pytest.mark.parametrize("graph_name", GRAPH_NAMES, ids=["path", "c_call", "empty", "non_ascii"])
def test_hostile_names_compile_for_cpu(graph_name: str, rng: np.random.Generator,
                                       tmp_path: Path) -> None:
    model = hostile_model(graph_name, rng)
    module = kiln.import_onnx(model)
    x = rng.standard_normal((1, 4)).astype(np.float32)
    want = onnxruntime_outputs(model, x)
    assert rel_error(kiln.interpret(module, x)[0], want) < 1e-6
    again = kiln.parse(module.to_text(), module.weights)  # the text form survives the names
    assert again.to_text() == module.to_text()
    art = kiln.compile(module, (x,), target="cpu")
    assert rel_error(art(x), want) < 1e-5
    check_files(art.files)
    art.save(tmp_path / "out" / "saved")
    art.export(tmp_path / "out" / "exported")
    check_written_under(tmp_path / "out", "saved", "exported")


def test_hostile_names_compile_for_fpga(rng: np.random.Generator, tmp_path: Path) -> None:
    model = hostile_model(HOSTILE["tcl"], rng)
    module = kiln.import_onnx(model)
    x = rng.standard_normal((1, 4)).astype(np.float32)
    art = kiln.compile(module, (x,), target="fpga")
    fixed = kiln.interpret(art.artifact.module, x)[0]
    np.testing.assert_array_equal(art(x), fixed)  # the C-simulation is bit-exact
    assert rel_error(art(x), onnxruntime_outputs(model, x)) < 2e-2  # 16-bit fixed point
    assert "run_hls.tcl" in art.files
    check_files(art.files)
    art.save(tmp_path / "out" / "project")
    check_written_under(tmp_path / "out", "project")


def test_hostile_names_compile_for_gpu(rng: np.random.Generator, tmp_path: Path) -> None:
    model = hostile_model(HOSTILE["python"], rng)
    module = kiln.import_onnx(model)
    x = rng.standard_normal((1, 4)).astype(np.float32)
    art = kiln.compile(module, (x,), target="gpu")
    assert rel_error(np.asarray(art(x)), onnxruntime_outputs(model, x)) < 1e-5
    check_files(art.files)
    for name, text in art.files.items():
        if name.endswith(".py"):
            compile(text, name, "exec")  # still valid Python: no string or docstring escaped
    art.save(tmp_path / "out" / "gpu")
    check_written_under(tmp_path / "out", "gpu")


# -- torch submodule names -------------------------------------------------------------------------
def _named(names: tuple[str, str, str]) -> torch.nn.Sequential:
    model = torch.nn.Sequential()
    model.add_module(names[0], torch.nn.Linear(4, 6))
    model.add_module(names[1], torch.nn.ReLU())
    model.add_module(names[2], torch.nn.Linear(6, 3))
    return model.eval()


@pytest.mark.parametrize("target", ["cpu", "gpu", "fpga"])
def test_odd_torch_module_names_compile(target: str, rng: np.random.Generator) -> None:
    """Names torch itself can trace (no quotes): non-ASCII, `#`, `/`, `\\`, leading digits."""
    torch.manual_seed(int(rng.integers(1 << 30)))
    model = _named(("Ωx y#include </etc", "0a-b ${HOME}", "c/d\\e\u202e"))
    x = torch.from_numpy(rng.standard_normal((1, 4)).astype(np.float32))
    art = kiln.compile(model, (x,), target=target)
    with torch.no_grad():
        want = model(x).numpy()
    tolerance = 2e-2 if target == "fpga" else 1e-5
    assert rel_error(np.asarray(art(x)), want) < tolerance
    check_files(art.files)


def test_names_torch_cannot_trace_are_a_clear_error(rng: np.random.Generator) -> None:
    model = _named(('"; system("rm -rf /"); //', "]]; exec ls", "*/ int evil; /*"))
    x = torch.from_numpy(rng.standard_normal((1, 4)).astype(np.float32))
    with pytest.raises(kiln.KilnError, match="does not parse") as info:
        kiln.trace(model, x)
    assert "name submodules and parameters with Python identifiers" in str(info.value)


# -- the sanitizers themselves, on arbitrary text -------------------------------------------
@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(st.text(max_size=80))
def test_sanitizers_never_pass_syntax_through(text: str) -> None:
    ident = names.identifier(text)
    assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", ident) and len(ident) <= names.MAX_LENGTH
    safe = names.comment(text)
    assert safe.isascii() and "*/" not in safe and "/*" not in safe
    assert not set(safe) & set("\n\r\\?\"'{}();#*$`")
    file = names.file_name(text, ".cpp")
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.cpp", file) and not file.startswith("-")
    namer = names.Namer()
    first, second = namer.name(text), namer.name(text)
    assert first != second  # one identifier per request, however equal the hints
    assert first.startswith("v_") or not names.is_reserved(first)  # no keyword, no runtime name
