"""What every runner works from: the model and its sites, the data, and the fault-free runs shared
between sites (the prefix cache and the whole model's outputs). Runners receive a Context; they never
import the engine, and report their path through their own attributes, never into the context."""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxfi.cut import CutError, boundary, weight_start
from onnxfi.data import Dataset, make_dataset
from onnxfi.engine.config import EngineConfig
from onnxfi.engine.rounding import noise_bounds, same_bits
from onnxfi.errors import OnnxfiError
from onnxfi.model import LoadedModel, inferred_shapes, load_model
from onnxfi.runtime import concat_batches, make_session, run_batches, run_chunks
from onnxfi.scoring import OutputChoice, choose_output, describe_shapes
from onnxfi.sites import Site, SiteIndex, enumerate_sites

__all__ = ["Context"]

Chunks = list[dict[str, np.ndarray]]
Outputs = dict[str, np.ndarray]


class Context:
    """The model, its site index and the campaign data, loaded once per worker, and the fault-free runs
    that several sites share."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.loaded: LoadedModel = load_model(cfg.model_path, cfg.input_shapes, check=cfg.check)
        self.index: SiteIndex = enumerate_sites(self.loaded.model, self.loaded.value_shapes)
        specs = self.loaded.inputs()
        self.data: Dataset = make_dataset(specs, cfg.data_path, cfg.data_loader, seed=cfg.data_seed,
                                          samples=cfg.samples, overrides=cfg.input_shapes, allow_cast=cfg.allow_cast)
        cfg.batch = self.data.batch_for(specs, cfg.batch)  # a model with a fixed batch dim runs that many
        self.output_names: list[str] = [o.name for o in self.loaded.outputs()]
        if cfg.output is not None and cfg.output not in self.output_names:  # before running the model
            shapes = describe_shapes((o.name, o.shape) for o in self.loaded.outputs())
            raise OnnxfiError(f"--output {cfg.output!r} is not a model output; outputs: {shapes}")
        self.prefix_runs = 0  # fault-free prefix runs made (sites that expose the same values share one)
        self.optimized_prefix_runs = 0  # the same, of ORT's optimized whole model (the opt-cut path)
        self._proto: onnx.ModelProto | None = None
        self._model_bytes: bytes | None = None
        self._value_map: dict[str, ir.Value] | None = None
        self._prefixes: OrderedDict[tuple[str, ...], tuple[Chunks, int]] = OrderedDict()
        # the prefix run exposing what every planned baked weight cone reads (None: not made yet; False:
        # not possible, e.g. over the cache budget) and its names
        self._planned: tuple[Chunks, int, frozenset[str]] | None | bool = None
        self._shared: OrderedDict[tuple[Any, ...], dict[str, np.ndarray]] = OrderedDict()
        # ORT's optimized baked cones (onnxfi.engine.optcone), by cone
        self.optimized: OrderedDict[tuple[Any, ...], onnx.ModelProto] = OrderedDict()
        self._whole_optimized: onnx.ModelProto | Exception | None = None
        self._optimized_bytes: bytes | None = None
        # onnxfi.engine.optcone's findings in it: each weight's rewrite (or why none), its decoded
        # initializers, and the planned weights' prefix run (chunks, names, bytes; None: not made yet; False:
        # not possible)
        self.rewrites: dict[str, Any] = {}
        self.optimized_arrays: dict[str, np.ndarray] = {}
        self.planned_optimized: Any = None
        self._sample_shapes: dict[str, tuple[tuple[int | str | None, ...], bool]] | None = None
        self._model_outputs: Chunks | None = None
        self._joined: Outputs | None = None
        self.model_time = 0.0  # seconds of the last whole-model fault-free run (without the session build)
        # The scored output and how it is read, chosen once per worker from the clean run over the eval data
        # (onnxfi.scoring: the same model and data give every worker the same choice); the run is kept.
        clean = self.model_golden()
        self.choice: OutputChoice = choose_output(clean, self.data.labels, cfg.output, cfg.task,
                                                   samples=self.data.size)
        self.primary = self.choice.name

    def session(self, model: ir.Model | bytes, threads: int | None = None, optimized_path: str | None = None) -> Any:
        """A session on the configured provider (``threads`` overrides the configured thread count;
        ``optimized_path``: where ORT writes the graph it optimized)."""
        return make_session(model, self.cfg.provider, threads=threads if threads is not None else self.cfg.threads,
                            optimized_path=optimized_path)

    def run_all(self, session: Any, extra: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Every model output of ``session`` over all the data (``extra`` feeds added to each batch)."""
        return run_batches(session, self.data, self.output_names, self.cfg.batch, extra)

    def model_proto(self) -> onnx.ModelProto:
        if self._proto is None:
            self._proto = ir.to_proto(self.loaded.model)
        return self._proto

    def prefix(self, expose: list[str]) -> tuple[Chunks, int]:
        """The fault-free model run once over the data with ``expose`` added to its outputs: per batch,
        every output, every exposed value and the feeds; and the bytes the exposed values take (0 for the
        planned prefix run, which the context keeps for the whole campaign).

        Sites that need the same values (a layer's weight and bias) share one run. The exposed model is
        the serialized model with a ModelProto holding only the extra graph outputs appended (protobuf
        merges the repeated field), so no copy of the model is made."""
        planned = self._planned_prefix()
        if planned is not None and planned[2].issuperset(expose):
            return planned[0], 0  # held by the context for the whole campaign, not by the runners using it
        return self._shared_prefix(expose, optimized=False)

    def _shared_prefix(self, expose: list[str], optimized: bool) -> tuple[Chunks, int]:
        key = (*(("<optimized>",) if optimized else ()), *sorted(expose))
        hit = self._prefixes.get(key)
        if hit is not None:
            self._prefixes.move_to_end(key)
            return hit
        chunks, used = self._prefix_run(expose, optimized)
        self._prefixes[key] = (chunks, used)
        while len(self._prefixes) > 2:  # the runners keep what they use; this only shares runs
            self._prefixes.popitem(last=False)
        return chunks, used

    def _planned_prefix(self) -> tuple[Chunks, int, frozenset[str]] | None:
        """One prefix run exposing the values every planned main-graph weight's baked cone reads
        (``cfg.site_faults``): a campaign with faults spread over hundreds of weights pays one prefix run, not
        one per site. Only those values are exposed: they are the inputs of the nodes computing with a weight
        (or of the node before, for a folded BatchNormalization), where ORT's fusion patterns begin, so
        exposing them leaves the other values of the run as the whole model computes them. None where there
        is no plan, or the run would not fit in ``--cache-mb`` (each site then runs its own)."""
        if self._planned is None:
            self._planned = False
            proto = self.model_proto()
            names: dict[str, None] = {}
            for site in self.planned_weights():
                try:
                    start = weight_start(proto, site.tensor_name)
                    names.update(dict.fromkeys(boundary(proto, start, [site.tensor_name])))
                except CutError:
                    continue
            if names:
                room = self._planned_room()
                if self._exposed_bytes(names) <= room:
                    try:
                        chunks, used = self._prefix_run(list(names), limit=room)
                        self._planned = (chunks, used, frozenset(names))
                    except CutError:
                        pass
        return self._planned if isinstance(self._planned, tuple) else None

    def planned_weights(self, min_faults: int = 1) -> list[Site]:
        """The main-graph weights a planned prefix run serves: those with at least ``min_faults`` faults in
        ``cfg.site_faults``, every one where the counts are not known (empty: a plan that grows, any weight
        may be hit); none without counts or with a single planned weight (its own run is the same)."""
        counts = self.cfg.site_faults
        if counts is None or len(counts) == 1:
            return []
        return [s for s in self.index.sites if s.kind == "weight" and not s.graph
                and (not counts or counts.get(s.name, 0) >= min_faults)]

    def _exposed_bytes(self, names: Iterable[str]) -> int:
        """Bytes ``names`` take over the campaign data, from their per-sample shapes (checked before the
        shared prefix run, whose batches would otherwise allocate every exposed value at once; a value whose
        shape is not known counts 0, and the run itself still stops at the budget)."""
        shapes, values, n = self.sample_shapes(), self._values(), max(1, self.data.size)
        total = 0
        for name in names:
            dims = [d for d in shapes.get(name, ((), False))[0] if isinstance(d, int) and d >= 0]
            if not dims or len(dims) != len(shapes[name][0]):
                continue
            value = values.get(name)
            try:
                itemsize = int(value.dtype.itemsize) if value is not None and value.dtype is not None else 4
            except Exception:  # a type without a fixed size
                itemsize = 4
            total += math.prod(dims) * itemsize * n
        return total

    def sample_shapes(self) -> dict[str, tuple[tuple[int | str | None, ...], bool]]:
        """Every value's shape for one sample of the campaign data, in the form of ``cut.cone_macs`` (the
        inputs fixed to the data's shapes with one sample; -1 and symbolic dims resolved where shape
        inference can): what the cost model counts multiply-adds with. Computed once; {} where shape
        inference fails."""
        if self._sample_shapes is None:
            probe = onnx.ModelProto()
            probe.CopyFrom(self.model_proto())
            del probe.graph.value_info[:]
            for vi in probe.graph.input:
                value = self.data.feeds.get(vi.name)
                if value is None or not vi.type.HasField("tensor_type"):
                    continue
                dims = list(value.shape)
                ax = self.data.axis(vi.name)
                if ax is not None:
                    dims[ax] = 1
                shape = vi.type.tensor_type.shape
                del shape.dim[:]
                for d in dims:
                    shape.dim.add().dim_value = d
            try:
                probe = onnx.shape_inference.infer_shapes(probe, check_type=False, strict_mode=False, data_prop=True)
                self._sample_shapes = {k: (v, False) for k, v in inferred_shapes(probe).items()}
            except Exception:  # shape inference raises many types on odd models
                self._sample_shapes = {}
        return self._sample_shapes

    def prefix_key(self, expose: list[str]) -> tuple[str, ...]:
        """Which fault-free run :meth:`prefix` serves ``expose`` from: runs with the same key give the same
        values (what values computed from the prefix may be shared under)."""
        planned = self._planned_prefix()
        if planned is not None and planned[2].issuperset(expose):
            return ("<planned>",)
        return tuple(sorted(expose))

    def shared(self, key: tuple[Any, ...], compute: Callable[[], Outputs]) -> Outputs:
        """Outputs several runners share (the fault-free outputs of one cone), computed on first use; kept
        while they take at most an eighth of ``--cache-mb`` (oldest dropped first)."""
        hit = self._shared.get(key)
        if hit is not None:
            self._shared.move_to_end(key)
            return hit
        value = compute()
        self._shared[key] = value
        budget = self.cfg.cache_mb * 2**20 / 8
        while len(self._shared) > 1 and sum(
                a.nbytes for v in self._shared.values() for a in v.values()) > budget:
            self._shared.popitem(last=False)
        return value

    def _planned_room(self) -> int:
        """Bytes of ``--cache-mb`` left to a planned prefix run: what the other one (of the model, of ORT's
        optimized graph) does not hold."""
        held = 0
        if isinstance(self._planned, tuple):
            held += self._planned[1]
        if isinstance(self.planned_optimized, tuple):
            held += self.planned_optimized[2]
        return int(self.cfg.cache_mb * 2**20) - held

    def _prefix_run(self, expose: list[str], optimized: bool = False, limit: int | None = None
                    ) -> tuple[Chunks, int]:
        cfg = self.cfg
        limit = int(cfg.cache_mb * 2**20) if limit is None else limit
        if optimized:  # ORT's optimized graph, as ORT wrote it: its values are typed by ORT itself
            if self._optimized_bytes is None:
                self._optimized_bytes = self.whole_optimized().SerializeToString()
            base, level = self._optimized_bytes, "none"
            present = {o.name for o in self.whole_optimized().graph.output}
            extra = [onnx.ValueInfoProto(name=n) for n in expose if n not in present]
        else:
            if self._model_bytes is None:
                self._model_bytes = self.model_proto().SerializeToString()
            base, level = self._model_bytes, "all"
            present = {o.name for o in self.model_proto().graph.output}
            extra = [ir.serde.serialize_value(self._values()[n]) for n in expose if n not in present]
        source = base + onnx.ModelProto(graph=onnx.GraphProto(output=extra)).SerializeToString()
        exposed, used = set(expose), [0]

        def budget(chunk: dict[str, np.ndarray]) -> None:  # stop as soon as the cache would be over budget
            used[0] += sum(v.nbytes for k, v in chunk.items() if k in exposed)
            if used[0] > limit:
                raise CutError(f"prefix cache needs more than --cache-mb {cfg.cache_mb:g}")

        chunks = run_chunks(make_session(source, cfg.provider, optimization=level, threads=cfg.threads), self.data,
                            batch=cfg.batch, keep_feeds=True, each=budget)
        if optimized:
            self.optimized_prefix_runs += 1
        else:
            self.prefix_runs += 1
        return chunks, used[0]

    def model_outputs(self, fresh: bool = False) -> Chunks:
        """The whole model's fault-free outputs per batch, as the naive path computes them (cached, or
        from a new session with ``fresh``; ``model_time`` is how long the run took, without the build)."""
        if self._model_outputs is None or fresh:
            sess = make_session(self.loaded.model, self.cfg.provider, threads=self.cfg.threads)
            t0 = time.perf_counter()
            self._model_outputs = run_chunks(sess, self.data, self.output_names, self.cfg.batch)
            self.model_time = time.perf_counter() - t0
            self._joined = None
        return self._model_outputs

    def model_golden(self) -> Outputs:
        """:meth:`model_outputs` joined over the data: the golden of the paths that classify against the
        whole model. One copy per context, shared by the runners (read-only)."""
        chunks = self.model_outputs()
        if self._joined is None:
            self._joined = concat_batches(chunks)
            for a in self._joined.values():
                a.flags.writeable = False
        return self._joined

    def optimized_prefix(self, expose: list[str], keep: bool = False) -> tuple[Chunks, int]:
        """:meth:`prefix` of ORT's optimized whole model (:meth:`whole_optimized`, run with optimizations
        off): the values the ``opt-cut`` path's cones read, as that graph computes them. ``keep``: a run
        the caller keeps for the campaign (the planned run: within what the model's planned run leaves of
        ``--cache-mb``), not shared through the two-entry cache."""
        if keep:
            return self._prefix_run(expose, optimized=True, limit=self._planned_room())
        return self._shared_prefix(expose, optimized=True)

    def whole_optimized(self) -> onnx.ModelProto:
        """The whole model as ORT optimizes it for this machine (written by a session build, read back):
        the graph the ``opt-cut`` path cuts and feeds rewritten weights to. Made once per worker (a failure
        too: raised again to every later caller)."""
        if isinstance(self._whole_optimized, BaseException):
            raise self._whole_optimized
        if self._whole_optimized is None:
            try:
                with tempfile.TemporaryDirectory(prefix="onnxfi-opt-") as tmp:
                    path = os.path.join(tmp, "model.onnx")
                    make_session(self.loaded.model, self.cfg.provider, threads=self.cfg.threads,
                                 optimized_path=path)
                    try:
                        model = onnx.load(path)
                    except Exception as e:  # e.g. a graph over protobuf's 2 GB
                        raise CutError(f"ORT's optimized model cannot be read back ({type(e).__name__})") from None
            except Exception as e:
                self._whole_optimized = e
                raise
            del model.graph.value_info[:]  # it keeps the original types (float16 where ORT computes float32)
            self._whole_optimized = model
        return self._whole_optimized

    def near_model(self, outputs: dict[str, np.ndarray]) -> bool:
        """Whether ``outputs`` (over all the data) are the whole model's fault-free outputs up to
        rounding (``rounding.noise_bounds``: the same decisions and non-finite values, within 64 units
        in the last place)."""
        want = self.model_golden()
        if all(same_bits(np.asarray(outputs[k]), v) for k, v in want.items()):
            return True
        with np.errstate(invalid="ignore"):
            return noise_bounds({k: np.asarray(outputs[k]) for k in want}, want) is not None

    def _values(self) -> dict[str, ir.Value]:
        if self._value_map is None:
            g = self.loaded.model.graph
            vals: dict[str, ir.Value] = {v.name: v for v in g.inputs if v.name}
            vals.update({k: v for k, v in g.initializers.items() if k})
            for node in g:
                vals.update({o.name: o for o in node.outputs if o is not None and o.name})
            self._value_map = vals
        return self._value_map
