"""Raise a model's ai.onnx opset (via onnx's version converter) so that newer fault ops can be inserted."""

from __future__ import annotations

import onnx
import onnx.helper
import onnx.version_converter
import onnx_ir as ir

from onnxfi.errors import OnnxfiError, first_line

__all__ = ["upgrade_opset", "model_opset"]


def model_opset(model: ir.Model) -> int:
    return int(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0)))


def upgrade_opset(model: ir.Model, target: int) -> ir.Model:
    """``model`` itself when its opset is at least ``target``, else a converted copy."""
    current = model_opset(model)
    if current >= target:
        return model
    proto = ir.to_proto(model)
    try:
        converted = onnx.version_converter.convert_version(proto, target)
    except Exception as e:  # the converter raises bare RuntimeErrors with long texts
        raise OnnxfiError(
            f"cannot convert the model from opset {current} to {target} "
            f"(needed for in-graph bit faults): {first_line(e, limit=200)}"
        ) from None
    opsets = [onnx.helper.make_opsetid(o.domain, o.version) for o in converted.opset_import]
    converted.ir_version = max(converted.ir_version, onnx.helper.find_min_ir_version_for(opsets, True))
    return ir.from_proto(converted)
