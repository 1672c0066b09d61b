"""``onnxfi gate``: config loading, checks on upper confidence bounds, baseline regressions, JUnit, and the
CLI on the zoo CNN (pass, fail as thresholds move, a damaged weight fails, a rerun reuses the store)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxfi.cli import main
from onnxfi.errors import OnnxfiError
from onnxfi.gate import (
    GATE_SCHEMA,
    BaselineSpec,
    Check,
    GateResult,
    config_from_dict,
    evaluate,
    find_config,
    junit_xml,
    load_config,
    summary_confidence,
)
from onnxfi.stats import wilson_interval


def upper_bound(k: int, n: int, confidence: float) -> float:
    """The one-sided upper Wilson bound at ``confidence``: the two-sided interval's upper end at 2c - 1."""
    return 1.0 if n == 0 else wilson_interval(k, n, summary_confidence(confidence))[1]

REPO = Path(__file__).resolve().parents[1]
DIGITS_DATA = REPO / "model_zoo" / "data" / "digits_eval.npz"


def _rate(k: int, n: int) -> dict[str, Any]:
    """A self-weighting design's estimate: k/n with the two-sided Wilson interval at 2 * 0.95 - 1."""
    lo, hi = wilson_interval(k, n, summary_confidence(0.95))
    return {"k": k, "n": n, "rate": k / n, "lo": lo, "hi": hi}


def _summary(sdc1: int = 30, due: int = 5, critical: int = 10, n: int = 200) -> dict[str, Any]:
    rates = {"sdc1": _rate(sdc1, n), "sdc5": _rate(0, n), "critical": _rate(critical, n), "due": _rate(due, n),
             "crash": _rate(0, n), "masked": _rate(n - sdc1, n)}
    layers = [{"key": "conv1.weight", "n": 20, **{k: _rate(v, 20) for k, v in
                                                     (("sdc1", 12), ("sdc5", 0), ("critical", 2), ("due", 1),
                                                      ("crash", 0), ("masked", 8))}},
              {"key": "fc.bias", "n": 20, **{k: _rate(0, 20) for k in ("sdc1", "sdc5", "critical", "due",
                                                                       "crash", "masked")}}]
    return {"experiments": n, "confidence": summary_confidence(0.95), "rates": rates, "layers": layers,
            "per_inference": {"sdc1": {"rate": 0.02, "lo": 0.01, "hi": 0.035}}}


CLEAN = {"task": "classification", "metric": "accuracy", "value": 0.95, "samples": 100}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------- bounds


def test_upper_bound_known_values() -> None:
    # A one-sided bound at confidence c is the upper end of the two-sided Wilson interval at 2c - 1, so at
    # c = 0.975 it is the upper end of the published two-sided 95% score intervals: Newcombe (1998),
    # Statistics in Medicine 17:857-872, Table I, method 3: 81/263 -> 0.3662, 15/148 -> 0.1605,
    # 0/20 -> 0.1611, 1/29 -> 0.1718; and 5/10 -> [0.2366, 0.7634], 0/10 -> 0.2775 (= z^2 / (n + z^2)).
    for k, n, hi in ((81, 263, 0.3662), (15, 148, 0.1605), (0, 20, 0.1611), (1, 29, 0.1718), (5, 10, 0.7634),
                     (0, 10, 0.2775)):
        assert round(upper_bound(k, n, 0.975), 4) == hi, (k, n)
    # one-sided 95% (z = 1.644854): 0/300 -> z^2 / (300 + z^2) = 2.705543 / 302.705543 = 0.008938
    assert round(upper_bound(0, 300, 0.95), 6) == 0.008938
    assert upper_bound(300, 300, 0.95) == 1.0
    assert upper_bound(0, 0, 0.95) == 1.0
    assert upper_bound(10, 100, 0.99) > upper_bound(10, 100, 0.95) > 0.10


# ---------------------------------------------------------------------------------------------- config


