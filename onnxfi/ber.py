"""Fault-rate (bit error rate) campaigns: a rate and a seed -> the weight bits one draw flips; rows -> the metric
and the outcome rates per rate, with intervals across experiments.

A memory with bit error rate p flips every stored bit of the selected weights independently with probability
p. One experiment is one draw: a count k ~ Binomial(B, p) over the B selected (site, element, bit) positions,
then k distinct positions uniform over them (together: every bit flipped independently with probability p),
all flipped at once in the weights, and the whole eval set run. The draw is a pure function of the
experiment (its rate, sites, bits and seed), so any process replays the same flips.

A ber experiment may instead *list* its flips (``fault["flips"]``: ``[[site, element, bit], ...]``, e.g. the
flips a worst-case search chose, :mod:`onnxfi.worstcase`): then exactly those are flipped, whatever the rate.

Bit numbering as in :mod:`onnxfi.bits` (bit 0 = least significant bit of the element's storage word).
"""

from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeGuard

import numpy as np

from onnxfi.bits import dtype_info, dtype_info_for_numpy
from onnxfi.errors import OnnxfiError
from onnxfi.outcomes import FLAGS
from onnxfi.plan import BER_SITE, Experiment, Plan, Stratum, file_sha256
from onnxfi.sites import Site, SiteIndex
from onnxfi.stats import rate_with_ci

__all__ = [
    "MAX_EXPECTED_FLIPS",
    "make_ber_plan",
    "is_ber",
    "ber_sizes",
    "draw_flips",
    "apply_flips",
    "restore_weights",
    "ber_summary",
    "t_quantile",
]

# one draw's expected flips at most: a list of (site, element, bit) this long is already ~1 GB of Python objects
MAX_EXPECTED_FLIPS = 10_000_000
# rounds of a fault-rate plan: replicate j of every rate goes to round j * rounds // per_rate (as plan.py, at most 20)
_MAX_ROUNDS = 20
# metrics whose values lie in [0, 1]: their mean's interval is clipped to that range
_UNIT_METRICS = frozenset({"accuracy", "golden_agreement", "miou", "pixel_accuracy", "top5"})
# the outcome flags reported per rate
_RATE_FLAGS = ("sdc1", "sdc5", "critical", "due", "crash", "masked")

Flip = tuple[str, int, int]
Row = Mapping[str, Any]


def is_ber(exp: Experiment) -> bool:
    """Whether ``exp`` is a fault-rate draw (its flips come from :func:`draw_flips`)."""
    return exp.fault.get("kind") == "ber"


# --------------------------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------------------------


def _check_rates(rates: Sequence[float]) -> list[float]:
    out: set[float] = set()
    for r in rates:
        try:
            v = float(r)
        except (TypeError, ValueError):
            raise OnnxfiError(f"bad bit error rate {r!r}: give a number between 0 and 1, e.g. 1e-5") from None
        if not (math.isfinite(v) and 0.0 < v < 1.0):
            raise OnnxfiError(f"bad bit error rate {r!r}: a rate lies strictly between 0 and 1 (e.g. 1e-5)")
        out.add(v)
    if not out:
        raise OnnxfiError("give at least one bit error rate (e.g. 1e-7,1e-6,1e-5)")
    return sorted(out)


