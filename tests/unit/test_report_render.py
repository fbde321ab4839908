"""The report's views: text summary, HTML page (escaping, Graphviz fallback), SVG charts and
the DOT graph (fused groups as clusters, cost colours)."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import torch

import kiln
from kiln.report import render_html, render_text
from kiln.report.charts_svg import bar_chart
from kiln.report.graph_dot import to_dot

EVIL = "<script>alert('x')</script>&\"quoted\""


class ConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3, padding=1)
        self.fc = torch.nn.Linear(3 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    torch.manual_seed(0)
    art = kiln.compile(ConvNet().eval(), (torch.randn(1, 2, 4, 4),), target="reference")
    return art.report()


def poisoned(report: dict[str, Any]) -> dict[str, Any]:
    """Every model-derived string that reaches the page replaced by markup."""
    bad = copy.deepcopy(report)
    bad["model"]["name"] = EVIL
    bad["pipeline"] = EVIL
    for row in bad["per_layer"]:
        row["name"], row["source"] = EVIL, EVIL
        row["outputs"][0]["dtype"] = EVIL
    for node in bad["graph"]["nodes"]:
        node["label"] = EVIL
    for group in bad["graph"]["groups"]:
        group["label"] = group["pattern"] = EVIL
    bad["passes"][0]["step"] = EVIL
    bad["environment"]["compilers"] = {EVIL: EVIL}
    bad["manifest"]["files"] = {EVIL: "0" * 64}
    bad["runtime"] = EVIL
    bad["numerics"]["per_layer_sqnr_db"] = {EVIL: 12.5}
    return bad


@pytest.mark.parametrize("dot", ["dot", "no-such-graphviz-dot"])
def test_html_escapes_every_model_string(report: dict[str, Any], dot: str) -> None:
    page = render_html(poisoned(report), dot=dot)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;" in page
    assert page.count("<html") == 1 and page.rstrip().endswith("</html>")


def test_html_without_graphviz_lists_the_graph_as_text(report: dict[str, Any]) -> None:
    page = render_html(report, dot="no-such-graphviz-dot")
    assert 'class="note"' in page and "install graphviz" in page
    text = re.search(r'<pre class="graph-text">(.*?)</pre>', page, re.DOTALL)
    assert text is not None
    for node in report["graph"]["nodes"]:
        assert node["label"] in text.group(1)


def test_html_with_graphviz_inlines_svg(report: dict[str, Any]) -> None:
    if not kiln.report.graph_dot.shutil.which("dot"):
        pytest.skip("Graphviz's dot is not installed")
    page = render_html(report)
    graph = re.search(r'<div class="graph">(<svg.*?</svg>)</div>', page, re.DOTALL)
    assert graph is not None and "<?xml" not in page and "<!DOCTYPE svg" not in page
    assert "cluster_0" in graph.group(1)  # the fused conv+relu group is boxed


def test_dot_boxes_fused_groups_and_colours_by_cost(report: dict[str, Any]) -> None:
    graph = report["graph"]
    dot = to_dot(graph)
    assert len(graph["groups"]) == 1 and "subgraph cluster_0" in dot
    members = [n for n in graph["nodes"] if n["group"] == graph["groups"][0]["id"]]
    assert sorted(n["op"] for n in members) == ["kiln.conv2d", "kiln.relu"]
    assert sum(n["cost_share"] for n in graph["nodes"]) == pytest.approx(1.0)
    costly = max(graph["nodes"], key=lambda n: n["cost_share"])
    assert costly["op"] == "kiln.conv2d"
    assert re.search(rf'{costly["id"]} \[[^\]]*fillcolor="#e65100"', dot)  # the darkest
    edges = {tuple(e) for e in graph["edges"]}
    ids = {n["op"]: n["id"] for n in graph["nodes"]}
    assert (ids["kiln.conv2d"], ids["kiln.relu"]) in edges
    assert (ids["input"], ids["kiln.conv2d"]) in edges


def test_dot_escapes_labels() -> None:
    graph = {"nodes": [{"id": "n0", "op": "kiln.relu", "label": 'a"b\\c', "layer": "l",
                        "group": None, "flops": 1, "shape": [2], "cost_share": 1.0}],
             "edges": [], "groups": []}
    assert r'label="a\"b\\c\nrelu  100%\n2"' in to_dot(graph)


def test_bar_chart_scales_bars_and_escapes_labels() -> None:
    svg = bar_chart("t<1>", [("a<b>", 10.0), ("c", 5.0)], unit="us")
    widths = [float(w) for w in re.findall(r'<rect [^>]*width="([\d.]+)"', svg)]
    assert widths[0] == pytest.approx(2 * widths[1])
    assert "a&lt;b&gt;" in svg and "t&lt;1&gt;" in svg and "<b>" not in svg
    assert bar_chart("empty", []) == ""


def test_text_summary_has_totals_and_every_layer(report: dict[str, Any]) -> None:
    text = render_text(report)
    assert "target reference" in text and "latency" in text and "measured" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("layer "))
    assert set(lines[header + 1]) <= {"-", " "}
    names = [line.split()[0] for line in lines[header + 2:header + 2 + len(report["per_layer"])]]
    assert names == [row["name"] for row in report["per_layer"]]
