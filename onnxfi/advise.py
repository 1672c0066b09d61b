"""The hardening advisor: which activation hardening to put where, under a latency budget, from measured
per-fault outcomes and measured per-layer costs, verified on faults it did not choose with.

1. **Units**: the activations the activation methods (ranger, clipact, relumax) would harden, by node name.
2. **Outcomes**: one weight-fault plan (proportional design) is run on the model and, fault for fault, on the
   model hardened whole by each method (``analyze(..., compare_with=...)``): per fault, the fraction of eval
   inferences whose decision it changes (per-inference SDC) with and without each method.
3. **Attribution**: a weight fault is caught, if at all, by the first unit downstream of its weight (the
   activation its layer's output reaches first; Ranger's principle: bound the value where it is made). A
   fault with no unit downstream keeps its unhardened outcome.
4. **Costs**: the latency of the model hardened by one method at one unit, against the original, measured in
   the same interleaved loop (median of ``repeat`` runs each), clipped at 0.
5. **Choice**: per unit none or one method, maximising the predicted reduction of the per-inference SDC
   (the faults attributed to a unit take the outcome they had under that unit's method) with the summed unit
   costs within the budget; exact by enumeration up to 200,000 combinations, else greedy by benefit per cost.
   Per-unit costs need not add up, so the chosen recipe's own latency is measured, and while it is over the
   budget the choice is made again within a budget lowered by what the sum missed (at most 5 rounds).
6. **Verification**: the recipe is applied (``harden --recipe``), and a fresh plan (seed + 1: faults the
   choice never saw) is run on the original, the recipe and every whole-model method; the recipe's measured
   per-inference SDC and latency overhead are reported beside the prediction and each method's.

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

__all__ = ["ADVISE_SCHEMA", "RECIPE_SCHEMA", "ACTIVATION_METHODS", "Recipe", "load_recipe", "apply_recipe",
           "activation_units", "downstream_units", "choose", "latencies", "layers_regex"]

ADVISE_SCHEMA = "onnxfi.advise/1"
RECIPE_SCHEMA = "onnxfi.recipe/1"
ACTIVATION_METHODS = ("ranger", "clipact", "relumax")
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
    """The advised assignment (unit -> method), its predicted per-inference SDC and latency cost."""

    assignment: dict[str, str]
    predicted: float
    cost: float
    baseline: float
    combos: int
    exact: bool
    benefit: dict[tuple[str, str], float] = field(default_factory=dict)

    def recipe(self) -> Recipe:
        by_method: dict[str, list[str]] = {}
        for unit, method in self.assignment.items():
            by_method.setdefault(method, []).append(unit)
        return Recipe(tuple((m, tuple(by_method[m])) for m in ACTIVATION_METHODS if m in by_method))


def choose(units: Sequence[str], methods: Sequence[str], attributed: Mapping[str, Sequence[int]],
           base: Mapping[int, float], under: Mapping[str, Mapping[int, float]],
           cost: Mapping[tuple[str, str], float], budget: float) -> Choice:
    """The assignment of at most one method per unit that predicts the lowest mean per-inference SDC over the
    faults (``base``: fault id -> its SDC unhardened; ``under[m]``: under whole-model ``m``; ``attributed[u]``:
    the faults ``u`` catches) with the summed ``cost`` within ``budget``."""
    n = len(base)
    if n == 0:
        raise OnnxfiError("no fault outcome to advise from")
    baseline = sum(base.values()) / n
    gain = {(u, m): sum(base[f] - under[m][f] for f in attributed.get(u, ())) / n for u in units for m in methods}
    options = [[None, *[m for m in methods if gain[(u, m)] > 0]] for u in units]
    combos = math.prod(len(o) for o in options)
    best: tuple[float, float, dict[str, str]] = (0.0, 0.0, {})
    if combos <= _EXACT_LIMIT:
        for pick in itertools.product(*options):
            c = sum(cost[(u, m)] for u, m in zip(units, pick) if m is not None)
            if c > budget:
                continue
            g = sum(gain[(u, m)] for u, m in zip(units, pick) if m is not None)
            if (g, -c) > (best[0], -best[1]):
                best = (g, c, {u: m for u, m in zip(units, pick) if m is not None})
        exact = True
    else:  # greedy by gain per unit of cost (free ones first), one method per unit
        cands = sorted(((gain[(u, m)] / max(cost[(u, m)], 1e-9), u, m) for u, opts in zip(units, options)
                        for m in opts if m is not None), reverse=True)
        spent, chosen = 0.0, {}
        for _, u, m in cands:
            if u not in chosen and spent + cost[(u, m)] <= budget:
                chosen[u] = m
                spent += cost[(u, m)]
        best = (sum(gain[(u, m)] for u, m in chosen.items()), spent, chosen)
        exact = False
    return Choice(best[2], baseline - best[0], best[1], baseline, combos, exact, gain)


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
