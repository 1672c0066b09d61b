"""The ``opt-cut`` and ``cone-opt`` paths (onnxfi/engine/optcone.py): ORT's optimized graph (the whole
model's, cut at the weight; or the weight's cone's) with the weight, as ORT rewrote it, fed per fault. Rows
equal the naive path's (a model rewritten and a session built per fault) bit for bit, on a
Conv+BatchNormalization (folded and reordered by ORT), a Gemm, float32 and float16, and bits of every kind;
the layouts it reads are checked against an index computation of their own; what it cannot read falls
back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest
from onnx import TensorProto

from onnxfi.cut import CutError
from onnxfi.engine import Engine, EngineConfig, chooser, optcone
from onnxfi.engine.optcone import bn_scale, layouts
from onnxfi.faults import BitFlip
from onnxfi.plan import Experiment


def test_blocked_layouts_put_each_element_where_the_index_formula_says() -> None:
    o, i, kh, kw = 10, 3, 2, 2
    w = np.arange(o * i * kh * kw, dtype=np.int64).reshape(o, i, kh, kw)
    got = layouts(w, -1)
    for b in (8, 16):
        bo = got[f"OIHWBo{b}"]
        assert bo.shape == (-(-o // b), i, kh, kw, b)
        bibo = got[f"OIHWBiBo{b}"]
        assert bibo.shape == (-(-o // b), -(-i // b), kh, kw, b, b)
        for a in range(bo.shape[0]):
            for c in range(i):
                for y in range(kh):
                    for x in range(kw):
                        for k in range(b):
                            oo = a * b + k
                            assert bo[a, c, y, x, k] == (w[oo, c, y, x] if oo < o else -1)
                            ib, ci = divmod(c, b)
                            assert bibo[a, ib, y, x, ci, k] == (w[oo, c, y, x] if oo < o else -1)
        assert (bibo == -1).sum() == bibo.size - w.size  # padding: every other position
    assert np.array_equal(layouts(np.arange(6).reshape(2, 3))["transposed"], np.arange(6).reshape(2, 3).T)


def _model(tmp_path: Path, zeros: bool = False, fp16: bool = False, bias_add: bool = False) -> tuple[str, str]:
    """x [N, 16, 8, 8] -> Conv 16->16 3x3 -> BatchNormalization -> Relu -> GlobalAveragePool -> Flatten ->
    Gemm 16->10: channels ORT's NCHWc kernels block, and a BatchNormalization ORT folds into the Conv.
    ``fp16``: every weight float16, x cast to float16 first and y back to float32 (as a converted model).
    ``bias_add``: the Conv's bias added by an Add of it reshaped, then an Identity, before the
    BatchNormalization (as Paddle's exporter writes a Conv)."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.2, size=(16, 16, 3, 3)).astype(np.float32)
    if zeros:
        w[:, :12] = 0.0  # mostly equal values: the layout cannot be read from them
    inits = [onh.from_array(w, "cw"), onh.from_array(rng.normal(0, 0.1, 16).astype(np.float32), "cb")]
    inits += [onh.from_array(v.astype(np.float32), n) for n, v in (
        ("g", rng.uniform(0.5, 2, 16)), ("b", rng.normal(size=16)), ("mu", rng.normal(0, 0.1, 16)),
        ("var", rng.uniform(0.1, 2, 16)))]
    inits += [onh.from_array(rng.normal(0, 0.3, size=(10, 16)).astype(np.float32), "fw"),
              onh.from_array(rng.normal(0, 0.1, 10).astype(np.float32), "fb")]
    nodes = [
        oh.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
        oh.make_node("BatchNormalization", ["c", "g", "b", "mu", "var"], ["bn"], epsilon=1e-3),
        oh.make_node("Relu", ["bn"], ["r"]),
        oh.make_node("GlobalAveragePool", ["r"], ["p"]),
        oh.make_node("Flatten", ["p"], ["f"]),
        oh.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1),
    ]
    if bias_add:
        inits.append(onh.from_array(np.array([1, 16, 1, 1], np.int64), "bshape"))
        nodes[:1] = [oh.make_node("Conv", ["x", "cw"], ["c0"], pads=[1, 1, 1, 1]),
                     oh.make_node("Reshape", ["cb", "bshape"], ["cb4"]), oh.make_node("Add", ["c0", "cb4"], ["ca"]),
                     oh.make_node("Identity", ["ca"], ["c"])]
    if fp16:
        inits = [onh.from_array(onh.to_array(t).astype(np.float16), t.name) for t in inits]
        nodes = [oh.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16)] + nodes + [
            oh.make_node("Cast", ["y16"], ["y"], to=TensorProto.FLOAT)]
        nodes[1].input[0] = "x16"
        nodes[-2].output[0] = "y16"
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 8, 8])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], initializer=inits)
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(12, 16, 8, 8)).astype(np.float32))
    return str(tmp_path / "m.onnx"), str(tmp_path / "d.npz")


