"""Cut a model at a fault site: the forward cone of the site as its own model, fed with cached tensors.

A fault in a tensor can only change what is computed from it. The *forward cone* of a set of values is
every main-graph node that consumes one of them, directly or through other cone nodes. Running only the
cone, with every tensor it reads from outside the cone fed from a cached fault-free run (the *prefix*),
gives the outputs of the whole faulty model at the cost of the downstream part only: the same
computation, equal up to rounding where ONNX Runtime fuses nodes across the cut (the engine checks each
cut against the whole model and falls back where they differ beyond rounding, see
:mod:`onnxfi.engine.rounding`).

Everything here works on ``onnx.ModelProto`` (node order, names and initializers are kept as they are),
so the suffix session sees the same nodes, weights and attributes as the full model and ONNX Runtime
optimizes it with the same passes.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxfi.bits import is_float_dtype

__all__ = [
    "Cut", "forward_cone", "cut_model", "boundary", "weight_start", "weight_head", "is_quantized_weight", "CutError",
    "SHORTCUT_OPS", "cone_macs", "cone_weight_bytes",
]

# Single consumers whose output can stay bitwise equal when their input changes (the exact shortcut):
# a ReLU maps every negative value to 0; a MaxPool ignores values below their window's maximum;
# a Clip saturates values beyond its bounds; a QuantizeLinear rounds nearby values to the same integer
# (and saturates), so a small flip before a quantized layer often changes nothing.
SHORTCUT_OPS = frozenset({"Relu", "MaxPool", "Clip", "QuantizeLinear"})


class CutError(Exception):
    """The model cannot be cut at this site (the caller falls back to a whole-model session)."""


@dataclass
class Cut:
    """The suffix model and what it needs: ``inputs`` fed from the prefix cache or the data, ``outputs``
    of the original model that the suffix computes, and ``passthrough`` outputs the fault cannot reach."""

    model: onnx.ModelProto
    inputs: list[str]
    outputs: list[str]
    passthrough: list[str]
    cached: list[str]
    checkpoint: onnx.ModelProto | None = None  # the site's single consumer alone (for the exact shortcut)


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs read from the enclosing scope (so they count as the node's inputs)."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for g in graphs:
            local = {i.name for i in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                local.update(o for o in n.output if o)
            for n in g.node:
                names.update(i for i in n.input if i and i not in local)
                names.update(x for x in _subgraph_inputs(n) if x not in local)
    return names


def _node_inputs(node: onnx.NodeProto) -> list[str]:
    return [i for i in node.input if i] + sorted(_subgraph_inputs(node))


class _Structure:
    """What the graph walks of this module read from a graph, computed once per graph: each node's inputs
    (subgraph reads included) and outputs, and which nodes read each value. Walking the protobuf per call
    cost more than the ONNX Runtime sessions on models with hundreds of weight sites (one call per site
    and path)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph  # held, so the id this structure is cached under is not reused
        self.size = len(graph.node)
        self.inputs: list[list[str]] = [_node_inputs(n) for n in graph.node]
        self.outputs: list[list[str]] = [[o for o in n.output if o] for n in graph.node]
        self.readers: dict[str, list[int]] = {}
        for i, ins in enumerate(self.inputs):
            for x in ins:
                self.readers.setdefault(x, []).append(i)
        self.producer: dict[str, int] = {o: i for i, outs in enumerate(self.outputs) for o in outs}
        self.constants: OrderedDict[tuple[str, ...], dict[str, int | None]] = OrderedDict()
        self._weight_bytes: dict[str, int] | None = None
        self._weight_dims: dict[str, list[int]] | None = None

    def weight_dims(self) -> dict[str, list[int]]:
        """Dims of each initializer and Constant-node value, by name."""
        if self._weight_dims is None:
            dims = {t.name: list(t.dims) for t in self.graph.initializer}
            for node in self.graph.node:  # weights held in Constant nodes (PaddlePaddle exports)
                for a in node.attribute if node.op_type == "Constant" and node.output and node.output[0] else ():
                    if a.name == "value":
                        dims[node.output[0]] = list(a.t.dims)
            self._weight_dims = dims
        return self._weight_dims

    def weight_bytes(self) -> dict[str, int]:
        """Bytes of each initializer and Constant-node value, by name."""
        if self._weight_bytes is None:
            sizes = {t.name: _tensor_bytes(t) for t in self.graph.initializer}
            for node in self.graph.node:
                for a in node.attribute if node.op_type == "Constant" and node.output and node.output[0] else ():
                    if a.name == "value":
                        sizes[node.output[0]] = _tensor_bytes(a.t)
            self._weight_bytes = sizes
        return self._weight_bytes


