"""Ranger (Chen et al.): bound each activation to its profiled range, ``y = Clip(x, lo, hi)``.

The clip goes after the activation, or after the last node of a chain that follows it and only moves or
pools values (``Relu -> MaxPool -> Flatten``): one clip then covers the chain. ``lo`` is 0 for a ReLU
chain and the profiled minimum otherwise; ``hi`` is the profiled maximum, or a chosen percentile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import onnx_ir as ir

from onnxfi.passes._hardening import (
    ACTIVATION_OPS,
    Change,
    HardeningPass,
    NodeBuilder,
    Skip,
    clip_nodes,
    clip_opset_reason,
    graph_opset,
    hardening_method,
    insert_nodes_after,
    node_label,
    take_place_of,
)
from onnxfi.profile import ValueRange

__all__ = ["Ranger", "CHAIN_OPS"]

# Ops that only pool or move values: a clip after them bounds the activation just as well.
CHAIN_OPS = frozenset({
    "MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool", "Flatten", "Reshape", "Squeeze",
    "Unsqueeze", "Transpose", "Identity", "Dropout",
})


@dataclass(frozen=True)
class _Target:
    node: ir.Node
    end: ir.Value
    chain: tuple[str, ...]


@dataclass(frozen=True)
class _Plan:
    target: _Target
    lo: float
    hi: float


class Ranger(HardeningPass):
    """Insert ``Clip(x, lo, hi)`` after every activation chain with a profiled range in ``ranges``."""

    method = "ranger"

    def __init__(self, ranges: Mapping[str, ValueRange], percentile: float | None = None) -> None:
        super().__init__()
        self.ranges = ranges
        self.percentile = percentile

    @staticmethod
    def candidates(model: ir.Model) -> list[ir.Node]:
        return [n for n in model.graph if n.op_type in ACTIVATION_OPS and n.domain in ("", "ai.onnx")]

    def profile_points(self, model: ir.Model) -> list[str]:
        """The values whose ranges the pass needs: the end of each candidate's chain."""
        out = []
        for node in self.candidates(model):
            target = self._locate(node)
            if isinstance(target, _Target) and target.end.name:
                out.append(target.end.name)
        return out

    def _locate(self, node: ir.Node) -> _Target | str:
        if node.op_type not in ACTIVATION_OPS or node.domain not in ("", "ai.onnx"):
            return f"{node.op_type} is not an activation"
        method = hardening_method(node)
        if method:
            return f"part of the {method} hardening"
        out = node.outputs[0]
        graph = node.graph
        if out is None or graph is None:
            return "node is not in a graph"
        reason = clip_opset_reason(out.dtype or ir.DataType.UNDEFINED, graph_opset(graph))
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
        for consumer, _ in end.uses():
            method = hardening_method(consumer)
            if method:
                return f"output {end.name!r} already feeds the {method} hardening"
        return _Target(node, end, tuple(chain))

    def _plan(self, node: ir.Node) -> _Plan | str:
        target = self._locate(node)
        if isinstance(target, str):
            return target
        name = target.end.name or ""
        rng = self.ranges.get(name)
        if rng is None:
            return f"no profiled range for {name!r}"
        if not rng.finite:
            return f"{name!r} held no finite value on the calibration data"
        lo = 0.0 if node.op_type == "Relu" else rng.min
        hi = rng.upper(self.percentile)
        if not hi > lo:
            return f"{name!r} is constant on the calibration data ([{lo:g}, {hi:g}]); a clip would freeze it"
        return _Plan(target, lo, hi)

    def check(self, node: ir.Node) -> str | None:
        """Why Ranger leaves ``node`` alone, or None when it would clip after it."""
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
            label = node_label(plan.target.node)  # before the rewrite renames its output
            end = plan.target.end
            y = take_place_of(end, builder)
            nodes, _ = clip_nodes(builder, end, plan.lo, plan.hi, out=y)
            insert_nodes_after(graph, end.producer(), nodes)
            what = " -> ".join(plan.target.chain)
            self.changes.append(Change(
                label, y.name or "", f"Clip [{plan.lo:.6g}, {plan.hi:.6g}] after {what}"
            ))
        return ir.passes.PassResult(model, bool(plans))
