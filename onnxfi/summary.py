"""Campaign rows -> rates with confidence intervals: overall (raw and population-weighted), per layer, per bit,
layer x bit, outcome and execution-path counts. The one estimator module: every report reads its numbers here.

Raw rates are k/n over the stored experiments with Wilson intervals (:func:`onnxfi.stats.rate_with_ci`).
The population-weighted rate weights each (site, bit) stratum by its share of the fault space
(:func:`onnxfi.stats.stratified_rate`). Imports neither the engine nor ONNX Runtime.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np

from onnxfi.outcomes import FAILURE_FLAGS, FLAGS, OUTCOMES
from onnxfi.plan import Plan
from onnxfi.stats import rate_with_ci, stratified_rate

__all__ = [
    "UNRECORDED_PATH", "rate", "rates", "weighted_rates", "group_table", "layer_table", "bit_table",
    "layer_bit", "path_counts", "aggregate",
]

Row = dict[str, Any]

# the path key of rows stored before the engine recorded how it executed an experiment
UNRECORDED_PATH = "unrecorded"
# per-experiment metrics whose campaign mean the summary reports
_MEAN_METRICS = ("task_value", "accuracy", "miou", "mean_entropy", "mean_msp", "ece", "pixel_accuracy")


def rate(k: int, n: int, confidence: float) -> dict[str, Any]:
    """k/n with its Wilson interval, as the JSON-ready ``{"k", "n", "rate", "lo", "hi"}`` of every summary table."""
    r = rate_with_ci(k, n, confidence)
    return {"k": k, "n": n, "rate": r.rate, "lo": r.lo, "hi": r.hi}


def _count(rows: Iterable[Row], flag: str) -> int:
    return sum(1 for r in rows if r[flag])


def rates(rows: Sequence[Row], confidence: float, flags: Sequence[str] = FLAGS) -> dict[str, dict[str, Any]]:
    """Each flag's raw rate over ``rows``."""
    return {f: rate(_count(rows, f), len(rows), confidence) for f in flags}


def _strata(plan: Plan) -> dict[tuple[str, int | None], int]:
    """Population per (site, bit): the plan's strata are per (site, bit, fault model); rows are grouped without the model."""
    pop: dict[tuple[str, int | None], int] = defaultdict(int)
    for s in plan.strata:
        pop[(s.site, s.bit)] += s.population
    return pop


def weighted_rates(plan: Plan, rows: Sequence[Row], confidence: float) -> dict[str, Any]:
    """Population-weighted rate of each failure flag over the sampled (site, bit) strata.

    Unsampled strata are not represented: ``strata_sampled`` / ``strata_total`` say how many there are.
    A stratum the plan does not know (rows of another plan) counts with its sample size as population.
    """
    pop = _strata(plan)
    by_stratum: dict[tuple[str, int | None], list[Row]] = defaultdict(list)
    for r in rows:
        by_stratum[(r["site"], r["bit"])].append(r)
    out: dict[str, Any] = {}
    if by_stratum:
        for flag in FAILURE_FLAGS:
            strata = [(_count(rs, flag), len(rs), pop.get(key, len(rs))) for key, rs in by_stratum.items()]
            w = stratified_rate(strata, confidence)
            out[flag] = {"rate": w.rate, "lo": w.lo, "hi": w.hi}
    out["strata_sampled"] = len(by_stratum)
    out["strata_total"] = len(pop)
    return out


def group_table(groups: dict[Any, list[Row]], confidence: float) -> list[dict[str, Any]]:
    """One entry per group: its key, size, every flag's rate and the mean fraction of images changed."""
    out = []
    for key, rs in groups.items():
        entry: dict[str, Any] = {"key": key, "n": len(rs), **rates(rs, confidence)}
        changed = [r["images_changed"] for r in rs if r["images_changed"] is not None]
        entry["images_changed_mean"] = float(np.mean(changed)) if changed else 0.0
        out.append(entry)
    return out


def layer_table(rows: Iterable[Row], confidence: float) -> list[dict[str, Any]]:
    """Per fault site, most vulnerable first (SDC-1 rate, then DUE rate, then name)."""
    by_site: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_site[r["site"]].append(r)
    table = group_table(by_site, confidence)
    table.sort(key=lambda e: (-e["sdc1"]["rate"], -e["due"]["rate"], str(e["key"])))
    return table


def bit_table(rows: Iterable[Row], confidence: float) -> list[dict[str, Any]]:
    """Per flipped bit (bit faults only), most significant bit first."""
    by_bit: dict[int, list[Row]] = defaultdict(list)
    for r in rows:
        if r["bit"] is not None:
            by_bit[int(r["bit"])].append(r)
    table = group_table(by_bit, confidence)
    table.sort(key=lambda e: -int(e["key"]))
    return table


def layer_bit(rows: Iterable[Row], confidence: float, flags: Sequence[str] = ("sdc1", "due")) -> list[dict[str, Any]]:
    """Per (site, bit) cell: the rate of experiments with any of ``flags`` (bit faults only)."""
    cells: dict[tuple[str, int], list[Row]] = defaultdict(list)
    for r in rows:
        if r["bit"] is not None:
            cells[(r["site"], r["bit"])].append(r)
    return [{"site": site, "bit": bit, **rate(sum(1 for r in rs if any(r[f] for f in flags)), len(rs), confidence)}
            for (site, bit), rs in cells.items()]


def path_counts(rows: Iterable[Row]) -> dict[str, int]:
    """Experiments per execution path (how the engine ran them), most used first."""
    counts: Counter[Hashable] = Counter(r.get("path") or UNRECORDED_PATH for r in rows)
    return {str(k): v for k, v in counts.most_common()}


def aggregate(plan: Plan, rows: Iterable[Row], confidence: float | None = None) -> dict[str, Any]:
    """The campaign summary: counts, raw and population-weighted rates, per layer, per bit, layer x bit, means."""
    conf = confidence or plan.confidence
    rows = list(rows)
    changed_all = [r["images_changed"] for r in rows if r["images_changed"] is not None]
    metric_vals: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        for k, v in (r.get("metrics") or {}).items():
            if isinstance(v, (int, float)) and k in _MEAN_METRICS:
                metric_vals[k].append(float(v))
    return {
        "experiments": len(rows),
        "planned": len(plan.experiments),
        "confidence": conf,
        "outcomes": {o: sum(1 for r in rows if r["outcome"] == o) for o in OUTCOMES},
        "rates": rates(rows, conf),
        "rates_weighted": weighted_rates(plan, rows, conf),
        "images_changed_mean": float(np.mean(changed_all)) if changed_all else 0.0,
        "layers": layer_table(rows, conf),
        "bits": bit_table(rows, conf),
        "layer_bit": layer_bit(rows, conf),
        "metrics_mean": {k: float(np.mean(v)) for k, v in metric_vals.items()},
        "paths": path_counts(rows),
    }
