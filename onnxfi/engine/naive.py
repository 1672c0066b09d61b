"""The whole-model rebuild paths: per fault, a model with the fault written into it and a new session.

``NaiveRunner`` is the reference every fast path is tested against (weights rewritten bit-exactly,
activations through an inserted fault node, classified against the same model with the same fault
nodes made identities: a fault node blocks ONNX Runtime's fusions around its site, so the original
model's outputs differ from it by rounding even where the fault changes nothing). ``RebuildRunner`` is the fallback for weight sites no
faster path can take (weights inside If/Loop subgraphs, cuts that differ from the whole model beyond
rounding): it reuses one loaded model and only rewrites the weight before each session build."""

from __future__ import annotations

import time

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_ir as ir

from onnxfi.engine.base import Outputs, Result, Runner
from onnxfi.engine.context import Context
from onnxfi.faults import inject_element
from onnxfi.model import load_model
from onnxfi.passes.activation_fault import InsertActivationFault, required_opset
from onnxfi.passes.opset import upgrade_opset
from onnxfi.plan import Experiment
from onnxfi.sites import Site, enumerate_sites

__all__ = ["NaiveRunner", "RebuildRunner"]


class NaiveRunner(Runner):
    """Reference path: per fault, the model loaded again, the fault baked in, a new session.

    ``golden`` is the original model's outputs (the golden of weight faults); an activation fault is
    classified against the outputs of the model with an identity fault node of the same structure
    (see :class:`InsertActivationFault`), computed once per structure and kept in ``identity_golden``."""

    path = "naive"

    def __init__(self, ctx: Context, site: Site, reason: str = "") -> None:
        super().__init__(ctx, site, reason)
        loaded = load_model(ctx.cfg.model_path, ctx.cfg.input_shapes, check=False)
        session = ctx.session(loaded.model)
        t0 = time.perf_counter()
        self.golden = ctx.run_all(session)
        self.golden_time = time.perf_counter() - t0
        self.identity_golden: dict[tuple[str, ...], Outputs] = {}

    def _activation_model(self, exp: Experiment, identity: bool) -> tuple[ir.Model, InsertActivationFault]:
        """The model with ``exp``'s fault node after the site (doing nothing when ``identity``)."""
        loaded = load_model(self.ctx.cfg.model_path, self.ctx.cfg.input_shapes, check=False)
        site = enumerate_sites(loaded.model, loaded.value_shapes).get(self.site.name)
        p = InsertActivationFault(site, exp.index, exp.fault_obj(), None, np.random.default_rng(exp.seed), identity)
        model = upgrade_opset(loaded.model, required_opset(site, p.fault))
        p(model)
        return model, p

    def result(self, exp: Experiment) -> Result:
        if self.site.kind != "weight":
            model, p = self._activation_model(exp, identity=False)
            out = self.ctx.run_all(self.ctx.session(model))  # first: a failure here is the fault's (a crash)
            golden = self.identity_golden.get(p.structure)
            if golden is None:
                golden = self.ctx.run_all(self.ctx.session(self._activation_model(exp, identity=True)[0]))
                self.identity_golden[p.structure] = golden
            return Result(out, golden, self.path)
        loaded = load_model(self.ctx.cfg.model_path, self.ctx.cfg.input_shapes, check=False)
        index = enumerate_sites(loaded.model, loaded.value_shapes)
        site = index.get(self.site.name)
        arr = inject_element(index.weight_array(site), exp.index, exp.fault_obj(), np.random.default_rng(exp.seed))
        index.set_weight_array(site, arr)
        return Result(self.ctx.run_all(self.ctx.session(loaded.model)), self.golden, self.path)


class RebuildRunner(Runner):
    """Weight sites: the weight rewritten in one loaded model and a new whole-model session per fault."""

    path = "rebuild"

    def __init__(self, ctx: Context, site: Site, reason: str = "") -> None:
        super().__init__(ctx, site, reason)
        self.sessions = 0  # one per fault, dropped after its run
        # A main-graph initializer: the model serialized once without it, and per fault a ModelProto holding
        # only the faulty weight appended (protobuf merges repeated fields); the fault-free outputs are the
        # whole model's, which the context has. Otherwise (a weight in a subgraph or a Constant node) the
        # model is loaded again and the weight rewritten in it before each session build.
        self.head: bytes | None = None
        proto = ctx.model_proto()
        name = site.tensor_name
        mine = [t for t in proto.graph.initializer if t.name == name] if not site.graph else []
        if len(mine) == 1:
            self.original: np.ndarray = ctx.index.weight_array(site).copy()
            if self.original.dtype.kind in "fiub" and (
                    mine[0].data_type == onnx.numpy_helper.from_array(self.original[:0]).data_type):
                keep = [t for t in proto.graph.initializer if t.name != name]
                model = onnx.ModelProto()
                model.CopyFrom(proto)
                del model.graph.initializer[:]
                model.graph.initializer.extend(keep)
                self.head = model.SerializeToString()
                self.cache_bytes = len(self.head)
                self.name = name
                t0 = time.perf_counter()
                self.golden = ctx.model_golden()
                self.golden_time = time.perf_counter() - t0
                return
        self.loaded = load_model(ctx.cfg.model_path, ctx.cfg.input_shapes, check=False)
        self.index = enumerate_sites(self.loaded.model, self.loaded.value_shapes)
        self.original = self.index.weight_array(self.index.get(site.name)).copy()
        session = ctx.session(self.loaded.model)
        t0 = time.perf_counter()
        self.golden = ctx.run_all(session)
        self.golden_time = time.perf_counter() - t0

    def result(self, exp: Experiment) -> Result:
        arr = inject_element(self.original, exp.index, exp.fault_obj(), np.random.default_rng(exp.seed))
        if self.head is not None:
            extra = onnx.ModelProto(graph=onnx.GraphProto(initializer=[onnx.numpy_helper.from_array(arr, self.name)]))
            return Result(self.ctx.run_all(self.ctx.session(self.head + extra.SerializeToString())), self.golden,
                          self.path)
        site = self.index.get(self.site.name)
        self.index.set_weight_array(site, arr)
        try:
            session = self.ctx.session(self.loaded.model)
        finally:
            self.index.set_weight_array(site, self.original)
        out: Outputs = self.ctx.run_all(session)
        return Result(out, self.golden, self.path)
