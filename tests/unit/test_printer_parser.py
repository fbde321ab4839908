"""The text format: print → parse → print is byte-identical, errors point at line:col."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

import numpy as np
import pytest

import kiln.ir.ops.core
import kiln.ir.ops.elementwise  # noqa: F401 - registers the elementwise ops
from kiln.errors import KilnError, ParseError, VerifyError
from kiln.ir.graph import Block, Func, Module, Op, make_op
from kiln.ir.location import Location
from kiln.ir.ops.attrs import Dense
from kiln.ir.ops.base import OpDef, lookup_op, register_op
from kiln.ir.ops.core import Constant, Return, Weight, Yield
from kiln.ir.ops.elementwise import Add, Clamp, Gelu, LeakyRelu, Relu
from kiln.ir.parser import parse, parse_location
from kiln.ir.printer import format_location
from kiln.ir.serialize import load_module, read_weights, save_module, weights_path
from kiln.ir.types import F16, F32, I8, DType, FixedType, QuantType, TensorType

ROUNDTRIP_DIR = Path(__file__).parents[1] / "filecheck" / "roundtrip"


# -- test-only ops (registered once per session, whichever test module comes first) --------------
@dataclass(frozen=True)
class RegionOpForTests(OpDef):
    """A test-only op with a region: its results are what the region yields."""

    NAME = "kiln.test_region"
    OPERANDS = ("inputs*",)
    NUM_RESULTS = None
    HAS_REGION = True
    label: str = ""


@dataclass(frozen=True)
class AttrsOpForTests(OpDef):
    """A test-only op with one attribute of every kind; the result is the operand."""

    NAME = "kiln.test_attrs"
    OPERANDS = ("input",)
    i: int = 0
    f: float = 1.0
    b: bool = False
    s: str = ""
    ints: tuple[int, ...] = ()
    floats: tuple[float, ...] = ()
    pair: tuple[int, float] = (0, 0.0)
    opt: int | None = None
    dt: DType = F32
    ty: TensorType | None = None
    dense: Dense | None = None

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        return (operands[0],)


@dataclass(frozen=True)
class PairOpForTests(OpDef):
    """A test-only op with two results, both of the operand's type."""

    NAME = "kiln.test_pair"
    OPERANDS = ("input",)
    NUM_RESULTS = 2

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        return (operands[0], operands[0])


K = TypeVar("K", bound=OpDef)


def _register(cls: type[K]) -> type[K]:
    """Register `cls`, or reuse the class another test module registered under its name."""
    existing = lookup_op(cls.NAME)
    return cast("type[K]", existing) if existing is not None else register_op(cls)


REGION = _register(RegionOpForTests)
ATTRS = _register(AttrsOpForTests)
PAIR = _register(PairOpForTests)

T2 = TensorType((2,), F32)
T4 = TensorType((1, 4), F32)


def roundtrip(module: Module) -> str:
    """Assert print → parse → print is stable and the parsed module equals the original."""
    text = module.to_text()
    again = parse(text, module.weights)
    assert again.to_text() == text
    assert again == module
    return text


def simple_module(weights: bool = False) -> Module:
    module = Module("digits_cnn")
    func = module.add_func(Func("forward", [T4], ["x"]))
    (x,) = func.args
    w = func.body.append(make_op(Weight(name="conv1.weight", type=T4), [], names=["conv1.weight"]))
    add = func.body.append(make_op(Add(), [x, w.result], Location("digits.py", 14, "conv1"),
                                   names=["conv1"]))
    relu = func.body.append(make_op(Relu(), [add.result], Location(scope="relu"), names=["relu"]))
    func.body.append(make_op(Return(), [relu.result]))
    if weights:
        module.weights["conv1.weight"] = np.arange(4, dtype=np.float32).reshape(1, 4)
    return module


# -- round trips -----------------------------------------------------------------------------------
def test_simple_module_text() -> None:
    text = roundtrip(simple_module())
    assert text == """\
kiln.module @digits_cnn {
  kiln.func @forward(%x: tensor<1x4xf32>) -> (tensor<1x4xf32>) {
    %conv1.weight = kiln.weight @conv1.weight : tensor<1x4xf32>
    %conv1 = kiln.add(%x, %conv1.weight) : tensor<1x4xf32> loc("digits.py":14 "conv1")
    %relu = kiln.relu(%conv1) : tensor<1x4xf32> loc("relu")
    kiln.return %relu
  }
}
"""
    assert "loc(" not in simple_module().to_text(locations=False)


