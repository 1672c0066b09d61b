"""The ``opt-slice`` refinement of ``opt-cut`` for convolution weights: a fault in one element of a Conv
filter changes one output channel of that Conv, so per fault only the block of output channels holding it
is computed, and the rest of the cone is fed the Conv's fault-free output with that block replaced.

In ORT's optimized graph a float convolution is an NCHWc ``Conv`` (``com.microsoft.nchwc``) whose filter is
blocked ``OIHWBiBo``/``OIHWBo`` with ``B`` output channels per block (8 or 16), or an NCHW ``Conv`` /
``FusedConv`` with the filter as is (a block of one channel). Block ``k`` of the filter is contiguous in
the rewritten tensor, and block ``k`` of the output is ``Y.reshape(N, blocks, -1)[:, k]`` in both layouts,
as is block ``k`` of a fused ``Sum`` input. The Conv alone with the block's filter, the bias's block and
the Sum's block is the *slice*; the cone after the Conv is the *rest*, fed ``Y``.

Nothing is assumed: the whole Conv's fault-free output is computed once per chunk, every block's slice
must reproduce its block of it bit for bit, and the rest fed that output must reproduce the whole model's
outputs bit for bit. A fault whose slice output equals the fault-free block bit for bit is masked without
running the rest (``+shortcut``, exact: the rest reads the same values).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxfi.cut import CutError, cut_model
from onnxfi.engine.base import Outputs
from onnxfi.engine.cone import _run_cut
from onnxfi.engine.context import Context
from onnxfi.engine.rounding import same_bits, same_outputs
from onnxfi.runtime import make_session

__all__ = ["ConvSlice"]

# (domain, op) of the convolutions whose output channels are computed independently of each other, with the
# index of their fused Sum input (-1: none)
_CONVS = {("com.microsoft.nchwc", "Conv"): 3, ("", "Conv"): -1, ("ai.onnx", "Conv"): -1,
          ("com.microsoft", "FusedConv"): 3}


def _blocks(layout: str, t_shape: tuple[int, ...]) -> int:
    """How many blocks of output channels a filter rewritten to ``layout`` has."""
    for prefix in ("OIHWBiBo", "OIHWBo"):
        if layout.startswith(prefix):
            b = int(layout[len(prefix):])
            if t_shape[0] < b or t_shape[0] % b:  # (ORT keeps the filter 4-D, its O padded to the block)
                raise CutError(f"the blocked filter's shape {list(t_shape)} is not whole blocks of {b}")
            return t_shape[0] // b
    if layout == "as-is":
        return t_shape[0]
    raise CutError(f"the filter's layout {layout} has no output-channel blocks")


class ConvSlice:
    """The slice and the rest of a Conv weight's cone in ORT's optimized graph ``graph`` (see the module
    docstring). ``tensor``: the rewritten filter's name in ``graph``, ``layout`` and ``t0`` (flat, fault-free)
    its layout and value; ``chunks``: the values the weight's cone reads, per chunk; ``golden``: the whole
    model's outputs."""

    def __init__(self, ctx: Context, graph: onnx.ModelProto, tensor: str, layout: str, t0: np.ndarray,
                 t_shape: tuple[int, ...], chunks: list[dict[str, np.ndarray]], golden: Outputs) -> None:
        users = [n for n in graph.graph.node if tensor in n.input]
        if len(users) != 1:
            raise CutError("the filter is read by several nodes")
        node = users[0]
        sum_at = _CONVS.get((node.domain, node.op_type))
        if sum_at is None or list(node.input).index(tensor) != 1:
            raise CutError(f"the weight's node is {node.op_type}, not a convolution's filter")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("group", 1) != 1 or len(t_shape) < 3:
            raise CutError("a grouped convolution: an output block reads a part of the input")
        if len(node.output) != 1 or node.output[0] in {o.name for o in graph.graph.output}:
            raise CutError("the convolution's output is a model output")
        self.ctx, self.chunks, self.golden = ctx, chunks, golden
        self.blocks = _blocks(layout, t_shape)
        self.t0, self.t_shape = t0, t_shape
        self.slice_shape = (t_shape[0] // self.blocks, *t_shape[1:])
        self.y = node.output[0]
        inits = {t.name: t for t in graph.graph.initializer}
        self.x = node.input[0]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        self.bias: np.ndarray | None = None
        if bias:
            if bias not in inits:
                raise CutError("the convolution's bias is not a constant")
            self.bias = onnx.numpy_helper.to_array(inits[bias])
            if self.bias.shape != (t_shape[0],):
                raise CutError("the convolution's bias does not match its filter")
        self.sum = node.input[sum_at] if sum_at > 0 and len(node.input) > sum_at and node.input[sum_at] else ""
        for name in (self.x, self.sum):
            if name and name not in chunks[0]:
                raise CutError(f"the convolution reads {name!r}, which is not cached")
        if len(node.input) > max(3, sum_at + 1):
            raise CutError("the convolution has inputs this path does not slice")
        dtype = helper.np_dtype_to_tensor_dtype(t0.dtype)
        # the one-node model's own input names (x, w, b, s): none of the graph's can collide with them
        ins = [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(chunks[0][self.x].dtype), None),
               helper.make_tensor_value_info("w", dtype, None)]
        names = ["x", "w"]
        if self.bias is not None:
            ins.append(helper.make_tensor_value_info("b", helper.np_dtype_to_tensor_dtype(self.bias.dtype), None))
            names.append("b")
        if self.sum:
            names += [""] * (sum_at - len(names)) + ["s"]
            ins.append(helper.make_tensor_value_info("s", helper.np_dtype_to_tensor_dtype(chunks[0][self.sum].dtype),
                                                     None))
        conv = helper.make_node(node.op_type, names, ["y"], domain=node.domain, **attrs)
        out = [helper.make_tensor_value_info("y", dtype, None)]
        model = helper.make_model(helper.make_graph([conv], "slice", ins, out),
                                  opset_imports=list(graph.opset_import), ir_version=graph.ir_version)
        threads = ctx.cfg.threads
        self.conv = make_session(model.SerializeToString(), ctx.cfg.provider, optimization="none", threads=threads)
        # the Conv's fault-free output per chunk (the same node, the whole filter), kept: a quarter of
        # --cache-mb at most (the prefix values the cone reads are of the same order)
        self.y0 = [self._conv(chunks[0], None, t0.reshape(t_shape))]
        if self.y0[0].nbytes * len(chunks) > ctx.cfg.cache_mb * 2**20 / 4:
            raise CutError("the convolution's output over the data is over a quarter of --cache-mb")
        self.y0 += [self._conv(c, None, t0.reshape(t_shape)) for c in chunks[1:]]
        if self.y0[0].dtype != t0.dtype or self.y0[0].ndim < 2 or self.y0[0].shape[1] != t_shape[0]:
            raise CutError("the convolution's output does not match its filter")
        if self.sum and any(c[self.sum].shape != y.shape for c, y in zip(chunks, self.y0)):
            raise CutError("the convolution's Sum input is broadcast: its blocks are not the output's")
        for k in range(self.blocks):
            w = self.block(t0, k)
            if not all(same_bits(self._conv(c, k, w), self.view(y, k)) for c, y in zip(chunks, self.y0)):
                raise CutError("a block of the convolution alone does not reproduce its output bit for bit")
        self.rest = cut_model(graph, [self.y], [self.y], {**chunks[0], self.y: self.y0[0]})
        rest_bytes = self.rest.model.SerializeToString()
        self.session = make_session(rest_bytes, ctx.cfg.provider, optimization="none", threads=threads)
        if not same_outputs(self._rest(), self.golden):
            raise CutError("the cone after the convolution does not reproduce the model bit for bit")
        self.cache_bytes = sum(y.nbytes for y in self.y0) + 2 * len(rest_bytes) + 2 * model.ByteSize()

    def block(self, t: np.ndarray, k: int) -> np.ndarray:
        """Block ``k`` of the (flat) rewritten filter ``t``: a view."""
        return t.reshape(self.blocks, -1)[k].reshape(self.slice_shape)

    def view(self, y: np.ndarray, k: int) -> np.ndarray:
        """Block ``k`` of the Conv's output (or Sum input) ``y`` (a view; NCHW or NCHWc alike)."""
        return y.reshape(y.shape[0], self.blocks, -1)[:, k]

    def _conv(self, chunk: dict[str, np.ndarray], k: int | None, w: np.ndarray) -> np.ndarray:
        """The Conv over ``chunk`` with filter ``w``: block ``k`` of it, flattened per sample as :meth:`view`
        gives it (``k`` None: the whole output)."""
        feeds: dict[str, Any] = {"x": chunk[self.x], "w": w}
        if self.bias is not None:
            feeds["b"] = self.bias if k is None else self.bias.reshape(self.blocks, -1)[k]
        if self.sum:
            s = chunk[self.sum]
            feeds["s"] = s if k is None else np.ascontiguousarray(self.view(s, k)).reshape(
                (s.shape[0], self.slice_shape[0], *s.shape[2:]))
        y = np.asarray(self.conv.run(["y"], feeds)[0])
        return y if k is None else y.reshape(y.shape[0], -1)

    def _rest(self) -> Outputs:
        y0 = {id(c): y for c, y in zip(self.chunks, self.y0)}
        return _run_cut(self.ctx, self.chunks, self.rest, self.y, self.session, lambda c: y0[id(c)], True)

    @contextlib.contextmanager
    def _written(self, k: int, ys: list[np.ndarray]) -> Iterator[None]:
        """The Conv's fault-free outputs with block ``k`` replaced by ``ys`` (per chunk), while the block
        runs; restored after."""
        kept = [self.view(y, k).copy() for y in self.y0]
        try:
            for y, v in zip(self.y0, ys):
                self.view(y, k)[...] = v
            yield
        finally:
            for y, v in zip(self.y0, kept):
                self.view(y, k)[...] = v

    def run(self, t: np.ndarray, at: int, shortcut: bool) -> Outputs | None:
        """The model's outputs with the rewritten filter ``t`` (flat), which differs from the fault-free one
        at element ``at`` alone; None when the slice's output is the fault-free block bit for bit (masked)
        and ``shortcut`` allows deciding it without running the rest."""
        k = at // (self.t0.size // self.blocks)
        w = self.block(t, k)
        ys = [self._conv(c, k, w) for c in self.chunks]
        if shortcut and all(same_bits(y, self.view(y0, k)) for y, y0 in zip(ys, self.y0)):
            return None
        with self._written(k, ys):
            return self._rest()