def _tensor_bytes(t: onnx.TensorProto) -> int:
    if t.raw_data:
        return len(t.raw_data)
    try:
        itemsize = int(helper.tensor_dtype_to_np_dtype(t.data_type).itemsize)
    except Exception:  # a type numpy has no name for: count 4 bytes
        itemsize = 4
    return itemsize * math.prod(t.dims)


_STRUCTURES: OrderedDict[int, _Structure] = OrderedDict()


def _structure(graph: onnx.GraphProto) -> _Structure:
    """The cached structure of ``graph``. Graphs are not edited after they are cut (the engine's model is
    fixed); a graph whose node count changed is walked again."""
    key = id(graph)
    s = _STRUCTURES.get(key)
    if s is None or s.graph is not graph or s.size != len(graph.node):
        s = _STRUCTURES[key] = _Structure(graph)
        while len(_STRUCTURES) > 4:
            _STRUCTURES.popitem(last=False)
    else:
        _STRUCTURES.move_to_end(key)
    return s


def forward_cone(graph: onnx.GraphProto, start: Iterable[str]) -> list[int]:
    """Indices (in graph order) of the nodes that read ``start`` values, directly or transitively."""
    st = _structure(graph)
    tainted = set(start)
    cone: list[int] = []
    for i, ins in enumerate(st.inputs):  # ONNX requires topological order in a valid graph
        if any(name in tainted for name in ins):
            cone.append(i)
            tainted.update(st.outputs[i])
    return cone


# Nodes that only transform a weight on its way to the node that computes with it.
_WEIGHT_TRANSFORMS = frozenset({
    "DequantizeLinear", "Cast", "Transpose", "Reshape", "Unsqueeze", "Squeeze", "Identity", "Flatten",
})


_QUANTIZERS = frozenset({"QuantizeLinear", "DynamicQuantizeLinear"})
_OPERAND_OPS = frozenset({
    "Conv", "ConvTranspose", "MatMul", "Gemm", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
})


def _weight_users(
    graph: onnx.GraphProto, name: str, consts: set[str]
) -> tuple[set[str], list[onnx.NodeProto]]:
    """The weight's chain (the weight and what weight transforms of it with constant other inputs
    make of it) and every node that uses a value of the chain."""
    st = _structure(graph)
    chain = {name}
    users: list[onnx.NodeProto] = []
    frontier = [name]
    for _ in range(6):
        nxt: list[str] = []
        for v in frontier:
            for i in st.readers.get(v, []):
                node = graph.node[i]
                users.append(node)
                others = [x for x in st.inputs[i] if x not in chain]
                if node.op_type in _WEIGHT_TRANSFORMS and all(x in consts for x in others):
                    outs = [o for o in node.output if o]
                    chain.update(outs)
                    nxt.extend(outs)
        frontier = nxt
        if not frontier:
            break
    return chain, users


_QUANT_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
    "QGemm", "MatMulNBits", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "GatherBlockQuantized",
})


def is_quantized_weight(model: onnx.ModelProto, name: str, dtype: np.dtype[Any]) -> bool:
    """Whether a weight takes part in quantized arithmetic, which ORT computes in integer kernels once
    the weight is a constant: an integer tensor, or a tensor used (directly or through weight transforms)
    by a (De)QuantizeLinear or QLinear*/integer op, e.g. a scale or zero point."""
    if not is_float_dtype(dtype):
        return True
    graph = model.graph
    consts = set(_constant_values(graph, [name])) | {i.name for i in graph.input}
    _, users = _weight_users(graph, name, consts)
    return any(u.op_type in _QUANT_OPS or u.op_type.startswith("QLinear") for u in users)


