"""4-bit weights as fault sites, bit-exact: int4/uint4 initializers (DequantizeLinear) and the packed uint8
B and zero points of com.microsoft MatMulNBits, checked against an independent numpy unpacking."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from onnxfi.ber import apply_flips
from onnxfi.bits import dtype_info
from onnxfi.cli import main
from onnxfi.errors import FaultError, SiteError
from onnxfi.faults import BitFlip, RandomValue, SetValue
from onnxfi.inject import inject
from onnxfi.model import load_model, save_model
from onnxfi.sites import enumerate_sites, packed_weight_of

# MatMulNBits under test: K = 48 in 3 blocks of 16, so a row of packed zero points has a padding nibble
M, K, N, BLOCK = 3, 48, 4, 16
K_BLOCKS = K // BLOCK


# --------------------------------------------------------------------------------------------------
# An unpacking written from the specs, sharing nothing with onnxfi
# --------------------------------------------------------------------------------------------------


def pack_low_first(values: np.ndarray) -> np.ndarray:
    """4-bit values (0..15) to bytes, two per byte, the even one in the low nibble; an odd count pads with 0."""
    v = values.reshape(-1).astype(np.uint8)
    if v.size % 2:
        v = np.append(v, np.uint8(0))
    return (v[0::2] | (v[1::2] << 4)).astype(np.uint8)


def unpack_low_first(data: bytes | np.ndarray) -> np.ndarray:
    """Bytes to their 4-bit values (0..15), low nibble first."""
    b = np.frombuffer(bytes(data), dtype=np.uint8).astype(np.int64)
    return np.stack([b & 0xF, b >> 4], axis=1).reshape(-1)


def dequantize_nbits(b: bytes, scales: np.ndarray, zero_points: bytes | None) -> np.ndarray:
    """MatMulNBits' weight as a float32 [K, N]: column n is row n of B, (q - zero point) * scale per block;
    the zero point is 8 when there is none."""
    q = unpack_low_first(b).reshape(N, K)
    zp = np.full((N, K_BLOCKS), 8) if zero_points is None else unpack_low_first(zero_points).reshape(N, -1)[:, :K_BLOCKS]
    z = np.repeat(zp, BLOCK, axis=1)
    s = np.repeat(scales.reshape(N, K_BLOCKS), BLOCK, axis=1)
    return ((q - z).astype(np.float32) * s).T


def changed_bits(before: bytes, after: bytes) -> list[int]:
    """Positions (byte * 8 + bit, bit 0 = least significant) of the bits that differ."""
    assert len(before) == len(after)
    x = np.frombuffer(before, np.uint8) ^ np.frombuffer(after, np.uint8)
    return [int(i) for i in np.flatnonzero(np.unpackbits(x, bitorder="little"))]


def raw(path: Path) -> dict[str, bytes]:
    return {t.name: t.raw_data for t in onnx.load(str(path)).graph.initializer}


def run_ort(path: Path, a: np.ndarray) -> np.ndarray:
    """ORT with basic optimizations: ENABLE_ALL fuses DequantizeLinear(int4) + MatMul into MatMulNBits,
    which rounds differently (about 1e-2 here), so a tight comparison would test that fusion, not the fault."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"A": a})[0]


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


