"""Activation faults under ONNX Runtime: the faulted tensor is exactly numpy's fault applied to the
golden tensor of a clean run, bit for bit, for every image or only image K."""

from __future__ import annotations

import contextlib
import functools
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnxruntime as ort
import pytest
from conftest import (
    from_int_words,
    int_words,
    make_model,
    ort_run,
    save,
    tensor,
    vi,
    words,
)
from onnx import TensorProto

from onnxfi.cli import main
from onnxfi.errors import FaultError, SiteError
from onnxfi.faults import BitFlip, BurstFlip, Fault, RandomValue, SetValue, StuckAt, Zero
from onnxfi.inject import inject
from onnxfi.model import load_model
from onnxfi.passes import ExposeValues, InsertActivationFault, required_opset, upgrade_opset
from onnxfi.sites import enumerate_sites

F, F16, BF16 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16
BATCH = 3

# --------------------------------------------------------------------------------------- models


def conv_model() -> onnx.ModelProto:
    """x[N,1,4,4] -> Conv(2x1x3x3, pad 1) -> c -> Relu -> r -> Flatten -> y[N,32]."""
    w = np.random.default_rng(11).standard_normal((2, 1, 3, 3)).astype(np.float32)
    return make_model(
        [
            oh.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            oh.make_node("Relu", ["c"], ["r"], name="relu"),
            oh.make_node("Flatten", ["r"], ["y"], name="flatten"),
        ],
        [vi("x", F, ["N", 1, 4, 4])], [vi("y", F, ["N", 32])], [tensor("w", w)],
    )


def matmul_model() -> onnx.ModelProto:
    """x[N,4] -> MatMul -> mm -> Relu -> y (the activation y is the graph output)."""
    w = np.random.default_rng(12).standard_normal((4, 5)).astype(np.float32)
    return make_model(
        [oh.make_node("MatMul", ["x", "W"], ["mm"], name="mm"), oh.make_node("Relu", ["mm"], ["y"], name="relu")],
        [vi("x", F, ["N", 4])], [vi("y", F, ["N", 5])], [tensor("W", w)],
    )


def fp16_model() -> onnx.ModelProto:
    """x[N,6] float16 -> Relu -> r -> Neg -> y."""
    return make_model(
        [oh.make_node("Relu", ["x"], ["r"], name="relu"), oh.make_node("Neg", ["r"], ["y"], name="neg")],
        [vi("x", F16, ["N", 6])], [vi("y", F16, ["N", 6])],
    )


def bf16_model() -> onnx.ModelProto:
    """x[N,6] float32 -> Cast(bfloat16) -> c -> Cast(float32) -> y.

    ORT's CPU provider has no bfloat16 kernels for Relu/Add/MatMul and cannot hand bfloat16 outputs to
    numpy, so the bfloat16 activation is a Cast output and is read back through a float32 Cast (exact)."""
    return make_model(
        [oh.make_node("Cast", ["x"], ["c"], name="to_bf16", to=BF16),
         oh.make_node("Cast", ["c"], ["y"], name="to_f32", to=F)],
        [vi("x", F, ["N", 6])], [vi("y", F, ["N", 6])],
    )


def quant_model(elem: int) -> onnx.ModelProto:
    """x[N,8] float32 -> QuantizeLinear (int8 or uint8) -> q -> DequantizeLinear -> y."""
    zp = np.array(0, np.int8) if elem == TensorProto.INT8 else np.array(128, np.uint8)
    return make_model(
        [oh.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="quant"),
         oh.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dequant")],
        [vi("x", F, ["N", 8])], [vi("y", F, ["N", 8])],
        [tensor("s", np.array(0.05, np.float32)), tensor("zp", zp)],
    )


def cast_model(elem: int) -> onnx.ModelProto:
    """x[N,6] float32 -> Cast(elem) -> c -> Identity -> y: an activation of any element type."""
    return make_model(
        [oh.make_node("Cast", ["x"], ["c"], name="cast", to=elem), oh.make_node("Identity", ["c"], ["y"], name="id")],
        [vi("x", F, ["N", 6])], [vi("y", elem, ["N", 6])],
    )


