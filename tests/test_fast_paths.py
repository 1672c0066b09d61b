"""The fast execution paths (prefix cache + suffix sessions, exact shortcuts) against the naive path.

Naive = per fault, the whole model rewritten with the fault and a new ONNX Runtime session. The suffix
path must give the same outcome for every experiment. Metrics that only depend on decisions (accuracy,
agreement, mIoU) must be equal; metrics computed from raw output values may differ at the level of one
unit in the last place of the outputs, because ONNX Runtime optimizes a cut graph and a whole graph
differently (see ../shared/PERFORMANCE.md, "Pitfalls"). (The naive path classifies an activation fault
against the same model with an identity fault node, so the fusions a fault node blocks are blocked in its
golden too.) Absolute errors are compared within 2e-5; relative errors are not compared (they divide ulp noise by
near-zero golden outputs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest
from onnx import TensorProto

from onnxfi.cut import boundary, cut_model, forward_cone, weight_start
from onnxfi.engine import Engine, EngineConfig
from onnxfi.faults import BitFlip
from onnxfi.model import load_model
from onnxfi.plan import Experiment, make_plan
from onnxfi.sites import enumerate_sites

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "model_zoo"

# metric -> (rtol, atol) for values that come from raw outputs; everything else must be equal
_VALUE_METRICS = {
    "mean_entropy": (1e-4, 1e-6), "mean_msp": (1e-4, 1e-6), "ece": (1e-4, 1e-5),
}


def _close(key: str, a: Any, b: Any) -> bool:
    """Whether metric ``key`` agrees between two paths' rows (``ma``/``mb``: each row's metrics)."""
    if isinstance(a, float) and isinstance(b, float):
        if key.startswith("err_") and key.endswith("_rel"):
            # |out - golden| / (|golden| + 1e-8) turns each path's rounding near zero outputs into any value
            # (measured: 0.29 naive vs 0.047 cone on fashion_seg), so the values are not compared; both paths
            # must agree on whether there is an error at all and whether it is defined (the abs errors,
            # which rounding cannot blow up, are compared closely below)
            return bool(np.isnan(a) == np.isnan(b) and (a == 0) == (b == 0))
        if key.startswith("err_"):
            return bool(np.isclose(a, b, rtol=1e-3, atol=2e-5))
        rtol, atol = _VALUE_METRICS.get(key, (1e-9, 1e-9))
        return bool(np.isclose(a, b, rtol=rtol, atol=atol))
    return bool(a == b)


def _three_sites(model: str, target: str) -> list[Any]:
    loaded = load_model(model)
    sites = enumerate_sites(loaded.model, loaded.value_shapes).select(target, None, None, False)
    sites = [s for s in sites if (s.elements or 0) > 1]
    return [sites[0], sites[len(sites) // 2], sites[-1]]  # early, middle, late


def _run(model: str, data: str | None, plan: Any, mode: str, **kw: Any) -> tuple[Engine, list[dict[str, Any]]]:
    eng = Engine(EngineConfig(model_path=model, data_path=data, mode=mode, samples=8, **kw))
    return eng, [eng.run(e, True, True) for e in plan.experiments]


CASES = [
    ("digits_cnn.onnx", "digits_eval.npz", "weights", 36),
    ("digits_cnn.onnx", "digits_eval.npz", "activations", 36),
    ("fashion_cnn_bnfold.onnx", None, "weights", 30),
    ("fashion_cnn_int8_qdq.onnx", None, "weights", 24),
    ("digits_cnn_paddle.onnx", "digits_eval.npz", "weights", 24),
    ("fashion_seg.onnx", None, "activations", 24),
]


@pytest.mark.parametrize(("model", "data", "target", "n"), CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_suffix_path_matches_naive(model: str, data: str | None, target: str, n: int) -> None:
    path = str(ZOO / model)
    data_path = str(ZOO / "data" / data) if data else None
    sites = _three_sites(path, target)
    plan = make_plan(path, sites, ["flip"], None, n, None, 0.99, 0.5, 3, target)
    _, naive = _run(path, data_path, plan, "naive")
    eng, fast = _run(path, data_path, plan, "suffix")
    assert len(fast) == len(naive) == len(plan.experiments)
    for e, a, b in zip(plan.experiments, naive, fast):
        assert a["outcome"] == b["outcome"], (e, a["outcome"], b["outcome"])
        for flag in ("masked", "sdc1", "sdc5", "critical", "due"):
            assert a[flag] == b[flag], (e, flag)
        assert a["images_changed"] == b["images_changed"]
        assert set(a["metrics"]) == set(b["metrics"])
        for k in a["metrics"]:
            assert _close(k, a["metrics"][k], b["metrics"][k]), (e, k, a["metrics"][k], b["metrics"][k])
    # the cone path was really used for at least one experiment (not a fallback to whole-model sessions)
    assert any(r["path"].startswith("cone") for r in fast)
    assert {r["path"] for r in naive} == {"naive"}


SPLIT_CASES = [c for c in CASES if c[2] == "weights"]


@pytest.mark.parametrize(("model", "data", "target", "n"), SPLIT_CASES, ids=[c[0] for c in SPLIT_CASES])
def test_split_weight_path_matches_naive(model: str, data: str | None, target: str, n: int) -> None:
    """The split path (baked head per fault + shared rest) forced on every float weight site where it
    reproduces the baked golden: the same outcomes and metrics as naive, and it is taken somewhere."""
    path = str(ZOO / model)
    data_path = str(ZOO / "data" / data) if data else None
    plan = make_plan(path, _three_sites(path, target), ["flip"], None, n, None, 0.99, 0.5, 4, target)
    _, naive = _run(path, data_path, plan, "naive")
    eng, fast = _run(path, data_path, plan, "suffix", split=True)
    for e, a, b in zip(plan.experiments, naive, fast):
        assert a["outcome"] == b["outcome"], (e, a["outcome"], b["outcome"])
        assert a["images_changed"] == b["images_changed"]
        for k in a["metrics"]:
            assert _close(k, a["metrics"][k], b["metrics"][k]), (e, k, a["metrics"][k], b["metrics"][k])
    if "int8" not in model:  # quantized weights always run baked
        assert any(r["path"].startswith("cone-split") for r in fast)
    else:
        assert {r["path"] for r in fast} == {"cone-baked"}


def test_outcomes_vary_in_the_equality_cases() -> None:
    """The equality test above is only meaningful if its plans mix outcomes: check one of them does."""
    path = str(ZOO / "digits_cnn.onnx")
    sites = _three_sites(path, "weights")
    plan = make_plan(path, sites, ["flip"], None, 36, None, 0.99, 0.5, 3, "weights")
    _, rows = _run(path, str(ZOO / "data" / "digits_eval.npz"), plan, "suffix")
    assert len({r["outcome"] for r in rows}) >= 2


# ------------------------------------------------------------------------------- tiny graphs

def _residual_model() -> onnx.ModelProto:
    """x -> Relu(a) -> Mul(w) (m) -> Add(a, m) (s) -> Relu (y): a skips over the Mul."""
    w = np.array([[0.5, -2.0, 1.5, 0.25]], dtype=np.float32)
    g = oh.make_graph(
        [
            oh.make_node("Relu", ["x"], ["a"], name="r0"),
            oh.make_node("Mul", ["a", "w"], ["m"], name="mul"),
            oh.make_node("Add", ["a", "m"], ["s"], name="add"),
            oh.make_node("Relu", ["s"], ["y"], name="r1"),
        ],
        "res",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[onh.from_array(w, "w")],
    )
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def test_forward_cone_and_boundary_on_a_residual_block() -> None:
    m = _residual_model()
    assert forward_cone(m.graph, ["m"]) == [2, 3]
    assert boundary(m, ["m"], ["m"]) == ["a"]  # the skip tensor must come from the cache
    assert forward_cone(m.graph, ["a"]) == [1, 2, 3]
    assert boundary(m, ["a"], ["a"]) == []
    # a weight's cone starts one node earlier (the producer of its consumer's data input)
    assert weight_start(m, "w", depth=1) == ["w", "x"]
    assert forward_cone(m.graph, weight_start(m, "w")) == [0, 1, 2, 3]


def test_cut_model_runs_and_equals_the_whole_model() -> None:
    import onnxruntime as ort

    m = _residual_model()
    x = np.array([[1.0, -1.0, 2.0, 3.0], [-0.5, 4.0, 0.0, 1.0]], dtype=np.float32)
    full = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    a = np.maximum(x, 0)
    mm = a * np.array([[0.5, -2.0, 1.5, 0.25]], dtype=np.float32)
    cut = cut_model(m, ["m"], ["m"], {"a": a, "m": mm})
    assert [n.op_type for n in cut.model.graph.node] == ["Add", "Relu"]
    assert cut.inputs == ["a", "m"] and cut.cached == ["a"] and cut.outputs == ["y"]
    sess = ort.InferenceSession(cut.model.SerializeToString(), providers=["CPUExecutionProvider"])
    faulty = mm.copy()
    faulty[0, 1] = -40.0
    got = sess.run(["y"], {"a": a, "m": faulty})[0]
    np.testing.assert_array_equal(got, np.maximum(a + faulty, 0))
    np.testing.assert_array_equal(sess.run(["y"], {"a": a, "m": mm})[0], full.run(["y"], {"x": x})[0])


def _relu_site_model(tmp_path: Path) -> str:
    """x -> Mul(w) -> h -> Relu -> y: h's only consumer is a ReLU (the exact-shortcut case)."""
    w = np.array([[1.0, -1.0, 0.5]], dtype=np.float32)
    g = oh.make_graph(
        [oh.make_node("Mul", ["x", "w"], ["h"], name="mul"), oh.make_node("Relu", ["h"], ["y"], name="relu")],
        "relu",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[onh.from_array(w, "w")],
    )
    p = tmp_path / "relu.onnx"
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8), p)
    np.savez(tmp_path / "d.npz", x=np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32))
    return str(p)


