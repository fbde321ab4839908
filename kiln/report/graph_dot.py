"""The report's graph picture: Graphviz DOT text from the report's `graph`, rendered to SVG.

Fused groups become clusters (a box around their ops); nodes are filled by their share of the
cost (white → orange, the most expensive darkest). Labels come from the model's names and
are escaped for DOT; Graphviz escapes them again in the SVG it writes. Without the `dot`
program `render_svg` returns None and says why, and the HTML shows a text list instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

DOT_TIMEOUT_S = 30
WIDE_GRAPH_NODES = 12
"""Graphs up to this many nodes are drawn left to right (they fit the page's width)."""
_PALETTE = ("#ffffff", "#fff3e0", "#ffe0b2", "#ffcc80", "#ffb74d", "#ffa726", "#fb8c00",
            "#f57c00", "#e65100")
"""Fill colours by cost share, lightest to darkest."""
_IO_FILL = "#e3f2fd"


def dot_string(text: str) -> str:
    """`text` as a quoted DOT string (backslashes, quotes and newlines escaped)."""
    safe = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{safe}"'


def fill_for(share: float, top: float) -> str:
    if top <= 0:
        return _PALETTE[0]
    level = round((len(_PALETTE) - 1) * min(share / top, 1.0))
    return _PALETTE[level]


def node_label(node: Mapping[str, Any]) -> str:
    op = str(node["op"]).removeprefix("kiln.")
    shape = "x".join(map(str, node.get("shape") or []))
    if node["op"] in ("input", "output"):
        return f"{node['label']}\n{shape}"
    share = node.get("cost_share", 0.0) or 0.0
    cost = f"  {100 * share:.0f}%" if share >= 0.005 else ""
    return f"{node['label']}\n{op}{cost}\n{shape}"


def node_line(node: Mapping[str, Any], top: float) -> str:
    io = node["op"] in ("input", "output")
    fill = _IO_FILL if io else fill_for(node.get("cost_share", 0.0) or 0.0, top)
    shape = "ellipse" if io else "box"
    tooltip = f"{node['label']} ({node['op']})"
    return (f"  {node['id']} [label={dot_string(node_label(node))}, shape={shape}, "
            f"fillcolor=\"{fill}\", tooltip={dot_string(tooltip)}];")


def to_dot(graph: Mapping[str, Any]) -> str:
    """The DOT text of a report's `graph` section (top to bottom, clusters for fused groups)."""
    top = max((n.get("cost_share", 0.0) or 0.0 for n in graph["nodes"]), default=0.0)
    direction = "LR" if len(graph["nodes"]) <= WIDE_GRAPH_NODES else "TB"
    lines = ["digraph kiln {", f"  rankdir={direction};", "  bgcolor=\"transparent\";",
             "  node [style=\"rounded,filled\", fontname=\"Helvetica\", fontsize=10, "
             "color=\"#546e7a\"];",
             "  edge [color=\"#78909c\", arrowsize=0.7];"]
    grouped: dict[str | None, list[Mapping[str, Any]]] = {}
    for node in graph["nodes"]:
        grouped.setdefault(node.get("group"), []).append(node)
    lines += [node_line(n, top) for n in grouped.get(None, [])]
    for i, group in enumerate(graph["groups"]):
        label = f"fused: {group['label']}" + (f" ({group['pattern']})" if group.get("pattern")
                                              else "")
        lines += [f"  subgraph cluster_{i} {{", f"    label={dot_string(label)};",
                  "    style=\"rounded,dashed\"; color=\"#5c6bc0\"; fontname=\"Helvetica\";"
                  " fontsize=10;"]
        lines += ["  " + node_line(n, top) for n in grouped.get(group["id"], [])]
        lines.append("  }")
    lines += [f"  {a} -> {b};" for a, b in graph["edges"]]
    lines.append("}")
    return "\n".join(lines) + "\n"


_PROLOG = re.compile(r"^.*?(?=<svg\b)", re.DOTALL)


def render_svg(dot_text: str, dot: str = "dot") -> tuple[str | None, str]:
    """(inline SVG, "") from Graphviz, or (None, why not) when `dot` is missing or fails."""
    path = shutil.which(dot)
    if path is None:
        return None, ("Graphviz's `dot` was not found, so the graph is listed as text; "
                      "install graphviz (e.g. `apt-get install graphviz`) for the picture")
    try:
        result = subprocess.run([path, "-Tsvg"], input=dot_text, capture_output=True,
                                text=True, timeout=DOT_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"Graphviz's `dot` failed ({exc}), so the graph is listed as text"
    if result.returncode != 0 or "<svg" not in result.stdout:
        return None, (f"Graphviz's `dot` failed ({result.stderr.strip()[:200]}), so the "
                      "graph is listed as text")
    return _PROLOG.sub("", result.stdout, count=1), ""
