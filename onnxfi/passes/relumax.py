"""ReLUMax (Iurada et al.): a ReLU outputs 0 where its input exceeds the profiled maximum M.

``y = Where(Greater(x, M), 0, Relu(x))`` with ``M`` = the largest pre-activation seen on the calibration
data. The original Relu stays (marked as part of the hardening); only its output is re-routed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from onnxfi.passes._hardening import (
    ACTIVATION_OPS,
    FLOAT_TYPES,
    HARDENING_KEY,
    Change,
    HardeningPass,
    NodeBuilder,
    Skip,
    const_scalar,
    graph_opset,
    hardening_method,
    insert_nodes_after,
    node_label,
    numpy_dtype,
    take_place_of,
)
from onnxfi.profile import ValueRange

__all__ = ["ReluMax"]


@dataclass(frozen=True)
class _Plan:
    node: ir.Node
    x: ir.Value
    out: ir.Value
    threshold: float


def where_opset_reason(dtype: ir.DataType, opset: int) -> str | None:
    """Why ``Where``/comparisons cannot take ``dtype`` at ``opset``, or None."""
    if dtype not in FLOAT_TYPES:
        return f"value is {dtype.name}, not a float type"
    if opset < 9:
        return f"Where needs opset 9; the model has opset {opset}"
    if dtype == ir.DataType.BFLOAT16 and opset < 16:
        return f"Where takes bfloat16 from opset 16; the model has opset {opset}"
    return None


class ReluMax(HardeningPass):
    """Replace each ``Relu`` whose input has a profiled max ``M`` by ``Where(Greater(x, M), 0, Relu(x))``."""

    method = "relumax"

    def __init__(self, ranges: Mapping[str, ValueRange]) -> None:
        super().__init__()
        self.ranges = ranges

    @staticmethod
    def candidates(model: ir.Model) -> list[ir.Node]:
        return [n for n in model.graph if n.op_type in ACTIVATION_OPS and n.domain in ("", "ai.onnx")]

    def profile_points(self, model: ir.Model) -> list[str]:
        """The pre-activation of every Relu it could rewrite."""
        out = []
        for node in self.candidates(model):
            plan = self._locate(node)
            if not isinstance(plan, str) and plan[0].name:
                out.append(plan[0].name)
        return out

    def _locate(self, node: ir.Node) -> tuple[ir.Value, ir.Value] | str:
        if node.op_type not in ACTIVATION_OPS or node.domain not in ("", "ai.onnx"):
            return f"{node.op_type} is not an activation"
        method = hardening_method(node)
        if method:
            return f"part of the {method} hardening"
        if node.op_type != "Relu":
            return f"relumax replaces Relu only; this is {node.op_type}"
        x, out = node.inputs[0], node.outputs[0]
        if x is None or out is None or node.graph is None:
            return "Relu without input or output"
        reason = where_opset_reason(x.dtype or ir.DataType.UNDEFINED, graph_opset(node.graph))
        if reason:
            return reason
        for consumer, _ in out.uses():
            method = hardening_method(consumer)
            if method:
                return f"output {out.name!r} already feeds the {method} hardening"
        return x, out

    def _plan(self, node: ir.Node) -> _Plan | str:
        located = self._locate(node)
        if isinstance(located, str):
            return located
        x, out = located
        rng = self.ranges.get(x.name or "")
        if rng is None:
            return f"no profiled range for the pre-activation {x.name!r}"
        if not rng.finite:
            return f"pre-activation {x.name!r} held no finite value on the calibration data"
        if rng.max <= 0:
            return f"dead ReLU: the pre-activation max is {rng.max:g} <= 0 on the calibration data"
        return _Plan(node, x, out, rng.max)

    def check(self, node: ir.Node) -> str | None:
        """Why ReLUMax leaves ``node`` alone, or None when it would rewrite it."""
        plan = self._plan(node)
        return plan if isinstance(plan, str) else None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self._reset()
        graph = model.graph
        plans = []
        for node in self.candidates(model):
            plan = self._plan(node)
            if isinstance(plan, str):
                self.skips.append(Skip(node_label(node), plan))
            else:
                plans.append(plan)
        builder = NodeBuilder(graph, self.method)
        for plan in plans:
            label = node_label(plan.node)  # before the rewrite renames its output
            dtype = plan.x.dtype or ir.DataType.FLOAT
            y = take_place_of(plan.out, builder)
            m = builder.const("max", const_scalar(plan.threshold, dtype, +1), dtype)
            zero = builder.const("zero", np.zeros((), dtype=numpy_dtype(dtype)), dtype)
            greater, above = builder.node("Greater", [plan.x, m], ir.DataType.BOOL, plan.x.shape)
            where, _ = builder.node("Where", [above, zero, plan.out], dtype, plan.out.shape, out=y)
            insert_nodes_after(graph, plan.node, [greater, where])
            plan.node.metadata_props[HARDENING_KEY] = self.method
            self.changes.append(Change(
                label, y.name or "", f"0 where pre-activation > M = {plan.threshold:.6g}"
            ))
        return ir.passes.PassResult(model, bool(plans))
