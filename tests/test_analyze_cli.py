"""CLI acceptance for ``onnxfi analyze`` and ``onnxfi results`` (through ``onnxfi.cli.main``): the JSON
report, the database, the plan file, exports, refusals with exit 2 and one line, and early stop."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest
from campaign_helpers import IR_VERSION, OPSET, kat_expected, save_kat
from onnx import TensorProto

from onnxfi.cli import main
from onnxfi.outcomes import FLAGS, OUTCOMES, ROW_FIELDS
from onnxfi.plan import Plan, complete_rounds
from onnxfi.stats import leveugle_sample_size
from onnxfi.store import Store
from onnxfi.summary import aggregate

RATE_FIELDS = {"k", "n", "rate", "lo", "hi", "method"}


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("onnxfi: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def kat(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_kat(tmp_path_factory.mktemp("kat"))


@pytest.fixture(scope="module")
def campaign(kat: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One `onnxfi analyze` run: 60 flips over W, b, h and y of the known-answer model."""
    model, data = kat
    out = tmp_path_factory.mktemp("cli")
    db, report = out / "run.db", out / "report.json"
    argv = ["analyze", str(model), "--data", str(data), "--target", "all", "--faults", "60", "--seed", "5",
            "--db", str(db), "--json", str(report)]
    rc = main(argv)
    return {"rc": rc, "db": db, "json": report, "argv": argv, "model": model, "data": data}


def test_analyze_writes_the_documented_json(campaign: dict[str, Any]) -> None:
    assert campaign["rc"] == 0
    doc = json.loads(campaign["json"].read_text())
    assert doc["schema"] == "onnxfi.analyze/1"
    assert {"schema", "model", "db", "plan", "clean", "summary", "interrupted", "early_stopped"} <= set(doc)
    assert doc["db"] == str(campaign["db"])
    assert doc["interrupted"] is False and doc["early_stopped"] is False
    plan = doc["plan"]
    assert "experiments" not in plan
    assert plan["mode"] == "fixed" and plan["requested"] == 60 and plan["seed"] == 5
    assert plan["population"] == 36 * 32 and plan["target"] == "all"
    assert sum(s["n"] for s in plan["strata"]) == 60
    clean = doc["clean"]
    assert clean["task"] == "classification" and clean["metric"] == "accuracy"
    assert clean["value"] == 0.5 and clean["samples"] == 2 and clean["primary_output"] == "y"
    s = doc["summary"]
    assert s["experiments"] == s["planned"] == 60
    assert set(s["rates"]) == set(FLAGS)
    for key in FLAGS:
        assert set(s["rates"][key]) == RATE_FIELDS
        assert 0.0 <= s["rates"][key]["lo"] <= s["rates"][key]["rate"] <= s["rates"][key]["hi"] <= 1.0
    assert set(s["outcomes"]) == set(OUTCOMES) and sum(s["outcomes"].values()) == 60
    assert {e["key"] for e in s["layers"]} == {"W", "b", "h", "y"}
    assert sum(e["n"] for e in s["layers"]) == 60
    for e in s["layers"] + s["bits"]:
        assert {"key", "n", "images_changed_mean", *FLAGS} <= set(e)
    assert sum(e["n"] for e in s["bits"]) == 60
    assert [e["key"] for e in s["bits"]] == sorted((e["key"] for e in s["bits"]), reverse=True)
    for e in s["layer_bit"]:
        assert {"site", "bit", *RATE_FIELDS} <= set(e)
    assert sum(e["n"] for e in s["layer_bit"]) == 60


def test_analyze_stores_every_row_and_the_plan(campaign: dict[str, Any]) -> None:
    db: Path = campaign["db"]
    plan_file = Path(f"{db}.plan.json")
    assert plan_file.is_file()
    plan = Plan.load(plan_file)
    assert len(plan.experiments) == 60
    with Store(db) as store:
        assert Plan.from_dict(store.meta("plan")) == plan
        assert store.meta("versions")["onnxfi"]
        assert store.meta("config")["data_path"] == str(campaign["data"])
        rows = list(store.rows())
    assert [r["id"] for r in rows] == list(range(60))
    for r in rows:
        exp = plan.experiment(r["id"])
        assert (r["site"], r["idx"], r["bit"]) == (exp.site, exp.index, exp.bit)
        assert r["outcome"] == kat_expected(exp.site, exp.index, exp.fault)
    doc = json.loads(campaign["json"].read_text())
    assert doc["plan"] == {k: v for k, v in plan.to_dict().items() if k != "experiments"}
    assert doc["summary"] == json.loads(json.dumps(aggregate(plan, rows), default=str))