def weight_start(model: onnx.ModelProto, name: str, depth: int = 3) -> list[str]:
    """Where a weight's cone starts: the weight, plus the inputs of the nodes that produce the data
    inputs of the nodes computing with it. ONNX Runtime fuses patterns around a constant weight
    (Conv+BatchNormalization, a bias Add or scale Mul into the Conv/MatMul before it,
    DequantizeLinear+Conv+QuantizeLinear into QLinearConv); starting one node before the node that
    uses the weight (``depth`` nodes) keeps such a pattern whole in the cone, so a baked weight gets the same fusion as
    in the whole model. Weight transforms (DequantizeLinear, Cast, Transpose, ...) are followed."""
    graph = model.graph
    producer = {o: graph.node[i] for o, i in _structure(graph).producer.items()}
    constants = set(_constant_values(graph, [name]))
    consts = constants | {i.name for i in graph.input}
    chain, users = _weight_users(graph, name, consts)
    start = [name]
    data = [x for node in users for x in _node_inputs(node) if x not in chain]
    # The weight is an operand of the nodes that compute with it (Conv, MatMul, ...): the patterns ORT
    # fuses with them lie downstream (bias Add, BatchNormalization, activation, QuantizeLinear), already in
    # the cone, except the DequantizeLinear of a QDQ input. A weight of a node that ORT folds backwards
    # (a BatchNormalization or bias Add/Mul after a Conv) needs the nodes before it.
    operand = all(n.op_type in _OPERAND_OPS for n in users if any(x not in chain for x in _node_inputs(n)))
    for _ in range(depth):  # Conv -> Add(bias) -> BatchNormalization needs two steps back
        back: list[str] = []
        for x in data:
            p = producer.get(x)
            if x in consts or p is None:
                continue
            if operand and p.op_type != "DequantizeLinear":
                continue
            if p.op_type in _QUANTIZERS:
                # a quantized tensor: the fused integer kernels of the whole model produce exactly it,
                # while the float tensors before it do not exist there (Conv+Relu+QuantizeLinear is one
                # QLinearConv); the cut stops here
                if x not in start:
                    start.append(x)
                continue
            for y in _node_inputs(p):
                if y not in start and y not in constants:  # a shared constant (a QDQ scale) would pull in its other users
                    start.append(y)
                    if p.op_type not in _OPERAND_OPS:  # the pattern begins at the Conv/MatMul: stop there, or
                        back.append(y)  # the cone would recompute an earlier BatchNormalization unfused
        data = back
    return start


# Nodes ONNX Runtime may fuse into the node that computes with a weight, and so belong to its head:
# a BatchNormalization folded into a Conv, a bias or residual Add (FusedConv's Z input), a scale Mul,
# an activation.
_FUSE_FOLLOW = frozenset({
    "BatchNormalization", "Add", "Sub", "Mul", "Div", "Sum", "Relu", "Clip", "LeakyRelu", "HardSigmoid",
    "Sigmoid", "Tanh",
})


