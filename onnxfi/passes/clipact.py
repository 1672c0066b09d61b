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
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from onnxfi.passes._hardening import (
    Activation,
    ActivationPass,
    Change,
    NodeBuilder,
    const_scalar,
    graph_opset,
    node_label,
    where_opset_reason,
)

if TYPE_CHECKING:
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


def _detail(op: str, threshold: float, searched: bool = False) -> str:
    return f"{op} -> x if 0 <= x <= T else 0, T = {threshold:.6g}" + (" (searched)" if searched else "")


@dataclass(frozen=True)
class _Plan:
    relu: Activation
    threshold: float


class ClipAct(ActivationPass[_Plan]):
    """Replace each ReLU (``Relu``, ``Clip`` with min 0) by the zeroing clip ``x if 0 <= x <= T else 0`` (NaN -> 0).

    ``thresholds`` (activation output name -> T) overrides the profiled maximum from ``ranges``. After
    ``call``, ``threshold_values`` maps each rewritten activation's output name to its ``T`` initializer
    and ``applied`` to the ``T`` it used; :meth:`set_thresholds` changes them in the rewritten model.
    """

    method = "clipact"
    summary = "FT-ClipAct: ReLU -> x if 0 <= x <= T else 0 (T: profiled max, or --search)"
    options = ("search",)  # done by onnxfi.harden: it needs data, faults and sessions

    def __init__(self, ranges: Mapping[str, ValueRange], thresholds: Mapping[str, float] | None = None) -> None:
        super().__init__(ranges)
        self.thresholds = dict(thresholds or {})
        self.threshold_values: dict[str, str] = {}
        self.applied: dict[str, float] = {}
        self._ops: dict[str, str] = {}  # rewritten activation output -> its original op, for the details

    def reset(self) -> None:
        super().reset()
        self.threshold_values = {}
        self.applied = {}
        self._ops = {}

    def match(self, node: ir.Node, x: ir.Value, out: ir.Value) -> Activation | str:
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
        assert node.graph is not None  # locate() passes graph nodes only
        reason = where_opset_reason(x.dtype or ir.DataType.UNDEFINED, graph_opset(node.graph))
        if reason:
            return reason
        return Activation(node, x, out, cap=cap)

    def bounds(self, activation: Activation) -> _Plan | str:
        name = activation.output.name or ""
        if name in self.thresholds:
            t = float(self.thresholds[name])
        else:
            rng = self.profiled_range(activation.output)
            if isinstance(rng, str):
                return rng
            t = rng.max
        t = min(t, activation.cap)
        if not t > 0:
            return f"dead ReLU: threshold T = {t:g} (the output max on the calibration data is not positive)"
        return _Plan(activation, t)

    def rewrite(self, builder: NodeBuilder, plan: _Plan) -> Change:
        opset = builder.opset
        node, x, out = plan.relu.node, plan.relu.input, plan.relu.output
        label = node_label(node)  # before the rewrite renames its output
        dtype = x.dtype or ir.DataType.FLOAT
        y = builder.take_place_of(out)
        t = builder.const("T", threshold_array(plan.threshold, dtype, opset), dtype)
        zero = builder.zero(dtype)
        nodes: list[ir.Node] = []
        if node.op_type == "Relu":  # stays, marked, so that it still fuses into its producer
            r = out
            builder.mark(node)
        else:  # Clip(x, 0, c) with T <= c: a Relu selects the same values
            relu, r = builder.node("Relu", [x], dtype, out.shape)
            nodes.append(relu)
        compare = "LessOrEqual" if opset >= _INCLUSIVE_OPSET else "Less"
        cmp, inside = builder.node(compare, [r, t], ir.DataType.BOOL, x.shape)
        where, _ = builder.node("Where", [inside, r, zero], dtype, out.shape, out=y)
        builder.insert_after(node, [*nodes, cmp, where])
        if node.op_type != "Relu":
            builder.graph.remove(node, safe=True)
        self.threshold_values[y.name or ""] = t.name or ""
        self.applied[y.name or ""] = plan.threshold
        self._ops[y.name or ""] = node.op_type
        return Change(label, y.name or "", _detail(node.op_type, plan.threshold))

    def report_results(self) -> dict[str, Any]:
        return {"thresholds": dict(self.applied)}

    def set_thresholds(self, model: ir.Model, thresholds: Mapping[str, float], searched: bool = True) -> None:
        """Give the activations rewritten by the last ``call`` new ``T`` values (activation output -> T)."""
        opset = graph_opset(model.graph)
        for layer, t in thresholds.items():
            value = model.graph.initializers[self.threshold_values[layer]]
            dtype = value.dtype or ir.DataType.FLOAT
            value.const_value = ir.Tensor(threshold_array(t, dtype, opset), dtype=dtype, name=value.name)
            self.applied[layer] = float(t)
        self.changes = [
            Change(c.node, c.value, _detail(self._ops[c.value], thresholds[c.value], searched))
            if c.value in thresholds else c
            for c in self.changes
        ]
