"""Weight range check: each chosen float weight is clipped to its own fault-free [min, max] when the model runs.

``W`` (an initializer of the main graph) keeps its name and values; its consumers read ``Clip(W, lo, hi)``
instead, ``lo``/``hi`` the smallest and largest finite element of ``W`` as the model ships it. A flip that
takes an element outside that range (an exponent flip of a small weight, which gives a value of 2 or more;
a running variance flipped towards zero) is cut back to the range; a flip that stays inside it is not seen, and
neither is a flip to NaN (Clip passes NaN through: only an element of magnitude in [1, 2) with a nonzero
mantissa can become NaN in one flip).
This is Ranger's range restriction applied to parameters (bound the value where it is read).

The check must run per inference, not once: ONNX Runtime folds a node whose inputs are all constant when
the session starts, and then holds only the folded copy, which an upset in memory would hit unchecked. So
``W`` is also declared a graph input (an *overridable* initializer: its stored value is the default, feeds
never give it, ``onnxfi`` lists it as a weight, not an input). Runtimes do not constant-fold an input, so
the Clip stays in the executed graph, and what it costs (the Clip, and kernels that no longer pre-pack the
weight or fold it into a neighbour, e.g. BatchNormalization into Conv) is what latency measurements see.

A weight held in a ``Constant`` node of the main graph (PaddlePaddle exports) becomes an initializer of the
same name and tensor first. Memory: two scalars per weight. Weights in subgraphs, structural tensors and
non-float weights are left alone with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxfi.passes._hardening import (
    Change,
    HardeningPass,
    NodeBuilder,
    Settings,
    clip_opset_reason,
    graph_opset,
    hardening_method,
)
from onnxfi.sites import Site, SiteIndex, enumerate_sites

__all__ = ["WeightClip", "ClippedWeight"]


@dataclass(frozen=True)
class ClippedWeight:
    """A weight the pass would check: its site, the initializer, and the fault-free range."""

    site: Site
    value: ir.Value
    lo: float = 0.0
    hi: float = 0.0
    constant: ir.Node | None = None  # the Constant node that holds it (made an initializer first)


class WeightClip(HardeningPass[tuple[Site, SiteIndex, ir.Model], ClippedWeight]):
    """Clip chosen initializers to their own [min, max] at run time (see the module docstring)."""

    method = "weight-clip"
    summary = "weight range check: clip each weight to its own fault-free [min, max] at run time"
    options = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> WeightClip:
        return cls()

    def candidates(self, model: ir.Model) -> list[tuple[Site, SiteIndex, ir.Model]]:
        index = enumerate_sites(model)
        return [(s, index, model) for s in index.select("weights", include_structure=True)]

    def label(self, candidate: tuple[Site, SiteIndex, ir.Model]) -> str:
        return candidate[0].name

    def plan(self, candidate: tuple[Site, SiteIndex, ir.Model]) -> ClippedWeight | str:
        site, index, model = candidate
        graph = model.graph
        if site.structural:
            return "structural tensor (feeds shapes, axes or indices), not a weight value"
        if site.graph:
            return "weight of a subgraph: only main-graph initializers are checked"
        if site.packing is not None:
            return "packed 4-bit weight: its bytes are not values to clip"
        constant = None
        value = graph.initializers.get(site.tensor_name or site.name)
        if value is None and site.storage == "constant":
            node = index.constant_node(site)
            if node is None or node.attributes.get("value") is None:
                return "Constant node without a tensor 'value' attribute: left alone"
            constant, value = node, node.outputs[0]
        if value is None:
            return "not an initializer or Constant node of the main graph: left alone"
        reason = clip_opset_reason(site.dtype, graph_opset(graph))
        if reason:
            return reason
        users = [n for n, _ in value.uses()]
        if not users:
            return "no node reads it"
        owners = {hardening_method(n) for n in users}
        if None not in owners:
            return f"constant of the {', '.join(sorted(map(str, owners)))} hardening"
        if any(v is value for v in graph.inputs):
            return "already a graph input: the model may feed it"
        if (model.ir_version or 0) < 4:
            return f"IR version {model.ir_version}: before 4 an initializer cannot be an overridable input"
        arr = np.asarray(index.weight_array(site)).astype(np.float64).reshape(-1)
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            return "no finite element"
        return ClippedWeight(site, value, float(finite.min()), float(finite.max()), constant)

    def rewrite(self, builder: NodeBuilder, plan: ClippedWeight) -> Change:
        graph = builder.graph
        w = plan.value
        if plan.constant is not None:  # the same tensor and name, as an initializer (the runtime must not fold it)
            name = w.name or builder.unique("onnxfi_weight")
            tensor = plan.constant.attributes["value"].value
            w.name = builder.unique(f"{name}__constant")
            init = ir.Value(name=name, shape=w.shape, type=w.type or ir.TensorType(tensor.dtype), const_value=tensor)
            w.replace_all_uses_with(init, replace_graph_outputs=True)
            graph.remove(plan.constant, safe=True)
            graph.register_initializer(init)
            w = init
        checked = ir.Value(name=builder.unique(f"{w.name}__checked"), shape=w.shape, type=w.type)
        w.replace_all_uses_with(checked)  # every reader (not the Clip, made after) takes the checked value
        node, _ = builder.clip(w, plan.lo, plan.hi, checked)
        builder.insert_after(None, [node])
        graph.inputs.append(w)  # overridable initializer: the runtime keeps the Clip (module docstring)
        return Change(plan.site.name, w.name or "", f"clipped to [{plan.lo:.6g}, {plan.hi:.6g}] at run time")

    def report_results(self) -> dict[str, Any]:
        return {"checked": len(self.changes)}
