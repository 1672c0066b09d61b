"""load_model: validation, one-line errors, external-data safety, input shapes, batch probing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from conftest import (
    ZOO,
    dynamic_conv_model,
    file_tensors,
    make_model,
    mlp_model,
    save,
    save_external,
    storage_model,
    vi,
    words,
)
from onnx import TensorProto

from onnxfi.errors import ModelLoadError, OnnxfiError
from onnxfi.model import MAX_OPSET, MIN_OPSET, load_model, parse_input_shape, save_model


def external_ref(model: onnx.ModelProto, name: str, location: str) -> onnx.ModelProto:
    """A copy of ``model`` whose initializer ``name`` claims to live in ``location``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    t = next(t for t in m.graph.initializer if t.name == name)
    size = len(onnx.numpy_helper.to_array(t).tobytes())
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    for k, v in (("location", location), ("offset", "0"), ("length", str(size))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return m


def test_load_valid_model(tmp_path: Path) -> None:
    p = save(mlp_model(), tmp_path / "m.onnx")
    lm = load_model(p)
    assert lm.path == p
    assert lm.opset == 17
    assert not lm.has_external_data
    assert lm.producer.startswith("onnxfi-tests")
    assert [(i.name, i.shape, i.is_static) for i in lm.inputs()] == [("x", ("N", 4), False)]
    assert [(o.name, o.shape) for o in lm.outputs()] == [("y", ("N", 3))]
    assert lm.inputs()[0].dynamic_dims() == [0]
    assert lm.inputs()[0].shape_text() == "[N,4]"
    # the batch probe tells batched values apart
    assert lm.value_shapes["mm"] == (("N", 3), True)
    assert lm.value_shapes["y"] == (("N", 3), True)


def test_initializers_listed_as_inputs_are_not_inputs(tmp_path: Path) -> None:
    m = mlp_model()
    m.graph.input.append(vi("W", TensorProto.FLOAT, [4, 3]))  # old exporters (IR < 4 style)
    lm = load_model(save(m, tmp_path / "m.onnx"))
    assert [i.name for i in lm.inputs()] == ["x"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "nope.onnx")
    with pytest.raises(ModelLoadError, match="not a file"):
        load_model(tmp_path)


@pytest.mark.parametrize("content", ["random", "text", "empty", "truncated", "npz"])
def test_not_onnx(tmp_path: Path, content: str, rng: np.random.Generator) -> None:
    p = tmp_path / "bad.onnx"
    if content == "random":
        p.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif content == "text":
        p.write_text("this is not a model\n" * 20)
    elif content == "empty":
        p.write_bytes(b"")
    elif content == "truncated":
        data = (ZOO / "digits_cnn.onnx").read_bytes()
        p.write_bytes(data[: len(data) // 2])
    else:
        np.savez(p, x=np.ones(3))
        p = tmp_path / "bad.onnx.npz"
    with pytest.raises(ModelLoadError) as ei:
        load_model(p)
    msg = str(ei.value)
    assert "\n" not in msg and p.name in msg


@pytest.mark.parametrize("opset", [1, 5, MIN_OPSET - 1, MAX_OPSET + 1, 99])
def test_unsupported_opset(tmp_path: Path, opset: int) -> None:
    m = mlp_model()
    m.opset_import[0].version = opset
    p = tmp_path / "m.onnx"
    onnx.save_model(m, str(p))
    with pytest.raises(ModelLoadError, match=f"unsupported opset {opset}"):
        load_model(p)


@pytest.mark.parametrize("opset", [MIN_OPSET, 13, MAX_OPSET])
def test_supported_opset_bounds(tmp_path: Path, opset: int) -> None:
    m = make_model(
        [oh.make_node("Relu", ["x"], ["y"])], [vi("x", TensorProto.FLOAT, [1, 2])],
        [vi("y", TensorProto.FLOAT, [1, 2])], opset=opset,
    )
    m.ir_version = max(m.ir_version, oh.find_min_ir_version_for(list(m.opset_import), True))
    assert load_model(save(m, tmp_path / "m.onnx")).opset == opset


def test_checker_failure_and_no_check(tmp_path: Path) -> None:
    m = mlp_model()
    m.graph.node[2].attribute.append(oh.make_attribute("bogus_attr", 1))  # Relu has no such attribute
    p = tmp_path / "m.onnx"
    onnx.save_model(m, str(p))
    with pytest.raises(ModelLoadError, match="--no-check"):
        load_model(p)
    assert load_model(p, check=False).graph is not None


def test_external_data_loaded(tmp_path: Path) -> None:
    p = save_external(storage_model(), tmp_path / "m.onnx")
    assert (tmp_path / "w.data").is_file()
    lm = load_model(p)
    assert lm.has_external_data
    # the values are read in: compare with the original tensors
    plain = file_tensors(save(storage_model(), tmp_path / "plain.onnx"))
    ext = file_tensors(p)
    for name, arr in plain.items():
        np.testing.assert_array_equal(words(ext[name]), words(arr))
    w = lm.graph.initializers["b"].const_value
    assert w is not None
    np.testing.assert_array_equal(w.numpy(), plain["b"])


def test_external_data_missing_file(tmp_path: Path) -> None:
    p = save_external(mlp_model(), tmp_path / "m.onnx")
    (tmp_path / "w.data").unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        load_model(p)


def test_external_data_truncated(tmp_path: Path) -> None:
    p = save_external(mlp_model(), tmp_path / "m.onnx")
    data = (tmp_path / "w.data").read_bytes()
    (tmp_path / "w.data").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="past the end"):
        load_model(p)


@pytest.mark.parametrize("how", ["dotdot", "nested_dotdot", "absolute", "symlink"])
def test_external_data_escaping_refused(tmp_path: Path, how: str) -> None:
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    outside = tmp_path / "x.data"
    outside.write_bytes(np.zeros(64, np.float32).tobytes())
    location = {
        "dotdot": "../x.data",
        "nested_dotdot": "sub/../../x.data",
        "absolute": str(outside),
        "symlink": "link.data",
    }[how]
    if how == "symlink":
        os.symlink(outside, model_dir / "link.data")
    m = external_ref(mlp_model(), "W", location)
    p = model_dir / "m.onnx"
    onnx.save_model(m, str(p))
    with pytest.raises(ModelLoadError, match="outside the model's folder") as ei:
        load_model(p)
    assert "\n" not in str(ei.value)


def test_external_data_inside_subfolder_allowed(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    (tmp_path / "weights" / "w.bin").write_bytes(w.tobytes())
    m = external_ref(mlp_model(), "W", "weights/w.bin")
    p = tmp_path / "m.onnx"
    onnx.save_model(m, str(p))
    lm = load_model(p)
    assert lm.has_external_data
    cv = lm.graph.initializers["W"].const_value
    assert cv is not None
    np.testing.assert_array_equal(cv.numpy(), w)


def test_input_shapes_fix_dynamic_dims(tmp_path: Path) -> None:
    p = save(dynamic_conv_model(), tmp_path / "m.onnx")
    lm = load_model(p)
    assert lm.inputs()[0].shape == ("N", 3, "H", "W")
    assert lm.inputs()[0].dynamic_dims() == [0, 2, 3]
    fixed = load_model(p, {"x": (2, 3, 5, 5)})
    assert fixed.inputs()[0].shape == (2, 3, 5, 5) and fixed.inputs()[0].is_static
    # shape inference now knows the activation shapes
    c = next(v for n in fixed.graph for v in n.outputs if v.name == "c")
    assert c.shape is not None and list(c.shape) == [2, 2, 5, 5]


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        ({"nope": (1, 3, 4, 4)}, "unknown input"),
        ({"x": (1, 3, 4)}, "rank"),
        ({"x": (1, 4, 4, 4)}, "fixed to 3"),
    ],
)
def test_input_shapes_errors(tmp_path: Path, shapes: dict[str, tuple[int, ...]], match: str) -> None:
    p = save(dynamic_conv_model(), tmp_path / "m.onnx")
    with pytest.raises(OnnxfiError, match=match):
        load_model(p, shapes)


def test_parse_input_shape() -> None:
    assert parse_input_shape("input:1x3x224x224") == ("input", (1, 3, 224, 224))
    assert parse_input_shape("a:b:2,3") == ("a:b", (2, 3))
    assert parse_input_shape(" x:7 ") == ("x", (7,))
    for bad in ("x", "x:", "x:1xa", ":1x2", "x:1x-2"):
        with pytest.raises(OnnxfiError):
            parse_input_shape(bad)


def test_static_model_has_no_batch_probe(tmp_path: Path) -> None:
    lm = load_model(save(storage_model(), tmp_path / "m.onnx"))
    assert lm.value_shapes == {}


def test_save_model_plain_and_external(tmp_path: Path) -> None:
    big = np.arange(64 * 3, dtype=np.float32).reshape(64, 3)  # large enough to go to external data
    m = mlp_model()
    m.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(big[:4], "W"))
    m.graph.initializer.append(onnx.numpy_helper.from_array(big, "unused_big"))
    lm = load_model(save(m, tmp_path / "m.onnx"))
    out = save_model(lm.model, tmp_path / "out" / "plain.onnx")
    assert out == [tmp_path / "out" / "plain.onnx"]
    written = save_model(lm.model, tmp_path / "out" / "ext.onnx", external_data=True)
    assert written == [tmp_path / "out" / "ext.onnx", tmp_path / "out" / "ext.onnx.data"]
    assert written[1].stat().st_size >= big.nbytes
    a, b = file_tensors(out[0]), file_tensors(written[0])
    assert sorted(a) == sorted(b) == ["W", "b", "unused_big"]
    for k in a:
        np.testing.assert_array_equal(words(a[k]), words(b[k]))
    assert load_model(written[0]).has_external_data