def _exp(site: str, index: int, bit: int) -> Experiment:
    return Experiment(id=0, site=site, kind="activation", index=index, bit=bit,
                      fault=BitFlip((bit,)).to_dict(), seed=1, round=0)


def test_exact_shortcut_masks_a_negative_value_that_stays_negative(tmp_path: Path) -> None:
    model = _relu_site_model(tmp_path)
    eng = Engine(EngineConfig(model_path=model, data_path=str(tmp_path / "d.npz"), mode="suffix"))
    # h[:, 1] = -x[:, 1] < 0: flipping a mantissa bit keeps it negative -> ReLU still outputs 0
    row = eng.run(_exp("h", 1, 3), True, False)
    assert eng.runner("h", True, False).describe() == {"site": "h", "path": "cone", "reason": "", "shortcut": True}
    assert row["outcome"] == "masked" and row["path"] == "cone+shortcut"
    # the sign bit makes it positive: the shortcut must not apply, and the output changes
    row = eng.run(_exp("h", 1, 31), True, False)
    assert row["path"] == "cone" and row["outcome"] != "masked"
    # a positive value changed by a mantissa flip: not masked either
    row = eng.run(_exp("h", 0, 22), True, False)
    assert row["path"] == "cone" and not row["masked"]
    # the same experiments without shortcuts give the same outcomes
    slow = Engine(EngineConfig(model_path=model, data_path=str(tmp_path / "d.npz"), mode="suffix", shortcuts=False))
    for idx, bit in ((1, 3), (1, 31), (0, 22)):
        a, b = slow.run(_exp("h", idx, bit), True, False), eng.run(_exp("h", idx, bit), True, False)
        assert a["outcome"] == b["outcome"] and a["path"] == "cone"


def test_cache_budget_falls_back_to_whole_model_sessions(tmp_path: Path) -> None:
    model = _relu_site_model(tmp_path)
    eng = Engine(EngineConfig(model_path=model, data_path=str(tmp_path / "d.npz"), mode="suffix", cache_mb=1e-9))
    row = eng.run(_exp("h", 1, 31), True, False)
    assert row["path"] == "port"
    assert "cache" in eng.runner("h", True, False).describe()["reason"]
    ref = Engine(EngineConfig(model_path=model, data_path=str(tmp_path / "d.npz"), mode="naive"))
    assert ref.run(_exp("h", 1, 31), True, False)["outcome"] == row["outcome"]


