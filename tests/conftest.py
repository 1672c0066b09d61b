"""Shared fixtures and helpers: tiny ONNX models built with onnx.helper under tmp_path, and an
independent bit-level view of numpy arrays (``words``) that does not use onnxfi's own code.

Test modules import the plain helpers with ``from conftest import ...`` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, settings
from numpy import dtype as NpDtype
from onnx import TensorProto

# Deterministic, no example database written into the work tree.
settings.register_profile(
    "onnxfi",
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile("onnxfi")

REPO = Path(__file__).resolve().parents[1]
ZOO = REPO / "model_zoo"
OPSET = 17
IR_VERSION = 8  # onnx 1.23 writes IR 14 by default; onnxruntime 1.31 reads up to 13


@dataclass(frozen=True)
class DT:
    """One element type under test, described without onnxfi: numpy type, ONNX enum, width, kind."""

    name: str
    np: NpDtype
    onnx: int
    bits: int
    is_float: bool
    signed: bool

    @property
    def word(self) -> NpDtype:
        return np.dtype(f"<u{self.bits // 8}")


DTYPES: list[DT] = [
    DT("float32", np.dtype(np.float32), TensorProto.FLOAT, 32, True, True),
    DT("float16", np.dtype(np.float16), TensorProto.FLOAT16, 16, True, True),
    DT("bfloat16", np.dtype(ml_dtypes.bfloat16), TensorProto.BFLOAT16, 16, True, True),
    DT("float64", np.dtype(np.float64), TensorProto.DOUBLE, 64, True, True),
    DT("int8", np.dtype(np.int8), TensorProto.INT8, 8, False, True),
    DT("uint8", np.dtype(np.uint8), TensorProto.UINT8, 8, False, False),
    DT("int16", np.dtype(np.int16), TensorProto.INT16, 16, False, True),
    DT("uint16", np.dtype(np.uint16), TensorProto.UINT16, 16, False, False),
    DT("int32", np.dtype(np.int32), TensorProto.INT32, 32, False, True),
    DT("uint32", np.dtype(np.uint32), TensorProto.UINT32, 32, False, False),
    DT("int64", np.dtype(np.int64), TensorProto.INT64, 64, False, True),
    DT("uint64", np.dtype(np.uint64), TensorProto.UINT64, 64, False, False),
]
DT_BY_NAME = {d.name: d for d in DTYPES}


def words(arr: np.ndarray) -> np.ndarray:
    """The storage words of ``arr`` (same shape), read from its raw little-endian bytes."""
    a = np.asarray(arr)
    return np.frombuffer(a.tobytes(order="C"), dtype=np.dtype(f"<u{a.dtype.itemsize}")).reshape(a.shape)


def int_words(arr: np.ndarray) -> list[int]:
    """The storage words of ``arr`` as Python ints, element by element (C order)."""
    a = np.ascontiguousarray(arr)
    n = a.dtype.itemsize
    raw = a.tobytes()
    return [int.from_bytes(raw[i : i + n], "little") for i in range(0, len(raw), n)]


def from_int_words(values: Sequence[int], dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of ``int_words``."""
    n = np.dtype(dtype).itemsize
    raw = b"".join(int(v).to_bytes(n, "little") for v in values)
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def random_words(dt: DT, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """An array of ``dt`` whose words are uniformly random (NaNs and infs included for floats)."""
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * dt.np.itemsize, dtype=np.uint8).tobytes()
    return np.frombuffer(raw, dtype=dt.np).reshape(shape).copy()


def assert_same_words(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_array_equal(words(actual), words(expected))


# --------------------------------------------------------------------------------------------- models


def vi(name: str, elem: int, shape: Sequence[int | str] | None) -> onnx.ValueInfoProto:
    return oh.make_tensor_value_info(name, elem, shape)


def tensor(name: str, array: np.ndarray) -> onnx.TensorProto:
    return onh.from_array(np.asarray(array), name)


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    opset: int = OPSET,
    name: str = "g",
    extra_opsets: Mapping[str, int] | None = None,
) -> onnx.ModelProto:
    opsets = [oh.make_opsetid("", opset)] + [oh.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    graph = oh.make_graph(list(nodes), name, list(inputs), list(outputs), initializer=list(initializers))
    model = oh.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION, producer_name="onnxfi-tests")
    return model


