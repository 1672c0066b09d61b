"""``onnxfi results``: export a campaign database (one row per experiment) as CSV or JSON, or re-summarise it."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

from onnxfi.commands._common import stdout
from onnxfi.commands._json import SCHEMAS, add_json_arg, json_command, write_json

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "results", help="export or summarise a campaign database",
        description="Read the SQLite file written by `onnxfi analyze`.",
        epilog="examples:\n  onnxfi results run.db              summary tables\n"
               "  onnxfi results run.db --csv > rows.csv\n  onnxfi results run.db --json rows.json\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("db", metavar="DB")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="one CSV row per experiment to stdout")
    add_json_arg(fmt, "the campaign metadata, summary and rows")
    p.set_defaults(func=run)


@json_command
def run(args: argparse.Namespace) -> int:
    # numpy and ONNX load when the command runs, not with the parser (--help)
    from onnxfi.outcomes import ROW_FIELDS
    from onnxfi.store import load_campaign
    from onnxfi.summary import aggregate

    camp = load_campaign(args.db)
    plan, rows = camp.plan, camp.rows
    if args.csv:
        w = csv.writer(sys.stdout)
        w.writerow(ROW_FIELDS)
        for r in rows:
            w.writerow([json.dumps(r[k]) if k == "metrics" else r[k] for k in ROW_FIELDS])
        return 0
    summary = aggregate(plan, rows)
    from onnxfi.commands.analyze import print_summary

    stdout.print(f"{camp.path}: {len(rows)} of {len(plan.experiments)} experiments of {plan.model}")
    print_summary(plan, camp.clean, summary)
    write_json(args.json, {"schema": SCHEMAS["results"],
                           "plan": {k: v for k, v in plan.to_dict().items() if k != "experiments"},
                           "versions": camp.versions or None, "clean": camp.clean or None, "summary": summary,
                           "rows": rows})
    return 0
