"""Campaign rows -> the model's rates with confidence intervals, from the estimator of the plan's design:
per fault and per inference, overall and per layer, bit and layer x bit; how much of the plan the rates
use; outcome and execution-path counts. The one estimator module: terminal, JSON, HTML, gate, early stop
and compare read their numbers here (docs/statistics.md has the formulas).

Only complete rounds count: a round is complete when every planned experiment of it is stored, and every
round samples the whole fault space in the design's proportions, so complete rounds are a sample of the
model; the stored rows of an unfinished round are left out (they are grouped by site). The estimator:

- ``proportional``: every fault equally likely, so k/n with its Wilson interval;
- ``per-stratum``: stratified over the plan's (site, bit, fault model) strata, weights N_h / N;
- ``adaptive``: stratified over the Neyman strata (bit, fault model);

a group (a layer, a bit, a layer x bit cell) uses the same estimator on the strata inside it.
:func:`onnxfi.stats.stratified_estimate` gives the stratified interval. Imports neither the engine nor ONNX Runtime.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxfi.outcomes import FLAGS, OUTCOMES
from onnxfi.plan import Plan, complete_rounds, estimation_strata, stratum_of
from onnxfi.stats import Rate, rate_with_ci, stratified_estimate

__all__ = [
    "UNRECORDED_PATH", "estimate", "headline", "headline_halfwidth", "progress", "layer_bit", "path_counts",
    "aggregate", "QUESTIONS",
]

Row = dict[str, Any]

# the path key of rows stored before the engine recorded how it executed an experiment
UNRECORDED_PATH = "unrecorded"
# per-experiment metrics whose campaign mean the summary reports
_MEAN_METRICS = ("task_value", "accuracy", "miou", "mean_entropy", "mean_msp", "ece", "pixel_accuracy")


def _map_drop(m: dict[str, Any]) -> float | None:
    """A detector's mAP@0.5 drop (clean - faulty, a gain counting as 0); None for other tasks."""
    if m.get("task_metric") not in ("map50", "map50_golden"):
        return None
    v, c = m.get("task_value"), m.get("clean_value")
    if not isinstance(v, (int, float)) or not isinstance(c, (int, float)):
        return 1.0 if isinstance(c, (int, float)) else None  # a NaN mAP (a fault's NaN box): all of it lost
    return max(0.0, float(c) - float(v))


# per-fault means only some tasks store, each estimated as the design weighs the sample (values clipped to
# [0, 1]: a token error rate above 1, insertions, counts as 1)
_TASK_MEANS: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "token_error_rate": lambda m: m.get("token_error_rate"),
    "map50_drop": _map_drop,
}
# the layer x bit grid counts experiments with any of these flags
_GRID_FLAGS = ("sdc1", "due")


def estimate(
    design: str, n: np.ndarray, total: np.ndarray, total_sq: np.ndarray, population: np.ndarray,
    strata: np.ndarray, confidence: float, binary: bool = True,
) -> Rate:
    """The estimate of ``design`` over cells (plan strata): ``n`` sampled of ``population``, with ``total`` the sum
    and ``total_sq`` the sum of squares of the value (for a 0/1 flag, ``binary``: both the count); ``strata`` the
    estimation stratum of each cell (:func:`onnxfi.plan.estimation_strata`).

    A proportional sample is self-weighting: a flag's rate is k/n with its Wilson interval (``"census"`` when
    every fault was drawn); a mean of fractions is the one-stratum :func:`~onnxfi.stats.stratified_estimate`.
    Other designs: :func:`~onnxfi.stats.stratified_estimate` over the estimation strata.
    """
    if design == "proportional":
        count, pop = int(n.sum()), int(population.sum())
        if count == 0:
            return Rate(0, 0, float("nan"), 0.0, 1.0, "none", float(confidence))
        if binary and count < pop:
            return rate_with_ci(int(round(float(total.sum()))), count, confidence)
        strata = np.zeros(len(n), dtype=np.int64)
    _, ids = np.unique(strata, return_inverse=True)
    size = int(ids.max()) + 1 if len(ids) else 0

    def per(values: np.ndarray) -> np.ndarray:
        return np.bincount(ids, weights=values, minlength=size)

    return stratified_estimate(per(n), per(total), per(total_sq), per(population), confidence)


