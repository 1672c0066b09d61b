"""Activation ranges on calibration data: run the model with chosen values exposed, keep per-value min/max/percentiles.

Min and max are exact over every finite element seen. Percentiles are computed on a seeded uniform
subsample of at most ``sample_size`` finite elements per value (every element when there are fewer),
drawn in proportion to each batch's size; they are estimates, the max is not. NaN/Inf elements are
counted, never used in the bounds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxfi.data import Dataset
from onnxfi.errors import OnnxfiError
from onnxfi.passes.expose import ExposeValues
from onnxfi.runtime import make_session, run_session

__all__ = [
    "ValueRange",
    "Profile",
    "profile_values",
    "batches",
    "batch_size_for",
    "copy_model",
]

DEFAULT_SAMPLE_SIZE = 100_000


@dataclass(frozen=True)
class ValueRange:
    """What one value held on the calibration data: exact min/max of finite elements, sampled percentiles."""

    name: str
    min: float
    max: float
    count: int
    nonfinite: int = 0
    percentiles: Mapping[float, float] = field(default_factory=dict)
    sampled: int = 0

    @property
    def finite(self) -> bool:
        """Whether any finite element was seen (else min/max are NaN)."""
        return self.count > 0

    def upper(self, percentile: float | None = None) -> float:
        """The max, or the given percentile (100 is the exact max)."""
        if percentile is None or percentile >= 100:
            return self.max
        if percentile not in self.percentiles:
            raise OnnxfiError(f"percentile {percentile} of {self.name!r} was not profiled")
        return float(self.percentiles[percentile])

    def to_dict(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {
            "name": self.name,
            "min": num(self.min),
            "max": num(self.max),
            "count": self.count,
            "nonfinite": self.nonfinite,
            "percentiles": {str(k): num(v) for k, v in self.percentiles.items()},
            "sampled": self.sampled,
        }


@dataclass
class Profile:
    """Ranges by value name, with the number of samples and where they came from."""

    ranges: dict[str, ValueRange]
    samples: int
    source: str

    def __getitem__(self, name: str) -> ValueRange:
        return self.ranges[name]

    def __contains__(self, name: object) -> bool:
        return name in self.ranges


def copy_model(model: ir.Model) -> ir.Model:
    """A deep copy of ``model`` (through the protobuf form, which every pass output survives)."""
    return ir.from_proto(ir.to_proto(model))


def batch_size_for(model: ir.Model, requested: int) -> int:
    """``requested``, unless an input has a fixed first dim: then that dim (the model only takes that batch)."""
    inits = set(model.graph.initializers)
    for v in model.graph.inputs:
        if v.name in inits or v.shape is None or len(v.shape) == 0:
            continue
        d = v.shape[0]
        if isinstance(d, int) and d > 0:
            return d
    return max(1, requested)


def batches(data: Dataset, batch_size: int, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Feeds of ``batch_size`` samples (the last one shorter); at most ``limit`` samples in all."""
    n = data.size if limit is None else min(data.size, limit)
    if n == 0:
        yield dict(data.feeds)
        return
    for start in range(0, n, batch_size):
        yield data.batch(start, min(n, start + batch_size))


class _Accumulator:
    def __init__(self, name: str, rng: np.random.Generator) -> None:
        self.name = name
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.nonfinite = 0
        self.rng = rng
        self.samples: list[np.ndarray] = []

    def add(self, arr: np.ndarray, quota: float) -> None:
        """Take ``arr`` into min/max; keep a ``quota`` fraction of its finite elements for percentiles."""
        if arr.dtype.kind not in "fiub" and arr.dtype.name != "bfloat16":
            raise OnnxfiError(f"cannot profile {self.name!r}: it holds {arr.dtype} values")
        flat = np.asarray(arr, dtype=np.float64).reshape(-1)
        ok = np.isfinite(flat)
        good = flat[ok]
        self.nonfinite += int(flat.size - good.size)
        if good.size == 0:
            return
        self.count += int(good.size)
        self.min = min(self.min, float(good.min()))
        self.max = max(self.max, float(good.max()))
        keep = min(good.size, math.ceil(quota * good.size))
        if keep < good.size:
            good = self.rng.choice(good, size=keep, replace=False)
        self.samples.append(good.astype(np.float32, copy=False))

    def result(self, percentiles: Sequence[float], sample_size: int) -> ValueRange:
        if self.count == 0:
            return ValueRange(self.name, math.nan, math.nan, 0, self.nonfinite, {}, 0)
        sample = np.concatenate(self.samples)
        if sample.size > sample_size:
            sample = self.rng.choice(sample, size=sample_size, replace=False)
        pct = {float(p): float(np.percentile(sample, p)) for p in percentiles}
        return ValueRange(self.name, self.min, self.max, self.count, self.nonfinite, pct, int(sample.size))


def profile_values(
    model: ir.Model,
    data: Dataset,
    names: Sequence[str],
    *,
    percentiles: Sequence[float] = (),
    batch_size: int = 64,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
    provider: str = "cpu",
    threads: int | None = None,
) -> Profile:
    """Run ``model`` (not modified) on ``data`` and return the range of every value in ``names``.

    Values that are graph inputs are profiled from the feeds directly; the others are exposed as extra
    graph outputs of a copy of the model and read back batch by batch.
    """
    for p in percentiles:
        if not 0 < p <= 100:
            raise OnnxfiError(f"percentile must be in (0, 100], got {p}")
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return Profile({}, data.size, data.source)
    input_names = {v.name for v in model.graph.inputs}
    copy = copy_model(model)
    to_expose = [n for n in wanted if n not in input_names]
    ExposeValues(to_expose)(copy)
    session = make_session(copy, provider=provider, threads=threads)
    real_inputs = [i.name for i in session.get_inputs()]
    rng = np.random.default_rng(seed)
    total = max(1, data.size)
    acc = {n: _Accumulator(n, rng) for n in wanted}
    bsize = batch_size_for(model, batch_size)
    for feeds in batches(data, bsize):
        feeds = {k: v for k, v in feeds.items() if k in real_inputs}
        result = run_session(session, feeds, output_names=to_expose) if to_expose else None
        for n in wanted:
            arr = feeds[n] if n in feeds else (result.outputs[n] if result is not None else None)
            if arr is None:
                raise OnnxfiError(f"value {n!r} is neither an input fed by the data nor a graph value")
            # keep about sample_size elements over the whole data: this batch's share of them
            expected = arr.size * total / max(1, _rows(arr))
            acc[n].add(arr, min(1.0, sample_size / max(1.0, expected)))
    return Profile({n: a.result(percentiles, sample_size) for n, a in acc.items()}, data.size, data.source)


def _rows(arr: np.ndarray) -> int:
    return int(arr.shape[0]) if arr.ndim else 1
