"""The whole-model rebuild paths: per fault, a model with the fault written into it and a new session.

``NaiveRunner`` is the reference every fast path is tested against (weights rewritten bit-exactly,
activations through an inserted fault node). ``RebuildRunner`` is the fallback for weight sites no
faster path can take (weights inside If/Loop subgraphs, cuts that differ from the whole model beyond
rounding): it reuses one loaded model and only rewrites the weight before each session build."""

from __future__ import annotations

import time

import numpy as np

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
    """Reference path: per fault, the model loaded again, the fault baked in, a new session."""

    path = "naive"

    def __init__(self, ctx: Context, site: Site, reason: str = "") -> None:
        super().__init__(ctx, site, reason)
        loaded = load_model(ctx.cfg.model_path, ctx.cfg.input_shapes, check=False)
        session = ctx.session(loaded.model)
        t0 = time.perf_counter()
        self.golden = ctx.run_all(session)
        self.golden_time = time.perf_counter() - t0

    def result(self, exp: Experiment) -> Result:
        cfg = self.ctx.cfg
        fault = exp.fault_obj()
        rng = np.random.default_rng(exp.seed)
        loaded = load_model(cfg.model_path, cfg.input_shapes, check=False)
        index = enumerate_sites(loaded.model, loaded.value_shapes)
        site = index.get(self.site.name)
        if site.kind == "weight":
            arr = inject_element(index.weight_array(site), exp.index, fault, rng)
            index.set_weight_array(site, arr)
            model = loaded.model
        else:
            p = InsertActivationFault(site, exp.index, fault, None, rng)
            model = upgrade_opset(loaded.model, required_opset(site, p.fault))
            p(model)
        return Result(self.ctx.run_all(self.ctx.session(model)), self.golden, self.path)


class RebuildRunner(Runner):
    """Weight sites: the weight rewritten in one loaded model and a new whole-model session per fault."""

    path = "rebuild"

    def __init__(self, ctx: Context, site: Site, reason: str = "") -> None:
        super().__init__(ctx, site, reason)
        self.loaded = load_model(ctx.cfg.model_path, ctx.cfg.input_shapes, check=False)
        self.index = enumerate_sites(self.loaded.model, self.loaded.value_shapes)
        self.original: np.ndarray = self.index.weight_array(self.index.get(site.name)).copy()
        session = ctx.session(self.loaded.model)
        t0 = time.perf_counter()
        self.golden = ctx.run_all(session)
        self.golden_time = time.perf_counter() - t0

    def result(self, exp: Experiment) -> Result:
        site = self.index.get(self.site.name)
        arr = inject_element(self.original, exp.index, exp.fault_obj(), np.random.default_rng(exp.seed))
        self.index.set_weight_array(site, arr)
        try:
            session = self.ctx.session(self.loaded.model)
        finally:
            self.index.set_weight_array(site, self.original)
        out: Outputs = self.ctx.run_all(session)
        return Result(out, self.golden, self.path)
