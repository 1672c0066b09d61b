"""Whole-command time of ``onnxfi analyze`` against an independent naive injector, on the same plan.

Issue 17's measure: what a user waits for, start-up included. For each case it runs, as subprocesses,

1. ``onnxfi analyze MODEL --data DATA --faults F --db ... --json ...`` (the default design: proportional,
   every weight site, every bit), timed from start to exit;
2. ``bench/naive_injector.py`` (onnx + onnxruntime + numpy only: per fault a model copy, a bit flip, a new
   session, a run) on the plan that analyze wrote. With ``--naive-limit K`` and a plan of more than K
   faults it runs a seeded random K of them and the total is extrapolated: its start-up plus K faults'
   loop time times F/K (a naive fault costs the same whatever else the plan holds).

and prints both times, their ratio, onnxfi's paths, and whether the outcomes (masked, DUE, SDC-1) the naive
injector computed independently equal the rows onnxfi stored, experiment by experiment.

    .venv/bin/python bench/bench_sparse.py --zoo --faults 100,1000,10000 --naive-limit 300
    .venv/bin/python bench/bench_sparse.py --public rapidocr-cls --faults 400
    .venv/bin/python bench/bench_sparse.py --model path/to/model.onnx --data feeds.npz --faults 400

``--public NAME`` takes a public model shipped inside a pip package (``make bench`` installs the wheel into
.venv-bench with ``--no-deps``: only its files are needed, nothing of it is imported) and 16 seeded
random samples of the shape given below.

Run on a quiet machine; record results in RESULTS.md with the machine (``uptime`` before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# What a user's machine does: Python caches compiled modules (pip compiles an installed package's at
# install time). Some CI shells set PYTHONDONTWRITEBYTECODE, which makes every process compile onnxfi's
# modules again (about 0.2 s each, workers included); the commands timed here run without it, after
# compileall wrote the cache (see bytecode_cache).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "model_zoo"
DATA = ZOO / "data"
PY = sys.executable

# zoo model -> its eval data (the README's pairing)
ZOO_CASES = {
    "digits_cnn": "digits_eval.npz",
    "digits_cnn_keras": "digits_eval_nhwc.npz",
    "digits_cnn_paddle": "digits_eval.npz",
    "digits_mlp_skl": "digits_eval_flat.npz",
    "fashion_cnn": "fashion_eval.npz",
    "fashion_cnn_bnfold": "fashion_eval.npz",
    "fashion_cnn_fp16": "fashion_eval.npz",
    "fashion_cnn_int8_qdq": "fashion_eval.npz",
    "fashion_cnn_int8_qop": "fashion_eval.npz",
    "fashion_cnn_pruned50": "fashion_eval.npz",
    "fashion_cnn_pruned90": "fashion_eval.npz",
    "fashion_seg": "fashion_seg_eval.npz",
}


# public models from pip wheels: name -> (package, file in it, one sample's shape)
PUBLIC = {
    # PaddleOCR text-direction classifier (rapidocr_onnxruntime 1.4.4): 285 weight sites, all Constant nodes
    "rapidocr-cls": ("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", (3, 48, 192)),
    # PP-OCRv4 text detector: 330 weight sites, -1 dims
    "rapidocr-det": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx", (3, 64, 64)),
    # PP-OCRv4 text recognizer: 365 weight sites
    "rapidocr-rec": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx", (3, 48, 160)),
}


def public_case(name: str, package_dir: str | None, work: Path) -> tuple[Path, Path]:
    """The model file of a public model (from the installed package, or ``package_dir``, an unzipped wheel
    holding the package folder) and 16 seeded random samples for it."""
    import importlib.util

    import numpy as np

    package, rel, shape = PUBLIC[name]
    if package_dir:
        base = Path(package_dir) / package
    else:
        spec = importlib.util.find_spec(package)  # finds the folder without importing the package
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"{package} is not installed: pip install --no-deps {package}==1.4.4 (or --public-dir)")
        base = Path(list(spec.submodule_search_locations)[0])
    model = base / rel
    data = work / f"{name}_16.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((16, *shape)).astype(np.float32))
    return model, data


def bytecode_cache() -> None:
    """Compile onnxfi's modules once, as a pip install does, so that no timed command pays for it."""
    subprocess.run([PY, "-m", "compileall", "-q", str(ROOT / "onnxfi"), str(ROOT / "bench")], check=True)


def timed(cmd: list[str]) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    return time.perf_counter() - t0, p.returncode, (p.stdout + p.stderr)[-2000:]


def onnxfi_rows(db: Path) -> dict[int, dict[str, Any]]:
    con = sqlite3.connect(db)
    rows = {r[0]: {"masked": bool(r[1]), "due": bool(r[2]), "sdc1": bool(r[3]), "path": r[4], "crash": bool(r[5])}
            for r in con.execute("select id, masked, due, sdc1, path, crash from results")}
    con.close()
    return rows