def test_roundtrip_with_weights() -> None:
    module = simple_module(weights=True)
    roundtrip(module)
    assert parse(module.to_text()).weights == {}


def test_names_are_made_unique_and_numbers_skip_names() -> None:
    module = Module("m")
    func = module.add_func(Func("f", [T2, T2], [None, "1"]))
    a, b = func.args
    v = a
    for name in ["x", "x", None, "x_1", "2", None, "2", "a.b", "x"]:
        v = func.body.append(make_op(Add(), [v, b], names=[name])).result
    func.body.append(make_op(Return(), [v]))
    text = roundtrip(module)
    assert "kiln.func @f(%0: tensor<2xf32>, %1: tensor<2xf32>)" in text
    for defined in ["%x =", "%x_2 =", "%3 =", "%x_1 =", "%2 =", "%4 =", "%2_1 =", "%a.b =",
                    "%x_3 ="]:
        assert defined in text
    parsed = parse(text)
    assert [op.results[0].name for op in parsed.main.ops[:-1]][:3] == ["x", "x_2", "3"]


def test_multiple_functions_and_results() -> None:
    module = Module("two")
    for name in ["forward", "other"]:
        func = module.add_func(Func(name, [T2], ["x"]))
        pair = func.body.append(make_op(PAIR(), [func.args[0]], names=["a", "b"]))
        func.body.append(make_op(Return(), pair.results))
    text = roundtrip(module)
    assert "%a, %b = kiln.test_pair(%x) : tensor<2xf32>, tensor<2xf32>" in text
    assert "-> (tensor<2xf32>, tensor<2xf32>)" in text
    assert "\n\n  kiln.func @other" in text


def test_empty_function_and_module() -> None:
    module = Module("m")
    roundtrip(module)
    func = module.add_func(Func("f", []))
    func.body.append(make_op(Return(), []))
    assert "kiln.func @f() -> () {\n    kiln.return\n  }" in roundtrip(module)


def _attrs_module(kind: OpDef) -> Module:
    module = Module("attrs")
    func = module.add_func(Func("f", [T2], ["x"]))
    op = func.body.append(make_op(kind, [func.args[0]], names=["y"]))
    func.body.append(make_op(Return(), [op.result]))
    return module


ATTR_CASES = [
    ATTRS(),
    ATTRS(i=-7, f=0.1, b=True, s="hello", ints=(1, -2, 3), floats=(0.5, 1e-05), pair=(3, 2.5)),
    ATTRS(f=math.inf, floats=(-math.inf, 1e300, -0.0)),
    ATTRS(s='quote " backslash \\ newline \n tab \t unicode é ✓ \x00'),
    ATTRS(opt=0, dt=F16, ty=TensorType((2, 3), I8)),
    ATTRS(dt=FixedType(16, 6, False, "rnd", "sat"), ty=TensorType((), F32)),
    ATTRS(dt=QuantType(I8, (0.05,), (0,)), ints=()),
    ATTRS(dt=QuantType(I8, (0.1, 0.2), (0, 1), axis=0)),
    ATTRS(dense=Dense.of(np.array([1.0, 2.5, -3.0], np.float32))),
    ATTRS(dense=Dense.of(np.full((2, 2), 0.5, np.float32))),
    ATTRS(dense=Dense.of(np.array(7.0, np.float32))),
    ATTRS(dense=Dense.of(np.zeros((0, 3), np.float32))),
    ATTRS(dense=Dense.of(np.array([np.nan, np.inf, -np.inf, 1e-45, 3.4e38], np.float32))),
    ATTRS(dense=Dense.of(np.array([0.1, 65504.0, 6e-8], np.float16))),
    ATTRS(dense=Dense.of(np.array([0.1, 1 / 3], np.float64))),
    ATTRS(dense=Dense.of(np.array([-128, 0, 127], np.int8))),
    ATTRS(dense=Dense.of(np.array([0, 255], np.uint8))),
    ATTRS(dense=Dense.of(np.array([-(2**63), 2**63 - 1], np.int64))),
    ATTRS(dense=Dense.of(np.array([[True, False], [False, True]]))),
    ATTRS(dense=Dense.of(np.array([1, 2, 3], np.int32).reshape(3, 1))),
]


