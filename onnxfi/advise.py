"""The hardening advisor: which hardening to put where, under a latency and a memory budget, from measured
per-fault outcomes and measured per-unit costs, verified on faults it did not choose with.

1. **Units**: the activations the activation methods (ranger, clipact, relumax) would harden, by node name,
   and the weights ``weight-clip`` would check (a run-time range check of the weight), by site name.
2. **Outcomes**: one weight-fault plan (proportional design) is run on the model and, fault for fault, on the
   model hardened whole by each method (``analyze(..., compare_with=...)``): per fault, the fraction of eval
   inferences whose decision it changes (per-inference SDC) with and without each method.
3. **Attribution**: a weight fault is caught, if at all, by the first activation unit downstream of its
   weight (the activation its layer's output reaches first; Ranger's principle: bound the value where it is
   made) and by its own weight's check. A fault covered by both chosen protections takes the lower of its two
   measured outcomes (an assumption the verification tests); a fault covered by none keeps its own.
4. **Costs**: the latency of the model hardened by one method at one unit, against the original, measured in
   the same interleaved loop (median of ``repeat`` runs each), clipped at 0; memory: the growth of the
   parameter bytes.
5. **Choice**: per activation unit none or one method, per weight its check on or off, minimising the
   predicted per-inference SDC with the summed costs within the budgets: the activation assignments by
   enumeration up to 200,000 (else greedy by benefit per cost), and for each the weight checks over every
   subset (up to 2**12), else greedily. Per-unit costs need not add up, so the chosen recipe's own latency
   is measured, and while it is over the budget the choice is made again within a budget lowered by what
   the sum missed (at most 5 rounds).
6. **Verification**: the recipe is applied (``harden --recipe``), and a fresh plan (seed + 1: faults the
   choice never saw) is run on the original, the recipe and every whole-model method within the budget; the
   recipe's measured per-inference SDC, latency and memory are reported beside the prediction and each
   method's, with the paired difference on the same faults (:func:`paired_difference`).

The library computes; ``onnxfi advise`` prints.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxfi.data import Dataset
from onnxfi.errors import OnnxfiError
from onnxfi.harden import HardenOptions, HardenResult, harden, parse_methods
from onnxfi.passes import HARDENING_METHODS
from onnxfi.passes._hardening import node_label
from onnxfi.profile import copy_model
from onnxfi.runtime import make_session
from onnxfi.stats import stratified_estimate

__all__ = ["ADVISE_SCHEMA", "RECIPE_SCHEMA", "ACTIVATION_METHODS", "WEIGHT_METHOD", "CHOOSABLE", "Recipe",
           "load_recipe", "apply_recipe", "activation_units", "weight_units", "downstream_units", "choose",
           "paired_difference", "parameter_bytes", "latencies", "layers_regex"]

ADVISE_SCHEMA = "onnxfi.advise/1"
RECIPE_SCHEMA = "onnxfi.recipe/1"
ACTIVATION_METHODS = ("ranger", "clipact", "relumax")
WEIGHT_METHOD = "weight-clip"  # per weight unit: on or off
CHOOSABLE = (*ACTIVATION_METHODS, WEIGHT_METHOD)
_EXACT_LIMIT = 200_000


@dataclass(frozen=True)
class Recipe:
    """Hardening steps applied in order: each a method restricted to the units it names (exact node names)."""

    steps: tuple[tuple[str, tuple[str, ...]], ...]

    def to_dict(self, model: str = "") -> dict[str, Any]:
        return {"schema": RECIPE_SCHEMA, "model": model,
                "steps": [{"method": m, "layers": layers_regex(units), "units": list(units)} for m, units in self.steps]}

    @property
    def methods(self) -> list[str]:
        return [m for m, _ in self.steps]


def layers_regex(units: Sequence[str]) -> str:
    """The ``harden --layers`` regex that matches exactly these node names."""
    return "^(?:" + "|".join(re.escape(u) for u in units) + ")$"


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """A recipe file (:data:`RECIPE_SCHEMA`, written by ``onnxfi advise``); a bad one is one line."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise OnnxfiError(f"recipe {p}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:
        raise OnnxfiError(f"recipe {p}: not JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("schema") != RECIPE_SCHEMA or not isinstance(doc.get("steps"), list):
        raise OnnxfiError(f"recipe {p}: not an {RECIPE_SCHEMA} document (written by onnxfi advise)")
    steps = []
    for s in doc["steps"]:
        units = s.get("units") if isinstance(s, dict) else None
        method = s.get("method") if isinstance(s, dict) else None
        if not isinstance(method, str) or not isinstance(units, list) or not all(isinstance(u, str) for u in units):
            raise OnnxfiError(f"recipe {p}: a step needs a method and a list of unit names")
        parse_methods([method])
        steps.append((method, tuple(units)))
    return Recipe(tuple(steps))


def apply_recipe(model: ir.Model, recipe: Recipe, data: Dataset | None, options: HardenOptions) -> HardenResult:
    """``model`` hardened by the recipe's steps in order (each its method, only at its units)."""
    current = model
    reports = []
    for method, units in recipe.steps:
        if not units:
            continue
        opts = replace(options, layers=layers_regex(units))
        result = harden(current, [method], data, opts)
        current = result.model
        reports.extend(result.reports)
    return HardenResult(current if current is not model else copy_model(model), reports)


def activation_units(model: ir.Model) -> list[str]:
    """The activations the activation methods would harden, by node label, in graph order."""
    finder = HARDENING_METHODS["relumax"].from_settings(HardenOptions())
    return [finder.label(c) for c in finder.candidates(model)]


def weight_units(model: ir.Model) -> list[str]:
    """The weights :data:`WEIGHT_METHOD` would check, by site name, in site order."""
    finder = HARDENING_METHODS[WEIGHT_METHOD].from_settings(HardenOptions())
    return [finder.label(c) for c in finder.candidates(model) if finder.check(c) is None]


def downstream_units(model: ir.Model, units: Sequence[str]) -> Callable[[str], str | None]:
    """For a weight (initializer or Constant output) name: the first unit its value reaches (breadth first
    through the graph), or None."""
    wanted = set(units)
    values: dict[str, ir.Value] = dict(model.graph.initializers)
    for node in model.graph:
        for out in node.outputs:
            if out is not None and out.name:
                values.setdefault(out.name, out)
    memo: dict[str, str | None] = {}

    def find(name: str) -> str | None:
        if name in memo:
            return memo[name]
        start = values.get(name)
        found: str | None = None
        if start is not None:
            frontier, seen = [start], {id(start)}
            while frontier and found is None:
                nxt = []
                for v in frontier:
                    for node, _ in v.uses():
                        if node_label(node) in wanted:
                            found = node_label(node)
                            break
                        for out in node.outputs:
                            if out is not None and id(out) not in seen:
                                seen.add(id(out))
                                nxt.append(out)
                    if found is not None:
                        break
                frontier = nxt
        memo[name] = found
        return found

    return find


@dataclass
class Choice:
    """The advised assignment (unit -> method), its predicted per-inference SDC, latency and memory cost."""

    assignment: dict[str, str]
    predicted: float
    cost: float
    baseline: float
    combos: int
    exact: bool
    benefit: dict[tuple[str, str], float] = field(default_factory=dict)
    memory: float = 0.0

    def recipe(self) -> Recipe:
        by_method: dict[str, list[str]] = {}
        for unit, method in self.assignment.items():
            by_method.setdefault(method, []).append(unit)
        return Recipe(tuple((m, tuple(by_method[m])) for m in CHOOSABLE if m in by_method))


def _subset_sums(values: Sequence[float]) -> np.ndarray:
    """The sum of every subset of ``values``, indexed by the subset's bit mask."""
    sums = np.zeros(1)
    for v in values:
        sums = np.concatenate([sums, sums + v])
    return sums


def choose(units: Sequence[str], methods: Sequence[str], attributed: Mapping[str, Sequence[int]],
           base: Mapping[int, float], under: Mapping[str, Mapping[int, float]],
           cost: Mapping[tuple[str, str], float], budget: float, *,
           weights: Mapping[str, Sequence[int]] | None = None,
           memory: Mapping[tuple[str, str], float] | None = None, memory_budget: float = math.inf) -> Choice:
    """The assignment of at most one method per unit that predicts the lowest mean per-inference SDC over the
    faults (``base``: fault id -> its SDC unhardened; ``under[m]``: under whole-model ``m``; ``attributed[u]``:
    the faults activation unit ``u`` catches) with the summed ``cost`` within ``budget`` (and the summed
    ``memory`` within ``memory_budget``).

    ``weights`` (weight unit -> the faults in that weight) are the units :data:`WEIGHT_METHOD` can check, each
    on or off. A fault covered by a chosen activation method and by its weight's check is predicted to take
    the lower of its two measured outcomes. The activation assignments are enumerated (up to 200,000); for
    each, the weight checks are chosen exactly over every subset (up to 2**12 of them) or else greedily by
    gain per cost.
    """
    n = len(base)
    if n == 0:
        raise OnnxfiError("no fault outcome to advise from")
    weights = dict(weights or {})
    memory = memory or {}
    wm = WEIGHT_METHOD
    act_of = {f: u for u, fs in attributed.items() for f in fs}
    wt_of = {f: w for w, fs in weights.items() for f in fs}

    def outcome(f: int, m: str | None, on: bool) -> float:
        if m is None:
            return under[wm][f] if on else base[f]
        return min(under[m][f], under[wm][f]) if on else under[m][f]

    # faults grouped by (activation unit, weight unit); per group the summed outcome under each (method, check)
    groups: dict[tuple[str | None, str | None], list[int]] = {}
    for f in base:
        groups.setdefault((act_of.get(f), wt_of.get(f)), []).append(f)
    sums: dict[tuple[str | None, str | None], dict[tuple[str | None, bool], float]] = {}
    for (u, w), fs in groups.items():
        ms: list[str | None] = [None, *(methods if u is not None else ())]
        ons = (False, True) if w is not None else (False,)
        sums[(u, w)] = {(m, on): sum(outcome(f, m, on) for f in fs) for m in ms for on in ons}
    baseline = sum(base.values()) / n

    def mem(key: tuple[str, str]) -> float:
        return memory.get(key, 0.0)

    gain: dict[tuple[str, str], float] = {}
    for u in units:
        for m in methods:
            gain[(u, m)] = sum(t[(None, False)] - t[(m, False)] for (gu, _), t in sums.items() if gu == u) / n
    for w in weights:
        gain[(w, wm)] = sum(t[(None, False)] - t[(None, True)] for (_, gw), t in sums.items() if gw == w) / n
    options = [[None, *[m for m in methods if gain[(u, m)] > 0 and cost[(u, m)] <= budget
                        and mem((u, m)) <= memory_budget]] for u in units]
    wcands = [w for w in weights if cost[(w, wm)] <= budget and mem((w, wm)) <= memory_budget
              and any(t[(m, False)] > t[(m, True)] for (_, gw), t in sums.items() if gw == w
                      for (m, on) in t if not on)]
    combos = math.prod(len(o) for o in options)
    exact = combos <= _EXACT_LIMIT
    if not exact:  # greedy over the activation units by gain per cost (free ones first), one method per unit
        cands = sorted(((gain[(u, m)] / max(cost[(u, m)], 1e-9), u, m) for u, opts in zip(units, options)
                        for m in opts if m is not None), reverse=True)
        spent, used, chosen = 0.0, 0.0, {}
        for _, u, m in cands:
            if u not in chosen and spent + cost[(u, m)] <= budget and used + mem((u, m)) <= memory_budget:
                chosen[u] = m
                spent += cost[(u, m)]
                used += mem((u, m))
        picks: Any = [tuple(chosen.get(u) for u in units)]
    else:
        picks = itertools.product(*options)
    w_cost = [cost[(w, wm)] for w in wcands]
    w_mem = [mem((w, wm)) for w in wcands]
    by_subset = exact and len(wcands) <= 12 and combos * (1 << len(wcands)) <= 50 * _EXACT_LIMIT
    exact = exact and (by_subset or not wcands)
    if by_subset:
        sub_cost, sub_mem = _subset_sums(w_cost), _subset_sums(w_mem)
    best: tuple[float, float, float, dict[str, str]] = (math.inf, 0.0, 0.0, {})
    for pick in picks:
        a = {u: m for u, m in zip(units, pick) if m is not None}
        c = sum(cost[(u, m)] for u, m in a.items())
        mu = sum(mem((u, m)) for u, m in a.items())
        if c > budget or mu > memory_budget:
            continue
        at = {key: t[(a.get(key[0]) if key[0] is not None else None, False)] for key, t in sums.items()}
        total = sum(at.values())
        gw = [sum(at[key] - t[(a.get(key[0]) if key[0] is not None else None, True)]
                  for key, t in sums.items() if key[1] == w) for w in wcands]
        on: list[int] = []
        if by_subset:  # the subset with the largest gain within what is left of both budgets (cheapest on a tie)
            ok = (sub_cost <= budget - c + 1e-12) & (sub_mem <= memory_budget - mu + 1e-12)
            gains = np.where(ok, _subset_sums(gw), -np.inf)
            tied = np.flatnonzero(gains >= gains.max() - 1e-12)
            mask = int(tied[np.argmin(sub_cost[tied])])
            on = [i for i in range(len(wcands)) if mask >> i & 1]
        else:  # greedily by gain per cost
            spent, used = c, mu
            for i in sorted(range(len(wcands)), key=lambda i: gw[i] / max(w_cost[i], 1e-9), reverse=True):
                if gw[i] > 0 and spent + w_cost[i] <= budget and used + w_mem[i] <= memory_budget:
                    on.append(i)
                    spent += w_cost[i]
                    used += w_mem[i]
        total -= sum(gw[i] for i in on)
        c += sum(w_cost[i] for i in on)
        mu += sum(w_mem[i] for i in on)
        if total < best[0] - 1e-12 or (abs(total - best[0]) <= 1e-12 and c < best[1]):
            best = (total, c, mu, {**a, **{wcands[i]: wm for i in on}})
    return Choice(best[3], best[0] / n, best[1], baseline, combos, exact, gain, best[2])


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], population: int,
                      confidence: float) -> tuple[float, float, float]:
    """Mean of ``a[f] - b[f]`` over the faults both ran (values in [0, 1], a self-weighting sample of a
    population of ``population`` faults) with its interval: :func:`onnxfi.stats.stratified_estimate` of
    ``(d + 1) / 2``, mapped back (its half pseudo-observations at -1 and +1 keep an all-zero sample's
    interval from collapsing)."""
    keys = sorted(set(a) & set(b))
    if not keys:
        raise OnnxfiError("no fault ran on both models")
    y = np.array([(a[k] - b[k] + 1.0) / 2.0 for k in keys])
    r = stratified_estimate(np.array([len(y)]), np.array([y.sum()]), np.array([(y * y).sum()]),
                            np.array([max(population, len(y))]), confidence)
    return 2 * r.rate - 1, 2 * r.lo - 1, 2 * r.hi - 1


