"""Critical-bit search: weights -> the (element, bit) pairs whose single flip causes an outcome, found with
far fewer experiments than flipping every bit, and checked where it assumes.

The search (after BinFI, Chen et al., DSN 2019: binary fault injection) rests on one assumption that it
checks rather than trusts: for one element, the outcome is monotone in the size of the value change
|new - old| among flips that move the value the same way. A float's bits split into two *chains* by that
direction: *away from zero* (the bits that are 0: setting one grows |value|) and *toward zero* (the bits that
are 1: clearing one shrinks |value|). In each chain the order by |new - old| is the order by bit index
(IEEE magnitudes are monotone in their encoding): mantissa bits below exponent bits. The sign bit is run
directly: its flip crosses zero, and outcomes need not be monotone across that (a BatchNorm scale of 1.0
followed by a ReLU: -1.0 can be harmless where 0.0 is not; measured on digits_cnn). Per chain:

1. run one flip: the largest change (harmless: the chain is expected harmless, its boundary past its end),
   or, for later elements of the same weight, the change where the earlier ones had their boundary (the
   median: elements of one weight tend to fail at similar changes; a wrong start costs flips, not answers);
2. gallop away from it (1, 2, 4, ... positions) to a flip of the other kind, then bisect to the boundary:
   the smallest change that is harmful;
3. *verify*: besides the two flips that bound the boundary, at least ``verify`` more on each side that
   has them (the nearest ones not yet run); every flip run in the chain must agree with the boundary
   (harmless below it, harmful from it on).

Where a check finds a flip that contradicts its chain's boundary (a non-monotone element), or the value
is NaN/Inf, every bit of the element is run (a *fallback*: exact). Integer and quantized elements are run
exhaustively: their bits do not order a change in magnitude (two's-complement sign, packed nibbles).

Bit numbering is :mod:`onnxfi.bits`' (bit 0 least significant; float32 31 sign, 30..23 exponent).
Elements may be sampled (``elements=K`` per layer, uniformly without replacement, seeded); the per-layer
fraction of critical bits then comes with an interval over elements (:func:`onnxfi.stats.stratified_estimate`,
one stratum of element fractions, finite-population corrected; ``census`` when every element is searched).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxfi.bits import dtype_info_for_numpy, element_value, from_bits, to_bits
from onnxfi.errors import OnnxfiError
from onnxfi.jsonvalues import number_or_text
from onnxfi.outcomes import OUTCOMES
from onnxfi.stats import Rate, stratified_estimate

if TYPE_CHECKING:
    from onnxfi.engine import Engine, EngineConfig
    from onnxfi.sites import Site

__all__ = [
    "CRITICAL_BITS_SCHEMA",
    "THRESHOLDS",
    "ElementResult",
    "SiteResult",
    "CriticalBits",
    "is_harmful",
    "bit_chains",
    "search_element",
    "flipped_values",
    "find_critical_bits",
    "run_critical_bits",
    "stored_pairs",
]

CRITICAL_BITS_SCHEMA = "onnxfi.critical-bits/1"
# --outcome: the least severe outcome that counts as harmful (every more severe one counts too)
THRESHOLDS = ("sdc1", "critical", "due")


def is_harmful(outcome: str, threshold: str = "sdc1") -> bool:
    """Whether an experiment's ``outcome`` is at least as severe as ``threshold`` (:data:`THRESHOLDS`):
    ``sdc1`` counts any changed decision, DUE (NaN/Inf) and crash; ``critical`` a task-metric drop, DUE
    and crash; ``due`` DUE and crash."""
    if threshold not in THRESHOLDS:
        raise OnnxfiError(f"unknown outcome {threshold!r} (use {', '.join(THRESHOLDS)})")
    return OUTCOMES.index(outcome) >= OUTCOMES.index(threshold)


# ------------------------------------------------------------------------------------------ the search


def flipped_values(value: np.ndarray) -> np.ndarray:
    """Every single-bit flip of one element (a 0-d or 1-element array): entry b is the value with bit b
    flipped (same dtype)."""
    arr = np.asarray(value).reshape(1)
    info = dtype_info_for_numpy(arr.dtype)
    words = to_bits(arr)
    w = info.word.type
    flips = np.array([words[0] ^ w(1 << b) for b in range(info.bits)], dtype=info.word)
    return from_bits(flips, arr.dtype)


def bit_chains(value: np.ndarray) -> tuple[list[int], list[int]]:
    """A float element's non-sign bits as two chains by the direction of the change, each ordered by
    |new - old| ascending: (away from zero: the bits that are 0; toward zero: the bits that are 1). A flip to
    NaN/Inf counts as the largest change (ties: by bit index)."""
    arr = np.asarray(value).reshape(1)
    info = dtype_info_for_numpy(arr.dtype)
    if not info.is_float or info.sign_bit is None:
        raise OnnxfiError(f"bit chains need a float element, not {info.name}")
    with np.errstate(invalid="ignore"):  # a flip to a signalling NaN
        old = float(arr.astype(np.float64)[0])
        new = flipped_values(arr).astype(np.float64)
    word = int(to_bits(arr)[0])
    away: list[tuple[float, int]] = []
    toward: list[tuple[float, int]] = []
    for b in range(info.bits):
        if b == info.sign_bit:
            continue
        d = abs(float(new[b]) - old)
        key = d if math.isfinite(d) else math.inf
        (toward if word >> b & 1 else away).append((key, b))
    return [b for _, b in sorted(away)], [b for _, b in sorted(toward)]


@dataclass(frozen=True)
class ElementResult:
    """The search's answer for one element: its harmful bits (run or inferred), the bits it ran (in order),
    ``method`` (``search``: chains searched and checked; ``fallback``: a check failed, every bit run;
    ``exhaustive``: every bit run from the start) and ``reason`` (why a fallback or exhaustive run)."""

    index: int
    harmful: tuple[int, ...]
    ran: tuple[int, ...]
    method: str
    reason: str = ""
    # per chain (away, toward): the smallest harmful change |new - old| the search found (inf: none); empty
    # unless method is "search"
    boundaries: tuple[float, ...] = ()


def _search_chain(chain: Sequence[int], harmful: Callable[[int], bool], verify: int, start: int) -> tuple[int, str]:
    """The boundary of one chain (the position of its smallest harmful change; ``len(chain)`` when none is
    harmful) and ``""``, or ``-1`` and the reason when the flips run contradict monotonicity. The search
    starts at position ``start`` and gallops (1, 2, 4, ... positions) away from it to a flip of the other
    kind, then bisects."""
    n = len(chain)
    if n == 0:
        return 0, ""
    seen: dict[int, bool] = {}

    def h(i: int) -> bool:
        if i not in seen:
            seen[i] = harmful(chain[i])
        return seen[i]

    lo, hi = -1, n  # lo: largest position known harmless; hi: smallest known harmful (n: none)
    p = min(max(start, 0), n - 1)
    step = 1
    if h(p):
        hi = p
        while hi - lo > 1:
            j = max(lo + 1, hi - step)
            if not h(j):
                lo = j
                break
            hi, step = j, step * 2
    else:
        lo = p
        while hi - lo > 1:
            j = min(hi - 1, lo + step)
            if h(j):
                hi = j
                break
            lo, step = j, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if h(mid):
            hi = mid
        else:
            lo = mid
    k = hi
    # verify: the pair that bounds the boundary, and ``verify`` more flips on each side (the nearest not yet
    # run; flips the search ran away from the boundary count)
    for i in (k - 1, k):
        if 0 <= i < n:
            h(i)
    below = [i for i in range(k - 2, -1, -1) if i not in seen]
    above = [i for i in range(k + 1, n) if i not in seen]
    for todo, have in ((below, sum(i < k - 1 for i in seen)), (above, sum(i > k for i in seen))):
        for i in todo[:max(0, verify - have)]:
            h(i)
    for i, bad in seen.items():
        if bad != (i >= k):
            side = "harmful below" if bad else "harmless above"
            return -1, f"bit {chain[i]} {side} the boundary at bit {chain[k] if k < n else 'none'}"
    return k, ""


def _changes(arr: np.ndarray) -> np.ndarray:
    """|new - old| of every single-bit flip of a float element (inf where the flip gives NaN/Inf)."""
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(flipped_values(arr).astype(np.float64) - arr.astype(np.float64)[0])
    return np.where(np.isfinite(d), d, np.inf)


def search_element(
    value: np.ndarray, harmful: Callable[[int], bool], *, index: int = 0, verify: int = 1, exhaustive: bool = False,
    thresholds: tuple[float, float] | None = None,
) -> ElementResult:
    """The harmful bits of one element (``value``, a 0-d or 1-element array of its dtype), asking
    ``harmful(bit)`` as few times as the checked search allows (see the module docstring); each bit is
    asked at most once. ``verify``: flips run on each side of a chain's boundary beyond the two that bound
    it. ``exhaustive``: ask every bit. ``thresholds``: where to start in each chain (away, toward), as a
    change |new - old| expected to be the smallest harmful one (inf: none; None: start at the largest
    change); only the number of flips run depends on it, never the answer's checks."""
    if verify < 0:
        raise OnnxfiError("verify must be 0 or more")
    arr = np.asarray(value).reshape(1)
    info = dtype_info_for_numpy(arr.dtype)
    ran: dict[int, bool] = {}

    def ask(bit: int) -> bool:
        if bit not in ran:
            ran[bit] = bool(harmful(bit))
        return ran[bit]

    def every_bit(method: str, reason: str) -> ElementResult:
        for b in range(info.bits):
            ask(b)
        return ElementResult(index, tuple(b for b in range(info.bits) if ran[b]), tuple(ran), method, reason)

    if exhaustive:
        return every_bit("exhaustive", "requested")
    if not info.is_float or info.sign_bit is None:
        return every_bit("exhaustive", f"{info.name}: no magnitude order over its bits")
    with np.errstate(invalid="ignore"):
        if not np.isfinite(arr.astype(np.float64)[0]):
            return every_bit("exhaustive", "the value is NaN/Inf")
    found: set[int] = set()
    changes = _changes(arr)
    bounds = []
    for c, chain in enumerate(bit_chains(arr)):
        start = len(chain) - 1
        if thresholds is not None and math.isfinite(thresholds[c]):
            start = next((i for i, b in enumerate(chain) if changes[b] >= thresholds[c]), len(chain) - 1)
        k, why = _search_chain(chain, ask, verify, start)
        if k < 0:
            return every_bit("fallback", why)
        found.update(chain[k:])
        bounds.append(float(changes[chain[k]]) if k < len(chain) else math.inf)
    if ask(info.sign_bit):
        found.add(info.sign_bit)
    return ElementResult(index, tuple(sorted(found)), tuple(ran), "search", boundaries=(bounds[0], bounds[1]))


