"""``onnxfi report``: a campaign database -> one self-contained HTML page with plots (opens offline)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from onnxfi.commands._common import stdout
from onnxfi.errors import OnnxfiError

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "report", help="write an HTML report with plots from a campaign database",
        description="Render the SQLite file written by `onnxfi analyze` as one HTML file: model and "
        "reproducibility summary, outcomes, per-layer chart with intervals, layer x bit heatmap, per-bit "
        "curve, metric distributions, and the hardened model's campaign when `analyze --compare` recorded one. "
        "No script, no network: it opens offline.",
        epilog="examples:\n  onnxfi report run.db -o report.html\n"
               "  onnxfi report run.db -o report.html --compare-json runtime.json\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("db", metavar="DB")
    p.add_argument("-o", "--output", metavar="FILE", help="HTML file to write (default: DB with .html)")
    p.add_argument("--compare-json", metavar="FILE", help="runtime comparison JSON to show as a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # numpy and matplotlib load when the command runs, not with the parser (--help)
    from onnxfi.report.html import write_report

    out = Path(args.output) if args.output else Path(args.db).with_suffix(".html")
    if out.suffix.lower() == ".json":
        raise OnnxfiError(f"-o {out}: the report is an HTML page; name it .html (JSON documents: docs/json.md)")
    written = write_report(args.db, out, args.compare_json)
    stdout.print(f"wrote {written}")
    return 0
