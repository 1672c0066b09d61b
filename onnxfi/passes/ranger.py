"""Ranger (Chen et al.): bound each activation to its profiled range, ``y = Clip(x, lo, hi)``.

The clip goes after the activation, or after the last node of a chain that follows it and only moves or
pools values (``Relu -> MaxPool -> Flatten``): one clip then covers the chain. ``lo`` is 0 for a ReLU
chain and the profiled minimum otherwise; ``hi`` is the profiled maximum, or a chosen percentile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import onnx_ir as ir

from onnxfi.passes._hardening import (
    Activation,
    ActivationPass,
    Change,
    NodeBuilder,
    Settings,
    clip_opset_reason,
    graph_opset,
    hardening_method,
    node_label,
)

if TYPE_CHECKING:
    from onnxfi.profile import ValueRange

__all__ = ["Ranger", "CHAIN_OPS"]

# Ops that only pool or move values: a clip after them bounds the activation just as well.
CHAIN_OPS = frozenset({
    "MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool", "Flatten", "Reshape", "Squeeze",
    "Unsqueeze", "Transpose", "Identity", "Dropout",
})


@dataclass(frozen=True)
class _Plan:
    chain: Activation
    lo: float
    hi: float


class Ranger(ActivationPass[_Plan]):
    """Insert ``Clip(x, lo, hi)`` after every activation chain with a profiled range in ``ranges``."""

    method = "ranger"
    summary = "Ranger: Clip(x, lo, hi) after each activation (chain) with profiled bounds"
    options = ("percentile",)

    def __init__(self, ranges: Mapping[str, ValueRange], percentile: float | None = None) -> None:
        super().__init__(ranges)
        self.percentile = percentile

    @classmethod
    def from_settings(cls, settings: Settings) -> Ranger:
        return cls({}, settings.percentile)

    def report_settings(self) -> dict[str, Any]:
        return {"percentile": self.percentile}

    def profile_percentiles(self) -> tuple[float, ...]:
        return (self.percentile,) if self.percentile else ()

    def match(self, node: ir.Node, x: ir.Value, out: ir.Value) -> Activation | str:
        assert node.graph is not None  # locate() passes graph nodes only
        reason = clip_opset_reason(out.dtype or ir.DataType.UNDEFINED, graph_opset(node.graph))
        if reason:
            return reason
        end, chain = out, [node.op_type]
        while not end.is_graph_output():
            uses = list(end.uses())
            if len(uses) != 1:
                break
            nxt, slot = uses[0]
            if slot != 0 or nxt.op_type not in CHAIN_OPS or hardening_method(nxt) or nxt.outputs[0] is None:
                break
            end = nxt.outputs[0]
            chain.append(nxt.op_type)
        return Activation(node, x, end, tuple(chain))

    def bounds(self, activation: Activation) -> _Plan | str:
        rng = self.profiled_range(activation.output)
        if isinstance(rng, str):
            return rng
        lo = 0.0 if activation.node.op_type == "Relu" else rng.min
        hi = rng.upper(self.percentile)
        if not hi > lo:
            name = activation.output.name or ""
            return f"{name!r} is constant on the calibration data ([{lo:g}, {hi:g}]); a clip would freeze it"
        return _Plan(activation, lo, hi)

    def rewrite(self, builder: NodeBuilder, plan: _Plan) -> Change:
        label = node_label(plan.chain.node)  # before the rewrite renames its output
        end = plan.chain.output
        y = builder.take_place_of(end)
        clip, _ = builder.clip(end, plan.lo, plan.hi, out=y)
        builder.insert_after(end.producer(), [clip])
        what = " -> ".join(plan.chain.chain)
        return Change(label, y.name or "", f"Clip [{plan.lo:.6g}, {plan.hi:.6g}] after {what}")
