"""Site enumeration: weights in every storage form, structure detection, activations, batch dims."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from conftest import (
    ZOO,
    file_tensors,
    make_model,
    quantized_model,
    save,
    save_external,
    storage_model,
    tensor,
    vi,
)
from onnx import TensorProto

from onnxfi.cli import main
from onnxfi.errors import SiteError
from onnxfi.model import load_model
from onnxfi.sites import SiteIndex, enumerate_sites, parse_index

F = TensorProto.FLOAT


def sites_of(path: Path, **shapes: tuple[int, ...]) -> SiteIndex:
    lm = load_model(path, shapes or None)
    return enumerate_sites(lm.model, lm.value_shapes)


def structure_model() -> onnx.ModelProto:
    """x[N,2,3,3] flattened twice (Shape->Gather->Unsqueeze->Concat->Reshape, and Reshape([-1,18])),
    summed, times W; plus ReduceSum over the batch axis (not batched)."""
    nodes = [
        oh.make_node("Shape", ["x"], ["shp"], name="shape"),
        oh.make_node("Gather", ["shp", "gi"], ["n"], name="gather", axis=0),
        oh.make_node("Unsqueeze", ["n", "ua"], ["n1"], name="unsq"),
        oh.make_node("Concat", ["n1", "m1"], ["newshape"], name="concat", axis=0),
        oh.make_node("Reshape", ["x", "newshape"], ["flat"], name="reshape_dyn"),
        oh.make_node("Reshape", ["x", "rs"], ["flat2"], name="reshape_const"),
        oh.make_node("Add", ["flat", "flat2"], ["sum"], name="add"),
        oh.make_node("MatMul", ["sum", "W"], ["y"], name="mm"),
        oh.make_node("ReduceSum", ["x", "rax"], ["t"], name="rsum", keepdims=0),
    ]
    return make_model(
        nodes,
        [vi("x", F, ["N", 2, 3, 3])],
        [vi("y", F, ["N", 4]), vi("t", F, [2, 3, 3])],
        [
            tensor("gi", np.array(0, np.int64)),
            tensor("ua", np.array([0], np.int64)),
            tensor("m1", np.array([-1], np.int64)),
            tensor("rs", np.array([-1, 18], np.int64)),
            tensor("W", np.ones((18, 4), np.float32)),
            tensor("rax", np.array([0], np.int64)),
        ],
    )


def paddle_like_model() -> onnx.ModelProto:
    """Weights kept in Constant nodes, as Paddle exports them (the reshape target too)."""
    rng = np.random.default_rng(5)

    def const(name: str, arr: np.ndarray) -> onnx.NodeProto:
        return oh.make_node("Constant", [], [name], name=f"{name}_const", value=tensor(name + "_t", arr))

    nodes = [
        const("conv.w", rng.standard_normal((2, 1, 3, 3)).astype(np.float32)),
        const("conv.b", rng.standard_normal(2).astype(np.float32)),
        const("fc.w", rng.standard_normal((8, 3)).astype(np.float32)),
        const("fc.b", rng.standard_normal(3).astype(np.float32)),
        const("shape", np.array([-1, 8], np.int64)),
        oh.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], name="conv", pads=[0, 0, 0, 0]),
        oh.make_node("Relu", ["c"], ["r"], name="relu"),
        oh.make_node("Reshape", ["r", "shape"], ["f"], name="flatten"),
        oh.make_node("MatMul", ["f", "fc.w"], ["m"], name="fc"),
        oh.make_node("Add", ["m", "fc.b"], ["y"], name="fc_add"),
    ]
    return make_model(nodes, [vi("x", F, ["N", 1, 4, 4])], [vi("y", F, ["N", 3])])


# ------------------------------------------------------------------------------------- weights


def test_storage_forms_are_weight_sites(storage_path: Path) -> None:
    idx = sites_of(storage_path)
    weights = {s.name: s for s in idx.select("weights")}
    assert set(weights) == {"b", "acc0", "cw", "cf", "tb", "ec", "lw"}
    expect = {  # name: (storage, graph, shape, ops)
        "b": ("initializer", "", (4,), ("Add",)),
        "acc0": ("initializer", "", (4,), ("Loop",)),
        "cw": ("constant", "", (4, 4), ("MatMul",)),
        "cf": ("constant", "", (4,), ("Add",)),
        "tb": ("initializer", "if.then_branch", (4,), ("Add",)),
        "ec": ("constant", "if.else_branch", (4,), ("Sub",)),
        "lw": ("initializer", "loop.body", (4,), ("Add",)),
    }
    for name, (storage, graph, shape, ops) in expect.items():
        s = weights[name]
        assert (s.storage, s.graph, s.shape, s.ops) == (storage, graph, shape, ops), name
        assert s.kind == "weight" and s.dtype_name == "float32" and s.bits == 32
        assert s.elements == math.prod(shape)
        assert s.fault_space == s.elements * 32
        assert not s.batched and not s.structural and not s.external
        d = s.to_dict()
        assert d["dtype"] == "float32" and d["fault_space"] == s.fault_space and d["ops"] == list(ops)
        assert d["graph"] == (graph or "main")
    # the Loop trip count only counts: structure, listed only on request
    trips = idx.get("trips")
    assert trips.structural and trips.dtype_name == "int64"
    assert "trips" not in weights
    assert "trips" in {s.name for s in idx.select("weights", include_structure=True)}


def test_weight_arrays_for_every_storage_form(storage_path: Path) -> None:
    idx = sites_of(storage_path)
    stored = file_tensors(storage_path)
    for s in idx.select("weights", include_structure=True):
        arr = idx.weight_array(s)
        np.testing.assert_array_equal(arr, stored[s.name])
        assert arr.dtype == stored[s.name].dtype


def test_set_weight_array_checks_dtype_and_shape(storage_path: Path) -> None:
    idx = sites_of(storage_path)
    for name in ("b", "cw", "cf", "tb", "ec"):
        s = idx.get(name)
        arr = idx.weight_array(s)
        with pytest.raises(SiteError):
            idx.set_weight_array(s, arr.astype(np.float64))
        with pytest.raises(SiteError):
            idx.set_weight_array(s, np.concatenate([arr.reshape(-1), arr.reshape(-1)]))
        new = (arr + 1).astype(arr.dtype)
        idx.set_weight_array(s, new)
        np.testing.assert_array_equal(idx.weight_array(s), new)


def test_external_weights_flagged(tmp_path: Path) -> None:
    p = save_external(storage_model(), tmp_path / "m.onnx")
    idx = sites_of(p)
    ext = {s.name: s.external for s in idx.select("weights")}
    # value_floats ("cf") is an attribute list, never external; the rest went to w.data
    assert ext == {"b": True, "acc0": True, "cw": True, "cf": False, "tb": True, "ec": True, "lw": True}


def test_quantized_weights_are_sites(tmp_path: Path) -> None:
    idx = sites_of(save(quantized_model(), tmp_path / "q.onnx"))
    w = {s.name: s for s in idx.select("weights")}
    assert (w["qw"].dtype_name, w["qw"].shape, w["qw"].ops, w["qw"].bits) == ("int8", (2, 1, 1, 1), ("QLinearConv",), 8)
    assert (w["qb"].dtype_name, w["qb"].bits, w["qb"].fault_space) == ("int32", 32, 64)
    assert (w["dw"].dtype_name, w["dw"].ops, w["dw"].elements) == ("int8", ("DequantizeLinear",), 8)
    assert (w["uw"].dtype_name, w["uw"].bits) == ("uint8", 8)
    assert w["xzp"].dtype_name == "uint8" and w["ws"].dtype_name == "float32"
    assert "flat_shape" not in w and idx.get("flat_shape").structural
    acts = {s.name: s for s in idx.select("activations")}
    assert acts["xq"].dtype_name == "uint8" and acts["yq"].dtype_name == "uint8"


def test_non_numeric_tensors_are_skipped(tmp_path: Path) -> None:
    m = make_model(
        [oh.make_node("Where", ["mask", "x", "zero"], ["y"], name="where")],
        [vi("x", F, [3])], [vi("y", F, [3])],
        [tensor("mask", np.array([True, False, True])), tensor("zero", np.zeros(3, np.float32))],
    )
    idx = sites_of(save(m, tmp_path / "m.onnx"))
    assert [s.name for s in idx.select("weights", include_structure=True)] == ["zero"]
    assert any(s.startswith("mask") for s in idx.skipped)


def test_same_name_in_two_subgraphs_gets_unique_site_names(tmp_path: Path) -> None:
    def branch(tag: str, value: float) -> onnx.GraphProto:
        return oh.make_graph(
            [oh.make_node("Add", ["x", "k"], [f"{tag}_out"])], tag, [], [vi(f"{tag}_out", F, [2])],
            initializer=[tensor("k", np.full(2, value, np.float32))],
        )

    m = make_model(
        [oh.make_node("If", ["cond"], ["y"], name="if", then_branch=branch("then", 1.0),
                      else_branch=branch("else", 2.0))],
        [vi("x", F, [2]), vi("cond", TensorProto.BOOL, [])], [vi("y", F, [2])],
    )
    idx = sites_of(save(m, tmp_path / "m.onnx"))
    names = [s.name for s in idx.select("weights")]
    assert len(names) == 2 and len(set(names)) == 2 and "k" in names
    other = next(n for n in names if n != "k")
    assert other.endswith("::k")
    vals = {float(idx.weight_array(idx.get(n))[0]) for n in names}
    assert vals == {1.0, 2.0}


# ---------------------------------------------------------------------------------- structure


def test_structure_detection(tmp_path: Path) -> None:
    idx = sites_of(save(structure_model(), tmp_path / "s.onnx"))
    structural = {s.name for s in idx if s.structural}
    assert structural == {"gi", "ua", "m1", "rs", "rax", "shp", "n", "n1", "newshape"}
    assert [s.name for s in idx.select("weights")] == ["W"]
    assert {s.name for s in idx.select("weights", include_structure=True)} == {"gi", "ua", "m1", "rs", "W", "rax"}
    assert {s.name for s in idx.select("activations")} == {"flat", "flat2", "sum", "y", "t"}


def test_activations_are_every_numeric_main_graph_output(tmp_path: Path) -> None:
    idx = sites_of(save(structure_model(), tmp_path / "s.onnx"))
    acts = [s.name for s in idx.select("activations", include_structure=True)]
    assert acts == ["shp", "n", "n1", "newshape", "flat", "flat2", "sum", "y", "t"]  # graph order
    for s in idx.select("activations", include_structure=True):
        assert s.kind == "activation" and s.storage == "node output" and s.tensor_name == s.name


def test_activations_skip_constants_bools_and_subgraphs(storage_path: Path, tmp_path: Path) -> None:
    acts = {s.name for s in sites_of(storage_path).select("activations", include_structure=True)}
    assert acts == {"mm", "h", "branch", "hb", "acc", "y"}  # no If/Loop body values, no Constant outputs
    m = make_model(
        [oh.make_node("Greater", ["x", "z"], ["g"], name="gt"), oh.make_node("Where", ["g", "x", "z"], ["y"])],
        [vi("x", F, [3])], [vi("y", F, [3])], [tensor("z", np.zeros(3, np.float32))],
    )
    acts = {s.name for s in sites_of(save(m, tmp_path / "b.onnx")).select("activations")}
    assert acts == {"y"}  # the bool mask is no site


def test_batched_detection_through_reshape_chains(tmp_path: Path) -> None:
    idx = sites_of(save(structure_model(), tmp_path / "s.onnx"))
    by = {s.name: s for s in idx}
    for name in ("flat", "flat2", "sum"):
        assert by[name].batched and by[name].shape == ("N", 18), name
        assert by[name].element_shape == (18,) and by[name].elements == 18
        assert by[name].fault_space == 18 * 32
        assert by[name].shape_text() == "[N,18]"
    assert by["y"].batched and by["y"].elements == 4
    assert not by["t"].batched and by["t"].shape == (2, 3, 3) and by["t"].elements == 18


def test_batched_detection_with_fixed_input_shape(tmp_path: Path) -> None:
    p = save(structure_model(), tmp_path / "s.onnx")
    by = {s.name: s for s in sites_of(p, x=(5, 2, 3, 3))}
    assert by["flat"].shape == (5, 18) and by["flat"].batched and by["flat"].elements == 18
    assert not by["t"].batched


def test_unknown_activation_shapes(dynamic_conv_path: Path) -> None:
    by = {s.name: s for s in sites_of(dynamic_conv_path)}
    assert by["c"].elements is None and by["c"].fault_space is None and by["c"].concrete_shape is None
    fixed = {s.name: s for s in sites_of(dynamic_conv_path, x=(1, 3, 4, 5))}
    assert fixed["c"].elements == 2 * 4 * 5 and fixed["c"].batched


# ------------------------------------------------------------------------------ selection, index


def test_get_and_select(mlp_path: Path) -> None:
    idx = sites_of(mlp_path)
    assert idx.get("W").name == "W"
    with pytest.raises(SiteError, match="unknown site 'w'; did you mean W"):
        idx.get("w")
    with pytest.raises(SiteError, match="inspect"):
        idx.get("zzz")
    assert [s.name for s in idx.select("weights")] == ["W", "b"]
    assert [s.name for s in idx.select("activations")] == ["mm", "pre", "y"]
    assert [s.name for s in idx.select("all", pattern="^[Wb]$")] == ["W", "b"]
    # weights match their consumers' op, activations their producer's
    assert [s.name for s in idx.select(ops=["relu"])] == ["y"]
    assert [s.name for s in idx.select(ops=["MatMul"])] == ["W", "mm"]
    assert [s.name for s in idx.select("activations", ops=["MatMul", "Add"])] == ["mm", "pre"]
    with pytest.raises(SiteError, match="bad site pattern"):
        idx.select(pattern="(")
    assert len(idx) == 5 and [s.name for s in idx] == [s.name for s in idx.sites]


@pytest.mark.parametrize(
    ("text", "shape", "flat"),
    [("0", (4, 3), 0), ("11", (4, 3), 11), ("3,2", (4, 3), 11), ("1, 0", (4, 3), 3), (5, (6,), 5),
     ("3,0,1,1", (4, 2, 3, 3), 3 * 18 + 0 + 3 + 1), ("0", (), 0)],
)
def test_parse_index(text: str | int, shape: tuple[int, ...], flat: int) -> None:
    assert parse_index(text, shape) == flat


@pytest.mark.parametrize(
    ("text", "shape", "match"),
    [("12", (4, 3), "out of range"), ("-1", (4, 3), "out of range"), ("4,0", (4, 3), "axis 0"),
     ("0,3", (4, 3), "axis 1"), ("1,1,1", (4, 3), "rank"), ("a", (4, 3), "bad index"), ("", (4, 3), "empty"),
     ("1", (), "out of range")],
)
def test_parse_index_errors(text: str, shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(SiteError, match=match):
        parse_index(text, shape)


# ------------------------------------------------------------------------------------ inspect


def inspect_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    capsys.readouterr()
    assert main(["inspect", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_inspect_constant_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = save(paddle_like_model(), tmp_path / "paddle_like.onnx")
    info = inspect_json(capsys, str(p), "--weights")
    sites = {s["name"]: s for s in info["sites"]}
    assert set(sites) == {"conv.w", "conv.b", "fc.w", "fc.b"}
    assert sites["conv.w"]["storage"] == "constant" and sites["conv.w"]["ops"] == ["Conv"]
    assert sites["conv.w"]["shape"] == [2, 1, 3, 3] and sites["conv.w"]["elements"] == 18
    assert sites["fc.w"]["fault_space"] == 8 * 3 * 32
    assert info["parameters"] == 18 + 2 + 24 + 3
    assert info["structure_tensors"] >= 1  # the reshape target


def test_inspect_zoo_pytorch_export(capsys: pytest.CaptureFixture[str]) -> None:
    info = inspect_json(capsys, str(ZOO / "digits_cnn.onnx"), "--weights")
    sites = {s["name"]: s for s in info["sites"]}
    convs = [s for s in sites.values() if s["ops"] == ["Conv"]]
    bns = [s for s in sites.values() if s["ops"] == ["BatchNormalization"]]
    gemm = [s for s in sites.values() if s["ops"] == ["Gemm"]]
    assert len(convs) >= 2 and len(bns) >= 4 and len(gemm) == 2
    assert all(s["dtype"] == "float32" and s["storage"] == "initializer" for s in sites.values())
    assert info["parameters"] == sum(s["elements"] for s in sites.values()) > 1000
    acts = inspect_json(capsys, str(ZOO / "digits_cnn.onnx"), "--activations")["sites"]
    assert acts and all(a["batched"] and a["elements"] for a in acts)


def test_inspect_zoo_paddle_export(capsys: pytest.CaptureFixture[str]) -> None:
    path = ZOO / "digits_cnn_paddle.onnx"
    assert path.is_file()
    info = inspect_json(capsys, str(path), "--weights")
    sites = info["sites"]
    assert sites, "no weights found in the Paddle export"
    ops = {op for s in sites for op in s["ops"]}
    assert "Conv" in ops and ({"MatMul", "Gemm"} & ops)
    assert any(s["storage"] == "constant" for s in sites)
    assert all(s["elements"] for s in sites)


def test_inspect_table_mentions_storage(storage_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["inspect", str(storage_path), "--all"]) == 0
    out = capsys.readouterr().out
    for word in ("cw", "constant", "if.then_branch", "loop.body", "Weight sites (7)", "Activation sites"):
        assert word in out


def test_mlp_sites_shapes(mlp_path: Path) -> None:
    by = {s.name: s for s in sites_of(mlp_path)}
    assert by["W"].shape == (4, 3) and by["W"].fault_space == 12 * 32
    assert by["mm"].batched and by["mm"].element_shape == (3,)