def _entry(r: Rate, with_counts: bool = True) -> dict[str, Any]:
    d: dict[str, Any] = {"k": r.k, "n": r.n} if with_counts else {}
    d.update({"rate": r.rate, "lo": r.lo, "hi": r.hi, "method": r.method})
    return d


@dataclass
class _Cells:
    """Per plan stratum (cell): what the complete rounds sampled, and what the design weights it by."""

    design: str
    confidence: float
    population: np.ndarray
    strata: np.ndarray
    n: np.ndarray
    k: dict[str, np.ndarray]  # per flag, plus "grid" (any of _GRID_FLAGS)
    y: np.ndarray  # sum and sum of squares of images_changed
    y2: np.ndarray
    # per value that only some tasks store (a sequence's token error rate, a detector's mAP drop): its sum and
    # sum of squares per cell
    means: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def rate(self, flag: str, cells: np.ndarray | None = None) -> Rate:
        sel = slice(None) if cells is None else cells
        k = self.k[flag][sel]
        return estimate(self.design, self.n[sel], k, k, self.population[sel], self.strata[sel], self.confidence)

    def per_inference(self, cells: np.ndarray | None = None) -> Rate:
        sel = slice(None) if cells is None else cells
        return estimate(self.design, self.n[sel], self.y[sel], self.y2[sel], self.population[sel],
                        self.strata[sel], self.confidence, binary=False)

    def mean(self, key: str) -> Rate | None:
        """The model's mean of a value in :data:`_TASK_MEANS` (None when the campaign's task stores none)."""
        if key not in self.means:
            return None
        t, t2 = self.means[key]
        return estimate(self.design, self.n, t, t2, self.population, self.strata, self.confidence, binary=False)


def _by_id(plan: Plan, rows: Sequence[Row]) -> tuple[dict[int, Row], dict[int, int]]:
    """Stored rows of the plan's experiments by id, and each id's position in ``plan.experiments``."""
    pos = {e.id: i for i, e in enumerate(plan.experiments)}
    return {int(r["id"]): r for r in rows if int(r["id"]) in pos}, pos


def _cells(plan: Plan, rows: Sequence[Row], confidence: float,
           grid_flags: Sequence[str] = _GRID_FLAGS) -> tuple[_Cells, dict[str, Any]]:
    stored, pos = _by_id(plan, rows)
    done = set(complete_rounds(plan, stored))
    cell_of = stratum_of(plan)
    used = [(int(cell_of[pos[i]]), r) for i, r in stored.items()
            if plan.experiments[pos[i]].round in done and cell_of[pos[i]] >= 0]
    size = len(plan.strata)
    cell = np.array([c for c, _ in used], dtype=np.int64)

    def sums(values: Iterable[float]) -> np.ndarray:
        return np.bincount(cell, weights=np.fromiter(values, dtype=np.float64, count=len(used)), minlength=size)

    k = {f: sums(float(bool(r[f])) for _, r in used) for f in FLAGS}
    k["grid"] = sums(float(any(bool(r[f]) for f in grid_flags)) for _, r in used)
    y = [float(r.get("images_changed") or 0.0) for _, r in used]
    means = {}
    for key, value in _TASK_MEANS.items():
        vals = [value(r.get("metrics") or {}) for _, r in used]
        if any(v is not None for v in vals):  # rows without it (masked, crashed) changed nothing
            t = [min(1.0, max(0.0, v)) if v is not None and math.isfinite(v) else 0.0 for v in vals]
            means[key] = (sums(t), sums(v * v for v in t))
    cells = _Cells(
        design=plan.design, confidence=confidence,
        population=np.array([s.population for s in plan.strata], dtype=np.float64),
        strata=estimation_strata(plan), n=np.bincount(cell, minlength=size).astype(np.float64), k=k,
        y=sums(y), y2=sums(v * v for v in y),
        means=means,
    )
    rounds = sorted({e.round for e in plan.experiments})
    planned = len(plan.experiments)
    prog = {"planned": planned, "stored": len(stored), "used": len(used), "rounds": len(rounds),
            "rounds_complete": len(done), "partial_rows": len(stored) - len(used),
            "complete": planned > 0 and len(stored) == planned, "fraction": len(used) / planned if planned else 0.0}
    return cells, prog