def _save_conv_model(tmp_path: Path, nodes: list[Any], inits: list[Any], x_shape: list[int], y_shape: list[int],
                     x: np.ndarray) -> tuple[str, str]:
    """A float graph x [N, *x_shape] -> y [N, *y_shape] saved with its data (x as float32): (model, data) paths."""
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *y_shape])], initializer=inits)
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=x.astype(np.float32))
    return str(tmp_path / "m.onnx"), str(tmp_path / "d.npz")


def _conv_bn_relu(tmp_path: Path) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    conv_w = rng.normal(size=(4, 1, 3, 3)).astype(np.float32)
    nodes = [
        oh.make_node("Conv", ["x", "cw"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        oh.make_node("BatchNormalization", ["c", "g", "b", "mu", "var"], ["bn"], name="bn"),
        oh.make_node("Relu", ["bn"], ["y"], name="relu"),
    ]
    inits = [onh.from_array(conv_w, "cw")] + [
        onh.from_array(v.astype(np.float32), n)
        for n, v in (("g", rng.uniform(0.5, 2, 4)), ("b", rng.normal(size=4)), ("mu", rng.normal(size=4)),
                     ("var", rng.uniform(0.1, 2, 4)))
    ]
    return _save_conv_model(tmp_path, nodes, inits, [1, 6, 6], [4, 6, 6], rng.normal(size=(16, 1, 6, 6)))


def _equals_naive_on_conv_bn(p: str, d: str, split: bool | None) -> dict[str, list[str]]:
    """Rows of the suffix engine equal naive's; returns the paths taken per site."""
    eng = Engine(EngineConfig(model_path=p, data_path=d, mode="suffix", split=split))
    naive = Engine(EngineConfig(model_path=p, data_path=d, mode="naive"))
    paths: dict[str, list[str]] = {"var": [], "cw": []}
    for site in ("var", "cw"):
        for idx in range(3):
            for bit in (0, 1, 12, 23, 30):
                e = Experiment(id=0, site=site, kind="weight", index=idx, bit=bit,
                               fault=BitFlip((bit,)).to_dict(), seed=1, round=0)
                a, b = naive.run(e, True, False), eng.run(e, True, False)
                assert a["outcome"] == b["outcome"], (site, idx, bit)
                assert a["metrics"] == b["metrics"], (site, idx, bit)
                paths[site].append(b["path"])
    return paths


def test_bn_parameters_run_fed_and_rounding_ambiguous_faults_rerun_baked(tmp_path: Path) -> None:
    """A BatchNormalization after a Conv is folded by ORT when its parameters are constants; with a BN
    parameter fed as an input the arithmetic differs by rounding, and an extreme value (bit 30) can
    overflow in w * gamma / sigma only when folded. Where the baked cone is not split (here: switched
    off), the suffix path feeds the weight and re-runs, with the weight baked in, every experiment whose
    outcome that could change: outcomes equal naive's."""
    paths = _equals_naive_on_conv_bn(*_conv_bn_relu(tmp_path), split=False)
    assert set(paths["var"]) <= {"cone", "cone+baked"}  # the fed cone, not the split or the baked path
    assert paths["var"].count("cone+baked") >= 3  # at least the three bit-30 flips were re-run baked


def test_weights_run_split_head_and_rest_and_equal_naive(tmp_path: Path) -> None:
    """The baked cone split after the weight's fused group (Conv + BatchNormalization + Relu): a small
    head session with the faulty weight baked in, the rest shared. No fed weight, nothing re-run, and
    faults that leave the head's output unchanged are masked without running the rest."""
    p, d = _conv_bn_relu(tmp_path)
    paths = _equals_naive_on_conv_bn(p, d, split=True)
    assert {x for ps in paths.values() for x in ps} <= {"cone-split", "cone-split+shortcut"}  # nothing re-run
    eng = Engine(EngineConfig(model_path=p, data_path=d, mode="suffix", split=True))
    for site in ("var", "cw"):
        info = eng.runner(site, True, False).describe()
        assert info["path"] == "cone-split"
        assert info["head_ops"] == ["Conv", "BatchNormalization", "Relu"]
        assert not info["rest"]  # the Relu output is the model output: nothing after the head
    # bit 0 of a variance changes sigma by far less than the outputs' rounding: the head output stays equal
    assert "cone-split+shortcut" in paths["var"]


def test_split_by_default_only_for_big_cones(tmp_path: Path) -> None:
    """split=None splits a weight's cone when one run of it is at least SPLIT_MIN_MACS multiply-adds
    (deterministic, so every worker takes the same path): not on digits_cnn (0.6 M per image)."""
    from onnxfi.cut import cone_macs
    from onnxfi.engine.rounding import SPLIT_MIN_MACS, split_pays

    m = onnx.load(str(ZOO / "digits_cnn.onnx"))
    shapes = load_model(str(ZOO / "digits_cnn.onnx")).value_shapes
    whole = cone_macs(m, range(len(m.graph.node)), shapes)
    # conv 1->16 3x3, 16->32 3x3 at 8x8, 32->64 3x3 at 4x4, Gemm 64*2*2 -> 10 (numpy of the same formula)
    assert whole == 64 * 16 * 9 + 64 * 32 * 16 * 9 + 16 * 64 * 32 * 9 + 10 * 256
    assert not split_pays(whole, 360) and split_pays(whole, SPLIT_MIN_MACS // whole + 1)
    paths = _equals_naive_on_conv_bn(*_conv_bn_relu(tmp_path), split=None)
    assert not any(x.startswith("cone-split") for x in paths["cw"])


def test_weight_head_ends_after_the_fused_chain_and_refuses_shared_values() -> None:
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])
    y = oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4, 4])
    w = onh.from_array(np.ones((2, 2, 1, 1), np.float32), "w")
    nodes = [
        oh.make_node("Conv", ["x", "w"], ["c"]),
        oh.make_node("Add", ["c", "x"], ["a"]),  # residual Add: fused into the Conv by ORT
        oh.make_node("Relu", ["a"], ["r"]),
        oh.make_node("MaxPool", ["r"], ["y"], kernel_shape=[1, 1]),
    ]
    m = oh.make_model(oh.make_graph(nodes, "g", [x], [y], initializer=[w]))
    from onnxfi.cut import weight_head

    assert weight_head(m, "w", ["w"]) == ([0, 1, 2], ["r"])
    nodes.append(oh.make_node("Identity", ["c"], ["y2"]))  # the Conv output is read outside the head
    m2 = oh.make_model(oh.make_graph(nodes, "g", [x], [y, oh.make_tensor_value_info("y2", TensorProto.FLOAT, None)],
                                     initializer=[w]))
    assert weight_head(m2, "w", ["w"]) == ([0], ["c"])  # two consumers: the head ends at the Conv


