"""The rounding rules of the fast paths (pure numpy): how far rounding alone moves outputs between two
ways of computing the same model, and whether that noise could decide an experiment's outcome.

A weight fed to a cone as an input is computed without the folding ORT applies to constants
(Conv+BatchNormalization, prepacked kernels), so its outputs differ from the baked model's by rounding.
These rules say when such a difference is only rounding (``noise_bounds``), when an experiment's outcome
could depend on it (``ambiguous``: then the engine re-runs it baked), and when a cut is worth splitting.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

__all__ = [
    "SPLIT_MIN_MACS", "is_float", "noise_bounds", "split_pays", "same_bits", "extreme", "change_class",
    "decision_ambiguous", "ambiguous", "AmbiguityPool",
]


def is_float(a: np.ndarray) -> bool:
    return a.dtype.kind == "f" or a.dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2")


def noise_bounds(fed: dict[str, np.ndarray], baked: dict[str, np.ndarray]) -> dict[str, float] | None:
    """How far rounding alone moves each float output between the fed and the baked cone (a bound to
    call a difference "within noise"), or None when they differ by more than rounding: other shapes,
    other non-finite values, other integer values or other decisions (argmax over axis 1), or a float
    difference above 64 units in the last place of the output's largest value."""
    bounds: dict[str, float] = {}
    for k, y in baked.items():
        x = fed[k]
        if x.shape != y.shape or x.dtype != y.dtype:
            return None
        if not is_float(y):
            if not np.array_equal(x, y):
                return None
            continue
        xf, yf = x.astype(np.float64), y.astype(np.float64)
        fin = np.isfinite(yf)
        if not np.array_equal(fin, np.isfinite(xf)) or not np.array_equal(xf[~fin], yf[~fin], equal_nan=True):
            return None
        d = float(np.max(np.abs(xf[fin] - yf[fin]), initial=0.0))
        scale = float(np.max(np.abs(yf[fin]), initial=0.0))
        ulp = float(np.spacing(np.asarray(scale, dtype=y.dtype)).astype(np.float64)) if scale > 0 else 0.0
        if d > 64 * ulp:
            return None
        if yf.ndim >= 2 and yf.shape[1] >= 2 and not np.array_equal(np.argmax(xf, axis=1), np.argmax(yf, axis=1)):
            return None
        bounds[k] = max(4 * d, 8 * ulp)
    return bounds


# Multiply-adds of one cone run (over all samples) from which splitting a weight's cone pays by default.
# Measured on 2 cores (bench/RESULTS.md): a head session build costs 2-3 ms on the zoo's small CNNs,
# more than a fed cone run plus its share of baked re-runs (digits_cnn: 0.2 GMAC per run, fed 562 vs
# split 345 exp/s); on ResNet-18 (2.4-70 GMAC per run at batch 64) the split is 1.2x (1.4x steady) faster.
SPLIT_MIN_MACS = 10**9


def split_pays(cone_macs_per_sample: int, samples: int) -> bool:
    """Whether a weight's cone is split by default: when one run of it is big enough for a head session
    build per fault to cost less than the baked re-runs it saves. Deterministic (no timing), so that
    every worker and every rerun of a plan takes the same path and gets the same metrics."""
    return cone_macs_per_sample * max(1, samples) >= SPLIT_MIN_MACS


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality (NaN payloads and the sign of zero included)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "OUS":
        return bool(np.array_equal(a, b))
    return bool(np.array_equal(np.require(a, requirements="C").reshape(-1).view(np.uint8),
                               np.require(b, requirements="C").reshape(-1).view(np.uint8)))


def extreme(value: np.ndarray) -> bool:
    """A faulty weight value near the top of its float range (at or above the square root of the
    largest finite value) or not finite: whether its products overflow depends on the order ORT
    computes in, and on folding (w * gamma / sigma)."""
    v = np.asarray(value)
    if not is_float(v):
        return False
    with np.errstate(invalid="ignore"):  # a flipped bit can make a signalling NaN
        f = v.astype(np.float64)
    return bool(not np.all(np.isfinite(f)) or np.any(np.abs(f) >= np.sqrt(float(ml_dtypes.finfo(v.dtype).max))))


def change_class(old: np.ndarray, new: np.ndarray) -> float:
    """floor(log2(|new - old| / |old|)) of one weight element (inf when not finite or old is 0)."""
    with np.errstate(invalid="ignore"):
        a, b = float(np.asarray(old).astype(np.float64)), float(np.asarray(new).astype(np.float64))
    if a == 0 or not np.isfinite(a) or not np.isfinite(b):
        return float("inf")
    d = abs(b - a) / abs(a)
    return float(np.floor(np.log2(d))) if d > 0 else float("-inf")


def decision_ambiguous(f: np.ndarray, g: np.ndarray, b: float) -> bool:
    """Whether rounding of size ``b`` could change a decision taken from output ``f`` (axis 1: classes):
    the argmax (a near tie of the top two) or, with more than five classes, whether golden ``g``'s top-1
    class is in f's top five."""
    if f.ndim < 2 or f.shape[1] < 2:
        return False
    c = f.shape[1]
    ff = np.moveaxis(f.astype(np.float64), 1, -1).reshape(-1, c)
    top2 = -np.partition(-ff, 1, axis=1)[:, :2]
    if np.any(top2[:, 0] - top2[:, 1] <= b):
        return True
    if c > 5:
        gi = np.moveaxis(np.argmax(g, axis=1)[:, None], 1, -1).reshape(-1)
        fg = ff[np.arange(len(ff)), gi][:, None]
        above = (ff > fg + b).sum(axis=1)
        maybe = (ff >= fg - b).sum(axis=1) - 1
        if np.any((above < 5) & (maybe >= 5)):
            return True
    return False


def ambiguous(out: dict[str, np.ndarray], golden: dict[str, np.ndarray], bounds: dict[str, float]) -> bool:
    """Whether rounding noise (``bounds`` per float output) could change this experiment's outcome:
    every output within noise of golden (masked or not is then decided by rounding), a non-finite
    value, or a decision near a tie."""
    near = True
    for k, g in golden.items():
        f = out[k]
        if k not in bounds:
            near = near and np.array_equal(f, g)
            continue
        ff = f.astype(np.float64)
        if not np.all(np.isfinite(ff)):
            return True
        b = bounds[k]
        if near and float(np.max(np.abs(ff - g.astype(np.float64)), initial=0.0)) > b:
            near = False
        if decision_ambiguous(f, g, b):
            return True
    return near


class AmbiguityPool:
    """Fed weight runs per relative change class (``change_class``) and how many were rounding-ambiguous,
    pooled over the sites one engine has run: a fault no larger than faults whose fed runs were mostly
    ambiguous goes straight to the baked cone (the same result, one run fewer)."""

    def __init__(self) -> None:
        self._runs: dict[float, list[int]] = {}

    def mostly_ambiguous(self, size: float) -> bool:
        """Whether fed runs of changes at least as large as ``size`` were mostly (>= 3/4 of >= 4) ambiguous."""
        larger = [v for k, v in self._runs.items() if k >= size]
        runs, amb = sum(v[0] for v in larger), sum(v[1] for v in larger)
        return runs >= 4 and amb >= 0.75 * runs

    def record(self, size: float, was_ambiguous: bool) -> None:
        stats = self._runs.setdefault(size, [0, 0])
        stats[0] += 1
        stats[1] += int(was_ambiguous)