GATE_TOML = """
[gate]
model = "model.onnx"
data = "data/eval.npz"
db = "cache/gate.db"

[gate.plan]
bits = [30, 29, 23]
faults = 80
seed = 4
fault = "flip,stuck-1"

[gate.thresholds]
sdc1 = 0.5
due = 0.1
clean_min = 0.9
confidence = 0.9

[gate.layers]
"conv.*" = { sdc1 = 0.7 }

[gate.baseline]
file = "base.json"
sdc1 = 0.05
clean_drop = 0.01
"""


def test_onnxfi_toml_is_read_with_paths_relative_to_it(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path / "onnxfi.toml", GATE_TOML))
    assert cfg.model == str(tmp_path / "model.onnx")
    assert cfg.data == str(tmp_path / "data" / "eval.npz")
    assert cfg.db == str(tmp_path / "cache" / "gate.db")
    assert cfg.plan.bits == "30,29,23" and cfg.plan.faults == 80 and cfg.plan.seed == 4
    assert cfg.plan.fault == ("flip", "stuck-1")
    assert cfg.limits == {"sdc1": 0.5, "due": 0.1} and cfg.clean_min == 0.9 and cfg.confidence == 0.9
    assert cfg.layers[0].pattern == "conv.*" and dict(cfg.layers[0].limits) == {"sdc1": 0.7}
    assert cfg.baseline == BaselineSpec(tmp_path / "base.json", {"sdc1": 0.05}, 0.01)


def test_pyproject_tool_table_is_found(tmp_path: Path) -> None:
    _write(tmp_path / "pyproject.toml", "[project]\nname = 'x'\n\n[tool.onnxfi.gate]\nmodel = 'digits_cnn'\n"
           "[tool.onnxfi.gate.thresholds]\nsdc1 = 0.4\n")
    path = find_config(None, tmp_path)
    assert path.name == "pyproject.toml"
    cfg = load_config(path)
    assert cfg.model == "digits_cnn"  # a bare name stays a zoo name
    assert cfg.limits == {"sdc1": 0.4}
    _write(tmp_path / "onnxfi.toml", "[gate.thresholds]\ndue = 0.2\n")
    assert find_config(None, tmp_path).name == "onnxfi.toml"  # onnxfi.toml wins


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[gate.thresholds]\nsdc_1 = 0.5\n", "unknown key(s) sdc_1"),
        ("[gate.thresholds]\nsdc1 = 1.5\n", "sdc1 must be in [0.0, 1.0]"),
        ("[gate.thresholds]\nsdc1 = 'low'\n", "sdc1 must be a number"),
        ("[gate.thresholds]\nconfidence = 0.5\n", "confidence must be above 0.5"),
        ("[gate.plan]\nfaults = 10\nmargin = 0.05\n", "faults or margin, not both"),
        ("[gate.plan]\ntarget = 'bias'\n", "target must be weights"),
        ("[gate.layers]\n'conv[' = { sdc1 = 0.5 }\n", "bad regex"),
        ("[gate.baseline]\nsdc1 = 0.05\n", "needs file"),
        ("[gate\n", "not valid TOML"),
        ("[other]\nx = 1\n", "no [gate]"),
    ],
)
def test_bad_configs_say_why(tmp_path: Path, text: str, reason: str) -> None:
    with pytest.raises(OnnxfiError, match=re.escape(reason)):
        load_config(_write(tmp_path / "onnxfi.toml", text))


def test_no_config_anywhere_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path / "pyproject.toml", "[project]\nname = 'x'\n")
    with pytest.raises(OnnxfiError, match="no gate config"):
        find_config(None, tmp_path)


# ---------------------------------------------------------------------------------------------- checks


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_rate_checks_pass_and_fail_as_the_threshold_moves() -> None:
    summary = _summary(sdc1=30, n=200)  # 15%, one-sided 95% bound ~19.6%
    ub = upper_bound(30, 200, 0.95)
    for limit, passed in ((0.10, False), (0.15, False), (ub - 1e-6, False), (ub + 1e-6, True), (0.5, True)):
        cfg = config_from_dict({"thresholds": {"sdc1": limit}})
        (check,) = evaluate(summary, CLEAN, cfg)
        assert check.name == "rate.sdc1" and check.passed is passed
        assert check.measured == pytest.approx(0.15) and check.bound == pytest.approx(ub)
        assert check.k == 30 and check.n == 200 and check.limit == limit
        assert "15.00% (30/200 sampled)" in check.message and f"{100 * ub:.2f}%" in check.message


