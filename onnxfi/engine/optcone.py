"""The ``cone-opt`` path for weights: ONNX Runtime's own optimized cone, with the weight as it stands in
that graph fed per fault, so a fault costs one run and no session build.

A baked cone session is what the naive path computes for a weight fault, but ORT rewrites a constant
weight while it builds that session: it folds a following BatchNormalization into it (``W * s`` per output
channel), reorders a convolution filter into its blocked NCHWc layout (zero padded), transposes a Gemm
operand. A weight fed as an input is not rewritten, so a plain fed cone computes differently (the ``cone``
path re-runs what rounding could decide). Here the cone is optimized once, with the fault-free weight baked
in, and saved (``optimized_model_filepath``): the rewritten weight ``T`` is found in it, made the input of
that graph, and the graph is run with optimizations off. A fault in element ``i`` of ``W`` changes one
element of ``T``: position ``perm[i]``, value ``f(W'[i])``, where ``f`` is the identity or the fold's
``fl32(w * s[o])``.

Nothing is assumed: the layout and ``f`` are chosen among the candidates below only where ``T`` equals
``layout(f(W))`` bit for bit for every element (and no other candidate's does with another layout, and the
weight's values are distinct enough to tell layouts apart), and the fed optimized cone's fault-free
outputs must equal the baked cone's bit for bit. Float32 weights of one node, CPU provider. Anything else
raises :class:`onnxfi.cut.CutError` and the chooser takes the other paths.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import replace
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper

from onnxfi.cut import CutError, forward_cone
from onnxfi.engine.base import Outputs, Result
from onnxfi.engine.cone import WeightCone, _run_cut, _WeightRunner
from onnxfi.engine.rounding import same_bits
from onnxfi.faults import inject_element
from onnxfi.plan import Experiment
from onnxfi.runtime import concat_batches, make_session

__all__ = ["OptWeightRunner", "layouts", "bn_scale"]

# NCHWc block sizes of ORT's CPU kernels (MLAS: 8 with AVX2, 16 with AVX-512)
_BLOCKS = (8, 16)
# at least this share of a weight's elements must be distinct values to tell two layouts apart
_DISTINCT = 0.5


def _pad_axis(a: np.ndarray, axis: int, block: int, fill: Any) -> np.ndarray:
    n = a.shape[axis]
    extra = -n % block
    if not extra:
        return a
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, extra)
    return np.pad(a, widths, constant_values=fill)


def layouts(w: np.ndarray, fill: Any = 0) -> dict[str, np.ndarray]:
    """Every arrangement ORT's CPU optimizer may give a weight in its optimized graph, by name: as is, a
    2-D operand transposed, and a 4-D convolution filter (O, I, kH, kW) in the blocked layouts of its NCHWc
    kernels, O (and I) padded with ``fill`` to the block: ``OIHWBo`` (O/B, I, kH, kW, B) and ``OIHWBiBo``
    (O/B, I/B, kH, kW, B_i, B_o)."""
    out = {"as-is": w}
    if w.ndim == 2:
        out["transposed"] = np.ascontiguousarray(w.T)
    if w.ndim == 4:
        o, i, kh, kw = w.shape
        for b in _BLOCKS:
            p = _pad_axis(w, 0, b, fill)
            ob = p.shape[0] // b
            out[f"OIHWBo{b}"] = np.ascontiguousarray(p.reshape(ob, b, i, kh, kw).transpose(0, 2, 3, 4, 1))
            q = _pad_axis(p, 1, b, fill)
            ib = q.shape[1] // b
            out[f"OIHWBiBo{b}"] = np.ascontiguousarray(
                q.reshape(ob, b, ib, b, kh, kw).transpose(0, 2, 4, 5, 3, 1))
    return out


def _array(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for t in model.graph.initializer:
        if t.name == name:
            return onnx.numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    return onnx.numpy_helper.to_array(a.t)
    return None


def bn_scale(model: onnx.ModelProto, weight: str) -> np.ndarray | None:
    """The per-output-channel factor ORT's Conv+BatchNormalization fusion multiplies a Conv weight by,
    computed as ORT computes it in float32: ``scale / sqrt(var + epsilon)``; None when the weight's Conv
    does not feed a BatchNormalization alone."""
    users = [n for n in model.graph.node if weight in n.input]
    if len(users) != 1 or users[0].op_type != "Conv" or list(users[0].input).index(weight) != 1:
        return None
    out = users[0].output[0]
    readers = [n for n in model.graph.node if out in n.input]
    if len(readers) != 1 or readers[0].op_type != "BatchNormalization" or len(readers[0].input) < 5:
        return None
    bn = readers[0]
    gamma, var = _array(model, bn.input[1]), _array(model, bn.input[4])
    if gamma is None or var is None or gamma.dtype != np.float32 or var.dtype != np.float32:
        return None
    eps = np.float32(next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5))
    with np.errstate(all="ignore"):
        return (gamma / np.sqrt(var + eps)).astype(np.float32)


class OptWeightRunner(_WeightRunner):
    """ORT's optimized cone with the rewritten weight fed (see the module docstring)."""

    path = "cone-opt"

    def __init__(self, cone: WeightCone, reason: str = "") -> None:
        super().__init__(cone, reason)
        ctx, site = cone.ctx, cone.site
        if (ctx.cfg.provider or "cpu").lower() not in ("cpu", "cpuexecutionprovider"):
            raise CutError("ORT's optimized graph is read on the CPU provider only")
        w = cone.original
        if w.dtype != np.float32 or w.ndim == 0:
            raise CutError("only float32 weights are read in ORT's optimized graph")
        probe = w.reshape(-1)[:: max(1, w.size // 2**20)]  # at most about a million values: a sort per site
        if np.unique(probe).size < _DISTINCT * probe.size:
            raise CutError("too many equal values in the weight to tell its layout in ORT's graph")
        name = site.tensor_name
        cut = cone.bake_cut
        if sum(name in n.input for n in cut.model.graph.node) != 1:
            raise CutError("the weight is read by several nodes")
        t0 = time.perf_counter()
        optimized, built = self._optimized()
        # which rewrite of the weight the optimized graph holds: f (as is, or the BatchNormalization fold)
        # and the layout; exactly one (f, layout, initializer) must match bit for bit
        scale = bn_scale(cut.model, name)
        values: dict[str, np.ndarray] = {"as-is": w}
        if scale is not None and w.ndim >= 1 and scale.shape == (w.shape[0],):
            with np.errstate(all="ignore"):
                values["bn-fold"] = (w * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
        by_size: dict[int, list[onnx.TensorProto]] = {}
        for t in optimized.graph.initializer:
            if t.data_type == onnx.TensorProto.FLOAT:
                by_size.setdefault(int(np.prod(t.dims, dtype=np.int64)), []).append(t)
        found: list[tuple[str, str, onnx.TensorProto, np.ndarray]] = []
        for fname, v in values.items():
            for lname, arr in layouts(v).items():
                for t in by_size.get(arr.size, []):
                    got = onnx.numpy_helper.to_array(t)
                    if got.dtype == np.float32 and same_bits(got.reshape(-1), arr.reshape(-1)):
                        found.append((fname, lname, t, got))
        index_layouts = layouts(np.arange(w.size, dtype=np.int64).reshape(w.shape), -1) if found else {}
        perms = {lname: index_layouts[lname].reshape(-1) for _, lname, _, _ in found}
        if not found or len({(t.name, perms[lname].tobytes()) for _, lname, t, _ in found}) != 1 or len(
                {f for f, _, _, _ in found}) != 1:
            raise CutError("the weight's rewrite in ORT's optimized graph is not one known layout of it")
        fname, lname, tensor, t_value = found[0]
        self.rewrite = f"{fname}, {lname}"
        self.scale = scale if fname == "bn-fold" else None
        self.per_channel = w.size // w.shape[0]  # elements per output channel (the fold's axis 0)
        where = np.full(w.size, -1, dtype=np.int64)
        src = perms[lname]
        valid = src >= 0
        where[src[valid]] = np.flatnonzero(valid)
        self.where = where  # element i of the weight -> its position in the rewritten tensor
        self.t0 = t_value.reshape(-1).copy()
        self.t_shape = t_value.shape
        # the optimized graph with the rewritten weight an input named as the weight (the cut's feeds then
        # serve it unchanged)
        fed = onnx.ModelProto()
        fed.CopyFrom(optimized)
        if any(name in (*n.output,) for n in fed.graph.node) or any(
                i.name == name for i in fed.graph.initializer if i.name != tensor.name):
            raise CutError("the weight's name is taken in ORT's optimized graph")
        keep = [i for i in fed.graph.initializer if i.name != tensor.name]
        del fed.graph.initializer[:]
        fed.graph.initializer.extend(keep)
        for n in fed.graph.node:
            for k, x in enumerate(n.input):
                if x == tensor.name:
                    n.input[k] = name
        fed.graph.input.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(t_value.shape)))
        inputs = {i.name for i in fed.graph.input}
        self.fed_cut = replace(cut, model=fed, inputs=[x for x in cut.inputs if x in inputs or x == name])
        fed_bytes = fed.SerializeToString()
        self.session = make_session(fed_bytes, ctx.cfg.provider, optimization="none", threads=ctx.cfg.threads)
        # its session is bounded by --cache-mb (about twice the graph's bytes), not by --max-sessions: a plan
        # over more weights than that would otherwise rebuild this setup round after round
        self.sessions = 0
        self.cache_bytes += 2 * len(fed_bytes)
        golden = self._run(self.t0)
        # the baked reference (what the other paths classify against); where the fed optimized cone gives
        # the whole model's fault-free outputs bit for bit (the cached ones), those are it, without a run
        key = self._key()
        whole = concat_batches([{k: c[k] for k in ctx.output_names} for c in cone.chunks])
        if all(k in golden and same_bits(golden[k], g) for k, g in whole.items()):
            self.reference = ctx.shared(("reference", *key), lambda: whole)
        else:
            self.reference = ctx.shared(("reference", *key), lambda: _run_cut(
                ctx, cone.chunks, cut, name, built if built is not None else cone.baked_session(w),
                lambda c: w, False))
        if not all(k in golden and same_bits(golden[k], g) for k, g in self.reference.items()):
            raise CutError("ORT's optimized cone with the weight fed does not reproduce the baked cone bit for bit")
        self.golden = self.reference
        self.golden_time = time.perf_counter() - t0

    def _key(self) -> tuple[Any, ...]:
        """The baked cone's key (that of :meth:`WeightCone.reference`): its nodes and the prefix run."""
        cone, ctx = self.cone, self.ctx
        return tuple(forward_cone(ctx.model_proto().graph, cone.bake_start)), ctx.prefix_key(cone.expose)

    def _optimized(self) -> tuple[onnx.ModelProto, Any]:
        """ORT's optimized baked cone (shared by the weights whose baked cone is the same), and the session
        that wrote it where this call built one (None on a hit)."""
        cone, ctx = self.cone, self.ctx
        key = self._key()
        hit = ctx.optimized.get(key)
        if hit is not None:
            return hit, None
        with tempfile.TemporaryDirectory(prefix="onnxfi-opt-") as tmp:
            path = os.path.join(tmp, "cone.onnx")
            session = cone.baked_session(cone.original, optimized_path=path)
            model = onnx.load(path)
        ctx.optimized[key] = model
        # a layer's weights share it; kept while at most 4 and an eighth of --cache-mb (oldest dropped first)
        budget = ctx.cfg.cache_mb * 2**20 / 8
        while len(ctx.optimized) > 1 and (len(ctx.optimized) > 4 or sum(
                m.ByteSize() for m in ctx.optimized.values()) > budget):
            ctx.optimized.popitem(last=False)
        return model, session

    def _run(self, t: np.ndarray) -> Outputs:
        value = t.reshape(self.t_shape)
        return _run_cut(self.ctx, self.cone.chunks, self.fed_cut, self.site.tensor_name, self.session,
                        lambda c: value, True)

    def result(self, exp: Experiment) -> Result:
        i = exp.index
        # the faulty element alone, as inject_element computes it for the whole weight (same values, same draw)
        v = inject_element(self.cone.original.reshape(-1)[i: i + 1], 0, exp.fault_obj(),
                           np.random.default_rng(exp.seed))
        if self.scale is not None:  # the fold, as ORT computes it: fl32(w * s[o])
            o = i // self.per_channel
            with np.errstate(all="ignore"):
                v = (v * self.scale[o: o + 1]).astype(np.float32)
        t = self.t0.copy()
        t[self.where[i]] = v[0]
        return Result(self._run(t), self.golden, self.path)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"rewrite": self.rewrite}