def reduce_model() -> onnx.ModelProto:
    """x[N,4] -> ReduceSum over the batch -> s[4] (not batched) -> Relu -> y[4]."""
    return make_model(
        [oh.make_node("ReduceSum", ["x", "ax"], ["s"], name="rsum", keepdims=0),
         oh.make_node("Relu", ["s"], ["y"], name="relu")],
        [vi("x", F, ["N", 4])], [vi("y", F, [4])], [tensor("ax", np.array([0], np.int64))],
    )


@dataclass(frozen=True)
class Case:
    build: Callable[[], onnx.ModelProto]
    site: str
    np_dtype: np.dtype
    elem: int
    feeds: Callable[[np.random.Generator], dict[str, np.ndarray]]
    batched: bool = True
    readback: str | None = None  # graph output that carries the site's value when it cannot be exposed


def _x(shape: tuple[int, ...], dtype: type = np.float32, scale: float = 1.0) -> Callable[..., dict]:
    return lambda rng: {"x": (rng.standard_normal(shape) * scale).astype(dtype)}


CASES = {
    "conv_f32": Case(conv_model, "c", np.dtype(np.float32), F, _x((BATCH, 1, 4, 4))),
    "matmul_out_f32": Case(matmul_model, "y", np.dtype(np.float32), F, _x((BATCH, 4))),
    "relu_f16": Case(fp16_model, "r", np.dtype(np.float16), F16, _x((BATCH, 6), np.float16)),
    "cast_bf16": Case(bf16_model, "c", np.dtype(ml_dtypes.bfloat16), BF16, _x((BATCH, 6)), readback="y"),
    "quant_i8": Case(lambda: quant_model(TensorProto.INT8), "q", np.dtype(np.int8), TensorProto.INT8,
                     _x((BATCH, 8), scale=3.0)),
    "quant_u8": Case(lambda: quant_model(TensorProto.UINT8), "q", np.dtype(np.uint8), TensorProto.UINT8,
                     _x((BATCH, 8), scale=3.0)),
    "reduce_f32": Case(reduce_model, "s", np.dtype(np.float32), F, _x((BATCH, 4)), batched=False),
}
for _name, _np, _elem in [
    ("f64", np.float64, TensorProto.DOUBLE), ("i16", np.int16, TensorProto.INT16),
    ("u16", np.uint16, TensorProto.UINT16), ("i32", np.int32, TensorProto.INT32),
    ("u32", np.uint32, TensorProto.UINT32), ("i64", np.int64, TensorProto.INT64),
    ("u64", np.uint64, TensorProto.UINT64),
]:
    CASES[f"cast_{_name}"] = Case(
        functools.partial(cast_model, _elem), "c", np.dtype(_np), _elem, _x((BATCH, 6), scale=1000.0 if _name[0] != "f" else 1.0)
    )

# ORT 1.31's CPU provider has no Where kernel for these element types, so a value/zero fault on every
# image (a Where node) cannot run there; the same fault on one image (--image, a ScatterND) can.
ORT_NO_WHERE = {"cast_bf16", "cast_i16", "cast_u16", "cast_u64"}

# ------------------------------------------------------------------------------ expected values


def word_op(fault: Fault, dtype: np.dtype) -> Callable[[int], int]:
    """The fault as arithmetic on a Python-int word, built without onnxfi."""
    bits = 8 * dtype.itemsize
    full = 2**bits - 1
    if isinstance(fault, BitFlip):
        m = sum(2**b for b in fault.bits)
        return lambda w: w ^ m
    if isinstance(fault, BurstFlip):
        m = sum(2**b for b in range(fault.start, fault.start + fault.length))
        return lambda w: w ^ m
    if isinstance(fault, StuckAt):
        m = sum(2**b for b in fault.bits)
        return (lambda w: w | m) if fault.value else (lambda w: w & (full - m))
    if isinstance(fault, SetValue):  # Zero included
        if dtype.kind in "iu":
            v = np.array([int(fault.value)], dtype=dtype)
        else:
            v = np.array([fault.value], dtype=np.float64).astype(dtype)
        word = int_words(v)[0]
        return lambda w: word
    raise AssertionError(fault)


def expected(golden: np.ndarray, flat: int, fault: Fault, image: int | None, batched: bool) -> np.ndarray:
    out = golden.copy()
    op = word_op(fault, golden.dtype)
    targets = [out] if not batched else [out[i] for i in (range(out.shape[0]) if image is None else [image])]
    for t in targets:
        v = t.reshape(-1)
        assert np.shares_memory(v, out)
        v[flat] = from_int_words([op(int_words(v[flat : flat + 1])[0])], out.dtype, ())
    return out