def parameter_bytes(model: ir.Model) -> int:
    """Bytes of the weights the model stores: initializers and ``Constant`` node tensors, subgraphs included."""
    graphs = [model.graph, *model.graph.subgraphs()]
    held = sum(int(v.const_value.nbytes) for g in graphs for v in g.initializers.values() if v.const_value is not None)
    for node in model.graph.all_nodes():
        attr = node.attributes.get("value") if node.op_type == "Constant" else None
        if attr is not None and attr.type == ir.AttributeType.TENSOR:
            held += int(attr.value.nbytes)
    return held


def latencies(models: Mapping[str, ir.Model], feeds: Mapping[str, np.ndarray], repeat: int = 100,
              threads: int | None = 1, provider: str = "cpu") -> dict[str, float]:
    """Median latency (ms) of each model on ``feeds``, the runs interleaved (one run of each model per
    round, ``repeat`` rounds after a warm-up), so that drift of the machine falls on all of them alike."""
    sessions = {key: make_session(m, provider, threads=threads) for key, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for r in range(repeat + 3):
        for key, s in sessions.items():
            t = time.perf_counter()
            s.run(None, dict(feeds))
            if r >= 3:
                times[key].append(time.perf_counter() - t)
    return {k: 1e3 * float(np.median(v)) for k, v in times.items()}
