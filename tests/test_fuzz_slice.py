"""The fuzz suite (issue 18): a fixed, seeded slice of it must show no misbehaviour, and the harness itself must
see the misbehaviours it exists to catch (a traceback, a hang, an unpickled object array, extra error lines).

The slice runs ``scripts/fuzz.py`` in a fresh interpreter (forking is only safe in a process that has started no
ONNX Runtime threads, and other tests in this one may have).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fuzz import cases as cs
from fuzz import mutators as mu
from fuzz.runner import Case, classify, run_cases

REPO = Path(__file__).resolve().parents[1]
SLICE_CASES = 300
SLICE_SEED = 0


def test_fuzz_slice_has_no_misbehaviour(tmp_path: Path) -> None:
    out = tmp_path / "fuzz"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "fuzz.py"), "--cases", str(SLICE_CASES), "--seed", str(SLICE_SEED),
         "--out", str(out), "-j", "2", "-q"],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    rows = [json.loads(ln) for ln in (out / "cases.jsonl").read_text().splitlines()] if (out / "cases.jsonl").exists() \
        else []
    assert len(rows) == SLICE_CASES, f"the fuzz run did not finish (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    # the slice covers every surface x command pair and every mutation of each surface
    pairs = {(r["surface"], r["command"]) for r in rows}
    assert pairs == {(s, c) for s, c, _ in cs.SCHEDULE}
    seen = {(r["surface"], r["mutation"]) for r in rows}
    for surface, names in [("model", mu.MODEL_MUTATIONS), ("data", mu.DATA_MUTATIONS), ("plan", mu.PLAN_MUTATIONS),
                           ("store", mu.STORE_MUTATIONS), ("gate-config", mu.GATE_MUTATIONS)]:
        assert {(surface, n) for n in names} <= seen, f"{surface}: mutations missing from the slice"
    assert any(r["mutation"] in mu.SUBGRAPH_MUTATIONS for r in rows)
    harness = [r for r in rows if r["verdict"] == "harness-error"]
    assert not harness, f"mutators failed: {harness}"
    report = (out / "misbehaviours.txt").read_text()
    bad = [r for r in rows if r["verdict"] != "ok"]
    assert not bad, f"{len(bad)} of {SLICE_CASES} fuzz cases misbehaved (seed {SLICE_SEED}):\n{report}"
    assert proc.returncode == 0, proc.stdout[-4000:]


@pytest.mark.parametrize(
    ("command", "rc", "stderr", "verdict"),
    [
        ("run", 0, "", "ok"),
        ("run", 2, "onnxfi: error: data.npz: not an .npz file\n", "ok"),
        ("run", 2, "warning: weak bounds\nonnxfi: error: bad input\n", "ok"),
        ("gate", 1, "FAIL: 1 of 5 checks failed\n", "ok"),
        ("run", 1, "", "exit-code"),
        ("run", 70, "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\nValueError: x\n", "traceback"),
        ("run", 0, "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\nKeyError: 'k'\n", "traceback"),
        ("run", 2, "x.py:1: RuntimeWarning: invalid value\n  a.astype(int)\nonnxfi: error: bad labels\n",
         "error-lines"),
        ("run", 2, "", "silent-error"),
        ("run", 2, "usage: onnxfi run [-h]\nonnxfi run: error: unrecognized arguments: --x\n", "usage-error"),
    ],
)
def test_classify(command: str, rc: int, stderr: str, verdict: str) -> None:
    assert classify(command, rc, stderr, False, None)[0] == verdict


def test_classify_hang_signal_unpickle() -> None:
    assert classify("run", None, "", True, None)[0] == "hang"
    assert classify("run", None, "", False, 11)[0] == "signal"
    assert classify("run", 2, "onnxfi: error: x\n", False, None, unpickled=True)[0] == "unpickled"


def _case(tmp_path: Path, name: str, argv: list[str], timeout: float = 20.0) -> Case:
    return Case(0, 0, "unit", argv[0], name, argv, tmp_path / name, timeout)


def test_runner_isolates_each_case(tmp_path: Path) -> None:
    """A hang is killed at its limit, a memory hog meets the address-space limit, an unpickling is seen,
    and a plain user error passes."""

    def build(case: Case) -> str:
        if case.mutation == "hang":
            time.sleep(60)
        if case.mutation == "hog":
            np.ones(8 << 30, dtype=np.uint8)  # 8 GiB against a 2 GiB limit: MemoryError while building
        if case.mutation == "unpickle":
            (case.folder / "UNPICKLED").write_text("")
        return case.mutation

    cases = [
        _case(tmp_path, "hang", ["inspect", "missing.onnx"], timeout=2.0),
        _case(tmp_path, "hog", ["inspect", "missing.onnx"]),
        _case(tmp_path, "unpickle", ["inspect", "missing.onnx"]),
        _case(tmp_path, "user-error", ["inspect", "missing.onnx"]),
    ]
    t0 = time.monotonic()
    got = {r.case.mutation: r for r in run_cases(cases, build, jobs=2, rlimit_as=2 << 30, keep_ok=True)}
    assert time.monotonic() - t0 < 50
    assert got["hang"].verdict == "hang"
    assert got["hog"].verdict == "harness-error" and "MemoryError" in got["hog"].detail
    assert got["unpickle"].verdict == "unpickled"
    assert got["user-error"].verdict == "ok" and got["user-error"].rc == 2
    assert "onnxfi: error:" in (tmp_path / "user-error" / "stderr.txt").read_text()


def test_cases_are_reproducible_alone(tmp_path: Path) -> None:
    """Case i of seed s has the same command line and writes the same mutant whether or not others ran first."""
    corpus = mu.Corpus(tmp_path / "corpus", REPO)
    corpus.root.mkdir()
    mu.build_if_model(corpus.if_model)
    build = cs.make_builder(corpus)
    picked = [i for i in range(120) if cs.make_case(3, i, corpus, tmp_path).surface in ("model", "data")][:12]
    for i in picked:
        a = cs.make_case(3, i, corpus, tmp_path / "a")
        b = cs.make_case(3, i, corpus, tmp_path / "b")
        assert (a.surface, a.command, a.mutation, a.argv) == (b.surface, b.command, b.mutation, b.argv)
        for c in (a, b):
            c.folder.mkdir(parents=True)
            cwd = os.getcwd()
            try:
                os.chdir(c.folder)
                build(c)
            finally:
                os.chdir(cwd)
        files_a = sorted(p.relative_to(a.folder) for p in a.folder.rglob("*"))
        files_b = sorted(p.relative_to(b.folder) for p in b.folder.rglob("*"))
        assert files_a == files_b and files_a
        for f in files_a:
            # object_array and external_data write the case folder's absolute path into the file
            skip = a.mutation in ("object_array", "external_data")
            if (a.folder / f).is_file() and f.name in ("model.onnx", "data.npz") and not skip:
                assert (a.folder / f).read_bytes() == (b.folder / f).read_bytes(), (i, f)