def make_ber_plan(
    model_path: str | os.PathLike[str],
    sites: Sequence[Site],
    rates: Sequence[float],
    per_rate: int,
    bits: Sequence[int] | None = None,
    seed: int = 0,
    target: str = "weights",
    options: dict[str, Any] | None = None,
    confidence: float = 0.99,
) -> Plan:
    """A fault-rate plan: ``per_rate`` draws at each of ``rates`` over every stored bit of the weight ``sites``
    (only ``bits`` of each element when given).

    Weight sites only: an activation site is a user error, except with ``target="all"``, where activations are
    dropped and named in ``options["left_out_not_weights"]``; sites none of whose dtype's bits are in ``bits``
    are named in ``options["left_out_no_bits"]``. Rates are sorted and de-duplicated. ``population`` is the
    number of selected bits; ``strata`` holds one stratum per (site, bit) (population: the site's elements,
    n = 0) so reports know the space. Experiments are ordered round-major: replicate j of every rate is in
    round ``j * rounds // per_rate`` (rounds = min(per_rate, 20)), so complete rounds cover every rate equally.
    Every experiment has its own seed (drawn from ``seed``) from which :func:`draw_flips` draws its flips.
    """
    rate_list = _check_rates(rates)
    if isinstance(per_rate, bool) or not isinstance(per_rate, (int, np.integer)) or per_rate < 1:
        raise OnnxfiError(f"experiments per rate must be a whole number >= 1 (got {per_rate!r})")
    per_rate = int(per_rate)
    if not sites:
        raise OnnxfiError("no fault sites match the selection")
    opts: dict[str, Any] = dict(options or {})
    activations = [s.name for s in sites if s.kind != "weight"]
    if activations and target != "all":
        raise OnnxfiError(f"bit error rates over activations are not supported yet ({len(activations)} activation "
                          f"site(s) selected, e.g. {activations[0]}): select weights (--target weights)")
    if activations:
        opts["left_out_not_weights"] = activations
    weights = [s for s in sites if s.kind == "weight"]
    if not weights:
        raise OnnxfiError("a bit error rate campaign needs weight sites; the selection has none")
    if bits is not None:
        bits = sorted({int(b) for b in bits})
        if any(b < 0 for b in bits):
            raise OnnxfiError(f"bad bits {bits}: bits are >= 0")
    kept: list[Site] = []
    strata: list[Stratum] = []
    no_bits: list[str] = []
    population = 0
    for site in weights:
        if site.elements is None:  # weights have static shapes; an unknown one is a bug in the site index
            raise OnnxfiError(f"weight site {site.name} has no known shape")
        width = dtype_info(site.dtype).bits
        site_bits = [b for b in (bits if bits is not None else range(width)) if b < width]
        if not site_bits:
            no_bits.append(site.name)
            continue
        kept.append(site)
        population += site.elements * len(site_bits)
        strata.extend(Stratum(site.name, "weight", b, "flip", int(site.elements), 0) for b in site_bits)
    if no_bits:
        opts["left_out_no_bits"] = no_bits
    if population == 0:
        raise OnnxfiError("no selected bit fits the selected sites (bits beyond their dtypes?)")
    worst = rate_list[-1] * population
    if worst > MAX_EXPECTED_FLIPS:
        raise OnnxfiError(f"bit error rate {rate_list[-1]:g} flips {worst:,.0f} of {population:,} bits per "
                          f"experiment on average; at most {MAX_EXPECTED_FLIPS:,} are supported: use a lower rate")
    names = [s.name for s in kept]
    rounds = min(_MAX_ROUNDS, per_rate)
    seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=per_rate * len(rate_list))
    bit_list = list(bits) if bits is not None else None
    experiments: list[Experiment] = []
    for j in range(per_rate):
        for r in rate_list:
            i = len(experiments)
            fault = {"kind": "ber", "rate": r, "sites": list(names), "bits": None if bit_list is None else list(bit_list)}
            experiments.append(Experiment(i, BER_SITE, "weight", 0, None, fault, int(seeds[i]), j * rounds // per_rate))
    opts["ber"] = {"rates": rate_list, "per_rate": per_rate}
    return Plan(
        model=str(model_path), model_sha256=file_sha256(model_path), seed=int(seed), target=target,
        faults=["flip"], bits=bit_list, mode="fixed", population=population,
        requested=len(rate_list) * per_rate, margin=None, confidence=float(confidence), p=0.5, strata=strata,
        experiments=experiments, options=opts, design="proportional", fault_model="ber",
    )


# --------------------------------------------------------------------------------------------------
# Draws
# --------------------------------------------------------------------------------------------------


def ber_sizes(index: SiteIndex) -> dict[str, tuple[int, int]]:
    """Every weight site of ``index`` -> (elements, bits per element): the ``sizes`` of :func:`draw_flips`."""
    return {s.name: (int(s.elements), dtype_info(s.dtype).bits)
            for s in index.sites if s.kind == "weight" and s.elements is not None}


def _site_bits(exp: Experiment, width: int) -> np.ndarray:
    chosen = exp.fault.get("bits")
    if chosen is None:
        return np.arange(width, dtype=np.int64)
    return np.array(sorted({int(b) for b in chosen if 0 <= int(b) < width}), dtype=np.int64)


def _draw(exp: Experiment, sizes: Mapping[str, tuple[int, int]]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """``exp``'s flips as arrays: the site names, and per flip the site (position in the names), element and bit.

    The space is the experiment's sites in their listed order, each element-major with its selected bits
    ascending; a count ~ Binomial(B, rate), then that many distinct positions of [0, B) (numpy's
    ``choice`` without replacement, which draws a small sample with Floyd's algorithm and never
    materialises the space)."""
    if not is_ber(exp):
        raise OnnxfiError(f"experiment {exp.id} is not a bit error rate draw ({exp.fault.get('kind')!r})")
    names = [str(n) for n in exp.fault["sites"]]
    missing = [n for n in names if n not in sizes]
    if missing:
        raise OnnxfiError(f"experiment {exp.id} names weight site(s) the model does not have "
                          f"(e.g. {missing[0]}): is this the plan's model?")
    selected = [_site_bits(exp, sizes[n][1]) for n in names]
    space = np.array([sizes[n][0] * len(b) for n, b in zip(names, selected)], dtype=np.int64)
    total = int(space.sum())
    rate = float(exp.fault["rate"])
    rng = np.random.default_rng(exp.seed)
    count = int(rng.binomial(total, rate)) if total > 0 else 0
    if count == 0:
        empty = np.zeros(0, dtype=np.int64)
        return names, empty, empty, empty
    pos = np.sort(rng.choice(total, size=count, replace=False, shuffle=False).astype(np.int64))
    starts = np.concatenate([[0], np.cumsum(space)[:-1]])
    site = np.searchsorted(starts, pos, side="right") - 1
    local = pos - starts[site]
    widths = np.array([len(b) for b in selected], dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(widths)[:-1]])  # each site's first entry in the flat bit list
    element = local // widths[site]
    bit = np.concatenate(selected)[first[site] + local % widths[site]]
    return names, site, element, bit


def _listed_flips(exp: Experiment, sizes: Mapping[str, tuple[int, int]]) -> list[Flip]:
    """The explicit flips of ``exp`` (``fault["flips"]``), each checked to name a site of ``sizes``, an
    element and a bit inside it (a plan file is untrusted input)."""
    listed = exp.fault["flips"]
    if not isinstance(listed, list):
        raise OnnxfiError(f"experiment {exp.id}: flips must be a list of [site, element, bit]")
    out: list[Flip] = []
    for i, f in enumerate(listed):
        if not (isinstance(f, list) and len(f) == 3 and isinstance(f[0], str)
                and all(isinstance(x, int) and not isinstance(x, bool) for x in f[1:])):
            raise OnnxfiError(f"experiment {exp.id}: flips[{i}] is not [site, element, bit]: {f!r:.100}")
        name, element, bit = f[0], int(f[1]), int(f[2])
        if name not in sizes:
            raise OnnxfiError(f"experiment {exp.id} names weight site {name!r}, which the model does not have: "
                              "is this the plan's model?")
        n, width = sizes[name]
        if not 0 <= element < n or not 0 <= bit < width:
            raise OnnxfiError(f"experiment {exp.id}: flips[{i}] = {name}[{element}] bit {bit} is outside the site "
                              f"({n} elements of {width} bits)")
        out.append((name, element, bit))
    return out


def draw_flips(exp: Experiment, sizes: Mapping[str, tuple[int, int]]) -> list[Flip]:
    """The (site, element index, bit) triples flipped by the fault-rate experiment ``exp``, sorted.

    ``sizes`` maps every site name of the experiment to (elements, bits per element) (:func:`ber_sizes`);
    the selected bits of a site are ``exp.fault["bits"]`` below its width, or all. Deterministic from
    ``exp.seed``: the same experiment gives the same flips in any process. Positions are distinct.
    An experiment that lists its flips (``fault["flips"]``) gives those, checked against ``sizes``, in their
    listed order."""
    if is_ber(exp) and exp.fault.get("flips") is not None:
        return _listed_flips(exp, sizes)
    names, site, element, bit = _draw(exp, sizes)
    return sorted((names[s], int(e), int(b)) for s, e, b in zip(site.tolist(), element.tolist(), bit.tolist()))


def apply_flips(index: SiteIndex, flips: Iterable[Flip]) -> dict[str, np.ndarray]:
    """Flip every (site, element, bit) of ``flips`` in the weights of the model behind ``index``; returns the
    original arrays of the sites it changed (give them to :func:`restore_weights` to undo).

    Bit-exact: each element's storage word is XORed with the mask of its flipped bits (several bits of one
    element may flip; a triple given twice flips its bit back)."""
    by_site: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for name, element, bit in flips:
        by_site[name].append((int(element), int(bit)))
    originals: dict[str, np.ndarray] = {}
    for name, pairs in by_site.items():
        site = index.get(name)
        if site.kind != "weight":
            raise OnnxfiError(f"{name} is not a weight site: bit error rates flip stored weights only")
        original = np.array(index.weight_array(site), copy=True)
        info = dtype_info_for_numpy(original.dtype)
        elements = np.array([e for e, _ in pairs], dtype=np.int64)
        bit_pos = np.array([b for _, b in pairs], dtype=np.int64)
        if elements.min() < 0 or elements.max() >= original.size:
            raise OnnxfiError(f"element out of range for {name} ({original.size} elements)")
        if bit_pos.min() < 0 or bit_pos.max() >= info.bits:
            raise OnnxfiError(f"bit out of range for {name} ({info.name}: bits 0..{info.bits - 1})")
        words = np.require(original, requirements="C").view(info.word).reshape(-1).copy()
        masks = np.left_shift(np.ones(len(bit_pos), dtype=info.word), bit_pos.astype(info.word))
        np.bitwise_xor.at(words, elements, masks)
        index.set_weight_array(site, words.view(info.numpy).reshape(original.shape))
        originals[name] = original
    return originals


def restore_weights(index: SiteIndex, originals: Mapping[str, np.ndarray]) -> None:
    """Put back the arrays :func:`apply_flips` returned."""
    for name, array in originals.items():
        index.set_weight_array(index.get(name), array)


# --------------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided Student t quantile: t with P(|T| <= t) = ``confidence`` for ``df`` degrees of freedom."""
    if not 0.0 < confidence < 1.0 or df < 1:
        raise OnnxfiError(f"t quantile needs 0 < confidence < 1 and df >= 1 (got {confidence}, {df})")
    tail = (1.0 - confidence) / 2.0

    def upper(t: float) -> float:  # P(T > t), t >= 0
        return 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))

    lo, hi = 0.0, 1.0
    while upper(hi) > tail:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if upper(mid) > tail:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return 0.5 * (lo + hi)