@pytest.mark.parametrize("kind", ATTR_CASES, ids=[str(i) for i in range(len(ATTR_CASES))])
def test_attribute_kinds_roundtrip(kind: OpDef) -> None:
    module = _attrs_module(kind)
    text = roundtrip(module)
    parsed = parse(text).main.ops[0].kind
    assert parsed == kind or kind.dense is not None  # type: ignore[attr-defined]
    if kind.dense is not None:  # type: ignore[attr-defined]
        got = parsed.dense.array  # type: ignore[attr-defined]
        want = kind.dense.array  # type: ignore[attr-defined]
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_attribute_text_forms() -> None:
    kind = ATTRS(i=3, f=2.0, b=True, s="a", ints=(1, 2), floats=(0.5,), opt=4, dt=F16,
                 dense=Dense.of(np.full((2, 2), 0.5, np.float32)))
    line = _attrs_module(kind).to_text().splitlines()[2]
    assert ("{b = true, dense = dense<0.5> : tensor<2x2xf32>, dt = f16, f = 2.0, floats = [0.5], "
            "i = 3, ints = [1, 2], opt = 4, s = \"a\"}") in line
    clamp = _attrs_module(Clamp(min=0, max=6)).to_text()  # ints in float fields print as floats
    assert "{max = 6.0, min = 0.0}" in clamp


def test_parser_coerces_and_accepts_explicit_none() -> None:
    text = _attrs_module(ATTRS()).to_text().replace(
        "kiln.test_attrs(%x)", "kiln.test_attrs(%x) {f = 2, floats = [1, 2.5], opt = none, "
                                "pair = [1, 2], ty = none}")
    kind = parse(text).main.ops[0].kind
    assert kind == ATTRS(f=2.0, floats=(1.0, 2.5), pair=(1, 2.0))
    assert isinstance(kind.f, float) and isinstance(kind.pair[1], float)  # type: ignore


def test_clamp_gelu_leaky_relu_attrs() -> None:
    for kind in [Clamp(), Clamp(min=-1.5), Clamp(max=math.nan), Gelu(approximate="tanh"),
                 LeakyRelu(slope=0.2)]:
        roundtrip(_attrs_module(kind))


def test_constant_and_weight_symbols() -> None:
    module = Module("odd name/with spaces")
    func = module.add_func(Func("f", [], []))
    c = func.body.append(make_op(Constant(Dense.of(np.array([1.0, 2.0], np.float32))), []))
    w = func.body.append(make_op(Weight(name="layer 1/weight", type=T2), []))
    add = func.body.append(make_op(Add(), [c.result, w.result]))
    func.body.append(make_op(Return(), [add.result]))
    text = roundtrip(module)
    assert text.startswith('kiln.module @"odd name/with spaces" {')
    assert '%1 = kiln.weight @"layer 1/weight" : tensor<2xf32>' in text
    assert "%0 = kiln.constant {value = dense<[1.0, 2.0]> : tensor<2xf32>} : tensor<2xf32>" in text


LOCATIONS = [
    Location("net.py", 14, "layer1.0.conv1"), Location("net.py", 14), Location("net.py"),
    Location(scope="conv1"), Location(line=3), Location(line=3, scope="s"),
    Location("a \"quoted\" file.py", None, "s"),
    Location(fused=(Location(scope="conv1"), Location(scope="relu"))),
    Location("f.py", 1, "outer", (Location("g.py", 2), Location(), Location(
        fused=(Location(scope="deep"),)))),
    Location(file="", line=0, scope=""),
]


@pytest.mark.parametrize("loc", LOCATIONS, ids=str)
def test_locations_roundtrip(loc: Location) -> None:
    text = format_location(loc)
    assert parse_location(text) == loc
    module = simple_module()
    module.main.ops[1].loc = loc
    roundtrip(module)


