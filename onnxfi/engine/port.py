"""The port path: one whole-model session per site with the site opened to faults, so a fault costs
one run and no session build. A weight becomes a graph input fed the faulty array; an activation gets
a fault port (``BitCast -> And/Or/Xor -> BitCast`` or a select-value node) fed per experiment."""

from __future__ import annotations

import time

import numpy as np

from onnxfi.bits import dtype_info
from onnxfi.engine.base import BIT_PROBE, Result, Runner
from onnxfi.engine.context import Context
from onnxfi.errors import InternalError
from onnxfi.faults import BitFault, RandomValue, SetValue, inject_element
from onnxfi.model import load_model
from onnxfi.passes.activation_fault import required_opset
from onnxfi.passes.fault_port import (
    PORT_AND,
    PORT_OR,
    PORT_SEL,
    PORT_VAL,
    PORT_XOR,
    AddActivationPort,
    WeightToInput,
    identity_ports,
)
from onnxfi.passes.opset import upgrade_opset
from onnxfi.plan import Experiment
from onnxfi.sites import Site

__all__ = ["PortRunner"]


class PortRunner(Runner):
    """A main-graph weight fed as an input, or an activation with a fault port, in the whole model."""

    path = "port"

    def __init__(self, ctx: Context, site: Site, needs_bits: bool, needs_values: bool, reason: str = "") -> None:
        super().__init__(ctx, site, reason)
        if site.graph:
            raise InternalError(f"PortRunner got {site.name}, a weight inside a subgraph (the chooser rebuilds those)")
        model = load_model(ctx.cfg.model_path, ctx.cfg.input_shapes, check=False).model
        self.clean: dict[str, np.ndarray]
        if site.kind == "weight":
            self.original: np.ndarray = ctx.index.weight_array(site).copy()
            WeightToInput(site.tensor_name)(model)
            self.clean = {site.tensor_name: self.original}
        else:
            if needs_bits:
                model = upgrade_opset(model, required_opset(site, BIT_PROBE))
            port = AddActivationPort(site, needs_bits, needs_values)
            port(model)
            ident = identity_ports(site, port.port_shape())
            keep = ([PORT_AND, PORT_OR, PORT_XOR] if needs_bits else []) + ([PORT_SEL, PORT_VAL] if needs_values else [])
            self.clean = {k: ident[k] for k in keep}
        self.session = ctx.session(model)
        t0 = time.perf_counter()
        self.golden = ctx.run_all(self.session, self.clean)
        self.golden_time = time.perf_counter() - t0

    def result(self, exp: Experiment) -> Result:
        return Result(self.ctx.run_all(self.session, self._feeds(exp)), self.golden, self.path)

    def _feeds(self, exp: Experiment) -> dict[str, np.ndarray]:
        fault = exp.fault_obj()
        rng = np.random.default_rng(exp.seed)
        if self.site.kind == "weight":
            return {self.site.tensor_name: inject_element(self.original, exp.index, fault, rng)}
        feeds = {k: v.copy() for k, v in self.clean.items()}
        info = dtype_info(self.site.dtype)
        if isinstance(fault, RandomValue):
            fault = SetValue(float(fault.draw(rng, (1,), info.numpy)[0]))
        if isinstance(fault, BitFault):
            m = fault.masks(info)
            word_np = info.word if info.is_float else info.numpy
            for key, value in ((PORT_AND, m.and_mask), (PORT_OR, m.or_mask), (PORT_XOR, m.xor_mask)):
                feeds[key].reshape(-1)[exp.index] = np.array(value, dtype=info.word).view(word_np)
        else:
            if not isinstance(fault, SetValue):
                raise InternalError(f"the port path has no feed for a {type(fault).__name__} fault")
            feeds[PORT_SEL].reshape(-1)[exp.index] = True
            feeds[PORT_VAL].reshape(-1)[exp.index] = fault.apply(np.zeros(1, info.numpy))[0]
        return feeds
