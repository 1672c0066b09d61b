"""Open a site to faults fed at run time: a weight becomes a graph input, or an activation gets a
fault node whose masks are graph inputs. One session then serves every fault at that site.

Activation port: ``y = Where(SEL, VAL, BitCast(((BitCast(x) & AND) | OR) ^ XOR))``, with only the
parts the campaign needs. With identity masks (AND all ones, OR = XOR = 0, SEL false) ``y == x``
bit for bit, which is how the golden run of the same session is taken.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxfi.bits import dtype_info
from onnxfi.errors import SiteError
from onnxfi.passes._intercept import intercept
from onnxfi.sites import Site

__all__ = ["AddActivationPort", "WeightToInput", "identity_ports", "PORT_AND", "PORT_OR", "PORT_XOR", "PORT_SEL", "PORT_VAL"]

PORT_AND, PORT_OR, PORT_XOR = "onnxfi_port_and", "onnxfi_port_or", "onnxfi_port_xor"
PORT_SEL, PORT_VAL = "onnxfi_port_sel", "onnxfi_port_val"


class WeightToInput(ir.passes.InPlacePass):
    """Turn a main-graph initializer or Constant node output into a graph input of the same name."""

    def __init__(self, tensor_name: str) -> None:
        super().__init__()
        self.tensor_name = tensor_name

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        name = self.tensor_name
        if name in graph.initializers:
            value = graph.initializers.pop(name)
            value.const_value = None
            if value not in graph.inputs:
                graph.inputs.append(value)
            return ir.passes.PassResult(model, True)
        for node in graph:
            if node.op_type == "Constant" and node.outputs[0].name == name:
                out = node.outputs[0]
                new = ir.Value(name=name, shape=out.shape, type=out.type)
                out.name = f"{name}__onnxfi_const"
                out.replace_all_uses_with(new, replace_graph_outputs=True)
                graph.remove(node, safe=True)
                graph.inputs.append(new)
                return ir.passes.PassResult(model, True)
        raise SiteError(f"{name!r} is not a main-graph initializer or Constant; it cannot become an input")


class AddActivationPort(ir.passes.InPlacePass):
    """Insert the run-time fault node after activation ``site`` (bit masks and/or value replacement)."""

    def __init__(self, site: Site, bit_faults: bool, value_faults: bool) -> None:
        super().__init__()
        if site.kind != "activation" or site.concrete_shape is None:
            raise SiteError(f"{site.name} is not an activation with a known shape")
        self.site, self.bit_faults, self.value_faults = site, bit_faults, value_faults

    def port_shape(self) -> tuple[int, ...]:
        shape = self.site.concrete_shape
        assert shape is not None
        return (1, *shape) if self.site.batched else shape

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        site = self.site
        info = dtype_info(site.dtype)
        x, y = intercept(graph, site.tensor_name, "onnxfi")
        shape = ir.Shape(list(self.port_shape()))
        word_t = ir.DataType.from_numpy(info.word) if info.is_float else site.dtype
        nodes: list[ir.Node] = []

        def add(op: str, inputs: list[ir.Value], **attrs: int) -> ir.Value:
            out = ir.Value(name=f"onnxfi_port_{len(nodes)}_{op}")
            nodes.append(ir.node(op, inputs, attributes=attrs or None, outputs=[out], name=f"onnxfi_port_{len(nodes)}"))
            return out

        cur = x
        if self.bit_faults:
            ports = [ir.val(n, word_t, shape) for n in (PORT_AND, PORT_OR, PORT_XOR)]
            graph.inputs.extend(ports)
            words = add("BitCast", [x], to=word_t.value) if info.is_float else x
            w = add("BitwiseXor", [add("BitwiseOr", [add("BitwiseAnd", [words, ports[0]]), ports[1]]), ports[2]])
            cur = add("BitCast", [w], to=site.dtype.value) if info.is_float else w
        if self.value_faults:
            sel = ir.val(PORT_SEL, ir.DataType.BOOL, shape)
            val = ir.val(PORT_VAL, site.dtype, shape)
            graph.inputs.extend([sel, val])
            cur = add("Where", [sel, val, cur])
        nodes.append(ir.node("Identity", [cur], outputs=[y], name="onnxfi_port_out"))
        producer = x.producer()
        assert producer is not None
        graph.insert_after(producer, nodes)
        return ir.passes.PassResult(model, True)


def identity_ports(site: Site, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Feeds for the port that leave the activation unchanged."""
    info = dtype_info(site.dtype)
    word_np = info.word if info.is_float else info.numpy
    full = np.array((1 << info.bits) - 1, dtype=info.word).view(word_np)
    return {
        PORT_AND: np.full(shape, full, dtype=word_np),
        PORT_OR: np.zeros(shape, dtype=word_np),
        PORT_XOR: np.zeros(shape, dtype=word_np),
        PORT_SEL: np.zeros(shape, dtype=bool),
        PORT_VAL: np.zeros(shape, dtype=info.numpy),
    }
