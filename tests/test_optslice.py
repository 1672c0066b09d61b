"""The ``opt-slice`` path (onnxfi/engine/optslice.py): a convolution filter's fault computed on the output
block holding it alone, the rest of the cone fed the Conv's output with that block replaced. Rows equal the
naive path's (a model rewritten and a session built per fault) on filters of several blocks (the last one
padded), a Conv with a fused residual Sum, and bits of every kind; a fault whose block comes out unchanged
is masked without running the rest, and running the rest anyway finds it masked; a grouped convolution is
not sliced."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
from onnx import TensorProto

from onnxfi.engine import Engine, EngineConfig
from onnxfi.faults import BitFlip
from onnxfi.plan import Experiment

BITS = (0, 3, 11, 19, 22, 23, 27, 30, 31)


def _model(tmp_path: Path, group: int = 1) -> tuple[str, str]:
    """x [N, 32, 8, 8] -> Conv 1x1 -> Relu -> h -> Conv A 32->40 (3x3) -> Relu -> Conv B 40->32 -> Add h
    -> Relu -> GlobalAveragePool -> Flatten -> Gemm 32->10. A's 40 output channels are several blocks, the
    last one padded; ORT fuses the residual Add into B (its Sum input). A's channel 0 is dead (bias -50):
    small changes of its filter leave its output at 0. ``group`` > 1: A is a grouped convolution of 32
    channels (no Sum anywhere)."""
    rng = np.random.default_rng(0)
    a_out = 40 if group == 1 else 32
    a = rng.normal(0, 0.1, size=(a_out, 32 // group, 3, 3)).astype(np.float32)
    ab = rng.normal(0, 0.1, a_out).astype(np.float32)
    ab[0] = -50.0
    inits = [onh.from_array(a, "A"), onh.from_array(ab, "Ab"),
             onh.from_array(rng.normal(0, 0.2, size=(32, 32, 1, 1)).astype(np.float32), "H"),
             onh.from_array(rng.normal(0, 0.1, size=(32, a_out, 3, 3)).astype(np.float32), "B"),
             onh.from_array(rng.normal(0, 0.1, 32).astype(np.float32), "Bb"),
             onh.from_array(rng.normal(0, 0.3, size=(10, 32)).astype(np.float32), "fw"),
             onh.from_array(rng.normal(0, 0.1, 10).astype(np.float32), "fb")]
    nodes = [
        oh.make_node("Conv", ["x", "H"], ["h0"]),
        oh.make_node("Relu", ["h0"], ["h"]),
        oh.make_node("Conv", ["h", "A", "Ab"], ["a"], pads=[1, 1, 1, 1], group=group),
        oh.make_node("Relu", ["a"], ["ar"]),
        oh.make_node("Conv", ["ar", "B", "Bb"], ["b"], pads=[1, 1, 1, 1]),
        oh.make_node("Add", ["b", "h"], ["s"]),
        oh.make_node("Relu", ["s"], ["r"]),
        oh.make_node("GlobalAveragePool", ["r"], ["p"]),
        oh.make_node("Flatten", ["p"], ["f"]),
        oh.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1),
    ]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32, 8, 8])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], initializer=inits)
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(12, 32, 8, 8)).astype(np.float32))
    return str(tmp_path / "m.onnx"), str(tmp_path / "d.npz")


def _exp(site: str, idx: int, bit: int) -> Experiment:
    return Experiment(id=0, site=site, kind="weight", index=idx, bit=bit, fault=BitFlip((bit,)).to_dict(), seed=1,
                      round=0)


def _rows_equal_naive(eng: Engine, naive: Engine, site: str, indices: list[int], bits: tuple[int, ...] = BITS
                      ) -> list[str]:
    paths = []
    for idx in indices:
        for bit in bits:
            a, b = naive.run(_exp(site, idx, bit), True, False), eng.run(_exp(site, idx, bit), True, False)
            assert (a["outcome"], a["masked"], a["sdc1"], a["due"]) == (b["outcome"], b["masked"], b["sdc1"],
                                                                        b["due"]), (site, idx, bit)
            assert a["metrics"] == b["metrics"], (site, idx, bit)
            paths.append(b["path"])
    return paths


def test_each_block_of_a_filter_equals_naive_the_padded_and_the_residual_one_included(tmp_path: Path) -> None:
    model, data = _model(tmp_path)
    eng = Engine(EngineConfig(model_path=model, data_path=data, mode="suffix", site_faults={"A": 50, "B": 50}))
    naive = Engine(EngineConfig(model_path=model, data_path=data, mode="naive"))
    ra, rb = eng.runner("A", True, False), eng.runner("B", True, False)
    assert ra.path == rb.path == "opt-slice"
    sa, sb = ra.slice, rb.slice  # type: ignore[attr-defined]
    assert sa.blocks >= 3 and sa.blocks * sa.slice_shape[0] >= 40  # 40 channels: the last block padded
    assert sb.blocks >= 2 and sb.sum  # B reads the residual h as its fused Sum input
    per_a, per_b = 32 * 9, 40 * 9  # filter elements per output channel
    a_idx = [5, 17 * per_a + 3, 39 * per_a + 100, 40 * per_a - 1]  # blocks 0, 1, the padded last one
    b_idx = [0, 15 * per_b + 7, 16 * per_b, 32 * per_b - 1]
    paths = _rows_equal_naive(eng, naive, "A", a_idx) + _rows_equal_naive(eng, naive, "B", b_idx)
    assert "opt-slice" in paths and {p.split("+")[0] for p in paths} == {"opt-slice"}


def test_an_unchanged_block_is_masked_without_the_rest_and_the_rest_finds_it_masked(tmp_path: Path) -> None:
    """A's channel 0 is dead: a low-bit flip of its filter leaves the block's output unchanged, decided
    without running the rest (``+shortcut``). With shortcuts off the same experiments run the rest and
    are masked with the fault-free outputs bit for bit."""
    model, data = _model(tmp_path)
    faults = [(i, bit) for i in (0, 7, 100) for bit in (0, 5, 12, 20)]
    got = {}
    for shortcuts in (True, False):
        eng = Engine(EngineConfig(model_path=model, data_path=data, mode="suffix", site_faults={"A": 50},
                                  shortcuts=shortcuts))
        r = eng.runner("A", True, False)
        for i, bit in faults:
            res = r.result(_exp("A", i, bit))
            got[shortcuts, i, bit] = res.path
            assert all(np.array_equal(res.outputs[k].view(np.uint32), g.view(np.uint32)) for k, g in r.golden.items())
            assert eng.run(_exp("A", i, bit), True, False)["masked"]
    assert {got[True, i, b] for i, b in faults} == {"opt-slice+shortcut"}
    assert {got[False, i, b] for i, b in faults} == {"opt-slice"}


def test_a_grouped_convolution_is_not_sliced_and_still_equals_naive(tmp_path: Path) -> None:
    model, data = _model(tmp_path, group=4)
    eng = Engine(EngineConfig(model_path=model, data_path=data, mode="suffix", site_faults={"A": 50}))
    naive = Engine(EngineConfig(model_path=model, data_path=data, mode="naive"))
    r = eng.runner("A", True, False)
    assert r.path.startswith("opt-cut") and "grouped" in r.describe()["not_sliced"]
    _rows_equal_naive(eng, naive, "A", [0, 1000, 2303])


def test_a_convolution_output_over_the_cache_budget_is_not_kept(tmp_path: Path) -> None:
    """The Conv's fault-free output over the data is kept per sliced weight: where it is over a quarter of
    --cache-mb the weight takes opt-cut (which keeps no such tensor)."""
    model, data = _model(tmp_path)
    a_out = 12 * 40 * 8 * 8 * 4  # bytes of A's output over the 12 samples (its channels padded: more)
    eng = Engine(EngineConfig(model_path=model, data_path=data, mode="suffix", site_faults={"A": 50},
                              cache_mb=2 * a_out / 2**20))
    naive = Engine(EngineConfig(model_path=model, data_path=data, mode="naive"))
    r = eng.runner("A", True, False)
    assert r.path == "opt-cut" and "--cache-mb" in r.describe()["not_sliced"]
    _rows_equal_naive(eng, naive, "A", [0, 11519], (23, 30))


def test_a_first_convolution_reading_an_input_named_like_the_slices_own_is_sliced(tmp_path: Path) -> None:
    """The first Conv of an image model reads the graph input itself (3 channels: ORT's NCHWc kernel takes
    it as is). An input named "w" (the name the slice's filter has) is no conflict."""
    rng = np.random.default_rng(1)
    inits = [onh.from_array(rng.normal(0, 0.3, size=(32, 3, 3, 3)).astype(np.float32), "C"),
             onh.from_array(rng.normal(0, 0.3, size=(10, 32)).astype(np.float32), "fw")]
    nodes = [oh.make_node("Conv", ["w", "C"], ["c"], pads=[1, 1, 1, 1]), oh.make_node("Relu", ["c"], ["r"]),
             oh.make_node("GlobalAveragePool", ["r"], ["p"]), oh.make_node("Flatten", ["p"], ["f"]),
             oh.make_node("Gemm", ["f", "fw"], ["y"], transB=1)]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("w", TensorProto.FLOAT, ["N", 3, 8, 8])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], initializer=inits)
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", w=rng.normal(size=(12, 3, 8, 8)).astype(np.float32))
    model, data = str(tmp_path / "m.onnx"), str(tmp_path / "d.npz")
    eng = Engine(EngineConfig(model_path=model, data_path=data, mode="suffix", site_faults={"C": 50}))
    naive = Engine(EngineConfig(model_path=model, data_path=data, mode="naive"))
    r = eng.runner("C", True, False)
    assert r.path == "opt-slice" and r.slice.x == "w"  # type: ignore[attr-defined]
    _rows_equal_naive(eng, naive, "C", [0, 400, 863], (3, 23, 30, 31))