def _qdq_chain() -> onnx.ModelProto:
    """x -> Conv(w1) -> Relu -> Q(s, z) -> DQ(s, z) -> Conv(DQ(w2q)) -> y, with the activation scale s
    shared by a second Q/DQ pair at the input (as quantizers export it)."""
    rng = np.random.default_rng(3)
    w1 = rng.normal(size=(2, 1, 1, 1)).astype(np.float32)
    w2q = rng.integers(-20, 20, size=(2, 2, 1, 1)).astype(np.int8)
    inits = [onh.from_array(w1, "w1"), onh.from_array(w2q, "w2q"), onh.from_array(np.float32(0.05), "s"),
             onh.from_array(np.int8(0), "z"), onh.from_array(np.float32(0.02), "ws"), onh.from_array(np.int8(0), "wz")]
    nodes = [
        oh.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        oh.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        oh.make_node("Conv", ["xd", "w1"], ["c1"]),
        oh.make_node("Relu", ["c1"], ["r1"]),
        oh.make_node("QuantizeLinear", ["r1", "s", "z"], ["r1q"]),
        oh.make_node("DequantizeLinear", ["r1q", "s", "z"], ["r1d"]),
        oh.make_node("DequantizeLinear", ["w2q", "ws", "wz"], ["w2"]),
        oh.make_node("Conv", ["r1d", "w2"], ["y"]),
    ]
    g = oh.make_graph(nodes, "qdq", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 3, 3])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 3, 3])], initializer=inits)
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def test_weight_cut_stops_at_quantized_tensors_and_ignores_shared_scales() -> None:
    """The float tensors before a QuantizeLinear do not exist in ORT's fused QLinearConv graph: a baked
    cone starts at the quantized tensor. A constant the walk meets (the shared scale s) is not a start:
    it would pull its other users (the input's Q/DQ) and their float inputs into the cone."""
    m = _qdq_chain()
    start = weight_start(m, "w2q")
    assert start == ["w2q", "r1q"]
    ops = [m.graph.node[i].op_type for i in forward_cone(m.graph, start)]
    assert ops == ["DequantizeLinear", "DequantizeLinear", "Conv"]
    assert boundary(m, start, ["w2q"]) == ["r1q"]


def test_quantized_weight_site_runs_baked_and_equals_naive(tmp_path: Path) -> None:
    p = tmp_path / "q.onnx"
    onnx.save(_qdq_chain(), p)
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "d.npz", x=rng.uniform(0, 2, size=(8, 1, 3, 3)).astype(np.float32))
    cfg = {"model_path": str(p), "data_path": str(tmp_path / "d.npz")}
    eng, naive = Engine(EngineConfig(mode="suffix", **cfg)), Engine(EngineConfig(mode="naive", **cfg))
    for idx in range(4):
        for bit in range(8):
            e = Experiment(id=0, site="w2q", kind="weight", index=idx, bit=bit,
                           fault=BitFlip((bit,)).to_dict(), seed=1, round=0)
            a, b = naive.run(e, True, False), eng.run(e, True, False)
            assert (a["outcome"], a["metrics"]) == (b["outcome"], b["metrics"]), (idx, bit)
    info = eng.runner("w2q", True, False).describe()
    assert info["path"] == "cone-baked" and "quantized" in info["reason"]


def test_noise_bounds_and_ambiguity() -> None:
    from onnxfi.engine.rounding import ambiguous, extreme, noise_bounds

    g = {"y": np.array([[1.0, 3.0, 2.0]], dtype=np.float32)}
    ulp = float(np.spacing(np.float32(3.0)))
    nudged = {"y": g["y"] + np.float32(ulp) * np.array([[0, 1, 0]], dtype=np.float32)}
    bounds = noise_bounds(nudged, g)
    assert bounds == {"y": max(4 * ulp, 8 * ulp)}
    assert noise_bounds({"y": g["y"] + np.float32(0.5)}, g) is None  # beyond rounding
    assert noise_bounds({"y": g["y"][:, ::-1].copy()}, g) is None  # other decisions / values
    assert noise_bounds({"y": g["y"].astype(np.float64)}, g) is None  # other dtype
    b = {"y": 8 * ulp}
    assert ambiguous(g, g, b)  # equal to golden: masked or not is decided by rounding
    assert not ambiguous({"y": np.array([[1.0, 5.0, 2.0]], np.float32)}, g, b)  # clear change, clear top-1
    assert ambiguous({"y": np.array([[1.0, 3.0, 3.0]], np.float32)}, g, b)  # a tie decides the top-1
    assert ambiguous({"y": np.array([[np.nan, 3.0, 2.0]], np.float32)}, g, b)
    assert extreme(np.float32(1e30)) and extreme(np.float32(np.inf)) and not extreme(np.float32(1e10))
    assert extreme(np.float16(300.0)) and not extreme(np.float16(100.0)) and not extreme(np.int8(127))


