"""Probe of PyTorch's dynamo-based exporter (torch.onnx.export(dynamo=True)); not part of `make zoo`.

Run in a venv with `pip install torch==2.13.0 onnxscript onnxruntime`. Exports the (untrained)
DigitsCNN with optimize=True and optimize=False and prints the ops, whether BatchNormalization
survived, and the largest difference from torch. Result recorded in model_zoo/README.md.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_cnn import DigitsCNN


def main() -> None:
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    x = torch.rand(4, 1, 8, 8)
    for optimize in (True, False):
        program = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes={"x": {0: torch.export.Dim("N")}},
            optimize=optimize,
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "m.onnx")
            program.save(path)
            proto = onnx.load(path)
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            diff = float(np.abs(sess.run(None, {"input": x.numpy()})[0] - model(x).detach().numpy()).max())
        ops = [n.op_type for n in proto.graph.node]
        print(
            f"optimize={optimize}: BatchNormalization x{ops.count('BatchNormalization')}, max diff {diff:.2e}"
        )
        print(f"  ops: {ops}")


if __name__ == "__main__":
    main()
