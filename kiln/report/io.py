"""Saving and loading reports: `report.json` (the data) and `report.html` (the page)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.errors import KilnError
from kiln.report.html import render_html
from kiln.report.schema import validate_report

if TYPE_CHECKING:
    from kiln.compiler.driver import CompiledModel

JSON_NAME = "report.json"
HTML_NAME = "report.html"


def _finite(value: Any) -> Any:
    """NaN and infinities become None: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_json(report: dict[str, Any]) -> str:
    """The report as stable JSON text (sorted keys, no NaN)."""
    return json.dumps(_finite(report), indent=2, sort_keys=True, default=str)


def save_report(art_or_report: CompiledModel | dict[str, Any], directory: str | Path) -> None:
    """Write `report.json` and `report.html` into `directory` (created if needed)."""
    report = art_or_report if isinstance(art_or_report, dict) else art_or_report.report()
    validate_report(report)
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / JSON_NAME).write_text(to_json(report), encoding="utf-8")
        (out / HTML_NAME).write_text(render_html(report), encoding="utf-8")
    except OSError as exc:
        raise KilnError(f"cannot write the report into {out}: {exc}",
                        hint="choose a writable folder") from None


def load_report(directory: str | Path) -> dict[str, Any]:
    """The report saved in `directory` (or the `report.json` file given), validated."""
    path = Path(directory)
    if path.is_dir():
        path = path / JSON_NAME
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KilnError(f"no report at {path}",
                        hint="save one with `kiln.report.save_report(art, folder)` or "
                             "`art.save(folder)`") from None
    except (OSError, ValueError) as exc:
        raise KilnError(f"cannot read the report {path}: {exc}",
                        hint="the file is not JSON written by kiln") from None
    return validate_report(report)
