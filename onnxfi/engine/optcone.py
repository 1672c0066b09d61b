"""The ``opt-cut`` and ``cone-opt`` paths for weights: ONNX Runtime's own optimized graph, with the weight
as it stands in that graph fed per fault, so a fault costs one run and no session build.

A rebuilt model's session is what the naive path computes for a weight fault, but ORT rewrites a constant
weight while it builds that session: it folds a following BatchNormalization into it (``W * s`` per output
channel), reorders a convolution filter into its blocked NCHWc layout (zero padded), transposes a Gemm
operand, casts a float16 weight to float32 where its CPU kernels compute in float32. A weight fed as an
input is not rewritten, so a plain fed cone computes differently (the ``cone`` path re-runs what rounding
could decide). Here the graph is optimized once, with the fault-free weight baked in, and saved
(``optimized_model_filepath``): the rewritten weight ``T`` is found in it, made an input of that graph,
and the graph is run with optimizations off. A fault in element ``i`` of ``W`` changes one element of
``T``: position ``perm[i]``, value ``f(W'[i])``, where ``f`` is the identity, the cast, or the fold's
``fl(w * s[o])`` in the weight's type (float16 arithmetic as ORT does it: float32, rounded per step).

* ``opt-cut`` (:class:`OptCutRunner`): the whole model is optimized once per worker, and the weight's
  forward cone is cut from that graph, fed by a prefix run of it (one for every planned weight where it
  fits in ``--cache-mb``). The cone reads the values ORT computes there (float32 where ORT keeps a
  float16 chain in float32, NCHWc-blocked where it reorders), so even a float16 model, whose cut of the
  original graph is not faithful, is computed as its rebuilt session computes it. A convolution filter's
  fault computes only the block of output channels holding it, then the rest of the cone
  (``opt-slice``, :mod:`onnxfi.engine.optslice`). Where a kernel computes
  a fed weight differently from a constant one (ORT prepacks a constant Gemm operand), the small cone is
  built per fault with the weight baked in (``opt-cut-baked``).
* ``cone-opt`` (:class:`OptWeightRunner`): the weight's baked cone of the original graph, optimized by ORT
  once per cone (the fallback where ``opt-cut`` cannot be made).

Nothing is assumed: the layout and ``f`` are chosen among the candidates below only where ``T`` equals
``layout(f(W))`` bit for bit for every element (and no other candidate's does with another layout, and the
weight's values are distinct enough to tell layouts apart), and the fed graph's fault-free outputs must
equal the whole model's (``opt-cut``) or the baked cone's (``cone-opt``) bit for bit. Float32 and float16
weights of one node, CPU provider. Anything else raises :class:`onnxfi.cut.CutError` and the chooser takes
the other paths.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper

from onnxfi.cut import CutError, boundary, cut_model, forward_cone
from onnxfi.engine.base import Outputs, Result, Runner, is_runtime_failure
from onnxfi.engine.cone import WeightCone, _run_cut, _WeightRunner
from onnxfi.engine.context import Context
from onnxfi.engine.optslice import ConvSlice
from onnxfi.engine.rounding import same_bits, same_outputs
from onnxfi.errors import first_line
from onnxfi.faults import inject_element
from onnxfi.plan import Experiment
from onnxfi.runtime import concat_batches, make_session
from onnxfi.sites import Site

__all__ = ["OptWeightRunner", "OptCutRunner", "OPT_MIN_FAULTS", "Rewrite", "find_rewrite", "fed_graph", "layouts", "bn_scale"]

# planned faults at a weight from which a path with one session per weight (``cone-opt``, ``opt-cut``) is
# taken over one session per fault
OPT_MIN_FAULTS = 2
# NCHWc block sizes of ORT's CPU kernels (MLAS: 8 with AVX2, 16 with AVX-512)
_BLOCKS = (8, 16)
# at least this share of a weight's elements must be distinct values to tell two layouts apart
_DISTINCT = 0.5
# ... or at least this many (a float16 weight has at most 65,536 values)
_MIN_DISTINCT = 1024


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
    computed as ORT computes it, each step rounded to the weight's type (float32 or float16):
    ``scale / sqrt(var + epsilon)``; None when the weight's Conv does not feed a BatchNormalization alone
    (directly, or through an Add of its bias and Identity nodes, as Paddle's exporter writes it: ORT fuses
    and removes them first)."""
    users = [n for n in model.graph.node if weight in n.input]
    if len(users) != 1 or users[0].op_type != "Conv" or list(users[0].input).index(weight) != 1:
        return None
    out = users[0].output[0]
    readers = [n for n in model.graph.node if out in n.input]
    for _ in range(3):  # through the bias Add and Identity nodes ORT removes (if it does not, no rewrite matches)
        if len(readers) != 1 or readers[0].op_type not in ("Add", "Identity"):
            break
        readers = [n for n in model.graph.node if readers[0].output[0] in n.input]
    if len(readers) != 1 or readers[0].op_type != "BatchNormalization" or len(readers[0].input) < 5:
        return None
    bn = readers[0]
    gamma, var = _array(model, bn.input[1]), _array(model, bn.input[4])
    if gamma is None or var is None or gamma.dtype != var.dtype or gamma.dtype not in (np.float32, np.float16):
        return None
    t = gamma.dtype.type
    eps = np.float32(next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5))
    f32 = np.float32
    with np.errstate(all="ignore"):  # ORT's float16 initializer arithmetic: float32, rounded per step
        root = np.sqrt((var.astype(f32) + eps).astype(t).astype(f32)).astype(t)
        return (gamma.astype(f32) / root.astype(f32)).astype(t)


