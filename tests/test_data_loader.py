"""Data-loader scripts (``--data-loader PATH.py[:FUNC]``) and inputs the ``.npz`` batching cannot express:
scalar inputs, state inputs whose samples lie on axis 1, fixed tables; through the loader, the CLI and the engine."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnx_ir as ir
import pytest
from onnx import TensorProto

from onnxfi.cli import main
from onnxfi.data import (
    Dataset,
    load_data,
    load_loader,
    make_dataset,
    parse_loader_spec,
    random_data,
    resolve_loader_spec,
    sample_axes,
)
from onnxfi.errors import DataError
from onnxfi.model import InputSpec, load_model
from onnxfi.runtime import make_session, run_batches

F, I64 = ir.DataType.FLOAT, ir.DataType.INT64
X = InputSpec("x", F, ("N", 4))
STATE = InputSpec("state", F, (2, "N", 3))
SR = InputSpec("sr", I64, ())
SPECS = [X, STATE, SR]
W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


def script(tmp_path: Path, body: str, name: str = "feeds.py") -> Path:
    p = tmp_path / name
    p.write_text("import numpy as np\n\n" + textwrap.dedent(body))
    return p


# one call per feed dict: x [1,4], state [2,1,3], sr scalar, labels for its one sample (a 0-d class id)
VAD_LIKE = """
def load_data():
    rng = np.random.default_rng(7)
    for i in range(5):
        yield {"x": rng.random((1, 4), dtype=np.float32), "state": np.full((2, 1, 3), i, np.float32),
               "sr": np.array(16000, np.int64), "labels": np.int64(i % 3)}

def other():
    return [{"x": np.ones((3, 4), np.float32), "state": np.zeros((2, 3, 3), np.float32), "sr": np.array(8000)}]
