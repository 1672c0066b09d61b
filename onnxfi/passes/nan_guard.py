"""NaN guard: at chosen values, NaN becomes 0 and +-Inf becomes +-max of the dtype.

``y = Where(IsNaN(x), 0, Clip(x, -max, max))``. Default points: every float graph output, the output of
every residual ``Add`` (both operands computed by the model: the end of a residual block) and the input
of the classifier (the data input of the last ``Gemm``/``MatMul`` with a constant weight). A regex
selects other points by value name. IsNaN and Where both exist from opset 9 (IsNaN takes bfloat16 from
13, Where from 16), so the ``x != x`` form is never needed: below opset 9 there is no Where either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import onnx_ir as ir

from onnxfi.errors import OnnxfiError
from onnxfi.passes._hardening import (
    FLOAT_TYPES,
    Change,
    HardeningPass,
    NodeBuilder,
    Settings,
    clip_opset_reason,
    float_max,
    graph_opset,
    hardening_method,
    node_label,
    where_opset_reason,
)

__all__ = ["NanGuard", "GuardPoint", "default_points"]


@dataclass(frozen=True)
class GuardPoint:
    """A value to guard and why it was chosen."""

    value: ir.Value
    why: str


def _is_computed(v: ir.Value | None) -> bool:
    if v is None or v.const_value is not None or v.is_initializer():
        return False
    producer = v.producer()
    return producer is None or producer.op_type != "Constant"


def _is_const(v: ir.Value | None) -> bool:
    return v is not None and not _is_computed(v)


def default_points(model: ir.Model) -> list[GuardPoint]:
    """Residual Add outputs, the classifier input, and the float graph outputs (in that order, no repeats)."""
    graph = model.graph
    points: dict[int, GuardPoint] = {}
    classifier: ir.Value | None = None
    for node in graph:
        if hardening_method(node):
            continue
        if node.op_type == "Add" and len(node.inputs) == 2 and all(_is_computed(v) for v in node.inputs):
            out = node.outputs[0]
            if out is not None and out.dtype in FLOAT_TYPES:
                points.setdefault(id(out), GuardPoint(out, "after residual Add"))
        if node.op_type in ("Gemm", "MatMul") and len(node.inputs) >= 2 and _is_const(node.inputs[1]):
            if _is_computed(node.inputs[0]):
                classifier = node.inputs[0]
    if classifier is not None:
        points.setdefault(id(classifier), GuardPoint(classifier, "classifier input"))
    for out in graph.outputs:
        points.setdefault(id(out), GuardPoint(out, "graph output"))
    return list(points.values())


def _points_matching(model: ir.Model, pattern: str) -> list[GuardPoint]:
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise OnnxfiError(f"bad --guard-points regex {pattern!r}: {e}") from None
    found: dict[int, GuardPoint] = {}
    for node in model.graph:
        for out in node.outputs:
            if out is not None and out.name and rx.search(out.name):
                found.setdefault(id(out), GuardPoint(out, f"matches {pattern!r}"))
    for out in model.graph.outputs:
        if out.name and rx.search(out.name):
            found.setdefault(id(out), GuardPoint(out, f"matches {pattern!r}"))
    if not found:
        raise OnnxfiError(f"--guard-points {pattern!r} matches no value of the main graph")
    return list(found.values())


class NanGuard(HardeningPass[GuardPoint, GuardPoint]):
    """Guard the default points (or the values whose names match ``pattern``) against NaN and Inf."""

    method = "nan-guard"
    summary = "NaN -> 0, +-Inf -> +-max at outputs, residual Adds and the classifier input"
    options = ("guard_points",)

    def __init__(self, pattern: str | None = None) -> None:
        super().__init__()
        self.pattern = pattern

    @classmethod
    def from_settings(cls, settings: Settings) -> NanGuard:
        return cls(settings.guard_points)

    def report_settings(self) -> dict[str, Any]:
        return {"points": self.pattern or "default"}

    def points(self, model: ir.Model) -> list[GuardPoint]:
        return _points_matching(model, self.pattern) if self.pattern else default_points(model)

    def candidates(self, model: ir.Model) -> list[GuardPoint]:
        return self.points(model)

    def label(self, candidate: GuardPoint) -> str:
        return candidate.value.name or "?"

    def plan(self, candidate: GuardPoint) -> GuardPoint | str:
        value = candidate.value
        dtype = value.dtype or ir.DataType.UNDEFINED
        if dtype not in FLOAT_TYPES:
            return f"{value.name!r} is {dtype.name}: only float values can hold NaN or Inf"
        producer = value.producer()
        if producer is None:
            return f"{value.name!r} is a graph input or initializer, not computed by the model"
        if hardening_method(producer) == self.method:
            return f"{value.name!r} is already the output of a NaN guard"
        for consumer, _ in value.uses():
            if hardening_method(consumer) == self.method:
                return f"{value.name!r} already feeds a NaN guard"
        graph = producer.graph
        opset = graph_opset(graph) if graph is not None else 0
        return where_opset_reason(dtype, opset) or clip_opset_reason(dtype, opset) or candidate

    def rewrite(self, builder: NodeBuilder, plan: GuardPoint) -> Change:
        x = plan.value
        dtype = x.dtype or ir.DataType.FLOAT
        top = float_max(dtype)
        producer = x.producer()
        assert producer is not None  # plan() refused values without one
        label = node_label(producer)  # before the rewrite renames its output
        y = builder.take_place_of(x)
        zero = builder.zero(dtype)
        isnan, nan_mask = builder.node("IsNaN", [x], ir.DataType.BOOL, x.shape)
        clip, clipped = builder.clip(x, -top, top)
        where, _ = builder.node("Where", [nan_mask, zero, clipped], dtype, x.shape, out=y)
        builder.insert_after(producer, [isnan, clip, where])
        return Change(label, y.name or "", f"NaN -> 0, +-Inf -> +-{top:.6g} ({plan.why})")
