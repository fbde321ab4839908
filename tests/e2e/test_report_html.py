"""The HTML report of the digits CNN on the FPGA target, rendered in headless Chromium: it
shows the graph, the charts and the per-layer table, every picture has a size, nothing is
fetched from outside, and the console stays silent (a control message proves the console is
being captured)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import kiln
from kiln.compiler.driver import CompiledModel
from kiln.models import example_inputs, get_model
from kiln.report import save_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                "(apt-get install chromium) — needed to render the report")

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--window-size=1300,2400")
CONTROL = "kiln-console-control"
PROBE = ("<script>console.error('" + CONTROL + "');"
         "const box = e => { const r = e.getBoundingClientRect(); return [r.width, r.height]; };"
         "document.body.setAttribute('data-probe', JSON.stringify({"
         "svgs: [...document.querySelectorAll('svg')].map(box),"
         "images: [...document.images].map(i => i.complete && i.naturalWidth > 0),"
         "table: box(document.getElementById('layer-table'))}));</script>")
"""Appended to a copy of the page: measures every picture after layout and logs a control
console message (the real page has no script at all)."""


@dataclass
class Rendered:
    dom: str
    console: list[str]
    screenshot: Path


def chromium(page: Path, profile: Path, screenshot: Path | None = None) -> Rendered:
    """Load `page` headless; its DOM after scripts ran, its console lines, its screenshot."""
    assert CHROMIUM is not None
    shot = [f"--screenshot={screenshot}"] if screenshot else []
    result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *shot,
                             "--dump-dom", page.as_uri()],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return Rendered(result.stdout, console, screenshot or page)


@pytest.fixture(scope="module")
def art() -> CompiledModel:
    return kiln.compile(get_model("digits_cnn"), example_inputs("digits_cnn"), target="fpga")


@pytest.fixture(scope="module")
def folder(art: CompiledModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    save_report(art, out)
    return out


@pytest.fixture(scope="module")
def rendered(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    profile = tmp_path_factory.mktemp("chromium-profile")
    return chromium(folder / "report.html", profile, folder / "report.png")


@pytest.fixture(scope="module")
def probed(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    page = (folder / "report.html").read_text()
    probe = folder / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    return chromium(probe, tmp_path_factory.mktemp("chromium-profile"))


def test_page_shows_graph_charts_and_layer_table(rendered: Rendered, art: CompiledModel) -> None:
    dom = rendered.dom
    assert '<section id="graph">' in dom and 'class="graph"' in dom and "<svg" in dom
    assert 'class="note"' not in dom  # Graphviz drew the graph (no text fallback)
    assert dom.count('class="chart"') >= 5  # latency, FLOPs, DSP, LUT, FF, SQNR
    table = re.search(r'<table id="layer-table">(.*?)</table>', dom, re.DOTALL)
    assert table is not None
    for row in art.report()["per_layer"]:
        assert f">{row['name']}<" in table.group(1)
    for title in ("DSP", "LUT", "FF", "BRAM", "II", "SQNR dB", "latency us"):
        assert f">{title}</th>" in table.group(1)
    assert ">estimated<" in table.group(1)


def test_console_is_silent(rendered: Rendered, probed: Rendered) -> None:
    assert rendered.console == []
    assert len(probed.console) == 1 and CONTROL in probed.console[0]


def test_every_picture_has_a_size(probed: Rendered) -> None:
    match = re.search(r'data-probe="([^"]*)"', probed.dom)
    assert match is not None, "the probe script did not run"
    probe = json.loads(match.group(1).replace("&quot;", '"'))
    assert len(probe["svgs"]) >= 6 and all(w > 50 and h > 20 for w, h in probe["svgs"])
    assert all(probe["images"])
    assert probe["table"][0] > 600 and probe["table"][1] > 100


def test_screenshot_is_written(rendered: Rendered) -> None:
    data = rendered.screenshot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a blank page is ~10 kB


def test_page_is_self_contained(folder: Path) -> None:
    page = (folder / "report.html").read_text()
    assert "<script" not in page.lower()
    links = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert all(link.startswith("#") for link in links), links
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}, urls