def nbits_model(path: Path, rng: np.random.Generator, with_zero_points: bool) -> dict[str, np.ndarray]:
    q = rng.integers(0, 16, size=(N, K))
    b = pack_low_first(q).reshape(N, K_BLOCKS, BLOCK // 2)
    scales = rng.uniform(0.01, 0.1, size=N * K_BLOCKS).astype(np.float32)
    inits = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(scales, "scales")]
    inputs = ["A", "B", "scales"]
    arrays = {"B": b, "scales": scales}
    if with_zero_points:
        zp = np.concatenate([pack_low_first(r) for r in rng.integers(0, 16, size=(N, K_BLOCKS))])
        inits.append(numpy_helper.from_array(zp, "zp"))
        inputs.append("zp")
        arrays["zp"] = zp
    node = oh.make_node("MatMulNBits", inputs, ["Y"], domain="com.microsoft", K=K, N=N, bits=4, block_size=BLOCK)
    graph = oh.make_graph([node], "nbits", [oh.make_tensor_value_info("A", TensorProto.FLOAT, ["M", K])],
                          [oh.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", N])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 21), oh.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(path))
    return arrays


def int4_model(path: Path, rng: np.random.Generator, dtype: str, k: int = 7, n: int = 3) -> np.ndarray:
    """W (int4 or uint4, [k, n], an odd count: the last byte has a padding nibble) -> DequantizeLinear -> MatMul.
    Returns W's values as int64."""
    lo, hi = (-8, 8) if dtype == "int4" else (0, 16)
    w = rng.integers(lo, hi, size=(k, n))
    onnx_t = TensorProto.INT4 if dtype == "int4" else TensorProto.UINT4
    packed = pack_low_first(w & 0xF)
    inits = [oh.make_tensor("W", onnx_t, [k, n], packed.tobytes(), raw=True),
             numpy_helper.from_array(np.float32(0.05), "scale")]
    dq_inputs = ["W", "scale"]
    if dtype == "uint4":
        inits.append(oh.make_tensor("zero", onnx_t, [], bytes([8]), raw=True))
        dq_inputs.append("zero")
    nodes = [oh.make_node("DequantizeLinear", dq_inputs, ["Wf"]), oh.make_node("MatMul", ["A", "Wf"], ["Y"])]
    graph = oh.make_graph(nodes, "dq4", [oh.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
                          [oh.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 21)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return w


def flip(src: Path, out: Path, site: str, index: int, bit: int):  # type: ignore[no-untyped-def]
    """The fault through the API `onnxfi inject` uses; the faulty model written to ``out``."""
    loaded = load_model(src)
    result = inject(loaded, enumerate_sites(loaded.model), site, index, BitFlip((bit,)))
    save_model(result.model, out)
    return result


# --------------------------------------------------------------------------------------------------
# MatMulNBits: the packed bytes are the site, each bit names its weight
# --------------------------------------------------------------------------------------------------

B_FLIPS = [(0, 0), (0, 3), (0, 4), (5, 5), (8, 7), (23, 2), (47, 6), (95, 7)]  # byte, bit (96 bytes in all)


@pytest.mark.parametrize("with_zero_points", [False, True], ids=["zp8", "zp_packed"])
def test_nbits_weight_flip_changes_exactly_that_bit_and_that_weight(
    tmp_path: Path, rng: np.random.Generator, with_zero_points: bool
) -> None:
    src = tmp_path / "nbits.onnx"
    arrays = nbits_model(src, rng, with_zero_points)
    zp = arrays["zp"].tobytes() if with_zero_points else None
    golden_w = dequantize_nbits(arrays["B"].tobytes(), arrays["scales"], zp)
    a = rng.standard_normal((M, K)).astype(np.float32)
    np.testing.assert_allclose(run_ort(src, a), a @ golden_w, rtol=1e-5, atol=1e-6)  # the unpacking is right
    before = raw(src)
    for byte, bit in B_FLIPS:
        out = tmp_path / f"f_{byte}_{bit}.onnx"
        result = flip(src, out, "B", byte, bit)
        after = raw(out)
        # (a) exactly one stored bit changed, and nothing else in the file's weights
        assert changed_bits(before["B"], after["B"]) == [byte * 8 + bit]
        assert {k: v for k, v in after.items() if k != "B"} == {k: v for k, v in before.items() if k != "B"}
        # (b) the weight onnxfi names is the one whose quantized value lost that bit, and the only one that changed
        faulty_w = dequantize_nbits(after["B"], arrays["scales"], zp)
        changed = [(int(k), int(n)) for k, n in zip(*np.nonzero(faulty_w != golden_w))]
        n_at, k_at, vbit = packed_weight_of(result.site, byte, bit)  # type: ignore[misc]
        assert changed == [(k_at, n_at)]
        q_old = unpack_low_first(before["B"]).reshape(N, K)[n_at, k_at]
        q_new = unpack_low_first(after["B"]).reshape(N, K)[n_at, k_at]
        assert q_old ^ q_new == 1 << vbit
        assert result.stored == [{"bit": bit, "byte": byte, "byte_bit": bit,
                                  "means": f"weight (n={n_at}, k={k_at}) bit {vbit} of its 4-bit value",
                                  "packed": {"n": n_at, "k": k_at, "bit": vbit, "old": int(q_old), "new": int(q_new)}}]
        # (c) ORT runs the faulty file as numpy's matmul with the independently dequantized faulty weight
        np.testing.assert_allclose(run_ort(out, a), a @ faulty_w, rtol=1e-5, atol=1e-6)
        # with A = I the output is the dequantized weight itself: bit for bit
        np.testing.assert_array_equal(run_ort(out, np.eye(K, dtype=np.float32)), faulty_w)


def test_nbits_bit_to_weight_map_follows_the_spec(tmp_path: Path, rng: np.random.Generator) -> None:
    """byte (n, blk, j) bit b holds bit b % 4 of weight (n, k = blk * block_size + 2j + b // 4), for every bit."""
    src = tmp_path / "nbits.onnx"
    nbits_model(src, rng, with_zero_points=True)
    idx = enumerate_sites(load_model(src).model)
    site = idx.get("B")
    assert site.dtype_name == "uint8" and site.bits == 8 and site.elements == N * K // 2
    assert site.packing is not None and (site.packing.bits, site.packing.per_byte) == (4, 2)
    seen = set()
    for flat in range(site.elements or 0):
        n, blk, j = np.unravel_index(flat, (N, K_BLOCKS, BLOCK // 2))
        for b in range(8):
            at = packed_weight_of(site, flat, b)
            assert at == (n, blk * BLOCK + 2 * j + b // 4, b % 4)
            seen.add(at)
    assert len(seen) == N * K * 4  # every bit of every weight, once
    assert site.to_dict()["packed"] == {"op": "MatMulNBits", "role": "weights", "bits": 4, "per_byte": 2,
                                        "n": N, "k": K, "block_size": BLOCK}
    assert idx.get("scales").packing is None
    with pytest.raises(SiteError, match="not a packed weight"):
        packed_weight_of(idx.get("scales"), 0, 0)


def test_nbits_zero_point_flip(tmp_path: Path, rng: np.random.Generator) -> None:
    """A zero point's bit moves every weight of its (n, block) by the same step; the padding nibble holds none."""
    src = tmp_path / "nbits.onnx"
    arrays = nbits_model(src, rng, with_zero_points=True)
    golden_w = dequantize_nbits(arrays["B"].tobytes(), arrays["scales"], arrays["zp"].tobytes())
    a = rng.standard_normal((M, K)).astype(np.float32)
    before = raw(src)
    site = enumerate_sites(load_model(src).model).get("zp")
    assert site.packing is not None and site.packing.role == "zero points" and site.elements == N * 2
    for byte, bit in [(0, 1), (0, 6), (3, 2), (7, 3)]:
        out = tmp_path / f"z_{byte}_{bit}.onnx"
        result = flip(src, out, "zp", byte, bit)
        after = raw(out)
        assert changed_bits(before["zp"], after["zp"]) == [byte * 8 + bit]
        n_at, blk, vbit = packed_weight_of(site, byte, bit)  # type: ignore[misc]
        assert (n_at, blk, vbit) == (byte // 2, (byte % 2) * 2 + bit // 4, bit % 4)
        assert result.stored is not None and result.stored[0]["packed"]["block"] == blk
        faulty_w = dequantize_nbits(arrays["B"].tobytes(), arrays["scales"], after["zp"])
        changed = np.zeros_like(golden_w, dtype=bool)
        changed[blk * BLOCK:(blk + 1) * BLOCK, n_at] = True
        np.testing.assert_array_equal(faulty_w != golden_w, changed)
        np.testing.assert_allclose(run_ort(out, a), a @ faulty_w, rtol=1e-5, atol=1e-6)
    # the high nibble of each row's second byte would be block 3 of 3: padding, no value behind it
    assert packed_weight_of(site, 1, 4) is None
    assert site.packing.describe(1, 7) == "padding (no value)"


def test_uint8_that_does_not_fit_matmulnbits_is_just_bytes(tmp_path: Path) -> None:
    """A B whose size disagrees with K, N and block_size keeps no packing (nothing is guessed)."""
    b = numpy_helper.from_array(np.zeros((N, K_BLOCKS, 4), np.uint8), "B")
    s = numpy_helper.from_array(np.ones(N * K_BLOCKS, np.float32), "scales")
    node = oh.make_node("MatMulNBits", ["A", "B", "scales"], ["Y"], domain="com.microsoft", K=K, N=N, bits=4,
                        block_size=BLOCK)
    graph = oh.make_graph([node], "g", [oh.make_tensor_value_info("A", TensorProto.FLOAT, [M, K])],
                          [oh.make_tensor_value_info("Y", TensorProto.FLOAT, [M, N])], [b, s])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 21), oh.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(tmp_path / "bad.onnx"))
    site = enumerate_sites(load_model(tmp_path / "bad.onnx", check=False).model).get("B")
    assert site.packing is None and site.to_dict()["packed"] is None


# --------------------------------------------------------------------------------------------------
# int4 / uint4 initializers: 4-bit elements, stored two per byte
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["int4", "uint4"])
def test_int4_flip_changes_exactly_its_nibble_bit(tmp_path: Path, rng: np.random.Generator, dtype: str) -> None:
    src = tmp_path / "dq4.onnx"
    w = int4_model(src, rng, dtype)
    k, n = w.shape
    zero = 0 if dtype == "int4" else 8

    def dequantize(data: bytes) -> np.ndarray:
        nib = unpack_low_first(data)[: k * n]
        vals = np.where(nib >= 8, nib - 16, nib) if dtype == "int4" else nib
        return ((vals - zero).astype(np.float32) * np.float32(0.05)).reshape(k, n)

    before = raw(src)
    np.testing.assert_array_equal(unpack_low_first(before["W"])[: k * n], (w & 0xF).reshape(-1))
    site = enumerate_sites(load_model(src).model).get("W")
    assert (site.dtype_name, site.bits, site.elements, site.fault_space) == (dtype, 4, k * n, k * n * 4)
    a = rng.standard_normal((2, k)).astype(np.float32)
    for i, b in [(0, 0), (0, 3), (1, 0), (1, 3), (6, 2), (k * n - 1, 3)]:
        out = tmp_path / f"w_{i}_{b}.onnx"
        result = flip(src, out, "W", i, b)
        after = raw(out)
        # element i bit b is bit (i % 2) * 4 + b of byte i // 2, per the ONNX spec; the padding nibble stays 0
        assert changed_bits(before["W"], after["W"]) == [(i // 2) * 8 + (i % 2) * 4 + b]
        assert result.stored == [{"bit": b, "byte": i // 2, "byte_bit": (i % 2) * 4 + b}]
        assert {x: v for x, v in after.items() if x != "W"} == {x: v for x, v in before.items() if x != "W"}
        old, new = int(w.reshape(-1)[i]), int(result.new_value)
        assert int(result.old_value) == old and (old & 0xF) ^ (new & 0xF) == 1 << b
        if dtype == "int4" and b == 3:
            assert (old < 0) != (new < 0)  # bit 3 is the sign
        faulty_w = dequantize(after["W"])
        assert [int(x) for x in np.flatnonzero(faulty_w != dequantize(before["W"]))] == [i]
        np.testing.assert_allclose(run_ort(out, a), a @ faulty_w, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(run_ort(out, np.eye(k, dtype=np.float32)), faulty_w)


def test_int4_faults_are_pure_and_exact() -> None:
    i4 = np.array([1, 2, 3, -8, 7], dtype=ml_dtypes.int4)
    np.testing.assert_array_equal(BitFlip((3,)).apply(i4).astype(np.int8), [-7, -6, -5, 0, -1])
    np.testing.assert_array_equal(i4.astype(np.int8), [1, 2, 3, -8, 7])  # input untouched
    u4 = np.array([1, 2, 15], dtype=ml_dtypes.uint4)
    np.testing.assert_array_equal(BitFlip((3,)).apply(u4).astype(np.uint8), [9, 10, 7])
    with pytest.raises(FaultError, match="bits 0..3"):
        BitFlip((4,)).apply(u4)
    with pytest.raises(FaultError, match="outside int4"):
        SetValue(8).apply(i4)
    assert SetValue(-8).apply(i4).astype(np.int8).tolist() == [-8] * 5
    drawn = RandomValue(-100, 100).apply(np.zeros(50, ml_dtypes.int4), np.random.default_rng(0)).astype(np.int8)
    assert drawn.min() >= -8 and drawn.max() <= 7 and len(set(drawn.tolist())) > 5
    info = dtype_info(ir.DataType.INT4)
    assert [info.storage_bit(i, b) for i, b in [(0, 0), (0, 3), (1, 0), (5, 2)]] == [(0, 0), (0, 3), (0, 4), (2, 6)]


def test_int4_bit_error_rate_flips_are_exact(tmp_path: Path, rng: np.random.Generator) -> None:
    src = tmp_path / "dq4.onnx"
    int4_model(src, rng, "int4")
    loaded = load_model(src)
    idx = enumerate_sites(loaded.model)
    apply_flips(idx, [("W", 3, 1), ("W", 10, 3)])
    save_model(loaded.model, tmp_path / "ber.onnx")
    assert changed_bits(raw(src)["W"], raw(tmp_path / "ber.onnx")["W"]) == [1 * 8 + 4 + 1, 5 * 8 + 3]


def test_int4_activations_are_not_sites(tmp_path: Path) -> None:
    """A fault node needs a bitwise op on the tensor, and ONNX has none for int4: only 4-bit weights are sites."""
    nodes = [oh.make_node("QuantizeLinear", ["A", "s", "z"], ["q"]), oh.make_node("DequantizeLinear", ["q", "s", "z"], ["Y"])]
    graph = oh.make_graph(nodes, "qdq", [oh.make_tensor_value_info("A", TensorProto.FLOAT, [2, 4])],
                          [oh.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 4])],
                          [numpy_helper.from_array(np.float32(0.5), "s"),
                           oh.make_tensor("z", TensorProto.INT4, [], bytes([0]), raw=True)])
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 21)]), str(tmp_path / "qdq.onnx"))
    idx = enumerate_sites(load_model(tmp_path / "qdq.onnx").model)
    assert {(s.name, s.kind, s.dtype_name) for s in idx if s.name in ("q", "z", "Y")} == {
        ("z", "weight", "int4"), ("Y", "activation", "float32")}


# --------------------------------------------------------------------------------------------------
# The CLI shows it
# --------------------------------------------------------------------------------------------------


def cli(*argv: str) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(list(argv)) == 0
    return buf.getvalue()


def test_cli_names_the_weight_behind_a_packed_bit(tmp_path: Path, rng: np.random.Generator) -> None:
    src = tmp_path / "nbits.onnx"
    nbits_model(src, rng, with_zero_points=False)
    text = " ".join(cli("inspect", str(src), "--weights").split())
    assert "[packed 4-bit]" in text
    assert "B: packed 4-bit: 2 weights per byte, low bits = even k (MatMulNBits B, N=4 K=48 block 16)" in text
    text = cli("inject", str(src), "--site", "B", "--index", "0,1,5", "--bit", "5", "-o", str(tmp_path / "f.onnx"))
    assert "stored    byte [0,1,5] bit 5 = weight (n=0, k=27) bit 1 of its 4-bit value:" in text
    record = json.loads(cli("inject", str(src), "--site", "B", "--index", "30", "--bit", "2", "-o",
                            str(tmp_path / "g.onnx"), "--json"))
    assert record["stored"][0]["packed"]["n"] == 1 and record["stored"][0]["packed"]["k"] == 12
    d = tmp_path / "dq4.onnx"
    int4_model(d, rng, "int4")
    text = " ".join(cli("inspect", str(d), "--weights").split())
    assert "int4 sites count 4-bit elements, stored two per byte" in text
    text = cli("inject", str(d), "--site", "W", "--index", "3", "--bit", "3", "-o", str(tmp_path / "h.onnx"))
    assert "stored    bit 3 = byte 1 bit 7 of the stored data" in text
