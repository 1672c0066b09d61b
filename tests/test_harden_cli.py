"""``onnxfi harden`` end to end: digits_cnn with its eval data, JSON report, user errors exit 2 on one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from harden_helpers import DIGITS, DIGITS_DATA, REPO, parse, to_proto

from onnxfi.cli import main


def _accuracy(path: Path) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with np.load(DIGITS_DATA) as d:
        x, labels = d["input"], d["labels"]
    logits = sess.run(None, {"input": x})[0]
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def test_end_to_end_subprocess(tmp_path: Path) -> None:
    out = tmp_path / "hardened.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "onnxfi", "harden", str(DIGITS), "--method", "relumax,protect",
         "--calib", str(DIGITS_DATA), "-o", str(out), "--repeat", "5"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "accuracy: 0.9972 -> 0.9972 (+0.0000) on 360 samples" in proc.stdout
    assert "relumax: 3 changed, 0 skipped" in proc.stdout
    assert "latency:" in proc.stdout and "median" in proc.stdout
    onnx.checker.check_model(onnx.load(str(out)))
    assert _accuracy(out) == pytest.approx(_accuracy(DIGITS))
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("HardSigmoid") == 3 and ops.count("Mul") == 3 and "Relu" not in ops  # relumax mask form


def test_json_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "h.onnx"
    rc = main(["harden", str(DIGITS), "--method", "ranger,nan-guard", "--calib", str(DIGITS_DATA),
               "--percentile", "99.9", "-o", str(out), "--json", "--repeat", "3"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["methods"] == ["ranger", "nan-guard"]
    assert [p["method"] for p in report["passes"]] == ["ranger", "nan-guard"]
    ranger = report["passes"][0]
    assert len(ranger["changed"]) == 3 and ranger["skipped"] == []
    assert ranger["details"]["percentile"] == 99.9
    cmp = report["comparison"]
    assert cmp["metric"] == "accuracy" and cmp["samples"] == 360
    assert cmp["change"] == pytest.approx(cmp["after"] - cmp["before"])
    assert cmp["latency_ms"]["before"] > 0 and cmp["latency_ms"]["repeat"] == 3
    assert report["calibration"] == {"data": str(DIGITS_DATA), "samples": 360}
    assert out.is_file()


def test_clipact_search_and_protect_level(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c.onnx"
    rc = main(["harden", str(DIGITS), "--method", "clipact,protect", "--search", "--level", "0",
               "--calib", str(DIGITS_DATA), "-o", str(out), "--json", "--repeat", "2"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    clipact, protect = report["passes"]
    search = clipact["details"]["search"]
    assert search["auc_final"] >= search["auc_initial"]
    assert len(search["history"]) == 3 * 3  # 3 layers x 3 rounds
    assert protect["details"]["level"] == 0
    assert protect["details"]["worst_relative_change"] <= protect["details"]["bound"] <= 0.001
    assert abs(report["comparison"]["change"]) <= 1 / 360


def test_random_calibration_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(to_proto(parse("g (float[N,4] x) => (float[N,4] y) { y = Relu(x) }")), str(model))
    rc = main(["harden", str(model), "--method", "ranger", "-o", str(tmp_path / "o.onnx"), "--repeat", "2"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "bounds from random data are weak" in captured.err
    assert "top-1 agreement with the original: 1.0000 -> 1.0000" in captured.out


def test_protect_needs_no_calibration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["harden", str(DIGITS), "--method", "protect", "--eval", str(DIGITS_DATA),
               "-o", str(tmp_path / "p.onnx"), "--repeat", "2"])
    assert rc == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "protect (data: 360 samples" in captured.out
    assert "level 1: 155 weights rewritten" in captured.out
    assert "accuracy: 0.9972 -> 0.9972" in captured.out


@pytest.mark.parametrize("argv,message", [
    (["--method", "foo"], "onnxfi: error: unknown hardening method 'foo'; choose from ranger, clipact, relumax, "
                          "protect, nan-guard, weight-clip"),
    (["--method", "ranger", "--search"], "onnxfi: error: --search applies to clipact; add it to --method"),
    (["--method", "protect", "--percentile", "99"], "onnxfi: error: --percentile applies to ranger; add it to --method"),
    (["--method", "ranger", "--level", "0"], "onnxfi: error: --level applies to protect; add it to --method"),
    (["--method", "ranger", "--guard-points", "y"],
     "onnxfi: error: --guard-points applies to nan-guard; add it to --method"),
    (["--method", "ranger", "--percentile", "0"], "onnxfi: error: --percentile must be in (0, 100], got 0.0"),
    (["--method", "protect", "--calib", "missing.npz"], "onnxfi: error: data file not found: missing.npz"),
])
def test_user_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    rc = main(["harden", str(DIGITS), *argv, "-o", str(tmp_path / "x.onnx")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.strip() == message
    assert not (tmp_path / "x.onnx").exists()


def test_bad_method_subprocess_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "onnxfi", "harden", str(DIGITS), "--method", "bogus", "-o", str(tmp_path / "x.onnx")],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "onnxfi: error: unknown hardening method 'bogus'; choose from ranger, clipact, relumax, protect, nan-guard, "
        "weight-clip"
    ]
    assert "Traceback" not in proc.stderr


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["harden", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "--method relumax,protect" in text and "nan-guard" in text