def progress(plan: Plan, rows: Iterable[Row]) -> dict[str, Any]:
    """How much of the plan the rates use: ``planned``, ``stored``, ``used`` (rows of complete rounds),
    ``rounds``, ``rounds_complete``, ``partial_rows`` (stored rows of unfinished rounds, left out), ``complete``
    (every planned experiment stored) and ``fraction`` (used / planned)."""
    return _cells(plan, list(rows), plan.confidence)[1]


def headline(plan: Plan, rows: Iterable[Row], flag: str = "sdc1", confidence: float | None = None) -> dict[str, Any]:
    """One flag's headline rate ``{"k", "n", "rate", "lo", "hi", "method"}``, as :func:`aggregate`'s ``rates``."""
    cells, _ = _cells(plan, list(rows), confidence or plan.confidence)
    return _entry(cells.rate(flag))


def headline_halfwidth(plan: Plan, rows: Iterable[Row], flag: str = "sdc1", confidence: float | None = None) -> float:
    """Half the width of :func:`headline`'s interval (0.5 before any round is complete): for early stopping."""
    h = headline(plan, rows, flag, confidence)
    return (h["hi"] - h["lo"]) / 2.0


def _groups(plan: Plan, key: Any) -> dict[Any, np.ndarray]:
    """Plan strata (cells) grouped by ``key(stratum)``, in plan order; a None key is no group."""
    out: dict[Any, list[int]] = defaultdict(list)
    for c, st in enumerate(plan.strata):
        g = key(st)
        if g is not None:
            out[g].append(c)
    return {g: np.array(cs, dtype=np.int64) for g, cs in out.items()}


def _group_table(cells: _Cells, groups: dict[Any, np.ndarray]) -> list[dict[str, Any]]:
    """One entry per group with rows in complete rounds: its key, size, every flag's rate and the per-inference rate."""
    out = []
    for key, cs in groups.items():
        n = int(cells.n[cs].sum())
        if n == 0:
            continue
        entry: dict[str, Any] = {"key": key, "n": n, **{f: _entry(cells.rate(f, cs)) for f in FLAGS}}
        per = cells.per_inference(cs)
        entry["images_changed_mean"] = per.rate
        entry["per_inference"] = _entry(per, with_counts=False)
        out.append(entry)
    return out


def _layer_bit(plan: Plan, cells: _Cells) -> list[dict[str, Any]]:
    out = []
    for (site, bit), cs in _groups(plan, lambda st: None if st.bit is None else (st.site, st.bit)).items():
        if cells.n[cs].sum() > 0:
            out.append({"site": site, "bit": bit, **_entry(cells.rate("grid", cs))})
    return out


def layer_bit(rows: Iterable[Row], confidence: float, flags: Sequence[str] = _GRID_FLAGS,
              plan: Plan | None = None) -> list[dict[str, Any]]:
    """Per (site, bit) cell: the rate of experiments with any of ``flags`` (bit faults only).

    With ``plan``: the design's estimate over complete rounds (as :func:`aggregate`'s ``layer_bit``); without:
    raw k/n over ``rows`` with Wilson intervals (a sample statistic).
    """
    rows = list(rows)
    if plan is not None:
        return _layer_bit(plan, _cells(plan, rows, confidence, flags)[0])
    by_cell: dict[tuple[str, int], list[Row]] = defaultdict(list)
    for r in rows:
        if r["bit"] is not None:
            by_cell[(r["site"], r["bit"])].append(r)
    return [{"site": site, "bit": bit,
             **_entry(rate_with_ci(sum(1 for r in rs if any(r[f] for f in flags)), len(rs), confidence))}
            for (site, bit), rs in by_cell.items()]


