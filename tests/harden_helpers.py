"""Helpers for the hardening tests: tiny models from ONNX text, ORT runs at a chosen optimization level.

Independent of onnxfi's runtime module on purpose: the tests run ORT directly, so a bug in onnxfi's
session factory cannot hide a broken rewrite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort

from onnxfi.profile import ValueRange

REPO = Path(__file__).resolve().parents[1]
ZOO = REPO / "model_zoo"
DIGITS = ZOO / "digits_cnn.onnx"
DIGITS_DATA = ZOO / "data" / "digits_eval.npz"

LEVELS = {
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def parse(text: str, opset: int = 17) -> ir.Model:
    """An ir.Model from the body of an ONNX text model (the header with IR 8 and ``opset`` is added)."""
    proto = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : {opset}]>\n{text}')
    onnx.checker.check_model(proto)
    proto = onnx.shape_inference.infer_shapes(proto)
    return ir.from_proto(proto)


def to_proto(model: ir.Model) -> onnx.ModelProto:
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto)
    return proto


def session(model: ir.Model, level: str = "all", optimized: Path | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = LEVELS[level]
    so.log_severity_level = 3
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(to_proto(model).SerializeToString(), so, providers=["CPUExecutionProvider"])


def fused_nodes(model: ir.Model, tmp_path: Path, nchwc: bool = True) -> list[tuple[str, str]]:
    """(op, fused activation) of each node ORT keeps at ORT_ENABLE_ALL; ``nchwc.`` marks the blocked-layout ops.

    ``nchwc=False`` turns off only ORT's NCHWc transformer, so that Conv + activation shows as ``FusedConv``.
    """
    path = tmp_path / "optimized.onnx"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(path)
    so.log_severity_level = 3
    ort.InferenceSession(to_proto(model).SerializeToString(), so, providers=["CPUExecutionProvider"],
                         disabled_optimizers=[] if nchwc else ["NchwcTransformer"])
    out = []
    for n in onnx.load(str(path)).graph.node:
        act = next((a.s.decode() for a in n.attribute if a.name == "activation"), "")
        out.append((("nchwc." if n.domain == "com.microsoft.nchwc" else "") + n.op_type, act))
    return out


def run(model: ir.Model, feeds: Mapping[str, np.ndarray], level: str = "all") -> list[np.ndarray]:
    return [np.asarray(o) for o in session(model, level).run(None, dict(feeds))]


def ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


def ranges(**bounds: tuple[float, float]) -> dict[str, ValueRange]:
    """Profiled ranges given by hand: ``ranges(x=(lo, hi))``."""
    return {name: ValueRange(name, lo, hi, 100, 0, {}, 100) for name, (lo, hi) in bounds.items()}


def node_by_output(model: ir.Model, name: str) -> ir.Node:
    for n in model.graph:
        if any(o is not None and o.name == name for o in n.outputs):
            return n
    raise KeyError(name)


def initializer_values(model: ir.Model, names: Sequence[str]) -> list[float]:
    return [float(np.asarray(model.graph.initializers[n].const_value.numpy()).reshape(-1)[0]) for n in names]


def fill(text: str, **arrays: object) -> str:
    """Put comma-separated numbers in place of ``@NAME`` markers of an ONNX text model."""
    for name, values in arrays.items():
        text = text.replace(f"@{name}", ", ".join(f"{float(v):.4f}" for v in np.asarray(values).reshape(-1)))
    return text


# An activation of each kind the activation passes tell apart, for the tests of their reasons.
MIXED = """
g (float[4] x, float[4] d, int32[4] k) => (float[4] a, float[4] b, float[4] c, int32[4] i, float[4] s, float[4] e,
                                           float[4] t) {
  a = Relu(x)
  b = LeakyRelu(x)
  c = Relu(d)
  i = Relu(k)
  s = Sigmoid(x)
  n = Neg(x)
  e = Relu(n)
  t = Tanh(n)
}
"""

CONV_RELU = fill("""
conv_relu (float[N,1,4,4] x) => (float[N,2,4,4] y) <float[2,1,3,3] w = {@W}, float[2] b = {0.1, -0.2}> {
  c = Conv <pads = [1,1,1,1]> (x, w, b)
  y = Relu(c)
}
""", W=np.linspace(-0.8, 0.9, 18))
