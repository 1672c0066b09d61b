"""Activation profiling: exact min/max over batches, percentiles, non-finite counts, fixed batch dims."""

from __future__ import annotations

import numpy as np
import pytest
from harden_helpers import parse

from onnxfi.data import Dataset
from onnxfi.errors import OnnxfiError
from onnxfi.profile import batch_size_for, profile_values

MODEL = """
g (float[N,3] x) => (float[N,3] y) <float[3] s = {2.0, -1.0, 0.5}> {
  m = Mul(x, s)
  y = Relu(m)
}
"""


def _data(n: int = 50) -> Dataset:
    x = np.random.default_rng(6).normal(size=(n, 3)).astype(np.float32)
    return Dataset({"x": x}, None, "test")


def test_min_max_exact_across_batches_and_percentiles_exact_on_small_data() -> None:
    model = parse(MODEL)
    data = _data()
    prof = profile_values(model, data, ["m", "y", "x"], percentiles=[50.0, 99.0], batch_size=7)
    x = data.feeds["x"]
    m = x * np.array([2.0, -1.0, 0.5], np.float32)
    assert prof.samples == 50
    assert (prof["m"].min, prof["m"].max) == (float(m.min()), float(m.max()))
    assert (prof["y"].min, prof["y"].max) == (0.0, float(m.max()))
    assert (prof["x"].min, prof["x"].max) == (float(x.min()), float(x.max()))  # a graph input, read from the feeds
    assert prof["m"].count == 150 and prof["m"].sampled == 150
    assert prof["m"].percentiles[99.0] == pytest.approx(float(np.percentile(m, 99)), rel=1e-6)
    assert prof["y"].upper(50.0) == pytest.approx(float(np.percentile(np.maximum(m, 0), 50)), rel=1e-6)
    assert prof["y"].upper() == prof["y"].upper(100) == prof["y"].max


def test_percentiles_on_a_subsample_are_seeded_and_close() -> None:
    model = parse(MODEL)
    data = _data(2000)
    a = profile_values(model, data, ["m"], percentiles=[90.0], sample_size=1000, seed=3, batch_size=128)
    b = profile_values(model, data, ["m"], percentiles=[90.0], sample_size=1000, seed=3, batch_size=128)
    assert a["m"] == b["m"]
    assert 900 <= a["m"].sampled <= 1000
    exact = float(np.percentile(data.feeds["x"] * np.array([2.0, -1.0, 0.5], np.float32), 90))
    assert a["m"].percentiles[90.0] == pytest.approx(exact, abs=0.15)
    assert a["m"].count == 6000  # min/max still saw every element


def test_nonfinite_values_are_counted_not_used() -> None:
    model = parse(MODEL)
    x = np.array([[1.0, np.inf, np.nan], [0.5, -2.0, 4.0]], dtype=np.float32)
    prof = profile_values(model, Dataset({"x": x}, None, "t"), ["m"])
    assert prof["m"].nonfinite == 2
    assert (prof["m"].min, prof["m"].max) == (1.0, 2.0)  # m = [[2, -inf, nan], [1, 2, 2]]
    none = profile_values(model, Dataset({"x": np.full((2, 3), np.nan, np.float32)}, None, "t"), ["m"])
    assert not none["m"].finite


def test_errors_and_fixed_batch() -> None:
    model = parse(MODEL)
    with pytest.raises(OnnxfiError, match="percentile must be in"):
        profile_values(model, _data(), ["m"], percentiles=[0.0])
    with pytest.raises(OnnxfiError, match="no value named"):
        profile_values(model, _data(), ["nope"])
    with pytest.raises(OnnxfiError, match="was not profiled"):
        profile_values(model, _data(), ["m"])["m"].upper(99.0)
    assert batch_size_for(model, 32) == 32
    fixed = parse(MODEL.replace("N,3", "4,3"))
    assert batch_size_for(fixed, 32) == 4
    prof = profile_values(fixed, _data(8), ["y"], batch_size=32)
    assert prof["y"].count == 24
