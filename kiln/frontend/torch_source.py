"""Source locations and value names for fx nodes.

Every op kiln creates for a node carries the user's file:line (the innermost stack frame that is
not inside torch, kiln or generated code) and the module path
(`layer1.0.conv1`) from `meta["nn_module_stack"]`. A module's last node names its result after
the module path (`conv1`); other results take the fx node name (`relu_1`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

import torch
import torch.fx

import kiln
from kiln.ir.location import Location

_FRAME = re.compile(r'File "([^"]+)", line (\d+), in ')
_LIBRARY_DIRS = tuple(os.path.dirname(m.__file__ or "") + os.sep for m in (torch, kiln))
_BRACKET = re.compile(r"\[['\"]?([^\]'\"]+)['\"]?\]")


def _is_library(path: str) -> bool:
    return path.startswith("<") or path.startswith(_LIBRARY_DIRS)


def user_frame(stack_trace: str | None) -> tuple[str, int] | None:
    """(file, line) of the innermost frame of `stack_trace` that is in the user's code."""
    if not stack_trace:
        return None
    for path, line in reversed(_FRAME.findall(stack_trace)):
        if not _is_library(path):
            return path, int(line)
    return None


def _clean_path(path: str) -> str:
    """`L['self'].layer1[0].conv1` (older torch) or `layer1.0.conv1` → `layer1.0.conv1`."""
    path = path.removeprefix("L['self']").removeprefix("L__self__")
    path = _BRACKET.sub(r".\1", path)
    return path.strip(".")


def module_scope(node: torch.fx.Node) -> str | None:
    """The innermost module path of the node, None at the top level."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path, _ = list(stack.values())[-1]
    return _clean_path(str(path)) or None


def module_stack(node: torch.fx.Node) -> list[tuple[str, type | str]]:
    """(path, module type) from the outermost to the innermost module of the node."""
    stack = node.meta.get("nn_module_stack") or {}
    return [(_clean_path(str(path)), kind) for path, kind in stack.values()]


def node_location(node: torch.fx.Node) -> Location:
    """`Location(file basename, line, module path)` for the node."""
    frame = user_frame(node.meta.get("stack_trace"))
    scope = module_scope(node)
    if frame is None:
        return Location(scope=scope)
    return Location(file=os.path.basename(frame[0]), line=frame[1], scope=scope)


class ValueNamer:
    """Names a module's last node after the module (`layer1.0.conv1`), others after the node."""

    def __init__(self, nodes: Iterable[torch.fx.Node]) -> None:
        self.last: dict[str, torch.fx.Node] = {}
        for node in nodes:
            scope = module_scope(node)
            if node.op == "call_function" and node.users and scope and not _is_getitem(node):
                self.last[scope] = node

    def name(self, node: torch.fx.Node) -> str:
        scope = module_scope(node)
        if scope and self.last.get(scope) is node:
            return scope
        return node.name


def _is_getitem(node: torch.fx.Node) -> bool:
    return getattr(node.target, "__name__", "") == "getitem"