BITS = (0, 3, 11, 19, 22, 23, 27, 30, 31)
BITS16 = (0, 3, 9, 10, 12, 14, 15)


@pytest.fixture(params=["opt-slice", "opt-cut", "cone-opt"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each path of a convolution filter in turn: ``opt-cut`` where its output block cannot be sliced,
    ``cone-opt`` where ``opt-cut`` cannot be made."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise CutError("refused by the test")
    if request.param == "cone-opt":
        monkeypatch.setattr(chooser, "OptCutRunner", refuse)
    if request.param == "opt-cut":
        monkeypatch.setattr(optcone, "ConvSlice", refuse)
    return str(request.param)


def _rows_equal_naive(model: str, data: str, site: str, indices: list[int], bits: tuple[int, ...] = BITS
                      ) -> list[str]:
    """Every (index, bit) of ``site``: the suffix engine's row (planned faults known, so the cost model
    applies) equals the naive engine's, outcome and metrics; returns the paths taken."""
    eng = Engine(EngineConfig(model_path=model, data_path=data, mode="suffix", site_faults={site: 50}))
    naive = Engine(EngineConfig(model_path=model, data_path=data, mode="naive"))
    paths = []
    for idx in indices:
        for bit in bits:
            e = Experiment(id=0, site=site, kind="weight", index=idx, bit=bit, fault=BitFlip((bit,)).to_dict(),
                           seed=1, round=0)
            a, b = naive.run(e, True, False), eng.run(e, True, False)
            assert (a["outcome"], a["masked"], a["sdc1"], a["due"]) == (b["outcome"], b["masked"], b["sdc1"],
                                                                        b["due"]), (site, idx, bit)
            assert a["metrics"] == b["metrics"], (site, idx, bit)
            paths.append(b["path"])
    return paths


def test_a_folded_and_reordered_conv_weight_runs_fed_in_orts_graph_and_equals_naive(tmp_path: Path,
                                                                                    path: str) -> None:
    model, data = _model(tmp_path)
    eng = Engine(EngineConfig(model_path=model, data_path=data, mode="suffix", site_faults={"cw": 50}))
    info = eng.runner("cw", True, False).describe()
    assert info["path"] == path and info["rewrite"].startswith("bn-fold, ")
    paths = _rows_equal_naive(model, data, "cw", [0, 17, 1000, 2303])
    assert path in paths and set(paths) <= {path, path + "+shortcut"}


def test_a_conv_whose_bias_is_added_before_its_batchnorm_is_found_folded(tmp_path: Path) -> None:
    """Paddle's exporter writes Conv -> Add (bias) -> Identity -> BatchNormalization; ORT fuses the Add and
    removes the Identity before it folds the BatchNormalization, so the fold factor is found through them."""
    model, data = _model(tmp_path, bias_add=True)
    assert bn_scale(onnx.load(model), "cw") is not None
    eng = Engine(EngineConfig(model_path=model, data_path=data, mode="suffix", site_faults={"cw": 50}))
    info = eng.runner("cw", True, False).describe()
    assert info["path"] == "opt-slice" and info["rewrite"].startswith("bn-fold, ")
    assert {p.split("+")[0] for p in _rows_equal_naive(model, data, "cw", [0, 1000, 2303])} == {"opt-slice"}


def test_a_gemm_weight_runs_fed_in_orts_graph_and_equals_naive(tmp_path: Path, path: str) -> None:
    model, data = _model(tmp_path)
    paths = _rows_equal_naive(model, data, "fw", [0, 37, 159])
    gemm = "opt-cut" if path == "opt-slice" else path  # (not a convolution: nothing to slice)
    assert set(paths) <= {gemm, gemm + "-baked"} and paths


def test_float16_weights_run_in_the_cut_of_orts_graph_and_equal_naive(tmp_path: Path) -> None:
    """A float16 model: ORT computes its Conv and Gemm in float32 (the weights cast, the fold computed in
    float16 arithmetic); the cone of its optimized graph reads the float32 values ORT keeps there."""
    model, data = _model(tmp_path, fp16=True)
    eng = Engine(EngineConfig(model_path=model, data_path=data, mode="suffix", site_faults={"cw": 50, "fw": 50}))
    conv, gemm = eng.runner("cw", True, False).describe(), eng.runner("fw", True, False).describe()
    assert conv["path"] == "opt-slice" and conv["rewrite"].startswith("bn-fold, cast, ")
    assert gemm["path"].startswith("opt-cut") and gemm["rewrite"].startswith("cast, ")
    assert {p.split("+")[0] for p in _rows_equal_naive(model, data, "cw", [0, 17, 2303], BITS16)} == {"opt-slice"}
    assert {p.split("-baked")[0] for p in _rows_equal_naive(model, data, "fw", [0, 159], BITS16)} == {"opt-cut"}


@pytest.mark.parametrize("counts", [{"cw": 5, "fw": 5}, {}], ids=["planned", "unknown"])
def test_the_planned_weights_share_one_prefix_run_of_orts_graph(tmp_path: Path, counts: dict[str, int]) -> None:
    """Known counts (a fixed plan) or none (an adaptive plan, which grows: any weight may be hit)."""
    model, data = _model(tmp_path)
    eng = Engine(EngineConfig(model_path=model, data_path=data, mode="suffix", site_faults=counts))
    conv, gemm = eng.runner("cw", True, False), eng.runner("fw", True, False)
    assert conv.path == "opt-slice" and gemm.path.startswith("opt-cut")
    assert conv.chunks is gemm.chunks  # type: ignore[attr-defined]
    assert isinstance(eng.ctx.planned_optimized, tuple) and eng.ctx.optimized_prefix_runs == 1


def test_the_fold_factor_is_orts(tmp_path: Path) -> None:
    """bn_scale is what ORT multiplies the Conv weight by: gamma / sqrt(var + epsilon) in float32; in
    float16, each step computed in float32 and rounded to float16."""
    model, _ = _model(tmp_path)
    m = onnx.load(model)
    s = bn_scale(m, "cw")
    arrays = {t.name: onh.to_array(t) for t in m.graph.initializer}
    assert s is not None and s.dtype == np.float32
    assert np.array_equal(s, arrays["g"] / np.sqrt(arrays["var"] + np.float32(1e-3)))
    assert bn_scale(m, "fw") is None  # a Gemm weight: no fold
    m16 = onnx.load(_model(tmp_path, fp16=True)[0])
    a16 = {t.name: onh.to_array(t) for t in m16.graph.initializer}
    s16 = bn_scale(m16, "cw")
    v = (a16["var"].astype(np.float32) + np.float32(1e-3)).astype(np.float16)
    want = (a16["g"].astype(np.float32) / np.sqrt(v.astype(np.float32)).astype(np.float16).astype(np.float32))
    assert s16 is not None and s16.dtype == np.float16 and np.array_equal(s16, want.astype(np.float16))


def test_a_weight_it_cannot_read_takes_another_path_and_still_equals_naive(tmp_path: Path) -> None:
    model, data = _model(tmp_path, zeros=True)
    eng = Engine(EngineConfig(model_path=model, data_path=data, mode="suffix", site_faults={"cw": 50}))
    r = eng.runner("cw", True, False)
    assert r.path not in ("opt-cut", "cone-opt") and "too many equal values" in r.reason
    _rows_equal_naive(model, data, "cw", [0, 2000])


@pytest.mark.parametrize("faults", [1, 0])
def test_one_planned_fault_runs_baked_and_an_unknown_count_tries_the_optimized_graph(tmp_path: Path,
                                                                                    faults: int) -> None:
    model, data = _model(tmp_path)
    eng = Engine(EngineConfig(model_path=model, data_path=data, mode="suffix", site_faults={"cw": faults}))
    assert (eng.runner("cw", True, False).path == "opt-slice") == (faults == 0)


def test_a_rewritten_tensor_read_by_two_nodes_is_not_fed() -> None:
    """Where ORT's graph reads the weight's rewrite in two places (e.g. one initializer shared by two weights
    of equal values), feeding a fault there would put it in both: refused."""
    from onnxfi.engine.optcone import Rewrite, fed_graph

    t = onh.from_array(np.ones((2, 2), np.float32), "T")
    nodes = [oh.make_node("MatMul", ["x", "T"], ["a"]), oh.make_node("MatMul", ["a", "T"], ["y"])]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], initializer=[t])
    rw = Rewrite("as-is", "as-is", "T", np.ones(4, np.float32), (2, 2), np.arange(4), None, 2)
    with pytest.raises(CutError, match="several nodes"):
        fed_graph(oh.make_model(g), rw, "w")
    nodes[1].input[1] = "x2"  # read once: fed under the weight's name
    g2 = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                       [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], initializer=[t])
    fed = fed_graph(oh.make_model(g2), rw, "w")
    assert [i.name for i in fed.graph.input] == ["x", "w"] and not fed.graph.initializer
    assert list(fed.graph.node[0].input) == ["x", "w"]