# ----------------------------------------------------------------------------------- per site and model


@dataclass
class SiteResult:
    """One weight's search: the elements searched, each one's result, and the rows of the flips run."""

    site: str
    dtype: str
    shape: tuple[int, ...]
    bits: int
    values: np.ndarray = field(repr=False)  # the weight's flat values
    elements: list[ElementResult] = field(default_factory=list)
    rows: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict, repr=False)  # (idx, bit) -> row
    experiments: int = 0  # flips the search ran
    check_experiments: int = 0  # flips the exhaustive check added
    exhaustive_only: str = ""  # why every bit of every element runs (integer types), else ""

    @property
    def population(self) -> int:
        return int(self.values.size)

    @property
    def exhaustive_experiments(self) -> int:
        return len(self.elements) * self.bits

    def rate(self, confidence: float) -> Rate:
        """The fraction of critical (element, bit) pairs of the whole weight, from the searched elements."""
        frac = np.array([len(e.harmful) / self.bits for e in self.elements], dtype=np.float64)
        return stratified_estimate([len(frac)], [frac.sum()], [np.sum(frac * frac)], [self.population], confidence)

    def per_bit(self) -> list[int]:
        counts = [0] * self.bits
        for e in self.elements:
            for b in e.harmful:
                counts[b] += 1
        return counts