def test_location_text_forms() -> None:
    assert format_location(Location("digits.py", 14, "conv1")) == 'loc("digits.py":14 "conv1")'
    assert format_location(Location(scope="conv1")) == 'loc("conv1")'
    assert format_location(Location("m.onnx")) == 'loc("m.onnx":?)'
    assert format_location(Location(fused=(Location(scope="a"), Location(scope="b")))) == \
        'loc(fused["a", "b"])'
    assert format_location(Location()) == ""


def _region_module() -> Module:
    module = Module("regions")
    func = module.add_func(Func("f", [T2, T2], ["a", "b"]))
    a, b = func.args
    outer = func.body.append(make_op(Relu(), [b], names=["outer"])).result
    region = Block([T2, T2], ["p", "q"])
    s = region.append(make_op(Add(), region.args, names=["s"])).result
    t = region.append(make_op(Add(), [s, outer], names=["t"])).result  # an outer value
    region.append(make_op(Yield(), [s, t]))
    op = func.body.append(Op(REGION(label="grp"), [a, b], [T2, T2],
                             Location(fused=(Location(scope="x"), Location(scope="y"))),
                             ["f", "g"], region))
    func.body.append(make_op(Return(), op.results))
    return module


def test_region_roundtrip() -> None:
    text = roundtrip(_region_module())
    assert """\
    %f, %g = kiln.test_region(%a, %b) {label = "grp"} ({
    ^bb0(%p: tensor<2xf32>, %q: tensor<2xf32>):
      %s = kiln.add(%p, %q) : tensor<2xf32>
      %t = kiln.add(%s, %outer) : tensor<2xf32>
      kiln.yield %s, %t
    }) : tensor<2xf32>, tensor<2xf32> loc(fused["x", "y"])
""" in text


def test_region_without_arguments() -> None:
    module = Module("m")
    func = module.add_func(Func("f", [T2], ["x"]))
    region = Block()
    region.append(make_op(Yield(), [func.args[0]]))
    op = func.body.append(Op(REGION(), [], [T2], region=region))
    func.body.append(make_op(Return(), op.results))
    text = roundtrip(module)
    assert "kiln.test_region() ({\n    ^bb0:\n      kiln.yield %x\n    })" in text


def test_clone_is_equal_and_independent() -> None:
    module = _region_module()
    module.weights["w"] = np.zeros(2, np.float32)
    copy = module.clone()
    assert copy == module
    assert copy.weights["w"] is module.weights["w"]
    copy.main.ops[0].results[0].name = "renamed"
    assert copy != module and "%outer" in module.to_text()
    assert all(op not in module.main.ops for op in copy.main.ops)


def test_comments_and_blanks_are_ignored() -> None:
    text = """// RUN: kiln-opt %s | FileCheck %s
// CHECK: kiln.relu
kiln.module @m {   // the module
  kiln.func @f(%x: tensor<2xf32>) -> tensor<2xf32> {
    // a comment line
    %y = kiln.relu( %x ) : tensor<2xf32>   // trailing
    kiln.return %y
  }
}
"""
    module = parse(text)
    assert module.op_counts() == {"kiln.relu": 1, "kiln.return": 1}
    assert "-> (tensor<2xf32>)" in module.to_text()


@pytest.mark.parametrize("path", sorted(ROUNDTRIP_DIR.glob("*.kir")), ids=lambda p: p.name)
def test_sample_files_verify_and_roundtrip(path: Path) -> None:
    module = parse(path.read_text(), verify=True, filename=str(path))
    roundtrip(module)


# -- weights ---------------------------------------------------------------------------------------
def test_parse_checks_given_weights() -> None:
    text = simple_module().to_text()
    good = {"conv1.weight": np.zeros((1, 4), np.float32)}
    assert parse(text, good).weights.keys() == {"conv1.weight"}
    cases: list[tuple[dict[str, np.ndarray], str]] = [
        ({"conv1.weight": np.zeros((4,), np.float32)}, "float32[4]"),
        ({"conv1.weight": np.zeros((1, 4), np.float64)}, "float64[1, 4]"),
        ({"other": np.zeros(3)}, "not among the given weights")]
    for bad, message in cases:
        with pytest.raises(ParseError, match=re.escape(message)) as info:
            parse(text, bad)
        assert "3:21:" in str(info.value)


