"""Mutators: each takes a seeded ``numpy.random.Generator``, the corpus and a case folder, writes one damaged
input file there (a model, an .npz, a gate config, a plan JSON or an SQLite store) and says what it did.

Mutants are written only under the case folder; nothing here runs onnxfi.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import shutil
import sqlite3
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
from onnx import TensorProto

__all__ = [
    "Corpus", "build_if_model", "MODEL_MUTATIONS", "SUBGRAPH_MUTATIONS", "DATA_MUTATIONS", "PLAN_MUTATIONS",
    "STORE_MUTATIONS", "GATE_MUTATIONS", "mutate_model", "mutate_data", "mutate_plan", "mutate_store",
    "mutate_gate", "toml_dumps", "weight_site", "activation_site",
]

Rng = np.random.Generator
HUGE_INTS = [2**31 - 1, 2**31, 2**32 + 1, 10**12, 2**40, 2**62, 2**63 - 1]


@dataclass(frozen=True)
class Corpus:
    """The unmutated inputs every case starts from (built once per run under the output folder)."""

    root: Path  # the output folder's corpus/
    repo: Path

    @property
    def zoo(self) -> Path:
        return self.repo / "model_zoo"

    @property
    def if_model(self) -> Path:
        return self.root / "if_model.onnx"

    @property
    def store(self) -> Path:
        return self.root / "store.db"

    @property
    def plan(self) -> Path:
        return self.root / "store.db.plan.json"

    @property
    def gate_json(self) -> Path:
        return self.root / "gate_baseline.json"

    def model_path(self, name: str) -> Path:
        return self.if_model if name == "if_model" else self.zoo / f"{name}.onnx"


# ---------------------------------------------------------------------------------------------------- models

def build_if_model(path: Path) -> None:
    """A tiny model with an If node whose branches hold their own initializers (subgraph weights)."""
    rng = np.random.default_rng(7)

    def branch(name: str, op: str) -> onnx.GraphProto:
        w = onh.from_array(rng.standard_normal((4, 3)).astype(np.float32), f"{name}_w")
        b = onh.from_array(rng.standard_normal((3,)).astype(np.float32), f"{name}_b")
        return oh.make_graph(
            [oh.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_mm"], name=f"{name}_matmul"),
             oh.make_node("Add", [f"{name}_mm", f"{name}_b"], [f"{name}_add"], name=f"{name}_addb"),
             oh.make_node(op, [f"{name}_add"], [f"{name}_y"], name=f"{name}_act")],
            name, [], [oh.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["N", 3])], [w, b])

    nodes = [
        oh.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
        oh.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
        oh.make_node("If", ["cond"], ["y_if"], then_branch=branch("then", "Relu"),
                     else_branch=branch("else", "Sigmoid"), name="if"),
        oh.make_node("Softmax", ["y_if"], ["y"], axis=-1, name="softmax"),
    ]
    graph = oh.make_graph(nodes, "if_model", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [onh.from_array(np.array(0.0, np.float32), "zero")])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def weight_site(model: onnx.ModelProto) -> str:
    """A float weight of the (unmutated) model: the first float initializer with at least 4 elements."""
    for g in _graphs(model.graph):
        for t in g.initializer:
            if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16) and math.prod(t.dims) >= 4:
                return t.name
    return model.graph.initializer[0].name


def activation_site(model: onnx.ModelProto) -> str:
    """A float activation of the (unmutated) model: the output of its first Relu, else of its first node."""
    for n in model.graph.node:
        if n.op_type in ("Relu", "Conv", "MatMul", "Gemm"):
            return n.output[0]
    return model.graph.node[0].output[0]


def _graphs(g: onnx.GraphProto) -> list[onnx.GraphProto]:
    out = [g]
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out += _graphs(a.g)
            for sub in a.graphs:
                out += _graphs(sub)
    return out


def _pick(rng: Rng, seq: list[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _some_graph(rng: Rng, m: onnx.ModelProto) -> onnx.GraphProto:
    gs = _graphs(m.graph)
    return gs[int(rng.integers(len(gs)))]


def _m_byteflip(rng: Rng, m: onnx.ModelProto, folder: Path) -> tuple[bytes, str]:
    data = bytearray(m.SerializeToString())
    k = int(rng.integers(1, 33))
    where = sorted(int(i) for i in rng.integers(0, len(data), k))
    for i in where:
        data[i] ^= 1 << int(rng.integers(8)) if rng.random() < 0.7 else int(rng.integers(1, 256))
    return bytes(data), f"byteflip {k} bytes at {where[:6]}{'...' if k > 6 else ''}"


def _m_truncate(rng: Rng, m: onnx.ModelProto, folder: Path) -> tuple[bytes, str]:
    data = m.SerializeToString()
    cut = int(rng.integers(0, len(data)))
    return data[:cut], f"truncate to {cut}/{len(data)} bytes"


def _m_delete_node(rng: Rng, m: onnx.ModelProto, folder: Path) -> str:
    g = _some_graph(rng, m)
    if not g.node:
        return "delete node (none)"
    i = int(rng.integers(len(g.node)))
    name = g.node[i].name or g.node[i].op_type
    del g.node[i]
    return f"delete node {name!r} of graph {g.name!r}"


def _m_bogus_op(rng: Rng, m: onnx.ModelProto, folder: Path) -> str:
    g = _some_graph(rng, m)
    n = _pick(rng, list(g.node))
    how = int(rng.integers(4))
    if how == 0:
        n.op_type = "FuzzOp"
    elif how == 1:
        n.op_type = ""
    elif how == 2:
        n.domain = "com.fuzz"
    else:
        n.op_type = _pick(rng, ["Conv", "If", "Loop", "Softmax", "Reshape", "Identity", "Constant"])
    return f"node {n.name!r}: op {n.op_type!r} domain {n.domain!r}"


def _m_duplicate_names(rng: Rng, m: onnx.ModelProto, folder: Path) -> str:
    g = m.graph
    how = int(rng.integers(4))
    if how == 0 and len(g.node) >= 2:
        a, b = rng.choice(len(g.node), 2, replace=False)
        g.node[int(b)].output[0] = g.node[int(a)].output[0]
        return f"node {g.node[int(b)].name!r} writes the output of {g.node[int(a)].name!r}"
    if how == 1 and len(g.initializer) >= 2:
        g.initializer[1].name = g.initializer[0].name
        return f"two initializers named {g.initializer[0].name!r}"
    if how == 2 and len(g.node) >= 2:
        for n in g.node:
            n.name = "same"
        return "every node named 'same'"
    g.input.append(copy.deepcopy(g.input[0]))
    return f"input {g.input[0].name!r} listed twice"


def _m_cycle(rng: Rng, m: onnx.ModelProto, folder: Path) -> str:
    g = m.graph
    if len(g.node) < 2:
        n = g.node[0]
        n.input[0] = n.output[0]
        return f"node {n.name!r} reads its own output"
    i, j = sorted(int(x) for x in rng.choice(len(g.node), 2, replace=False))
    if rng.random() < 0.3:
        j = i
    if len(g.node[i].input):
        g.node[i].input[0] = g.node[j].output[0]
    else:
        g.node[i].input.append(g.node[j].output[0])
    return f"cycle: node {i} {g.node[i].name!r} reads output of node {j} {g.node[j].name!r}"


def _m_dangling(rng: Rng, m: onnx.ModelProto, folder: Path) -> str:
    g = _some_graph(rng, m)
    n = _pick(rng, list(g.node))
    how = int(rng.integers(3))
    if how == 0 and len(n.input):
        n.input[int(rng.integers(len(n.input)))] = "fuzz_missing"
        return f"node {n.name!r} reads 'fuzz_missing'"
    if how == 1:
        g.output[0].name = "fuzz_missing_out"
        return "graph output renamed to a value nobody writes"
    del m.graph.input[:]
    return "every graph input removed"


def _m_opset(rng: Rng, m: onnx.ModelProto, folder: Path) -> str:
    how = int(rng.integers(5))
    if how == 0:
        v = _pick(rng, [0, 1, 6, 9, 25, 99, -1, 2**62])
        for o in m.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = v
        return f"default opset {v}"
    if how == 1:
        del m.opset_import[:]
        return "no opset_import"
    if how == 2:
        m.opset_import.append(oh.make_opsetid("", 12))
        return "default domain imported twice (17 and 12)"
    v = _pick(rng, [0, 1, 2, 3, 11, 13, 14, 99, -5])
    m.ir_version = v
    return f"ir_version {v}"


def _float_inits(m: onnx.ModelProto) -> list[onnx.TensorProto]:
    out = [t for g in _graphs(m.graph) for t in g.initializer]
    return out or [t for t in m.graph.initializer]


def _m_init_dims(rng: Rng, m: onnx.ModelProto, folder: Path) -> str:
    t = _pick(rng, _float_inits(m))
    how = int(rng.integers(5))
    if how == 0:
        dims = [int(x) for x in t.dims]
        del t.dims[:]
        t.dims.extend(dims[:-1] + [int(rng.integers(1, 9))] if dims else [3])
    elif how == 1:
        del t.dims[:]
        t.dims.extend([_pick(rng, HUGE_INTS)] + list(t.dims[1:]))
    elif how == 2:
        del t.dims[:]
        t.dims.extend([-1, 4])
    elif how == 3:
        del t.dims[:]
        t.dims.extend([0])
    else:
        t.dims.extend([1, 1, 1, 1, 1, 1, 1, 1, 2])
    return f"initializer {t.name!r} dims {list(t.dims)}"


def _m_init_dtype(rng: Rng, m: onnx.ModelProto, folder: Path) -> str:
    t = _pick(rng, _float_inits(m))
    v = _pick(rng, [0, TensorProto.STRING, TensorProto.DOUBLE, TensorProto.INT8, TensorProto.BOOL,
                    TensorProto.COMPLEX64, TensorProto.FLOAT8E4M3FN, TensorProto.INT4, 99, -3])
    t.data_type = v
    return f"initializer {t.name!r} data_type {v}"


def _m_raw_data(rng: Rng, m: onnx.ModelProto, folder: Path) -> str:
    t = _pick(rng, _float_inits(m))
    if not t.raw_data:
        arr = onh.to_array(t)
        t.raw_data = arr.tobytes()
        del t.float_data[:]
    raw = t.raw_data
    how = int(rng.integers(4))
    if how == 0:
        t.raw_data = raw[: int(rng.integers(len(raw)))]
    elif how == 1:
        t.raw_data = raw + bytes(int(rng.integers(1, 64)))
    elif how == 2:
        t.raw_data = b""
    else:
        t.float_data.extend([1.0, 2.0])  # both raw_data and float_data
    return f"initializer {t.name!r} raw_data {len(raw)} -> {len(t.raw_data)} bytes (how {how})"


def _m_external(rng: Rng, m: onnx.ModelProto, folder: Path) -> str:
    """Move the largest initializer's bytes to a file and point the model at one of many locations."""
    inits = _float_inits(m)
    t = max(inits, key=lambda x: math.prod(x.dims))
    arr = onh.to_array(t)
    blob = arr.tobytes()
    model_dir = folder / "m"
    (model_dir / "sub").mkdir(parents=True, exist_ok=True)
    (model_dir / "w.bin").write_bytes(blob)
    (model_dir / "sub" / "w.bin").write_bytes(blob)
    (folder / "outside.bin").write_bytes(blob)
    offset, length = 0, len(blob)
    kind = int(rng.integers(14))
    location = {
        0: "w.bin", 1: "sub/w.bin", 2: "../outside.bin", 3: str(model_dir / "w.bin"), 4: "/etc/passwd",
        5: "../../../../../../etc/hostname", 6: "missing.bin", 7: "w.bin", 8: "w.bin", 9: "", 10: ".",
        11: "link.bin", 12: "w.bin\x00evil", 13: "sub/../w.bin",
    }[kind]
    if kind == 7:
        offset = len(blob) + int(rng.integers(1, 1000))
    elif kind == 8:
        length = _pick(rng, [len(blob) + 4, len(blob) - 4, 0, 2**40])
    elif kind == 11:
        os.symlink("/etc/passwd" if rng.random() < 0.5 else str(folder / "outside.bin"), model_dir / "link.bin")
    t.ClearField("raw_data")
    del t.float_data[:]
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    entries = {"location": location, "offset": str(offset), "length": str(length)}
    if rng.random() < 0.15:
        entries["offset"] = _pick(rng, ["-8", "abc", "1e3", ""])
    for k, v in entries.items():
        e = t.external_data.add()
        e.key, e.value = k, v
    return f"initializer {t.name!r} external at {location!r} offset {entries['offset']} length {entries['length']}"


