"""The report page's stylesheet (inlined: the page is one self-contained file)."""

CSS = """
:root { --ink: #263238; --muted: #607d8b; --line: #e0e6ea; --accent: #3949ab;
        --bg: #f7f9fa; --card: #ffffff; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       color: var(--ink); background: var(--bg); }
header { background: #1a237e; color: #fff; padding: 18px 32px; }
header h1 { margin: 0; font-size: 22px; font-weight: 600; }
header .sub { margin: 4px 0 0; color: #c5cae9; }
main { max-width: 1280px; margin: 0 auto; padding: 8px 32px 40px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
          padding: 14px 20px; margin: 16px 0; }
h2 { font-size: 17px; margin: 0 0 10px; color: #1a237e; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(160px, 1fr));
         gap: 12px; background: none; border: none; padding: 0; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
        padding: 10px 16px; }
.card .k { color: var(--muted); font-size: 12px; text-transform: uppercase;
           letter-spacing: .04em; }
.card .v { font-size: 20px; font-weight: 600; }
.card .n { color: var(--muted); font-size: 12px; }
.tag { display: inline-block; border-radius: 10px; padding: 0 7px; font-size: 11px;
       font-weight: 600; }
.tag.measured { background: #e8f5e9; color: #2e7d32; }
.tag.estimated { background: #fff3e0; color: #e65100; }
.tag.unavailable { background: #eceff1; color: #607d8b; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { padding: 5px 9px; border-bottom: 1px solid var(--line); text-align: left;
         white-space: nowrap; }
th { background: #eef1f8; color: #283593; font-weight: 600; position: sticky; top: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafbfc; }
tr.total td { font-weight: 600; border-top: 2px solid #c5cae9; }
.graph { overflow: auto; max-height: 900px; text-align: center; }
.graph svg { max-width: 100%; height: auto; }
.charts { display: flex; flex-wrap: wrap; gap: 18px; }
.chart { background: #fff; }
.chart .ttl { font: 600 13px Helvetica, Arial, sans-serif; fill: #1a237e; }
.chart .lbl { font: 11px Helvetica, Arial, sans-serif; fill: #37474f; }
.chart .val { font: 11px Helvetica, Arial, sans-serif; fill: #546e7a; }
.note { color: #8d6e63; background: #fff8e1; border-left: 3px solid #ffb300;
        padding: 6px 10px; }
pre { background: #f5f5f5; padding: 10px; overflow: auto; font-size: 12px;
      max-height: 480px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 3px 16px; margin: 0; }
dt { color: var(--muted); }
dd { margin: 0; word-break: break-all; }
code { font-size: 12px; }
footer { color: var(--muted); font-size: 12px; text-align: center; padding: 12px; }
"""
