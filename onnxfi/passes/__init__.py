"""Graph rewrites, one per module, each an onnx-ir pass: ``pass_(model) -> PassResult(model, modified)``."""

from __future__ import annotations

from onnxfi.passes.activation_fault import InsertActivationFault, required_opset
from onnxfi.passes.expose import ExposeValues
from onnxfi.passes.opset import upgrade_opset
from onnxfi.passes.weight_fault import InjectWeightFault

__all__ = ["ExposeValues", "InjectWeightFault", "InsertActivationFault", "required_opset", "upgrade_opset"]