def test_save_model_external_without_large_tensors(tmp_path: Path) -> None:
    """Nothing big enough to go external: no empty data file is left behind or reported."""
    lm = load_model(save(mlp_model(), tmp_path / "m.onnx"))
    written = save_model(lm.model, tmp_path / "ext.onnx", external_data=True)
    assert written == [tmp_path / "ext.onnx"]
    assert not (tmp_path / "ext.onnx.data").exists()


def test_errors_do_not_chain_tracebacks(tmp_path: Path) -> None:
    p = tmp_path / "bad.onnx"
    p.write_text("nope")
    with pytest.raises(ModelLoadError) as ei:
        load_model(p)
    assert ei.value.__cause__ is None and ei.value.__suppress_context__



def test_minus_one_and_zero_dims_are_dynamic(tmp_path: Path) -> None:
    """Exports that write a dynamic dim as -1 or 0 (PaddlePaddle): the dims count as dynamic, so an
    --input-shape can fix them, and the model runs on data of any batch."""
    from onnxfi.data import random_data
    from onnxfi.runtime import make_session, run_batches

    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [-1, 3, 0])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [-1, 3, 0])
    g = oh.make_graph([oh.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8), tmp_path / "m.onnx")
    loaded = load_model(tmp_path / "m.onnx", {"x": (2, 3, 5)})
    assert loaded.inputs()[0].shape == (2, 3, 5)
    free = load_model(tmp_path / "m.onnx")
    spec = free.inputs()[0]
    assert spec.shape is not None and spec.shape[1] == 3 and not isinstance(spec.shape[0], int)
    data = random_data([spec], seed=0, batch=4, overrides={"x": (4, 3, 6)})
    out = run_batches(make_session(free.model), data)["y"]
    np.testing.assert_array_equal(out, np.maximum(data.feeds["x"], 0))
    with pytest.raises(OnnxfiError, match="fixed to 3"):
        load_model(tmp_path / "m.onnx", {"x": (2, 4, 5)})


