"""Campaign plans: a design and a size -> which faults to inject where, in rounds; seeded, saved as JSON, replayable.

The fault space is cut into strata, one per (site, bit, fault model) (per (site, fault model) for value
faults). Sizing: a fixed number of faults, Leveugle et al. (DATE 2009)
``n = N / (1 + e^2 (N - 1) / (t^2 p (1 - p)))`` for margin ``e`` at a confidence (``t`` its two-sided
normal quantile), a number per stratum, or every fault when the space is no larger than the sample.

Designs (docs/statistics.md has the estimators that go with them):

- ``proportional`` (default): every fault of the space equally likely (n/N). Strata get n N_h / N faults
  by systematic randomized rounding, so the sample rate is the model's rate.
- ``per-stratum``: the same number of faults in every stratum (capped at its population), for layer x bit
  sensitivity maps; rates are re-weighted by stratum population.
- ``adaptive``: for a margin; a pilot, then rounds of Neyman allocation over (bit, fault model) strata,
  proportional over sites inside each, until the SDC-1 interval is within the margin (:func:`extend_plan`).

Experiments are ordered round-major; every round samples the whole space in the design's proportions, and
a round's experiments are grouped by site. A set of complete rounds is therefore itself a sample of the model.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from onnxfi.bits import dtype_info
from onnxfi.errors import InternalError, OnnxfiError, first_line
from onnxfi.faults import BitFault, BitFlip, BurstFlip, Fault, StuckAt, fault_from_dict, parse_fault
from onnxfi.sites import Site
from onnxfi.stats import leveugle_sample_size, normal_quantile, stratified_estimate

__all__ = [
    "Experiment",
    "Stratum",
    "Plan",
    "DESIGNS",
    "FAULT_MODELS",
    "BER_SITE",
    "space_index",
    "make_plan",
    "extend_plan",
    "default_rounds",
    "systematic_allocation",
    "grouped_allocation",
    "equal_allocation",
    "pilot_allocation",
    "neyman_allocation",
    "stratum_of",
    "estimation_strata",
    "neyman_strata",
    "complete_rounds",
    "left_out_note",
    "parse_bits",
    "file_sha256",
    "PLAN_VERSION",
]

PLAN_VERSION = 2
DESIGNS = ("proportional", "per-stratum", "adaptive")
# persistent: one fault that stays for the whole eval set (a weight in memory, an activation element in
# every inference); transient: one fault in one inference; ber: every selected bit flips with a probability
FAULT_MODELS = ("persistent", "transient", "ber")
# the site of a fault-rate experiment (its flips span many sites)
BER_SITE = "*"
# plans stored before designs existed allocated equally per stratum
_LEGACY_DESIGN = "per-stratum"
# default rounds: one per ~50 experiments, at most 20, so a campaign stopped early has complete rounds
_ROUND_SIZE = 50
_MAX_ROUNDS = 20
_TRANSIENT_RUN = 64  # transient experiments one packed cone run can carry at the default batch size
# adaptive design: the pilot is 10% of the Leveugle size, at least 5 faults per Neyman stratum; later rounds
# aim 10% past the projected need, add at least 5% of the cap, and give every stratum at least one fault
# The adaptive design's pilot: 10% of the Leveugle size (at least 5 per Neyman stratum). 20% until
# 2026-12-07; in tests/test_coverage.py's synthetic campaigns 10% took 29-50% fewer faults on the CNN-like
# space (1,366 vs 1,919 at margin 0.01; 3,842 vs 7,654 at 0.005) and 2% fewer to 18% more on the fragile one,
# with coverage as good (0.97-0.99 vs 0.955-0.974 per fault on the CNN space); on digits_cnn at +-1%/99%
# 2,441 faults instead of 3,254.
_PILOT_FRACTION = 0.1
_NEYMAN_FLOOR = 5
_SAFETY = 1.1
_STEP_FRACTION = 0.05


@dataclass(frozen=True)
class Experiment:
    """One fault: ``fault`` at element ``index`` of ``site`` (per image for batched activations).

    ``image``: for a transient fault, the one eval sample whose inference it hits (None: every sample,
    for the whole run). A fault-rate experiment (``fault["kind"] == "ber"``) has ``site`` :data:`BER_SITE`
    and draws its flips from its seed (:mod:`onnxfi.ber`)."""

    id: int
    site: str
    kind: str
    index: int
    bit: int | None
    fault: dict[str, Any]
    seed: int
    round: int = 0
    image: int | None = None

    def fault_obj(self) -> Fault:
        return fault_from_dict(self.fault)


@dataclass(frozen=True)
class Stratum:
    site: str
    kind: str
    bit: int | None
    fault: str
    population: int
    n: int


@dataclass
class Plan:
    """Everything needed to rerun a campaign exactly: the model's hash, the options, every experiment."""

    model: str
    model_sha256: str
    seed: int
    target: str
    faults: list[str]
    bits: list[int] | None
    mode: str
    population: int
    requested: int
    margin: float | None
    confidence: float
    p: float
    strata: list[Stratum]
    experiments: list[Experiment]
    options: dict[str, Any] = field(default_factory=dict)
    version: int = PLAN_VERSION
    design: str = "proportional"
    fault_model: str = "persistent"

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready values, as ``dataclasses.asdict`` gives them (written out: asdict copies
        every value generically, which took most of a second on a plan of 9,000 strata)."""
        d: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "strata":
                d["strata"] = [{"site": s.site, "kind": s.kind, "bit": s.bit, "fault": s.fault,
                                "population": s.population, "n": s.n} for s in self.strata]
            elif f.name == "experiments":
                d["experiments"] = [{"id": e.id, "site": e.site, "kind": e.kind, "index": e.index, "bit": e.bit,
                                     "fault": _copy_fault(e.fault), "seed": e.seed, "round": e.round,
                                     "image": e.image} for e in self.experiments]
            else:
                d[f.name] = copy.deepcopy(getattr(self, f.name))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "") -> Plan:
        """A plan from its JSON document, every field type-checked (a plan file is untrusted input)."""
        where = f"{source}: " if source else ""
        try:
            if not isinstance(d, dict) or not isinstance(d.get("strata"), list) or not isinstance(
                    d.get("experiments"), list):
                raise TypeError("strata and experiments must be lists")
            strata = [Stratum(**_typed(s, Stratum, f"strata[{i}]")) for i, s in enumerate(d["strata"])]
            exps = [Experiment(**_typed(e, Experiment, f"experiments[{i}]")) for i, e in enumerate(d["experiments"])]
            rest = _typed({k: v for k, v in d.items() if k not in ("strata", "experiments")}, cls, "plan")
            rest.setdefault("design", _LEGACY_DESIGN)
            plan = cls(strata=strata, experiments=exps, **rest)
        except (KeyError, TypeError) as e:
            raise OnnxfiError(f"{where}not an onnxfi plan ({first_line(e, limit=200)})") from None
        for exp in plan.experiments:
            if not isinstance(exp.fault.get("kind"), str):
                raise OnnxfiError(f"{where}not an onnxfi plan (experiment {exp.id}: fault has no kind)")
        if plan.design not in DESIGNS:
            raise OnnxfiError(f"{where}not an onnxfi plan (unknown design {plan.design!r})")
        if plan.fault_model not in FAULT_MODELS:
            raise OnnxfiError(f"{where}not an onnxfi plan (unknown fault model {plan.fault_model!r})")
        return plan

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), separators=(",", ":")))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Plan:
        p = Path(path)
        if not p.is_file():
            raise OnnxfiError(f"plan file not found: {p}")
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise OnnxfiError(f"{p}: not a JSON plan ({type(e).__name__}: {first_line(e, limit=200)})") from None
        except OSError as e:
            raise OnnxfiError(f"{p}: cannot read ({e.strerror})") from None
        return cls.from_dict(doc, str(p))

    def experiment(self, exp_id: int) -> Experiment:
        if 0 <= exp_id < len(self.experiments) and self.experiments[exp_id].id == exp_id:
            return self.experiments[exp_id]
        for e in self.experiments:
            if e.id == exp_id:
                return e
        raise OnnxfiError(f"no experiment {exp_id} in the plan (0..{len(self.experiments) - 1})")


_CHECKS: dict[str, Any] = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "list[int]": lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v),
    "dict[str, Any]": lambda v: isinstance(v, dict),
}


def _copy_fault(fault: dict[str, Any]) -> dict[str, Any]:
    """A fault dict's copy (its values are numbers, strings and lists of them)."""
    return {k: (copy.deepcopy(v) if isinstance(v, (list, dict)) else v) for k, v in fault.items()}