def test_layer_rules_check_each_matching_layer_and_warn_on_none() -> None:
    cfg = config_from_dict({"layers": {"conv.*": {"sdc1": 0.5, "due": 0.5}, "nothing": {"sdc1": 0.1}}})
    warnings: list[str] = []
    checks = _by_name(evaluate(_summary(), CLEAN, cfg, warnings=warnings))
    assert set(checks) == {"layer.conv1.weight.sdc1", "layer.conv1.weight.due"}
    assert not checks["layer.conv1.weight.sdc1"].passed  # 12/20: bound well above 50%
    assert checks["layer.conv1.weight.due"].passed
    assert warnings == ["layer rule 'nothing' matched no sampled layer"]


def test_clean_metric_floor_and_drop() -> None:
    cfg = config_from_dict({"thresholds": {"clean_min": 0.96, "clean_drop": 0.01}, "clean_reference": 0.97})
    checks = _by_name(evaluate(_summary(), CLEAN, cfg))
    assert not checks["clean.min"].passed and "0.9500 < minimum 0.9600" in checks["clean.min"].message
    assert checks["clean.drop"].measured == pytest.approx(0.02) and not checks["clean.drop"].passed
    cfg = config_from_dict({"thresholds": {"clean_min": 0.9, "clean_drop": 0.03}, "clean_reference": 0.97})
    assert all(c.passed for c in evaluate(_summary(), CLEAN, cfg))
    nan_clean = dict(CLEAN, value=float("nan"))
    (check,) = evaluate(_summary(), nan_clean, config_from_dict({"thresholds": {"clean_min": 0.5}}))
    assert not check.passed and "unknown" in check.message


def test_baseline_regression_is_detected(tmp_path: Path) -> None:
    base_doc = {"schema": GATE_SCHEMA, "summary": _summary(sdc1=20, due=2), "clean": dict(CLEAN, value=0.96),
                "plan": {"target": "weights", "bits": [30], "seed": 0, "requested": 200}}
    cfg = config_from_dict({"baseline": {"file": "b.json", "sdc1": 0.05, "due": 0.05, "clean_drop": 0.005}},
                           tmp_path)
    warnings: list[str] = []
    plan = {"target": "weights", "bits": [29], "seed": 0, "requested": 200}
    checks = _by_name(evaluate(_summary(sdc1=30, due=2), CLEAN, cfg, base_doc, plan, warnings))
    # 30/200 = 15%, bound ~19.6% > 10% + 5%: a regression; DUE unchanged (1%, bound ~2.7% <= 6%).
    assert not checks["baseline.sdc1"].passed and checks["baseline.sdc1"].limit == pytest.approx(0.15)
    assert "baseline 10.00% + 5.00% = 15.00%" in checks["baseline.sdc1"].message
    assert checks["baseline.due"].passed
    assert not checks["baseline.clean"].passed and checks["baseline.clean"].measured == pytest.approx(0.01)
    assert any("baseline plan differs" in w for w in warnings)
    same = _by_name(evaluate(_summary(sdc1=20, due=2), dict(CLEAN, value=0.96), cfg, base_doc))
    assert all(c.passed for c in same.values())  # the baseline against itself, with a delta above its half-width


def test_per_inference_limit_reads_the_per_inference_estimate() -> None:
    cfg = config_from_dict({"thresholds": {"sdc1_per_inference": 0.03}})
    (check,) = evaluate(_summary(), CLEAN, cfg)
    assert check.name == "rate.sdc1_per_inference" and not check.passed  # bound 3.5% > 3%
    assert check.measured == pytest.approx(0.02) and check.bound == pytest.approx(0.035)
    assert "SDC-1 per inference rate 2.00%" in check.message
    (check,) = evaluate(_summary(), CLEAN, config_from_dict({"thresholds": {"sdc1_per_inference": 0.04}}))
    assert check.passed