def test_save_and_load(tmp_path: Path) -> None:
    module = simple_module(weights=True)
    module.weights["with/slash and space"] = np.ones((2, 2), np.int8)
    module.weights["file"] = np.array(3.5)
    save_module(module, tmp_path / "model.kir")
    assert (tmp_path / "model.kir").read_text() == module.to_text()
    loaded = load_module(tmp_path / "model.kir")
    assert loaded == module
    with np.load(tmp_path / "model.npz") as npz:  # a plain npz keyed by weight name
        np.testing.assert_array_equal(npz["conv1.weight"], module.weights["conv1.weight"])
    assert read_weights(weights_path(tmp_path / "model.kir")).keys() == module.weights.keys()
    first = (tmp_path / "model.npz").read_bytes()
    module.save(tmp_path / "model.kir")
    assert (tmp_path / "model.npz").read_bytes() == first  # deterministic
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.kir", "model.npz"]


def test_load_without_npz_and_errors(tmp_path: Path) -> None:
    (tmp_path / "m.kir").write_text(simple_module().to_text())
    assert load_module(tmp_path / "m.kir").weights == {}
    with pytest.raises(KilnError, match="cannot read IR file"):
        load_module(tmp_path / "missing.kir")
    (tmp_path / "m.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(KilnError, match="cannot read weights"):
        load_module(tmp_path / "m.kir")
    with open(tmp_path / "m.npz", "wb") as f:  # a bare .npy under the .npz name
        np.save(f, np.zeros(3))
    with pytest.raises(KilnError, match=r"not an \.npz"):
        load_module(tmp_path / "m.kir")
    with pytest.raises(KilnError, match="cannot write"):
        save_module(simple_module(), tmp_path / "no" / "such" / "dir.kir")
    (tmp_path / "bad.kir").write_text("kiln.module @m {")
    with pytest.raises(ParseError, match=r"bad\.kir:1:17"):
        load_module(tmp_path / "bad.kir")


# -- diagnostics -----------------------------------------------------------------------------------
BASE = """\
kiln.module @m {
  kiln.func @f(%x: tensor<2xf32>) -> (tensor<2xf32>) {
    %a = kiln.relu(%x) : tensor<2xf32>
    kiln.return %a
  }
}
"""
RELU = "%a = kiln.relu(%x) : tensor<2xf32>"

DIAGNOSTICS = [
    ("unknown op", BASE.replace("kiln.relu", "kiln.relux"), "3:10",
     "unknown op 'kiln.relux'; did you mean kiln.relu"),
    ("unknown attribute", BASE.replace("relu(%x)", "leaky_relu(%x) {slop = 0.1}"), "3:31",
     "'kiln.leaky_relu' op has no attribute 'slop' (valid: slope)"),
    ("wrong attribute kind", BASE.replace("relu(%x)", "leaky_relu(%x) {slope = [1]}"), "3:39",
     "attribute 'slope' expects float, got [1]"),
    ("duplicate attribute", BASE.replace("relu(%x)", "clamp(%x) {min = 1.0, min = 2.0}"), "3:37",
     "attribute 'min' given twice"),
    ("bad type", BASE.replace(RELU, "%a = kiln.relu(%x) : tensor<2xf31>"), "3:35",
     "unknown element type 'f31'"),
    ("undefined value", BASE.replace("relu(%x)", "relu(%z)"), "3:20", "undefined value %z"),
    ("redefinition", BASE.replace(RELU, RELU + "\n    " + RELU), "4:5",
     "value %a defined twice"),
    ("use before definition", BASE.replace(RELU, "%b = kiln.relu(%a) : tensor<2xf32>\n    "
                                           + RELU), "3:20", "undefined value %a"),
    ("unterminated region", """kiln.module @m {
  kiln.func @f(%x: tensor<2xf32>) -> (tensor<2xf32>) {
    %a = kiln.test_region(%x) ({
    ^bb0(%p: tensor<2xf32>):
      kiln.yield %p
""", "6:1", "unterminated region"),
    ("unterminated string", BASE.replace("%a = kiln.relu(%x)", '%a = kiln.gelu(%x) {approximate'
                                         ' = "tanh}'), "3:39", "unterminated string"),
    ("missing result type", BASE.replace(" : tensor<2xf32>\n    kiln.return", "\n    kiln.return"),
     "3:23", "1 result names but 0 result types"),
    ("result count", BASE.replace("%a = ", "%a, %b = "), "3:30",
     "2 result names but 1 result types"),
    ("declared results", BASE.replace("-> (tensor<2xf32>)", "-> (tensor<3xf32>)"), "2:35",
     "declares results (tensor<3xf32>) but its kiln.return gives (tensor<2xf32>)"),
    ("trailing text", BASE + "junk", "7:1", "after the end of the module"),
    ("missing module", "kiln.func @f() -> () {}", "1:1", "expected 'kiln.module'"),
    ("bad dense", BASE.replace(RELU, "%a = kiln.constant {value = dense<[1.0]> : "
                               "tensor<2xf32>} : tensor<2xf32>"), "3:39",
     "dense literal has 1 values but tensor<2xf32> holds 2"),
    ("bad location", BASE.replace(RELU, RELU + " loc(14)"), "3:44", "expected a location"),
    ("region on a plain op", BASE.replace("relu(%x)", "relu(%x) ({ kiln.yield %x })"), "3:24",
     "'kiln.relu' does not take a region"),
    ("bad attribute value", BASE.replace("relu(%x)", "clamp(%x) {min = foo}"), "3:32",
     "expected an attribute value, found 'foo'"),
    ("bad kind construction", BASE.replace(RELU, "%a = kiln.cast(%x) {to = fixed<70,1>} : "
                                           "tensor<2xf32>"), "3:30", "width must be in 1..64"),
]


@pytest.mark.parametrize(("text", "where", "message"), [c[1:] for c in DIAGNOSTICS],
                         ids=[c[0] for c in DIAGNOSTICS])
def test_parse_diagnostics(text: str, where: str, message: str) -> None:
    with pytest.raises(ParseError) as info:
        parse(text)
    shown = str(info.value)
    assert f"{where}: " in shown and message in shown, shown
    line, col = (int(n) for n in where.split(":"))
    source = [*text.splitlines(), ""][line - 1]
    assert f"\n  {source}\n  {' ' * (col - 1)}^" in shown, shown


VERIFY_ERRORS = [
    ("wrong result type", BASE.replace(RELU, "%a = kiln.relu(%x) : tensor<3xf32>").replace(
        "-> (tensor<2xf32>)", "-> (tensor<3xf32>)"), "3:10",
     "result types (tensor<3xf32>) differ from the inferred (tensor<2xf32>)"),
    ("missing return", BASE.replace("    kiln.return %a\n", ""), None,
     "function @f does not end with kiln.return"),
    ("wrong operand count", BASE.replace("relu(%x)", "relu(%x, %x)"), "3:10",
     "takes 1 operands, got 2"),
    ("type inference error", BASE.replace("relu(%x)", "add(%x, %i)").replace(
        "(%x: tensor<2xf32>)", "(%x: tensor<2xf32>, %i: tensor<2xi8>)"), "3:10",
     "operand element types differ"),
    ("region without yield", BASE.replace(RELU, "%a = kiln.test_region(%x) ({\n    ^bb0:\n    "
                                          "}) : tensor<2xf32>"), "3:10",
     "region does not end with kiln.yield"),
    ("return inside a region", BASE.replace(RELU, "%a = kiln.test_region(%x) ({\n    "
                                            "kiln.return %x\n    }) : tensor<2xf32>"), "4:5",
     "'kiln.return' op cannot appear in a region"),
]


@pytest.mark.parametrize(("text", "where", "message"), [c[1:] for c in VERIFY_ERRORS],
                         ids=[c[0] for c in VERIFY_ERRORS])
def test_verify_diagnostics_after_parse(text: str, where: str | None, message: str) -> None:
    with pytest.raises(VerifyError) as info:
        parse(text)
    shown = str(info.value)
    assert message in shown, shown
    if where is not None:
        assert f"at {where}:" in shown and "^" in shown, shown
    parse(text, verify=False)  # well-formed text: only the verifier objects


# -- robustness ------------------------------------------------------------------------------------
FUZZ_SOURCE = """\
// RUN: anything
kiln.module @fuzz {
  kiln.func @forward(%x: tensor<1x4xf32>,
                     %q: tensor<4xq<i8, [0.1, 0.2, 0.3, 0.4], [0, 0, 0, 0], axis=0>>)
      -> (tensor<1x4xf32>, tensor<4xf16>) {
    %w = kiln.weight @"conv 1.weight" : tensor<1x4xf32, nm<2,4>>
    %c = kiln.constant {value = dense<[1.0, -2.5e-07, nan, -inf]> : tensor<4xf32>}
        : tensor<4xf32>
    %s = kiln.constant {value = dense<0.5> : tensor<4xf16>} : tensor<4xf16> loc(?:3)
    %a = kiln.add(%x, %c) : tensor<1x4xf32> loc("digits.py":14 "conv1")
    %k = kiln.clamp(%a) {max = 6.0, min = 0.0} : tensor<1x4xf32> loc(fused["a", "b":? "c"])
    %g = kiln.gelu(%k) {approximate = "tanh"} : tensor<1x4xf32>
    %t = kiln.test_attrs(%c) {dt = fixed<16,6,unsigned,rnd,sat>, ints = [1, 2]} : tensor<4xf32>
    %f, %h = kiln.test_region(%g, %x) {label = "x"} ({
    ^bb0(%p: tensor<1x4xf32>, %r: tensor<1x4xf32>):
      %m = kiln.add(%p, %r) : tensor<1x4xf32>
      kiln.yield %m, %p
    }) : tensor<1x4xf32>, tensor<1x4xf32> loc("r")
    kiln.return %f, %s
  }
}
"""
PALETTE = "%@{}()<>[],:=\"^x0123456789.-+eabcfiqtn \n/\\"


def _mutate(text: str, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(text))
        action = rng.randrange(4)
        if action == 0:
            text = text[:i] + text[i + 1:]
        elif action == 1:
            text = text[:i] + text[i] + text[i:]
        elif action == 2:
            text = text[:i] + rng.choice(PALETTE) + text[i + 1:]
        else:
            j = rng.randrange(len(text))
            text = text[:i] + text[j:j + rng.randint(1, 12)] + text[i:]
    return text


def test_fuzz_only_kiln_errors() -> None:
    parse(FUZZ_SOURCE, verify=False)
    rng = random.Random(20240601)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(300):
        text = _mutate(FUZZ_SOURCE, rng)
        try:
            module = parse(text)
        except KilnError as exc:
            assert str(exc)
            outcomes["error"] += 1
        else:
            assert parse(module.to_text()).to_text() == module.to_text()
            outcomes["ok"] += 1
    assert outcomes["error"] > 100


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    deep = BASE.replace("relu(%x)", "test_attrs(%x) {ints = " + "[" * 5000 + "}")
    with pytest.raises(ParseError, match="nesting deeper"):
        parse(deep)
    huge = BASE.replace(RELU, "%a = kiln.constant {value = dense<0.5> : tensor<999999x99999xf32>}"
                              " : tensor<2xf32>")
    with pytest.raises(ParseError, match="too large"):
        parse(huge)


def test_parse_rejects_non_text() -> None:
    with pytest.raises(KilnError):
        parse(b"kiln.module @m {}")  # type: ignore[arg-type]


def test_long_lines_are_cut_around_the_error() -> None:
    values = ", ".join(["1.0"] * 500)
    text = BASE.replace(RELU, f"%a = kiln.constant {{value = dense<[{values}, x]> : "
                              "tensor<501xf32>} : tensor<2xf32>")
    with pytest.raises(ParseError) as info:
        parse(text)
    excerpt = info.value.diagnostics[0].excerpt or ""
    source, caret = excerpt.splitlines()
    assert len(source) <= 130 and source.startswith("...")
    assert source[len(caret) - 1] == "x"


def test_generic_weight_spelling_is_checked_too() -> None:
    text = simple_module().to_text().replace(
        "kiln.weight @conv1.weight : tensor<1x4xf32>",
        'kiln.weight {name = "conv1.weight", type = tensor<1x4xf32>} : tensor<1x4xf32>')
    assert parse(text) == simple_module()
    with pytest.raises(ParseError, match="not among the given weights"):
        parse(text, {"x": np.zeros(1)})
