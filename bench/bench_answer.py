"""Time to answer: wall time from the command to a population SDC-1 estimate within +-margin at a confidence
(default +-1% at 99%), for onnxfi, for naive injection of the same plan and for PyTorchFI (issue 17).

* onnxfi: ``onnxfi analyze MODEL --data DATA --design adaptive --margin M --confidence C --early-stop``,
  a subprocess timed whole (start-up included): it stops at the first round whose interval is within
  the margin; the JSON gives the estimate, its interval and the experiments it took.
* PyTorchFI: uniform random weight bit flips (what a PyTorchFI study draws; the proportional plan over
  every (site, bit) is the same self-weighting sample), as many as a uniform sample needs for the same
  half-width at onnxfi's estimate with the same interval (:func:`uniform_size`; until 2026-12-07 the
  normal approximation n = z^2 p (1 - p) / margin^2, too few near 0). With ``--pfi-limit K`` it runs K of
  them and extrapolates (the rate per fault does not depend on which faults); the torch import and the
  model build are counted once.
* naive: ``bench/naive_injector.py`` (a model copy, a flip, a new ONNX Runtime session per fault) on
  onnxfi's plan, K faults of it (``--naive-limit``), extrapolated the same way.

Run from the repository root with the bench venv (torch, pytorchfi):

    .venv-bench/bin/python bench/bench_answer.py --model digits_cnn
    .venv-bench/bin/python bench/bench_answer.py --model resnet18_fused --pfi-limit 60 --naive-limit 20
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent

# What a user's machine does: Python caches compiled modules (pip compiles an installed package's at
# install time). Some CI shells set PYTHONDONTWRITEBYTECODE, which makes every process compile onnxfi's
# modules again (about 0.2 s each, workers included); the commands timed here run without it, after
# compileall wrote the cache (see bytecode_cache).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

MODELS = {
    "digits_cnn": (ROOT / "model_zoo" / "digits_cnn.onnx", ROOT / "model_zoo" / "data" / "digits_eval.npz"),
    "resnet18_fused": (BENCH / ".cache" / "resnet18_fused.onnx", BENCH / ".cache" / "resnet18_batch64.npz"),
}


def z_of(confidence: float) -> float:
    from onnxfi.stats import normal_quantile

    return float(normal_quantile(1.0 - (1.0 - confidence) / 2.0))


def uniform_size(rate: float, margin: float, confidence: float) -> int:
    """The fewest uniform random faults whose interval at ``rate`` has half-width <= ``margin``, with the
    interval onnxfi reports for a simple random sample (:func:`onnxfi.stats.rate_with_ci`: Wilson, held to
    the exact Poisson limit at 3 events or fewer). The normal approximation z^2 p (1 - p) / margin^2 asks for
    far fewer near 0 (160 instead of about 420 at 0.24%, +-1%, 99%), where its interval is known not to
    cover; a PyTorchFI study that stopped there would not have the answer onnxfi gives."""
    from onnxfi.stats import rate_with_ci

    def ok(n: int) -> bool:
        return rate_with_ci(round(rate * n), n, confidence).half_width <= margin

    hi = 16
    while not ok(hi):
        hi *= 2
    lo = hi // 2
    while hi - lo > 1:  # the smallest n that holds (half-widths shrink with n, up to the rounding of k)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def run_onnxfi(model: Path, data: Path, margin: float, confidence: float, work: Path) -> dict[str, Any]:
    db, js = work / "answer.db", work / "answer.json"
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "onnxfi", "analyze", str(model), "--data", str(data), "--design",
                        "adaptive", "--margin", str(margin), "--confidence", str(confidence), "--early-stop",
                        "--db", str(db),
                        "--overwrite", "--json", str(js)], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"onnxfi analyze failed ({p.returncode}): {(p.stdout + p.stderr)[-1500:]}")
    s = json.loads(js.read_text())["summary"]
    r = s["rates"]["sdc1"]
    return {"wall_s": wall, "experiments": s["experiments"], "rate": r["rate"], "lo": r["lo"], "hi": r["hi"],
            "plan": str(db) + ".plan.json", "db": str(db)}


def run_pytorchfi(kind: str, model: Path, data: Path, n: int, limit: int, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    import torch  # noqa: F401  (timed: what a PyTorchFI script pays first)

    t_import = time.perf_counter() - t0
    import onnxruntime as ort
    from bench_campaign import run_torch, weight_sites

    from onnxfi.plan import make_plan

    with np.load(data, allow_pickle=False) as z:
        feeds = {k: z[k] for k in z.files if k != "labels"}
        labels = z["labels"] if "labels" in z.files else None
    so = ort.SessionOptions()
    so.log_severity_level = 4
    golden = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    plan = make_plan(model, weight_sites(model), ["flip"], n_faults=n, seed=seed, target="weights")
    exps = list(plan.experiments)
    if limit and limit < len(exps):
        pick = np.random.default_rng(seed).choice(len(exps), limit, replace=False)
        exps = [exps[i] for i in sorted(pick)]
    res = run_torch(kind, model, feeds, labels, exps, os.cpu_count() or 1, True, golden)
    per = res.total_s / len(exps)
    return {"faults_needed": n, "faults_run": len(exps), "import_s": t_import, "loop_s": res.total_s,
            "wall_s": t_import + per * n, "extrapolated": len(exps) < n}


def run_naive(model: Path, data: Path, plan: str, n: int, limit: int, work: Path) -> dict[str, Any]:
    out = work / "naive.json"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(BENCH / "naive_injector.py"), str(model), plan, str(data), "--out", str(out),
                    *(["--limit", str(limit)] if limit and limit < n else [])], check=True)
    wall = time.perf_counter() - t0
    nv = json.loads(out.read_text())
    total = wall - nv["loop_s"] + nv["loop_s"] * n / nv["experiments"]
    return {"faults": n, "faults_run": nv["experiments"], "wall_s": total, "extrapolated": nv["experiments"] < n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="digits_cnn")
    ap.add_argument("--margin", type=float, default=0.01)
    ap.add_argument("--confidence", type=float, default=0.99)
    ap.add_argument("--pfi-limit", type=int, default=0, help="run at most this many PyTorchFI faults, extrapolate")
    ap.add_argument("--naive-limit", type=int, default=300, help="run at most this many naive faults, extrapolate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    model, data = MODELS[args.model]
    if not model.exists():
        raise SystemExit(f"{model} is missing: run `.venv-bench/bin/python bench/build_resnet18.py` first")
    print(f"== time to a +-{args.margin:.2%} SDC-1 answer at {args.confidence:.0%}: {model.name}, {data.name}; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}", flush=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "onnxfi"), str(BENCH)], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fi = run_onnxfi(model, data, args.margin, args.confidence, work)
        print(f"   onnxfi (adaptive, early stop): {fi['experiments']} faults, SDC-1 {fi['rate']:.2%} "
              f"[{fi['lo']:.2%}, {fi['hi']:.2%}], {fi['wall_s']:.1f} s whole command", flush=True)
        z = z_of(args.confidence)
        n_wald = math.ceil(z * z * fi["rate"] * (1 - fi["rate"]) / args.margin ** 2)
        n_uniform = uniform_size(fi["rate"], args.margin, args.confidence)
        nv = run_naive(model, data, fi["plan"], fi["experiments"], args.naive_limit, work)
        print(f"   naive (same plan): {nv['wall_s']:.1f} s" + (f" (extrapolated from {nv['faults_run']} faults)"
                                                           if nv["extrapolated"] else ""), flush=True)
        pfi = run_pytorchfi(args.model, model, data, n_uniform, args.pfi_limit, args.seed)
        print(f"   PyTorchFI (uniform, {n_uniform} faults for the same half-width with the same interval; the "
              f"normal approximation would say {n_wald}): {pfi['wall_s']:.1f} s"
              + (f" (extrapolated from {pfi['faults_run']} faults)" if pfi["extrapolated"] else ""), flush=True)
    ratio_pfi, ratio_naive = pfi["wall_s"] / fi["wall_s"], nv["wall_s"] / fi["wall_s"]
    print(f"   time to answer: onnxfi {fi['wall_s']:.1f} s; {ratio_naive:.2f}x naive, {ratio_pfi:.2f}x PyTorchFI "
          f"(target >= 5x PyTorchFI: {'MET' if ratio_pfi >= 5 else 'NOT MET'}); "
          f"load average {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "onnxfi": fi, "naive": nv, "pytorchfi": pfi,
                                         "x_naive": ratio_naive, "x_pytorchfi": ratio_pfi}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