def test_weight_and_bias_of_a_layer_share_one_prefix_run(tmp_path: Path) -> None:
    """The prefix (the fault-free run with the cone's inputs exposed) is built by appending the extra
    outputs to the serialized model and is shared by sites that need the same values."""
    rng = np.random.default_rng(5)
    inits = [onh.from_array(rng.normal(size=(3, 2, 1, 1)).astype(np.float32), "w0"),
             onh.from_array(rng.normal(size=(2, 3, 1, 1)).astype(np.float32), "w"),
             onh.from_array(rng.normal(size=(2,)).astype(np.float32), "b")]
    nodes = [oh.make_node("Conv", ["x", "w0"], ["c0"]), oh.make_node("Relu", ["c0"], ["r0"]),
             oh.make_node("Conv", ["r0", "w", "b"], ["y"])]
    p, d = _save_conv_model(tmp_path, nodes, inits, [2, 3, 3], [2, 3, 3], rng.normal(size=(6, 2, 3, 3)))
    eng = Engine(EngineConfig(model_path=p, data_path=d, mode="suffix"))
    rw, rb = eng.runner("w", True, False).describe(), eng.runner("b", True, False).describe()
    assert eng.ctx.prefix_runs == 1
    x = np.load(d)["x"]
    expected = np.maximum(0, np.einsum("oc,nchw->nohw", onh.to_array(inits[0])[:, :, 0, 0], x))
    np.testing.assert_allclose(eng.ctx.prefix(["r0"])[0][0]["r0"], expected, rtol=1e-5)
    assert eng.ctx.prefix_runs == 1  # the cached run, not a new one
    assert rw["cut_inputs"] == ["r0", "w"] and rb["cut_inputs"] == ["r0", "b"]


def test_a_scalar_weight_stays_a_scalar_in_the_naive_model() -> None:
    """A QDQ scale is a 0-d tensor; rewritten as shape [1] it becomes a per-axis scale and ORT computes
    the layer another way (naive once reported a bit-0 flip of this scale as tolerable while the model
    with only that bit changed gives the golden outputs)."""
    import onnx_ir as ir

    path = str(ZOO / "fashion_cnn_int8_qdq.onnx")
    loaded = load_model(path)
    index = enumerate_sites(loaded.model, loaded.value_shapes)
    site = index.get("classifier.2.weight_scale")
    a = index.weight_array(site)
    assert a.shape == ()
    index.set_weight_array(site, a * np.float32(2))
    t = next(t for t in ir.to_proto(loaded.model).graph.initializer if t.name == "classifier.2.weight_scale")
    assert list(t.dims) == [] and onh.to_array(t) == a * 2
    data = str(ZOO / "data" / "fashion_eval.npz")
    e = Experiment(id=0, site=site.name, kind="weight", index=0, bit=0, fault=BitFlip((0,)).to_dict(), seed=1, round=0)
    naive = Engine(EngineConfig(model_path=path, data_path=data, mode="naive")).run(e, True, False)
    fast = Engine(EngineConfig(model_path=path, data_path=data, mode="suffix")).run(e, True, False)
    assert naive["outcome"] == fast["outcome"] == "masked"


def test_subgraph_weights_and_a_scalar_input_run_in_every_mode(tmp_path: Path) -> None:
    """Weights inside If branches are rebuilt per fault (they cannot be fed); a 0-d input (the If's
    condition) goes to every batch whole, from random data and from an .npz. Every mode agrees."""
    def branch(tag: str, value: float) -> onnx.GraphProto:
        return oh.make_graph([oh.make_node("Add", ["x", "k"], [f"{tag}_out"])], tag, [],
                             [oh.make_tensor_value_info(f"{tag}_out", TensorProto.FLOAT, ["N", 2])],
                             initializer=[onh.from_array(np.full(2, value, np.float32), "k")])

    g = oh.make_graph(
        [oh.make_node("If", ["cond"], ["y"], then_branch=branch("then", 1.0), else_branch=branch("else", 2.0))],
        "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2]),
              oh.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])])
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8), tmp_path / "if.onnx")
    np.savez(tmp_path / "d.npz", x=np.linspace(-1, 1, 8, dtype=np.float32).reshape(4, 2), cond=np.array(True))
    results = {}
    for data in (None, str(tmp_path / "d.npz")):
        for mode in ("suffix", "port", "naive"):
            eng = Engine(EngineConfig(model_path=str(tmp_path / "if.onnx"), data_path=data, mode=mode,
                                      input_shapes={} if data else {"x": (4, 2)}))
            rows = []
            for site in sorted(s.name for s in eng.ctx.index.select("weights")):
                for bit in (0, 30):
                    e = Experiment(id=0, site=site, kind="weight", index=1, bit=bit,
                                   fault=BitFlip((bit,)).to_dict(), seed=1, round=0)
                    rows.append(eng.run(e, True, False)["outcome"])
            results[(data, mode)] = rows
        outs = {tuple(v) for (d, _), v in results.items() if d == data}
        assert len(outs) == 1, results
    # rows: then-branch k (bits 0, 30), else-branch k; random data has cond False, the .npz cond True:
    # only the branch taken can change the output
    rand, npz = results[(None, "naive")], results[(str(tmp_path / "d.npz"), "naive")]
    assert rand[:2] == ["masked", "masked"] and "masked" not in rand[2:]
    assert npz[2:] == ["masked", "masked"] and "masked" not in npz[:2]


def test_float16_weight_cut_is_unfaithful_and_rebuilds_the_whole_model() -> None:
    """ORT computes a float16 Conv/BatchNormalization chain in float32 inside the whole model, while a
    cut rounds its cached boundary to float16: the cut's golden differs from the model's, so the site
    rebuilds the whole model per fault, and rows equal naive's exactly (metrics too)."""
    path = str(ZOO / "fashion_cnn_fp16.onnx")
    data = str(ZOO / "data" / "fashion_eval.npz")
    site = "features.0.weight"
    fast = Engine(EngineConfig(model_path=path, data_path=data, mode="suffix"))
    naive = Engine(EngineConfig(model_path=path, data_path=data, mode="naive"))
    for idx, bit in ((109, 2), (8, 9), (126, 14), (17, 11)):
        e = Experiment(id=0, site=site, kind="weight", index=idx, bit=bit, fault=BitFlip((bit,)).to_dict(), seed=1, round=0)
        a, b = fast.run(e, True, False), naive.run(e, True, False)
        assert (a.pop("path"), b.pop("path")) == ("rebuild", "naive")
        assert a == b, (idx, bit)
    assert "differ from the whole model" in fast.runner(site, True, False).describe()["reason"]


def test_weight_start_of_a_batchnorm_stops_at_the_conv_input() -> None:
    """A BatchNormalization weight's baked cone starts at its Conv's input (so the Conv+BN fusion is
    whole in it) and no further: one more step back would recompute the previous block's BN unfused."""
    m = onnx.load(str(ZOO / "digits_cnn.onnx"))
    assert weight_start(m, "features.4.weight") == ["features.4.weight", "/features/features.2/Relu_output_0"]