def _m_input_dims(rng: Rng, m: onnx.ModelProto, folder: Path) -> str:
    inp = m.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    if not len(dims):
        dims.add()
    i = int(rng.integers(len(dims)))
    how = int(rng.integers(5))
    value: int | str
    if how == 0:
        value = _pick(rng, HUGE_INTS)
    elif how == 1:  # a few GiB of random inputs: over the fuzz child's address-space limit, maybe under the RAM
        value = _pick(rng, [2**25, 2**26, 2**27])
    elif how == 2:
        value = 0
    elif how == 3:
        value = _pick(rng, [-1, -7])
    else:
        value = _pick(rng, ["", "?", "N" * 200, "batch size"])
    d = dims[i]
    d.Clear()
    if isinstance(value, int):
        d.dim_value = value
    else:
        d.dim_param = value
    if rng.random() < 0.3:  # every dim, not only one
        for d2 in dims:
            if isinstance(value, int):
                d2.dim_value = value
    return f"input {inp.name!r} dim {i} = {value!r}"


def _m_input_gib(rng: Rng, m: onnx.ModelProto, folder: Path) -> str:
    """The sample axis sized so that one batch of random float32 inputs is ~8 GiB: over the fuzz child's
    address-space limit (4 GiB), under the RAM of a big machine."""
    inp = m.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    rest = math.prod(d.dim_value for d in list(dims)[1:] if d.HasField("dim_value") and d.dim_value > 0)
    value = max(1, (_pick(rng, [2**31, 2**31 + 2**30]) // max(1, rest)))
    dims[0].Clear()
    dims[0].dim_value = value
    return f"input {inp.name!r} dim 0 = {value} (~{value * rest * 4 / 2**30:.0f} GiB of float32)"


def _m_output_gone(rng: Rng, m: onnx.ModelProto, folder: Path) -> str:
    how = int(rng.integers(3))
    if how == 0:
        del m.graph.output[:]
        return "no graph outputs"
    if how == 1:
        del m.graph.node[:]
        return "no nodes"
    m.graph.output[0].type.tensor_type.elem_type = TensorProto.STRING
    return "output declared as STRING"


# subgraph damage: the If model only
def _if_node(m: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in m.graph.node if n.op_type == "If")


def _s_drop_branch(rng: Rng, m: onnx.ModelProto, folder: Path) -> str:
    n = _if_node(m)
    i = int(rng.integers(len(n.attribute)))
    name = n.attribute[i].name
    del n.attribute[i]
    return f"If without {name}"


def _s_empty_branch(rng: Rng, m: onnx.ModelProto, folder: Path) -> str:
    a = _pick(rng, list(_if_node(m).attribute))
    del a.g.node[:]
    return f"{a.name}: no nodes"


def _s_outer_ref(rng: Rng, m: onnx.ModelProto, folder: Path) -> str:
    a = _pick(rng, list(_if_node(m).attribute))
    a.g.node[0].input[0] = _pick(rng, ["fuzz_outer_missing", "y", "cond", "y_if"])
    return f"{a.name}: first node reads {a.g.node[0].input[0]!r} (missing or a later outer value)"


def _s_output_count(rng: Rng, m: onnx.ModelProto, folder: Path) -> str:
    a = _pick(rng, list(_if_node(m).attribute))
    if rng.random() < 0.5:
        a.g.output.append(copy.deepcopy(a.g.output[0]))
        return f"{a.name}: two outputs"
    del a.g.output[:]
    return f"{a.name}: no outputs"


def _s_attr_type(rng: Rng, m: onnx.ModelProto, folder: Path) -> str:
    a = _pick(rng, list(_if_node(m).attribute))
    a.ClearField("g")
    a.type = onnx.AttributeProto.INT
    a.i = 3
    return f"{a.name}: an INT attribute instead of a graph"


def _s_init(rng: Rng, m: onnx.ModelProto, folder: Path) -> str:
    a = _pick(rng, list(_if_node(m).attribute))
    t = _pick(rng, list(a.g.initializer))
    how = int(rng.integers(3))
    if how == 0:
        del t.dims[:]
        t.dims.extend([_pick(rng, HUGE_INTS), 3])
    elif how == 1:
        t.raw_data = t.raw_data[:5]
    else:
        t.name = a.g.node[-1].output[0]  # an initializer shadowing a node output
    return f"{a.name}: initializer {t.name!r} damaged (how {how})"


def _s_nested(rng: Rng, m: onnx.ModelProto, folder: Path) -> str:
    n = _if_node(m)
    a = n.attribute[0]
    a.g.node.append(copy.deepcopy(n))  # the If nested in its own branch, with clashing value names
    return f"{a.name}: holds a copy of the If (cond/x from the outer scope, duplicate output names)"


MODEL_MUTATIONS: dict[str, Callable[..., Any]] = {
    "byteflip": _m_byteflip, "truncate": _m_truncate, "delete_node": _m_delete_node, "bogus_op": _m_bogus_op,
    "duplicate_names": _m_duplicate_names, "cycle": _m_cycle, "dangling_input": _m_dangling, "opset_lie": _m_opset,
    "init_dims_lie": _m_init_dims, "init_dtype_lie": _m_init_dtype, "raw_data_lie": _m_raw_data,
    "external_data": _m_external, "input_dims": _m_input_dims, "input_dims_gib": _m_input_gib,
    "outputs_gone": _m_output_gone,
}
SUBGRAPH_MUTATIONS: dict[str, Callable[..., Any]] = {
    "sub_drop_branch": _s_drop_branch, "sub_empty_branch": _s_empty_branch, "sub_outer_ref": _s_outer_ref,
    "sub_output_count": _s_output_count, "sub_attr_type": _s_attr_type, "sub_init": _s_init,
    "sub_nested": _s_nested,
}


def mutate_model(rng: Rng, src: Path, folder: Path, mutation: str) -> str:
    """Write ``folder/m/model.onnx``: ``src`` with one mutation applied."""
    m = onnx.load(str(src), load_external_data=False)
    fn = {**MODEL_MUTATIONS, **SUBGRAPH_MUTATIONS}[mutation]
    (folder / "m").mkdir(parents=True, exist_ok=True)
    res = fn(rng, m, folder)
    if isinstance(res, tuple):
        data, desc = res
    else:
        data, desc = m.SerializeToString(), res
    (folder / "m" / "model.onnx").write_bytes(data)
    return desc


# ------------------------------------------------------------------------------------------------------ data

class _Unpickled:
    """Pickles as a call that creates the marker file: unpickling it leaves evidence."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _npy_header(shape: tuple[int, ...], descr: str = "<f4", fortran: bool = False) -> bytes:
    header = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode()
    pad = 64 - (10 + len(header) + 1) % 64
    header += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def _write_npz(path: Path, members: dict[str, bytes], compress: bool = False) -> None:
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", mode) as z:
        for name, data in members.items():
            z.writestr(name, data)


def _arrays(src: Path) -> dict[str, np.ndarray]:
    with np.load(src, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _d_dtype(rng: Rng, a: dict[str, np.ndarray], folder: Path) -> str:
    key = _pick(rng, sorted(a))
    dt = _pick(rng, ["float64", "float16", "int8", "uint8", "bool", "complex64", "<U3", "S3", "datetime64[s]",
                     "int64", "uint64", "V8", [("a", "<f4"), ("b", "<i4")]])
    try:
        a[key] = a[key].astype(dt)
    except (TypeError, ValueError):
        a[key] = np.zeros(a[key].shape, dtype=dt)
    return f"{key} as {dt}"


def _d_shape(rng: Rng, a: dict[str, np.ndarray], folder: Path) -> str:
    key = _pick(rng, sorted(a))
    x = a[key]
    how = int(rng.integers(8))
    if how == 0:
        a[key] = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(-1, 1)
    elif how == 1:
        a[key] = x[..., None]
    elif how == 2:
        a[key] = x[:0]
    elif how == 3:
        a[key] = np.asarray(x.flat[0])
    elif how == 4:
        a[key] = x[: max(1, x.shape[0] - 1)]
    elif how == 5:
        a[key] = np.concatenate([x, x[..., :1]], axis=-1) if x.ndim > 1 else x[:1]
    elif how == 6:
        a[key] = x.T.copy()
    else:
        a[key] = np.zeros((x.shape[0],) + (0,) * max(0, x.ndim - 1), x.dtype)
    return f"{key} shape {x.shape} -> {a[key].shape}"


def _d_nan(rng: Rng, a: dict[str, np.ndarray], folder: Path) -> str:
    key = _pick(rng, sorted(a))
    x = a[key].astype(np.float32) if a[key].dtype.kind != "f" else a[key].copy()
    v = _pick(rng, [np.nan, np.inf, -np.inf, 3.4e38])
    frac = _pick(rng, [1.0, 0.5, 0.001])
    mask = rng.random(x.shape) < frac
    x[mask] = v
    a[key] = x
    return f"{key}: {frac:.3g} of elements = {v}"


def _d_object(rng: Rng, a: dict[str, np.ndarray], folder: Path) -> str:
    key = _pick(rng, sorted(a))
    a[key] = np.array([_Unpickled(str(folder / "UNPICKLED"))] * 3, dtype=object)
    return f"{key}: object array that creates UNPICKLED when unpickled"


def _d_wrong_names(rng: Rng, a: dict[str, np.ndarray], folder: Path) -> str:
    how = int(rng.integers(6))
    keys = sorted(a)
    if how == 0:
        k = _pick(rng, keys)
        a[_pick(rng, ["x", "inputs", "label", "y", "arr_0", ""])] = a.pop(k)
        return f"{k} renamed"
    if how == 1:
        a["extra"] = a[keys[0]][:2]
        return "extra array"
    if how == 2:
        a.pop("labels", None)
        a.pop("input", None)
        return "input (and labels) removed"
    if how == 3:
        a.clear()
        return "empty npz"
    if how == 4:
        a["input"] = a.pop(keys[0])
        a["input2"] = a["input"]
        return "two inputs for a one-input model"
    return "unchanged names (sanity)"


def _d_labels(rng: Rng, a: dict[str, np.ndarray], folder: Path) -> str:
    if "labels" not in a:
        a["labels"] = np.zeros(1, np.int64)
    y = a["labels"]
    how = int(rng.integers(8))
    if how == 0:
        y = np.full_like(y, _pick(rng, [10, 1000, 2**62, np.iinfo(np.int64).max]))
    elif how == 1:
        y = np.full_like(y, -1)
    elif how == 2:
        y = y.astype(np.float64)
        y[0] = np.nan
    elif how == 3:
        y = np.stack([y, y], -1)
    elif how == 4:
        y = y[:-1]
    elif how == 5:
        y = y.astype(np.uint8) + 200
    elif how == 6:
        y = y.astype(str)
    else:
        y = y.astype(np.float32) + 0.5
    a["labels"] = y
    return f"labels (how {how}) shape {y.shape} dtype {y.dtype}"


def _d_truncate(rng: Rng, src: Path, folder: Path, out: Path) -> str:
    data = src.read_bytes()
    if rng.random() < 0.5:
        cut = int(rng.integers(0, len(data)))
        out.write_bytes(data[:cut])
        return f"truncated zip {cut}/{len(data)}"
    b = bytearray(data)
    k = int(rng.integers(1, 17))
    for i in rng.integers(0, len(b), k):
        b[int(i)] ^= int(rng.integers(1, 256))
    out.write_bytes(bytes(b))
    return f"zip with {k} flipped bytes"


def _d_bomb(rng: Rng, src: Path, folder: Path, out: Path) -> str:
    a = _arrays(src)
    key = _pick(rng, sorted(a))
    how = int(rng.integers(5))
    members = {f"{k}.npy": _npy_bytes(v) for k, v in a.items()}
    if how == 0:
        shape: tuple[int, ...] = (_pick(rng, HUGE_INTS), 1, 8, 8)
        members[f"{key}.npy"] = _npy_header(shape) + bytes(256)
        _write_npz(out, members)
        return f"{key}.npy declares shape {shape}, holds 256 bytes"
    if how == 1:  # a real deflate bomb: 256 MiB of zeros, a few hundred KiB compressed, huge declared shape
        shape = (2**40,)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for k, v in members.items():
                if k != f"{key}.npy":
                    z.writestr(k, v)
            with z.open(f"{key}.npy", "w", force_zip64=True) as f:
                f.write(_npy_header(shape))
                chunk = bytes(1 << 22)
                for _ in range(64):
                    f.write(chunk)
        return f"{key}.npy: deflate bomb (256 MiB of zeros) declaring shape {shape}"
    if how == 2:
        members[f"{key}.npy"] = _npy_header((360, 1, 8, 8), "<U100000000") + bytes(64)
        _write_npz(out, members)
        return f"{key}.npy declares dtype <U100000000"
    if how == 3:
        header = b"{'descr': __import__('os'), 'x':}    \n"
        members[f"{key}.npy"] = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header
        _write_npz(out, members)
        return f"{key}.npy with a malformed header"
    members[f"../{key}.npy"] = members.pop(f"{key}.npy")
    _write_npz(out, members)
    return f"member named ../{key}.npy"


def _d_not_npz(rng: Rng, src: Path, folder: Path, out: Path) -> str:
    how = int(rng.integers(4))
    if how == 0:
        out.write_bytes(b"")
        return "empty file"
    if how == 1:
        np.save(out.with_suffix(".tmp.npy"), _arrays(src)[sorted(_arrays(src))[0]])
        out.write_bytes(out.with_suffix(".tmp.npy").read_bytes())
        return "a .npy file named .npz"
    if how == 2:
        out.write_bytes(rng.bytes(int(rng.integers(1, 4096))))
        return "random bytes"
    out.mkdir()
    return "a folder named data.npz"


DATA_MUTATIONS: dict[str, Callable[..., Any]] = {
    "dtype": _d_dtype, "shape": _d_shape, "nan_inf": _d_nan, "object_array": _d_object,
    "wrong_names": _d_wrong_names, "labels_range": _d_labels, "truncated_zip": _d_truncate,
    "zip_bomb": _d_bomb, "not_npz": _d_not_npz,
}
_FILE_LEVEL = {"truncated_zip", "zip_bomb", "not_npz"}


def mutate_data(rng: Rng, src: Path, folder: Path, mutation: str) -> str:
    """Write ``folder/data.npz``: ``src`` with one mutation applied."""
    out = folder / "data.npz"
    fn = DATA_MUTATIONS[mutation]
    if mutation in _FILE_LEVEL:
        return str(fn(rng, src, folder, out))
    arrays = _arrays(src)
    desc = str(fn(rng, arrays, folder))
    with open(out, "wb") as f:  # np.savez pickles object arrays: what an attacker's file would hold
        np.savez(f, **arrays)  # type: ignore[arg-type]
    return desc


# ------------------------------------------------------------------------------------------------------ plans

def _rand_value(rng: Rng) -> Any:
    return _pick(rng, [None, -1, 0, 2**70, -(2**63), 1.5, float("nan"), "x", "", True, [], {}, [1, 2], {"a": 1},
                       "features.0.weight", 10**6, 64, 31, 32])


def _p_delete_field(rng: Rng, d: dict[str, Any]) -> str:
    if rng.random() < 0.5:
        k = _pick(rng, sorted(d))
        del d[k]
        return f"top-level {k!r} deleted"
    e = _pick(rng, d["experiments"])
    k = _pick(rng, sorted(e))
    del e[k]
    return f"experiment {e.get('id')} field {k!r} deleted (all experiments)" if _apply_all(rng, d, k) else \
        f"experiment field {k!r} deleted"


def _apply_all(rng: Rng, d: dict[str, Any], k: str) -> bool:
    if rng.random() < 0.5:
        for e in d["experiments"]:
            e.pop(k, None)
        return True
    return False


def _p_wrong_type(rng: Rng, d: dict[str, Any]) -> str:
    where = int(rng.integers(4))
    v = _rand_value(rng)
    if where == 0:
        k = _pick(rng, sorted(d))
        d[k] = v
        return f"top-level {k!r} = {v!r}"
    if where == 1:
        for e in d["experiments"]:
            k = _pick(rng, sorted(e)) if e else "id"
            e[k] = v
        return f"every experiment: a field = {v!r}"
    if where == 2:
        s = _pick(rng, d["strata"])
        k = _pick(rng, sorted(s))
        s[k] = v
        return f"a stratum's {k!r} = {v!r}"
    e = _pick(rng, d["experiments"])
    e["fault"] = _pick(rng, [v, {"kind": "flip"}, {"kind": "flip", "bits": v}, {"kind": "burst", "k": v},
                             {"kind": "value", "value": v}, {"kind": "fuzz"}, {"kind": "random", "lo": 1, "hi": v}])
    return f"experiment {e.get('id')} fault = {e['fault']!r}"


def _p_range(rng: Rng, d: dict[str, Any]) -> str:
    e = _pick(rng, d["experiments"])
    k = _pick(rng, ["id", "index", "bit", "image", "seed", "round"])
    v = _pick(rng, [-1, -(2**63), 2**63, 2**70, 10**9, 32, 64, 255, 838464])
    e[k] = v
    if k == "bit" and isinstance(e.get("fault"), dict):
        e["fault"]["bits"] = [v]
    return f"experiment field {k} = {v} (experiment {d['experiments'].index(e)})"


def _p_site(rng: Rng, d: dict[str, Any]) -> str:
    e = _pick(rng, d["experiments"])
    how = int(rng.integers(3))
    if how == 0:
        e["site"] = _pick(rng, ["fuzz.missing", "", "input", "logits", "classifier.bias"])
    elif how == 1:
        e["kind"] = _pick(rng, ["activation", "fuzz", "transient", "ber"])
    else:
        d["model"] = _pick(rng, ["missing.onnx", "", "/etc/passwd", "digits_cnn", "fashion_cnn"])
    return f"site/kind/model changed (how {how})"


def _p_text(rng: Rng, d: dict[str, Any]) -> str:
    return "text-level"  # handled in mutate_plan


PLAN_MUTATIONS: dict[str, Callable[..., Any]] = {
    "delete_field": _p_delete_field, "wrong_type": _p_wrong_type, "out_of_range": _p_range, "site_kind": _p_site,
    "text": _p_text,
}


def mutate_plan(rng: Rng, src: Path, folder: Path, mutation: str) -> str:
    """Write ``folder/plan.json``: the plan ``src`` with one mutation applied."""
    d = json.loads(src.read_text())
    out = folder / "plan.json"
    if mutation == "text":
        text = src.read_text()
        how = int(rng.integers(6))
        if how == 0:
            out.write_text(text[: int(rng.integers(len(text)))])
            return "truncated JSON"
        if how == 1:
            out.write_text("[" * 200_000 + "]" * 200_000)
            return "deeply nested JSON array"
        if how == 2:
            out.write_text(json.dumps(d["experiments"]))
            return "a JSON list (the experiments) instead of the plan object"
        if how == 3:
            out.write_bytes(b"\xff\xfe" + text.encode("utf-16-le")[:5000])
            return "UTF-16 bytes"
        if how == 4:
            out.write_text(text.replace('"index":', '"index":1e400,"x":', 3))
            return "numbers 1e400 (inf) injected"
        out.write_text("null")
        return "JSON null"
    desc = str(PLAN_MUTATIONS[mutation](rng, d))
    out.write_text(json.dumps(d))
    return desc


# ----------------------------------------------------------------------------------------------------- stores

def _db_flip(rng: Rng, path: Path) -> str:
    b = bytearray(path.read_bytes())
    region = int(rng.integers(3))
    lo, hi = [(0, 100), (100, 4096), (4096, len(b))][region]
    k = int(rng.integers(1, 64))
    for i in rng.integers(lo, max(lo + 1, hi), k):
        b[int(i) % len(b)] ^= int(rng.integers(1, 256))
    path.write_bytes(bytes(b))
    return f"{k} flipped bytes in {['header', 'first page', 'later pages'][region]}"


def _db_truncate(rng: Rng, path: Path) -> str:
    b = path.read_bytes()
    cut = _pick(rng, [0, 50, 100, 4096, int(rng.integers(len(b))), len(b) - 1])
    path.write_bytes(b[:cut])
    return f"truncated to {cut}/{len(b)} bytes"


def _db_sql(rng: Rng, path: Path) -> str:
    con = sqlite3.connect(path)
    how = int(rng.integers(12))
    try:
        if how == 0:
            con.execute("DROP TABLE results")
            desc = "results table dropped"
        elif how == 1:
            con.execute("DROP TABLE campaign")
            desc = "campaign table dropped"
        elif how == 2:
            key = _pick(rng, ["plan", "config", "versions", "clean", "summary_experiments"])
            con.execute("DELETE FROM campaign WHERE key = ?", (key,))
            desc = f"campaign key {key} deleted"
        elif how == 3:
            key = _pick(rng, ["plan", "config", "versions", "clean", "summary_experiments"])
            val = _pick(rng, ["{", "null", "[]", "42", '"x"', '{"model": 3}', ""])
            con.execute("UPDATE campaign SET value = ? WHERE key = ?", (val, key))
            desc = f"campaign {key} = {val!r}"
        elif how == 4:
            col = _pick(rng, ["site", "kind", "fault", "outcome", "metrics", "error", "path"])
            con.execute(f"UPDATE results SET {col} = CAST(? AS TEXT) WHERE id % 2 = 0", (b"\xff\xfe\x80 bad utf8",))
            desc = f"results.{col} = invalid UTF-8 bytes"
        elif how == 5:
            key = _pick(rng, ["plan", "config", "clean"])
            con.execute("UPDATE campaign SET value = CAST(? AS TEXT) WHERE key = ?", (b"\xff\xfe{\x80}", key))
            desc = f"campaign {key} = invalid UTF-8"
        elif how == 6:
            col = _pick(rng, ["idx", "bit", "masked", "sdc1", "time_s", "images_changed", "image", "id"])
            val = _pick(rng, [2**62, -5] if col == "id" else ["abc", -1, 2**62, 1.5, None])
            # OR IGNORE: rows where the schema refuses the value (NOT NULL, a taken id) keep theirs
            con.execute(f"UPDATE OR IGNORE results SET {col} = ? WHERE id % 3 = 0", (val,))
            desc = f"results.{col} = {val!r} on every third row"
        elif how == 7:
            con.execute("UPDATE results SET outcome = ?", (_pick(rng, ["fuzz", "", "SDC1", "masked "]),))
            desc = "unknown outcome names"
        elif how == 8:
            con.execute("CREATE TABLE garbage (x BLOB)")
            con.execute("INSERT INTO garbage VALUES (?)", (rng.bytes(5000),))
            con.execute("INSERT INTO results (id, site, kind, idx, bit, fault, outcome, masked, sdc1, sdc5, critical, "
                        "due, crash) VALUES (99999, 'x', 'weight', 0, 0, '{', 'sdc1', 0, 1, 0, 0, 0, 0)")
            desc = "garbage table and a row outside the plan with a broken fault"
        elif how == 9:
            con.execute("DELETE FROM results")
            desc = "no result rows"
        elif how == 10:
            con.execute("UPDATE results SET metrics = ?", (_pick(rng, ["{", "[1]", '{"accuracy": "x"}', "NaN"]),))
            desc = "metrics JSON broken"
        else:
            con.execute("ALTER TABLE results RENAME TO results_old")
            con.execute("CREATE TABLE results (id INTEGER PRIMARY KEY, x TEXT)")
            desc = "results table with other columns"
        con.commit()
    finally:
        con.close()
    return desc


def _db_other(rng: Rng, path: Path) -> str:
    how = int(rng.integers(4))
    if how == 0:
        path.write_bytes(b"")
        return "empty file"
    if how == 1:
        path.write_bytes(rng.bytes(8192))
        return "random bytes"
    if how == 2:
        path.write_bytes(b"SQLite format 3\x00" + rng.bytes(4000))
        return "SQLite magic then random bytes"
    con = sqlite3.connect(path.with_name("other.db"))
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    shutil.move(str(path.with_name("other.db")), path)
    return "an unrelated SQLite database"


STORE_MUTATIONS: dict[str, Callable[..., Any]] = {
    "byteflip": _db_flip, "truncate": _db_truncate, "garbage_sql": _db_sql, "not_a_store": _db_other,
}


def mutate_store(rng: Rng, src: Path, folder: Path, mutation: str) -> str:
    """Write ``folder/store.db``: a copy of ``src`` with one mutation applied."""
    out = folder / "store.db"
    shutil.copyfile(src, out)
    return str(STORE_MUTATIONS[mutation](rng, out))


# ------------------------------------------------------------------------------------------------------- gate

def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    if hasattr(v, "isoformat"):
        return str(v.isoformat())
    raise TypeError(type(v))


def toml_dumps(table: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer: scalars first, then sub-tables as [a.b] sections."""
    lines: list[str] = []
    subs = {k: v for k, v in table.items() if isinstance(v, dict) and not (prefix.endswith("layers"))}
    for k, v in table.items():
        if k not in subs:
            lines.append(f"{json.dumps(k)} = {_toml_value(v)}")
    out = "\n".join(lines)
    for k, v in subs.items():
        name = f"{prefix}.{k}" if prefix else k
        out += f"\n\n[{name}]\n" + toml_dumps(v, name)
    return out + "\n"


def gate_base(corpus: Corpus, with_baseline: bool = False) -> dict[str, Any]:
    """A valid, fast gate config for digits_cnn: 4 faults on bit 30."""
    gate: dict[str, Any] = {
        "model": "digits_cnn",
        "data": str(corpus.zoo / "data" / "digits_eval.npz"),
        "db": "gate-{model}.db",
        "workers": 1,
        "plan": {"target": "weights", "bits": "30", "faults": 4, "seed": 0, "critical": 0.01},
        "thresholds": {"confidence": 0.95, "sdc1": 0.99, "due": 0.99, "crash": 0.5, "clean_min": 0.5},
        "layers": {"classifier\\..*": {"sdc1": 1.0}},
    }
    if with_baseline:
        gate["baseline"] = {"file": "baseline.json", "sdc1": 0.5, "clean_drop": 0.5}
    return {"gate": gate}


_GATE_KEYS = {
    "gate": ["model", "data", "data_loader", "samples", "provider", "threads", "workers", "db", "plan", "thresholds",
             "layers", "baseline", "clean_reference", "input_shapes", "output", "task", "batch", "mode", "fuzz"],
    "plan": ["target", "bits", "faults", "margin", "confidence", "p", "seed", "sites", "ops", "fault", "critical",
             "design", "per_stratum", "fault_model", "fuzz"],
    "thresholds": ["sdc1", "sdc5", "critical", "due", "crash", "sdc1_per_inference", "clean_min", "clean_drop",
                   "confidence", "fuzz"],
    "baseline": ["file", "sdc1", "due", "clean_drop", "fuzz"],
}


def _gate_value(rng: Rng, key: str) -> Any:
    import datetime

    # kept cheap to run when valid: no huge fault, worker or thread counts
    specific: dict[str, list[Any]] = {
        "faults": [0, -1, 1, 3, 5, 2.5, "4"], "per_stratum": [0, 1, -2, "1"], "margin": [0.0, -0.1, 0.45, 1.5, "0.1"],
        "workers": [0, -1, 1, 2, "1", 1.5], "threads": [0, -1, 1, "2"], "samples": [0, -3, 2, 8],
        "batch": [0, -1, 1, 7, 2**40], "seed": [-1, 2**64, 0, 3, "0"], "bits": ["", "99", "30-23", "a-b", [30, 31],
                                                                                   [64], "-1", "23-30", 30],
        "target": ["weights", "activations", "all", "fuzz", 1], "design": ["adaptive", "per-stratum", "fuzz", 3],
        "fault_model": ["transient", "persistent", "fuzz"], "sites": ["(", "classifier", "", "[z-a]"],
        "ops": ["Conv", ["Gemm", 3], "", "Fuzz"], "fault": ["flip", "stuck-1", "burst:99", "value:nan", "fuzz:1",
                                                           ["flip", "zero"], "random:5,1"],
        "mode": ["suffix", "naive", "port", "fuzz"], "task": ["classification", "segmentation", "fuzz"],
        "provider": ["cpu", "fuzz", "cuda"], "output": ["logits", "fuzz"],
        "model": ["missing.onnx", "digits_cnn", "fashion_cnn_fp16", "/etc/passwd", "../", "", "missing"],
        "data": ["missing.npz", "/etc/passwd", "", str(Path("/nonexistent/x.npz"))],
        "data_loader": ["missing.py", "loader.py", "loader.py:nothing", "loader.py:bad", ":", "loader.py:"],
        "file": ["missing.json", "baseline.json", "/etc/passwd", ""],
        "db": ["", "/", "sub/dir/x.db", "gate.db", "{model}/{model}.db", "/proc/x.db"],
        "input_shapes": [{"input": [1, 1, 8, 8]}, {"input": [0]}, {"input": "x"}, {"input": [2**40, 1, 8, 8]},
                         {"fuzz": [1]}, [1, 2]],
        "clean_reference": ["x", 1, True],
        "layers": [{"(": {"sdc1": 0.1}}, {"x": 1}, {"x": {"fuzz": 1}}, [], "x"],
    }
    generic = [None, "", "x", -1, 0, 1, 0.5, 2.0, float("nan"), float("inf"), True, [], [1, "a"], {}, {"a": 1},
               datetime.datetime(2020, 1, 1), datetime.date(2020, 1, 1), 2**63 - 1]
    pool = specific.get(key, [])
    if pool and rng.random() < 0.7:
        return _pick(rng, pool)
    v = _pick(rng, generic)
    return "" if v is None else v


def _loader_file(folder: Path) -> None:
    (folder / "loader.py").write_text(
        "import numpy as np\n"
        "def load_data():\n"
        "    rng = np.random.default_rng(0)\n"
        "    yield {'input': rng.random((4, 1, 8, 8), dtype=np.float32), 'labels': np.arange(4)}\n"
        "def bad():\n"
        "    raise ValueError('the loader itself fails')\n"
        "nothing = 3\n"
    )


def mutate_gate(rng: Rng, corpus: Corpus, folder: Path, mutation: str) -> str:
    """Write ``folder/onnxfi.toml`` and ``folder/pyproject.toml`` (the ``pyproject`` mutation reads the latter),
    ``baseline.json`` and ``loader.py``: the base config with one mutation applied."""
    cfg = gate_base(corpus, with_baseline=rng.random() < 0.4)
    _loader_file(folder)
    shutil.copyfile(corpus.gate_json, folder / "baseline.json")
    gate = cfg["gate"]
    desc: str
    if mutation == "set_key":
        parts: list[str] = []
        for _ in range(int(rng.integers(1, 3))):
            table_name = _pick(rng, ["gate", "plan", "thresholds", "baseline"])
            table = gate if table_name == "gate" else gate.setdefault(table_name, {})
            if table_name == "baseline":
                table.setdefault("file", "baseline.json")
            key = _pick(rng, _GATE_KEYS[table_name])
            table[key] = _gate_value(rng, key)
            parts.append(f"[{table_name}] {key} = {table[key]!r}")
        desc = "; ".join(parts)
    elif mutation == "delete_key":
        table_name = _pick(rng, ["gate", "plan", "thresholds"])
        table = gate if table_name == "gate" else gate[table_name]
        key = _pick(rng, sorted(table))
        del table[key]
        desc = f"[{table_name}] {key} deleted"
    elif mutation == "missing_file":
        how = int(rng.integers(1, 5))
        if how == 1:
            gate["model"] = "missing.onnx"
        elif how == 2:
            gate["data"] = "missing.npz"
        elif how == 3:
            gate.pop("data")
            gate["data_loader"] = "missing.py:load_data"
        else:
            gate["baseline"] = {"file": "missing.json"}
        desc = f"missing file (how {how})"
    elif mutation == "baseline_json":
        gate["baseline"] = {"file": "baseline.json", "sdc1": 0.5}
        d = json.loads(corpus.gate_json.read_text())
        how = int(rng.integers(5))
        if how == 0:
            k = _pick(rng, sorted(d))
            d[k] = _gate_value(rng, "x")
            (folder / "baseline.json").write_text(json.dumps(d, default=str))
            desc = f"baseline JSON {k!r} replaced"
        elif how == 1:
            k = _pick(rng, sorted(d))
            del d[k]
            (folder / "baseline.json").write_text(json.dumps(d))
            desc = f"baseline JSON {k!r} deleted"
        elif how == 2:
            (folder / "baseline.json").write_text(corpus.gate_json.read_text()[:200])
            desc = "baseline JSON truncated"
        elif how == 3:
            summ = d.get("summary")
            if isinstance(summ, dict):
                for k in list(summ)[:8]:
                    summ[k] = _gate_value(rng, "x")
            (folder / "baseline.json").write_text(json.dumps(d, default=str))
            desc = "baseline JSON summary values replaced"
        else:
            (folder / "baseline.json").write_text("[" * 100_000)
            desc = "baseline JSON deeply nested"
    elif mutation == "syntax":
        text = toml_dumps(cfg)
        b = bytearray(text.encode())
        for i in rng.integers(0, len(b), int(rng.integers(1, 6))):
            b[int(i)] = int(_pick(rng, list(b"[]={}\"'\n#\x00\xff,.")))
        (folder / "onnxfi.toml").write_bytes(bytes(b))
        return "TOML bytes damaged"
    elif mutation == "pyproject":
        how = int(rng.integers(3))
        if how == 0:
            (folder / "pyproject.toml").write_text(toml_dumps({"tool": {"onnxfi": cfg}}))
            desc = "[tool.onnxfi.gate] in pyproject.toml"
        elif how == 1:
            (folder / "pyproject.toml").write_text(toml_dumps({"project": {"name": "x"}}))
            desc = "pyproject.toml without [tool.onnxfi.gate]"
        else:
            (folder / "pyproject.toml").write_text(toml_dumps({"tool": {"onnxfi": 3}}))
            desc = "pyproject.toml with tool.onnxfi = 3"
        return desc
    elif mutation == "missing_config":
        return "--config names a missing file"
    else:
        raise KeyError(mutation)
    (folder / "onnxfi.toml").write_text(toml_dumps(cfg))
    return desc


GATE_MUTATIONS = ["set_key", "set_key", "set_key", "delete_key", "missing_file", "baseline_json", "syntax",
                  "pyproject", "missing_config"]