def weight_head(model: onnx.ModelProto, name: str, start: Sequence[str], depth: int = 4) -> tuple[list[int], list[str]]:
    """The *head* of a weight's cone: the nodes of the cone of ``start`` (see :func:`weight_start`) up
    to the end of the node computing with the weight and the single-consumer chain of nodes ORT may
    fuse into it (at most ``depth``), as node indices, and the value it ends in. What the rest of the
    model reads from the head is that value only (else :class:`CutError`).

    Running the head with the weight baked in and the rest of the cone as one shared session fed with
    the head's output splits the baked cone where ORT's fusions do not reach; whether the split gives
    the baked cone's outputs bit for bit is for the caller to check on the fault-free weight."""
    graph = model.graph
    consts = set(_constant_values(graph, [name])) | {i.name for i in graph.input}
    chain, users = _weight_users(graph, name, consts)
    compute = {id(n): n for n in users if any(o and o not in chain for o in n.output)}
    if len(compute) != 1:
        raise CutError("the weight is used by several nodes")
    node = next(iter(compute.values()))
    st = _structure(graph)
    outputs = {o.name for o in graph.output}
    outs = [o for o in node.output if o]
    if len(outs) != 1:
        raise CutError(f"{node.op_type} has several outputs")
    end = outs[0]
    for _ in range(depth):
        nxt = [graph.node[i] for i in st.readers.get(end, [])]
        if end in outputs or len(nxt) != 1:
            break
        c = nxt[0]
        c_outs = [o for o in c.output if o]
        if c.op_type not in _FUSE_FOLLOW or c.domain not in ("", "ai.onnx") or len(c_outs) != 1:
            break
        end = c_outs[0]
    cone = forward_cone(graph, start)
    needed, head = {end}, []
    for i in reversed(cone):
        if any(o in needed for o in st.outputs[i]):
            head.append(i)
            needed.update(st.inputs[i])
    head.sort()
    inside = set(head)
    produced = {o for i in head for o in st.outputs[i]} - {end}
    for i, ins in enumerate(st.inputs):
        if i not in inside and any(x in produced for x in ins):
            n = graph.node[i]
            raise CutError(f"{n.op_type} {n.name!r} reads a value inside the weight's head")
    if produced & outputs:
        raise CutError("a value inside the weight's head is a model output")
    return head, [end]


def cone_weight_bytes(model: onnx.ModelProto, nodes: Iterable[int], extra: Sequence[str] = ()) -> int:
    """Bytes of the weights (initializers, Constant-node values) that ``nodes`` read, and of ``extra``:
    what an ONNX Runtime session of those nodes prepacks."""
    st = _structure(model.graph)
    sizes = st.weight_bytes()
    names = {x for i in nodes for x in st.inputs[i] if x in sizes} | {x for x in extra if x in sizes}
    return sum(sizes[x] for x in names)


def cone_macs(
    model: onnx.ModelProto, nodes: Iterable[int], shapes: dict[str, tuple[tuple[int | str | None, ...], bool]]
) -> int:
    """Multiply-adds per sample of the Conv, ConvTranspose, Gemm and MatMul nodes among ``nodes``, from
    the statically inferred ``shapes`` (name -> (dims, batched)); a node with an unknown shape counts 0.
    A rough, deterministic measure of how much work running those nodes is."""
    graph = model.graph
    inits = _structure(graph).weight_dims()

    def per_sample(name: str) -> list[int] | None:
        dims, batched = shapes.get(name, ((), False))
        d = [x for x in (dims[1:] if batched else dims) if isinstance(x, int) and x > 0]
        return d if d and len(d) == len(dims) - int(batched) else None

    total = 0
    for i in nodes:
        n = graph.node[i]
        if n.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(n.input) < 2:
            continue
        out = per_sample(n.output[0])
        w = inits.get(n.input[1])
        if out is None or not w:
            continue
        if n.op_type == "Conv" and len(w) >= 3:
            total += math.prod(out) * math.prod(w[1:])
        elif n.op_type == "ConvTranspose" and len(w) >= 3:
            inp = per_sample(n.input[0])
            total += math.prod(inp) * math.prod(w[1:]) if inp is not None else 0
        elif n.op_type in ("Gemm", "MatMul"):
            total += math.prod(out) * (w[0] if n.op_type == "MatMul" or not any(
                a.name == "transB" and a.i for a in n.attribute) else w[-1])
    return total


_NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"})