def test_a_model_ort_cannot_optimize_is_tried_once_per_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """Where ORT cannot write its optimized model, every weight takes the other paths, and the failed build
    is not repeated for each of them."""
    from onnxfi.engine import context
    from onnxfi.errors import SessionError

    model, data = _model(tmp_path)
    eng = Engine(EngineConfig(model_path=model, data_path=data, mode="suffix", site_faults={"cw": 5, "fw": 5}))
    calls = []
    real = context.make_session

    def refuse_optimized(*args: object, **kwargs: object) -> object:
        if kwargs.get("optimized_path") and not str(kwargs["optimized_path"]).endswith("cone.onnx"):
            calls.append(1)
            raise SessionError("onnxruntime cannot load the model: refused by the test")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(context, "make_session", refuse_optimized)
    paths = {eng.runner(s, True, False).path for s in ("cw", "fw")}
    assert "opt-cut" not in paths and len(calls) == 1
    assert "the cone of the optimized model" in eng.runner("cw", True, False).reason


def test_each_fault_is_written_into_the_fed_tensor_and_taken_back(tmp_path: Path, path: str) -> None:
    """A fault is written into the rewritten tensor in place (no copy of the weight per fault): after
    faults of every kind, a NaN and an infinity included, the tensor is the fault-free one bit for bit,
    and the next fault-free run gives the golden outputs."""
    model, data = _model(tmp_path)
    eng = Engine(EngineConfig(model_path=model, data_path=data, mode="suffix", site_faults={"cw": 50}))
    r = eng.runner("cw", True, False)
    assert r.path == path
    before = r.rw.t0.copy()  # type: ignore[attr-defined]
    outputs_before = [y.copy() for y in r.slice.y0] if path == "opt-slice" else []  # type: ignore[attr-defined]
    for idx, bit in ((0, 30), (17, 31), (1000, 23), (2303, 0)):
        e = Experiment(id=0, site="cw", kind="weight", index=idx, bit=bit, fault=BitFlip((bit,)).to_dict(), seed=1,
                       round=0)
        eng.run(e, True, False)
    assert np.array_equal(r.rw.t0.view(np.uint32), before.view(np.uint32))  # type: ignore[attr-defined]
    if path == "opt-slice":  # the convolution's output block written per fault is taken back too
        assert [np.array_equal(y.view(np.uint32), y0.view(np.uint32)) for y, y0 in zip(
            r.slice.y0, outputs_before)] == [True] * len(outputs_before)  # type: ignore[attr-defined]
        got = r.slice._rest()  # type: ignore[attr-defined]
    else:
        got = r._run(r.rw.t0.reshape(r.rw.t_shape))  # type: ignore[attr-defined]
    assert all(np.array_equal(got[k].view(np.uint32), g.view(np.uint32)) for k, g in r.golden.items())


def test_a_weight_that_is_also_a_model_output_is_not_fed_in_orts_layout(tmp_path: Path) -> None:
    model, data = _model(tmp_path)
    m = onnx.load(model)
    m.graph.output.append(oh.make_tensor_value_info("cw", TensorProto.FLOAT, [16, 16, 3, 3]))
    onnx.save(m, model)
    eng = Engine(EngineConfig(model_path=model, data_path=data, mode="suffix", site_faults={"cw": 50}, output="y"))
    r = eng.runner("cw", True, False)
    assert r.path not in ("opt-cut", "cone-opt") and "the weight is a model output" in r.reason
