"""A new user's first hour (issue 15 items 8-9): files that are not ONNX models, a plan replayed on another
model, one-hot and out-of-range labels, Ctrl-C during a campaign, "did you mean" for site and zoo-name
typos, and tables in an 80-column terminal (names shortened from the middle, distinct and numbers whole)."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from conftest import REPO, make_model, save, tensor, vi
from onnx import TensorProto

from onnxfi import metrics
from onnxfi.cli import main
from onnxfi.commands._text import short_name, short_names
from onnxfi.errors import ModelLoadError, OnnxfiError
from onnxfi.model import load_model
from onnxfi.plan import make_plan
from onnxfi.scoring import choose_output
from onnxfi.sites import enumerate_sites

ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
LAYERS = ("features.4", "features.8")
BN = ("weight", "bias", "running_mean", "running_var")
C = 3  # classes of the tiny classifier


def _classifier(scale: float = 1.0) -> onnx.ModelProto:
    """x[N,4] -> two BatchNormalization layers (torch-style names that differ only in the middle and at the
    end) -> MatMul/Add -> logits[N,3]."""
    rng = np.random.default_rng(15)
    inits, nodes, prev = [], [], "x"
    for layer in LAYERS:
        vals = {"weight": rng.uniform(0.5, 1.5, 4), "bias": rng.normal(size=4), "running_mean": rng.normal(size=4),
                "running_var": rng.uniform(0.5, 1.5, 4)}
        inits += [tensor(f"{layer}.{k}", (scale * vals[k]).astype(np.float32)) for k in BN]
        nodes.append(oh.make_node("BatchNormalization", [prev, *(f"{layer}.{k}" for k in BN)], [f"{layer}.out"],
                                  name=f"{layer}.bn"))
        prev = f"{layer}.out"
    inits += [tensor("classifier.2.weight", rng.normal(size=(4, C)).astype(np.float32)),
              tensor("classifier.2.bias", rng.normal(size=C).astype(np.float32))]
    nodes += [oh.make_node("MatMul", [prev, "classifier.2.weight"], ["mm"], name="fc.mm"),
              oh.make_node("Add", ["mm", "classifier.2.bias"], ["logits"], name="fc.add")]
    return make_model(nodes, [vi("x", TensorProto.FLOAT, ["N", 4])], [vi("logits", TensorProto.FLOAT, ["N", C])],
                      inits)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return save(_classifier(), tmp_path / "clf.onnx")


def _data(tmp_path: Path, labels: np.ndarray | None = None, n: int = 12) -> Path:
    x = np.random.default_rng(1).normal(size=(n, 4)).astype(np.float32)
    arrays = {"x": x} if labels is None else {"x": x, "labels": labels}
    path = tmp_path / f"data{len(list(tmp_path.glob('data*.npz')))}.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("onnxfi: error: "), err
    return lines[0]


# ---------------------------------------------------------------------------------- not an ONNX model


def _bad_files(tmp_path: Path, model: Path) -> dict[str, Path]:
    files = {
        "json": tmp_path / "plan.json", "text": tmp_path / "notes.txt", "empty": tmp_path / "empty.onnx",
        "truncated": tmp_path / "cut.onnx", "garbage": tmp_path / "garbage.onnx",
    }
    files["json"].write_text('{"model": "clf.onnx", "experiments": []}')
    files["text"].write_text("hello, this is not a model\n")
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    files["garbage"].write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)))
    return files


def test_load_model_says_a_file_is_not_an_onnx_model(tmp_path: Path, model: Path) -> None:
    for kind, path in _bad_files(tmp_path, model).items():
        with pytest.raises(ModelLoadError) as ei:
            load_model(path)
        text = str(ei.value)
        assert text.startswith(f"{path} is not an ONNX model (") and "\n" not in text, (kind, text)
    with pytest.raises(ModelLoadError, match=r"empty\.onnx is not an ONNX model \(empty file\)"):
        load_model(tmp_path / "empty.onnx")
    with pytest.raises(ModelLoadError, match="looks like JSON"):
        load_model(tmp_path / "plan.json")


@pytest.mark.parametrize("command", ["inspect", "run", "analyze"])
def test_cli_refuses_files_that_are_not_models_in_one_line(
    tmp_path: Path, model: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for path in _bad_files(tmp_path, model).values():
        extra = ["--db", str(tmp_path / "x.db")] if command == "analyze" else []
        assert main([command, str(path), *extra]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert f"{path} is not an ONNX model (" in line
        assert not (tmp_path / "x.db").exists()


def test_subprocess_json_model_is_exit_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "model.json"
    bad.write_text('{"a": 1}')
    proc = subprocess.run([sys.executable, "-m", "onnxfi", "inspect", str(bad)], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "is not an ONNX model (looks like JSON" in _one_error_line(proc.stderr)


# ---------------------------------------------------------------------------------- inject --from-plan


def test_inject_from_plan_refuses_another_model(tmp_path: Path, model: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    loaded = load_model(model)
    plan = make_plan(model, enumerate_sites(loaded.model).select("weights"), n_faults=5, seed=3)
    plan_path = tmp_path / "run.plan.json"
    plan.save(plan_path)
    other = save(_classifier(scale=2.0), tmp_path / "other.onnx")  # same sites, other weights
    args = ["--from-plan", str(plan_path), "--experiment", "2", "-o", str(tmp_path / "f.onnx")]
    assert main(["inject", str(other), *args]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(other) in line and str(model) in line and "--other-model" in line
    assert not (tmp_path / "f.onnx").exists()
    assert main(["inject", str(model), *args]) == 0  # the plan's own model
    capsys.readouterr()
    assert main(["inject", str(other), *args, "--other-model"]) == 0  # said explicitly
    assert f"site {plan.experiment(2).site} " in " ".join(capsys.readouterr().out.split())


# ---------------------------------------------------------------------------------- labels


def test_class_ids_read_one_hot_and_probability_rows() -> None:
    ids = np.array([2, 0, 1, 2])
    one_hot = np.eye(C, dtype=np.float32)[ids]
    probs = np.full((4, C), 0.1) + 0.7 * np.eye(C)[ids]
    assert metrics.label_rows(one_hot) == "one-hot" and metrics.label_rows(probs) == "probabilities"
    assert metrics.label_rows(np.array([[1.0, 1.0, 0.0]])) is None  # two classes at once: not one class
    for labels in (ids, ids.reshape(4, 1), one_hot, one_hot.astype(np.int64), probs):
        np.testing.assert_array_equal(metrics.class_ids(labels, C), ids)
    scores = np.eye(C)[[2, 0, 0, 2]]
    assert metrics.accuracy(scores, one_hot) == metrics.accuracy(scores, ids) == 0.75
    with pytest.raises(OnnxfiError, match=r"class ids must lie in \[0, 3\).*got range \[1, 3\]"):
        metrics.class_ids(ids + 1, C)
    with pytest.raises(OnnxfiError, match="one-hot rows over 3 classes, but the scores have 5"):
        metrics.class_ids(one_hot, 5)
    with pytest.raises(OnnxfiError, match="neither class ids"):
        metrics.class_ids(np.array([[1.0, 1.0, 0.0]]), C)


def test_choose_output_reads_one_hot_labels_and_refuses_ids_out_of_range() -> None:
    logits = np.random.default_rng(2).normal(size=(6, C)).astype(np.float32)
    ids = np.argmax(logits, axis=1)
    choice = choose_output({"logits": logits}, np.eye(C, dtype=np.float32)[ids])
    assert choice.metric == "accuracy" and choice.scores["logits"] == 1.0
    assert "labels [6, 3] are one-hot rows, read as class ids" in choice.reason
    for bad, span in ((np.array([1, 2, 3, 0, 1, 2]), "[0, 3]"), (np.array([0, 1, 2, -1, 0, 1]), "[-1, 2]")):
        with pytest.raises(OnnxfiError) as ei:
            choose_output({"logits": logits}, bad)
        assert f"class ids lie in {span}, but the output has 3 classes, so ids must lie in [0, 3)" in str(ei.value)
    with pytest.raises(OnnxfiError, match="one-hot rows over 4 classes, but the output has 3"):
        choose_output({"logits": logits}, np.eye(4, dtype=np.float32)[ids])
    with pytest.raises(OnnxfiError, match="neither one-hot nor probabilities"):
        choose_output({"logits": logits}, np.ones((6, C)))
    raw = choose_output({"logits": logits}, np.ones((6, C)), task="regression")  # targets: not scored
    assert raw.layout == "raw" and raw.metric is None


def test_run_scores_one_hot_labels_and_refuses_out_of_range_ones(
    tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.load(_data(tmp_path))["x"]
    sess_ids = np.argmax(_logits(model, x), axis=1)
    one_hot = _data(tmp_path, np.eye(C, dtype=np.float32)[sess_ids])
    assert main(["run", str(model), "--data", str(one_hot)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the terminal width may wrap lines
    assert "accuracy 1.0000 (12 labelled samples)" in out and "one-hot rows, read as class ids" in out
    bad = _data(tmp_path, np.arange(12) % (C + 2))
    assert main(["run", str(model), "--data", str(bad)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "class ids lie in [0, 4], but the output has 3 classes, so ids must lie in [0, 3)" in line


def test_analyze_with_out_of_range_labels_stops_in_one_line(
    tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _data(tmp_path, np.full(12, 7))
    assert main(["analyze", str(model), "--data", str(bad), "--faults", "5", "--db", str(tmp_path / "a.db")]) == 2
    assert "so ids must lie in [0, 3)" in _one_error_line(capsys.readouterr().err)


def _logits(model: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(["logits"], {"x": x})[0])


# ---------------------------------------------------------------------------------- did you mean


def test_unknown_site_suggests_the_closest_names(tmp_path: Path, model: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "f.onnx")
    assert main(["inject", str(model), "--site", "features.4.runing_mean", "--index", "0", "--bit", "3",
                 "-o", out]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "unknown site 'features.4.runing_mean'; did you mean features.4.running_mean" in line
    assert main(["analyze", str(model), "--sites", r"clasifier\.2\.weight", "--faults", "5",
                 "--db", str(tmp_path / "a.db")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert r"--sites 'clasifier\.2\.weight' matches no site name; did you mean classifier.2.weight" in line
    assert main(["inspect", str(model), "--sites", "features.9"]) == 0
    assert "matches no site name" in " ".join(capsys.readouterr().out.split())


def test_unknown_zoo_name_suggests_the_closest(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "digit_cnn"]) == 2
    assert "did you mean zoo model digits_cnn" in _one_error_line(capsys.readouterr().err)
    assert main(["zoo", "path", "digits_cnnn"]) == 2
    assert "unknown zoo model 'digits_cnnn'; did you mean digits_cnn" in _one_error_line(capsys.readouterr().err)


# ---------------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_stops_a_campaign_quietly_with_exit_130(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "onnxfi", "analyze", "digits_cnn", "--faults", "5000", "--workers", "2",
         "--db", str(db)], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)  # its own process group: the terminal's Ctrl-C reaches every worker too
    try:
        stored, deadline = 0, time.monotonic() + 120
        while stored < 5 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            if db.exists():
                try:
                    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                        stored = con.execute("select count(*) from results").fetchone()[0]
                except sqlite3.Error:
                    pass  # the schema is being created
        assert stored >= 5 and proc.poll() is None, "the campaign did not store rows while running"
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "interrupted:" in out and "--resume" in out


# ---------------------------------------------------------------------------------- narrow terminals


def test_short_name_cuts_the_middle() -> None:
    assert short_name("features.4.running_mean", 30) == "features.4.running_mean"
    assert short_name("features.4.running_mean", 12) == "featur…_mean"
    assert len(short_name("a" * 50, 9)) == 9


def test_short_names_keep_distinct_names_distinct() -> None:
    names = [f"{layer}.{k}" for layer in ("features.1", "features.4", "features.8") for k in BN]
    names += ["classifier.2.weight", "features.4.running_mean"]  # a repeated name stays repeated
    for width in range(2, 26):
        short = short_names(names, width)
        assert len({s for s in short}) == len(set(names)), (width, short)
        assert short[-1] == short[names.index("features.4.running_mean")]
        assert all(len(s) <= max(width, len(s)) for s in short)
        assert all(s == n or "…" in s for s, n in zip(short, names))
    assert "features.4…ng_mean" in short_names(names, 18)
    assert short_names(["a", "b"], 1) == ["a", "b"]


def _table_rows(text: str, title: str, key: int) -> list[list[str]]:
    """The rows of the rich table titled ``title`` in ``text``, each cell with its wrapped lines joined (a
    line whose cell ``key``, a column that never wraps, is empty continues the row above)."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(title))
    rule = next(i for i in range(start, len(lines)) if "━" in lines[i])
    rows: list[list[str]] = []
    for ln in lines[rule + 1:]:
        if "│" not in ln:
            break
        cells = [c.strip() for c in ln.split("│")]
        if rows and not cells[key]:
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells)]
        else:
            rows.append(cells)
    return rows