def test_input_shape_accepts_polygraphy_brackets() -> None:
    from onnxfi.model import parse_input_shape

    assert parse_input_shape("x:[1,3,48,192]") == parse_input_shape("x:1x3x48x192") == ("x", (1, 3, 48, 192))
    for bad in ("x:[1,3", "x:1,3]", "x:", "x:1xy", "x:0x3", "x:1x3x??", "x:n"):
        with pytest.raises(OnnxfiError, match="bad --input-shape"):
            parse_input_shape(bad)


def test_input_shape_question_mark_and_n_leave_dims_dynamic() -> None:
    from onnxfi.model import DYNAMIC_DIM, parse_input_shape

    assert DYNAMIC_DIM == -1
    assert parse_input_shape("x:1x3x?x?") == ("x", (1, 3, -1, -1))
    assert parse_input_shape("x:Nx3x48x192") == parse_input_shape("x:[N,3,48,192]") == ("x", (-1, 3, 48, 192))
    assert parse_input_shape("a:b:?,4") == ("a:b", (-1, 4))  # a name with a colon: the last one splits


def test_contrib_op_outputs_get_their_shapes_from_the_runtimes_inference(tmp_path: Path) -> None:
    """ONNX's inference does not know com.microsoft ops: the output of a MatMulNBits feeding a Relu has no type
    there; ONNX Runtime's symbolic inference gives it, so it is an activation site with a batch axis."""
    import onnx.numpy_helper as onh

    from onnxfi.sites import enumerate_sites

    k, n, block = 32, 4, 16
    rng = np.random.default_rng(0)
    b = rng.integers(0, 256, size=(n, k // block, block // 2), dtype=np.uint8)
    scales = rng.uniform(0.01, 0.1, size=n * (k // block)).astype(np.float32)
    nodes = [oh.make_node("MatMulNBits", ["A", "B", "scales"], ["Y"], domain="com.microsoft", K=k, N=n, bits=4,
                          block_size=block),
             oh.make_node("Relu", ["Y"], ["Z"])]
    g = oh.make_graph(nodes, "nbits", [oh.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
                      [oh.make_tensor_value_info("Z", TensorProto.FLOAT, ["M", n])],
                      [onh.from_array(b, "B"), onh.from_array(scales, "scales")])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 21), oh.make_opsetid("com.microsoft", 1)])
    path = tmp_path / "nbits.onnx"
    onnx.save(m, path)
    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False)
    assert "Y" not in {vi.name for vi in inferred.graph.value_info if vi.type.tensor_type.elem_type}
    loaded = load_model(path)
    sites = {s.name: s for s in enumerate_sites(loaded.model, loaded.value_shapes)}
    assert sites["Y"].kind == "activation" and sites["Y"].shape == ("N", n) and sites["Y"].batched
