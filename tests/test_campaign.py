"""Campaign acceptance: crash isolation (a planted kill, abort or Python error becomes one ``crash``
row and the campaign completes; the hang is in test_analyze_cli), kill -9 + resume reproduces an
uninterrupted run row for row, early stop, store guards, and the aggregation of rows into rates."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from campaign_helpers import kat_expected, mul_model, row_key, save_kat

from onnxfi.campaign import run_campaign
from onnxfi.cli import main
from onnxfi.engine import EngineConfig
from onnxfi.errors import OnnxfiError
from onnxfi.model import load_model
from onnxfi.outcomes import FLAGS, OUTCOMES
from onnxfi.plan import Plan, make_plan
from onnxfi.sites import Site, enumerate_sites
from onnxfi.store import Store
from onnxfi.summary import aggregate

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "model_zoo" / "digits_cnn.onnx"
DIGITS_DATA = REPO / "model_zoo" / "data" / "digits_eval.npz"
PLANTED = ("W", 0, 31)  # the experiment the planted metrics crash on: y[0, 0] negated


def _sites(model: Path, pattern: str) -> list[Site]:
    loaded = load_model(str(model))
    return enumerate_sites(loaded.model, loaded.value_shapes).select("all", pattern)


@pytest.fixture(scope="module")
def kat(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_kat(tmp_path_factory.mktemp("kat"))


@pytest.fixture(scope="module")
def crash_plan(kat: tuple[Path, Path]) -> Plan:
    """Bits 30 and 31 of every element of W: 36 experiments, one of them (W[0], bit 31) planted."""
    plan = make_plan(kat[0], _sites(kat[0], "^W$"), bits=[30, 31], n_faults=10**6)
    assert len(plan.experiments) == 36
    return plan


def _run_with_metric(kat: tuple[Path, Path], plan: Plan, metric: str, db: Path,
                     **kwargs: Any) -> tuple[list[dict[str, Any]], Any]:
    model, data = kat
    cfg = EngineConfig(str(model), data_path=str(data), metric=f"campaign_helpers:{metric}")
    with Store(db) as store:
        result = run_campaign(plan, cfg, store, **kwargs)
        rows = list(store.rows())
    return rows, result


def _check_one_crash(rows: list[dict[str, Any]], plan: Plan, reason: str) -> dict[str, Any]:
    assert sorted(r["id"] for r in rows) == list(range(len(plan.experiments)))  # the campaign completed
    crashed = [r for r in rows if r["outcome"] == "crash"]
    assert [(r["site"], r["idx"], r["bit"]) for r in crashed] == [PLANTED]
    row = crashed[0]
    assert row["crash"] is True and reason in row["error"]
    assert not (row["sdc1"] or row["due"] or row["masked"])
    for r in rows:
        if r is not row:
            assert r["error"] is None
            assert r["outcome"] == kat_expected(r["site"], r["idx"], {"kind": "flip", "bits": [r["bit"]]})
            assert r["metrics"]["custom"] == 0.0  # the custom metric ran, in the worker
    return row


# --------------------------------------------------------------------------- crash isolation


def test_worker_killed_by_a_fault_is_a_crash_row_and_the_campaign_completes(
    kat: tuple[Path, Path], crash_plan: Plan, tmp_path: Path
) -> None:
    rows, result = _run_with_metric(kat, crash_plan, "crash_on_negated_first", tmp_path / "c.db")
    row = _check_one_crash(rows, crash_plan, "worker died")
    assert f"exit code {-signal.SIGKILL}" in row["error"]
    # the dead worker was replaced: experiments after the crash ran in another worker
    later = [r for r in rows if r["id"] > row["id"]]
    assert later and all(r["worker"] != row["worker"] for r in later)
    assert result.summary["outcomes"]["crash"] == 1
    assert result.summary["rates"]["crash"]["k"] == 1
    assert result.executed == 36


def test_abort_in_the_worker_is_a_crash_row(kat: tuple[Path, Path], crash_plan: Plan, tmp_path: Path) -> None:
    rows, _ = _run_with_metric(kat, crash_plan, "abort_on_negated_first", tmp_path / "a.db")
    row = _check_one_crash(rows, crash_plan, "worker died")
    assert f"exit code {-signal.SIGABRT}" in row["error"]


def test_a_custom_metric_error_stops_the_campaign_and_is_never_a_crash_row(
    kat: tuple[Path, Path], crash_plan: Plan, tmp_path: Path
) -> None:
    """A --metric that raises is a user error (one line naming the metric), not a fault outcome."""
    with pytest.raises(OnnxfiError, match="raise_on_negated_first raised RuntimeError: planted failure"):
        _run_with_metric(kat, crash_plan, "raise_on_negated_first", tmp_path / "e.db")
    with Store(tmp_path / "e.db") as store:
        assert not any(r["crash"] for r in store.rows())


# -------------------------------------------------------------------------- kill -9 and resume


FAULTS = 300
SITES = r"^(features\.3\.weight|classifier\.2\.weight)$"


def _analyze_args(db: Path, data: Path, *extra: str) -> list[str]:
    return ["analyze", str(DIGITS), "--data", str(data), "--target", "all", "--sites", SITES,
            "--faults", str(FAULTS), "--seed", "7", "--db", str(db), *extra]


def _count(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return int(con.execute("SELECT COUNT(*) FROM results").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _rows(db: Path) -> list[dict[str, Any]]:
    with Store(db) as store:
        return [row_key(r) for r in store.rows()]


def test_kill9_then_resume_gives_the_rows_of_an_uninterrupted_run(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "A.db", tmp_path / "B.db"
    data = tmp_path / "digits96.npz"  # the first 96 eval images: a few ms per experiment
    with np.load(DIGITS_DATA) as npz:
        np.savez(data, **{k: npz[k][:96] for k in npz.files})
    cli = [sys.executable, "-m", "onnxfi"]
    # A: `onnxfi analyze ...` killed with SIGKILL (CLI and workers) once some rows are stored
    victim = subprocess.Popen(cli + _analyze_args(a, data), start_new_session=True, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while _count(a) == 0:
            assert victim.poll() is None, "the campaign ended before any row was stored"
            assert time.monotonic() < deadline, "no row stored in time"
            time.sleep(0.02)
        assert victim.poll() is None, "the campaign finished before it could be killed"
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait()
        if victim.stderr:
            victim.stderr.close()
    assert victim.returncode == -signal.SIGKILL
    partial = _count(a)
    assert 0 < partial < FAULTS
    # the killed campaign's summary: only complete rounds (each a sample of the whole space) are in the rates,
    # and it says how much of the plan ran
    with Store(a) as sa:
        plan = Plan.from_dict(sa.meta("plan"))
        killed_rows = list(sa.rows())
    s = aggregate(plan, killed_rows)
    by_round = Counter(e.round for e in plan.experiments)
    stored_round = Counter(plan.experiments[r["id"]].round for r in killed_rows)
    complete = {r for r, n in by_round.items() if stored_round[r] == n}
    used = [r for r in killed_rows if plan.experiments[r["id"]].round in complete]
    prog = s["progress"]
    assert prog["complete"] is False and prog["stored"] == partial and prog["planned"] == FAULTS
    assert prog["used"] == len(used) and prog["partial_rows"] == partial - len(used)
    assert prog["rounds_complete"] == len(complete) and prog["rounds"] == len(by_round)
    assert s["rates"]["sdc1"]["n"] == len(used) and s["rates"]["sdc1"]["k"] == sum(r["sdc1"] for r in used)
    shown = subprocess.run(cli + ["results", str(a)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert shown.returncode == 0 and f"of {FAULTS:,} planned experiments" in " ".join(shown.stdout.split())
    # ... then `onnxfi analyze ... --resume` to completion
    resumed = subprocess.run(cli + _analyze_args(a, data, "--resume"), capture_output=True, text=True,
                             cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    # B: the same command, uninterrupted
    assert main(_analyze_args(b, data)) == 0
    capsys.readouterr()
    rows_a, rows_b = _rows(a), _rows(b)
    assert len(rows_b) == FAULTS
    assert [r["id"] for r in rows_a] == list(range(FAULTS))
    assert rows_a == rows_b
    # the same plan, and the same summary
    assert json.loads(Path(f"{a}.plan.json").read_text()) == json.loads(Path(f"{b}.plan.json").read_text())
    with Store(a) as sa, Store(b) as sb:
        assert sa.meta("plan") == sb.meta("plan")
        plan = Plan.from_dict(sa.meta("plan"))
        assert aggregate(plan, sa.rows()) == aggregate(plan, sb.rows())


# ------------------------------------------------------------------------------------ early stop


def test_early_stop_when_every_fault_is_an_sdc(tmp_path: Path) -> None:
    """Regression task on y = x * w with x = 1: every non-masked fault is an SDC, so the SDC-1 rate is 1
    and its interval is within the margin after the first round."""
    model = tmp_path / "mul.onnx"
    onnx.save_model(mul_model(64), str(model))
    data = tmp_path / "ones.npz"
    np.savez(data, x=np.ones((2, 64), np.float32))
    plan = make_plan(model, _sites(model, "^w$"), margin=0.05, confidence=0.99, rounds=4, seed=2)
    assert plan.mode == "statistical" and len(plan.experiments) == 502
    first_round = sum(1 for e in plan.experiments if e.round == 0)
    cfg = EngineConfig(str(model), data_path=str(data), task="regression")
    with Store(tmp_path / "es.db") as store:
        # one worker: nothing of round 1 is in flight when round 0 ends (several workers may store some,
        # which the rates leave out: tests/test_analyze_cli.py)
        result = run_campaign(plan, cfg, store, early_stop=True, workers=1)
        rows = list(store.rows())
    assert result.early_stopped
    assert result.executed == len(rows) == first_round < len(plan.experiments)
    assert all(r["sdc1"] for r in rows)
    assert result.summary["experiments"] == first_round
    assert result.summary["planned"] == 502
    assert {r["id"] for r in rows} == {e.id for e in plan.experiments if e.round == 0}


# ------------------------------------------------------------------------------------ store guards


def test_run_campaign_refuses_to_overwrite_or_resume_nothing(kat: tuple[Path, Path], crash_plan: Plan,
                                                            tmp_path: Path) -> None:
    cfg = EngineConfig(str(kat[0]), data_path=str(kat[1]))
    with Store(tmp_path / "empty.db") as store, pytest.raises(OnnxfiError, match="nothing to resume"):
        run_campaign(crash_plan, cfg, store, resume=True)
    with Store(tmp_path / "full.db") as store:
        store.set_meta("plan", crash_plan.to_dict())
        row = {"id": 0, "site": "W", "kind": "weight", "idx": 0, "bit": 30, "fault": "flip:30", "outcome": "due",
               "masked": False, "sdc1": False, "sdc5": False, "critical": False, "due": True, "crash": False,
               "images_changed": 0.0, "metrics": {}, "time_s": 0.1, "worker": 0, "error": None}
        store.add([row])
        with pytest.raises(OnnxfiError, match="already holds a campaign"):
            run_campaign(crash_plan, cfg, store)
        assert store.count() == 1
        assert list(store.rows())[0] == row | {"path": None, "image": None}


def test_store_round_trips_rows(tmp_path: Path) -> None:
    rows = [
        {"id": i, "site": "s", "kind": "weight", "idx": i, "bit": None if i == 2 else i, "fault": "zero",
         "outcome": OUTCOMES[i], "masked": i == 0, "sdc1": i in (2, 3, 4), "sdc5": i == 3, "critical": i == 4,
         "due": i == 5, "crash": i == 6, "images_changed": None if i == 6 else i / 10,
         "metrics": {} if i == 6 else {"task_value": 0.5, "custom": None}, "time_s": 0.25, "worker": 1,
         "error": "boom" if i == 6 else None, "path": None if i == 6 else "suffix", "image": 3 if i == 1 else None}
        for i in range(7)
    ]
    with Store(tmp_path / "s.db") as store:
        store.add(rows[3:])
        store.add(rows[:3])
        assert store.count() == 7 and store.done_ids() == set(range(7))
    with Store(tmp_path / "s.db") as store:
        assert list(store.rows()) == rows
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OnnxfiError, match="not an onnxfi results database"):
        Store(tmp_path / "junk.db")


# ------------------------------------------------------------------------------------- aggregate


def test_aggregate_counts_rates_layers_and_bits(tmp_path: Path) -> None:
    model = tmp_path / "m.bin"
    model.write_bytes(b"m")
    sites = [Site(n, "weight", ir.DataType.FLOAT, (100,), "initializer", (), ()) for n in "ab"]
    plan = make_plan(model, sites, bits=[0, 31], n_faults=40, seed=0)
    rng = np.random.default_rng(1)
    rows: list[dict[str, Any]] = []
    for e in plan.experiments:
        o = OUTCOMES[int(rng.integers(len(OUTCOMES)))] if e.bit == 31 else "masked"
        rows.append({"id": e.id, "site": e.site, "kind": e.kind, "idx": e.index, "bit": e.bit, "fault": "flip",
                     "outcome": o, "masked": o == "masked", "sdc1": o in ("sdc1", "sdc5", "critical"),
                     "sdc5": o == "sdc5", "critical": o == "critical", "due": o == "due", "crash": o == "crash",
                     "images_changed": None if o == "crash" else 0.5 * (o in ("sdc1", "sdc5", "critical")),
                     "metrics": {}})
    s = aggregate(plan, rows)
    assert s["experiments"] == s["planned"] == 40
    assert s["outcomes"] == {o: sum(r["outcome"] == o for r in rows) for o in OUTCOMES}
    for k in FLAGS:
        want = sum(bool(r[k]) for r in rows)
        assert s["rates"][k]["k"] == want and s["rates"][k]["n"] == 40
        assert s["rates"][k]["rate"] == pytest.approx(want / 40)
        assert s["rates"][k]["lo"] <= s["rates"][k]["rate"] <= s["rates"][k]["hi"]
    assert sorted(e["key"] for e in s["layers"]) == ["a", "b"]
    assert sum(e["n"] for e in s["layers"]) == 40
    assert [e["key"] for e in s["bits"]] == [31, 0]
    assert s["bits"][1]["n"] == 20 and s["bits"][1]["sdc1"]["k"] == 0 and s["bits"][1]["masked"]["k"] == 20
    lb = {(e["site"], e["bit"]): e for e in s["layer_bit"]}
    assert set(lb) == {(x, b) for x in "ab" for b in (0, 31)}
    for (site_name, bit), e in lb.items():
        group = [r for r in rows if r["site"] == site_name and r["bit"] == bit]
        assert e["n"] == len(group) == 10
        assert e["k"] == sum(r["sdc1"] or r["due"] for r in group)
    # the default (proportional) design over equal strata: 10 per stratum, and the headline is k/n
    assert s["design"] == "proportional" and s["rates_raw"]["sdc1"]["k"] == s["rates"]["sdc1"]["k"]
    assert s["progress"]["complete"] and s["progress"]["used"] == 40
    # the per-stratum design over the same rows: the stratified rate is the mean of the per-stratum rates
    per: Counter[tuple[str, int]] = Counter()
    for r in rows:
        per[(r["site"], r["bit"])] += r["sdc1"]
    strat = aggregate(Plan.from_dict({**plan.to_dict(), "design": "per-stratum"}), rows)
    assert strat["rates"]["sdc1"]["rate"] == pytest.approx(sum(v / 10 for v in per.values()) / 4)
    changed = [r["images_changed"] for r in rows if r["images_changed"] is not None]
    assert s["images_changed_mean"] == pytest.approx(float(np.mean(changed)))
    assert s["paths"] == {"unrecorded": 40}


def test_weighted_rate_known_value(tmp_path: Path) -> None:
    """Four (site, bit) strata of 100 faults, 10 sampled each (per-stratum design); only (a, 31) fails, every
    time: the population rate is 1/4 exactly, and its interval (docs/statistics.md) contains it."""
    model = tmp_path / "m.bin"
    model.write_bytes(b"m")
    sites = [Site(n, "weight", ir.DataType.FLOAT, (100,), "initializer", (), ()) for n in "ab"]
    plan = make_plan(model, sites, bits=[0, 31], per_stratum=10, seed=0)
    assert plan.design == "per-stratum" and len(plan.experiments) == 40
    rows = []
    for e in plan.experiments:
        bad = e.site == "a" and e.bit == 31
        rows.append({"id": e.id, "site": e.site, "kind": e.kind, "idx": e.index, "bit": e.bit, "fault": "flip",
                     "outcome": "sdc1" if bad else "masked", "masked": not bad, "sdc1": bad, "sdc5": False,
                     "critical": False, "due": False, "crash": False, "images_changed": 1.0 if bad else 0.0,
                     "metrics": {}, "path": "suffix"})
    w = aggregate(plan, rows, 0.95)["rates"]
    assert w["sdc1"]["rate"] == 0.25 and w["sdc1"]["lo"] < 0.25 < w["sdc1"]["hi"]
    # no DUE anywhere: still an interval above 0 (no stratum is treated as certain)
    assert w["due"]["rate"] == 0.0 and 0.0 < w["due"]["hi"] < 0.25
    assert aggregate(plan, rows)["paths"] == {"suffix": 40}
