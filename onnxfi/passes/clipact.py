"""FT-ClipAct (Hoang et al.): a ReLU passes values in [0, T] and sends everything else, NaN included, to 0.

``r = Relu(x)``, ``y = Where(LessOrEqual(r, T), r, 0)`` replaces ``Relu(x)`` (and ``Clip(x, 0, c)``,
ReLU6, with ``T <= c``: its Clip becomes a Relu, since every value above ``T`` goes to 0 anyway). The Relu
stays first so that ONNX Runtime still fuses it into the producing Conv. Out-of-range values go to zero,
not to ``T``: a fault-sized activation is dropped instead of kept at the bound. NaN goes to 0 whether
the Relu keeps it (ONNX Runtime does) or not, because every comparison with NaN is false; ``-Inf`` gives
``Relu = 0``. Before opset 12 the comparison is ``Less(r, next float above T)``, which selects exactly the
same values. ``T`` per layer is the profiled maximum of the activation's output unless given (e.g. by the
threshold search in :mod:`onnxfi.harden`).

On CPU, ONNX Runtime runs convolutions in a blocked layout (NCHWc) that ``LessOrEqual``/``Where`` do not
take, so it reorders each hardened activation out of and back into that layout; that, not the two
element-wise ops, is most of the latency cost. No form without ``Where`` maps NaN to 0 (Mul, Add and the
activations ORT keeps blocked all propagate NaN), so clipact keeps it; relumax, which passes NaN like
the ReLU, has a blocked form.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from onnxfi.passes._hardening import (
    ACTIVATION_OPS,
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
from onnxfi.passes.relumax import where_opset_reason
from onnxfi.profile import ValueRange

__all__ = ["ClipAct", "threshold_array"]

_INCLUSIVE_OPSET = 12  # GreaterOrEqual / LessOrEqual


def threshold_array(threshold: float, dtype: ir.DataType, opset: int) -> np.ndarray:
    """The stored ``T`` constant: ``T`` itself (rounded up) from opset 12, the next float above it before."""
    t = const_scalar(threshold, dtype, +1)
    if opset < _INCLUSIVE_OPSET:
        t = np.array(np.nextafter(t, np.array(np.inf, dtype=t.dtype)), dtype=t.dtype)
    return t


def _const_input(node: ir.Node, slot: int, attr: str) -> float | None | str:
    """A Clip bound: its constant value, None when absent, or a reason text when not constant."""
    if node.attributes.get(attr) is not None:
        return float(node.attributes[attr].value)
    if slot >= len(node.inputs) or node.inputs[slot] is None:
        return None
    v = node.inputs[slot]
    assert v is not None
    tensor = v.const_value
    if tensor is None:
        producer = v.producer()
        if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
            tensor = producer.attributes["value"].value
    if tensor is None:
        return f"Clip {attr} bound {v.name!r} is not a constant"
    return float(np.asarray(tensor.numpy()).reshape(-1)[0])


@dataclass(frozen=True)
class _Plan:
    node: ir.Node
    x: ir.Value
    out: ir.Value
    threshold: float


class ClipAct(HardeningPass):
    """Replace each ReLU (``Relu``, ``Clip`` with min 0) by the zeroing clip ``x if 0 <= x <= T else 0`` (NaN -> 0).

    ``thresholds`` (activation output name -> T) overrides the profiled maximum from ``ranges``. After
    ``call``, ``threshold_values`` maps each rewritten activation's output name to its ``T`` initializer
    and ``applied`` to the ``T`` it used.
    """

    method = "clipact"

    def __init__(self, ranges: Mapping[str, ValueRange], thresholds: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.ranges = ranges
        self.thresholds = dict(thresholds or {})
        self.threshold_values: dict[str, str] = {}
        self.applied: dict[str, float] = {}

    @staticmethod
    def candidates(model: ir.Model) -> list[ir.Node]:
        return [n for n in model.graph if n.op_type in ACTIVATION_OPS and n.domain in ("", "ai.onnx")]

    def profile_points(self, model: ir.Model) -> list[str]:
        """The output of every ReLU it could rewrite."""
        out = []
        for node in self.candidates(model):
            located = self._locate(node)
            if not isinstance(located, str) and located[1].name:
                out.append(located[1].name)
        return out

    def _locate(self, node: ir.Node) -> tuple[ir.Value, ir.Value, float] | str:
        """(input, output, upper limit of T) of a ReLU, or why ``node`` is not one clipact can rewrite."""
        if node.op_type not in ACTIVATION_OPS or node.domain not in ("", "ai.onnx"):
            return f"{node.op_type} is not an activation"
        method = hardening_method(node)
        if method:
            return f"part of the {method} hardening"
        cap = float("inf")
        if node.op_type == "Clip":
            lo = _const_input(node, 1, "min")
            if isinstance(lo, str):
                return lo
            if lo != 0.0:
                what = "no lower bound" if lo is None else f"min {lo:g}"
                return f"Clip with {what} is not a ReLU (clipact needs min 0)"
            hi = _const_input(node, 2, "max")
            if isinstance(hi, str):
                return hi
            cap = float("inf") if hi is None else hi
        elif node.op_type != "Relu":
            return f"clipact replaces ReLU activations (Relu, Clip with min 0); this is {node.op_type}"
        x, out = node.inputs[0], node.outputs[0]
        if x is None or out is None or node.graph is None:
            return f"{node.op_type} without input or output"
        reason = where_opset_reason(x.dtype or ir.DataType.UNDEFINED, graph_opset(node.graph))
        if reason:
            return reason
        for consumer, _ in out.uses():
            method = hardening_method(consumer)
            if method:
                return f"output {out.name!r} already feeds the {method} hardening"
        return x, out, cap

    def _plan(self, node: ir.Node) -> _Plan | str:
        located = self._locate(node)
        if isinstance(located, str):
            return located
        x, out, cap = located
        name = out.name or ""
        if name in self.thresholds:
            t = float(self.thresholds[name])
        else:
            rng = self.ranges.get(name)
            if rng is None:
                return f"no profiled range for {name!r}"
            if not rng.finite:
                return f"{name!r} held no finite value on the calibration data"
            t = rng.max
        t = min(t, cap)
        if not t > 0:
            return f"dead ReLU: threshold T = {t:g} (the output max on the calibration data is not positive)"
        return _Plan(node, x, out, t)

    def check(self, node: ir.Node) -> str | None:
        """Why ClipAct leaves ``node`` alone, or None when it would rewrite it."""
        plan = self._plan(node)
        return plan if isinstance(plan, str) else None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self._reset()
        self.threshold_values = {}
        self.applied = {}
        graph = model.graph
        opset = graph_opset(graph)
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
            shape = plan.x.shape
            y = take_place_of(plan.out, builder)
            t = builder.const("T", threshold_array(plan.threshold, dtype, opset), dtype)
            zero = builder.const("zero", np.zeros((), dtype=numpy_dtype(dtype)), dtype)
            nodes: list[ir.Node] = []
            if plan.node.op_type == "Relu":  # stays, marked, so that it still fuses into its producer
                r = plan.out
                plan.node.metadata_props[HARDENING_KEY] = self.method
            else:  # Clip(x, 0, c) with T <= c: a Relu selects the same values
                relu, r = builder.node("Relu", [plan.x], dtype, plan.out.shape)
                nodes.append(relu)
            compare = "LessOrEqual" if opset >= _INCLUSIVE_OPSET else "Less"
            cmp, inside = builder.node(compare, [r, t], ir.DataType.BOOL, shape)
            where, _ = builder.node("Where", [inside, r, zero], dtype, plan.out.shape, out=y)
            insert_nodes_after(graph, plan.node, [*nodes, cmp, where])
            if plan.node.op_type != "Relu":
                graph.remove(plan.node, safe=True)
            self.threshold_values[y.name or ""] = t.name or ""
            self.applied[y.name or ""] = plan.threshold
            self.changes.append(Change(
                label, y.name or "", f"{plan.node.op_type} -> x if 0 <= x <= T else 0, T = {plan.threshold:.6g}"
            ))
        return ir.passes.PassResult(model, bool(plans))
