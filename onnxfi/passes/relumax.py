"""ReLUMax (Iurada et al.): a ReLU outputs 0 where its input exceeds the profiled maximum M.

The function is ``y = 0 if x > M else Relu(x)``, ``M`` = the largest pre-activation seen on the calibration
data. It is written so that ONNX Runtime still fuses the ReLU into the producing Conv and, on CPU, keeps
the blocked (NCHWc) layout, in which comparisons and ``Where`` would force a reorder before and after:

* float32 (the mask form): ``s = Clip(x, 0, FLT_MAX)``, ``m = HardSigmoid(s, alpha=-A, beta=A*M+)``,
  ``y = Mul(s, m)``, with ``M+`` the next float above ``M`` and ``A = 1 / (M+ - M)`` (a power of two).
  ``-A*s`` and ``A*M+`` are exact, so ``A*(M+ - s)`` is computed with the exact sign and is >= 1 for every
  ``s <= M``: ``m`` is exactly 1 for ``s <= M`` and exactly 0 for ``s >= M+``. The clip at the largest
  float makes ``x = +Inf`` give ``FLT_MAX * 0 = 0`` instead of ``Inf * 0 = NaN``; it replaces the ReLU
  and fuses into the Conv as the ReLU did.
* other float types, or an ``M`` whose ``A`` is not a finite float32 (``M`` below 2**-104): the Where
  form ``r = Relu(x)``, ``y = Where(Greater(r, M), 0, r)``; the original Relu stays. For ``M >= 0``,
  ``Relu(x) > M`` exactly when ``x > M``.

Both forms give ``Relu(x)`` for ``x <= M`` (subnormals included), 0 for ``x > M`` and ``x = +Inf``, and
pass NaN through as the ReLU does (ONNX Runtime's Relu, Clip and HardSigmoid keep NaN); only the sign
of a zero may differ from ``Relu(-0.0)``. The pass never uses ``M <= 0`` (a "dead ReLU" is skipped);
for ``M < 0`` the Where form would give 0 everywhere except NaN.
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
    clip_nodes,
    const_scalar,
    float_max,
    graph_opset,
    hardening_method,
    insert_nodes_after,
    node_label,
    numpy_dtype,
    take_place_of,
)
from onnxfi.profile import ValueRange

__all__ = ["ReluMax", "mask_coefficients", "where_opset_reason"]


@dataclass(frozen=True)
class _Plan:
    node: ir.Node
    x: ir.Value
    out: ir.Value
    threshold: float
    mask: tuple[float, float] | None  # (A, A*M+) for the mask form, None for the Where form


def where_opset_reason(dtype: ir.DataType, opset: int) -> str | None:
    """Why ``Where``/comparisons cannot take ``dtype`` at ``opset``, or None."""
    if dtype not in FLOAT_TYPES:
        return f"value is {dtype.name}, not a float type"
    if opset < 9:
        return f"Where needs opset 9; the model has opset {opset}"
    if dtype == ir.DataType.BFLOAT16 and opset < 16:
        return f"Where takes bfloat16 from opset 16; the model has opset {opset}"
    return None


def mask_coefficients(threshold: float) -> tuple[float, float] | None:
    """``(A, A*M+)`` of the float32 mask ``HardSigmoid(s, -A, A*M+)`` for ``M`` = ``threshold`` rounded up.

    None when they are not exact finite float32 numbers (``M`` tiny or not below the largest float).
    """
    m = const_scalar(threshold, ir.DataType.FLOAT, +1)
    if not np.isfinite(m) or float(m) <= 0 or m == np.finfo(np.float32).max:
        return None
    above = np.nextafter(m, np.float32(np.inf))
    a = 1.0 / (float(above) - float(m))  # a power of two: the gap above M
    beta = a * float(above)
    with np.errstate(over="ignore"):
        a32, beta32 = np.float32(a), np.float32(beta)
    if not (np.isfinite(a32) and np.isfinite(beta32) and float(a32) == a and float(beta32) == beta):
        return None
    return a, beta


class ReluMax(HardeningPass):
    """Make each ``Relu`` whose input has a profiled max ``M`` output 0 above ``M`` (see the module docstring)."""

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
        dtype = x.dtype or ir.DataType.UNDEFINED
        if dtype not in FLOAT_TYPES:
            return f"value is {dtype.name}, not a float type"
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
        mask = mask_coefficients(rng.max) if x.dtype == ir.DataType.FLOAT else None
        if mask is None:
            assert node.graph is not None
            reason = where_opset_reason(x.dtype or ir.DataType.UNDEFINED, graph_opset(node.graph))
            if reason:
                return reason
        return _Plan(node, x, out, rng.max, mask)

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
            y = take_place_of(plan.out, builder)
            if plan.mask is not None:
                self._mask_form(builder, plan, y)
            else:
                self._where_form(builder, plan, y)
            self.changes.append(Change(
                label, y.name or "", f"0 where pre-activation > M = {plan.threshold:.6g}"
            ))
        return ir.passes.PassResult(model, bool(plans))

    @staticmethod
    def _mask_form(builder: NodeBuilder, plan: _Plan, y: ir.Value) -> None:
        """``y = s * HardSigmoid(s, -A, A*M+)``, ``s = Clip(x, 0, FLT_MAX)`` in place of the Relu."""
        assert plan.mask is not None
        graph = builder.graph
        dtype = ir.DataType.FLOAT
        a, beta = plan.mask
        clip, s = clip_nodes(builder, plan.x, 0.0, float_max(dtype))
        hsig, m = builder.node("HardSigmoid", [s], dtype, plan.out.shape,
                               attributes={"alpha": -a, "beta": beta})
        mul, _ = builder.node("Mul", [s, m], dtype, plan.out.shape, out=y)
        insert_nodes_after(graph, plan.node, [*clip, hsig, mul])
        graph.remove(plan.node, safe=True)

    @staticmethod
    def _where_form(builder: NodeBuilder, plan: _Plan, y: ir.Value) -> None:
        """``y = Where(Greater(r, M), 0, r)`` with ``r`` the output of the original Relu (kept, marked)."""
        dtype = plan.x.dtype or ir.DataType.FLOAT
        m = builder.const("max", const_scalar(plan.threshold, dtype, +1), dtype)
        zero = builder.const("zero", np.zeros((), dtype=numpy_dtype(dtype)), dtype)
        greater, above = builder.node("Greater", [plan.out, m], ir.DataType.BOOL, plan.out.shape)
        where, _ = builder.node("Where", [above, zero, plan.out], dtype, plan.out.shape, out=y)
        insert_nodes_after(builder.graph, plan.node, [greater, where])
        plan.node.metadata_props[HARDENING_KEY] = builder.method