def test_analyze_refuses_an_existing_db_without_resume(campaign: dict[str, Any],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(campaign["argv"]) == 2
    line = _error_line(capsys)
    assert "exists" in line and "--resume" in line
    with Store(campaign["db"]) as store:
        assert store.count() == 60


def test_resume_of_a_finished_campaign_changes_nothing(campaign: dict[str, Any],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with Store(campaign["db"]) as store:
        before = list(store.rows())
    assert main(["analyze", str(campaign["model"]), "--db", str(campaign["db"]), "--resume"]) == 0
    capsys.readouterr()
    with Store(campaign["db"]) as store:
        assert list(store.rows()) == before


def test_results_csv_exports_every_row(campaign: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["results", str(campaign["db"]), "--csv"]) == 0
    table = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert tuple(table[0]) == ROW_FIELDS
    body = [dict(zip(ROW_FIELDS, line)) for line in table[1:]]
    with Store(campaign["db"]) as store:
        rows = list(store.rows())
    assert len(body) == len(rows) == 60
    for got, want in zip(body, rows):
        assert int(got["id"]) == want["id"]
        assert got["site"] == want["site"] and got["outcome"] == want["outcome"]
        assert got["fault"] == want["fault"] and int(got["bit"]) == want["bit"]
        assert json.loads(got["metrics"]) == want["metrics"]
        assert got["path"] == (want["path"] or "")  # how the engine ran it; empty when not recorded


def test_results_json_exports_rows_and_summary(campaign: dict[str, Any],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["results", str(campaign["db"]), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "onnxfi.results/1"
    with Store(campaign["db"]) as store:
        rows = list(store.rows())
    assert doc["rows"] == json.loads(json.dumps(rows))
    assert all(set(r) == set(ROW_FIELDS) for r in doc["rows"])  # the execution path included
    assert doc["summary"]["experiments"] == 60 == sum(doc["summary"]["paths"].values())
    assert doc["clean"]["metric"] == "accuracy"
    assert "experiments" not in doc["plan"]
    # and the plain summary prints
    assert main(["results", str(campaign["db"])]) == 0
    assert "60 of 60 experiments" in capsys.readouterr().out


def test_results_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["results", str(tmp_path / "missing.db"), "--csv"]) == 2
    assert "not found" in _error_line(capsys)
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()
    assert main(["results", str(other), "--json"]) == 2
    assert "no campaign" in _error_line(capsys)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--faults", "10", "--bits", "x"], "--bits"),
        (["--faults", "10", "--bits", "5-"], "--bits"),
        (["--faults", "0"], "--faults"),
        (["--faults", "-3"], "--faults"),
        (["--faults", "10", "--sites", "no_such_site"], "no fault sites match"),
        (["--faults", "10", "--sites", "("], "pattern"),
        (["--faults", "10", "--fault", "bogus"], "unknown fault"),
        (["--faults", "10", "--workers", "0"], "--workers"),
        (["--faults", "10", "--bits", "40-50"], "no fault fits"),
    ],
)
def test_analyze_bad_inputs_exit_2_with_one_line_and_leave_no_db(
    kat: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], needle: str
) -> None:
    model, data = kat
    db = tmp_path / "bad.db"
    assert main(["analyze", str(model), "--data", str(data), "--db", str(db), *extra]) == 2
    assert needle in _error_line(capsys)
    # nothing is left behind that would block the corrected command
    assert not db.exists() and not Path(f"{db}.plan.json").exists()


