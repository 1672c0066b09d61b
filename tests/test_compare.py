"""``onnxfi compare``: tolerances (Polygraphy's rule), runtime availability with reasons, CPU vs the ONNX
reference evaluator on the zoo CNN, and doctored runtimes that must be reported (a mismatch, a masked fault)."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxfi.cli import main
from onnxfi.compare import (
    COMPARE_SCHEMA,
    Backend,
    OrtBackend,
    ReferenceBackend,
    RuntimeUnavailable,
    Session,
    Tolerance,
    compare_outputs,
    get_backend,
    parse_tolerance,
    run_compare,
)
from onnxfi.data import Dataset, load_data
from onnxfi.errors import OnnxfiError
from onnxfi.model import LoadedModel, load_model
from onnxfi.zoo import eval_data_path, model_path

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


# ---------------------------------------------------------------------------------------------- tolerances


def test_parse_tolerance_takes_a_default_and_per_output_values() -> None:
    assert parse_tolerance(None, 1e-4) == Tolerance(1e-4)
    t = parse_tolerance(["1e-3", "logits:0.5,probs:0"], 1e-4)
    assert t.default == 1e-3 and t.get("logits") == 0.5 and t.get("probs") == 0.0 and t.get("other") == 1e-3
    t = parse_tolerance("a:b:2", 1e-4)  # output names may hold colons: the value is after the last
    assert t.get("a:b") == 2.0 and t.default == 1e-4
    for bad in ("x", "-1", "nan", ":1", "logits:inf"):
        with pytest.raises(OnnxfiError, match="bad --atol"):
            parse_tolerance(bad, 1e-4, "--atol")


def test_an_element_mismatches_only_when_both_errors_exceed() -> None:
    ref = {"y": np.array([1.0, 100.0, 0.0, 1e-6], dtype=np.float32)}
    out = {"y": np.array([1.0005, 100.05, 0.0, 2e-6], dtype=np.float32)}
    # abs errors 5e-4, 5e-2, 0, 1e-6; rel errors 5e-4, 5e-4, 0, 1.
    (d,) = compare_outputs(ref, out, Tolerance(1e-3), Tolerance(1e-3))
    assert d.passed and d.mismatches == 0  # 100.05: abs 0.05 over, rel 5e-4 under; 2e-6: rel 1 over, abs under
    (d,) = compare_outputs(ref, out, Tolerance(1e-4), Tolerance(1e-4))
    assert not d.passed and d.mismatches == 2
    assert d.max_abs == pytest.approx(0.05, rel=1e-3) and d.max_rel == pytest.approx(1.0, rel=1e-3)
    (d,) = compare_outputs(ref, out, Tolerance(1e-4, {"y": 0.1}), Tolerance(1e-4))
    assert d.passed and d.atol == 0.1


def test_nan_shape_and_missing_outputs() -> None:
    ref = {"y": np.array([np.nan, 1.0, np.inf], dtype=np.float32), "z": np.zeros((2, 3), np.float32)}
    same = {"y": np.array([np.nan, 1.0, np.inf], dtype=np.float32), "z": np.zeros((3, 2), np.float32)}
    d_y, d_z = compare_outputs(ref, same, Tolerance(0.0), Tolerance(0.0))
    assert d_y.passed and d_y.max_abs == 0.0
    assert not d_z.passed and d_z.note == "shape differs"
    one_nan = {"y": np.array([np.nan, np.nan, np.inf], dtype=np.float32)}
    d_y, d_z = compare_outputs(ref, one_nan, Tolerance(1.0), Tolerance(1.0))
    assert not d_y.passed and d_y.mismatches == 1
    assert not d_z.passed and d_z.note == "missing"


def test_top1_agreement_for_classifier_outputs() -> None:
    ref = {"logits": np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)}
    out = {"logits": np.array([[0.1, 0.9], [0.1, 0.2]], dtype=np.float32)}
    (d,) = compare_outputs(ref, out, Tolerance(1e-4), Tolerance(1e-4))
    assert d.top1_agreement == 0.5 and not d.passed


# ---------------------------------------------------------------------------------------------- backends


def test_unknown_runtime_lists_the_known_ones() -> None:
    with pytest.raises(OnnxfiError, match="unknown runtime 'tpu'.*reference.*cuda"):
        get_backend("tpu")


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA")
def test_cuda_unavailable_names_the_reason() -> None:
    with pytest.raises(RuntimeUnavailable) as info:
        get_backend("cuda")
    assert info.value.name == "cuda"
    assert "not in this onnxruntime" in info.value.reason and "onnxruntime-gpu" in info.value.reason
    with pytest.raises(RuntimeUnavailable, match="TensorRT"):
        get_backend("tensorrt")


def test_openvino_not_installed_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails as if not installed
    with pytest.raises(RuntimeUnavailable) as info:
        get_backend("openvino")
    assert info.value.reason == "not installed (pip install onnxfi[openvino])"


def test_known_backends() -> None:
    assert isinstance(get_backend("reference"), ReferenceBackend)
    cpu = get_backend("CPU")
    assert isinstance(cpu, OrtBackend) and cpu.name == "cpu" and cpu.provider == "CPUExecutionProvider"
    assert get_backend("CPUExecutionProvider").name == "cpu"


# ---------------------------------------------------------------------------------------------- zoo CNN


@pytest.fixture(scope="module")
def digits() -> tuple[LoadedModel, str, Dataset]:
    path = str(model_path("digits_cnn"))
    loaded = load_model(path)
    data = load_data(eval_data_path("digits_cnn"), loaded.inputs())
    small = Dataset(data.batch(0, 48), None if data.labels is None else data.labels[:48], data.source)
    return loaded, path, small


class _Shifted(Backend):
    """A doctored runtime: CPU outputs plus a constant, as a runtime with a precision bug would give."""

    name = "shifted"

    def load(self, model: onnx.ModelProto, serialized: bytes) -> Session:
        inner = OrtBackend("CPUExecutionProvider").load(model, serialized)

        class S(Session):
            def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
                return {k: v + np.float32(0.01) for k, v in inner.run(feeds).items()}

        return S()


class _Frozen(Backend):
    """A doctored runtime that ignores the weights it is given: every weight fault is masked on it."""

    name = "frozen"

    def __init__(self, original: bytes) -> None:
        self.original = original

    def load(self, model: onnx.ModelProto, serialized: bytes) -> Session:
        return OrtBackend("CPUExecutionProvider").load(model, self.original)


def test_cpu_agrees_with_the_reference_evaluator(digits: tuple[LoadedModel, str, Dataset]) -> None:
    loaded, path, data = digits
    res = run_compare(loaded, path, [get_backend("cpu"), get_backend("reference")], data, repeat=3, warmup=1,
                      n_faults=8, bits=[30, 31], seed=2, fault_samples=24)
    cpu, ref = res.runtimes
    assert res.reference == "cpu" and cpu.is_reference and cpu.passed is None
    assert ref.passed is True and res.passed
    (d,) = ref.outputs
    assert d.name == "logits" and d.shape == (48, 10) and d.mismatches == 0 and d.top1_agreement == 1.0
    assert d.max_abs < 1e-4
    for r in (cpu, ref):
        assert r.latency is not None and r.latency.runs == 3 and r.latency.batch == 1
        assert 0 < r.latency.median_ms <= r.latency.p90_ms
        assert sum(r.outcomes.values()) == 8 and r.rates["sdc1"]["n"] == 8
    assert res.plan["requested"] == 8 and res.fault_samples == 24
    # Bits 30/31 of real weights change the outputs: both runtimes see it the same way.
    assert cpu.outcomes["masked"] == 0 and cpu.outcomes == ref.outcomes and res.disagreements == []
    doc = json.loads(json.dumps(res.to_dict()))
    assert doc["schema"] == COMPARE_SCHEMA and doc["passed"] is True
    assert doc["runtimes"][1]["outputs"][0]["mismatches"] == 0


def test_a_doctored_runtime_is_reported(digits: tuple[LoadedModel, str, Dataset]) -> None:
    loaded, path, data = digits
    original = onnx.load(path).SerializeToString()
    res = run_compare(loaded, path, [get_backend("cpu"), _Shifted(), _Frozen(original)], data, repeat=1, warmup=0,
                      n_faults=6, bits=[30], seed=1, fault_samples=16)
    _, shifted, frozen = res.runtimes
    assert not res.passed
    assert shifted.passed is False
    (d,) = shifted.outputs
    assert d.mismatches == d.elements == 480 and d.max_abs == pytest.approx(0.01, rel=1e-3)
    assert frozen.passed is True  # fault-free outputs identical to CPU's
    assert frozen.outcomes["masked"] == 6  # ...yet it hides every fault
    assert len(res.disagreements) == 6
    assert {d["outcomes"]["frozen"] for d in res.disagreements} == {"masked"}


def test_reference_must_be_usable(digits: tuple[LoadedModel, str, Dataset]) -> None:
    loaded, path, data = digits
    with pytest.raises(OnnxfiError, match="reference runtime 'cuda' is not usable: no CUDA here"):
        run_compare(loaded, path, [get_backend("cpu"), RuntimeUnavailable("cuda", "no CUDA here")], data,
                    reference="cuda", n_faults=0)


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino not installed")
def test_openvino_runtime_agrees_with_cpu(digits: tuple[LoadedModel, str, Dataset]) -> None:
    loaded, path, data = digits
    res = run_compare(loaded, path, [get_backend("cpu"), get_backend("openvino")], data, repeat=2, warmup=1,
                      n_faults=4, bits=[30], fault_samples=16)
    ov = res.runtimes[1]
    assert ov.available and ov.passed is True and sum(ov.outcomes.values()) == 4
    assert ov.description.startswith("openvino ")


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_compare_cpu_and_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp.json"
    rc = main(["compare", "digits_cnn", "--faults", "4", "--bits", "30", "--fault-samples", "16", "--repeat", "3",
               "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    doc = json.loads(out.read_text())
    assert doc["schema"] == COMPARE_SCHEMA and doc["samples"] == 360 and doc["reference"] == "cpu"
    assert [r["name"] for r in doc["runtimes"]] == ["cpu", "reference"]
    assert doc["runtimes"][1]["passed"] is True and doc["runtimes"][1]["latency"]["runs"] == 3
    assert doc["runtimes"][1]["faults"]["outcomes"]["masked"] == 0
    assert "MATCH" in text and "Same 4 weight bit flips" in text


def test_cli_zero_tolerance_reports_the_float_differences(capsys: pytest.CaptureFixture[str]) -> None:
    # ORT's kernels and numpy sum in different orders: bitwise equality is too strict for float32.
    rc = main(["compare", "digits_cnn", "--faults", "0", "--repeat", "1", "--atol", "0", "--rtol", "0"])
    assert rc == 1
    assert "MISMATCH" in capsys.readouterr().out


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA")
def test_cli_unavailable_runtime(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["compare", "digits_cnn", "--providers", "cpu,cuda", "--faults", "0", "--repeat", "1"])
    captured = capsys.readouterr()
    assert rc == 2
    assert "cuda" in captured.out and "onnxruntime-gpu" in captured.out  # the reason, in the table
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "not available: cuda" in err[0]
    out = tmp_path / "c.json"
    rc = main(["compare", "digits_cnn", "--providers", "cpu,cuda,reference", "--faults", "0", "--repeat", "1",
               "--skip-unavailable", "--json", str(out)])
    assert rc == 0
    runtimes: list[dict[str, Any]] = json.loads(out.read_text())["runtimes"]
    cuda = next(r for r in runtimes if r["name"] == "cuda")
    assert cuda["available"] is False and "onnxruntime-gpu" in cuda["reason"]


def test_cli_only_unavailable_runtimes_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["compare", "digits_cnn", "--providers", "tpu"])
    assert rc == 2 and "unknown runtime 'tpu'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- scored output


def _save_detector(tmp_path: Path) -> tuple[Path, Path]:
    from test_scoring import LABELS, X, _detector  # the two-output model: boxes [N,4] first, scores [N,2]

    onnx.save(_detector(), tmp_path / "det.onnx")
    np.savez(tmp_path / "d.npz", x=X, labels=LABELS)
    return tmp_path / "det.onnx", tmp_path / "d.npz"


def test_faults_are_scored_on_the_output_the_labels_fit(tmp_path: Path) -> None:
    model, data_path = _save_detector(tmp_path)
    loaded = load_model(str(model))
    data = load_data(str(data_path), loaded.inputs())
    res = run_compare(loaded, str(model), [get_backend("cpu"), get_backend("reference")], data, repeat=1, warmup=0,
                      n_faults=6, bits=[30], seed=3)
    assert res.output_choice["name"] == "scores" and res.output_choice["runner_up"] == "boxes"
    assert res.task == "classification" and res.clean == {"metric": "accuracy", "value": 1.0} and res.warning is None
    doc = json.loads(json.dumps(res.to_dict()))
    assert doc["output_choice"]["layout"] == "classes" and doc["clean"]["value"] == 1.0
    boxes = run_compare(loaded, str(model), [get_backend("cpu")], data, repeat=1, warmup=0, n_faults=0, output="boxes")
    assert boxes.output_choice["name"] == "boxes" and "at or below chance (0.25)" in (boxes.warning or "")
    with pytest.raises(OnnxfiError, match=r"--output 'logits' is not a model output; outputs: boxes \[N,4\], "
                                          r"scores \[N,2\]"):
        run_compare(loaded, str(model), [get_backend("cpu")], data, n_faults=0, output="logits")


def test_cli_compare_prints_the_scored_output_and_the_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, data_path = _save_detector(tmp_path)
    rc = main(["compare", str(model), "--providers", "cpu", "--data", str(data_path), "--faults", "0", "--repeat", "1"])
    cap = capsys.readouterr()
    assert rc == 0 and "scored output: scores (classes): best agreement with the labels" in cap.out
    assert cap.err == ""
    rc = main(["compare", str(model), "--providers", "cpu", "--data", str(data_path), "--faults", "2", "--repeat", "1",
               "--output", "boxes"])
    cap = capsys.readouterr()
    assert rc == 0 and "scored output: boxes (classes): --output boxes" in cap.out
    assert "warning:" in cap.err and "is --output right? outputs: boxes [N,4], scores [N,2]" in cap.err
