"""The Python API (onnxfi.api): the examples of docs/python-api.md run as written, and what they return holds up
against the files they wrote, numpy and ONNX Runtime."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnxfi
from onnxfi import api, zoo

DOC = Path(__file__).resolve().parent.parent / "docs" / "python-api.md"
API_FUNCTIONS = ("analyze", "sites", "inject", "harden", "gate", "compare")
SUMMARY_KEYS = {"design", "rates", "rates_raw", "per_inference", "progress", "layers", "bits", "layer_bit", "paths"}


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


@pytest.fixture(scope="module")
def doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every python block of the doc, run in order in one namespace in a fresh folder (``_cwd``)."""
    cwd = tmp_path_factory.mktemp("python_api_doc")
    ns: dict[str, Any] = {"__name__": "python_api_doc"}
    old = os.getcwd()
    os.chdir(cwd)
    try:
        for i, block in enumerate(_blocks()):
            exec(compile(block, f"{DOC.name} block {i}", "exec"), ns)
    finally:
        os.chdir(old)
    ns["_cwd"] = cwd
    return ns


def _eval_set() -> tuple[np.ndarray, np.ndarray]:
    path = zoo.default_data("digits_cnn")
    assert path is not None
    with np.load(path) as npz:
        return npz["input"], npz["labels"]


def test_doc_shows_every_function() -> None:
    code = "\n".join(_blocks())
    for name in API_FUNCTIONS:
        assert f"onnxfi.{name}(" in code, name


def test_analyze_headline_rate_lies_in_its_interval(doc: dict[str, Any]) -> None:
    report = doc["report"]
    assert isinstance(report, onnxfi.CampaignReport)
    sdc = report.rate("sdc1")
    assert sdc.lo <= sdc.rate <= sdc.hi
    assert sdc.confidence == pytest.approx(0.99)
    assert len(report.rows) == 60 == sdc.n  # one row per fault; a complete proportional campaign uses them all
    assert sdc.k == sum(r["sdc1"] for r in report.rows)
    assert report.design == "proportional" and report.progress["complete"]
    assert set(report.rates) == {"sdc1", "sdc5", "critical", "due", "crash", "masked"}
    per = report.per_inference
    assert per.lo <= per.rate <= per.hi and per.n == 60
    assert per.rate == pytest.approx(np.mean([r["images_changed"] or 0.0 for r in report.rows]))
    assert SUMMARY_KEYS <= set(report.summary)
    assert [e["sdc1"]["rate"] for e in report.layers] == sorted((e["sdc1"]["rate"] for e in report.layers), reverse=True)
    assert {r["bit"] for r in report.rows} <= set(range(23, 32))
    written = json.loads((doc["_cwd"] / "campaign.json").read_text())
    assert written["schema"] == "onnxfi.analyze/1" and written["summary"]["rates"] == report.summary["rates"]
    assert report.temporary and report.db.is_file()  # the temporary db lives as long as the report


def test_in_memory_model_and_arrays_are_kept_beside_the_db_and_resume(doc: dict[str, Any]) -> None:
    small, cwd = doc["small"], doc["_cwd"]
    db = cwd / "digits.db"
    assert Path(small.model).resolve() == (cwd / "digits.db.model.onnx").resolve()
    assert small.clean["samples"] == 100 and len(small.rows) == 20
    assert not small.temporary and db.is_file()
    with pytest.raises(onnxfi.OnnxfiError, match="exists"):
        onnxfi.analyze(doc["proto"], faults=20, db=db)
    again = onnxfi.analyze(doc["proto"], db=db, resume=True)
    assert again.executed == 0
    assert [r["id"] for r in again.rows] == [r["id"] for r in small.rows]
    assert again.summary["rates"] == small.summary["rates"]


def test_inject_flips_exactly_the_named_bit(doc: dict[str, Any]) -> None:
    hit = doc["hit"]
    assert isinstance(hit, onnxfi.InjectionResult)
    original = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(zoo.resolve_model("digits_cnn"))).graph.initializer}
    assert hit.path == Path("faulty.onnx")  # as given, relative to the doc's folder
    faulty = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(doc["_cwd"] / hit.path)).graph.initializer}
    assert faulty.keys() == original.keys()
    for name, before in original.items():
        after = faulty[name]
        assert after.dtype == before.dtype and after.shape == before.shape
        if name != "features.3.weight":
            assert after.tobytes() == before.tobytes(), name
    before, after = original["features.3.weight"], faulty["features.3.weight"]
    xor = (before.view(np.uint32) ^ after.view(np.uint32)).reshape(-1)
    flat = int(np.ravel_multi_index((0, 0, 1, 1), before.shape))
    assert np.flatnonzero(xor).tolist() == [flat] and int(xor[flat]) == 1 << 30
    assert hit.flat_index == flat and hit.coords == (0, 0, 1, 1)
    assert hit.old_value == before.reshape(-1)[flat] and hit.new_value == after.reshape(-1)[flat]


def test_inject_rebuilds_a_campaign_experiment(doc: dict[str, Any]) -> None:
    worst, replay = doc["worst"], doc["replay"]
    assert replay.site.name == worst["site"] and replay.flat_index == worst["idx"]
    assert replay.fault.spec() == worst["fault"]
    assert replay.to_dict()["output"] == ["worst.onnx"]


