"""Does hardening cut the damage that faults do? One plan, the same experiments on the original and each hardened model.

Usage (from the repository root):

    .venv/bin/python bench/hardening_eval.py digits_cnn                      # weights, bits 23-30, 2000 faults
    .venv/bin/python bench/hardening_eval.py fashion_cnn --json out.json
    .venv/bin/python bench/hardening_eval.py fashion_seg --target activations --methods relumax --faults 1000
    .venv/bin/python bench/hardening_eval.py path/to/model.onnx --data eval.npz --methods ranger,relumax

For each method the model is hardened with the library API (``onnxfi.harden.harden``), calibrated on the
evaluation data (a zoo model's eval subset unless ``--data``), exactly as ``onnxfi harden MODEL`` does.
ONE plan is sampled on the original model (``onnxfi.plan.make_plan``: single bit flips, ``--bits``,
``--faults``, ``--seed``) and the SAME experiments (site, element, bit) run on the original and on every
hardened model: weight sites keep their names and values in a hardened model, activation sites keep their
names (the script checks both and stops if a site is missing or differs). Only the plan's model path and
hash change. Each campaign is ``onnxfi.campaign.run_campaign`` with its own SQLite store.

Reported per model: SDC-1, DUE and critical rates over the experiments with 99% Wilson intervals, the
same rates weighted by the population of each (site, bit) stratum (normal intervals, as ``onnxfi analyze``
gives them), the SDC-1 reduction factor against the original and whether the 99% intervals overlap;
SDC-1 per inference (the fraction of (fault, image) pairs whose top-1 changed, also "silent", with the
experiments that ended in a DUE counted as no SDC; seeded bootstrap intervals over experiments); the clean
metric and its change; the latency overhead (ORT_ENABLE_ALL, one batch, 1 intra-op thread unless
``--latency-threads``, the two models interleaved run by run; medians). A site is "covered" by a hardened
model when every path from it to a graph output passes through a hardening node; SDC-1 is also given over
the covered sites alone, and per site, per bit and by flip direction (|w| grows or shrinks). The mean task
metric per experiment (accuracy or mIoU against the labels; masked experiments count with the clean
value) comes with a seeded bootstrap 99% interval, and the paired difference hardened - original over the
same experiments.

Needs no network; writes only under ``--workdir`` (a temporary folder unless given).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime

import onnxfi
from onnxfi import metrics, zoo
from onnxfi.campaign import run_campaign
from onnxfi.data import Dataset, load_data
from onnxfi.engine import EngineConfig
from onnxfi.harden import HardenOptions, harden, run_outputs
from onnxfi.model import LoadedModel, load_model, save_model
from onnxfi.passes import hardening_method
from onnxfi.plan import Plan, file_sha256, make_plan, parse_bits
from onnxfi.runtime import make_session
from onnxfi.sites import Site, SiteIndex, enumerate_sites
from onnxfi.stats import rate_with_ci
from onnxfi.store import Store
from onnxfi.summary import aggregate

CONFIDENCE = 0.99
RATES = ("sdc1", "due", "critical")


# ---------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("model", help="zoo name (digits_cnn, fashion_cnn, fashion_seg, ...) or .onnx path")
    p.add_argument("--data", help="evaluation + calibration data (.npz); default: the zoo model's eval data")
    p.add_argument("--methods", default="ranger,relumax,clipact", help="comma list of hardening methods, each "
                   "evaluated on its own (a 'a+b' entry composes a and b); default ranger,relumax,clipact")
    p.add_argument("--target", default="weights", choices=("weights", "activations"), help="fault sites")
    p.add_argument("--bits", default="23-30", help="bits to flip (fp32 30..23 = exponent); 'all' for every bit")
    p.add_argument("--faults", type=int, default=2000, help="experiments in the plan (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="plan seed (default 0)")
    p.add_argument("--sites", help="regex over site names to restrict the plan")
    p.add_argument("--critical", type=float, default=0.01, help="metric drop that makes an outcome critical")
    p.add_argument("--mode", default=None, help="engine mode (suffix, port, naive; default: the engine's)")
    p.add_argument("--workers", type=int, default=1, help="campaign worker processes (default 1)")
    p.add_argument("--threads", type=int, help="ORT intra-op threads for campaigns and latency")
    p.add_argument("--batch", type=int, default=64, help="latency batch (default 64)")
    p.add_argument("--latency-runs", type=int, default=300,
                   help="timed runs per model, interleaved with the original's (default 300)")
    p.add_argument("--latency-threads", type=int, default=1, help="ORT intra-op threads for the latency "
                   "(default 1: stable on a shared machine; 0 = ORT's choice)")
    p.add_argument("--bootstrap", type=int, default=10000, help="bootstrap resamples for mIoU intervals")
    p.add_argument("--workdir", help="where hardened models and stores go (default: a temporary folder)")
    p.add_argument("--reuse", action="store_true", help="reuse a --workdir store that already holds the same "
                   "finished plan for the same model file (e.g. to re-tabulate)")
    p.add_argument("--json", metavar="OUT.json", help="also write every figure as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    if args.faults < 1 or args.latency_runs < 1 or args.batch < 1:
        p.error("--faults, --latency-runs and --batch must be at least 1")
    if args.latency_threads == 0:
        args.latency_threads = None
    return args


# ---------------------------------------------------------------- helpers


def note(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def resolve(spec: str, data: str | None) -> tuple[Path, Path]:
    """(model path, data path) of a zoo name or a file."""
    model = Path(spec) if Path(spec).is_file() else zoo.model_path(spec)
    if data:
        return model, Path(data)
    if Path(spec).is_file():
        raise SystemExit("give --data for a model that is not in the zoo")
    return model, zoo.eval_data_path(spec)


def wilson(k: int, n: int) -> dict[str, float]:
    r = rate_with_ci(k, n, CONFIDENCE)
    return {"k": k, "n": n, "rate": r.rate, "lo": r.lo, "hi": r.hi}


def overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return a["lo"] <= b["hi"] and b["lo"] <= a["hi"]


def factor(before: float, after: float) -> float:
    if after == 0:
        return float("inf") if before > 0 else float("nan")
    return before / after


def bootstrap_mean(values: np.ndarray, resamples: int, seed: int) -> dict[str, float]:
    """Mean with a seeded percentile-bootstrap 99% interval (and the t-interval for reference)."""
    v = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # chunks keep the index matrix small
        stop = min(resamples, start + 1000)
        means[start:stop] = v[rng.integers(0, v.size, size=(stop - start, v.size))].mean(axis=1)
    alpha = (1 - CONFIDENCE) / 2
    se = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
    z = 2.5758293035489  # normal quantile for 99%; n is in the hundreds, so t ~ z
    return {
        "mean": float(v.mean()), "lo": float(np.quantile(means, alpha)), "hi": float(np.quantile(means, 1 - alpha)),
        "t_lo": float(v.mean() - z * se), "t_hi": float(v.mean() + z * se), "n": int(v.size),
    }


# ---------------------------------------------------------------- sites


def site_key(site: Site) -> tuple[Any, ...]:
    return (site.kind, site.dtype, site.concrete_shape, site.batched)


def check_sites(
    plan: Plan, original: tuple[SiteIndex, ir.Model], hardened: tuple[SiteIndex, ir.Model]
) -> list[str]:
    """Why the plan cannot run unchanged on the hardened model (empty when it can)."""
    problems = []
    o_index, _ = original
    h_index, _ = hardened
    h_sites = {s.name: s for s in h_index}
    for name in sorted({e.site for e in plan.experiments}):
        o = o_index.get(name)
        h = h_sites.get(name)
        if h is None:
            problems.append(f"{name}: not a site of the hardened model")
            continue
        if site_key(o) != site_key(h):
            problems.append(f"{name}: {site_key(o)} in the original, {site_key(h)} hardened")
            continue
        if o.kind == "weight" and not np.array_equal(o_index.weight_array(o), h_index.weight_array(h)):
            problems.append(f"{name}: the hardened model holds other values")
    return problems


def covered_sites(model: ir.Model, index: SiteIndex, names: Iterable[str]) -> dict[str, bool]:
    """Per site: does every path from it to a graph output pass through a hardening node?"""
    outputs = {id(v) for v in model.graph.outputs}
    by_name: dict[str, ir.Value] = {}
    for v in model.graph.initializers.values():
        if v.name:
            by_name[v.name] = v
    for node in model.graph:
        for o in node.outputs:
            if o is not None and o.name:
                by_name[o.name] = o
    memo: dict[int, bool] = {}

    def reaches_output_unguarded(v: ir.Value) -> bool:
        key = id(v)
        if key in memo:
            return memo[key]
        memo[key] = False  # the graph is acyclic; this only stops revisits
        if key in outputs:
            memo[key] = True
            return True
        for consumer, _ in v.uses():
            if hardening_method(consumer):
                continue
            if any(o is not None and reaches_output_unguarded(o) for o in consumer.outputs):
                memo[key] = True
                return True
        return False

    out = {}
    for name in names:
        site = index.get(name)
        value = by_name.get(site.tensor_name)
        out[name] = value is not None and not reaches_output_unguarded(value)
    return out


# ---------------------------------------------------------------- clean metric and latency


@dataclass
class Clean:
    metric: str
    value: float
    outputs: dict[str, np.ndarray] = field(repr=False)


def clean_metric(model: ir.Model, data: Dataset, threads: int | None) -> Clean:
    outs = run_outputs(model, data, threads=threads)
    primary = next(iter(outs.values()))
    labels = data.labels
    if labels is None:
        return Clean("none", float("nan"), outs)
    if primary.ndim == 4:
        return Clean("miou", metrics.miou(primary, labels, primary.shape[1]), outs)
    return Clean("accuracy", metrics.accuracy(primary, labels), outs)


def latency(
    original: ir.Model, hardened: ir.Model, data: Dataset, batch: int, runs: int, threads: int | None, seed: int
) -> dict[str, Any]:
    """Median ms of one batch for both models, interleaved run by run in a seeded random order.

    Interleaving makes drift (turbo, other processes) hit both models alike; the paired figure is the
    median over iterations of the per-iteration ratio. With 1 intra-op thread the wall time equals the
    thread's CPU time here, so a busy second core moves it little.
    """
    sessions = [make_session(original, threads=threads), make_session(hardened, threads=threads)]
    names = [i.name for i in sessions[0].get_inputs()]
    feeds = {k: v[:batch] for k, v in data.feeds.items() if k in names}
    for s in sessions:
        for _ in range(10):
            s.run(None, feeds)
    times: list[list[float]] = [[], []]
    rng = np.random.default_rng(seed)
    for _ in range(runs):
        for i in rng.permutation(2):
            t0 = time.perf_counter()
            sessions[i].run(None, feeds)
            times[i].append(time.perf_counter() - t0)
    t0s, t1s = np.array(times[0]), np.array(times[1])
    before, after = float(np.median(t0s)) * 1e3, float(np.median(t1s)) * 1e3
    return {
        "before_ms": before, "after_ms": after, "overhead": after / before - 1,
        "paired_overhead": float(np.median(t1s / t0s)) - 1, "batch": int(next(iter(feeds.values())).shape[0]),
        "runs": runs, "threads": threads,
    }


# ---------------------------------------------------------------- campaigns


def plan_for(plan: Plan, model_path: Path) -> Plan:
    """The same experiments, bound to another model file."""
    d = plan.to_dict()
    d["model"] = str(model_path)
    d["model_sha256"] = file_sha256(model_path)
    return Plan.from_dict(d)


def run_one(
    plan: Plan, model_path: Path, data_path: Path, db: Path, args: argparse.Namespace, label: str
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    if args.reuse and db.exists():
        with Store(db) as store:
            stored = store.meta("plan")
            if (stored is not None and stored.get("model_sha256") == plan.model_sha256
                    and stored.get("experiments") == plan.to_dict()["experiments"]
                    and store.count() == len(plan.experiments)):
                rows = list(store.rows())
                note(args, f"  {label}: reusing the {len(rows)} stored experiments of {db.name}")
                return rows, aggregate(plan, rows), store.meta("clean", {})
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    cfg = EngineConfig(model_path=str(model_path), data_path=str(data_path), threads=args.threads,
                       critical=args.critical)
    if args.mode:
        cfg.mode = args.mode
    t0 = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int, live: dict[str, Any]) -> None:
        now = time.perf_counter()
        if now - last[0] > 30 or done == total:
            last[0] = now
            note(args, f"  {label}: {done}/{total} experiments, SDC-1 so far {live['sdc1']}")

    with Store(db) as store:
        result = run_campaign(plan, cfg, store, workers=args.workers, progress=progress)
        rows = list(store.rows())
    if result.interrupted:
        raise KeyboardInterrupt
    note(args, f"  {label}: {len(rows)} experiments in {time.perf_counter() - t0:.0f} s")
    return rows, result.summary, result.clean


def rates(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {k: wilson(sum(1 for r in rows if r[k]), len(rows)) for k in RATES}


def per_group(rows: Sequence[dict[str, Any]], key: str) -> dict[Any, dict[str, float]]:
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[r[key]].append(r)
    return {g: {**wilson(sum(1 for r in rs if r["sdc1"]), len(rs)), "images": float(np.mean(images_changed(rs)))}
            for g, rs in groups.items()}


def images_changed(rows: Sequence[dict[str, Any]], silent: bool = False) -> np.ndarray:
    """Per experiment, the fraction of eval images whose top-1 (or some pixel's class) changed.

    ``silent``: an experiment with a DUE (NaN/Inf output, a detectable error) counts as no silent change.
    """
    ordered = sorted(rows, key=lambda r: r["id"])
    return np.array([0.0 if silent and r["due"] else float(r["images_changed"] or 0.0) for r in ordered])


def flip_directions(plan: Plan, index: SiteIndex) -> dict[int, str]:
    """Per weight experiment: 'grows' (the flipped bit was 0: |w| increases), 'shrinks' (it was 1), 'sign'."""
    out: dict[int, str] = {}
    arrays: dict[str, np.ndarray] = {}
    for e in plan.experiments:
        if e.kind != "weight" or e.bit is None:
            continue
        if e.site not in arrays:
            arrays[e.site] = np.ascontiguousarray(index.weight_array(index.get(e.site))).reshape(-1)
        arr = arrays[e.site]
        if arr.dtype != np.float32:
            continue
        word = int(arr[e.index : e.index + 1].view(np.uint32)[0])
        out[e.id] = "sign" if e.bit == 31 else ("shrinks" if (word >> e.bit) & 1 else "grows")
    return out


def task_values(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """Each experiment's task metric (mIoU / accuracy vs labels); masked ones carry the clean value."""
    return np.array([float(r["metrics"].get("task_value", np.nan)) for r in sorted(rows, key=lambda r: r["id"])])


# ---------------------------------------------------------------- main


def evaluate(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    model_path, data_path = resolve(args.model, args.data)
    loaded: LoadedModel = load_model(model_path)
    data = load_data(data_path, loaded.inputs())
    index = enumerate_sites(loaded.model, loaded.value_shapes)
    selected = index.select(args.target, args.sites)
    sites = [s for s in selected if s.elements is not None]
    unknown = sorted(s.name for s in selected if s.elements is None)
    if unknown:  # e.g. Resize/Concat outputs whose shape inference cannot give
        note(args, f"left out {len(unknown)} sites of unknown shape: {', '.join(unknown)}")
    bits = parse_bits(args.bits)
    plan = make_plan(model_path, sites, ["flip"], bits, args.faults, None, CONFIDENCE, seed=args.seed,
                     target=args.target, options={"critical": args.critical, "data": str(data_path)})
    note(args, f"{model_path.name}: plan of {len(plan.experiments)} experiments over {len(sites)} {args.target} "
               f"sites, bits {args.bits}, seed {args.seed} ({plan.mode}; fault space {plan.population:,})")
    directions = flip_directions(plan, index)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    clean0 = clean_metric(loaded.model, data, args.threads)

    models: dict[str, dict[str, Any]] = {"original": {"path": model_path, "model": loaded.model}}
    for method in methods:
        names, _, pct = method.partition("@")  # "ranger@99.9": ranger's bound at that percentile
        result = harden(loaded.model, names.split("+"), data,
                        HardenOptions(threads=args.threads, percentile=float(pct) if pct else None))
        path = workdir / f"{model_path.stem}_{method.replace('+', '_').replace('@', '_p')}.onnx"
        save_model(result.model, path)
        hardened = load_model(path)
        h_index = enumerate_sites(hardened.model, hardened.value_shapes)
        problems = check_sites(plan, (index, loaded.model), (h_index, hardened.model))
        if problems:
            raise SystemExit(f"{method}: the plan does not fit the hardened model:\n  " + "\n  ".join(problems[:20]))
        changed = sum(len(r.changes) for r in result.reports)
        skipped = [s.to_dict() for r in result.reports for s in r.skips]
        models[method] = {"path": path, "model": hardened.model, "index": h_index, "changed": changed,
                          "skipped": skipped}
        note(args, f"{method}: {changed} changes, {len(skipped)} skipped; all {len({e.site for e in plan.experiments})} "
                   f"planned sites present with the same shape (and values) -> {path.name}")

    report: dict[str, Any] = {
        "schema": "onnxfi.bench.hardening_eval/1",
        "model": str(model_path), "data": str(data_path), "samples": data.size,
        "target": args.target, "bits": args.bits, "faults": len(plan.experiments), "seed": args.seed,
        "plan_mode": plan.mode, "population": plan.population, "strata": len(plan.strata),
        "sites": len({e.site for e in plan.experiments}), "sites_unknown_shape": unknown, "confidence": CONFIDENCE,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version(),
                    "onnxruntime": onnxruntime.__version__, "onnxfi": onnxfi.__version__},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "models": {},
    }
    all_rows: dict[str, list[dict[str, Any]]] = {}
    for label, entry in models.items():
        p = plan if label == "original" else plan_for(plan, entry["path"])
        rows, summary, clean = run_one(p, entry["path"], data_path, workdir / f"{label}.db", args, label)
        all_rows[label] = rows
        m: dict[str, Any] = {
            "path": str(entry["path"]), "sha256": p.model_sha256,
            "campaign_clean": clean, "rates": rates(rows),
            "rates_weighted": {k: summary["rates_weighted"].get(k) for k in RATES},
            "per_site": {str(k): v for k, v in per_group(rows, "site").items()},
            "per_bit": {str(k): v for k, v in sorted(per_group(rows, "bit").items(), key=lambda kv: -int(kv[0]))},
            "task_metric": next((r["metrics"].get("task_metric") for r in rows if r["metrics"]), None),
            "sdc1_images": bootstrap_mean(images_changed(rows), args.bootstrap, args.seed),
            "sdc1_images_silent": bootstrap_mean(images_changed(rows, silent=True), args.bootstrap, args.seed),
        }
        if directions:
            groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for r in rows:
                groups[directions.get(r["id"], "other")].append(r)
            m["per_direction"] = {
                d: {"sdc1": wilson(sum(1 for r in rs if r["sdc1"]), len(rs)),
                    "sdc1_images": float(np.mean(images_changed(rs)))}
                for d, rs in sorted(groups.items())
            }
        if label != "original":
            m["changed"], m["skipped"] = entry["changed"], entry["skipped"]
            cover = covered_sites(entry["model"], entry["index"], m["per_site"])
            m["covered"] = cover
            m["rates_covered"] = rates([r for r in rows if cover[r["site"]]])
            m["rates_uncovered"] = rates([r for r in rows if not cover[r["site"]]])
            cm = clean_metric(entry["model"], data, args.threads)
            m["clean"] = {"metric": cm.metric, "before": clean0.value, "after": cm.value,
                          "change": cm.value - clean0.value}
            m["latency"] = latency(loaded.model, entry["model"], data, args.batch, args.latency_runs,
                                   args.latency_threads, args.seed)
        else:
            m["clean"] = {"metric": clean0.metric, "before": clean0.value, "after": clean0.value, "change": 0.0}
        report["models"][label] = m

    base = report["models"]["original"]
    base_values = task_values(all_rows["original"])
    base["task_value_mean"] = bootstrap_mean(base_values, args.bootstrap, args.seed)
    for label, m in report["models"].items():
        if label == "original":
            continue
        m["sdc1_factor"] = factor(base["rates"]["sdc1"]["rate"], m["rates"]["sdc1"]["rate"])
        bi, hi = base["sdc1_images"], m["sdc1_images"]
        m["sdc1_images_factor"] = factor(bi["mean"], hi["mean"])
        m["sdc1_images_overlap"] = overlap(bi, hi)
        bs, hs = base["sdc1_images_silent"], m["sdc1_images_silent"]
        m["sdc1_images_silent_factor"] = factor(bs["mean"], hs["mean"])
        m["sdc1_images_silent_overlap"] = overlap(bs, hs)
        m["sdc1_overlap"] = overlap(base["rates"]["sdc1"], m["rates"]["sdc1"])
        wb, wh = base["rates_weighted"]["sdc1"], m["rates_weighted"]["sdc1"]
        m["sdc1_weighted_factor"] = factor(wb["rate"], wh["rate"])
        m["sdc1_weighted_overlap"] = overlap(wb, wh)
        covered_base = rates([r for r in all_rows["original"] if m["covered"][r["site"]]])
        cov_b = images_changed([r for r in all_rows["original"] if m["covered"][r["site"]]])
        cov_h = images_changed([r for r in all_rows[label] if m["covered"][r["site"]]])
        if cov_b.size:
            m["sdc1_images_covered_original"] = bootstrap_mean(cov_b, args.bootstrap, args.seed)
            m["sdc1_images_covered"] = bootstrap_mean(cov_h, args.bootstrap, args.seed)
            m["sdc1_images_covered_factor"] = factor(float(cov_b.mean()), float(cov_h.mean()))
            m["sdc1_images_covered_overlap"] = overlap(m["sdc1_images_covered_original"], m["sdc1_images_covered"])
        m["rates_covered_original"] = covered_base
        m["sdc1_covered_factor"] = factor(covered_base["sdc1"]["rate"], m["rates_covered"]["sdc1"]["rate"])
        m["sdc1_covered_overlap"] = overlap(covered_base["sdc1"], m["rates_covered"]["sdc1"])
        values = task_values(all_rows[label])
        m["task_value_mean"] = bootstrap_mean(values, args.bootstrap, args.seed)
        m["task_value_paired_difference"] = bootstrap_mean(values - base_values, args.bootstrap, args.seed)
    return report


def fmt_rate(r: dict[str, float] | None) -> str:
    if not r:
        return "-"
    return f"{100 * r['rate']:6.2f}% [{100 * r['lo']:.2f}, {100 * r['hi']:.2f}]"


def print_report(report: dict[str, Any]) -> None:
    models = report["models"]
    base = models["original"]
    print(f"{Path(report['model']).name}: {report['faults']} single bit flips of {report['target']} (bits "
          f"{report['bits']}, {report['sites']} sites, {report['strata']} strata, seed {report['seed']}), "
          f"{report['samples']} eval samples; {int(100 * report['confidence'])}% intervals")
    metric = base["clean"]["metric"]
    print(f"\nper experiment (Wilson intervals); clean {metric} and latency overhead vs the original")
    head = f"{'model':<10} {'clean ' + metric:>17} {'latency':>8} {'SDC-1':>26} {'DUE':>26} {'critical':>26} " \
           f"{'SDC-1 /':>8} {'overlap':>7}"
    print(head)
    for label, m in models.items():
        c = m["clean"]
        clean = f"{c['after']:.4f}" + ("" if label == "original" else f" ({100 * c['change']:+.2f}pp)")
        lat = "" if label == "original" else f"{100 * m['latency']['overhead']:+.1f}%"
        fac = "" if label == "original" else f"{m['sdc1_factor']:.2f}x"
        ovl = "" if label == "original" else ("yes" if m["sdc1_overlap"] else "no")
        print(f"{label:<10} {clean:>17} {lat:>8} {fmt_rate(m['rates']['sdc1']):>26} {fmt_rate(m['rates']['due']):>26} "
              f"{fmt_rate(m['rates']['critical']):>26} {fac:>8} {ovl:>7}")
    print("\nSDC-1 per inference: fraction of (fault, image) pairs whose top-1 (or some pixel's class) changed; "
          "a fault\npersists for every eval image, so each image is one inference under it; bootstrap 99% interval "
          "over experiments")
    for label, m in models.items():
        t = m["sdc1_images"]
        extra = "" if label == "original" else (
            f"  {m['sdc1_images_factor']:.2f}x, overlap {'yes' if m['sdc1_images_overlap'] else 'no'}")
        print(f"{label:<10} {100 * t['mean']:6.3f}% [{100 * t['lo']:.3f}, {100 * t['hi']:.3f}]{extra}")
    print("silent: experiments with a DUE (NaN/Inf in an output, detectable) count as no SDC")
    for label, m in models.items():
        t = m["sdc1_images_silent"]
        extra = "" if label == "original" else (
            f"  {m['sdc1_images_silent_factor']:.2f}x, overlap {'yes' if m['sdc1_images_silent_overlap'] else 'no'}")
        print(f"{label:<10} {100 * t['mean']:6.3f}% [{100 * t['lo']:.3f}, {100 * t['hi']:.3f}]{extra}")
    for label, m in models.items():
        if "sdc1_images_covered" in m:
            b, h = m["sdc1_images_covered_original"], m["sdc1_images_covered"]
            print(f"{label:<10} covered sites only: {100 * b['mean']:.3f}% [{100 * b['lo']:.3f}, {100 * b['hi']:.3f}] -> "
                  f"{100 * h['mean']:.3f}% [{100 * h['lo']:.3f}, {100 * h['hi']:.3f}]  "
                  f"{m['sdc1_images_covered_factor']:.2f}x, overlap {'yes' if m['sdc1_images_covered_overlap'] else 'no'}")
    if "per_direction" in base:
        print("\nSDC-1 by what the flip does to |w| (per experiment k/n, per inference %)")
        for d in base["per_direction"]:
            cells = []
            for x in models:
                r = models[x]["per_direction"][d]
                cells.append(f"{r['sdc1']['k']:>4}/{r['sdc1']['n']:<4} {100 * r['sdc1_images']:6.2f}%")
            print(f"  {d:<8} " + " | ".join(cells))
    print("\nweighted by stratum population (uniform over every targeted bit; normal intervals)")
    for label, m in models.items():
        extra = "" if label == "original" else (
            f"  {m['sdc1_weighted_factor']:.2f}x, overlap {'yes' if m['sdc1_weighted_overlap'] else 'no'}")
        print(f"{label:<10} SDC-1 {fmt_rate(m['rates_weighted']['sdc1'])}  DUE {fmt_rate(m['rates_weighted']['due'])}"
              f"  critical {fmt_rate(m['rates_weighted']['critical'])}{extra}")
    print("\nSDC-1 over the sites each method covers (every path to an output passes a hardening node)")
    for label, m in models.items():
        if label == "original":
            continue
        n_cov = sum(m["covered"].values())
        print(f"{label:<10} {n_cov}/{len(m['covered'])} sites covered: original {fmt_rate(m['rates_covered_original']['sdc1'])}"
              f" -> {fmt_rate(m['rates_covered']['sdc1'])}  {m['sdc1_covered_factor']:.2f}x, overlap "
              f"{'yes' if m['sdc1_covered_overlap'] else 'no'}; uncovered sites: {fmt_rate(m['rates_uncovered']['sdc1'])}")
    labels = list(models)
    print("\nSDC-1 per site (per experiment k/n, per inference %)" + "".join(f" | {x}" for x in labels))
    for site in base["per_site"]:
        cells = []
        for x in labels:
            r = models[x]["per_site"].get(site)
            mark = "" if x == "original" else ("*" if models[x]["covered"].get(site) else " ")
            cells.append(f"{r['k']:>4}/{r['n']:<4} {100 * r['images']:5.1f}%{mark}" if r else "-")
        print(f"  {site[:48]:<48} " + " | ".join(cells))
    print("  (* = covered)")
    print("\nSDC-1 per bit (per experiment k/n, per inference %)" + "".join(f" | {x}" for x in labels))
    for bit in base["per_bit"]:
        cells = [models[x]["per_bit"][bit] for x in labels]
        print(f"  bit {bit:>3} " + " | ".join(f"{c['k']:>4}/{c['n']:<4} {100 * c['images']:5.1f}%" for c in cells))
    name = base.get("task_metric")
    print(f"\nmean {name} per experiment (bootstrap 99% interval; paired difference vs the original)")
    for label, m in models.items():
        t = m["task_value_mean"]
        line = f"{label:<10} {t['mean']:.4f} [{t['lo']:.4f}, {t['hi']:.4f}]"
        if label != "original":
            d = m["task_value_paired_difference"]
            line += f"   difference {d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"
        print(line)
    for label, m in models.items():
        if label != "original":
            lat = m["latency"]
            print(f"\nlatency {label}: {lat['before_ms']:.3f} -> {lat['after_ms']:.3f} ms median "
                  f"({100 * lat['overhead']:+.1f}%; paired {100 * lat['paired_overhead']:+.1f}%), batch {lat['batch']}, "
                  f"{lat['runs']} interleaved runs each, {lat['threads'] or 'default'} thread(s)", end="")
    print()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        report = evaluate(args, workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="onnxfi_hardening_") as tmp:
            report = evaluate(args, Path(tmp))
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