@dataclass
class CriticalBits:
    """The result of a critical-bit search over some weights (``to_dict`` is the JSON document's body)."""

    outcome: str
    sites: list[SiteResult]
    confidence: float
    seed: int
    sampled: int | None  # elements per layer (None: every element)
    verify: int
    checked: bool  # whether every bit of the searched elements was also run (the exhaustive check)
    clean: dict[str, Any] = field(default_factory=dict)

    @property
    def experiments(self) -> int:
        return sum(s.experiments for s in self.sites)

    @property
    def exhaustive_experiments(self) -> int:
        return sum(s.exhaustive_experiments for s in self.sites)

    def rate(self) -> Rate:
        """The fraction of critical pairs over every selected weight (strata: the weights, by element count)."""
        n, tot, sq, pop = [], [], [], []
        for s in self.sites:
            frac = np.array([len(e.harmful) / s.bits for e in s.elements], dtype=np.float64)
            n.append(len(frac))
            tot.append(frac.sum())
            sq.append(np.sum(frac * frac))
            pop.append(s.population)
        return stratified_estimate(n, tot, sq, pop, self.confidence)

    def agreement(self) -> dict[str, Any] | None:
        """With the exhaustive check: the (element, bit) pairs on which the search agrees with running every
        bit, and the first disagreements; None without the check."""
        if not self.checked:
            return None
        pairs = agree = 0
        wrong: list[dict[str, Any]] = []
        for s in self.sites:
            for e in s.elements:
                for b in range(s.bits):
                    truth = s.rows[(e.index, b)]["harmful"]
                    said = b in e.harmful
                    pairs += 1
                    agree += truth == said
                    if truth != said and len(wrong) < 20:
                        wrong.append({"site": s.site, "idx": e.index, "bit": b, "search": said, "run": truth})
        return {"pairs": pairs, "agree": agree, "agreement": agree / pairs if pairs else 1.0,
                "experiments": sum(s.check_experiments for s in self.sites), "disagreements": wrong}

    def top(self, n: int = 10) -> list[dict[str, Any]]:
        """The ``n`` most severe harmful flips that ran, in the search or its check (most severe outcome
        first, then the most images whose decision changed): site, flat ``idx``, ``index`` (per dimension),
        bit, outcome, old -> new."""
        found = [(s, i, b, row) for s in self.sites for (i, b), row in s.rows.items() if row["harmful"]]
        found.sort(key=lambda t: (-OUTCOMES.index(t[3]["outcome"]), -(t[3].get("images_changed") or 0.0),
                                  t[0].site, t[1], -t[2]))
        out = []
        for s, i, b, row in found[:n]:
            where = [int(x) for x in np.unravel_index(i, s.shape)] if s.shape else []
            out.append({"site": s.site, "idx": i, "index": where, "bit": b, "outcome": row["outcome"],
                        "old": row["old"], "new": row["new"], "images_changed": row.get("images_changed")})
        return out

    def layer_dicts(self) -> list[dict[str, Any]]:
        out = []
        for s in self.sites:
            r = s.rate(self.confidence)
            out.append({
                "site": s.site, "dtype": s.dtype, "elements": s.population, "searched": len(s.elements), "bits": s.bits,
                "critical": sum(len(e.harmful) for e in s.elements), "pairs": s.exhaustive_experiments,
                "rate": r.to_dict(), "experiments": s.experiments, "exhaustive_experiments": s.exhaustive_experiments,
                "fallbacks": sum(e.method == "fallback" for e in s.elements),
                "exhaustive_elements": sum(e.method == "exhaustive" for e in s.elements),
                "exhaustive_reason": s.exhaustive_only or None, "per_bit": s.per_bit(),
            })
        return out

    def to_dict(self, top: int = 10) -> dict[str, Any]:
        exh = self.exhaustive_experiments
        return {
            "outcome": self.outcome,
            "settings": {"elements": self.sampled, "seed": self.seed, "verify": self.verify,
                         "confidence": self.confidence},
            "clean": self.clean,
            "experiments": self.experiments,
            "exhaustive_experiments": exh,
            "ratio": self.experiments / exh if exh else None,
            "rate": self.rate().to_dict() if self.sites else None,
            "layers": self.layer_dicts(),
            "top": [{**t, "old": number_or_text(t["old"]), "new": number_or_text(t["new"])} for t in self.top(top)],
            "check": self.agreement(),
        }

    def pairs(self) -> Iterable[dict[str, Any]]:
        """One record per (element, bit) of the searched elements, for the store: ``source`` ``run`` (the
        flip ran, in the search or its check: ``harmful`` is what it did, with its outcome, images changed and
        path) or ``inferred`` (``harmful`` is the search's answer)."""
        for s in self.sites:
            for e in s.elements:
                old = element_value(s.values[e.index])
                new = flipped_values(s.values[e.index])
                harmful = set(e.harmful)
                for b in range(s.bits):
                    row = s.rows.get((e.index, b))
                    yield {"site": s.site, "idx": e.index, "bit": b,
                           "harmful": b in harmful if row is None else bool(row["harmful"]),
                           "source": "run" if row is not None else "inferred",
                           "outcome": None if row is None else row["outcome"],
                           "old": old, "new": element_value(new[b]),
                           "images_changed": None if row is None else row.get("images_changed"),
                           "path": None if row is None else row.get("path")}