def save(model: onnx.ModelProto, path: Path, check: bool = True) -> Path:
    if check:
        onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def save_external(model: onnx.ModelProto, path: Path, location: str = "w.data") -> Path:
    """Save with every tensor (initializers and Constant attributes) in one external data file."""
    m = onnx.ModelProto()
    m.CopyFrom(model)  # onnx.save_model converts the proto it is given in place
    onnx.save_model(
        m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location,
        size_threshold=0, convert_attribute=True,
    )
    return path


def _attr_array(node: onnx.NodeProto, attr: onnx.AttributeProto) -> np.ndarray | None:
    if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
        return onh.to_array(attr.t)
    if attr.name == "value_floats":
        return np.asarray(list(attr.floats), dtype=np.float32)
    if attr.name == "value_float":
        return np.asarray(attr.f, dtype=np.float32)
    if attr.name == "value_ints":
        return np.asarray(list(attr.ints), dtype=np.int64)
    if attr.name == "value_int":
        return np.asarray(attr.i, dtype=np.int64)
    return None


def _graph_tensors(graph: onnx.GraphProto, prefix: str, out: dict[str, np.ndarray]) -> None:
    for t in graph.initializer:
        key = prefix + t.name
        assert key not in out, f"duplicate tensor name {key}"
        out[key] = onh.to_array(t)
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant":
                arr = _attr_array(node, attr)
                if arr is not None:
                    key = prefix + node.output[0]
                    assert key not in out, f"duplicate tensor name {key}"
                    out[key] = arr
            elif attr.type == onnx.AttributeProto.TENSOR:
                out[f"{prefix}{node.name or node.op_type}.{attr.name}"] = onh.to_array(attr.t)
            if attr.type == onnx.AttributeProto.GRAPH:
                _graph_tensors(attr.g, prefix, out)
            for g in attr.graphs:
                _graph_tensors(g, prefix, out)


def file_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every stored tensor of a model file (external data loaded), by name, read with plain onnx."""
    model = onnx.load_model(str(path), load_external_data=True)
    out: dict[str, np.ndarray] = {}
    _graph_tensors(model.graph, "", out)
    return out


def diff_elements(before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray]) -> list[tuple[str, int]]:
    """(tensor name, flat index) of every element whose storage word differs; dtype/shape must match."""
    assert sorted(before) == sorted(after)
    diffs: list[tuple[str, int]] = []
    for name in before:
        a, b = before[name], after[name]
        assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, b.dtype, a.shape, b.shape)
        wa, wb = words(a).reshape(-1), words(b).reshape(-1)
        diffs.extend((name, int(i)) for i in np.flatnonzero(wa != wb))
    return diffs


def ort_run(
    model: onnx.ModelProto | Path | str | bytes,
    feeds: Mapping[str, np.ndarray],
    outputs: Iterable[str] | None = None,
) -> dict[str, np.ndarray]:
    if isinstance(model, onnx.ModelProto):
        source: str | bytes = model.SerializeToString()
    elif isinstance(model, bytes):
        source = model
    else:
        source = os.fspath(model)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(source, sess_options=so, providers=["CPUExecutionProvider"])
    names = list(outputs) if outputs is not None else [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds))))


def expose(model: onnx.ModelProto, names: Iterable[str], elem: int) -> onnx.ModelProto:
    """A copy of ``model`` with extra graph outputs (type given, shape left to the runtime)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(oh.make_tensor_value_info(n, elem, None))
    return m


# ------------------------------------------------------------------------------------ model fixtures


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240601)


def mlp_model() -> onnx.ModelProto:
    """x[N,4] -> MatMul(W[4,3]) -> Add(b[3]) -> Relu -> y[N,3]; W and b are initializers."""
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 8.0 - 0.5
    b = np.array([0.25, -0.5, 1.0], dtype=np.float32)
    return make_model(
        [
            oh.make_node("MatMul", ["x", "W"], ["mm"], name="mm"),
            oh.make_node("Add", ["mm", "b"], ["pre"], name="add"),
            oh.make_node("Relu", ["pre"], ["y"], name="relu"),
        ],
        [vi("x", TensorProto.FLOAT, ["N", 4])],
        [vi("y", TensorProto.FLOAT, ["N", 3])],
        [tensor("W", w), tensor("b", b)],
    )


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    return save(mlp_model(), tmp_path / "mlp.onnx")