def test_split_with_the_head_ending_in_a_model_output_and_a_second_output(tmp_path: Path) -> None:
    """Two outputs: the weight's head ends in the first (Conv -> Relu = y1), the rest computes the second
    from it (Conv -> y2). The split path gives naive's rows for faults in both convs' weights."""
    rng = np.random.default_rng(5)
    nodes = [
        oh.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["c1"], ["y1"]),
        oh.make_node("Conv", ["y1", "w2"], ["y2"]),
    ]
    inits = [onh.from_array(rng.normal(size=(3, 2, 3, 3)).astype(np.float32), "w1"),
             onh.from_array(rng.normal(size=(2, 3, 1, 1)).astype(np.float32), "w2")]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
                      [oh.make_tensor_value_info("y1", TensorProto.FLOAT, ["N", 3, 5, 5]),
                       oh.make_tensor_value_info("y2", TensorProto.FLOAT, ["N", 2, 5, 5])], initializer=inits)
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(6, 2, 5, 5)).astype(np.float32))
    # two outputs that both decide and no labels: the scored one is named (both are still compared for masked)
    cfg = {"model_path": str(tmp_path / "m.onnx"), "data_path": str(tmp_path / "d.npz"), "output": "y1"}
    fast, naive = Engine(EngineConfig(mode="suffix", split=True, **cfg)), Engine(EngineConfig(mode="naive", **cfg))
    for site in ("w1", "w2"):
        for idx, bit in ((0, 0), (5, 20), (7, 30), (1, 31)):
            e = Experiment(id=0, site=site, kind="weight", index=idx, bit=bit, fault=BitFlip((bit,)).to_dict(),
                           seed=1, round=0)
            a, b = naive.run(e, True, False), fast.run(e, True, False)
            assert a["outcome"] == b["outcome"], (site, idx, bit)
            for k in a["metrics"]:
                assert _close(k, a["metrics"][k], b["metrics"][k]), (site, idx, bit, k)
    r1 = fast.runner("w1", True, False).describe()
    assert r1["path"] == "cone-split" and r1["rest"] and r1["head_outputs"] == ["y1"]
    assert fast.runner("w2", True, False).describe()["path"] == "cone-split"


def test_chooser_names_the_path_and_why(tmp_path: Path) -> None:
    """choose() returns the runner with its path and the reason faster paths were skipped; the engine's
    rows carry that path. Here: an activation under a ReLU takes the cone; a cache budget too small for
    the prefix falls back to the port path and says so; naive mode is naive with no reason."""
    from onnxfi.engine.chooser import choose
    from onnxfi.engine.context import Context

    model = _relu_site_model(tmp_path)
    base = {"model_path": model, "data_path": str(tmp_path / "d.npz")}
    ctx = Context(EngineConfig(mode="suffix", **base))
    c = choose(ctx, ctx.index.get("h"), True, False)
    assert (c.path, c.reason) == ("cone", "") and c.runner.path == "cone"
    small = Context(EngineConfig(mode="suffix", cache_mb=1e-9, **base))
    c = choose(small, small.index.get("h"), True, False)
    assert c.path == "port" and "--cache-mb" in c.reason
    naive = Context(EngineConfig(mode="naive", **base))
    c = choose(naive, naive.index.get("h"), True, False)
    assert (c.path, c.reason) == ("naive", "")


def _bfloat16_model(tmp_path: Path) -> tuple[str, str]:
    """x[N,4] -> Cast(bfloat16) -> h -> Cast(float) -> Mul(Cast(float, w: bfloat16[4])) -> y: a bfloat16
    activation and a bfloat16 weight (ORT's CPU kernels for bfloat16 are few: Cast is one). x[:, 0] and
    w[0] are 1.5 (bfloat16 0x3FC0): flipping bit 14, the exponent's top bit, makes 0x7FC0, a NaN."""
    import ml_dtypes

    w = np.array([1.5, 2.0, -0.5, 0.25], dtype=ml_dtypes.bfloat16)
    nodes = [oh.make_node("Cast", ["x"], ["h"], to=TensorProto.BFLOAT16, name="to_bf16"),
             oh.make_node("Cast", ["h"], ["hf"], to=TensorProto.FLOAT, name="h_to_f32"),
             oh.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT, name="w_to_f32"),
             oh.make_node("Mul", ["hf", "wf"], ["y"], name="mul")]
    w_init = onh.from_array(w, "w")
    assert w_init.data_type == TensorProto.BFLOAT16
    g = oh.make_graph(nodes, "bf16", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], initializer=[w_init])
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8), tmp_path / "bf16.onnx")
    x = np.random.default_rng(3).uniform(0.5, 2.0, size=(6, 4)).astype(np.float32)
    x[:, 0] = 1.5
    np.savez(tmp_path / "bf16.npz", x=x)
    return str(tmp_path / "bf16.onnx"), str(tmp_path / "bf16.npz")


def test_a_nan_from_a_bfloat16_fault_is_due_on_the_fast_path_and_the_naive_path(tmp_path: Path) -> None:
    """bfloat16 is float everywhere a float check is made (its numpy kind is 'V', not 'f'). Where ORT
    cannot run a fast path's sessions for a bfloat16 tensor (it can neither return nor be fed one through
    Python), the chooser falls back to the next path and says why, instead of failing every experiment."""
    model, data = _bfloat16_model(tmp_path)
    fast = Engine(EngineConfig(model_path=model, data_path=data, mode="suffix"))
    naive = Engine(EngineConfig(model_path=model, data_path=data, mode="naive"))
    for site, kind in (("w", "weight"), ("h", "activation")):
        e = Experiment(id=0, site=site, kind=kind, index=0, bit=14, fault=BitFlip((14,)).to_dict(), seed=1)
        a, b = naive.run(e, True, False), fast.run(e, True, False)
        assert a["outcome"] == b["outcome"] == "due" and a["due"] and b["due"], (site, a, b)
        assert a["path"] == "naive" and b["path"] != "naive"
        info = fast.runner(site, True, False).describe()
        assert info["path"] in ("cone", "cone-baked", "cone-split", "port", "rebuild")
        assert info["path"] == "cone" or "onnxruntime cannot run" in info["reason"], info
    # a mantissa flip keeps values finite: not DUE on either path
    e = Experiment(id=1, site="w", kind="weight", index=0, bit=3, fault=BitFlip((3,)).to_dict(), seed=1)
    assert naive.run(e, True, False)["outcome"] == fast.run(e, True, False)["outcome"] != "due"


