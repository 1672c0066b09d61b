"""Terminal text of a bit error rate campaign: the per-rate table of :func:`onnxfi.ber.ber_summary`."""

from __future__ import annotations

import math
from typing import Any

from rich.markup import escape
from rich.table import Table

from onnxfi.commands._text import KEEP, NUMBER

__all__ = ["ber_table"]


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _metric_text(m: dict[str, Any]) -> str:
    mean, lo, hi = _num(m.get("mean")), _num(m.get("lo")), _num(m.get("hi"))
    if mean is None:
        return "-"
    if lo is None or hi is None:
        return f"{mean:.4f}"
    return f"{mean:.4f} [{lo:.4f}, {hi:.4f}]"


def _rate_text(r: dict[str, Any] | None) -> str:
    if not r or _num(r.get("rate")) is None:
        return "-"
    return f"{100 * r['rate']:.1f}% [{100 * r['lo']:.1f}, {100 * r['hi']:.1f}] ({r['k']}/{r['n']})"


def ber_table(summary: dict[str, Any]) -> Table:
    """One row per bit error rate: experiments stored, mean flips, the task metric's mean with its interval
    across experiments, and the SDC-1 and DUE rates with their Wilson intervals."""
    conf = int(round(100 * float(summary.get("confidence", 0.99))))
    metric = str(summary.get("metric") or "metric")
    clean = _num(summary.get("clean_value"))
    title = (f"{escape(metric)} vs bit error rate ({conf}% intervals: Student t across experiments for the "
             "metric, Wilson for rates)" + (f"; clean {escape(metric)} {clean:.4f}" if clean is not None else ""))
    t = Table(title=title, title_justify="left", show_edge=False, header_style="bold")
    for col in ("BER", "n", "flips (mean)", f"{escape(metric)} mean [CI]", "SDC-1 rate [CI]", "DUE rate [CI]"):
        t.add_column(col, **(NUMBER if col != "BER" else KEEP))
    left_out = 0
    for e in summary.get("ber") or []:
        flips = _num(e.get("flips_mean"))
        skipped = e.get("left_out") or {}
        left_out += int(skipped.get("crash", 0)) + int(skipped.get("not_finite", 0))
        rates = e.get("rates") or {}
        n = f"{e.get('n', 0)}" + (f"/{e['planned']}" if e.get("planned") and e["planned"] != e.get("n") else "")
        t.add_row(f"{float(e['rate']):g}", n, "-" if flips is None else f"{flips:,.1f}",
                  _metric_text(e.get("metric") or {}), _rate_text(rates.get("sdc1")), _rate_text(rates.get("due")))
    if left_out:
        t.caption = (f"{left_out} experiment(s) without a finite {escape(metric)} (crashes, non-finite values) "
                     "are left out of the metric means and counted in the rates")
        t.caption_justify = "left"
    return t