def _constant_values(graph: onnx.GraphProto, fed: Sequence[str]) -> dict[str, int | None]:
    """Values computable from constants alone (initializers, Constant nodes and what is computed from
    them only), mapped to the index of the node producing them (None for initializers). ``fed`` values are not
    constants. Such values are recomputed in a cut model, not cached, so ORT folds them as it would in
    the whole model. The mapping is cached with the graph: callers only read it."""
    st = _structure(graph)
    key = tuple(sorted(set(fed)))
    hit = st.constants.get(key)
    if hit is not None:
        return hit
    fed_set = set(fed)
    const: dict[str, int | None] = {t.name: None for t in graph.initializer if t.name not in fed_set}
    for i in graph.input:
        const.pop(i.name, None)  # an input with a default initializer can be overridden
    for i, (ins, outs) in enumerate(zip(st.inputs, st.outputs)):
        if graph.node[i].op_type in _NONDETERMINISTIC or any(o in fed_set for o in outs):
            continue
        if all(x in const for x in ins):
            for o in outs:
                const[o] = i
    st.constants[key] = const
    while len(st.constants) > 8:
        st.constants.popitem(last=False)
    return const


def boundary(model: onnx.ModelProto, start: Sequence[str], fed: Sequence[str] = ()) -> list[str]:
    """Values the forward cone of ``start`` reads from outside that a prefix run must provide:
    outputs of nodes outside the cone (not initializers, not graph inputs, not the ``fed`` values)."""
    graph = model.graph
    st = _structure(graph)
    cone = forward_cone(graph, start)
    produced = {o for i in cone for o in st.outputs[i]}
    skip = produced | {t.name for t in graph.initializer} | {i.name for i in graph.input} | set(fed)
    skip |= set(_constant_values(graph, fed))
    out: dict[str, None] = {}
    for i in cone:
        for name in st.inputs[i]:
            if name not in skip:
                out[name] = None
    return list(out)


def _value_info(name: str, array: np.ndarray) -> onnx.ValueInfoProto:
    try:
        elem = helper.np_dtype_to_tensor_dtype(array.dtype)
    except Exception as e:  # e.g. a dtype ORT hands back that ONNX has no name for
        raise CutError(f"cannot describe cached tensor {name!r} of dtype {array.dtype}") from e
    shape: list[int | str] = list(array.shape)
    if shape:
        shape[0] = "onnxfi_batch"
    return helper.make_tensor_value_info(name, elem, shape)