def test_analyze_resume_errors(kat: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, data = kat
    assert main(["analyze", str(model), "--db", str(tmp_path / "none.db"), "--resume"]) == 2
    assert "does not exist" in _error_line(capsys)
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    assert main(["analyze", str(model), "--db", str(empty), "--resume"]) == 2
    assert "nothing to resume" in _error_line(capsys)


def test_faults_and_margin_are_exclusive(kat: tuple[Path, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["analyze", str(kat[0]), "--faults", "3", "--margin", "0.1", "--db", str(tmp_path / "x.db")])
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_analyze_records_a_crash_and_a_hang_and_completes(kat: tuple[Path, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """--metric runs in the workers: it kills its worker on W[0,0] bit 31 and hangs on W[1,1] bit 31."""
    model, data = kat
    db, report = tmp_path / "c.db", tmp_path / "c.json"
    rc = main(["analyze", str(model), "--data", str(data), "--sites", "^W$", "--bits", "30,31", "--faults", "100",
               "--metric", "campaign_helpers:kill_or_hang", "--timeout-min", "2", "--db", str(db),
               "--json", str(report)])
    capsys.readouterr()
    assert rc == 0
    with Store(db) as store:
        rows = list(store.rows())
    assert len(rows) == 36  # exhaustive: 18 elements x 2 bits, all completed
    crashed = {(r["site"], r["idx"], r["bit"]): r["error"] for r in rows if r["outcome"] == "crash"}
    assert set(crashed) == {("W", 0, 31), ("W", 7, 31)}
    assert "worker died" in crashed[("W", 0, 31)]
    assert "timeout" in crashed[("W", 7, 31)]
    for r in rows:
        if (r["site"], r["idx"], r["bit"]) not in crashed:
            assert r["outcome"] == kat_expected("W", r["idx"], {"kind": "flip", "bits": [r["bit"]]})
    doc = json.loads(report.read_text())
    assert doc["summary"]["outcomes"]["crash"] == 2
    assert doc["summary"]["rates"]["crash"]["k"] == 2


# ------------------------------------------------------------------------------------ early stop


def _masked_model(path: Path) -> Path:
    """y = x @ W with x = e_0: only row 0 of W matters, and no mantissa flip there changes the class."""
    w = np.full((64, 4), 0.75, np.float32)
    w[0] = [1.0, 0.25, 0.25, 0.25]
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "masked",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[onh.from_array(w, "W")],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.save_model(model, str(path))
    return path


def test_margin_and_early_stop_stop_at_the_end_of_a_round(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    model = _masked_model(tmp_path / "masked.onnx")
    data = tmp_path / "x.npz"
    x = np.zeros((4, 64), np.float32)
    x[:, 0] = 1.0
    np.savez(data, x=x)
    db, report = tmp_path / "es.db", tmp_path / "es.json"
    rc = main(["analyze", str(model), "--data", str(data), "--sites", "^W$", "--bits", "0-22", "--margin", "0.05",
               "--confidence", "0.99", "--early-stop", "--db", str(db), "--json", str(report)])
    capsys.readouterr()
    assert rc == 0
    doc = json.loads(report.read_text())
    population = 64 * 4 * 23
    assert doc["plan"]["population"] == population
    assert doc["plan"]["mode"] == "statistical" and doc["plan"]["margin"] == 0.05
    assert doc["plan"]["requested"] == leveugle_sample_size(population, 0.05, 0.99) == 597
    plan = Plan.load(f"{db}.plan.json")
    assert len(plan.experiments) == 597
    assert doc["early_stopped"] is True
    with Store(db) as store:
        ids = sorted(store.done_ids())
    # it stopped at the end of a round: the rates use whole rounds 0..r, fewer than planned; with several
    # workers, rows of round r + 1 that another worker had finished are stored too, and left out
    progress = doc["summary"]["progress"]
    whole = complete_rounds(plan, ids)
    assert whole == list(range(whole[-1] + 1)) == list(range(progress["rounds_complete"]))
    used = [e.id for e in plan.experiments if e.round in whole]
    assert set(used) <= set(ids) and len(used) < 597
    assert doc["summary"]["experiments"] == len(ids) and progress["used"] == len(used)
    assert {plan.experiments[i].round for i in set(ids) - set(used)} <= {whole[-1] + 1}
    assert progress["partial_rows"] == len(ids) - len(used)
    assert doc["summary"]["rates"]["sdc1"]["k"] == 0
    assert doc["summary"]["rates"]["sdc1"]["hi"] - doc["summary"]["rates"]["sdc1"]["lo"] <= 2 * 0.05


def test_terminal_output_has_layer_and_bit_and_layer_x_bit_tables(
        kat: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, data = kat
    rc = main(["analyze", str(model), "--data", str(data), "--faults", "40", "--bits", "30,23,0",
               "--db", str(tmp_path / "t.db")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Layers by SDC-1 rate" in out and "Bits (bit 0 = LSB" in out and "Layer x bit" in out
    grid = out[out.index("Layer x bit"):].splitlines()
    header = next(line for line in grid if "site" in line)
    assert header.split()[header.split().index("site") + 1:] == ["30", "23", "0"]
    # the rows of the grid are the sites of the campaign
    assert any(line.lstrip().startswith("W ") for line in grid) and any(line.lstrip().startswith("b ") for line in grid)


def test_layer_x_bit_table_keeps_the_most_damaging_bits_that_fit(
        kat: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxfi.commands import _common

    model, data = kat
    monkeypatch.setattr(_common.stdout, "width", 8 + 1 + 4 * 4 + 3)  # room for the site column and 4 bits
    rc = main(["analyze", str(model), "--data", str(data), "--faults", "48", "--bits", "0-5", "--seed", "2",
               "--db", str(tmp_path / "t.db")])
    assert rc == 0
    out = capsys.readouterr().out
    grid = out[out.index("Layer x bit"):]
    assert "the 4 most damaging of 6 bits" in " ".join(grid[:grid.index("site")].split())
    header = next(line for line in grid.splitlines() if line.lstrip().startswith("site"))
    shown = [int(b) for b in header.split()[1:]]
    assert len(shown) == 4 and shown == sorted(shown, reverse=True) and set(shown) <= set(range(6))


def test_layers_filter_selects_sites_by_node_name(kat: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = kat
    db = tmp_path / "l.db"
    assert main(["analyze", str(model), "--data", str(data), "--faults", "12", "--layers", "^add$",
                 "--db", str(db)]) == 0
    with Store(db) as store:
        assert {r["site"] for r in store.rows()} == {"b"}  # the Add's weight only, not the MatMul's W


def test_layers_filter_matching_nothing_is_an_error(kat: tuple[Path, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    model, data = kat
    assert main(["analyze", str(model), "--data", str(data), "--layers", "nope", "--db", str(tmp_path / "n.db")]) == 2
    assert "no fault sites match" in _error_line(capsys)
    assert not (tmp_path / "n.db").exists()


def test_compare_runs_the_same_plan_on_the_other_model(kat: tuple[Path, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The other model's W row 0 is scaled by 0.5, b is the same: faults on b must give identical rows
    on both (same experiments), and the JSON carries both summaries."""
    from campaign_helpers import KAT_W, kat_model

    model, data = kat
    w2 = KAT_W.copy()
    w2[0] *= 0.5
    other = tmp_path / "other.onnx"
    onnx.save(kat_model(w2), other)
    db, report = tmp_path / "c.db", tmp_path / "c.json"
    rc = main(["analyze", str(model), "--data", str(data), "--faults", "24", "--seed", "2", "--db", str(db),
               "--compare", str(other), "--json", str(report)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "same plan" in out and "SDC-1" in out
    doc = json.loads(report.read_text())
    assert doc["compare"]["model"] == str(other)
    with Store(db) as a, Store(Path(str(db) + ".compare.db")) as b:
        assert a.meta("compare")["db"] == str(db) + ".compare.db"
        ra, rb = list(a.rows()), list(b.rows())
        pa, pb = a.meta("plan"), b.meta("plan")
    assert [e for e in pa["experiments"]] == [e for e in pb["experiments"]]
    assert pb["model_sha256"] != pa["model_sha256"]
    assert [(r["id"], r["site"], r["idx"], r["bit"]) for r in ra] == [(r["id"], r["site"], r["idx"], r["bit"]) for r in rb]
    assert doc["compare"]["summary"]["experiments"] == len(rb) == 24


def test_compare_refuses_a_model_without_the_sites(kat: tuple[Path, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    model, data = kat
    m = onnx.load(model)
    for t in m.graph.initializer:
        if t.name == "W":
            t.name = "W_renamed"
    for n in m.graph.node:
        n.input[:] = ["W_renamed" if i == "W" else i for i in n.input]
    other = tmp_path / "renamed.onnx"
    onnx.save(m, other)
    rc = main(["analyze", str(model), "--data", str(data), "--faults", "12", "--sites", "^W$",
               "--db", str(tmp_path / "r.db"), "--compare", str(other)])
    assert rc == 2
    assert "do not match" in _error_line(capsys)


def test_no_verify_is_stored_with_the_campaign_and_kept_on_resume(kat: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = kat
    db = tmp_path / "nv.db"
    assert main(["analyze", str(model), "--data", str(data), "--faults", "12", "--target", "weights",
                 "--no-verify", "--db", str(db)]) == 0
    with Store(db) as store:
        assert store.meta("config")["verify"] is False
    assert main(["analyze", str(model), "--data", str(data), "--db", str(db), "--resume"]) == 0
    with Store(db) as store:
        assert store.meta("config")["verify"] is False and len(list(store.rows())) == 12


def test_sites_of_unknown_shape_are_left_out_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """fashion_seg's Resize outputs have shapes static inference cannot tell: a campaign over all sites
    leaves them out and says so instead of refusing to run."""
    rc = main(["analyze", "fashion_seg", "--target", "activations", "--faults", "6", "--samples", "2",
               "--db", str(tmp_path / "s.db")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "left out 6 site(s)" in out and "Resize_output_0" in out
    with Store(tmp_path / "s.db") as store:
        assert "Resize" not in " ".join(r["site"] for r in store.rows())


def test_path_note_names_fallbacks_per_site_kind_and_is_silent_on_fast_paths() -> None:
    from onnxfi.commands.analyze import path_note

    fast = [{"kind": "weight", "path": "cone-split"}, {"kind": "weight", "path": "cone+baked"},
            {"kind": "activation", "path": "cone+shortcut"}, {"kind": "weight", "path": "opt-cut"},
            {"kind": "weight", "path": "opt-cut-baked"}, {"kind": "weight", "path": "cone-opt"}]
    assert path_note(fast) is None
    mixed = fast + [{"kind": "weight", "path": "rebuild"}, {"kind": "weight", "path": "rebuild"},
                    {"kind": "activation", "path": "port"}]
    note = path_note(mixed)
    assert note is not None
    assert "activation: cone 1, port 1" in note and "weight: rebuild 2, cone-split 1, cone 1" in note
    assert "opt-cut 1" in note  # the fast paths are named too once a fallback is