def storage_model() -> onnx.ModelProto:
    """Weights in every storage form: initializer ``b``, Constant tensor ``cw``, Constant
    value_floats ``cf``, an initializer ``tb`` inside an If's then-branch, a Constant ``ec`` in the
    else-branch, and an initializer ``lw`` inside a Loop body.

    y = If(cond, (x @ cw + cf) + tb, (x @ cw + cf) - ec) + b + Loop(2 trips, acc += lw)
    """
    then_g = oh.make_graph(
        [oh.make_node("Add", ["h", "tb"], ["t_out"], name="then_add")], "then", [],
        [vi("t_out", TensorProto.FLOAT, [2, 4])],
        initializer=[tensor("tb", np.array([1.5, -2.0, 0.75, 3.0], np.float32))],
    )
    else_g = oh.make_graph(
        [
            oh.make_node("Constant", [], ["ec"], value=tensor("ec_t", np.array([0.5, 1.0, -1.5, 2.0], np.float32))),
            oh.make_node("Sub", ["h", "ec"], ["e_out"], name="else_sub"),
        ],
        "else", [], [vi("e_out", TensorProto.FLOAT, [2, 4])],
    )
    body = oh.make_graph(
        [
            oh.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
            oh.make_node("Add", ["acc_in", "lw"], ["acc_out"], name="body_add"),
        ],
        "body",
        [vi("iter", TensorProto.INT64, []), vi("cond_in", TensorProto.BOOL, []), vi("acc_in", TensorProto.FLOAT, [4])],
        [vi("cond_out", TensorProto.BOOL, []), vi("acc_out", TensorProto.FLOAT, [4])],
        initializer=[tensor("lw", np.array([0.125, 0.25, -0.375, 0.5], np.float32))],
    )
    cw = (np.arange(16, dtype=np.float32).reshape(4, 4) - 7.0) / 4.0
    nodes = [
        oh.make_node("Constant", [], ["cw"], value=tensor("cw_t", cw)),
        oh.make_node("Constant", [], ["cf"], value_floats=[0.5, -0.25, 2.0, 1.0]),
        oh.make_node("MatMul", ["x", "cw"], ["mm"], name="mm"),
        oh.make_node("Add", ["mm", "cf"], ["h"], name="add_cf"),
        oh.make_node("If", ["cond"], ["branch"], name="if", then_branch=then_g, else_branch=else_g),
        oh.make_node("Add", ["branch", "b"], ["hb"], name="add_b"),
        oh.make_node("Loop", ["trips", "", "acc0"], ["acc"], name="loop", body=body),
        oh.make_node("Add", ["hb", "acc"], ["y"], name="add_acc"),
    ]
    return make_model(
        nodes,
        [vi("x", TensorProto.FLOAT, [2, 4]), vi("cond", TensorProto.BOOL, [])],
        [vi("y", TensorProto.FLOAT, [2, 4])],
        [
            tensor("b", np.array([0.1, 0.2, 0.3, 0.4], np.float32)),
            tensor("trips", np.array(2, np.int64)),
            tensor("acc0", np.zeros(4, np.float32)),
        ],
    )


def storage_reference(tensors: Mapping[str, np.ndarray], x: np.ndarray, cond: bool) -> np.ndarray:
    """numpy re-computation of ``storage_model`` from its stored tensors."""
    h = x @ tensors["cw"] + tensors["cf"]
    branch = h + tensors["tb"] if cond else h - tensors["ec"]
    acc = tensors["acc0"] + 2 * tensors["lw"]
    return (branch + tensors["b"] + acc).astype(np.float32)


@pytest.fixture
def storage_path(tmp_path: Path) -> Path:
    return save(storage_model(), tmp_path / "storage.onnx")