def _fold(w: np.ndarray, scale: np.ndarray, channel: np.ndarray | int) -> np.ndarray:
    """``fl(w * s[o])`` in the weight's type, as ORT's fusion computes it (float32 product, rounded)."""
    s = scale[channel] if isinstance(channel, np.ndarray) else scale[channel: channel + 1]
    with np.errstate(all="ignore"):
        return (w.astype(np.float32) * s.astype(np.float32)).astype(w.dtype)


def _distinct_enough(w: np.ndarray) -> bool:
    """Whether a weight's values tell its layouts apart: at most half of them one value (a pruned weight's
    zeros could sit anywhere), and distinct values in at least half of them or in ``_MIN_DISTINCT`` (a
    float16 weight has at most 65,536 values; a structured reordering other than the one matched would move
    some of its distinct values). Checked on at most about a million values: a sort per site."""
    probe = np.ascontiguousarray(w.reshape(-1)[:: max(1, w.size // 2**20)])
    _, counts = np.unique(probe.view(f"u{probe.dtype.itemsize}"), return_counts=True)  # bit patterns
    return bool(counts.max() <= _DISTINCT * probe.size and counts.size >= min(_DISTINCT * probe.size, _MIN_DISTINCT))


@dataclass
class Rewrite:
    """How an optimized graph holds a weight ``W``: tensor ``tensor`` (flat fault-free value ``t0``, shape
    ``t_shape``) is ``layout(f(W))``; element ``i`` of ``W`` is its element ``where[i]``. ``f`` is ``value``:
    ``as-is``, ``cast`` (a float16 weight in float32) or ``bn-fold`` (``fl(w * scale[o])``, then cast where
    ``t0`` is float32)."""

    value: str
    layout: str
    tensor: str
    t0: np.ndarray
    t_shape: tuple[int, ...]
    where: np.ndarray
    scale: np.ndarray | None
    per_channel: int  # elements per output channel of W (the fold's axis 0)

    @contextlib.contextmanager
    def faulty(self, original: np.ndarray, exp: Experiment) -> Iterator[np.ndarray]:
        """The rewritten tensor with ``exp``'s fault, while the block runs: the faulty element alone, as
        ``inject_element`` computes it for the whole weight (same values, same draw), through ``f``, written
        into ``t0`` and restored after (no copy of the weight per fault)."""
        i = exp.index
        v = inject_element(original.reshape(-1)[i: i + 1], 0, exp.fault_obj(), np.random.default_rng(exp.seed))
        if self.scale is not None:
            v = _fold(v, self.scale, i // self.per_channel)
        at = slice(int(self.where[i]), int(self.where[i]) + 1)
        kept = self.t0[at].copy()
        self.t0[at] = v.astype(self.t0.dtype)
        try:
            yield self.t0.reshape(self.t_shape)
        finally:
            self.t0[at] = kept


def find_rewrite(optimized: onnx.ModelProto, w: np.ndarray, scale: np.ndarray | None,
                 decoded: dict[str, np.ndarray] | None = None) -> Rewrite:
    """The one rewrite of ``w`` in ``optimized``'s initializers (see the module docstring), or CutError.
    ``scale``: the BatchNormalization factor of ``w``'s Conv (:func:`bn_scale`), if any; ``decoded``: the
    initializers' arrays decoded so far, by name (filled in; calls on one graph may share it)."""
    if w.dtype not in (np.float32, np.float16) or w.ndim == 0:
        raise CutError("only float32 and float16 weights are read in ORT's optimized graph")
    if not _distinct_enough(w):
        raise CutError("too many equal values in the weight to tell its layout in ORT's graph")
    values: dict[str, np.ndarray] = {"as-is": w}
    if scale is not None and w.ndim >= 1 and scale.shape == (w.shape[0],) and scale.dtype == w.dtype:
        values["bn-fold"] = _fold(w, scale, np.arange(w.shape[0]).reshape((-1,) + (1,) * (w.ndim - 1)))
    if w.dtype == np.float16:  # ORT computes float16 on the CPU in float32: the weight cast, its Cast folded
        values.update({f"{k}, cast" if k != "as-is" else "cast": v.astype(np.float32) for k, v in list(values.items())})
    types: dict[int, Any] = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16}
    by_size: dict[int, list[onnx.TensorProto]] = {}
    for t in optimized.graph.initializer:
        if t.data_type in types:
            by_size.setdefault(int(np.prod(t.dims, dtype=np.int64)), []).append(t)
    decoded = {} if decoded is None else decoded
    found: list[tuple[str, str, onnx.TensorProto, np.ndarray]] = []
    for fname, v in values.items():
        for lname, arr in layouts(v).items():
            for t in by_size.get(arr.size, []):
                if types[t.data_type] != arr.dtype:
                    continue
                got = decoded.get(t.name)
                if got is None:
                    got = decoded[t.name] = onnx.numpy_helper.to_array(t)
                if same_bits(got.reshape(-1), arr.reshape(-1)):
                    found.append((fname, lname, t, got))
    index_layouts = layouts(np.arange(w.size, dtype=np.int64).reshape(w.shape), -1) if found else {}
    perms = {lname: index_layouts[lname].reshape(-1) for _, lname, _, _ in found}
    if not found or len({(t.name, perms[lname].tobytes()) for _, lname, t, _ in found}) != 1 or len(
            {f for f, _, _, _ in found}) != 1:
        raise CutError("the weight's rewrite in ORT's optimized graph is not one known layout of it")
    fname, lname, tensor, t_value = found[0]
    where = np.full(w.size, -1, dtype=np.int64)
    src = perms[lname]
    valid = src >= 0
    where[src[valid]] = np.flatnonzero(valid)
    return Rewrite(fname, lname, tensor.name, t_value.reshape(-1).copy(), tuple(t_value.shape), where,
                   scale if fname.startswith("bn-fold") else None, w.size // max(1, w.shape[0]))


def fed_graph(optimized: onnx.ModelProto, rewrite: Rewrite, name: str) -> onnx.ModelProto:
    """``optimized`` with the rewritten weight an input named ``name`` (the weight's name)."""
    if sum(rewrite.tensor in n.input for n in optimized.graph.node) != 1:
        # e.g. ORT shares one initializer between weights of equal values: a fault in one is not in the other
        raise CutError("the weight's rewrite is read by several nodes in ORT's optimized graph")
    fed = onnx.ModelProto()
    fed.CopyFrom(optimized)
    if any(name in (*n.output,) for n in fed.graph.node) or any(
            i.name == name for i in fed.graph.initializer if i.name != rewrite.tensor) or any(
            i.name == name for i in fed.graph.input):
        raise CutError("the weight's name is taken in ORT's optimized graph")
    keep = [i for i in fed.graph.initializer if i.name != rewrite.tensor]
    dtype = fed.graph.initializer[[i.name for i in fed.graph.initializer].index(rewrite.tensor)].data_type
    del fed.graph.initializer[:]
    fed.graph.initializer.extend(keep)
    for n in fed.graph.node:
        for k, x in enumerate(n.input):
            if x == rewrite.tensor:
                n.input[k] = name
    fed.graph.input.append(onnx.helper.make_tensor_value_info(name, dtype, list(rewrite.t_shape)))
    return fed


def _rewrite(ctx: Context, site: Site) -> Rewrite:
    """:func:`find_rewrite` of a main-graph weight in the context's optimized whole model (kept per site,
    a failure too)."""
    hit = ctx.rewrites.get(site.name)
    if hit is None:
        try:
            hit = find_rewrite(ctx.whole_optimized(), ctx.index.weight_array(site),
                               bn_scale(ctx.model_proto(), site.tensor_name), ctx.optimized_arrays)
        except CutError as e:
            hit = e
        ctx.rewrites[site.name] = hit
    if isinstance(hit, CutError):
        raise hit
    return hit


def _optimized_prefix(ctx: Context, rw: Rewrite) -> tuple[list[dict[str, np.ndarray]], int]:
    """The values the cone of ``rw``'s tensor reads in the optimized whole model, over the data: from one
    prefix run for every planned weight (:meth:`Context.planned_weights` with ``OPT_MIN_FAULTS``) where it
    fits in ``--cache-mb`` (what the context keeps for the campaign: 0 bytes to this runner), else a run of
    its own."""
    graph = ctx.whole_optimized()
    mine = boundary(graph, [rw.tensor], [rw.tensor])
    planned = ctx.planned_optimized
    if planned is None:
        ctx.planned_optimized = False
        names: dict[str, None] = {}
        for site in ctx.planned_weights(OPT_MIN_FAULTS):
            try:
                other = _rewrite(ctx, site)
            except CutError:
                continue
            names.update(dict.fromkeys(boundary(graph, [other.tensor], [other.tensor])))
        ctx.optimized_arrays.clear()  # the planned weights' rewrites are kept (ctx.rewrites): not the decoding
        if len(names) > len(mine):
            try:
                chunks, used = ctx.optimized_prefix(list(names), keep=True)
                ctx.planned_optimized = (chunks, frozenset(names), used)
            except CutError:  # over --cache-mb: a run per cone
                pass
        planned = ctx.planned_optimized
    if planned and planned[1].issuperset(mine):
        return planned[0], 0
    return ctx.optimized_prefix(mine)


def _feedable(ctx: Context, model: onnx.ModelProto, name: str) -> None:
    """CutError unless weight ``name`` of ``model`` may be fed in ORT's optimized graph: the CPU provider,
    one node reading it, and not a model output (the fed tensor is in ORT's layout, and each fault is
    written into it in place)."""
    if (ctx.cfg.provider or "cpu").lower() not in ("cpu", "cpuexecutionprovider"):
        raise CutError("ORT's optimized graph is read on the CPU provider only")
    if sum(name in n.input for n in model.graph.node) != 1:
        raise CutError("the weight is read by several nodes")
    if name in ctx.output_names:
        raise CutError("the weight is a model output")


class OptWeightRunner(_WeightRunner):
    """ORT's optimized cone with the rewritten weight fed (see the module docstring)."""

    path = "cone-opt"

    def __init__(self, cone: WeightCone, reason: str = "") -> None:
        super().__init__(cone, reason)
        ctx, site = cone.ctx, cone.site
        w = cone.original
        if w.dtype not in (np.float32, np.float16) or w.ndim == 0:  # (before the optimized cone is built)
            raise CutError("only float32 and float16 weights are read in ORT's optimized graph")
        name = site.tensor_name
        cut = cone.bake_cut
        _feedable(ctx, cut.model, name)
        t0 = time.perf_counter()
        optimized, built = self._optimized()
        self.rw = find_rewrite(optimized, w, bn_scale(cut.model, name))
        self.rewrite = f"{self.rw.value}, {self.rw.layout}"
        fed = fed_graph(optimized, self.rw, name)
        inputs = {i.name for i in fed.graph.input}
        self.fed_cut = replace(cut, model=fed, inputs=[x for x in cut.inputs if x in inputs or x == name])
        fed_bytes = fed.SerializeToString()
        self.session = make_session(fed_bytes, ctx.cfg.provider, optimization="none", threads=ctx.cfg.threads)
        # its session is bounded by --cache-mb (about twice the graph's bytes), not by --max-sessions: a plan
        # over more weights than that would otherwise rebuild this setup round after round
        self.sessions = 0
        self.cache_bytes += 2 * len(fed_bytes)
        golden = self._run(self.rw.t0)
        # the baked reference (what the other paths classify against); where the fed optimized cone gives
        # the whole model's fault-free outputs bit for bit (the cached ones), those are it, without a run
        key = self._key()
        whole = concat_batches([{k: c[k] for k in ctx.output_names} for c in cone.chunks])
        if same_outputs(golden, whole):
            self.reference = ctx.shared(("reference", *key), lambda: whole)
        else:
            self.reference = ctx.shared(("reference", *key), lambda: _run_cut(
                ctx, cone.chunks, cut, name, built if built is not None else cone.baked_session(w),
                lambda c: w, False))
        if not same_outputs(golden, self.reference):
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
        value = t.reshape(self.rw.t_shape)
        return _run_cut(self.ctx, self.cone.chunks, self.fed_cut, self.site.tensor_name, self.session,
                        lambda c: value, True)

    def result(self, exp: Experiment) -> Result:
        with self.rw.faulty(self.cone.original, exp) as t:
            return Result(self._run(t), self.golden, self.path)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"rewrite": self.rewrite}


class OptCutRunner(Runner):
    """Weights whose cut of the model is not faithful (a float16 model: ORT keeps its chains in float32
    across the cut, which a cut rounds to float16) or that ``cone-opt`` cannot take: the forward cone of
    the weight cut from ORT's optimized *whole* model (written once per worker), with the weight as ORT
    rewrote it fed per fault (see the module docstring). The cone's inputs are the values ORT computes in
    that graph (float32 where it keeps a chain in float32, NCHWc-blocked where it reorders), from a prefix
    run of it, so the cut is the graph a rebuilt model's session runs; it runs with optimizations off. A
    fault costs one cone run and no session build. Its fault-free outputs must equal the whole model's
    cached outputs bit for bit. A convolution filter's fault runs its output block alone and then the rest
    of the cone (``opt-slice``, :class:`onnxfi.engine.optslice.ConvSlice`) where that checks out."""

    path = "opt-cut"

    def __init__(self, ctx: Context, site: Site, reason: str = "") -> None:
        super().__init__(ctx, site, reason)
        if site.graph:
            raise CutError("site is inside a subgraph")
        proto = ctx.model_proto()
        name = site.tensor_name
        _feedable(ctx, proto, name)
        t0 = time.perf_counter()
        self.original: np.ndarray = ctx.index.weight_array(site)
        optimized = ctx.whole_optimized()
        self.rw = _rewrite(ctx, site)
        self.rewrite = f"{self.rw.value}, {self.rw.layout}"
        self.chunks, self.cache_bytes = _optimized_prefix(ctx, self.rw)
        self.golden = ctx.model_golden()
        self.sessions = 0  # bounded by --cache-mb (about twice the cone's bytes), as cone-opt's
        self.head: bytes | None = None
        self.slice: ConvSlice | None = None
        self.slice_reason = ""
        try:  # a convolution filter: the output block of the fault alone, then the rest of the cone
            self.slice = ConvSlice(ctx, optimized, self.rw.tensor, self.rw.layout, self.rw.t0, self.rw.t_shape,
                                   self.chunks, self.golden)
        except Exception as e:  # (ORT refusing the Conv alone too: the whole cone is run instead)
            if not isinstance(e, CutError) and not is_runtime_failure(e):
                raise
            self.slice_reason = first_line(e)
        else:
            self.path = "opt-slice"
            self.cache_bytes += self.slice.cache_bytes
            self.golden_time = time.perf_counter() - t0
            return
        fed = fed_graph(optimized, self.rw, name)
        value = self.rw.t0.reshape(self.rw.t_shape)
        self.cut = cut_model(fed, [name], [name], {**self.chunks[0], name: value})
        cut_bytes = self.cut.model.SerializeToString()
        self.session: Any = make_session(cut_bytes, ctx.cfg.provider, optimization="none", threads=ctx.cfg.threads)
        self.cache_bytes += 2 * len(cut_bytes)
        if not same_outputs(self._run(value), self.golden):
            # Some kernels compute differently with a constant weight (ORT prepacks a constant Gemm/MatMul
            # operand): the cone with the weight baked in, a session per fault (a small cone's build, not the
            # whole model's). The cut serialized once without the weight; per fault the faulty tensor is
            # appended as an initializer (protobuf merges the repeated field).
            head = onnx.ModelProto()
            head.CopyFrom(self.cut.model)
            keep = [i for i in head.graph.input if i.name != name]
            del head.graph.input[:]
            head.graph.input.extend(keep)
            self.head = head.SerializeToString()
            self.session = None  # one per fault, dropped after its run
            self.cache_bytes -= len(cut_bytes)
            self.path = "opt-cut-baked"
            if not same_outputs(self._run(value), self.golden):
                raise CutError("the cone of ORT's optimized model does not reproduce the model bit for bit")
        self.golden_time = time.perf_counter() - t0

    def _run(self, t: np.ndarray) -> Outputs:
        session, feed = self.session, True
        if self.head is not None:  # baked: this tensor as the weight's initializer
            extra = onnx.ModelProto(graph=onnx.GraphProto(initializer=[
                onnx.numpy_helper.from_array(np.ascontiguousarray(t), self.site.tensor_name)]))
            session = make_session(self.head + extra.SerializeToString(), self.ctx.cfg.provider,
                                   optimization="none", threads=self.ctx.cfg.threads)
            feed = False
        return _run_cut(self.ctx, self.chunks, self.cut, self.site.tensor_name, session, lambda c: t, feed)

    def result(self, exp: Experiment) -> Result:
        with self.rw.faulty(self.original, exp) as t:
            if self.slice is None:
                return Result(self._run(t), self.golden, self.path)
            out = self.slice.run(self.rw.t0, int(self.rw.where[exp.index]), self.ctx.cfg.shortcuts)
        if out is None:  # the fault's output block is the fault-free one bit for bit: nothing after it changes
            return Result(self.golden, self.golden, self.path + "+shortcut")
        return Result(out, self.golden, self.path)

    def describe(self) -> dict[str, Any]:
        if self.slice is not None:
            return super().describe() | {"rewrite": self.rewrite, "blocks": self.slice.blocks,
                                         "rest_inputs": list(self.slice.rest.inputs)}
        return super().describe() | {"rewrite": self.rewrite, "cut_inputs": list(self.cut.inputs),
                                     "not_sliced": self.slice_reason}
