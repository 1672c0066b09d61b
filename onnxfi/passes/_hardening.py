"""Shared pieces of the hardening passes: change/skip records, marked nodes, guarded-value insertion.

Every node a hardening pass inserts carries ``metadata_props["onnxfi.hardening"] = <method>`` (saved with
the model), so later passes, and later runs, recognise hardening nodes and leave them alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import ml_dtypes
import numpy as np
import onnx_ir as ir

__all__ = [
    "HARDENING_KEY",
    "ACTIVATION_OPS",
    "FLOAT_TYPES",
    "Change",
    "Skip",
    "HardeningPass",
    "NodeBuilder",
    "hardening_method",
    "node_label",
    "graph_opset",
    "float_max",
    "numpy_dtype",
    "const_scalar",
    "take_place_of",
    "insert_nodes_after",
    "clip_nodes",
    "clip_opset_reason",
]

HARDENING_KEY = "onnxfi.hardening"

# Element-wise activations (Ranger's "activation layers"); Clip covers ReLU6.
ACTIVATION_OPS = frozenset({
    "Relu", "Clip", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "ThresholdedRelu", "Sigmoid", "HardSigmoid",
    "Tanh", "Softplus", "Softsign", "HardSwish", "Gelu", "Mish",
})

FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16})


@dataclass(frozen=True)
class Change:
    """One hardening applied: the node (or weight) it targets, the value guarded, and what was done."""

    node: str
    value: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "value": self.value, "detail": self.detail}


@dataclass(frozen=True)
class Skip:
    """A candidate the pass left alone, and why."""

    node: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "reason": self.reason}


class HardeningPass(ir.passes.InPlacePass):
    """Base of the hardening passes: after ``call`` the pass holds its ``changes`` and ``skips``."""

    method: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[Change] = []
        self.skips: list[Skip] = []

    def _reset(self) -> None:
        self.changes = []
        self.skips = []


def hardening_method(node: ir.Node) -> str | None:
    """The hardening method that inserted ``node``, or None for a node of the original model."""
    return node.metadata_props.get(HARDENING_KEY)


def node_label(node: ir.Node) -> str:
    """A name to show for ``node``: its name, else op type and first output."""
    if node.name:
        return node.name
    out = node.outputs[0].name if node.outputs and node.outputs[0] is not None else "?"
    return f"{node.op_type}({out})"


def graph_opset(graph: ir.Graph) -> int:
    return int(graph.opset_imports.get("", graph.opset_imports.get("ai.onnx", 0)))


def numpy_dtype(dtype: ir.DataType) -> np.dtype:
    if dtype == ir.DataType.BFLOAT16:
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype.numpy())


def float_max(dtype: ir.DataType) -> float:
    """The largest finite value of a float element type."""
    if dtype == ir.DataType.BFLOAT16:
        return float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
    return float(np.finfo(numpy_dtype(dtype)).max)


def const_scalar(value: float, dtype: ir.DataType, direction: int = 0) -> np.ndarray:
    """``value`` as a 0-d array of ``dtype``; ``direction`` +1/-1 rounds up/down so bounds never shrink."""
    np_t = numpy_dtype(dtype)
    with np.errstate(over="ignore"):
        arr = np.array(value, dtype=np.float64).astype(np_t)
    if direction and np.isfinite(arr):
        wide = float(arr)
        if (direction > 0 and wide < value) or (direction < 0 and wide > value):
            arr = np.array(np.nextafter(arr, np.array(direction * np.inf, dtype=np_t)), dtype=np_t)
    return arr


class NodeBuilder:
    """Creates nodes and scalar initializers for one hardening pass: unique names, every node marked."""

    def __init__(self, graph: ir.Graph, method: str) -> None:
        self.graph = graph
        self.method = method
        self.prefix = "onnxfi_" + method.replace("-", "_")
        self._names: set[str] = set(graph.initializers)
        for v in graph.inputs:
            self._names.add(v.name or "")
        for node in graph:
            self._names.add(node.name or "")
            for o in node.outputs:
                if o is not None and o.name:
                    self._names.add(o.name)
        self._count = 0

    def unique(self, base: str) -> str:
        name = base
        while name in self._names:
            self._count += 1
            name = f"{base}_{self._count}"
        self._names.add(name)
        return name

    def const(self, tag: str, array: np.ndarray, dtype: ir.DataType) -> ir.Value:
        """A registered initializer holding ``array`` (as ``dtype``)."""
        name = self.unique(f"{self.prefix}_{tag}")
        tensor = ir.Tensor(np.array(array, order="C"), dtype=dtype, name=name)  # keeps 0-d
        value = ir.Value(name=name, shape=tensor.shape, type=ir.TensorType(dtype), const_value=tensor)
        self.graph.register_initializer(value)
        return value

    def node(
        self,
        op: str,
        inputs: Sequence[ir.Value | None],
        dtype: ir.DataType,
        shape: ir.Shape | None,
        out: ir.Value | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> tuple[ir.Node, ir.Value]:
        """A new marked node with one output (``out`` or a fresh value of ``dtype``/``shape``)."""
        name = self.unique(f"{self.prefix}_{op}")
        if out is None:
            out = ir.Value(name=self.unique(f"{name}_out"), shape=shape, type=ir.TensorType(dtype))
        node = ir.node(op, list(inputs), attributes=attributes, outputs=[out], name=name,
                       metadata_props={HARDENING_KEY: self.method})
        return node, out


def take_place_of(x: ir.Value, builder: NodeBuilder) -> ir.Value:
    """A new value that takes ``x``'s name, consumers and graph-output slots; ``x`` is renamed.

    The caller then builds nodes from ``x`` to the returned value, so downstream names stay as they were.
    """
    name = x.name or builder.unique(f"{builder.prefix}_value")
    x.name = builder.unique(f"{name}__pre_{builder.prefix}")
    y = ir.Value(name=name, shape=x.shape, type=x.type)
    x.replace_all_uses_with(y, replace_graph_outputs=True)
    return y


def insert_nodes_after(graph: ir.Graph, anchor: ir.Node | None, nodes: Iterable[ir.Node]) -> None:
    """Insert ``nodes`` right after ``anchor`` (or at the start of the graph when ``anchor`` is None)."""
    nodes = list(nodes)
    if anchor is not None:
        graph.insert_after(anchor, nodes)
    elif len(graph) > 0:
        graph.insert_before(next(iter(graph)), nodes)
    else:
        graph.extend(nodes)


def clip_nodes(
    builder: NodeBuilder,
    x: ir.Value,
    lo: float,
    hi: float,
    out: ir.Value | None = None,
) -> tuple[list[ir.Node], ir.Value]:
    """``Clip(x, lo, hi)``: bound inputs from opset 11, ``min``/``max`` attributes before."""
    dtype = x.dtype or ir.DataType.FLOAT
    if graph_opset(builder.graph) >= 11:
        lo_v = builder.const("lo", const_scalar(lo, dtype, -1), dtype)
        hi_v = builder.const("hi", const_scalar(hi, dtype, +1), dtype)
        node, y = builder.node("Clip", [x, lo_v, hi_v], dtype, x.shape, out)
    else:
        node, y = builder.node("Clip", [x], dtype, x.shape, out,
                               attributes={"min": float(lo), "max": float(hi)})
    return [node], y


def clip_opset_reason(dtype: ir.DataType, opset: int) -> str | None:
    """Why Clip cannot take ``dtype`` at ``opset``, or None when it can."""
    if dtype not in FLOAT_TYPES:
        return f"value is {dtype.name}, not a float type"
    if dtype == ir.DataType.BFLOAT16 and opset < 13:
        return f"Clip takes bfloat16 from opset 13; the model has opset {opset}"
    if dtype == ir.DataType.DOUBLE and opset < 11:
        return f"Clip bounds are float attributes before opset 11 (model opset {opset}); double not supported"
    return None
