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

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from onnxfi.passes._hardening import (
    FLOAT_TYPES,
    Activation,
    ActivationPass,
    Change,
    NodeBuilder,
    const_scalar,
    float_max,
    graph_opset,
    node_label,
    where_opset_reason,
)

__all__ = ["ReluMax", "mask_coefficients"]


@dataclass(frozen=True)
class _Plan:
    relu: Activation
    threshold: float
    mask: tuple[float, float] | None  # (A, A*M+) for the mask form, None for the Where form


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


class ReluMax(ActivationPass[_Plan]):
    """Make each ``Relu`` whose input has a profiled max ``M`` output 0 above ``M`` (see the module docstring)."""

    method = "relumax"
    summary = "ReLUMax: ReLU -> 0 where the pre-activation exceeds its profiled max"
    profiles = "input"  # M is the max of the pre-activation

    def match(self, node: ir.Node, x: ir.Value, out: ir.Value) -> Activation | str:
        if node.op_type != "Relu":
            return f"relumax replaces Relu only; this is {node.op_type}"
        dtype = x.dtype or ir.DataType.UNDEFINED
        if dtype not in FLOAT_TYPES:
            return f"value is {dtype.name}, not a float type"
        return Activation(node, x, out)

    def bounds(self, activation: Activation) -> _Plan | str:
        x = activation.input
        rng = self.profiled_range(x, "pre-activation")
        if isinstance(rng, str):
            return rng
        if rng.max <= 0:
            return f"dead ReLU: the pre-activation max is {rng.max:g} <= 0 on the calibration data"
        mask = mask_coefficients(rng.max) if x.dtype == ir.DataType.FLOAT else None
        if mask is None:
            assert activation.node.graph is not None
            reason = where_opset_reason(x.dtype or ir.DataType.UNDEFINED, graph_opset(activation.node.graph))
            if reason:
                return reason
        return _Plan(activation, rng.max, mask)

    def rewrite(self, builder: NodeBuilder, plan: _Plan) -> Change:
        label = node_label(plan.relu.node)  # before the rewrite renames its output
        y = builder.take_place_of(plan.relu.output)
        if plan.mask is not None:
            self._mask_form(builder, plan, y)
        else:
            self._where_form(builder, plan, y)
        return Change(label, y.name or "", f"0 where pre-activation > M = {plan.threshold:.6g}")

    @staticmethod
    def _mask_form(builder: NodeBuilder, plan: _Plan, y: ir.Value) -> None:
        """``y = s * HardSigmoid(s, -A, A*M+)``, ``s = Clip(x, 0, FLT_MAX)`` in place of the Relu."""
        assert plan.mask is not None
        relu = plan.relu
        dtype = ir.DataType.FLOAT
        a, beta = plan.mask
        clip, s = builder.clip(relu.input, 0.0, float_max(dtype))
        hsig, m = builder.node("HardSigmoid", [s], dtype, relu.output.shape,
                               attributes={"alpha": -a, "beta": beta})
        mul, _ = builder.node("Mul", [s, m], dtype, relu.output.shape, out=y)
        builder.insert_after(relu.node, [clip, hsig, mul])
        builder.graph.remove(relu.node, safe=True)

    @staticmethod
    def _where_form(builder: NodeBuilder, plan: _Plan, y: ir.Value) -> None:
        """``y = Where(Greater(r, M), 0, r)`` with ``r`` the output of the original Relu (kept, marked)."""
        relu = plan.relu
        r = relu.output
        dtype = relu.input.dtype or ir.DataType.FLOAT
        m = builder.const("max", const_scalar(plan.threshold, dtype, +1), dtype)
        zero = builder.zero(dtype)
        greater, above = builder.node("Greater", [r, m], ir.DataType.BOOL, r.shape)
        where, _ = builder.node("Where", [above, zero, r], dtype, r.shape, out=y)
        builder.insert_after(relu.node, [greater, where])
        builder.mark(relu.node)