def test_rounding_rules_treat_bfloat16_and_float8_as_float() -> None:
    import ml_dtypes

    from onnxfi.engine.rounding import extreme, is_float

    for t in (ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2, np.float16, np.float32):
        assert is_float(np.zeros(2, t)), t
    assert not is_float(np.zeros(2, np.int8)) and not is_float(np.zeros(2, np.uint16))
    assert extreme(np.array(np.inf, ml_dtypes.bfloat16)) and extreme(np.array(1e30, ml_dtypes.bfloat16))
    assert not extreme(np.array(3.0, ml_dtypes.bfloat16))
    assert extreme(np.array(448.0, ml_dtypes.float8_e4m3fn))  # its largest finite value


def test_small_change_rule_is_a_function_of_the_site_alone() -> None:
    """Which fed weight experiments go straight to the baked cone: changes below the outputs' relative
    rounding noise times 2^SMALL_CHANGE_MARGIN; nothing from other experiments enters it."""
    from onnxfi.engine.rounding import SMALL_CHANGE_MARGIN, small_change_class

    golden = {"y": np.array([[1.0, -4.0], [2.0, 0.5]], np.float32), "n": np.array([1, 2], np.int64)}
    bound = 4.0 * 2.0**-20  # relative noise 2^-20 of the largest |y| (4)
    assert small_change_class(golden, {"y": bound}) == -20 + SMALL_CHANGE_MARGIN
    assert small_change_class(golden, {}) == float("-inf")  # no float output: only extreme values skip


def _quantize_site_model(tmp_path: Path) -> str:
    """x -> Mul(w) -> h -> QuantizeLinear -> q -> DequantizeLinear -> y: h's only consumer quantizes it."""
    w = np.array([[1.0, -1.0, 0.5, 3.0]], dtype=np.float32)
    g = oh.make_graph(
        [oh.make_node("Mul", ["x", "w"], ["h"]), oh.make_node("QuantizeLinear", ["h", "s", "zp"], ["q"]),
         oh.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])],
        "quant",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[onh.from_array(w, "w"), onh.from_array(np.array(0.05, np.float32), "s"),
                     onh.from_array(np.array(3, np.int8), "zp")],
    )
    p = tmp_path / "quant.onnx"
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8), p)
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32))
    return str(p)


def test_exact_shortcut_through_a_quantize_linear(tmp_path: Path) -> None:
    """A flip that QuantizeLinear rounds back to the same integers is masked without running the cone.
    Every experiment the shortcut skipped is run anyway (shortcuts off, and the naive path): all masked,
    and every outcome is the same on the three."""
    model = _quantize_site_model(tmp_path)
    data = str(tmp_path / "d.npz")
    fast = Engine(EngineConfig(model_path=model, data_path=data, mode="suffix"))
    slow = Engine(EngineConfig(model_path=model, data_path=data, mode="suffix", shortcuts=False))
    naive = Engine(EngineConfig(model_path=model, data_path=data, mode="naive"))
    assert fast.runner("h", True, False).describe()["shortcut"] is True
    skipped = 0
    for idx in range(4):
        for bit in range(32):
            a, b, c = (e.run(_exp("h", idx, bit), True, False) for e in (fast, slow, naive))
            assert a["outcome"] == b["outcome"] == c["outcome"], (idx, bit)
            assert b["path"] == "cone" and c["path"] == "naive"
            if a["path"] == "cone+shortcut":
                skipped += 1
                assert b["masked"] and c["masked"], (idx, bit)
    assert 0 < skipped < 4 * 32  # low mantissa bits round away; exponent and sign bits do not


@pytest.mark.parametrize(("model", "data", "target", "n"), SPLIT_CASES, ids=[c[0] for c in SPLIT_CASES])
def test_sparse_plan_runs_baked_cones_and_matches_naive(model: str, data: str | None, target: str, n: int) -> None:
    """With the plan's fault counts known (what run_campaign passes), the cost model runs weights with few
    faults as a baked cone per fault, from one prefix run shared by every site: the same rows as naive,
    and the path says why."""
    from onnxfi.campaign import planned_faults

    path = str(ZOO / model)
    data_path = str(ZOO / "data" / data) if data else None
    loaded = load_model(path)
    sites = enumerate_sites(loaded.model, loaded.value_shapes).select(target, None, None, False)
    plan = make_plan(path, sites, ["flip"], None, n, None, 0.99, 0.5, 5, target)
    counts = planned_faults(plan)
    few = min(counts.values())
    assert few <= 3  # the plan has a sparse site
    _, naive = _run(path, data_path, plan, "naive")
    eng, fast = _run(path, data_path, plan, "suffix", site_faults=counts)
    for e, a, b in zip(plan.experiments, naive, fast):
        assert a["outcome"] == b["outcome"], (e, a["outcome"], b["outcome"])
        for flag in ("masked", "sdc1", "sdc5", "critical", "due"):
            assert a[flag] == b[flag], (e, flag)
        assert a["images_changed"] == b["images_changed"]
        for k in a["metrics"]:
            assert _close(k, a["metrics"][k], b["metrics"][k]), (e, k, a["metrics"][k], b["metrics"][k])
    one = next(e for e in plan.experiments if counts[e.site] == few)
    # a few faults do not pay for a setup (where two or more are planned, the cut of ORT's graph is tried first:
    # its baked form where a kernel computes a fed weight differently, e.g. a prepacked Gemm operand)
    took = fast[plan.experiments.index(one)]["path"]
    assert took == "cone-baked" or (few >= 2 and took == "opt-cut-baked"), took
    if "int8" not in model and took == "cone-baked":  # quantized weights run baked anyway
        reason = eng.runner(one.site, True, True).describe()["reason"]
        # (where more than one fault is planned, the optimized cone was tried first and says why not)
        assert (f"{few} fault{'s' if few > 1 else ''} planned at this weight: a baked cone per fault is the "
                "cheapest") in reason, reason
    # one prefix run for every site: of the model for the baked cones, of ORT's graph for the opt-cut weights
    assert eng.ctx.prefix_runs <= 1 and eng.ctx.optimized_prefix_runs <= 1
    assert eng.ctx.prefix_runs + eng.ctx.optimized_prefix_runs >= 1


