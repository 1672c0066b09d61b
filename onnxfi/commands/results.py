"""``onnxfi results``: export a campaign database (one row per experiment) as CSV or JSON, or re-summarise it."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from onnxfi.campaign import CampaignResult, aggregate
from onnxfi.commands._common import stdout
from onnxfi.errors import OnnxfiError
from onnxfi.plan import Plan
from onnxfi.store import ROW_FIELDS, Store

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "results", help="export or summarise a campaign database",
        description="Read the SQLite file written by `onnxfi analyze`.",
        epilog="examples:\n  onnxfi results run.db              summary tables\n"
               "  onnxfi results run.db --csv > rows.csv\n  onnxfi results run.db --json > rows.json\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("db", metavar="DB")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="one CSV row per experiment to stdout")
    fmt.add_argument("--json", action="store_true", help="campaign metadata, summary and rows as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = Path(args.db)
    if not path.is_file():
        raise OnnxfiError(f"results database not found: {path}")
    with Store(path) as store:
        plan_d = store.meta("plan")
        if plan_d is None:
            raise OnnxfiError(f"{path}: no campaign in it")
        plan = Plan.from_dict(plan_d)
        rows = list(store.rows())
        if args.csv:
            w = csv.writer(sys.stdout)
            w.writerow(ROW_FIELDS)
            for r in rows:
                w.writerow([json.dumps(r[k]) if k == "metrics" else r[k] for k in ROW_FIELDS])
            return 0
        summary = aggregate(plan, rows)
        if args.json:
            doc = {"schema": "onnxfi.results/1", "plan": {k: v for k, v in plan.to_dict().items() if k != "experiments"},
                   "versions": store.meta("versions"), "clean": store.meta("clean"), "summary": summary, "rows": rows}
            sys.stdout.write(json.dumps(doc, default=str) + "\n")
            return 0
        from onnxfi.commands.analyze import print_summary

        stdout.print(f"{path}: {len(rows)} of {len(plan.experiments)} experiments of {plan.model}")
        print_summary(CampaignResult(plan, store.meta("clean") or {}, summary))
    return 0