def path_counts(rows: Iterable[Row]) -> dict[str, int]:
    """Experiments per execution path (how the engine ran them), most used first."""
    counts: Counter[Hashable] = Counter(r.get("path") or UNRECORDED_PATH for r in rows)
    return {str(k): v for k, v in counts.most_common()}


# what the headline rates answer, per fault model (the summary's ``question``)
QUESTIONS = {
    "persistent": "per fault: the probability that one fault, present for the whole eval set (a weight in memory, "
                  "an activation element in every inference), changes some eval decision",
    "transient": "per inference: the probability that one transient fault (one activation element of one "
                 "inference) changes that inference's decision",
    "ber": "per draw at a bit error rate: the eval metric with every selected bit flipped with that probability",
}


def aggregate(plan: Plan, rows: Iterable[Row], confidence: float | None = None) -> dict[str, Any]:
    """The campaign summary (the keys are a contract: terminal, JSON, HTML, gate and compare read them).

    ``fault_model`` and ``question`` (:data:`QUESTIONS`: what the rates answer; for a transient plan the
    per-fault and per-inference rates are the same question); a fault-rate plan's summary is
    :func:`onnxfi.ber.ber_summary`'s. ``design``; ``rates`` (the headline per-fault rate of every flag: the design's estimator over complete
    rounds, ``{"k", "n", "rate", "lo", "hi", "method"}``); ``rates_raw`` (k/n with Wilson intervals over every
    stored row: a sample statistic); ``per_inference`` (``{"sdc1": {"rate", "lo", "hi", "method"}}``: the mean
    over the fault space of the fraction of eval inferences whose top-1 decision a fault changes); ``progress``
    (:func:`progress`); ``strata`` (plan strata, and those sampled by complete rounds); ``layers``, ``bits`` and
    ``layer_bit`` (the same estimator restricted to each group); ``experiments``, ``planned``, ``confidence``,
    ``outcomes``, ``images_changed_mean`` and ``metrics_mean`` (over every stored row); ``paths``.
    """
    conf = confidence or plan.confidence
    rows = list(rows)
    if plan.fault_model == "ber":
        from onnxfi.ber import ber_summary

        return ber_summary(plan, rows, conf)
    cells, prog = _cells(plan, rows, conf)
    changed_all = [r["images_changed"] for r in rows if r["images_changed"] is not None]
    metric_vals: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        for k, v in (r.get("metrics") or {}).items():
            if isinstance(v, (int, float)) and k in _MEAN_METRICS:
                metric_vals[k].append(float(v))
    layers = _group_table(cells, _groups(plan, lambda st: st.site))
    layers.sort(key=lambda e: (-e["sdc1"]["rate"], -e["due"]["rate"], str(e["key"])))
    bits = _group_table(cells, _groups(plan, lambda st: st.bit))
    bits.sort(key=lambda e: -int(e["key"]))
    return {
        "experiments": len(rows),
        "planned": len(plan.experiments),
        "confidence": conf,
        "design": plan.design,
        "fault_model": plan.fault_model,
        "question": QUESTIONS[plan.fault_model],
        "outcomes": {o: sum(1 for r in rows if r["outcome"] == o) for o in OUTCOMES},
        "rates": {f: _entry(cells.rate(f)) for f in FLAGS},
        "rates_raw": {f: _entry(rate_with_ci(sum(1 for r in rows if r[f]), len(rows), conf)) for f in FLAGS},
        "per_inference": {"sdc1": _entry(cells.per_inference(), with_counts=False)},
        **({"per_token": {"error_rate": _entry(tok, with_counts=False)}} if (tok := cells.mean("token_error_rate"))
           else {}),
        **({"task_drop": {"map50": _entry(drop, with_counts=False)}} if (drop := cells.mean("map50_drop")) else {}),
        "progress": prog,
        "strata": {"total": int(np.count_nonzero(cells.population)),
                   "sampled": int(np.count_nonzero(cells.n))},
        "images_changed_mean": float(np.mean(changed_all)) if changed_all else 0.0,
        "layers": layers,
        "bits": bits,
        "layer_bit": _layer_bit(plan, cells),
        "metrics_mean": {k: float(np.mean(v)) for k, v in metric_vals.items()},
        "paths": path_counts(rows),
    }