def test_harden_writes_a_model_that_loads_and_scores_as_reported(doc: dict[str, Any]) -> None:
    hardened = doc["hardened"]
    assert isinstance(hardened, onnxfi.HardeningReport)
    assert hardened.methods == ["ranger"] and hardened.passes[0].changes
    assert hardened.path == Path("digits_ranger.onnx")
    path = doc["_cwd"] / hardened.path
    assert path.is_file()
    loaded = onnxfi.load_model(path)  # passes the checker
    assert {o.name for o in loaded.outputs()} == {"logits"}
    x, labels = _eval_set()
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert hardened.effect is not None and hardened.effect.metric == "accuracy"
    assert float(np.mean(logits.argmax(axis=1) == labels)) == pytest.approx(hardened.effect.after)
    both = doc["both"]  # the same plan on the original and on the hardened copy
    assert both.compare is not None and both.compare.model == "digits_ranger.onnx"
    assert [(r["site"], r["idx"], r["bit"]) for r in both.rows] == [(r["site"], r["idx"], r["bit"]) for r in both.compare.rows]


def test_gate_verdict_moves_with_the_threshold(doc: dict[str, Any]) -> None:
    verdict = doc["verdict"]
    assert isinstance(verdict, onnxfi.GateResult)
    assert verdict.passed and verdict.executed == 40
    sdc = next(c for c in verdict.checks if c.name == "rate.sdc1")
    assert sdc.measured <= sdc.bound <= sdc.limit
    strict = {**doc["config"], "thresholds": {"sdc1": sdc.bound / 2}}  # the same plan, a limit under the bound
    failed = onnxfi.gate(strict, db=doc["_cwd"] / "gate.db")
    assert not failed.passed and [c.name for c in failed.failures] == ["rate.sdc1"]
    assert failed.executed == 0 and failed.reused == 40  # the stored experiments are reused
    assert failed.to_dict()["verdict"] == "fail"


def test_compare_reports_both_runtimes(doc: dict[str, Any]) -> None:
    cmp = doc["cmp"]
    assert isinstance(cmp, onnxfi.CompareResult)
    assert [r.name for r in cmp.runtimes] == ["cpu", "reference"]
    assert [r.is_reference for r in cmp.runtimes] == [True, False]
    assert cmp.passed and not cmp.unavailable
    assert all(sum(r.outcomes.values()) == 5 for r in cmp.runtimes)


def test_user_errors_are_onnxfi_errors(doc: dict[str, Any]) -> None:
    with pytest.raises(onnxfi.OnnxfiError, match="not faults and margin"):
        onnxfi.analyze("digits_cnn", faults=10, margin=0.1)
    with pytest.raises(onnxfi.OnnxfiError, match="unknown flag"):
        doc["report"].rate("sdc2")
    with pytest.raises(onnxfi.OnnxfiError, match=r"\.onnx"):
        onnxfi.inject("digits_cnn", "features.3.weight", 0, bit=30, out=doc["_cwd"] / "faulty.json")
    with pytest.raises(onnxfi.OnnxfiError, match="level applies to protect"):
        onnxfi.harden("digits_cnn", "ranger", level=2)
    with pytest.raises(onnxfi.OnnxfiError, match="no checks"):
        onnxfi.gate({"model": "digits_cnn"})
    with pytest.raises(onnxfi.OnnxfiError, match="unknown site"):
        onnxfi.inject("digits_cnn", "features.3.weigth", 0, bit=30)


def test_import_onnxfi_loads_no_runtime() -> None:
    # stand-ins for modules loaded on first use (onnxfi._Deferred) are not loaded modules
    code = ("import sys, onnxfi; print(sorted(m for m, v in sys.modules.items() if (m.startswith('onnxfi.') "
            "or m.split('.')[0] in ('numpy', 'onnx', 'onnx_ir', 'onnxruntime', 'sympy')) "
            "and not isinstance(v, onnxfi._Deferred)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['onnxfi.errors']"


def test_api_functions_stay_when_library_modules_of_the_same_name_load() -> None:
    for name in ("sites", "inject", "harden", "gate", "compare"):
        module = importlib.import_module(f"onnxfi.{name}")
        assert isinstance(module, types.ModuleType) and sys.modules[f"onnxfi.{name}"] is module
        assert getattr(onnxfi, name) is getattr(api, name)
    from onnxfi.harden import HardenOptions

    assert HardenOptions().level == 1
    for name in onnxfi.__all__:
        assert getattr(onnxfi, name) is not None, name


def test_data_loader_script_calibrates_harden(tmp_path: Path) -> None:
    x, labels = _eval_set()
    np.savez(tmp_path / "part.npz", input=x[:50], labels=labels[:50])
    script = tmp_path / "feeds.py"
    script.write_text("import numpy as np\n\n\ndef load_data():\n"
                      f"    with np.load({str(tmp_path / 'part.npz')!r}) as f:\n"
                      "        for i in range(0, 50, 25):\n"
                      "            yield {'input': f['input'][i:i + 25], 'labels': f['labels'][i:i + 25]}\n")
    hardened = onnxfi.harden("digits_cnn", "ranger", data_loader=f"{script}:load_data", measure=False)
    assert hardened.calibration["samples"] == 50 and hardened.effect is None and hardened.path is None
    assert hardened.passes[0].changes
    with pytest.raises(onnxfi.OnnxfiError, match="not both"):
        onnxfi.analyze("digits_cnn", {"input": x[:10]}, data_loader=str(script), faults=5)
