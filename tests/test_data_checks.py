"""Data checks (issue 18): an array of another dtype than its input's is converted only when every value
survives (else one line naming the input, the dtypes and the first changed value, unless allow_cast), and
NaN/Inf values or converted integer data are reported in ``Dataset.warnings`` (the library never prints)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from conftest import ZOO, make_model, save, vi
from onnx import TensorProto
from onnx import helper as oh

from onnxfi.cli import main
from onnxfi.data import load_data, load_loader, make_dataset
from onnxfi.errors import DataError
from onnxfi.model import InputSpec, load_model

X = InputSpec("x", ir.DataType.FLOAT, ("N", 4))
H = InputSpec("h", ir.DataType.FLOAT16, ("N", 4))
I32 = InputSpec("i", ir.DataType.INT32, ("N", 4))
U8 = InputSpec("u", ir.DataType.UINT8, ("N", 4))
U64 = InputSpec("u", ir.DataType.UINT64, ("N", 4))


def npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)  # type: ignore[arg-type]
    return p


def loader(tmp_path: Path, body: str) -> str:
    p = tmp_path / "feeds.py"
    p.write_text("import numpy as np\n\n" + textwrap.dedent(body))
    return str(p)


# ---------------------------------------------------------------------------------------------- exact casts


def test_int64_pixels_into_float32_are_exact_and_flagged(tmp_path: Path) -> None:
    """The issue's case: x.astype(int64) of [0,1] pixels. Every value survives, so it loads; the warning says
    integer data went into a float input (what made accuracy 0.2361 instead of 0.9972 unnoticed)."""
    x = np.array([[0, 1, 1, 0], [1, 0, 0, 0]], np.int64)
    ds = load_data(npz(tmp_path, x=x), [X])
    assert ds.feeds["x"].dtype == np.float32
    np.testing.assert_array_equal(ds.feeds["x"], x.astype(np.float32))
    assert ds.warnings == ["d.npz: input 'x': integer data (int64, values 0..1) for a float32 input, converted; "
                           "check that it is scaled as the model expects"]


@pytest.mark.parametrize(
    ("spec", "arr"),
    [
        (X, np.array([[0.5, -2.0, 2.0**100, -0.0]] * 2, np.float64)),  # float64 values float32 holds
        (X, np.array([[np.nan, np.inf, -np.inf, 3.0]] * 2, np.float64)),  # NaN stays NaN, Inf stays Inf
        (X, np.full((2, 4), 2**24, np.int64)),  # the largest run of integers float32 holds exactly
        (H, np.full((2, 4), 65504.0, np.float32)),  # float16's largest
        (I32, np.full((2, 4), -(2**31), np.int64)),
        (U8, np.full((2, 4), 255, np.int64)),
        (U64, np.full((2, 4), 2**62, np.int64)),
    ],
)
def test_exact_casts_load(tmp_path: Path, spec: InputSpec, arr: np.ndarray) -> None:
    ds = load_data(npz(tmp_path, **{spec.name: arr}), [spec])
    got = ds.feeds[spec.name]
    assert got.dtype == np.dtype(spec.dtype.numpy())
    np.testing.assert_array_equal(got.astype(arr.dtype), arr)
    assert all("converted" in w or "NaN" in w for w in ds.warnings), ds.warnings


def test_the_right_dtype_loads_without_warnings(tmp_path: Path) -> None:
    ds = load_data(npz(tmp_path, x=np.ones((3, 4), np.float32), labels=np.arange(3)), [X])
    assert ds.warnings == [] and ds.feeds["x"].dtype == np.float32


# ---------------------------------------------------------------------------------------------- lossy casts


@pytest.mark.parametrize(
    ("spec", "arr", "needle"),
    [
        (X, np.array([[0, 0, 0, 2**24 + 1]] * 2, np.int64), "(first: 16777217 at [0, 3] becomes 16777216.0)"),
        (X, np.array([[1e300, 0, 0, 0]] * 2), "(first: 1e+300 at [0, 0] becomes inf)"),
        (X, np.array([[1e-50, 0, 0, 0]] * 2), "(first: 1e-50 at [0, 0] becomes 0.0)"),
        (X, np.array([[0, 0, 0, 2**63 - 1]] * 2, np.int64), "(first: 9223372036854775807 at [0, 3] becomes "),
        (H, np.array([[1e5, 0, 0, 0]] * 2, np.float32), "(first: 100000.0 at [0, 0] becomes inf)"),
        (H, np.array([[0, 0, 0, 70000]] * 2, np.int64), "(first: 70000 at [0, 3] becomes inf)"),
        (I32, np.array([[0, 2**40, 0, 0]] * 2, np.int64), "(first: 1099511627776 at [0, 1] becomes 0)"),
        (U8, np.array([[0, 0, 0, 0], [0, 0, -1, 0]], np.int64), "(first: -1 at [1, 2] becomes 255)"),
        (U64, np.array([[-1, 0, 0, 0]] * 2, np.int64), "(first: -1 at [0, 0] becomes 18446744073709551615)"),
    ],
)
def test_lossy_casts_are_refused_naming_the_first_changed_value(tmp_path: Path, spec: InputSpec, arr: np.ndarray,
                                                                needle: str) -> None:
    with pytest.raises(DataError) as ei:
        load_data(npz(tmp_path, **{spec.name: arr}), [spec])
    msg = str(ei.value)
    want = np.dtype(spec.dtype.numpy())
    assert "\n" not in msg and msg.startswith(f"d.npz: array {spec.name!r} is {arr.dtype}, the model input wants {want}")
    assert needle in msg and msg.endswith("or pass --allow-cast")


def test_float64_data_for_a_float32_input_is_rounded_to_nearest(tmp_path: Path) -> None:
    """float64 data (numpy's default, scikit-learn's digits) feeds a float32 model as frameworks feed it: each
    value rounded to the nearest float32, no warning; only overflow to Inf or a non-zero becoming 0 is refused."""
    x = np.array([[0.0, 0.5, 0.123, 0.25], [0.1, 1.0, 2.0, 1e-30]])
    ds = load_data(npz(tmp_path, x=x), [X])
    np.testing.assert_array_equal(ds.feeds["x"], x.astype(np.float32))
    assert ds.warnings == []


def test_allow_cast_converts_and_counts_the_changed_values(tmp_path: Path) -> None:
    x = np.array([[0.0, 0.5, 1e300, 0.25], [0.1, 1.0, 2.0, 1e-50]])
    ds = load_data(npz(tmp_path, x=x), [X], allow_cast=True)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(ds.feeds["x"], x.astype(np.float32))
    assert ds.warnings == ["d.npz: input 'x': converting float64 to float32 changed 2 of 8 values (--allow-cast)",
                           "d.npz: input 'x': 0 NaN, 1 Inf values in 2 samples"]  # what the cast made


def test_make_dataset_passes_allow_cast(tmp_path: Path) -> None:
    p = npz(tmp_path, x=np.full((2, 4), 1e300))
    with pytest.raises(DataError, match="--allow-cast"):
        make_dataset([X], data=p)
    assert make_dataset([X], data=p, allow_cast=True).feeds["x"].dtype == np.float32


def test_a_loader_is_checked_too_with_the_counts_over_all_feed_dicts(tmp_path: Path) -> None:
    lossy = loader(tmp_path, """
        def load_data():
            for i in range(3):
                yield {"x": np.full((2, 4), 1e300 * i)}
        """)
    with pytest.raises(DataError) as ei:
        load_loader(lossy, [X])
    assert str(ei.value).startswith("data loader feeds.py:load_data: feed dict 1: array 'x' is float64")
    assert "(first: 1e+300 at [0, 0] becomes inf)" in str(ei.value)
    ds = load_loader(lossy, [X], allow_cast=True)
    assert ds.size == 6 and ds.warnings == [
        "data loader feeds.py:load_data: input 'x': converting float64 to float32 changed 16 of 24 values "
        "(--allow-cast)", "data loader feeds.py:load_data: input 'x': 0 NaN, 16 Inf values in 6 samples"]


# ---------------------------------------------------------------------------------------------- NaN / Inf


def test_nan_and_inf_are_counted_per_input(tmp_path: Path) -> None:
    x = np.zeros((6, 4), np.float32)
    x.flat[:12] = np.nan
    x[5, 1:] = [np.inf, -np.inf, np.inf]
    ids = InputSpec("ids", ir.DataType.INT64, ("N", 2))
    ds = load_data(npz(tmp_path, x=x, ids=np.ones((6, 2), np.int64)), [X, ids])
    assert ds.warnings == ["d.npz: input 'x': 12 NaN, 3 Inf values in 6 samples"]
    assert np.isnan(ds.feeds["x"]).sum() == 12  # accepted as given
    assert ds.head(2).warnings == ds.warnings and ds.select(["x"]).warnings == ds.warnings


def test_nan_in_float16_and_a_whole_input(tmp_path: Path) -> None:
    h = np.ones((3, 4), np.float16)
    h[0, 0] = np.nan
    scale = InputSpec("scale", ir.DataType.FLOAT, ())
    ds = load_data(npz(tmp_path, h=h, scale=np.array(np.inf, np.float32)), [H, scale])
    assert ds.warnings == ["d.npz: input 'h': 1 NaN, 0 Inf values in 3 samples",
                           "d.npz: input 'scale': 0 NaN, 1 Inf values (no sample axis: every run takes it)"]


def test_nan_from_a_loader_is_counted_over_all_feed_dicts(tmp_path: Path) -> None:
    spec = loader(tmp_path, """
        def load_data():
            for i in range(4):
                yield {"x": np.full((1, 4), np.nan if i % 2 else 1.0, np.float32)}
        """)
    assert load_loader(spec, [X]).warnings == ["data loader feeds.py:load_data: input 'x': 8 NaN, 0 Inf values "
                                               "in 4 samples"]


# ---------------------------------------------------------------------------------------------- the zoo, the CLI


def test_the_zoo_eval_data_loads_without_warnings() -> None:
    models = json.loads((ZOO / "registry.json").read_text())["models"]
    assert len(models) >= 10
    for name, entry in models.items():
        ds = load_data(ZOO / entry["eval_data"], load_model(ZOO / entry["file"]).inputs())
        assert ds.warnings == [] and ds.size == entry["eval_samples"], name


def _model(tmp_path: Path) -> Path:
    m = make_model([oh.make_node("Relu", ["x"], ["y"])], [vi("x", TensorProto.FLOAT, ["N", 4])],
                   [vi("y", TensorProto.FLOAT, ["N", 4])])
    return save(m, tmp_path / "m.onnx")


def test_cli_run_refuses_lossy_data_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, data = _model(tmp_path), npz(tmp_path, x=np.full((3, 4), 1e300))
    capsys.readouterr()
    rc = main(["run", str(model), "--data", str(data)])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("onnxfi: error: d.npz: array 'x' is float64, the model input wants float32")
    assert "becomes inf" in lines[0] and "--allow-cast" in lines[0]


def test_cli_run_takes_exact_integer_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, data = _model(tmp_path), npz(tmp_path, x=np.arange(12, dtype=np.int64).reshape(3, 4))
    capsys.readouterr()
    rc = main(["run", str(model), "--data", str(data), "--json", "--repeat", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    rec = json.loads(out[out.index("{"):])
    assert rec["samples"] == 3 and rec["outputs"][0]["max"] == 11.0