def _typed(d: Any, cls: type, what: str) -> dict[str, Any]:
    """``d`` (a JSON object) when every key is a field of dataclass ``cls`` holding a value of the field's
    type (``int | None`` fields may be null; an int is not a bool); else TypeError naming the field."""
    if not isinstance(d, dict):
        raise TypeError(f"{what} is not an object")
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    for k, v in d.items():
        if k not in fields:
            raise TypeError(f"{what}: unknown key {k!r}")
        kinds = [t.strip() for t in fields[k].split("|")]
        if v is None and "None" in kinds:
            continue
        checks = [_CHECKS[t] for t in kinds if t in _CHECKS]
        if checks and not any(c(v) for c in checks):
            raise TypeError(f"{what}.{k} should be {fields[k]}, got {type(v).__name__}")
    return d


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_bits(text: str | None) -> list[int] | None:
    """``"23-30"``, ``"31,30,23-25"`` -> sorted bit list; ``None``/``"all"`` -> every bit of each site."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    bits: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo > hi:
                    lo, hi = hi, lo
                bits.update(range(lo, hi + 1))
            else:
                bits.add(int(part))
        except ValueError:
            raise OnnxfiError(f"bad --bits {text!r}: use e.g. 23-30 or 31,30") from None
    if any(b < 0 for b in bits):
        raise OnnxfiError(f"bad --bits {text!r}: bits are >= 0")
    return sorted(bits)


def _template(spec: str) -> Fault:
    """A fault spec as a template; bit faults get their bit per experiment."""
    name = spec.split(":", 1)[0].lower()
    if name in ("flip", "stuck-0", "stuck-1", "burst") and ":" not in spec:
        return parse_fault(spec, (0,))
    if name == "burst":
        return parse_fault(spec, (0,))
    return parse_fault(spec)


def _with_bit(template: Fault, bit: int) -> Fault:
    if isinstance(template, BurstFlip):
        return BurstFlip(bit, template.length)
    if isinstance(template, StuckAt):
        return StuckAt((bit,), template.value)
    if isinstance(template, BitFlip):
        return BitFlip((bit,))
    return template


# --------------------------------------------------------------------------------------------------
# Allocation: how many faults each stratum gets
# --------------------------------------------------------------------------------------------------


def default_rounds(n: int) -> int:
    """Rounds for a sample of ``n``: one per ~50 experiments, 1 to 20."""
    return min(_MAX_ROUNDS, max(1, n // _ROUND_SIZE))


def systematic_allocation(sizes: ArrayLike, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` units over strata of ``sizes`` units, proportionally: exactly n in all, E[n_h] = n N_h / N.

    Systematic randomized rounding on the cumulative sizes: the points v + j N (j = 0..n-1, one uniform
    integer offset v in [0, N)) on the scale [0, n N), stratum h owning [n C_h, n C_h+1) with C the
    cumulative sizes. Integer arithmetic, so n_h <= N_h always and n = N gives every unit. With a simple
    random sample of n_h inside each stratum, every unit is drawn with probability exactly n / N.
    """
    size = np.asarray(sizes, dtype=np.int64)
    total = int(size.sum())
    if n < 0 or n > total or np.any(size < 0):
        raise InternalError(f"systematic_allocation: cannot draw {n} of {total}")
    if n == 0:
        return np.zeros(len(size), dtype=np.int64)
    edges = n * np.concatenate([[0], np.cumsum(size)])
    v = int(rng.integers(total))
    below = np.where(edges > v, (edges - v + total - 1) // total, 0)  # points v + jN below each edge
    return np.diff(below)


def grouped_allocation(sizes: ArrayLike, groups: ArrayLike, totals: ArrayLike, rng: np.random.Generator) -> np.ndarray:
    """:func:`systematic_allocation` of ``totals[g]`` over the strata of each group g (``groups[h]`` is stratum
    h's group, 0..G-1), all groups at once, each with its own offset."""
    size = np.asarray(sizes, dtype=np.int64)
    group = np.asarray(groups, dtype=np.int64)
    want = np.asarray(totals, dtype=np.int64)
    order = np.argsort(group, kind="stable")
    g, s = group[order], size[order]
    room = np.bincount(g, weights=s, minlength=len(want)).astype(np.int64)
    if np.any(want < 0) or np.any(want > room):
        raise InternalError("grouped_allocation: a group's total exceeds its strata")
    start = np.concatenate([[0], np.cumsum(room)[:-1]])
    n_cum = np.cumsum(s) - start[g]  # each stratum's cumulative size within its group
    n_g, pop_g = want[g], np.maximum(room[g], 1)
    v = rng.integers(0, np.maximum(room, 1))[g]
    upper, lower = n_g * n_cum, n_g * (n_cum - s)
    count = (np.where(upper > v, (upper - v + pop_g - 1) // pop_g, 0)
             - np.where(lower > v, (lower - v + pop_g - 1) // pop_g, 0))
    out = np.zeros(len(size), dtype=np.int64)
    out[order] = count
    return out


def equal_allocation(populations: Sequence[int], total: int, rng: np.random.Generator) -> list[int]:
    """Spread ``total`` over strata as evenly as possible, never above a stratum's population.

    When the sample is smaller than the number of strata, which strata get the remainder is drawn
    at random (seeded), so no site or bit is favoured by its position in the model.
    """
    n = [0] * len(populations)
    remaining = min(total, sum(populations))
    open_ = [i for i, p in enumerate(populations) if p > 0]
    while remaining > 0 and open_:
        share = remaining // len(open_)
        if share == 0:
            for i in rng.permutation(open_)[:remaining].tolist():
                n[i] += 1
            break
        still = []
        for i in open_:
            take = min(share, populations[i] - n[i])
            n[i] += take
            remaining -= take
            if n[i] < populations[i]:
                still.append(i)
        open_ = still
    return n


def _spread(weights: np.ndarray, total: float, caps: np.ndarray) -> np.ndarray:
    """``total`` spread over strata in proportion to ``weights``, none above its cap (the excess goes to the rest)."""
    x = np.zeros(len(weights))
    open_ = caps > 0
    w = np.where(open_, weights, 0.0)
    if w.sum() <= 0:  # no preference: by room
        w = np.where(open_, caps.astype(np.float64), 0.0)
    left = min(float(total), float(caps.sum()))
    while left > 1e-9 and open_.any():
        share = left * w[open_] / w[open_].sum()
        idx = np.flatnonzero(open_)
        over = share >= caps[idx] - x[idx]
        if not over.any():
            x[idx] += share
            break
        x[idx[over]] = caps[idx[over]]
        open_[idx[over]] = False
        left = min(float(total), float(caps.sum())) - float(x.sum())
    return x


def _apportion(weights: np.ndarray, total: int, caps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Whole numbers summing to ``total`` (at most the caps' sum) in proportion to ``weights``, within caps.

    Each stratum gets the floor of its share, and the fractions are rounded by systematic sampling, so
    the expected count is the share.
    """
    caps = np.asarray(caps, dtype=np.int64)
    total = int(min(total, caps.sum()))
    x = _spread(np.asarray(weights, dtype=np.float64), total, caps)
    base = np.minimum(np.floor(x + 1e-9).astype(np.int64), caps)
    extra = total - int(base.sum())
    if extra > 0:
        frac = np.clip(x - base, 0.0, None) * (caps > base)
        if frac.sum() <= 0:
            frac = (caps > base).astype(np.float64)
        cum = np.concatenate([[0.0], np.cumsum(frac)])
        cum *= extra / cum[-1]
        u = float(rng.random())
        add = np.diff(np.ceil(cum - u)).astype(np.int64)
        base += np.minimum(add, caps - base)
        short = total - int(base.sum())
        for i in np.argsort(-(x - base), kind="stable"):  # float rounding: top up where room is left
            if short <= 0:
                break
            take = min(short, int(caps[i] - base[i]))
            base[i] += take
            short -= take
    return base


def pilot_allocation(populations: ArrayLike, cap: int, rng: np.random.Generator) -> np.ndarray:
    """The adaptive design's first round over Neyman strata of ``populations``.

    Size max(10% of ``cap``, 5 per stratum), at most ``cap``: every stratum gets min(5, N_h), the rest
    goes proportionally (:func:`systematic_allocation`).
    """
    pop = np.asarray(populations, dtype=np.int64)
    cap = int(min(cap, pop.sum()))
    size = min(cap, max(math.ceil(_PILOT_FRACTION * cap), _NEYMAN_FLOOR * int((pop > 0).sum())))
    floor = np.minimum(pop, _NEYMAN_FLOOR)
    if size <= floor.sum():
        return _apportion(floor.astype(np.float64), size, floor, rng)
    return floor + systematic_allocation(pop - floor, size - int(floor.sum()), rng)


def neyman_allocation(
    populations: ArrayLike, sampled: ArrayLike, failures: ArrayLike, margin: float, confidence: float,
    budget: int, rng: np.random.Generator,
) -> np.ndarray:
    """The adaptive design's next round over Neyman strata: faults per stratum (0 when nothing is needed).

    S_h = sqrt(q_h (1 - q_h)) with the smoothed q_h = (k_h + 0.5) / (n_h + 1) from ``failures`` k_h of
    ``sampled`` n_h. The total projected for a half-width ``margin`` is Neyman's
    n = (sum W_h S_h)^2 / ((margin / z)^2 + sum W_h S_h^2 / N_h), taken 10% larger and spread n_h ∝ W_h S_h
    (capped at N_h); the round adds what each stratum lacks, at least one fault to every stratum with
    faults left (rare outcomes are never starved) and at least 5% of the campaign's cap in all, at most
    ``budget``. Sampling is without replacement: no stratum gets more than N_h - n_h.
    """
    pop = np.asarray(populations, dtype=np.int64)
    n = np.asarray(sampled, dtype=np.int64)
    k = np.asarray(failures, dtype=np.float64)
    room = pop - n
    budget = int(min(budget, room.sum()))
    if budget <= 0:
        return np.zeros(len(pop), dtype=np.int64)
    open_ = room > 0
    w = pop / pop.sum()
    q = (k + 0.5) / (n + 1.0)
    s = np.sqrt(q * (1.0 - q))
    ws = w * s
    z = normal_quantile(1.0 - (1.0 - confidence) / 2.0)
    need = _SAFETY * ws.sum() ** 2 / ((margin / z) ** 2 + float(np.sum(w * s * s / np.maximum(pop, 1))))
    target = _spread(ws, need, pop)
    want = np.where(open_, np.maximum(target - n, 1.0), 0.0)
    step = math.ceil(_STEP_FRACTION * (int(n.sum()) + budget))
    size = min(budget, max(math.ceil(float(want.sum())), int(open_.sum()), step))
    if size < int(open_.sum()):
        return _apportion(ws * open_, size, room, rng)
    base = open_.astype(np.int64)
    extra = np.maximum(want - 1.0, 0.0)
    rest = size - int(base.sum())
    if rest > extra.sum():
        extra = extra + (rest - extra.sum()) * ws * open_ / float((ws * open_).sum())
    return base + _apportion(extra, rest, room - base, rng)


# --------------------------------------------------------------------------------------------------
# Strata and rounds of a plan
# --------------------------------------------------------------------------------------------------


def _stratum_fault(stratum: Stratum) -> Fault:
    tmpl = _template(stratum.fault)
    return _with_bit(tmpl, stratum.bit) if stratum.bit is not None else tmpl


def _fault_key(fault: Mapping[str, Any]) -> str:
    return json.dumps(fault, sort_keys=True)


def stratum_of(plan: Plan) -> np.ndarray:
    """Stratum (position in ``plan.strata``) of each experiment, by position in ``plan.experiments``; -1 if none."""
    cached = plan.__dict__.get("_stratum_of")
    if cached is not None and cached[0] is plan.experiments and cached[1] == len(plan.experiments):
        return cached[2]  # type: ignore[no-any-return]
    exact: dict[tuple[str, int | None, str], int] = {}
    loose: dict[tuple[str, int | None], int] = {}
    for pos, st in enumerate(plan.strata):
        exact.setdefault((st.site, st.bit, _fault_key(_stratum_fault(st).to_dict())), pos)
        loose.setdefault((st.site, st.bit), pos)
    out = np.full(len(plan.experiments), -1, dtype=np.int64)
    for i, e in enumerate(plan.experiments):
        found = exact.get((e.site, e.bit, _fault_key(e.fault)))
        out[i] = found if found is not None else loose.get((e.site, e.bit), -1)
    plan.__dict__["_stratum_of"] = (plan.experiments, len(plan.experiments), out)
    return out


def neyman_strata(plan: Plan) -> np.ndarray:
    """Neyman stratum of each plan stratum: one per (bit, fault model) across sites, numbered in order of appearance."""
    ids: dict[tuple[int | None, str], int] = {}
    return np.array([ids.setdefault((st.bit, st.fault), len(ids)) for st in plan.strata], dtype=np.int64)


def estimation_strata(plan: Plan) -> np.ndarray:
    """The strata the design's estimator weights, per plan stratum: one for a proportional plan (self-weighting),
    the plan's own strata for a per-stratum plan, the Neyman strata for an adaptive plan."""
    if plan.design == "proportional":
        return np.zeros(len(plan.strata), dtype=np.int64)
    if plan.design == "adaptive":
        return neyman_strata(plan)
    return np.arange(len(plan.strata), dtype=np.int64)


def complete_rounds(plan: Plan, ids: Iterable[int]) -> list[int]:
    """The rounds of ``plan`` whose every experiment is in ``ids`` (stored), sorted.

    For an adaptive plan only the complete prefix counts: a round's allocation was computed from the
    rounds before it.
    """
    planned = Counter(e.round for e in plan.experiments)
    stored: Counter[int] = Counter()
    by_id = {e.id: e.round for e in plan.experiments}
    for i in set(ids):
        r = by_id.get(i)
        if r is not None:
            stored[r] += 1
    done = [r for r in sorted(planned) if stored[r] == planned[r]]
    if plan.design == "adaptive":
        prefix = []
        for r in sorted(planned):
            if r not in done:
                break
            prefix.append(r)
        return prefix
    return done


# --------------------------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------------------------


def left_out_note(names: Sequence[str]) -> str:
    """One line naming the sites a plan left out because their shapes are unknown."""
    return (f"left out {len(names)} site(s) whose shape static inference cannot tell (e.g. {names[0]}); "
            "--input-shape may fix them")


def _draw(rng: np.random.Generator, population: int, size: int, taken: np.ndarray | None = None) -> np.ndarray:
    """``size`` distinct indices of range(population), none in ``taken`` (sorted, distinct), in random order."""
    gone = 0 if taken is None else len(taken)
    free = population - gone
    if size > free:
        raise InternalError(f"cannot draw {size} of the {free} faults left in a stratum")
    v = rng.permutation(free) if size == free else rng.choice(free, size=size, replace=False)
    v = np.asarray(v, dtype=np.int64)
    if taken is not None and gone:
        v = v + np.searchsorted(taken - np.arange(gone), v, side="right")  # the v-th index not taken
    return v


def _resolve_design(design: str | None, per_stratum: int | None) -> str:
    if design is None:
        return "per-stratum" if per_stratum is not None else "proportional"
    if design not in DESIGNS:
        raise OnnxfiError(f"unknown design {design!r}: use one of {', '.join(DESIGNS)}")
    if per_stratum is not None and design != "per-stratum":
        raise OnnxfiError(f"--per-stratum sets the per-stratum design, not {design}")
    return design


def _experiments(
    keys: Sequence[tuple[str, str, int | None, Fault]], strata: np.ndarray, index: np.ndarray, seeds: np.ndarray,
    rounds: np.ndarray, first_id: int, first_round: int, per_image: np.ndarray | None = None,
) -> list[Experiment]:
    """Experiments in round-major order, grouped by stratum (so by site) and sorted by index within a round.

    ``keys[h]`` is stratum h's (site name, site kind, bit, fault template); rounds are renumbered from
    ``first_round`` without gaps. With ``per_image`` (a transient plan: stratum h's elements per image),
    ``index`` runs over (image, element) and is split into ``image`` and the element ``index``, so a
    round's experiments of one site come sorted by image.
    """
    if len(strata) == 0:
        return []
    _, dense = np.unique(rounds, return_inverse=True)
    order = np.lexsort((index, strata, dense))
    faults: dict[int, dict[str, Any]] = {}
    out = []
    for new_id, j in enumerate(order.tolist(), first_id):
        h = int(strata[j])
        name, kind, bit, tmpl = keys[h]
        if h not in faults:
            faults[h] = (_with_bit(tmpl, bit) if bit is not None else tmpl).to_dict()
        idx, image = int(index[j]), None
        if per_image is not None:
            image, idx = divmod(idx, int(per_image[h]))
        out.append(Experiment(new_id, name, kind, idx, bit, dict(faults[h]), int(seeds[j]),
                              first_round + int(dense[j]), image))
    return out


def space_index(plan: Plan, exp: Experiment, stratum: int) -> int:
    """``exp``'s position in its stratum's fault space: the element index, or for a transient fault
    ``image * elements_per_image + index``."""
    if exp.image is None:
        return exp.index
    images = int(plan.options["images"])
    return exp.image * (plan.strata[stratum].population // images) + exp.index


def _transient_sites(sites: Sequence[Site], images: int | None,
                     options: dict[str, Any]) -> tuple[list[Site], dict[str, Any]]:
    """The sites a transient fault can hit (activations with a batch dimension) and the options noting
    the rest; a user error when none is left or the number of eval samples is unknown."""
    if images is None or images < 1:
        raise OnnxfiError("a transient plan needs the number of eval samples (images >= 1)")
    kept = [s for s in sites if s.kind == "activation" and s.batched]
    if not kept:
        acts = [s for s in sites if s.kind == "activation"]
        if not acts:
            raise OnnxfiError("transient faults hit one inference's activations: select activation sites with a "
                              "batch dimension (--target activations); weights are persistent (--ber for memory "
                              "fault rates)")
        inner = sum(1 for s in acts if s.graph)
        where = f" ({inner} of them inside subgraphs such as If/Loop bodies)" if inner else ""
        raise OnnxfiError(f"transient faults hit one inference's activations, but none of the {len(acts)} selected "
                          f"activation sites has a batch dimension{where}: no sample of the eval batch can be "
                          "hit alone; use the persistent fault model")
    dropped = [s.name for s in sites if not (s.kind == "activation" and s.batched)]
    out = {**options, "images": images}
    if dropped:
        out["left_out_not_per_inference"] = dropped
    return kept, out


def make_plan(
    model_path: str | os.PathLike[str],
    sites: Sequence[Site],
    faults: Sequence[str] = ("flip",),
    bits: Sequence[int] | None = None,
    n_faults: int | None = None,
    margin: float | None = None,
    confidence: float = 0.99,
    p: float = 0.5,
    seed: int = 0,
    target: str = "weights",
    rounds: int | None = None,
    options: dict[str, Any] | None = None,
    *,
    design: str | None = None,
    per_stratum: int | None = None,
    fault_model: str = "persistent",
    images: int | None = None,
) -> Plan:
    """Sample a campaign over ``sites``. Size: ``n_faults``, ``margin`` (Leveugle) or ``per_stratum``.

    ``fault_model="transient"``: every fault hits one element of one of the ``images`` eval samples'
    inference (activation sites with a batch dimension only; the others are named in
    ``options["left_out_not_per_inference"]``); a stratum's population is its elements per image times
    ``images``. Fault-rate plans come from :func:`onnxfi.ber.make_ber_plan`.

    ``design`` (default ``"proportional"``, or ``"per-stratum"`` when ``per_stratum`` is given): see the
    module docstring. ``"adaptive"`` needs ``margin``; it plans the pilot round only, capped at the Leveugle
    size (or ``n_faults``), and :func:`extend_plan` adds the next rounds. ``rounds`` (default: one per ~50
    experiments, 1 to 20; for adaptive, of the pilot; for a transient plan, also no more than one per ~64
    experiments per site, since a site's experiments of one round run packed, up to a batch per cone run)
    cuts the sample into rounds.
    """
    design = _resolve_design(design, per_stratum)
    if fault_model not in ("persistent", "transient"):
        raise OnnxfiError(f"unknown fault model {fault_model!r}: use persistent or transient")
    if not sites:
        raise OnnxfiError("no fault sites match the selection")
    if fault_model == "transient":
        sites, options = _transient_sites(sites, images, dict(options or {}))
    unknown = [s.name for s in sites if s.elements is None]
    if len(unknown) == len(sites):
        raise OnnxfiError(
            f"{len(unknown)} site(s) have unknown shapes (e.g. {unknown[0]}); give --input-shape for dynamic inputs"
        )
    if unknown:  # sites whose shape static inference cannot tell are left out; the plan says which
        sites = [s for s in sites if s.elements is not None]
        options = {**(options or {}), "left_out_unknown_shape": unknown}
    if n_faults is not None and n_faults < 1:
        raise OnnxfiError("--faults must be at least 1")
    if per_stratum is not None and per_stratum < 1:
        raise OnnxfiError("--per-stratum must be at least 1")
    if rounds is not None and rounds < 1:
        raise OnnxfiError("rounds must be at least 1")
    if design == "adaptive" and margin is None:
        raise OnnxfiError("the adaptive design is sized by --margin: give --margin E")
    templates = [(spec, _template(spec)) for spec in faults]
    keys: list[tuple[Site, int | None, str, Fault]] = []
    for site in sites:
        info = dtype_info(site.dtype)
        for spec, tmpl in templates:
            if isinstance(tmpl, BitFault):
                site_bits = [b for b in (bits if bits is not None else range(info.bits)) if b < info.bits]
                if isinstance(tmpl, BurstFlip):
                    site_bits = [b for b in site_bits if b + tmpl.length <= info.bits]
                for b in site_bits:
                    keys.append((site, b, spec, tmpl))
            else:
                tmpl.check(info)
                keys.append((site, None, spec, tmpl))
    if not keys:
        raise OnnxfiError("no fault fits the selected sites and bits (bits beyond the dtypes?)")
    per_image = np.array([int(s.elements or 0) for s, _, _, _ in keys], dtype=np.int64)
    pops = per_image * (images or 1) if fault_model == "transient" else per_image
    population = int(pops.sum())
    rng = np.random.default_rng(seed)
    if per_stratum is not None:
        alloc = np.minimum(pops, per_stratum)
        requested, mode = int(alloc.sum()), "fixed"
    elif n_faults is not None and design != "adaptive":
        requested, mode = n_faults, "fixed"
    elif margin is not None:
        requested, mode = leveugle_sample_size(population, margin, confidence, p), "statistical"
        if n_faults is not None:  # adaptive: a cap of the user's
            requested = min(requested, n_faults)
    else:
        raise OnnxfiError("give --faults N, --margin E or --per-stratum N")
    if requested >= population:
        mode, requested = "exhaustive", population
    if design == "proportional":
        alloc = systematic_allocation(pops, requested, rng)
    elif design == "per-stratum" and per_stratum is None:
        alloc = np.array(equal_allocation(pops.tolist(), requested, rng), dtype=np.int64)
    elif design == "adaptive":
        ney = _neyman_ids(keys)
        ney_pop = np.bincount(ney, weights=pops, minlength=int(ney.max()) + 1).astype(np.int64)
        pilot = ney_pop if mode == "exhaustive" else pilot_allocation(ney_pop, requested, rng)
        alloc = grouped_allocation(pops, ney, pilot, rng)
    parts_h, parts_i, parts_s = [], [], []
    for h, n in enumerate(alloc.tolist()):
        if n:
            parts_h.append(np.full(n, h, dtype=np.int64))
            parts_i.append(_draw(rng, int(pops[h]), n))  # random order
            parts_s.append(rng.integers(0, 2**31 - 1, size=n))
    strata_of = np.concatenate(parts_h)
    index = np.concatenate(parts_i)
    seeds = np.concatenate(parts_s)
    total = len(strata_of)
    if rounds is None:
        rounds = default_rounds(total)
        if fault_model == "transient":  # a site's experiments of a round run packed: rounds of >= ~64 per site
            used = len({keys[h][0].name for h in set(strata_of.tolist())})
            rounds = min(rounds, max(1, total // (_TRANSIENT_RUN * used)))
    n_rounds = max(1, min(rounds, total))
    if design == "proportional":  # contiguous slices of a random permutation: every round a proportional sample
        rnd = np.empty(total, dtype=np.int64)
        rnd[rng.permutation(total)] = np.arange(total) * n_rounds // total
    else:  # each stratum (per-stratum) or Neyman stratum (adaptive) spread over the rounds in random order
        groups = strata_of if design == "per-stratum" else _neyman_ids(keys)[strata_of]
        rnd = np.empty(total, dtype=np.int64)
        for g in np.unique(groups).tolist():
            members = np.flatnonzero(groups == g)
            members = members[rng.permutation(len(members))]
            rnd[members] = np.arange(len(members)) * n_rounds // len(members)
    experiments = _experiments([(s.name, s.kind, b, t) for s, b, _, t in keys], strata_of, index, seeds, rnd, 0, 0,
                               per_image if fault_model == "transient" else None)
    strata = [Stratum(site.name, site.kind, bit, spec, int(pop), int(n))
              for (site, bit, spec, _), pop, n in zip(keys, pops.tolist(), alloc.tolist())]
    return Plan(
        model=str(model_path), model_sha256=file_sha256(model_path), seed=seed, target=target,
        faults=list(faults), bits=list(bits) if bits is not None else None, mode=mode,
        population=population, requested=requested, margin=margin, confidence=confidence, p=p,
        strata=strata, experiments=experiments, options=dict(options or {}), design=design,
        fault_model=fault_model,
    )


def _neyman_ids(keys: Sequence[tuple[Site, int | None, str, Fault]]) -> np.ndarray:
    ids: dict[tuple[int | None, str], int] = {}
    return np.array([ids.setdefault((bit, spec), len(ids)) for _, bit, spec, _ in keys], dtype=np.int64)


def extend_plan(plan: Plan, rows: Iterable[Mapping[str, Any]]) -> Plan | None:
    """An adaptive plan with its next round appended, or None when the campaign is done.

    Done: the headline SDC-1 interval (stratified over the Neyman strata, complete rounds; the estimator
    :func:`onnxfi.summary.aggregate` uses) has a half-width of at most ``plan.margin``, or the plan holds
    ``plan.requested`` experiments (the Leveugle size of a proportional campaign, never more than the fault
    space). Otherwise the next round is :func:`neyman_allocation` from the SDC-1 counts so far, split over
    sites in proportion to the faults each has left (:func:`systematic_allocation`) and drawn without
    replacement, so no fault is drawn twice. Pure: the same plan and rows give the same round (its randomness
    is seeded by ``plan.seed`` and the round number). Call it when every planned experiment has a row.
    """
    if plan.design != "adaptive" or plan.margin is None:
        raise InternalError(f"extend_plan needs an adaptive plan with a margin (got {plan.design})")
    cap = min(plan.requested, plan.population)
    sdc: dict[int, bool] = {int(r["id"]): bool(r["sdc1"]) for r in rows}
    pos = stratum_of(plan)
    ids = np.array([e.id for e in plan.experiments], dtype=np.int64)
    if not all(i in sdc for i in ids.tolist()):
        raise InternalError("extend_plan: every planned experiment needs a row before the next round")
    if len(plan.experiments) >= cap:
        return None
    ney = neyman_strata(plan)
    cell_pop = np.array([s.population for s in plan.strata], dtype=np.int64)
    cell_n = np.bincount(pos[pos >= 0], minlength=len(plan.strata))
    hits = np.array([sdc[i] for i in ids.tolist()], dtype=np.float64)
    cell_k = np.bincount(pos[pos >= 0], weights=hits[pos >= 0], minlength=len(plan.strata))
    size = int(ney.max()) + 1
    n_h = np.bincount(ney, weights=cell_n, minlength=size)
    k_h = np.bincount(ney, weights=cell_k, minlength=size)
    pop_h = np.bincount(ney, weights=cell_pop, minlength=size)
    if stratified_estimate(n_h, k_h, k_h, pop_h, plan.confidence).half_width <= plan.margin:
        return None
    next_round = max(e.round for e in plan.experiments) + 1
    rng = np.random.default_rng([plan.seed, next_round])
    add = neyman_allocation(pop_h.astype(np.int64), n_h.astype(np.int64), k_h, plan.margin, plan.confidence,
                            cap - len(plan.experiments), rng)
    if add.sum() == 0:
        return None
    taken: dict[int, list[int]] = {}
    for e, h in zip(plan.experiments, pos.tolist()):
        taken.setdefault(h, []).append(space_index(plan, e, h))
    cell_add = grouped_allocation(cell_pop - cell_n, ney, add, rng)
    parts_h, parts_i, parts_s = [], [], []
    for c, n in enumerate(cell_add.tolist()):
        if n:
            parts_h.append(np.full(n, c, dtype=np.int64))
            parts_i.append(_draw(rng, int(cell_pop[c]), n, np.unique(np.array(taken.get(c, []), dtype=np.int64))))
            parts_s.append(rng.integers(0, 2**31 - 1, size=n))
    strata_of = np.concatenate(parts_h)
    keys = [(st.site, st.kind, st.bit, _template(st.fault)) for st in plan.strata]
    per_image = None
    if plan.fault_model == "transient":
        per_image = cell_pop // int(plan.options["images"])
    new = _experiments(keys, strata_of, np.concatenate(parts_i), np.concatenate(parts_s),
                       np.zeros(len(strata_of), dtype=np.int64), len(plan.experiments), next_round, per_image)
    strata = [dataclasses.replace(st, n=int(cell_n[c] + cell_add[c])) for c, st in enumerate(plan.strata)]
    return dataclasses.replace(plan, strata=strata, experiments=plan.experiments + new)
