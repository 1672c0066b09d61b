"""Cut a main-graph activation from its consumers so a fault node can sit between them."""

from __future__ import annotations

import onnx_ir as ir

from onnxfi.errors import SiteError

__all__ = ["intercept"]


def intercept(graph: ir.Graph, tensor_name: str, tag: str) -> tuple[ir.Value, ir.Value]:
    """Rename the activation ``tensor_name`` to ``{name}__{tag}_clean`` and give every consumer (graph
    outputs included) a new value under the original name instead; returns (clean, faulty). The caller
    builds the nodes that compute ``faulty`` from ``clean``, so the model's interface keeps its names."""
    x = next((o for n in graph for o in n.outputs if o is not None and o.name == tensor_name), None)
    if x is None:
        raise SiteError(f"no activation named {tensor_name!r} in the main graph")
    name = x.name or ""
    x.name = f"{name}__{tag}_clean"
    faulty = ir.Value(name=name, shape=x.shape, type=x.type)
    x.replace_all_uses_with(faulty, replace_graph_outputs=True)
    return x, faulty