def dynamic_conv_model() -> onnx.ModelProto:
    """x[N,3,H,W] -> Conv(w[2,3,1,1]) -> Relu -> y: needs --input-shape to run without data."""
    w = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3, 1, 1)
    return make_model(
        [oh.make_node("Conv", ["x", "w"], ["c"], name="conv"), oh.make_node("Relu", ["c"], ["y"], name="relu")],
        [vi("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [vi("y", TensorProto.FLOAT, ["N", 2, "H", "W"])],
        [tensor("w", w)],
    )


@pytest.fixture
def dynamic_conv_path(tmp_path: Path) -> Path:
    return save(dynamic_conv_model(), tmp_path / "dyn.onnx")


def quantized_model() -> onnx.ModelProto:
    """QuantizeLinear -> QLinearConv(int8 w, int32 bias) -> DequantizeLinear, and an int8 weight
    behind DequantizeLinear feeding a MatMul."""
    rng = np.random.default_rng(9)
    inits = [
        tensor("xs", np.array(0.05, np.float32)), tensor("xzp", np.array(128, np.uint8)),
        tensor("qw", rng.integers(-100, 100, (2, 1, 1, 1)).astype(np.int8)),
        tensor("ws", np.array(0.01, np.float32)), tensor("wzp", np.array(0, np.int8)),
        tensor("ys", np.array(0.1, np.float32)), tensor("yzp", np.array(120, np.uint8)),
        tensor("qb", np.array([100, -300], np.int32)),
        tensor("dw", rng.integers(-128, 127, (4, 2)).astype(np.int8)),
        tensor("dws", np.array(0.02, np.float32)), tensor("dwzp", np.array(3, np.int8)),
        tensor("uw", rng.integers(0, 255, (2,)).astype(np.uint8)),
    ]
    nodes = [
        oh.make_node("QuantizeLinear", ["x", "xs", "xzp"], ["xq"], name="q"),
        oh.make_node("QLinearConv", ["xq", "xs", "xzp", "qw", "ws", "wzp", "ys", "yzp", "qb"], ["yq"], name="qconv"),
        oh.make_node("DequantizeLinear", ["yq", "ys", "yzp"], ["yc"], name="dq"),
        oh.make_node("DequantizeLinear", ["dw", "dws", "dwzp"], ["W"], name="dqw"),
        oh.make_node("Reshape", ["yc", "flat_shape"], ["yf"], name="flat"),
        oh.make_node("MatMul", ["x2", "W"], ["y2"], name="mm"),
        oh.make_node("DequantizeLinear", ["uw", "dws", "uzp"], ["U"], name="dqu"),
        oh.make_node("Add", ["y2", "U"], ["y3"], name="addu"),
    ]
    inits += [tensor("flat_shape", np.array([1, -1], np.int64)), tensor("uzp", np.array(7, np.uint8))]
    return make_model(
        nodes,
        [vi("x", TensorProto.FLOAT, [1, 1, 2, 2]), vi("x2", TensorProto.FLOAT, [3, 4])],
        [vi("yf", TensorProto.FLOAT, [1, 8]), vi("y3", TensorProto.FLOAT, [3, 2])],
        inits,
    )


# a results store as onnxfi wrote it before rows had `path` and `image` and before the schema version was stored
OLD_STORE_SQL = (
    "CREATE TABLE campaign (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE results (id INTEGER PRIMARY KEY, site TEXT NOT NULL, kind TEXT NOT NULL, "
    "idx INTEGER NOT NULL, bit INTEGER, fault TEXT NOT NULL, outcome TEXT NOT NULL, "
    "sdc1 INTEGER NOT NULL, sdc5 INTEGER NOT NULL, critical INTEGER NOT NULL, due INTEGER NOT NULL, "
    "crash INTEGER NOT NULL, masked INTEGER NOT NULL, images_changed REAL, metrics TEXT, "
    "time_s REAL, worker INTEGER, error TEXT);"
    "INSERT INTO results VALUES (0, 's', 'weight', 3, 1, 'flip:1', 'masked', 0, 0, 0, 0, 0, 1, 0.0, '{}', 0.1, 0, NULL);"
)


def fails(capsys: pytest.CaptureFixture[str], args: Sequence[object], *needles: str) -> str:
    """``onnxfi.cli.main(args)`` returns 2 and prints exactly one ``onnxfi: error:`` line (no traceback)
    holding every needle; returns the line."""
    from onnxfi.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    assert rc == 2, (rc, cap.err)
    lines = cap.err.splitlines()
    assert len(lines) == 1, cap.err
    assert lines[0].startswith("onnxfi: error: ") and "Traceback" not in cap.err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]