def test_cost_model_prefers_split_or_fed_only_for_many_faults_on_expensive_cones() -> None:
    from onnxfi.engine import cost

    cheap = cost.ConeCost(session_s=0.002, run_s=0.002)  # a small CNN's cone: building costs a run
    assert cost.baked_s(1000, cheap) <= cost.fed_s(1000, cheap)  # fed never pays when runs cost as much
    big = cost.ConeCost(session_s=0.100, run_s=0.010)  # large weights, little compute
    head = cost.ConeCost(session_s=0.005, run_s=0.005)
    assert cost.baked_s(1, big) < cost.split_s(1, big, head) and cost.baked_s(1, big) < cost.fed_s(1, big)
    assert cost.split_s(20, big, head) < cost.baked_s(20, big)
    assert cost.fed_s(20, big) < cost.baked_s(20, big)
    assert cost.fed_s(20, big, rerun=0.0) < cost.fed_s(20, big)  # --no-verify re-runs nothing


def test_baked_runners_hold_no_session_and_are_not_rebuilt_across_rounds(tmp_path: Path) -> None:
    """A plan spread over more weights than --max-sessions: the baked cone runners keep no session, and the
    runners on ORT's optimized graph count against --cache-mb instead, so a second round over the same weights reuses
    them (they were rebuilt round after round, each recomputing its fault-free reference)."""
    from onnxfi.campaign import planned_faults

    path = str(ZOO / "digits_cnn.onnx")
    loaded = load_model(path)
    sites = enumerate_sites(loaded.model, loaded.value_shapes).select("weights", None, None, False)
    plan = make_plan(path, sites, ["flip"], None, 40, None, 0.99, 0.5, 2, "weights")
    eng = Engine(EngineConfig(model_path=path, data_path=str(ZOO / "data" / "digits_eval.npz"), samples=8,
                              max_sessions=2, site_faults=planned_faults(plan)))
    names = sorted({e.site for e in plan.experiments})
    assert len(names) > 2
    first = {n: eng.runner(n, True, False) for n in names}
    assert all(r.sessions == 0 and r.path in ("cone-baked", "opt-slice", "opt-cut", "opt-cut-baked")
               for r in first.values())
    assert {r.path for r in first.values()} == {"cone-baked", "opt-slice", "opt-cut"}
    assert all(eng.runner(n, True, False) is first[n] for n in names)


def test_graph_structure_cache_follows_a_changed_graph() -> None:
    m = _residual_model()
    before = forward_cone(m.graph, ["a"])
    m.graph.node.append(oh.make_node("Relu", [m.graph.output[0].name], ["extra"]))
    after = forward_cone(m.graph, ["a"])
    assert after == before + [len(m.graph.node) - 1]  # the new node reads the old output: it is in the cone


def test_masked_means_the_same_bytes() -> None:
    from onnxfi.outcomes import _same_bytes

    a = np.array([1.0, 0.0, np.nan], np.float32)
    assert _same_bytes(a, a.copy())
    assert not _same_bytes(a, np.array([1.0, -0.0, np.nan], np.float32))  # the sign of zero
    other_nan = a.copy()
    other_nan.view(np.uint32)[2] ^= 1  # another NaN payload
    assert not _same_bytes(a, other_nan)
    assert not _same_bytes(a, a[:2])
    assert _same_bytes(a[::-1][::-1], a)  # a view with strides is compared by its values' bytes


def test_adaptive_plans_give_the_cost_model_no_counts() -> None:
    from onnxfi.campaign import planned_faults

    path = str(ZOO / "digits_cnn.onnx")
    loaded = load_model(path)
    sites = enumerate_sites(loaded.model, loaded.value_shapes).select("weights", None, None, False)
    fixed = make_plan(path, sites, ["flip"], None, 50, None, 0.99, 0.5, 1, "weights")
    assert sum(planned_faults(fixed).values()) == 50
    adaptive = make_plan(path, sites, ["flip"], None, None, 0.05, 0.99, 0.5, 1, "weights", design="adaptive")
    assert planned_faults(adaptive) == {}


def test_the_shared_prefix_run_respects_the_cache_budget() -> None:
    """The prefix run shared by every planned weight is skipped when what it exposes would not fit in
    --cache-mb (estimated from the values' shapes before running it): each site then runs its own."""
    from onnxfi.engine.context import Context

    model, data = str(ZOO / "fashion_seg.onnx"), str(ZOO / "data" / "fashion_seg_eval.npz")
    roomy = Context(EngineConfig(model_path=model, data_path=data, samples=8, site_faults={}))
    shared = roomy._planned_prefix()
    assert shared is not None and roomy.prefix_runs == 1
    assert 0 < roomy._exposed_bytes(shared[2]) <= roomy.cfg.cache_mb * 2**20
    tight = Context(EngineConfig(model_path=model, data_path=data, samples=8, site_faults={},
                                 cache_mb=roomy._exposed_bytes(shared[2]) / 2**20 / 2))
    assert tight._planned_prefix() is None and tight.prefix_runs == 0


def test_same_outputs_wants_every_output_bit_for_bit() -> None:
    from onnxfi.engine.rounding import same_outputs

    a = {"y": np.array([1.0, 0.0], np.float32), "z": np.arange(3)}
    assert same_outputs({**a, "extra": np.zeros(1)}, a)  # outputs beyond the wanted ones do not count
    assert not same_outputs({"y": a["y"]}, a)  # a missing output
    assert not same_outputs({**a, "y": np.array([1.0, -0.0], np.float32)}, a)  # the sign of zero
    assert not same_outputs({**a, "z": np.arange(3).astype(np.int32)}, a)  # the dtype
