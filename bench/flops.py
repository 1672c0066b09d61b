"""FLOP counts of an ONNX model from its inferred shapes: per node, in total, and downstream of a tensor.

Counts are per image (the batch dimension is fixed to 1 for shape inference). A multiply-add is 2 FLOPs:
Conv ``2 * out * (C_in/group * kH * kW)`` (+ ``out`` with a bias), ConvTranspose ``2 * in * (C_out/group
* kH * kW)``, Gemm ``2 * M * N * K`` (+ ``M * N`` with C), MatMul ``2 * out * K``; pooling ``out * window``;
reductions and global pools ``in``; data movement (Reshape, Flatten, Transpose, Shape, ...) 0; every
other op (ReLU, Add, BatchNormalization, ...) about 1 per output element. Subgraphs are not counted.

The *downstream FLOPs* of a tensor are those of every node that reads it and of every node reachable
from those nodes' outputs: what a fault in that tensor forces a runtime to recompute, at the least.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping

import onnx
from onnx import shape_inference

__all__ = ["FlopCounter", "node_flops"]

_FREE = frozenset({
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Constant", "Shape", "Size", "Transpose",
    "Gather", "Slice", "Concat", "Split", "Expand", "Cast", "Dropout", "ConstantOfShape", "Range",
})
_POOLS = frozenset({"MaxPool", "AveragePool", "LpPool"})
_GLOBAL = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _fix_batch(proto: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]] | None) -> None:
    """Make graph inputs concrete: given shapes, else every symbolic or unknown dim becomes 1."""
    inits = {t.name for t in proto.graph.initializer}
    for inp in proto.graph.input:
        if inp.name in inits or not inp.type.HasField("tensor_type"):
            continue
        dims = inp.type.tensor_type.shape.dim
        given = (shapes or {}).get(inp.name)
        for i, d in enumerate(dims):
            if given is not None:
                d.Clear()
                d.dim_value = int(given[i])
            elif not d.HasField("dim_value") or d.dim_value <= 0:
                d.Clear()
                d.dim_value = 1


def _shape_map(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    g = proto.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            out[vi.name] = tuple(int(d.dim_value) for d in t.shape.dim)
    for t in g.initializer:
        out[t.name] = tuple(int(d) for d in t.dims)
    return out


def node_flops(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...]]) -> int:
    """FLOPs of one node for one image (see the module docstring); 0 when a needed shape is unknown."""
    op = node.op_type
    if op in _FREE:
        return 0
    ins = [shapes.get(i) if i else None for i in node.input]
    out = shapes.get(node.output[0]) if node.output else None
    if out is None:
        return 0
    n_out = math.prod(out)
    if op == "Conv" and len(ins) > 1 and ins[1] is not None:
        flops = 2 * n_out * math.prod(ins[1][1:])
        return flops + (n_out if len(ins) > 2 and ins[2] is not None else 0)
    if op == "ConvTranspose" and ins[0] is not None and len(ins) > 1 and ins[1] is not None:
        return 2 * math.prod(ins[0]) * math.prod(ins[1][1:]) + (n_out if len(ins) > 2 and ins[2] else 0)
    if op == "Gemm" and ins[0] is not None:
        k = ins[0][0] if _attr(node, "transA", 0) else ins[0][-1]
        return 2 * n_out * k + (n_out if len(ins) > 2 and ins[2] is not None else 0)
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul") and ins[0] is not None:
        return 2 * n_out * ins[0][-1]
    if op in _POOLS:
        kernel = _attr(node, "kernel_shape", [])
        return n_out * math.prod(kernel) if isinstance(kernel, list) and kernel else n_out
    if (op in _GLOBAL or op.startswith("Reduce")) and ins and ins[0] is not None:
        return math.prod(ins[0])
    return n_out


class FlopCounter:
    """Per-node FLOPs of a model (one image) and the downstream FLOPs of any tensor in its main graph."""

    def __init__(self, model_path: str, input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
        proto = onnx.load(model_path, load_external_data=False)
        _fix_batch(proto, input_shapes)
        proto = shape_inference.infer_shapes(proto)
        self.shapes = _shape_map(proto)
        self.nodes = list(proto.graph.node)
        self.flops = [node_flops(n, self.shapes) for n in self.nodes]
        self.consumers: dict[str, list[int]] = defaultdict(list)
        for i, n in enumerate(self.nodes):
            for name in set(n.input):
                if name:
                    self.consumers[name].append(i)

    @property
    def total(self) -> int:
        return sum(self.flops)

    def cone(self, tensor: str) -> list[int]:
        """Indices of the nodes that read ``tensor`` and of every node downstream of them."""
        seen: set[int] = set()
        todo = list(self.consumers.get(tensor, ()))
        while todo:
            i = todo.pop()
            if i in seen:
                continue
            seen.add(i)
            for out in self.nodes[i].output:
                todo.extend(self.consumers.get(out, ()))
        return sorted(seen)

    def downstream(self, tensor: str) -> int:
        """FLOPs per image of the forward cone of ``tensor`` (the whole model if nothing reads it)."""
        cone = self.cone(tensor)
        return sum(self.flops[i] for i in cone) if cone else self.total


if __name__ == "__main__":
    import sys

    fc = FlopCounter(sys.argv[1])
    print(f"{fc.total / 1e9:.4f} GFLOP per image, {len(fc.nodes)} nodes")
    for name in sys.argv[2:]:
        print(f"  downstream of {name}: {fc.downstream(name) / 1e9:.4f} GFLOP")
