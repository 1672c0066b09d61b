"""The rounding rules of the fast paths (pure numpy): how far rounding alone moves outputs between two
ways of computing the same model, and whether that noise could decide an experiment's outcome.

A weight fed to a cone as an input is computed without the folding ORT applies to constants
(Conv+BatchNormalization, prepacked kernels), so its outputs differ from the baked model's by rounding.
These rules say when such a difference is only rounding (``noise_bounds``), when an experiment's outcome
could depend on it (``ambiguous``: then the engine re-runs it baked), which faults are too small to be
worth a fed run (``small_change_class``), and when a cut is worth splitting.

Every rule is a function of one experiment and its site's fault-free runs, never of the experiments run
before it: an experiment takes the same path and gets the same row in any worker, order or resume.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import ml_dtypes
import numpy as np

from onnxfi.bits import is_float_dtype

__all__ = [
    "SPLIT_MIN_MACS", "SMALL_CHANGE_MARGIN", "is_float", "noise_bounds", "split_pays", "same_bits", "same_outputs", "extreme",
    "change_class", "small_change_class", "decision_ambiguous", "ambiguous",
]


def is_float(a: np.ndarray) -> bool:
    """Whether an array holds floating-point values (numpy floats, bfloat16 and float8 included)."""
    return is_float_dtype(np.asarray(a).dtype)


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


def same_outputs(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> bool:
    """Every output of ``want`` is in ``got``, bit for bit (:func:`same_bits`)."""
    return all(k in got and same_bits(got[k], v) for k, v in want.items())


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


# How many binary orders of magnitude a weight element's own term is assumed to lie below the largest
# output (a layer's output sums many terms). Measured on digits_cnn weights (32 samples, 1,500 fed runs):
# fed runs of float32 mantissa bits 0..6 (changes below 2^-16 of the weight) were 90-100 % rounding-
# ambiguous, bit 7 72 %, bits 9 and up below 50 %; the outputs' relative rounding noise was 2^-20, and
# 2^(-20 + 4) separates the two groups.
SMALL_CHANGE_MARGIN = 4


def small_change_class(golden: dict[str, np.ndarray], bounds: dict[str, float]) -> float:
    """The change class (``change_class``) below which a fed weight run is expected to be within rounding
    noise of golden (so ``ambiguous``) and goes straight to the baked cone: the outputs' smallest relative
    noise bound, ``floor(log2(min_k bounds[k] / max|golden[k]|))``, plus ``SMALL_CHANGE_MARGIN``.

    A speed rule only (a fed run that turns out ambiguous is re-run baked anyway), and a function of the
    site's fault-free runs alone, so every experiment of a site takes the same path in every worker, run
    and resume (it replaces a pool of ambiguity counts over the experiments a worker had run, which made an
    experiment's path, and its raw-value metrics, depend on history). -inf when no output is float."""
    rel = []
    for k, b in bounds.items():
        g = np.asarray(golden[k])
        with np.errstate(invalid="ignore"):
            gf = g.astype(np.float64)
        scale = float(np.max(np.abs(gf[np.isfinite(gf)]), initial=0.0))
        if scale > 0 and b > 0:
            rel.append(b / scale)
    if not rel:
        return float("-inf")
    return float(math.floor(math.log2(min(rel)))) + SMALL_CHANGE_MARGIN
