"""Probe of the JAX -> ONNX path (jax2onnx); not part of `make zoo`, no zoo entry.

Run in a venv with `pip install jax jax2onnx onnxruntime`. Converts a 2-layer MLP written in
plain jax.numpy at opsets 17 and 23, runs it with onnxruntime and compares with JAX.
Result recorded in model_zoo/README.md ("Converter paths").
"""

from __future__ import annotations

import importlib.metadata as md

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime as ort
from jax2onnx import to_onnx


def main() -> None:
    print("jax", jax.__version__, "jax2onnx", md.version("jax2onnx"))
    rng = np.random.default_rng(0)
    w1 = jnp.asarray(rng.normal(size=(64, 32)).astype(np.float32))
    w2 = jnp.asarray(rng.normal(size=(32, 10)).astype(np.float32))
    b1, b2 = jnp.zeros(32), jnp.zeros(10)

    def mlp(x: jax.Array) -> jax.Array:
        return jax.nn.relu(x @ w1 + b1) @ w2 + b2

    x = rng.random((5, 64)).astype(np.float32)
    for opset in (17, 23):
        model = to_onnx(mlp, [("N", 64)], opset=opset, input_names=["input"], output_names=["logits"])
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        diff = float(np.abs(sess.run(None, {"input": x})[0] - np.asarray(mlp(x))).max())
        print(f"opset {opset}: ops {[n.op_type for n in model.graph.node]}, max |onnx - jax| = {diff}")


if __name__ == "__main__":
    main()
