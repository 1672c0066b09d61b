"""Change exactly one stored element of a weight tensor (initializer or Constant node, any graph)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxfi.bits import dtype_info
from onnxfi.errors import SiteError
from onnxfi.faults import Fault, inject_element
from onnxfi.sites import Site, SiteIndex

__all__ = ["InjectWeightFault"]


class InjectWeightFault(ir.passes.InPlacePass):
    """Apply ``fault`` to element ``flat_index`` of weight ``site``; records the old and new value."""

    def __init__(
        self,
        index: SiteIndex,
        site: Site,
        flat_index: int,
        fault: Fault,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        if site.kind != "weight":
            raise SiteError(f"{site.name} is an activation, not a weight")
        fault.check(dtype_info(site.dtype))
        self.index, self.site, self.flat_index, self.fault, self.rng = index, site, flat_index, fault, rng
        self.old_value: np.ndarray | None = None
        self.new_value: np.ndarray | None = None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = self.index.weight_array(self.site)
        if not 0 <= self.flat_index < before.size:
            raise SiteError(f"index {self.flat_index} out of range for {self.site.name} ({before.size} elements)")
        after = inject_element(before, self.flat_index, self.fault, self.rng)
        self.old_value = before.reshape(-1)[self.flat_index].copy()
        self.new_value = after.reshape(-1)[self.flat_index].copy()
        self.index.set_weight_array(self.site, after)
        return ir.passes.PassResult(model, True)