def test_a_summary_at_another_confidence_is_refused() -> None:
    """The bound is the summary's interval end: a summary computed at another confidence would mislead."""
    summary = dict(_summary(), confidence=0.99)
    with pytest.raises(OnnxfiError, match="two-sided 0.9"):
        evaluate(summary, CLEAN, config_from_dict({"thresholds": {"sdc1": 0.5}}))


def test_a_rate_without_an_estimate_fails() -> None:
    """No complete round stored: the headline is NaN, and a limit on it fails instead of passing vacuously."""
    summary = _summary()
    summary["rates"]["sdc1"] = {"k": 0, "n": 0, "rate": float("nan"), "lo": 0.0, "hi": 1.0}
    (check,) = evaluate(summary, CLEAN, config_from_dict({"thresholds": {"sdc1": 0.9}}))
    assert not check.passed and "no estimate" in check.message


def test_clean_checks_without_labels_are_refused() -> None:
    """Without labels the clean metric is agreement with the model itself (always 1.0): a check that cannot fail."""
    unlabelled = {"task": "classification", "metric": "golden_agreement", "value": 1.0, "data": "x.npz"}
    for th in ({"clean_min": 0.99}, {"clean_drop": 0.01}):
        cfg = config_from_dict({"thresholds": th, "clean_reference": 0.97})
        with pytest.raises(OnnxfiError, match="needs? labelled eval data"):
            evaluate(_summary(), unlabelled, cfg)
    # a rate limit alone is fine without labels (faults are classified against the fault-free run)
    assert evaluate(_summary(), unlabelled, config_from_dict({"thresholds": {"sdc1": 0.5}}))


def test_clean_drop_without_a_reference_is_an_error() -> None:
    cfg = config_from_dict({"thresholds": {"clean_drop": 0.01}})
    with pytest.raises(OnnxfiError, match="needs a reference"):
        evaluate(_summary(), CLEAN, cfg)


# ---------------------------------------------------------------------------------------------- JUnit


def test_junit_parses_and_carries_the_figures() -> None:
    cfg = config_from_dict({"thresholds": {"sdc1": 0.1, "due": 0.5}})
    checks = evaluate(_summary(), CLEAN, cfg)
    odd = Check('layer.<"a&b">\x01.sdc1', "layer", 0.5, 0.7, 0.6, False, "bound 70% > limit 60% <&>\x02")
    res = GateResult("m.onnx", cfg, [*checks, odd], _summary(), CLEAN, plan={"seed": 3}, elapsed_s=1.25)
    root = ET.fromstring(junit_xml(res))
    suite = root.find("testsuite")
    assert suite is not None
    assert suite.get("tests") == "3" and suite.get("failures") == "2" and suite.get("errors") == "0"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {"rate.sdc1", "rate.due", 'layer.<"a&b">?.sdc1'}
    fail = cases["rate.sdc1"].find("failure")
    assert fail is not None
    assert "15.00% (30/200 sampled)" in (fail.get("message") or "") and "> limit 10.00%" in (fail.get("message") or "")
    bound = upper_bound(30, 200, 0.95)
    assert f"bound={bound:.6g}" in (fail.text or "") and "limit=0.1" in (fail.text or "") and "k=30 n=200" in (fail.text or "")
    assert cases["rate.due"].find("failure") is None
    assert "limit 50.00%" in (cases["rate.due"].findtext("system-out") or "")
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["seed"] == "3" and props["clean_value"] == "0.95"


# ---------------------------------------------------------------------------------------------- CLI


def _gate_toml(tmp_path: Path, name: str, thresholds: str, extra: str = "", faults: int = 60) -> Path:
    return _write(tmp_path / name, f"""
[gate]
model = "digits_cnn"
data = "{DIGITS_DATA.as_posix()}"
db = "gate-{{model}}.db"

[gate.plan]
bits = "23-31"
faults = {faults}
seed = 1

[gate.thresholds]
{thresholds}
{extra}
""")