def case(model: Path, data: Path, faults: int, naive_limit: int, work: Path, extra: list[str]) -> dict[str, Any]:
    tag = f"{model.stem}_{faults}"
    db, js = work / f"{tag}.db", work / f"{tag}.json"
    t_fi, rc, tail = timed([PY, "-m", "onnxfi", "analyze", str(model), "--data", str(data), "--faults", str(faults),
                            "--db", str(db), "--overwrite", "--json", str(js), *extra])
    if rc != 0:
        return {"model": model.name, "faults": faults, "error": f"onnxfi analyze exit {rc}: {tail}"}
    plan = Path(f"{db}.plan.json")
    out = work / f"{tag}.naive.json"
    limit = naive_limit if naive_limit and faults > naive_limit else 0
    t_nv, rc, tail = timed([PY, str(ROOT / "bench" / "naive_injector.py"), str(model), str(plan), str(data),
                            "--out", str(out), *(["--limit", str(limit)] if limit else [])])
    if rc != 0:
        return {"model": model.name, "faults": faults, "error": f"naive injector exit {rc}: {tail}"}
    nv = json.loads(out.read_text())
    naive_total = t_nv if not limit else t_nv - nv["loop_s"] + nv["loop_s"] * faults / nv["experiments"]
    rows = onnxfi_rows(db)
    paths: dict[str, int] = {}
    for r in rows.values():
        paths[r["path"]] = paths.get(r["path"], 0) + 1
    same = differ = 0
    first_diff = None
    for key, n in nv["rows"].items():
        r = rows[int(key)]
        if "crash" in n:
            ok = r["crash"]
        else:
            ok = r["masked"] == n["masked"] and r["due"] == n["due"] and (n["sdc1"] is None or r["sdc1"] == n["sdc1"])
        same += ok
        differ += not ok
        if not ok and first_diff is None:
            first_diff = {"id": int(key), "onnxfi": r, "naive": n}
    summary = json.loads(js.read_text()).get("summary", {})
    return {"model": model.name, "faults": faults, "onnxfi_s": t_fi, "naive_s": naive_total,
            "naive_measured": nv["experiments"], "naive_extrapolated": bool(limit), "ratio": naive_total / t_fi,
            "paths": paths, "outcomes_equal": same, "outcomes_differ": differ, "first_difference": first_diff,
            "sites": len({e["site"] for e in json.loads(plan.read_text())["experiments"]}),
            "headline": summary.get("headline") if isinstance(summary, dict) else None}


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One case run several times: the first run's fields, the median times and their ratio, every time,
    and the outcome comparison summed over the runs (an error in any run is the case's)."""
    import statistics

    bad = next((r for r in runs if "error" in r), None)
    if bad is not None or len(runs) == 1:
        return bad or runs[0]
    r = dict(runs[0])
    r["onnxfi_s"] = statistics.median(x["onnxfi_s"] for x in runs)
    r["naive_s"] = statistics.median(x["naive_s"] for x in runs)
    r["ratio"] = r["naive_s"] / r["onnxfi_s"]
    r["runs"] = [{"onnxfi_s": x["onnxfi_s"], "naive_s": x["naive_s"]} for x in runs]
    r["outcomes_equal"] = sum(x["outcomes_equal"] for x in runs)
    r["outcomes_differ"] = sum(x["outcomes_differ"] for x in runs)
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", action="store_true", help="every model_zoo model with its eval data")
    ap.add_argument("--models", default="", help="comma list of zoo names (with --zoo; default: all)")
    ap.add_argument("--public", action="append", default=[], choices=sorted(PUBLIC),
                    help="a public model from a pip package (16 random samples)")
    ap.add_argument("--public-dir", help="an unzipped wheel holding the --public package (else the installed one)")
    ap.add_argument("--model", action="append", default=[], help="a model path (with --data)")
    ap.add_argument("--data", action="append", default=[], help="its .npz feeds (one per --model)")
    ap.add_argument("--faults", default="400", help="comma list of campaign sizes")
    ap.add_argument("--naive-limit", type=int, default=0, help="run at most this many naive faults, extrapolate")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each case this many times (onnxfi and naive alternating); medians are shown")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("extra", nargs="*", help="more onnxfi analyze options (after --)")
    args = ap.parse_args(argv)
    cases: list[tuple[Path, Path]] = []
    if args.zoo:
        names = [n for n in args.models.split(",") if n] or list(ZOO_CASES)
        cases += [(ZOO / f"{n}.onnx", DATA / ZOO_CASES[n]) for n in names]
    if len(args.model) != len(args.data):
        ap.error("give one --data per --model")
    cases += [(Path(m).resolve(), Path(d).resolve()) for m, d in zip(args.model, args.data)]
    sizes = [int(x) for x in args.faults.split(",")]
    bytecode_cache()
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'model':28}{'faults':>8}{'sites':>7}{'onnxfi s':>10}{'naive s':>10}{'x naive':>9}  outcomes  paths")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        cases += [public_case(name, args.public_dir, Path(tmp)) for name in args.public]
        for model, data in cases:
            for n in sizes:
                runs = [case(model, data, n, args.naive_limit, Path(tmp), args.extra) for _ in range(args.repeat)]
                r = _median_of(runs)
                results.append(r)
                if "error" in r:
                    print(f"{model.name:28}{n:>8}  ERROR {r['error'][:200]}")
                    continue
                est = "*" if r["naive_extrapolated"] else " "
                print(f"{r['model']:28}{n:>8}{r['sites']:>7}{r['onnxfi_s']:>10.2f}{r['naive_s']:>9.2f}{est}"
                      f"{r['ratio']:>9.2f}  {r['outcomes_equal']}/{r['outcomes_equal'] + r['outcomes_differ']} equal  "
                      + ", ".join(f"{k} {v}" for k, v in sorted(r["paths"].items()))
                      + ("  (runs: " + ", ".join(f"{x['onnxfi_s']:.2f}/{x['naive_s']:.2f}" for x in r["runs"]) + ")"
                         if "runs" in r else ""), flush=True)
    if args.naive_limit:
        print(f"(* naive extrapolated from a random {args.naive_limit} of the plan's faults)")
    print(f"load average {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 1 if any(r.get("outcomes_differ") or "error" in r for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
