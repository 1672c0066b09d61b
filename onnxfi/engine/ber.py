"""The fault-rate path: per experiment, every drawn bit flipped in the weights of one loaded model, a new
whole-model session, and the originals put back (:mod:`onnxfi.ber` draws the flips)."""

from __future__ import annotations

import time

import onnx_ir as ir

from onnxfi.ber import apply_flips, ber_sizes, draw_flips, restore_weights
from onnxfi.engine.base import Outputs, Result, Runner
from onnxfi.engine.context import Context
from onnxfi.model import load_model
from onnxfi.plan import BER_SITE, Experiment
from onnxfi.sites import Site, enumerate_sites

__all__ = ["BerRunner", "BER_PATH"]

BER_PATH = "ber"

# the runner's site: a fault-rate experiment spans every selected weight site
_PLACEHOLDER = Site(BER_SITE, "weight", ir.DataType.FLOAT, None, "memory", (), ())


class BerRunner(Runner):
    """Fault-rate experiments: the model loaded once; per experiment its flips written into the weights, a
    whole-model session built, the weights restored, the eval data run. ``golden`` is the whole model's
    fault-free run on the same provider. An experiment that flips no bit is the clean model: its outputs
    are ``golden`` (no session is built)."""

    path = BER_PATH

    def __init__(self, ctx: Context, site: Site | None = None, reason: str = "") -> None:
        super().__init__(ctx, site or _PLACEHOLDER, reason)
        self.loaded = load_model(ctx.cfg.model_path, ctx.cfg.input_shapes, check=False)
        self.index = enumerate_sites(self.loaded.model, self.loaded.value_shapes)
        self.sizes = ber_sizes(self.index)
        session = ctx.session(self.loaded.model)
        t0 = time.perf_counter()
        self.golden = ctx.run_all(session)
        self.golden_time = time.perf_counter() - t0

    def result(self, exp: Experiment) -> Result:
        flips = draw_flips(exp, self.sizes)
        extra = {"n_flips": float(len(flips))}
        if not flips:
            return Result({k: v.copy() for k, v in self.golden.items()}, self.golden, self.path, extra)
        originals = apply_flips(self.index, flips)
        try:
            session = self.ctx.session(self.loaded.model)
        finally:
            restore_weights(self.index, originals)
        out: Outputs = self.ctx.run_all(session)
        return Result(out, self.golden, self.path, extra)