def _mean_ci(values: Sequence[float], confidence: float, unit: bool) -> dict[str, Any]:
    n = len(values)
    if n == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "sd": float("nan"), "n": 0}
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    if n == 1:
        return {"mean": mean, "lo": float("nan"), "hi": float("nan"), "sd": float("nan"), "n": 1}
    sd = float(arr.std(ddof=1))
    half = t_quantile(confidence, n - 1) * sd / math.sqrt(n)
    lo, hi = mean - half, mean + half
    if unit:
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    return {"mean": mean, "lo": lo, "hi": hi, "sd": sd, "n": n}


def _finite_number(v: Any) -> TypeGuard[float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def ber_summary(plan: Plan, rows: Iterable[Row], confidence: float | None = None,
                clean: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A fault-rate campaign's result: per rate, the task metric's mean with its interval across experiments
    and the outcome rates with their intervals.

    ``rows`` are the stored rows (matched to the plan's experiments by id; others are ignored); each rate's
    experiments are independent draws, so every stored row counts, whatever rounds are complete.
    ``clean`` (the campaign's clean-run record: ``metric``, ``value``) names the metric and gives the
    fault-free value; without it both come from the rows' metrics (``task_metric``, ``clean_value``), else
    the value from a stored experiment that flipped no bit (its outputs are the clean ones) and the metric
    is called ``task metric``.

    Per rate (sorted by rate): ``rate``, ``planned``, ``n`` (stored), ``expected_flips`` (rate x selected
    bits), ``flips_mean``, ``metric`` (``{"mean", "lo", "hi", "sd", "n"}``: a Student t interval across the
    experiments with a finite task metric, clipped to [0, 1] for accuracy-like metrics; lo/hi NaN with fewer
    than two), ``left_out`` (``{"crash", "not_finite"}``: rows without a metric value: crashes store none),
    ``rates`` (per outcome flag ``{"k", "n", "rate", "lo", "hi", "method", "confidence"}``, Wilson).
    Also ``experiments``/``planned`` (as in :func:`onnxfi.summary.aggregate`), ``population_bits``, ``paths``
    (stored rows per execution path) and ``progress``.
    """
    conf = float(confidence if confidence is not None else plan.confidence)
    by_id = {e.id: e for e in plan.experiments}
    planned: dict[float, int] = defaultdict(int)
    for e in plan.experiments:
        if is_ber(e):
            planned[float(e.fault["rate"])] += 1
    stored: dict[float, list[Row]] = defaultdict(list)
    seen: set[int] = set()
    for r in rows:
        i = int(r["id"])
        exp = by_id.get(i)
        if exp is None or not is_ber(exp) or i in seen:
            continue
        seen.add(i)
        stored[float(exp.fault["rate"])].append(r)
    # the metric's name and clean value: from the clean record, else from the rows (classify stores both)
    metric_name = str(clean.get("metric")) if clean and clean.get("metric") else None
    clean_value: float | None = None
    if clean is not None and _finite_number(clean.get("value")):
        clean_value = float(clean["value"])
    for rs in stored.values():
        for r in rs:
            m = r.get("metrics") or {}
            if metric_name is None and isinstance(m.get("task_metric"), str):
                metric_name = m["task_metric"]
            if clean_value is None and _finite_number(m.get("clean_value")):
                clean_value = float(m["clean_value"])
    unit = metric_name in _UNIT_METRICS
    per_rate: list[dict[str, Any]] = []
    for rate in sorted(set(planned) | set(stored)):
        group = stored.get(rate, [])
        values: list[float] = []
        flips: list[float] = []
        crashed = not_finite = 0
        for r in group:
            m = r.get("metrics") or {}
            if _finite_number(m.get("n_flips")):
                flips.append(float(m["n_flips"]))
            if r.get("crash") or r.get("outcome") == "crash":
                crashed += 1
                continue
            v = m.get("task_value")
            if not _finite_number(v):
                not_finite += 1
                continue
            values.append(float(v))
            if clean_value is None and m.get("n_flips") == 0:
                clean_value = float(v)  # no bit flipped: the clean model's outputs
        per_rate.append({
            "rate": rate,
            "planned": planned.get(rate, 0),
            "n": len(group),
            "expected_flips": rate * plan.population,
            "flips_mean": float(np.mean(flips)) if flips else float("nan"),
            "metric": _mean_ci(values, conf, unit),
            "left_out": {"crash": crashed, "not_finite": not_finite},
            "rates": {f: rate_with_ci(sum(1 for r in group if r.get(f)), len(group), conf).to_dict()
                      for f in _RATE_FLAGS if f in FLAGS},
        })
    n_stored = len(seen)
    paths = Counter(str(r.get("path") or "unrecorded") for rs in stored.values() for r in rs)
    return {
        "fault_model": "ber",
        "design": plan.design,
        "confidence": conf,
        "metric": metric_name or "task metric",
        "clean_value": clean_value,
        "method": "student-t across experiments (metric); wilson (outcome rates)",
        "population_bits": plan.population,
        "ber": per_rate,
        "experiments": n_stored,
        "planned": len(plan.experiments),
        "progress": {"stored": n_stored, "planned": len(plan.experiments),
                     "complete": n_stored == len(plan.experiments) and n_stored > 0},
        "paths": dict(paths.most_common()),
    }
