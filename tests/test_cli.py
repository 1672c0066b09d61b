"""The CLI: bad inputs give exit code 2 and one clear line on stderr; happy paths; one subprocess run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from conftest import (
    REPO,
    ZOO,
    dynamic_conv_model,
    fails,
    make_model,
    mlp_model,
    save,
    save_external,
    storage_model,
    tensor,
    vi,
)
from onnx import TensorProto

from onnxfi.cli import main


def succeeds(capsys: pytest.CaptureFixture[str], args: Sequence[object]) -> str:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    return cap.out


# ----------------------------------------------------------------------------------- model files


@pytest.mark.parametrize("command", ["inspect", "run", "inject"])
def test_missing_model_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    extra = ["--site", "W", "--index", "0", "--bit", "1", "-o", tmp_path / "o.onnx"] if command == "inject" else []
    fails(capsys, [command, tmp_path / "missing.onnx", *extra], "not found", "missing.onnx")


@pytest.mark.parametrize("content", ["random", "text", "truncated"])
def test_not_an_onnx_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str) -> None:
    p = tmp_path / "bad.onnx"
    if content == "random":
        p.write_bytes(np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    elif content == "text":
        p.write_text("name,value\nconv1,3\n")
    else:
        data = (ZOO / "digits_cnn.onnx").read_bytes()
        p.write_bytes(data[: len(data) // 2])
    fails(capsys, ["inspect", p], "bad.onnx")
    fails(capsys, ["run", p], "bad.onnx")


@pytest.mark.parametrize("opset", [5, 99])
def test_unsupported_opset(tmp_path: Path, capsys: pytest.CaptureFixture[str], opset: int) -> None:
    m = mlp_model()
    m.opset_import[0].version = opset
    p = tmp_path / "m.onnx"
    onnx.save_model(m, str(p))
    fails(capsys, ["inspect", p], f"unsupported opset {opset}")


def test_missing_external_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = save_external(mlp_model(), tmp_path / "m.onnx")
    (tmp_path / "w.data").unlink()
    fails(capsys, ["inspect", p], "w.data", "missing")


@pytest.mark.parametrize("where", ["dotdot", "absolute"])
def test_escaping_external_data(tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    (tmp_path / "models").mkdir()
    outside = tmp_path / "x.data"
    outside.write_bytes(np.ones(12, np.float32).tobytes())
    m = mlp_model()
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../x.data" if where == "dotdot" else str(outside)), ("offset", "0"), ("length", "48")):
        e = t.external_data.add()
        e.key, e.value = k, v
    p = tmp_path / "models" / "m.onnx"
    onnx.save_model(m, str(p))
    fails(capsys, ["inspect", p], "outside the model's folder", "refused")
    fails(capsys, ["run", p], "refused")


def test_model_onnxruntime_cannot_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = mlp_model()
    # a valid model (the checker does not know custom domains) with an op no onnxruntime implements
    out = m.graph.output[0].name
    for n in m.graph.node:
        n.output[:] = ["onnxfi_pre" if o == out else o for o in n.output]
    m.graph.node.append(oh.make_node("NoSuchOp", ["onnxfi_pre"], [out], domain="com.example.onnxfi"))
    m.opset_import.append(oh.make_opsetid("com.example.onnxfi", 1))
    p = tmp_path / "m.onnx"
    onnx.save_model(m, str(p))
    fails(capsys, ["run", p, "--input-shape", "x:1x4"], "onnxruntime cannot load the model")


def test_checker_error_and_no_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = mlp_model()
    m.graph.node[2].attribute.append(oh.make_attribute("bogus_attr", 1))
    p = tmp_path / "m.onnx"
    onnx.save_model(m, str(p))
    fails(capsys, ["inspect", p], "invalid model", "--no-check")
    assert "Weight sites" in succeeds(capsys, ["inspect", p, "--no-check"])


# ---------------------------------------------------------------------------------------- sites


@pytest.mark.parametrize(
    ("site", "index", "bits", "needles"),
    [
        ("conv.weight", "0", ["1"], ["unknown site 'conv.weight'"]),
        ("cw", "16", ["1"], ["index 16 out of range", "16 elements"]),
        ("cw", "-1", ["1"], ["out of range"]),
        ("cw", "3,4", ["1"], ["out of range on axis 1"]),
        ("cw", "0,0,0", ["1"], ["rank 2"]),
        ("cw", "x", ["1"], ["bad index"]),
        ("cw", "0", ["32"], ["bit 32 is outside float32"]),
        ("trips", "0", ["64"], ["outside int64"]),
        ("h", "0", ["40"], ["outside float32"]),
        ("h", "9", ["1"], ["out of range"]),
    ],
)
def test_bad_site_index_bit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], site: str, index: str, bits: list[str], needles: list[str]
) -> None:
    p = save(storage_model(), tmp_path / "m.onnx")
    args: list = ["inject", p, "--site", site, "--index", index, "-o", tmp_path / "o.onnx"]
    for b in bits:
        args += ["--bit", b]
    fails(capsys, args, *needles)
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--fault", "melt"], "unknown fault"),
        (["--fault", "value:300", "--site", "uq"], "outside uint8"),
        (["--fault", "value:1.5", "--site", "uq"], "not an integer"),
        (["--image", "0", "--site", "W"], "--image applies to activation sites only"),
        (["--image", "0", "--site", "t"], "no batch dimension"),
    ],
)
def test_bad_fault_options(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], needle: str) -> None:
    m = make_model(
        [oh.make_node("MatMul", ["x", "W"], ["mm"], name="mm"),
         oh.make_node("ReduceSum", ["mm", "ax"], ["t"], name="rsum", keepdims=0),
         oh.make_node("Cast", ["uq"], ["uf"], to=TensorProto.FLOAT),
         oh.make_node("Add", ["t", "uf"], ["y"])],
        [vi("x", TensorProto.FLOAT, ["N", 2])], [vi("y", TensorProto.FLOAT, [2])],
        [tensor("W", np.ones((2, 2), np.float32)), tensor("ax", np.array([0], np.int64)),
         tensor("uq", np.array([1, 2], np.uint8))],
    )
    p = save(m, tmp_path / "m.onnx")
    args = ["inject", p, "--site", "mm", "--index", "0", "--bit", "3", "-o", tmp_path / "o.onnx", *extra]
    fails(capsys, args, needle)


def test_output_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = save(mlp_model(), tmp_path / "m.onnx")
    fails(capsys, ["inject", p, "--site", "W", "--index", "0", "--bit", "1", "-o", tmp_path], "is a directory")


def test_image_outside_static_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = save(dynamic_conv_model(), tmp_path / "m.onnx")
    base = ["inject", p, "--site", "c", "--index", "0", "--bit", "3", "-o", tmp_path / "o.onnx"]
    fails(capsys, [*base, "--input-shape", "x:2x3x4x4", "--image", "2"], "static batch of 2")
    out = succeeds(capsys, [*base, "--input-shape", "x:2x3x4x4", "--image", "1"])
    assert "image 1" in out and (tmp_path / "o.onnx").is_file()


# ------------------------------------------------------------------------------- shapes and data


def test_dynamic_shape_needs_input_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = save(dynamic_conv_model(), tmp_path / "dyn.onnx")
    fails(capsys, ["run", p], "dynamic dims", "--input-shape x:")
    fails(capsys, ["inject", p, "--site", "c", "--index", "0", "--bit", "3", "-o", tmp_path / "o.onnx"],
          "not known statically", "--input-shape")
    out = succeeds(capsys, ["run", p, "--input-shape", "x:2x3x5x5", "--json"])
    rec = json.loads(out)
    assert rec["samples"] == 2 and rec["outputs"][0]["shape"] == [2, 2, 5, 5]
    succeeds(capsys, ["inject", p, "--site", "c", "--index", "1,2,3", "--bit", "3", "-o", tmp_path / "o.onnx",
                      "--input-shape", "x:1x3x5x5"])


@pytest.mark.parametrize(
    ("spec", "needle"),
    [("x:1x3", "rank 4"), ("y:1x3x4x4", "unknown input 'y'"), ("x:1x4x4x4", "fixed to 3"), ("x=1x3x4x4", "bad --input-shape")],
)
def test_bad_input_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str, needle: str) -> None:
    p = save(dynamic_conv_model(), tmp_path / "dyn.onnx")
    fails(capsys, ["run", p, "--input-shape", spec], needle)


@pytest.mark.parametrize(
    ("arrays", "needle"),
    [
        ({"a": np.ones((2, 3, 4, 4), np.float32), "b": np.ones((2, 3, 4, 4), np.float32)}, "the model's input is 'x'"),
        ({"x": np.ones((2, 3, 4), np.float32)}, "rank 4"),
        ({"x": np.ones((2, 4, 4, 4), np.float32)}, "[N,3,H,W]"),
        ({"x": np.ones((2, 3, 4, 4), np.complex64)}, "complex64"),
        ({"x": np.ones((2, 3, 4, 4), bool)}, "is bool"),
        ({"x": np.array([{"a": 1}, None], dtype=object)}, "pickled"),
    ],
)
def test_data_not_matching_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str], arrays: dict, needle: str) -> None:
    p = save(dynamic_conv_model(), tmp_path / "dyn.onnx")
    np.savez(tmp_path / "d.npz", **arrays)
    fails(capsys, ["run", p, "--data", tmp_path / "d.npz"], "d.npz", needle)


def test_data_wrong_name_two_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = make_model(
        [oh.make_node("Add", ["a", "b"], ["y"])],
        [vi("a", TensorProto.FLOAT, ["N", 2]), vi("b", TensorProto.FLOAT, ["N", 2])],
        [vi("y", TensorProto.FLOAT, ["N", 2])],
    )
    p = save(m, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", a=np.ones((3, 2), np.float32), c=np.ones((3, 2), np.float32))
    fails(capsys, ["run", p, "--data", tmp_path / "d.npz"], "no array for input(s) b")
    np.savez(tmp_path / "ok.npz", a=np.ones((3, 2), np.float32), b=np.full((3, 2), 2, np.float32))
    rec = json.loads(succeeds(capsys, ["run", p, "--data", tmp_path / "ok.npz", "--json"]))
    assert rec["samples"] == 3 and rec["outputs"][0]["min"] == rec["outputs"][0]["max"] == 3.0


def test_data_file_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = save(dynamic_conv_model(), tmp_path / "dyn.onnx")
    fails(capsys, ["run", p, "--data", tmp_path / "nope.npz"], "data file not found")
    np.save(tmp_path / "d.npy", np.ones((2, 3, 4, 4), np.float32))
    fails(capsys, ["run", p, "--data", tmp_path / "d.npy"], "not an .npz file")
    (tmp_path / "t.npz").write_text("hello")
    fails(capsys, ["run", p, "--data", tmp_path / "t.npz"], "not an .npz file")


@pytest.mark.parametrize(("provider", "needle"), [("warp-drive", "unknown"), ("coreml", "not available")])
def test_unknown_provider(tmp_path: Path, capsys: pytest.CaptureFixture[str], provider: str, needle: str) -> None:
    p = save(mlp_model(), tmp_path / "m.onnx")
    fails(capsys, ["run", p, "--provider", provider], f"execution provider '{provider}' is {needle}", "cpu")


def test_bad_run_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = save(mlp_model(), tmp_path / "m.onnx")
    fails(capsys, ["run", p, "--batch", "0"], "at least 1")


# ---------------------------------------------------------------------------------- happy paths


def test_run_zoo_with_labels(capsys: pytest.CaptureFixture[str]) -> None:
    rec = json.loads(succeeds(capsys, ["run", ZOO / "digits_cnn.onnx", "--data", ZOO / "data" / "digits_eval.npz",
                                       "--json", "--repeat", "1"]))
    assert rec["samples"] == 360 and rec["outputs"][0]["shape"] == [360, 10]
    assert rec["accuracy"] > 0.9


def test_run_zoo_scores_the_probabilities_of_a_two_output_classifier(capsys: pytest.CaptureFixture[str]) -> None:
    # skl2onnx's digits MLP: `label` [N] int64 first, `probabilities` [N,10]; both decide the same
    rec = json.loads(succeeds(capsys, ["run", ZOO / "digits_mlp_skl.onnx", "--data", ZOO / "data" / "digits_eval_flat.npz",
                                       "--json", "--repeat", "1"]))
    assert rec["output_choice"]["name"] == "probabilities" and rec["output_choice"]["runner_up"] == "label"
    assert "make the same decisions" in rec["output_choice"]["reason"] and rec["accuracy"] > 0.9


def test_run_output_and_task_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = save(mlp_model(), tmp_path / "m.onnx")
    fails(capsys, ["run", p, "--output", "z"], "--output 'z' is not a model output; outputs: y [N,3]")
    np.savez(tmp_path / "d.npz", x=np.eye(4, dtype=np.float32), labels=np.array([2, 2, 2, 2]))
    rec = json.loads(succeeds(capsys, ["run", p, "--data", tmp_path / "d.npz", "--json", "--repeat", "1"]))
    assert rec["output_choice"]["name"] == "y" and rec["output_choice"]["layout"] == "classes"
    rec = json.loads(succeeds(capsys, ["run", p, "--data", tmp_path / "d.npz", "--json", "--repeat", "1",
                                       "--task", "regression"]))
    assert rec["output_choice"]["layout"] == "raw" and "accuracy" not in rec


def test_run_text_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = save(mlp_model(), tmp_path / "m.onnx")
    out = succeeds(capsys, ["run", p, "--samples", "4", "--repeat", "1"])
    assert "4 samples" in out and "random (seed 0)" in out and "latency" in out


def test_inject_text_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = save(storage_model(), tmp_path / "m.onnx")
    out = succeeds(capsys, ["inject", p, "--site", "cf", "--index", "0", "--bit", "30", "-o", tmp_path / "f.onnx"])
    assert "site      cf (weight, float32, shape [4])" in out
    assert "value     0.5 -> 1.70141183e+38" in out
    assert str(tmp_path / "f.onnx") in out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "inspect" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["--version"])
    assert ei.value.code == 0 and "onnxfi" in capsys.readouterr().out


def test_subprocess_inspect_json() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "onnxfi", "inspect", "model_zoo/digits_cnn.onnx", "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    weights = [s for s in info["sites"] if s["kind"] == "weight"]
    assert len(weights) >= 5 and info["parameters"] > 1000
    assert {"Conv", "Gemm"} <= {op for s in weights for op in s["ops"]}
    assert info["inputs"][0]["name"] == "input"


def test_subprocess_error_exit_code(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "onnxfi", "inspect", str(tmp_path / "nope.onnx")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"onnxfi: error: model file not found: {tmp_path / 'nope.onnx'}"]