"""


def state_model(path: Path) -> Path:
    """y = (x @ W + sum(state, axis 0)) * sr / 16000: [N,3]; state [2,N,3] (its samples on axis 1); sr []."""
    nodes = [
        oh.make_node("MatMul", ["x", "W"], ["h"]),
        oh.make_node("ReduceSum", ["state", "axis0"], ["s"], keepdims=0),
        oh.make_node("Add", ["h", "s"], ["hs"]),
        oh.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        oh.make_node("Div", ["srf", "k"], ["g"]),
        oh.make_node("Mul", ["hs", "g"], ["y"]),
    ]
    g = oh.make_graph(
        nodes, "g",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
         oh.make_tensor_value_info("state", TensorProto.FLOAT, [2, "N", 3]),
         oh.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[onh.from_array(W, "W"), onh.from_array(np.array([0], np.int64), "axis0"),
                     onh.from_array(np.array(16000, np.float32), "k")],
    )
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8), path)
    return path


def expected_y(ds: Dataset) -> np.ndarray:
    f = ds.feeds
    return (f["x"] @ W + f["state"].sum(axis=0)) * (float(f["sr"]) / 16000)


# ------------------------------------------------------------------------------------------- loader


def test_loader_feed_dicts_are_joined_along_each_sample_axis(tmp_path: Path) -> None:
    ds = load_loader(str(script(tmp_path, VAD_LIKE)), SPECS)
    assert ds.size == 5 and ds.source.endswith("feeds.py:load_data")
    assert ds.feeds["x"].shape == (5, 4)
    assert ds.feeds["state"].shape == (2, 5, 3)
    np.testing.assert_array_equal(ds.feeds["state"][0, :, 0], [0, 1, 2, 3, 4])  # feed dict i is sample i
    assert ds.feeds["sr"].shape == () and int(ds.feeds["sr"]) == 16000
    assert (ds.axis("x"), ds.axis("state"), ds.axis("sr")) == (0, 1, None)
    assert ds.labels is not None
    np.testing.assert_array_equal(ds.labels, [0, 1, 2, 0, 1])
    b = ds.batch(1, 3)
    assert b["x"].shape == (2, 4) and b["state"].shape == (2, 2, 3) and b["sr"].shape == ()
    np.testing.assert_array_equal(b["state"][1, :, 2], [1, 2])
    head = ds.head(2)
    assert head.size == 2 and head.feeds["state"].shape == (2, 2, 3) and head.labels is not None
    assert len(head.labels) == 2 and head.axis("state") == 1


def test_func_selection_and_a_returned_list_without_labels(tmp_path: Path) -> None:
    p = script(tmp_path, VAD_LIKE)
    ds = load_loader(f"{p}:other", SPECS)
    assert ds.size == 3 and ds.labels is None and int(ds.feeds["sr"]) == 8000
    assert ds.feeds["sr"].dtype == np.int64  # converted to the input's type
    assert parse_loader_spec(f"{p}:other") == (p, "other")
    assert parse_loader_spec(str(p)) == (p, "load_data")
    assert resolve_loader_spec(str(p)) == f"{p.resolve()}:load_data"


def test_a_single_returned_feed_dict_and_a_sibling_import(tmp_path: Path) -> None:
    (tmp_path / "helpers_h15.py").write_text("import numpy as np\nX = np.ones((2, 4), np.float32)\n")
    p = script(tmp_path, """
        import helpers_h15

        def load_data():
            return {"x": helpers_h15.X, "state": np.zeros((2, 2, 3), np.float32), "sr": 16000}
    """)
    ds = load_loader(str(p), SPECS)
    assert ds.size == 2 and ds.feeds["sr"].dtype == np.int64


@pytest.mark.parametrize(
    ("body", "spec", "needles"),
    [
        (VAD_LIKE, "missing.py", ("data loader not found", "missing.py")),
        (VAD_LIKE, "feeds.txt", ("not a Python file",)),
        (VAD_LIKE, "feeds.py:nope", ("no function 'nope'", "load_data, other")),
        (VAD_LIKE, "feeds.py:9x", ("not a function name",)),
        ("raise ImportError('no torch here')\n", "feeds.py", ("importing it raised ImportError: no torch here", "line 3")),
        ("def load_data():\n    yield from []\n", "feeds.py", ("yielded no feed dicts",)),
        ("def load_data():\n    return 3\n", "feeds.py", ("returned an object of type int",)),
        ("def load_data():\n    yield [1, 2]\n", "feeds.py", ("item 0 is a list, not a feed dict",)),
        ("def load_data():\n    yield {}\n    raise ValueError('bad')\n", "feeds.py",
         ("feeds.py:load_data raised ValueError: bad", "line 5")),
        ("def load_data():\n    yield {'x': np.ones((1, 4)), 'state': np.zeros((2, 1, 3))}\n", "feeds.py",
         ("feed dict 0", "no array for input(s) sr")),
        ("def load_data():\n    yield {'x': np.ones((1, 4)), 'state': np.zeros((2, 1, 3)), 'sr': 1, 'y': 1}\n",
         "feeds.py", ("arrays ['y'] match no model input",)),
        ("def load_data():\n    yield {'x': np.ones((1, 4)), 'state': np.zeros((2, 2, 3)), 'sr': 1}\n", "feeds.py",
         ("different sample counts", "x 1 (axis 0), state 2 (axis 1)")),
        ("def load_data():\n    for sr in (8000, 16000):\n"
         "        yield {'x': np.ones((1, 4)), 'state': np.zeros((2, 1, 3)), 'sr': sr}\n", "feeds.py",
         ("input 'sr' has no sample axis", "feed dict 1 gives another value")),
        ("def load_data():\n    for n in (4, 5):\n"
         "        yield {'x': np.ones((1, n)), 'state': np.zeros((2, 1, 3)), 'sr': 1}\n", "feeds.py",
         ("feed dict 1", "wants [N,4]")),
        ("def load_data():\n    yield {'x': np.ones((1, 4)), 'state': np.zeros((2, 1, 3)), 'sr': 1, 'labels': 0}\n"
         "    yield {'x': np.ones((1, 4)), 'state': np.zeros((2, 1, 3)), 'sr': 1}\n", "feeds.py",
         ("feed dict 1: has no labels",)),
        ("def load_data():\n    yield {'x': np.ones((2, 4)), 'state': np.zeros((2, 2, 3)), 'sr': 1, 'labels': [0]}\n",
         "feeds.py", ("labels have (1,) samples, its inputs have 2",)),
        ("def load_data():\n    yield {'x': np.array([['a'] * 4]), 'state': np.zeros((2, 1, 3)), 'sr': 1}\n",
         "feeds.py", ("'x' is <U1, not a numeric array",)),
    ],
)
def test_bad_loaders_are_one_line_data_errors(tmp_path: Path, body: str, spec: str, needles: Sequence[str]) -> None:
    script(tmp_path, body)
    (tmp_path / "feeds.txt").write_text("")
    with pytest.raises(DataError) as ei:
        load_loader(str(tmp_path / spec), SPECS)
    msg = str(ei.value)
    assert "\n" not in msg and ei.value.__cause__ is None
    for needle in needles:
        assert needle in msg, msg


def test_data_and_loader_are_exclusive(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not both"):
        make_dataset(SPECS, "d.npz", str(script(tmp_path, VAD_LIKE)))


# ------------------------------------------------------------------------------------ sample axes


def test_sample_axes_rules() -> None:
    assert sample_axes(SPECS) == {"x": 0, "state": 1, "sr": None}
    unnamed = [InputSpec("input", F, (None, None)), InputSpec("state", F, (2, None, 128)), SR]
    assert sample_axes(unnamed) == {"input": 0, "state": 1, "sr": None}  # silero_vad's inputs
    table = InputSpec("table", F, (10, 3))
    assert sample_axes([X, table]) == {"x": 0, "table": None}  # a batched model takes a fixed table whole
    fixed = [InputSpec("a", F, (1, 3, 8, 8)), InputSpec("b", F, (3, None))]
    assert sample_axes(fixed) == {"a": 0, "b": 0}  # no dynamic first dim: a fixed-batch model, axis 0
    assert sample_axes([InputSpec("u", F, None)]) == {"u": 0}
    with pytest.raises(DataError, match=r"cannot tell which dynamic dim.*--input-shape") as ei:
        sample_axes([X, InputSpec("h", F, (2, None, None))])
    assert "h:2x?xSIZE" in str(ei.value)


def test_npz_scalar_and_state_inputs(tmp_path: Path, rng: np.random.Generator) -> None:
    """A 0-d array goes whole to every batch; a state's samples lie on its own sample axis; a fixed table
    has no sample axis, so its first dim need not match the sample count."""
    p = tmp_path / "d.npz"
    x, state = rng.random((6, 4), dtype=np.float32), rng.random((2, 6, 3), dtype=np.float32)
    np.savez(p, x=x, state=state, sr=np.array(16000), labels=np.arange(6))
    ds = load_data(p, SPECS)
    assert ds.size == 6 and ds.feeds["sr"].shape == ()
    b = ds.batch(4, 6)
    np.testing.assert_array_equal(b["state"], state[:, 4:6])
    assert b["sr"].shape == () and b["x"].shape == (2, 4)
    table = InputSpec("table", F, (10, 3))
    np.savez(p, x=x, table=np.ones((10, 3), np.float32))
    assert load_data(p, [X, table]).batch(0, 2)["table"].shape == (10, 3)
    np.savez(p, x=x, state=rng.random((2, 5, 3), dtype=np.float32), sr=np.array(16000))
    with pytest.raises(DataError, match=r"x 6 \(axis 0\), state 5 \(axis 1\)"):
        load_data(p, SPECS)


def test_random_data_sizes_the_sample_axis_and_refuses_scalar_integers() -> None:
    with pytest.raises(DataError, match=r"input 'sr' is a scalar int64.*--data-loader") as ei:
        random_data(SPECS, batch=3)
    assert "\n" not in str(ei.value)
    ds = random_data([X, STATE, InputSpec("flag", ir.DataType.BOOL, ())], seed=1, batch=3)
    assert ds.feeds["state"].shape == (2, 3, 3) and ds.size == 3 and ds.feeds["flag"].shape == ()


# -------------------------------------------------------------------------------- engine and CLI


def test_state_model_runs_in_batches_along_each_sample_axis(tmp_path: Path) -> None:
    model = state_model(tmp_path / "state.onnx")
    loaded = load_model(model)
    ds = load_loader(str(script(tmp_path, VAD_LIKE)), loaded.inputs())
    assert ds.axis("state") == 1 and ds.axis("sr") is None
    y = run_batches(make_session(loaded.model), ds, batch=2)["y"]  # three runs: 2 + 2 + 1 samples
    np.testing.assert_allclose(y, expected_y(ds), rtol=1e-6)


def fails(capsys: pytest.CaptureFixture[str], args: Sequence[object], *needles: str) -> None:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def test_cli_run_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = state_model(tmp_path / "state.onnx")
    loader = script(tmp_path, VAD_LIKE)
    out = tmp_path / "run.json"
    assert main(["run", str(model), "--data-loader", str(loader), "--batch", "2", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["samples"] == 5 and doc["data"].endswith("feeds.py:load_data")
    assert next(o for o in doc["outputs"] if o["name"] == "y")["shape"] == [5, 3]
    fails(capsys, ["run", model], "input 'sr' is a scalar int64", "--data-loader")
    fails(capsys, ["run", model, "--data-loader", tmp_path / "nope.py"], "data loader not found")
    fails(capsys, ["run", model, "--data-loader", f"{loader}:nope"], "no function 'nope'")
    fails(capsys, ["run", model, "--data-loader", loader, "--data", tmp_path / "d.npz"], "use one")
    fails(capsys, ["harden", model, "--method", "ranger", "-o", tmp_path / "h.onnx", "--data-loader", loader,
                   "--calib", tmp_path / "d.npz"], "--calib and --data-loader")


def test_analyze_runs_the_state_model_from_a_loader(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The engine's workers import the loader themselves; the scalar and the axis-1 state reach every batch."""
    model = state_model(tmp_path / "state.onnx")
    loader = script(tmp_path, VAD_LIKE)
    out = tmp_path / "a.json"
    rc = main(["analyze", str(model), "--data-loader", str(loader), "--faults", "12", "--bits", "30", "--batch", "2",
               "--db", str(tmp_path / "a.db"), "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    clean = doc["clean"]
    assert clean["samples"] == 5 and clean["data"].endswith("feeds.py:load_data")
    assert clean["primary_output"] == "y"
    assert doc["summary"]["experiments"] == 12
    outcomes = doc["summary"]["outcomes"]
    assert outcomes.get("crash", 0) == 0 and sum(outcomes.values()) == 12, outcomes
    ds = load_loader(str(loader), load_model(model).inputs())  # the clean accuracy, computed here independently
    assert ds.labels is not None
    assert clean["value"] == pytest.approx(float(np.mean(expected_y(ds).argmax(axis=1) == ds.labels)))
    assert doc["plan"]["options"]["data"].endswith("feeds.py:load_data")


def test_gate_config_data_loader(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """[gate] data_loader is a path relative to the config (FUNC kept); with data it is an error; the gate's
    campaign runs on the loader's data."""
    from onnxfi.errors import OnnxfiError
    from onnxfi.gate import config_from_dict

    cfg = config_from_dict({"data_loader": "sub/feeds.py:other", "thresholds": {"sdc1": 1.0}}, tmp_path)
    assert cfg.data_loader == f"{tmp_path / 'sub' / 'feeds.py'}:other" and cfg.data is None
    assert config_from_dict({"data_loader": "/abs/f.py"}, tmp_path).data_loader == "/abs/f.py"
    with pytest.raises(OnnxfiError, match="data and data_loader"):
        config_from_dict({"data": "d.npz", "data_loader": "f.py"}, tmp_path)
    model = state_model(tmp_path / "state.onnx")
    script(tmp_path, VAD_LIKE)
    toml = tmp_path / "onnxfi.toml"
    toml.write_text('[gate]\nmodel = "state.onnx"\ndata_loader = "feeds.py"\ndb = "g.db"\n'
                    '[gate.plan]\nfaults = 6\nbits = "30"\n[gate.thresholds]\nsdc1 = 1.0\n')
    out = tmp_path / "g.json"
    rc = main(["gate", "--config", str(toml), "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["clean"]["samples"] == 5 and doc["clean"]["data"].endswith("feeds.py:load_data")
    assert model.exists()
