"""Make internal values graph outputs, so one run returns them (golden activations, cached prefixes)."""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

from onnxfi.errors import SiteError

__all__ = ["ExposeValues"]


class ExposeValues(ir.passes.InPlacePass):
    """Append the named main-graph values to the graph outputs (skipping those already there)."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.names = list(names)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        by_name: dict[str, ir.Value] = {}
        for v in graph.inputs:
            by_name[v.name or ""] = v
        for v in graph.initializers.values():
            by_name[v.name or ""] = v
        for node in graph:
            for o in node.outputs:
                if o is not None and o.name:
                    by_name[o.name] = o
        present = {o.name for o in graph.outputs}
        modified = False
        for name in self.names:
            if name in present:
                continue
            if name not in by_name:
                raise SiteError(f"no value named {name!r} in the main graph")
            graph.outputs.append(by_name[name])
            present.add(name)
            modified = True
        return ir.passes.PassResult(model, modified)
