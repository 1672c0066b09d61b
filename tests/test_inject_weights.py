"""`onnxfi inject` on weights: exactly one stored element changes, in every storage form and dtype."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from conftest import (
    DT,
    DTYPES,
    diff_elements,
    file_tensors,
    int_words,
    make_model,
    ort_run,
    quantized_model,
    random_words,
    save,
    save_external,
    storage_model,
    storage_reference,
    tensor,
    vi,
    words,
)
from onnx import TensorProto

from onnxfi.cli import main
from onnxfi.errors import SiteError
from onnxfi.faults import BitFlip, SetValue
from onnxfi.inject import inject
from onnxfi.model import load_model
from onnxfi.sites import enumerate_sites

STORAGE_SITES = ["b", "cw", "cf", "tb", "ec", "lw"]


def cli_inject(src: Path, out: Path, site: str, index: str, *extra: str) -> dict:
    """Run `onnxfi inject ... --json` in-process and return its record."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["inject", str(src), "--site", site, "--index", index, "-o", str(out), "--json", *extra])
    assert rc == 0
    return json.loads(buf.getvalue())


def graph_signature(path: Path) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """Every node (any graph) as (op, inputs, outputs): what must not change with a weight fault."""
    out = []

    def walk(g: onnx.GraphProto) -> None:
        for n in g.node:
            out.append((n.op_type, tuple(n.input), tuple(n.output)))
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)

    walk(onnx.load_model(str(path), load_external_data=False).graph)
    return out


def assert_single_flip(before: dict, after: dict, site: str, flat: int, bits: tuple[int, ...]) -> None:
    assert diff_elements(before, after) == [(site, flat)]
    old = int_words(before[site].reshape(-1)[flat : flat + 1])[0]
    new = int_words(after[site].reshape(-1)[flat : flat + 1])[0]
    assert old ^ new == sum(2**b for b in bits)


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external"])
@pytest.mark.parametrize("site", STORAGE_SITES)
def test_inject_each_storage_form(tmp_path: Path, site: str, external: bool) -> None:
    src = tmp_path / "m.onnx"
    save_external(storage_model(), src) if external else save(storage_model(), src)
    before = file_tensors(src)
    out = tmp_path / "out" / "faulty.onnx"
    index = "1,2" if site == "cw" else "2"
    flat = 6 if site == "cw" else 2
    rec = cli_inject(src, out, site, index, "--bit", "22", "--bit", "30")
    assert rec["site"] == site and rec["kind"] == "weight" and rec["index"] == flat
    after = file_tensors(out)
    assert_single_flip(before, after, site, flat, (22, 30))
    assert rec["old_value"] == float(before[site].reshape(-1)[flat])
    nv = after[site].reshape(-1)[flat]
    assert rec["new_value"] == (float(nv) if np.isfinite(nv) else str(float(nv)))
    assert graph_signature(out) == graph_signature(src)
    # the source file is untouched
    assert diff_elements(before, file_tensors(src)) == []
    # the faulty model runs and computes what numpy computes from its stored tensors
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    for cond in (True, False):
        y = ort_run(out, {"x": x, "cond": np.array(cond)})["y"]
        np.testing.assert_allclose(y, storage_reference(after, x, cond), rtol=1e-6, atol=1e-6)
    ok = ort_run(src, {"x": x, "cond": np.array(True)})["y"]
    y = ort_run(out, {"x": x, "cond": np.array(True)})["y"]
    if site in ("b", "cw", "cf", "tb", "lw"):
        assert not np.array_equal(y, ok)


def test_external_model_output_keeps_external_data(tmp_path: Path) -> None:
    big = storage_model()
    big.graph.initializer.append(tensor("big", np.arange(256, dtype=np.float32)))
    src = save_external(big, tmp_path / "m.onnx")
    out = tmp_path / "f.onnx"
    rec = cli_inject(src, out, "big", "255", "--bit", "0")
    assert [Path(p).name for p in rec["output"]] == ["f.onnx", "f.onnx.data"]
    assert (tmp_path / "f.onnx.data").stat().st_size >= 1024
    t = onnx.load_model(str(out), load_external_data=False)
    stored = {i.name: i.data_location for i in t.graph.initializer}
    assert stored["big"] == TensorProto.EXTERNAL
    assert_single_flip(file_tensors(src), file_tensors(out), "big", 255, (0,))


@pytest.mark.parametrize("dt", DTYPES, ids=[d.name for d in DTYPES])
def test_inject_every_dtype(tmp_path: Path, dt: DT) -> None:
    arr = random_words(dt, (3, 4), np.random.default_rng(dt.bits))  # any words: NaN payloads too
    m = make_model(
        [oh.make_node("Identity", ["w"], ["y"], name="id")], [], [vi("y", dt.onnx, [3, 4])], [tensor("w", arr)],
    )
    src = save(m, tmp_path / "m.onnx")
    before = file_tensors(src)
    assert before["w"].dtype == dt.np
    for bit in (0, dt.bits - 1):
        out = tmp_path / f"f{bit}.onnx"
        cli_inject(src, out, "w", "2,1", "--bit", str(bit))
        after = file_tensors(out)
        assert after["w"].dtype == dt.np and after["w"].shape == (3, 4)
        assert_single_flip(before, after, "w", 9, (bit,))