@pytest.fixture(scope="module")
def passing(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("gate")
    cfg = _gate_toml(out, "onnxfi.toml", "sdc1 = 1.0\ndue = 1.0\ncritical = 1.0\ncrash = 0.2\nclean_min = 0.99")
    rc = main(["gate", "--config", str(cfg), "--json", str(out / "g.json"), "--junit", str(out / "g.xml")])
    return {"dir": out, "rc": rc, "doc": json.loads((out / "g.json").read_text()), "cfg": cfg}


def test_gate_passes_on_the_zoo_cnn_and_writes_json_and_junit(passing: dict[str, Any]) -> None:
    assert passing["rc"] == 0
    doc = passing["doc"]
    assert doc["schema"] == GATE_SCHEMA and doc["verdict"] == "pass" and doc["passed"] is True
    assert doc["summary"]["experiments"] == 60 and doc["executed"] == 60 and doc["reused"] == 0
    assert doc["summary"]["rates"]["crash"]["k"] == 0
    assert doc["clean"]["metric"] == "accuracy" and doc["clean"]["value"] == pytest.approx(0.9972, abs=1e-4)
    assert [c["name"] for c in doc["checks"]] == ["rate.sdc1", "rate.critical", "rate.due", "rate.crash", "clean.min"]
    assert (passing["dir"] / "gate-digits_cnn.db").is_file()  # {model} filled in, relative to the config
    suite = ET.parse(passing["dir"] / "g.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "5" and suite.get("failures") == "0"


def test_gate_is_deterministic_and_reuses_the_store(passing: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    out = passing["dir"]
    rc = main(["gate", "--config", str(passing["cfg"]), "--json", str(out / "again.json")])
    again = json.loads((out / "again.json").read_text())
    assert rc == 0 and again["executed"] == 0 and again["reused"] == 60
    assert again["summary"]["rates"] == passing["doc"]["summary"]["rates"]
    assert "0 run, 60 reused" in capsys.readouterr().out


def test_gate_fails_when_a_threshold_is_below_the_measured_rate(passing: dict[str, Any],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = passing["dir"]
    sdc1 = passing["doc"]["summary"]["rates"]["sdc1"]
    assert 0.1 < sdc1["rate"] < 0.9
    # Same plan (same store), a limit between the measured rate and its bound: fails on the bound.
    cfg = _gate_toml(out, "tight.toml", f"sdc1 = {sdc1['rate'] + 0.01:.4f}\nclean_min = 0.99")
    capsys.readouterr()
    rc = main(["gate", "--config", str(cfg), "--junit", str(out / "tight.xml")])
    text = capsys.readouterr().out
    assert rc == 1
    assert "FAIL" in text and "rate.sdc1" in text and "upper bound" in text
    fail = ET.parse(out / "tight.xml").getroot().find("testsuite/testcase[@name='rate.sdc1']/failure")
    assert fail is not None and f"({sdc1['k']}/60 sampled)" in (fail.get("message") or "")


def test_damaged_weight_fails_the_gate_against_its_baseline(passing: dict[str, Any], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    # One exponent-bit flip in the second conv, written as `onnxfi inject` would: accuracy collapses.
    damaged = tmp_path / "damaged.onnx"
    assert main(["inject", "digits_cnn", "--site", "features.3.weight", "--index", "100", "--bit", "30",
                 "-o", str(damaged)]) == 0
    cfg = _gate_toml(tmp_path, "onnxfi.toml", "sdc1 = 1.0",
                     f'[gate.baseline]\nfile = "{(passing["dir"] / "g.json").as_posix()}"\nsdc1 = 0.2\n'
                     "clean_drop = 0.01\n", faults=20)
    capsys.readouterr()
    rc = main(["gate", str(damaged), "--config", str(cfg), "--json", str(tmp_path / "d.json")])
    doc = json.loads((tmp_path / "d.json").read_text())
    checks = {c["name"]: c for c in doc["checks"]}
    assert rc == 1 and doc["verdict"] == "fail"
    assert not checks["baseline.clean"]["passed"] and checks["baseline.clean"]["measured"] > 0.5
    assert "baseline.clean" in capsys.readouterr().out


def test_gate_errors_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _write(tmp_path / "onnxfi.toml", "[gate.thresholds]\nsdc2 = 0.5\n")
    assert main(["gate", "digits_cnn", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key(s) sdc2" in err[0]
    empty = _write(tmp_path / "empty.toml", "[gate]\nmodel = 'digits_cnn'\n")
    assert main(["gate", "--config", str(empty)]) == 2
    assert "no checks configured" in capsys.readouterr().err
    assert main(["gate", str(tmp_path / "missing.onnx"), "--config", str(bad)]) == 2


def test_gate_with_clean_min_and_unlabelled_data_exits_2_before_running(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    data = np.load(DIGITS_DATA, allow_pickle=False)
    inputs = tmp_path / "inputs_only.npz"
    np.savez(inputs, **{k: data[k] for k in data.files if k != "labels"})
    cfg = _write(tmp_path / "onnxfi.toml", f"""
[gate]
model = "digits_cnn"
data = "{inputs.as_posix()}"
db = "gate.db"

[gate.plan]
faults = 10

[gate.thresholds]
clean_min = 0.99
""")
    assert main(["gate", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "clean_min needs labelled eval data" in err[0] and "inputs_only.npz has no labels" in err[0]
    assert not (tmp_path / "gate.db").exists()  # refused before any experiment ran
    # a model outside the zoo with no data: seeded random inputs, refused the same way
    model = tmp_path / "m.onnx"
    model.write_bytes((REPO / "model_zoo" / "digits_cnn.onnx").read_bytes())
    cfg.write_text(cfg.read_text().replace(f'data = "{inputs.as_posix()}"\n', "").replace('"digits_cnn"', '"m.onnx"'))
    assert main(["gate", "--config", str(cfg)]) == 2
    assert "seeded random inputs (no labels)" in capsys.readouterr().err


def test_gate_subprocess_exit_status(passing: dict[str, Any]) -> None:
    """End to end as CI runs it: the stored experiments make this quick."""
    proc = subprocess.run([sys.executable, "-m", "onnxfi", "gate", "--config", str(passing["cfg"])],
                          capture_output=True, text=True, timeout=120, cwd=passing["dir"])
    assert proc.returncode == 0, proc.stderr
    assert "PASS" in proc.stdout and "60 reused" in proc.stdout


def test_rates_in_json_are_plain_numbers(passing: dict[str, Any]) -> None:
    for c in passing["doc"]["checks"]:
        assert isinstance(c["measured"], float) and np.isfinite(c["measured"])
        assert c["bound"] is None or 0.0 <= c["bound"] <= 1.0


def test_evaluating_a_summary_loads_neither_the_engine_nor_onnxruntime(tmp_path: Path) -> None:
    """Reading a config and checking a summary is pure: CI can gate on a stored summary without ONNX Runtime."""
    script = """
import json, sys
from onnxfi.gate import config_from_dict, evaluate
cfg = config_from_dict({"thresholds": {"sdc1": 0.5, "due": 0.2}})
from onnxfi.stats import wilson_interval
rate = lambda k, n: {"k": k, "n": n, "rate": k / n, "lo": 0.0, "hi": wilson_interval(k, n, 0.9)[1]}
summary = {"confidence": 0.9, "rates": {"sdc1": rate(5, 10), "due": rate(0, 10)}, "layers": []}
checks = evaluate(summary, {"metric": "accuracy", "value": 0.9}, cfg)
print(json.dumps([[c.name, c.passed, round(c.bound, 4)] for c in checks]))
print(json.dumps(sorted(m for m in ("onnxruntime", "onnxfi.engine", "onnxfi.campaign") if m in sys.modules)))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    checks, loaded = (json.loads(line) for line in proc.stdout.splitlines())
    # one-sided 95% Wilson upper bounds (z = 1.644854): 5/10 -> 0.5 + z sqrt(0.025 + z^2/400) / (1 + z^2/10)
    # = 0.7307 (> 0.5: fails); 0/10 -> z^2 / (10 + z^2) = 0.2129 (> 0.2: fails)
    assert checks == [["rate.sdc1", False, 0.7307], ["rate.due", False, 0.2129]]
    assert loaded == []
