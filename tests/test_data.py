"""Input data: .npz loading (never unpickling), checks against the model inputs, seeded random data."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import onnx_ir as ir
import pytest

from onnxfi.data import LABELS_KEY, load_data, random_data, resolve_shape
from onnxfi.errors import DataError, OnnxfiError
from onnxfi.model import InputSpec

X = InputSpec("x", ir.DataType.FLOAT, ("N", 3, 4, 4))
IDS = InputSpec("ids", ir.DataType.INT64, ("N", 5))


def npz(tmp_path: Path, name: str = "d.npz", **arrays: np.ndarray) -> Path:
    p = tmp_path / name
    np.savez(p, **arrays)  # type: ignore[arg-type]
    return p


def test_load_named_arrays_and_labels(tmp_path: Path, rng: np.random.Generator) -> None:
    x = rng.random((6, 3, 4, 4), dtype=np.float32)
    ids = rng.integers(0, 9, (6, 5))
    labels = rng.integers(0, 10, 6)
    ds = load_data(npz(tmp_path, x=x, ids=ids, labels=labels), [X, IDS])
    assert ds.size == 6 and set(ds.feeds) == {"x", "ids"}
    np.testing.assert_array_equal(ds.feeds["x"], x)
    assert ds.feeds["ids"].dtype == np.int64
    assert ds.labels is not None
    np.testing.assert_array_equal(ds.labels, labels)
    b = ds.batch(2, 5)
    assert b["x"].shape == (3, 3, 4, 4)
    np.testing.assert_array_equal(b["ids"], ids[2:5])
    assert LABELS_KEY == "labels"


def test_single_input_takes_a_single_unnamed_array(tmp_path: Path) -> None:
    x = np.ones((2, 3, 4, 4), np.float32)
    ds = load_data(npz(tmp_path, arr_0=x), [X])
    np.testing.assert_array_equal(ds.feeds["x"], x)


def test_integer_data_for_float_input_is_converted(tmp_path: Path) -> None:
    ds = load_data(npz(tmp_path, x=np.arange(96, dtype=np.int32).reshape(2, 3, 4, 4)), [X])
    assert ds.feeds["x"].dtype == np.float32
    ds = load_data(npz(tmp_path, x=np.ones((2, 3, 4, 4), np.float64)), [X])
    assert ds.feeds["x"].dtype == np.float32


@pytest.mark.parametrize(
    ("arrays", "specs", "match"),
    [
        ({"a": np.ones((2, 3, 4, 4)), "b": np.ones((2, 3, 4, 4))}, [X], "the model's input is 'x'"),
        ({"x": np.ones((2, 3, 4, 4)), "idz": np.ones((2, 5))}, [X, IDS], "no array for input"),
        ({"x": np.ones((2, 3, 4, 4)), "ids": np.ones((2, 5), np.int64), "extra": np.ones(2)}, [X, IDS], "match no"),
        ({"x": np.ones((2, 3, 4))}, [X], "rank 4"),
        ({"x": np.ones((2, 4, 4, 4))}, [X], r"wants \[N,3,4,4\]"),
        ({"x": np.ones((2, 3, 4, 4), np.complex64)}, [X], "complex64"),
        ({"x": np.ones((2, 3, 4, 4), bool)}, [X], "bool"),
        ({"x": np.array(["a"] * 2)}, [X], "the model input wants float32"),
        ({"x": np.ones((2, 3, 4, 4)), "ids": np.ones((2, 5), np.float32)}, [X, IDS], "wants int64"),
        ({"x": np.ones((2, 3, 4, 4)), "ids": np.ones((3, 5), np.int64)}, [X, IDS], "different sample counts"),
        ({"x": np.ones((2, 3, 4, 4)), "labels": np.ones(3)}, [X], "labels"),
        ({"x": np.float32(1.0)}, [X], "rank 4"),
    ],
)
def test_mismatched_data(tmp_path: Path, arrays: dict, specs: list[InputSpec], match: str) -> None:
    p = npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=match) as ei:
        load_data(p, specs)
    assert "\n" not in str(ei.value)


def test_pickled_objects_refused(tmp_path: Path) -> None:
    p = npz(tmp_path, x=np.array([{"evil": 1}, None], dtype=object))
    with pytest.raises(DataError, match="pickled"):
        load_data(p, [X])


@pytest.mark.parametrize("kind", ["missing", "npy", "text", "random", "truncated"])
def test_not_an_npz(tmp_path: Path, kind: str, rng: np.random.Generator) -> None:
    p = tmp_path / "d.npz"
    if kind == "npy":
        p = tmp_path / "d.npy"
        np.save(p, np.ones((2, 3, 4, 4), np.float32))
    elif kind == "text":
        p.write_text("x,y\n1,2\n")
    elif kind == "random":
        p.write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        np.savez(p, x=rng.random((2, 3, 4, 4)))
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as ei:
        load_data(p, [X])
    assert "\n" not in str(ei.value)
    assert ("not found" if kind == "missing" else p.name) in str(ei.value)


def test_random_data_is_seeded_and_typed() -> None:
    specs = [X, IDS, InputSpec("m", ir.DataType.BOOL, (4,)), InputSpec("h", ir.DataType.FLOAT16, (2,)),
             InputSpec("b", ir.DataType.BFLOAT16, (3,))]
    a = random_data(specs, seed=3, batch=2)
    b = random_data(specs, seed=3, batch=2)
    c = random_data(specs, seed=4, batch=2)
    assert a.feeds["x"].shape == (2, 3, 4, 4) and a.feeds["x"].dtype == np.float32
    assert a.feeds["ids"].shape == (2, 5) and a.feeds["ids"].dtype == np.int64
    assert a.feeds["m"].dtype == np.bool_ and a.feeds["h"].dtype == np.float16
    assert a.feeds["b"].dtype == np.dtype(ml_dtypes.bfloat16)
    for k in a.feeds:
        np.testing.assert_array_equal(a.feeds[k], b.feeds[k])
    assert not np.array_equal(a.feeds["x"], c.feeds["x"])
    assert ((a.feeds["x"] >= 0) & (a.feeds["x"] < 1)).all()
    assert ((a.feeds["ids"] >= 0) & (a.feeds["ids"] < 10)).all()
    assert a.labels is None and "seed 3" in a.source


def test_resolve_shape() -> None:
    assert resolve_shape(X, batch=5) == (5, 3, 4, 4)
    assert resolve_shape(X, {"x": (1, 3, 8, 8)}) == (1, 3, 8, 8)
    dyn = InputSpec("img", ir.DataType.FLOAT, ("N", 3, "H", "W"))
    with pytest.raises(OnnxfiError, match="--input-shape img:") as ei:
        resolve_shape(dyn, batch=1)
    assert "img:Nx3x?x?" in str(ei.value)  # N: the sample axis, sized by the sample count; ?: a size to give
    with pytest.raises(OnnxfiError, match="unknown shape"):
        resolve_shape(InputSpec("u", ir.DataType.FLOAT, None))
    with pytest.raises(OnnxfiError):
        random_data([dyn])
    assert random_data([dyn], overrides={"img": (2, 3, 5, 5)}).feeds["img"].shape == (2, 3, 5, 5)


def test_resolve_shape_merges_dims_left_dynamic() -> None:
    """--input-shape's ? or N (-1) keeps the model's dim: a fixed one as it is, the sample axis sized by
    the batch, any other dynamic one still an error that names it."""
    dyn = InputSpec("img", ir.DataType.FLOAT, ("N", 3, "H", "W"))
    assert resolve_shape(dyn, {"img": (-1, 3, 48, 192)}, batch=5) == (5, 3, 48, 192)
    assert resolve_shape(dyn, {"img": (-1, -1, 48, 192)}, batch=2) == (2, 3, 48, 192)
    with pytest.raises(OnnxfiError, match=r"dynamic dims \[\?,3,\?,192\]"):
        resolve_shape(dyn, {"img": (-1, 3, -1, 192)}, batch=2)
    with pytest.raises(OnnxfiError, match="img:Nx3x"):
        resolve_shape(dyn, {"img": (-1, 3, 48, 192)})  # no sample count to size N with
    assert random_data([dyn], batch=3, overrides={"img": (-1, 3, 4, 4)}).feeds["img"].shape == (3, 3, 4, 4)