@pytest.mark.parametrize(
    ("fault", "bits", "expect"),
    [
        ("flip", ["31"], lambda w: w ^ 0x80000000),
        ("stuck-1", ["30", "29"], lambda w: w | 0x60000000),
        ("stuck-0", ["30", "29"], lambda w: w & ~0x60000000 & 0xFFFFFFFF),
        ("burst:3", ["23"], lambda w: w ^ 0x03800000),
        ("burst:20+4", [], lambda w: w ^ 0x00F00000),
        ("value:-2.5", [], lambda w: 0xC0200000),
        ("zero", [], lambda w: 0),
    ],
)
def test_fault_kinds_on_a_weight(tmp_path: Path, fault: str, bits: list[str], expect: object) -> None:
    src = save(storage_model(), tmp_path / "m.onnx")
    before = file_tensors(src)
    args = ["--fault", fault]
    for b in bits:
        args += ["--bit", b]
    cli_inject(src, tmp_path / "f.onnx", "cw", "13", *args)
    after = file_tensors(tmp_path / "f.onnx")
    old = int_words(before["cw"].reshape(-1)[13:14])[0]
    new = int_words(after["cw"].reshape(-1)[13:14])[0]
    assert new == expect(old)  # type: ignore[operator]
    d = diff_elements(before, after)
    assert d == ([("cw", 13)] if new != old else [])


def test_random_value_is_seeded(tmp_path: Path) -> None:
    src = save(storage_model(), tmp_path / "m.onnx")
    before = file_tensors(src)
    recs = []
    for i, seed in enumerate((5, 5, 6)):
        recs.append(cli_inject(src, tmp_path / f"r{i}.onnx", "cw", "0", "--fault", "random:-4,4", "--seed", str(seed)))
    vals = [file_tensors(tmp_path / f"r{i}.onnx")["cw"].reshape(-1)[0] for i in range(3)]
    assert words(np.array(vals[0])) == words(np.array(vals[1]))
    assert vals[0] != vals[2]
    assert all(-4 <= v < 4 for v in vals)
    assert diff_elements(before, file_tensors(tmp_path / "r0.onnx")) == [("cw", 0)]
    assert recs[0]["fault"]["kind"] == "random"


def test_quantized_weights_can_be_injected(tmp_path: Path) -> None:
    src = save(quantized_model(), tmp_path / "q.onnx")
    before = file_tensors(src)
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 5, (1, 1, 2, 2)).astype(np.float32)
    x2 = rng.standard_normal((3, 4)).astype(np.float32)
    cases = (("qw", "1,0,0,0", 1, 7), ("qb", "1", 1, 31), ("dw", "3,1", 7, 7), ("uw", "0", 0, 7), ("dw", "5", 5, 0))
    for site, index, flat, bit in cases:
        out = tmp_path / f"{site}_{bit}.onnx"
        cli_inject(src, out, site, index, "--bit", str(bit))
        after = file_tensors(out)
        assert_single_flip(before, after, site, flat, (bit,))
        res = ort_run(out, {"x": x, "x2": x2})
        # the dequantized MatMul branch, recomputed in numpy from the stored tensors
        w = (after["dw"].astype(np.float32) - after["dwzp"].astype(np.float32)) * after["dws"]
        u = (after["uw"].astype(np.float32) - after["uzp"].astype(np.float32)) * after["dws"]
        np.testing.assert_allclose(res["y3"], x2 @ w + u, rtol=1e-5, atol=1e-5)
        clean = ort_run(src, {"x": x, "x2": x2})
        if site in ("qw", "qb"):
            assert not np.array_equal(res["yf"], clean["yf"])
            np.testing.assert_array_equal(res["y3"], clean["y3"])
        else:
            assert not np.array_equal(res["y3"], clean["y3"])


def test_quantized_sign_flip_value(tmp_path: Path) -> None:
    """MRFI-style check on a stored int8 weight: bit 7 of v is v - 128 (v >= 0) or v + 128 (v < 0)."""
    src = save(quantized_model(), tmp_path / "q.onnx")
    before = file_tensors(src)["dw"].reshape(-1)
    for i in range(before.size):
        rec = cli_inject(src, tmp_path / "s.onnx", "dw", str(i), "--bit", "7")
        v = int(before[i])
        assert rec["old_value"] == v
        assert rec["new_value"] == (v - 128 if v >= 0 else v + 128)


def test_inject_api_records_values(tmp_path: Path) -> None:
    lm = load_model(save(storage_model(), tmp_path / "m.onnx"))
    idx = enumerate_sites(lm.model, lm.value_shapes)
    res = inject(lm, idx, "cf", "3", BitFlip((23,)))
    assert res.flat_index == 3 and res.coords == (3,)
    assert float(res.old_value) == 1.0 and float(res.new_value) == 0.5
    assert res.to_dict()["fault"] == {"kind": "flip", "bits": [23], "spec": "flip:23"}
    np.testing.assert_array_equal(idx.weight_array(idx.get("cf")), np.array([0.5, -0.25, 2.0, 0.5], np.float32))
    with pytest.raises(SiteError, match="--image"):
        inject(lm, idx, "cf", "0", SetValue(1.0), image=0)


@pytest.mark.parametrize(
    ("site", "index", "bits", "match"),
    [
        ("nope", "0", ["1"], "unknown site"),
        ("cw", "16", ["1"], "out of range"),
        ("cw", "4,0", ["1"], "out of range"),
        ("cw", "1,1,1", ["1"], "rank"),
        ("cw", "0", ["32"], "outside float32"),
        ("b", "0", [], "needs --bit"),
    ],
)
def test_weight_injection_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], site: str, index: str, bits: list[str], match: str
) -> None:
    src = save(storage_model(), tmp_path / "m.onnx")
    capsys.readouterr()
    args = ["inject", str(src), "--site", site, "--index", index, "-o", str(tmp_path / "o.onnx")]
    for b in bits:
        args += ["--bit", b]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("onnxfi: error: ") and match in err and err.count("\n") == 1
    assert not (tmp_path / "o.onnx").exists()