def run_site(proto: onnx.ModelProto, case: Case, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The site's value from one ORT run (exposed as an extra output, or read back through ``readback``)."""
    if case.readback:  # float32, widened from bfloat16 by ORT's Cast (NaN payloads kept)
        return ort_run(proto, feeds)[case.readback]
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    if case.site not in {o.name for o in m.graph.output}:
        m.graph.output.append(oh.make_tensor_value_info(case.site, case.elem, None))
    return ort_run(m, feeds)[case.site]


_GOLDEN: dict[str, tuple[dict[str, np.ndarray], np.ndarray]] = {}


def golden(name: str, path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    if name not in _GOLDEN:
        case = CASES[name]
        feeds = case.feeds(np.random.default_rng(99))
        value = run_site(onnx.load_model(str(path)), case, feeds)
        if case.readback:  # finite bfloat16 values read back as float32: narrowing them again is exact
            value = value.astype(case.np_dtype)
        _GOLDEN[name] = feeds, value
    return _GOLDEN[name]


def comparable(arr: np.ndarray, case: Case) -> np.ndarray:
    """What ``run_site`` returns for a site holding ``arr``: float32 for read-back bfloat16 sites
    (widening keeps every bit; narrowing a NaN back to bfloat16 would not)."""
    return arr.astype(np.float32) if case.readback else arr


def faulty_model(path: Path, site: str, index: str, fault: Fault, image: int | None = None,
                 seed: int = 0) -> tuple[onnx.ModelProto, int]:
    lm = load_model(path)
    idx = enumerate_sites(lm.model, lm.value_shapes)
    res = inject(lm, idx, site, index, fault, image=image, rng=np.random.default_rng(seed))
    return ir.to_proto(res.model), res.flat_index


FAULTS: dict[str, Callable[[int], Fault]] = {  # by element width in bits
    "flip_top": lambda bits: BitFlip((bits - 2,)),  # top exponent bit for floats, bit 6 / 14 for ints
    "flip_low": lambda bits: BitFlip((0,)),
    "flip_multi": lambda bits: BitFlip((1, bits - 1, bits // 2)),
    "burst": lambda bits: BurstFlip(bits // 2 - 1, 3),
    "stuck0": lambda bits: StuckAt((bits - 2, bits - 3), 0),
    "stuck1": lambda bits: StuckAt((bits - 3, 2), 1),
    "value": lambda bits: SetValue(100.0),
    "zero": lambda bits: Zero(),
}


def _matrix() -> list:
    params = []
    for case_name, case in CASES.items():
        for fault_name in FAULTS:
            for image in ([None, 1] if case.batched else [None]):
                if image is None and fault_name in ("value", "zero") and case_name in ORT_NO_WHERE:
                    continue  # see ORT_NO_WHERE; covered with an image index below
                tag = "all_images" if image is None else f"image{image}"
                params.append(pytest.param(case_name, fault_name, image, id=f"{case_name}-{fault_name}-{tag}"))
    return params


@pytest.mark.parametrize(("case_name", "fault_name", "image"), _matrix())
def test_activation_fault_matches_numpy(tmp_path: Path, case_name: str, fault_name: str, image: int | None) -> None:
    case = CASES[case_name]
    path = save(case.build(), tmp_path / "m.onnx")
    feeds, gold = golden(case_name, path)
    bits = 8 * case.np_dtype.itemsize
    fault = FAULTS[fault_name](bits)
    elements = gold[0].size if case.batched else gold.size
    flat = elements - 2
    proto, got_flat = faulty_model(path, case.site, str(flat), fault, image)
    assert got_flat == flat
    got = run_site(proto, case, feeds)
    exp = comparable(expected(gold, flat, fault, image, case.batched), case)
    assert got.dtype == exp.dtype and got.shape == exp.shape
    np.testing.assert_array_equal(words(got), words(exp))
    # only the addressed element(s) changed
    changed = np.flatnonzero(words(got).reshape(-1) != words(comparable(gold, case)).reshape(-1))
    if case.batched:
        per = gold[0].size
        allowed = {i * per + flat for i in (range(BATCH) if image is None else [image])}
    else:
        allowed = {flat}
    assert set(changed.tolist()) <= allowed
    # graph outputs keep their names
    assert [o.name for o in proto.graph.output] == [o.name for o in case.build().graph.output]


def test_downstream_sees_the_fault(tmp_path: Path) -> None:
    """Conv output faulted: y = flatten(relu(faulty c)), recomputed in numpy from the golden c."""
    case = CASES["conv_f32"]
    path = save(conv_model(), tmp_path / "m.onnx")
    feeds, gold = golden("conv_f32", path)
    fault = BitFlip((30,))
    proto, _ = faulty_model(path, "c", "1,2,3", fault)
    flat = 16 + 2 * 4 + 3
    exp_c = expected(gold, flat, fault, None, True)
    y = ort_run(proto, feeds)["y"]
    np.testing.assert_array_equal(words(y), words(np.maximum(exp_c, 0).reshape(BATCH, -1)))
    assert case.site == "c"


def test_graph_output_activation(tmp_path: Path) -> None:
    path = save(matmul_model(), tmp_path / "m.onnx")
    feeds, gold = golden("matmul_out_f32", path)
    proto, _ = faulty_model(path, "y", "4", BitFlip((31,)), image=0)
    assert [o.name for o in proto.graph.output] == ["y"]
    y = ort_run(proto, feeds)["y"]
    exp = gold.copy()
    exp[0, 4] = -exp[0, 4]
    np.testing.assert_array_equal(words(y), words(exp))


# ------------------------------------------------------------------------------ graph structure


def node_ops_after(proto: onnx.ModelProto, producer: str) -> list[str]:
    ops = [n.op_type for n in proto.graph.node]
    i = next(k for k, n in enumerate(proto.graph.node) if n.name == producer)
    return ops[i + 1 :]


@pytest.mark.parametrize(
    ("case_name", "fault", "image", "inserted", "opset"),
    [
        ("conv_f32", BitFlip((30,)), None, ["BitCast", "BitwiseXor", "BitCast"], 26),
        ("conv_f32", BitFlip((30,)), 1, ["BitCast", "GatherND", "BitwiseXor", "ScatterND", "BitCast"], 26),
        ("conv_f32", StuckAt((3,), 1), None, ["BitCast", "BitwiseOr", "BitCast"], 26),
        ("conv_f32", StuckAt((3,), 0), None, ["BitCast", "BitwiseAnd", "BitCast"], 26),
        ("conv_f32", SetValue(2.0), None, ["Where"], 17),
        ("conv_f32", Zero(), 2, ["ScatterND"], 17),
        ("quant_i8", BitFlip((7,)), None, ["BitwiseXor", "Identity"], 18),
        ("quant_u8", BitFlip((7,)), 0, ["GatherND", "BitwiseXor", "ScatterND", "Identity"], 18),
        ("reduce_f32", BitFlip((31,)), None, ["BitCast", "GatherND", "BitwiseXor", "ScatterND", "BitCast"], 26),
    ],
)
def test_rewritten_graph(
    tmp_path: Path, case_name: str, fault: Fault, image: int | None, inserted: list[str], opset: int
) -> None:
    case = CASES[case_name]
    src = case.build()
    path = save(src, tmp_path / "m.onnx")
    proto, _ = faulty_model(path, case.site, "1", fault, image)
    producer = next(n for n in src.graph.node if case.site in n.output)
    consumers = [n.op_type for n in src.graph.node if case.site in n.input]
    after = node_ops_after(proto, producer.name)
    assert after[: len(inserted)] == inserted
    assert after[len(inserted) :] == [n.op_type for n in src.graph.node][[n.name for n in src.graph.node].index(
        producer.name) + 1 :]
    # the producer now writes a renamed clean value; the site's name is the fault node's output
    new_producer = next(n for n in proto.graph.node if n.name == producer.name)
    assert new_producer.output[0] != case.site
    fault_nodes = proto.graph.node[[n.name for n in proto.graph.node].index(producer.name) + 1 :][: len(inserted)]
    assert fault_nodes[-1].output[0] == case.site
    assert new_producer.output[0] in fault_nodes[0].input
    for n in proto.graph.node:
        if n.op_type in consumers and n not in fault_nodes:
            assert case.site in n.input
    assert [o.name for o in proto.graph.output] == [o.name for o in src.graph.output]
    assert {o.domain or "": o.version for o in proto.opset_import}[""] == opset
    onnx.checker.check_model(proto)


# --------------------------------------------------------------------------- identity fault nodes
# The naive path's golden for an activation fault: the same fault nodes, doing nothing (a fault node
# stops ONNX Runtime fusing the site's producer and consumers, so the original model rounds differently).


def specials_model() -> onnx.ModelProto:
    """x[N,8] float32 -> Neg -> c -> Neg -> y: the site holds NaN payloads, infinities, -0 and subnormals."""
    return make_model(
        [oh.make_node("Neg", ["x"], ["c"], name="neg0"), oh.make_node("Neg", ["c"], ["y"], name="neg1")],
        [vi("x", F, ["N", 8])], [vi("y", F, ["N", 8])],
    )


def _specials(rng: np.random.Generator) -> dict[str, np.ndarray]:
    w = np.array([0x7FC00001, 0xFF800123, 0x7F800000, 0xFF800000, 0x80000000, 0x00000001, 0x807FFFFF, 0x3F800000],
                 dtype=np.uint32)
    return {"x": np.stack([np.roll(w, i) for i in range(BATCH)]).view(np.float32)}


IDENTITY_CASES = {
    **{k: CASES[k] for k in ("conv_f32", "quant_i8", "quant_u8", "reduce_f32", "relu_f16", "cast_i64")},
    "specials_f32": Case(specials_model, "c", np.dtype(np.float32), F, _specials),
}


def pass_model(path: Path, site: str, flat: int, fault: Fault, image: int | None,
               identity: bool) -> tuple[onnx.ModelProto, InsertActivationFault]:
    """The model at ``path`` with the fault pass applied directly (``identity``: the do-nothing nodes)."""
    lm = load_model(path)
    s = enumerate_sites(lm.model, lm.value_shapes).get(site)
    p = InsertActivationFault(s, flat, fault, image, np.random.default_rng(0), identity=identity)
    model = upgrade_opset(lm.model, required_opset(s, p.fault))
    p(model)
    return ir.to_proto(model), p


def node_signature(proto: onnx.ModelProto) -> list[tuple[str, str, list[str]]]:
    """Each node's op, domain and attributes (what ONNX Runtime's optimizers see of its structure)."""
    return [(n.op_type, n.domain, [str(a) for a in n.attribute]) for n in proto.graph.node]


def _identity_matrix() -> list:
    params = []
    for case_name, case in IDENTITY_CASES.items():
        for fault_name in ("flip_top", "flip_multi", "burst", "stuck0", "stuck1", "value", "zero"):
            for image in ([None, 1] if case.batched else [None]):
                tag = "all_images" if image is None else f"image{image}"
                params.append(pytest.param(case_name, fault_name, image, id=f"{case_name}-{fault_name}-{tag}"))
    return params


@pytest.mark.parametrize(("case_name", "fault_name", "image"), _identity_matrix())
def test_identity_fault_is_bit_exact(tmp_path: Path, case_name: str, fault_name: str, image: int | None) -> None:
    """The identity fault node: every output and the site itself bit for bit the original model's, and
    the node sequence (ops, domains, attributes) exactly the faulty model's."""
    case = IDENTITY_CASES[case_name]
    path = save(case.build(), tmp_path / "m.onnx")
    feeds = case.feeds(np.random.default_rng(99))
    fault = FAULTS[fault_name](8 * case.np_dtype.itemsize)
    original = onnx.load_model(str(path))
    ident, pi = pass_model(path, case.site, 1, fault, image, identity=True)
    faulty, pf = pass_model(path, case.site, 1, fault, image, identity=False)
    assert pi.structure == pf.structure
    assert node_signature(ident) == node_signature(faulty)
    assert len(ident.graph.node) > len(original.graph.node)  # the nodes are there, doing nothing
    want, got = ort_run(original, feeds), ort_run(ident, feeds)
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype
        np.testing.assert_array_equal(words(got[name]), words(want[name]))
    np.testing.assert_array_equal(words(run_site(ident, case, feeds)), words(run_site(original, case, feeds)))
    # and the faulty twin does change the site (the identity is not identity by accident of the masks)
    if fault_name.startswith(("flip", "burst")):
        assert not np.array_equal(words(run_site(faulty, case, feeds)), words(run_site(original, case, feeds)))


def test_identity_fault_survives_onnxruntime_optimization(tmp_path: Path) -> None:
    """After ONNX Runtime's full optimization the identity and the faulty model are still the same graph
    (no optimizer folds a do-nothing node away and fuses around the site again)."""
    path = save(conv_model(), tmp_path / "m.onnx")
    for fault in (BitFlip((30,)), StuckAt((3,), 0), StuckAt((3,), 1), SetValue(2.0)):
        ops = []
        for identity in (False, True):
            proto, _ = pass_model(path, "c", 5, fault, None, identity)
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.log_severity_level = 3
            so.optimized_model_filepath = str(tmp_path / f"opt_{identity}.onnx")
            ort.InferenceSession(proto.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
            opt = onnx.load_model(so.optimized_model_filepath)
            ops.append([(n.op_type, n.domain) for n in opt.graph.node])
        assert ops[0] == ops[1], fault
        assert {"BitwiseXor", "BitwiseAnd", "BitwiseOr", "Where"} & {op for op, _ in ops[1]}, fault


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (BitFlip((0,)), BitFlip((3, 30)), True),
        (BitFlip((0,)), BurstFlip(4, 3), True),
        (StuckAt((1,), 0), StuckAt((2, 5), 0), True),
        (StuckAt((1,), 1), StuckAt((2, 5), 1), True),
        (SetValue(3.0), Zero(), True),
        (SetValue(3.0), RandomValue(0.0, 1.0), True),
        (BitFlip((0,)), StuckAt((0,), 1), False),
        (StuckAt((1,), 0), StuckAt((1,), 1), False),
        (BitFlip((0,)), SetValue(1.0), False),
    ],
)
def test_identity_structure(tmp_path: Path, a: Fault, b: Fault, same: bool) -> None:
    """Equal ``structure`` exactly when the two faults insert the same node sequence, so one identity
    model per structure is the golden of all of a site's faults with that structure."""
    path = save(conv_model(), tmp_path / "m.onnx")
    pa, qa = pass_model(path, "c", 3, a, None, identity=False)
    pb, qb = pass_model(path, "c", 17, b, None, identity=False)
    assert (qa.structure == qb.structure) is same
    assert (node_signature(pa) == node_signature(pb)) is same


def test_insert_pass_rejects_weights_and_unknown_shapes(tmp_path: Path) -> None:
    lm = load_model(save(conv_model(), tmp_path / "m.onnx"))
    idx = enumerate_sites(lm.model, lm.value_shapes)
    with pytest.raises(SiteError, match="weight"):
        InsertActivationFault(idx.get("w"), 0, BitFlip((1,)))
    with pytest.raises(SiteError, match="out of range"):
        InsertActivationFault(idx.get("c"), 32, BitFlip((1,)))
    with pytest.raises(FaultError, match="outside float32"):
        InsertActivationFault(idx.get("c"), 0, BitFlip((32,)))
    with pytest.raises(SiteError, match=">= 0"):
        InsertActivationFault(idx.get("c"), 0, BitFlip((1,)), image=-1)
    dyn = make_model([oh.make_node("Relu", ["x"], ["r"], name="relu"), oh.make_node("Neg", ["r"], ["y"])],
                     [vi("x", F, ["N", "C"])], [vi("y", F, ["N", "C"])])
    lm = load_model(save(dyn, tmp_path / "d.onnx"))
    idx = enumerate_sites(lm.model, lm.value_shapes)
    with pytest.raises(SiteError, match="not known statically"):
        InsertActivationFault(idx.get("r"), 0, BitFlip((1,)))


def test_image_checks(tmp_path: Path) -> None:
    lm = load_model(save(reduce_model(), tmp_path / "m.onnx"))
    idx = enumerate_sites(lm.model, lm.value_shapes)
    with pytest.raises(SiteError, match="no batch dimension"):
        inject(lm, idx, "s", "0", BitFlip((1,)), image=0)
    static = make_model([oh.make_node("Relu", ["x"], ["r"], name="relu"), oh.make_node("Neg", ["r"], ["y"])],
                        [vi("x", F, [2, 3])], [vi("y", F, [2, 3])])
    lm = load_model(save(static, tmp_path / "s.onnx"))
    idx = enumerate_sites(lm.model, lm.value_shapes)
    assert idx.get("r").batched
    with pytest.raises(SiteError, match="static batch"):
        inject(lm, idx, "r", "0", BitFlip((1,)), image=2)
    res = inject(lm, idx, "r", "2", BitFlip((31,)), image=1)
    x = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    y = ort_run(ir.to_proto(res.model), {"x": x})["y"]
    np.testing.assert_array_equal(y, -np.array([[1, 2, 3], [4, 5, -6]], np.float32))


def test_random_value_drawn_once_and_seeded(tmp_path: Path) -> None:
    path = save(conv_model(), tmp_path / "m.onnx")
    feeds, gold = golden("conv_f32", path)
    outs = []
    for seed in (4, 4, 5):
        proto, _ = faulty_model(path, "c", "7", RandomValue(10.0, 20.0), seed=seed)
        outs.append(run_site(proto, CASES["conv_f32"], feeds))
    np.testing.assert_array_equal(words(outs[0]), words(outs[1]))
    assert not np.array_equal(outs[0], outs[2])
    vals = outs[0].reshape(BATCH, -1)[:, 7]
    assert (vals == vals[0]).all() and 10 <= vals[0] < 20
    other = np.delete(outs[0].reshape(BATCH, -1), 7, axis=1)
    np.testing.assert_array_equal(words(other), words(np.delete(gold.reshape(BATCH, -1), 7, axis=1)))


def test_expose_values_pass(tmp_path: Path) -> None:
    lm = load_model(save(conv_model(), tmp_path / "m.onnx"))
    assert ExposeValues(["c", "y", "x", "w"])(lm.model).modified
    assert [o.name for o in lm.graph.outputs] == ["y", "c", "x", "w"]
    assert not ExposeValues(["y"])(lm.model).modified
    with pytest.raises(SiteError):
        ExposeValues(["nope"])(lm.model)


# -------------------------------------------------------------------------------------- the CLI


def cli_json(args: list[str]) -> dict:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(args) == 0
    return json.loads(buf.getvalue())


@pytest.mark.parametrize("image", [None, 2])
def test_cli_activation_injection(tmp_path: Path, image: int | None) -> None:
    path = save(conv_model(), tmp_path / "m.onnx")
    feeds, gold = golden("conv_f32", path)
    out = tmp_path / "f.onnx"
    args = ["inject", str(path), "--site", "c", "--index", "1,0,3", "--bit", "30", "-o", str(out), "--json"]
    if image is not None:
        args += ["--image", str(image)]
    rec = cli_json(args)
    assert rec["kind"] == "activation" and rec["index"] == 16 + 3 and rec["coords"] == [1, 0, 3]
    assert rec["image"] == image and rec["opset_from"] == 17 and rec["opset_to"] == 26
    assert rec["old_value"] is not None  # the preview on seeded random inputs
    faulty = onnx.load_model(str(out))
    got = run_site(faulty, CASES["conv_f32"], feeds)
    np.testing.assert_array_equal(words(got), words(expected(gold, 19, BitFlip((30,)), image, True)))


def test_cli_activation_injection_text_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save(quant_model(TensorProto.INT8), tmp_path / "m.onnx")
    capsys.readouterr()
    assert main(["inject", str(path), "--site", "q", "--index", "3", "--bit", "7", "-o", str(tmp_path / "f.onnx")]) == 0
    out = capsys.readouterr().out
    assert "fault node inserted after quant" in out and "opset 17 -> 18" in out and "every image" in out


def test_cli_bf16_activation_injection(tmp_path: Path) -> None:
    """The preview cannot read a bfloat16 tensor back from ORT; the injection itself must still work."""
    path = save(bf16_model(), tmp_path / "m.onnx")
    out = tmp_path / "f.onnx"
    rec = cli_json(["inject", str(path), "--site", "c", "--index", "5", "--bit", "14", "-o", str(out), "--json"])
    assert rec["dtype"] == "bfloat16"
    feeds, gold = golden("cast_bf16", path)
    got = run_site(onnx.load_model(str(out)), CASES["cast_bf16"], feeds)
    exp = comparable(expected(gold, 5, BitFlip((14,)), None, True), CASES["cast_bf16"])
    np.testing.assert_array_equal(words(got), words(exp))