def _thresholds(done: Sequence[ElementResult]) -> tuple[float, float] | None:
    """Where the next element of a weight starts its chains: per chain the median smallest harmful change
    over the elements searched so far (inf when most had none). Elements of one weight feed similar
    layers, so their boundaries lie at similar changes; a wrong guess costs flips, never correctness."""
    seen = [e.boundaries for e in done if e.boundaries]
    if not seen:
        return None
    return (float(np.median([b[0] for b in seen])), float(np.median([b[1] for b in seen])))


def _choose_elements(size: int, k: int | None, rng: np.random.Generator) -> list[int]:
    if k is None or k >= size:
        return list(range(size))
    if k < 1:
        raise OnnxfiError("--elements must be at least 1")
    return sorted(int(i) for i in rng.choice(size, size=k, replace=False))


def find_critical_bits(
    engine: Engine,
    sites: Sequence[Site],
    *,
    outcome: str = "sdc1",
    elements: int | None = None,
    seed: int = 0,
    verify: int = 1,
    check: bool = False,
    exhaustive: bool = False,
    confidence: float = 0.99,
    progress: Callable[[int, int, int], None] | None = None,
) -> CriticalBits:
    """Search the critical bits of ``sites`` (weights) with ``engine``, in this process: each flip is one
    :class:`onnxfi.plan.Experiment` run by :func:`onnxfi.executors._common.run_one` (a runtime failure of
    the faulty model is a ``crash`` row, harmful at every threshold). ``elements``: K elements per site
    drawn uniformly without replacement (seeded by ``seed`` and the site's name, so a site's sample does
    not depend on which other sites are searched), else every element.
    ``check``: also run every remaining bit of the searched elements and report the agreement.
    ``exhaustive``: run every bit instead of searching. ``progress(done, total, experiments)`` after each
    element."""
    from onnxfi.executors._common import run_one, unwrap
    from onnxfi.plan import Experiment

    is_harmful("masked", outcome)  # validates the threshold
    if verify < 0:
        raise OnnxfiError("--verify must be 0 or more")
    plan: list[tuple[Site, np.ndarray, list[int]]] = []
    for site in sites:
        if site.kind != "weight":
            raise OnnxfiError(f"{site.name}: critical bits are searched in weights, not {site.kind}s")
        values = np.asarray(engine.ctx.index.weight_array(site)).reshape(-1)
        if values.size:  # an empty tensor has no bits to flip
            rng = np.random.default_rng([seed, zlib.crc32(site.name.encode())])
            plan.append((site, values, _choose_elements(values.size, elements, rng)))
    total = sum(len(p[2]) for p in plan)
    results: list[SiteResult] = []
    next_id = 0
    done = 0
    for site, values, chosen in plan:
        info = dtype_info_for_numpy(values.dtype)
        shape = tuple(int(d) for d in (site.concrete_shape or (values.size,)))
        if math.prod(shape) != values.size:
            shape = (values.size,)
        res = SiteResult(site.name, info.name, shape, info.bits, values)
        if not info.is_float:
            res.exhaustive_only = f"{info.name}: every bit of every element (no magnitude order over integer bits)"
        results.append(res)
        for idx in chosen:
            new_values = flipped_values(values[idx])
            old = element_value(values[idx])

            def harmful(bit: int, idx: int = idx, new_values: np.ndarray = new_values, old: float = old,
                        res: SiteResult = res) -> bool:
                nonlocal next_id
                row = res.rows.get((idx, bit))
                if row is None:
                    exp = Experiment(id=next_id, site=res.site, kind="weight", index=idx, bit=bit,
                                     fault={"kind": "flip", "bits": [bit]}, seed=0)
                    next_id += 1
                    row = dict(unwrap(run_one(engine, exp, True, False, worker=0)))
                    row.update(harmful=is_harmful(row["outcome"], outcome), old=old, new=element_value(new_values[bit]))
                    res.rows[(idx, bit)] = row
                    res.experiments += 1
                return bool(row["harmful"])

            res.elements.append(search_element(values[idx], harmful, index=idx, verify=verify, exhaustive=exhaustive,
                                               thresholds=_thresholds(res.elements)))
            if check and not exhaustive:
                before = res.experiments
                for b in range(info.bits):
                    harmful(b)
                res.check_experiments += res.experiments - before
                res.experiments = before
            done += 1
            if progress is not None:
                progress(done, total, sum(r.experiments + r.check_experiments for r in results))
    return CriticalBits(outcome, results, confidence, seed, elements, verify, check and not exhaustive)


def run_critical_bits(
    cfg: EngineConfig,
    sites: str | None = None,
    **options: Any,
) -> CriticalBits:
    """The programmatic ``onnxfi critical-bits``: an :class:`onnxfi.engine.Engine` for ``cfg`` (model and
    data loaded once), the weight sites whose name matches the regex ``sites`` (every weight when None),
    then :func:`find_critical_bits` with ``options``."""
    from onnxfi.engine import Engine

    engine = Engine(cfg)
    chosen = engine.ctx.index.select("weights", sites)
    if not chosen:
        raise OnnxfiError("no weight sites match" + engine.ctx.index.pattern_hint(sites))
    result = find_critical_bits(engine, chosen, **options)
    result.clean = engine.clean_summary()
    return result


def stored_pairs(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[tuple[int, int]]]:
    """Per site, the critical (element, bit) pairs of stored records (:meth:`CriticalBits.pairs` read back)."""
    out: dict[str, list[tuple[int, int]]] = {}
    for r in rows:
        if r["harmful"]:
            out.setdefault(str(r["site"]), []).append((int(r["idx"]), int(r["bit"])))
    return out

