"""Graph rewrites, one per module, each an onnx-ir pass: ``pass_(model) -> PassResult(model, modified)``."""

from __future__ import annotations

from typing import Any

from onnxfi.passes._hardening import Calibration, HardeningPass, hardening_method
from onnxfi.passes.activation_fault import InsertActivationFault, required_opset
from onnxfi.passes.clipact import ClipAct
from onnxfi.passes.expose import ExposeValues
from onnxfi.passes.nan_guard import NanGuard
from onnxfi.passes.opset import upgrade_opset
from onnxfi.passes.protect import Protect
from onnxfi.passes.ranger import Ranger
from onnxfi.passes.relumax import ReluMax
from onnxfi.passes.weight_clip import WeightClip
from onnxfi.passes.weight_fault import InjectWeightFault

__all__ = [
    "HARDENING_METHODS", "Calibration", "HardeningPass", "hardening_method",
    "Ranger", "ClipAct", "ReluMax", "Protect", "NanGuard", "WeightClip",
    "ExposeValues", "InjectWeightFault", "InsertActivationFault", "required_opset", "upgrade_opset",
]

# The registry of hardening methods: name -> pass class (which declares its options and calibration needs),
# in the order help texts and error messages list them.
HARDENING_METHODS: dict[str, type[HardeningPass[Any, Any]]] = {
    p.method: p for p in (Ranger, ClipAct, ReluMax, Protect, NanGuard, WeightClip)
}
