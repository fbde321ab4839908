"""kiln's unified report: one schema for every target, as JSON, text and a static HTML page.

    report = art.report()                      # == build_report(art), a JSON-able dict
    report = art.report(eval_data=(x, y))      # adds accuracy on an evaluation set
    save_report(art, "out/")                   # out/report.json + out/report.html
    print(render_text(load_report("out/")))    # totals and the per-layer table

The schema (sections, fields, how latencies are labelled) is documented in
`kiln.report.schema`; `validate_report` checks a report against it.
"""

from kiln.report.collect import build_report
from kiln.report.html import render_html
from kiln.report.io import load_report, save_report, to_json
from kiln.report.schema import SCHEMA_VERSION, problems_of, validate_report
from kiln.report.text import render_text

__all__ = ["SCHEMA_VERSION", "build_report", "load_report", "problems_of", "render_html",
           "render_text", "save_report", "to_json", "validate_report"]