def cut_model(
    model: onnx.ModelProto,
    start: Sequence[str],
    fed: Sequence[str],
    samples: dict[str, np.ndarray],
    nodes: Sequence[int] | None = None,
    outputs: Sequence[str] | None = None,
) -> Cut:
    """The forward cone of ``start`` as a model.

    ``fed`` are values the caller feeds itself (the site tensor; for a weight site, the weight, which is
    removed from the initializers). ``samples`` holds one cached array per value the cone may read from
    outside (as produced by a prefix run) and is used for their types; graph inputs keep their own type.
    ``nodes`` (indices in graph order) and ``outputs`` (values in ``samples``) cut a part of the cone
    instead, e.g. a weight's head (see :func:`weight_head`).
    """
    graph = model.graph
    if any(n.op_type in ("If", "Loop", "Scan") for n in graph.node):
        # Subgraphs may read outer values under names the cone analysis sees, but ORT's
        # handling of implicit inputs across a cut is not worth the risk: use the whole model.
        raise CutError("model has control-flow nodes")
    cone_idx = forward_cone(graph, start) if nodes is None else sorted(nodes)
    if not cone_idx:
        raise CutError("nothing reads the site")
    st = _structure(graph)
    cone = [graph.node[i] for i in cone_idx]
    produced = {o for i in cone_idx for o in st.outputs[i]}
    initializers = {t.name: t for t in graph.initializer}
    graph_inputs = {i.name: i for i in graph.input}
    needed_set: dict[str, None] = {}
    for i in cone_idx:
        for name in st.inputs[i]:
            if name not in produced:
                needed_set[name] = None
    needed = list(needed_set)
    fed_set = set(fed)
    constants = _constant_values(graph, fed)
    const_needed: set[str] = set()
    inputs: list[onnx.ValueInfoProto] = []
    input_names: list[str] = []
    cached: list[str] = []
    keep_inits: list[onnx.TensorProto] = []
    for name in needed:
        if name in fed_set:
            if name in samples:
                inputs.append(_value_info(name, samples[name]))
            elif name in initializers:
                t = initializers[name]
                inputs.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
            else:
                raise CutError(f"no type for fed value {name!r}")
            input_names.append(name)
        elif name in initializers:
            keep_inits.append(initializers[name])
        elif name in constants:  # Constant nodes and constant subexpressions: recomputed, so ORT folds them
            const_needed.add(name)
        elif name in graph_inputs:
            inputs.append(graph_inputs[name])
            input_names.append(name)
        elif name in samples:
            inputs.append(_value_info(name, samples[name]))
            input_names.append(name)
            cached.append(name)
        else:
            raise CutError(f"cone reads {name!r}, which is neither cached nor an input")
    if outputs is None:
        out_vi = [o for o in graph.output if o.name in produced]
        passthrough = [o.name for o in graph.output if o.name not in produced]
    else:
        declared = {o.name: o for o in graph.output}
        out_vi = [declared[n] if n in declared else _value_info(n, samples[n]) for n in outputs]
        passthrough = []
    # the nodes (and initializers) that compute the needed constants, in graph order
    todo = list(const_needed)
    const_node_ids: set[int] = set()  # indices into graph.node
    seen: set[str] = set()
    while todo:
        v = todo.pop()
        if v in seen:
            continue
        seen.add(v)
        idx = constants.get(v)
        if idx is None:
            if v in initializers and all(t.name != v for t in keep_inits):
                keep_inits.append(initializers[v])
            continue
        const_node_ids.add(idx)
        todo.extend(st.inputs[idx])
    const_nodes = [graph.node[i] for i in sorted(const_node_ids)]
    sub = helper.make_graph(const_nodes + cone, f"{graph.name}_suffix", inputs, out_vi, initializer=keep_inits)
    keep_vi = [v for v in graph.value_info if v.name in produced]
    sub.value_info.extend(keep_vi)
    suffix = helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    suffix.functions.extend(model.functions)
    checkpoint = _checkpoint(model, start, initializers, samples) if nodes is None else None
    return Cut(suffix, input_names, [o.name for o in out_vi], passthrough, cached, checkpoint)


def _checkpoint(
    model: onnx.ModelProto, start: Sequence[str], initializers: dict[str, onnx.TensorProto],
    samples: dict[str, np.ndarray],
) -> onnx.ModelProto | None:
    """The site's only consumer as a one-node model, when it is a shortcut op that reads nothing else
    but initializers. None when the shortcut does not apply."""
    graph = model.graph
    if len(start) != 1 or start[0] not in samples:
        return None
    name = start[0]
    if any(o.name == name for o in graph.output):
        return None
    consumers = [graph.node[i] for i in _structure(graph).readers.get(name, [])]
    if len(consumers) != 1:
        return None
    node = consumers[0]
    if node.op_type not in SHORTCUT_OPS or node.domain not in ("", "ai.onnx") or node.input[0] != name:
        return None
    if len(node.output) != 1 or any(i == name for i in node.input[1:]):
        return None
    others = [i for i in node.input[1:] if i]
    if any(i not in initializers for i in others):
        return None
    x = _value_info(name, samples[name])
    elem = x.type.tensor_type.elem_type
    if node.op_type == "QuantizeLinear":  # the zero point's type, else output_dtype (opset 21), else uint8
        zp = initializers.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        attr = next((a.i for a in node.attribute if a.name == "output_dtype" and a.i), 0)
        elem = zp.data_type if zp is not None else attr or onnx.TensorProto.UINT8
    y = helper.make_tensor_value_info(node.output[0], elem, None)
    g = helper.make_graph([node], "onnxfi_checkpoint", [x], [y], initializer=[initializers[i] for i in others])
    return helper.make_model(g, opset_imports=list(model.opset_import), ir_version=model.ir_version)
