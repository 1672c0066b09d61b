"""--input-shape ? and N keep the model's dim (model._apply_input_shapes); runtime.concat_batches joins a state output on its sample axis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh


def test_input_shape_question_mark_keeps_the_models_dim(tmp_path: Path) -> None:
    """--input-shape's ? / N (-1) leaves the model's dim as it is: fixed stays fixed, dynamic stays dynamic
    (so batch detection still sees a dynamic first dim); a number still fixes a dynamic dim."""
    from onnxfi.model import load_model, parse_input_shape

    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [-1, 3, 0])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [-1, 3, 0])
    g = oh.make_graph([oh.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8), tmp_path / "m.onnx")
    lm = load_model(tmp_path / "m.onnx", dict([parse_input_shape("x:Nx?x5")]))
    shape = lm.inputs()[0].shape
    assert shape is not None and not isinstance(shape[0], int) and shape[1:] == (3, 5)
    assert lm.value_shapes["y"] == (("N", 3, 5), True)  # the batch probe still finds the batch dim
    lm = load_model(tmp_path / "m.onnx", dict([parse_input_shape("x:[2,?,?]")]))
    shape = lm.inputs()[0].shape
    assert shape is not None and shape[:2] == (2, 3) and not isinstance(shape[2], int)


def test_concat_batches_joins_a_state_output_on_its_sample_axis() -> None:
    from onnxfi.runtime import concat_batches

    a = {"y": np.zeros((3, 1)), "s": np.zeros((2, 3, 4)), "c": np.array(1.0)}
    b = {"y": np.ones((2, 1)), "s": np.ones((2, 2, 4)), "c": np.array(1.0)}
    out = concat_batches([a, a, b])
    assert out["y"].shape == (8, 1) and out["s"].shape == (2, 8, 4) and out["c"].shape == ()
    np.testing.assert_array_equal(out["s"][:, 6:], b["s"])
    assert concat_batches([a, a])["s"].shape == (4, 3, 4)  # equal batches: axis 0, as before