def _cli80(*argv: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "onnxfi", *argv], cwd=cwd, env=dict(ENV, COLUMNS="80"),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    table_lines = [ln for ln in proc.stdout.splitlines() if set(ln) & set("│┃━")]
    assert table_lines and max(len(ln) for ln in table_lines) <= 80
    return proc.stdout


RATE = re.compile(r"^\d+\.\d\d% \[\d+\.\d\d, \d+\.\d\d\]$")


def test_tables_in_80_columns_keep_names_distinct_and_numbers_whole(tmp_path: Path, model: Path) -> None:
    db = tmp_path / "run.db"
    for argv in (["analyze", str(model), "--faults", "150", "--samples", "8", "--db", str(db)], ["results", str(db)]):
        out = _cli80(*argv, cwd=tmp_path)
        layers = _table_rows(out, "Layers by SDC-1 rate", key=0)
        assert len(layers) == 10
        sites = [r[1] for r in layers]
        assert len(set(sites)) == len(sites), sites
        assert all(RATE.match(r[3]) and RATE.match(r[4]) for r in layers), layers
        grid = out[out.index("Layer x bit"):].splitlines()[2:12]
        grid_sites = [ln.split()[0] for ln in grid]
        assert len(set(grid_sites)) == len(grid_sites) == 10, grid
    out = _cli80("inspect", str(model), cwd=tmp_path)
    rows = _table_rows(out, "Weight sites", key=4)
    sites = [r[0] for r in rows]
    assert len(sites) == 10 and len(set(sites)) == 10, sites
    assert sorted(r[4] for r in rows) == ["12", "3"] + ["4"] * 8  # elements, whole
