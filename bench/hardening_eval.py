"""Does hardening cut the damage that faults do? One plan, the same experiments on the original and each hardened model.

Usage (from the repository root):

    .venv/bin/python bench/hardening_eval.py digits_cnn                      # weights, bits 23-30, 2000 faults
    .venv/bin/python bench/hardening_eval.py fashion_cnn --json out.json
    .venv/bin/python bench/hardening_eval.py fashion_seg --target activations --methods relumax --faults 1000
    .venv/bin/python bench/hardening_eval.py path/to/model.onnx --data eval.npz --methods ranger,relumax
    .venv/bin/python bench/hardening_eval.py digits_cnn --fault-model transient --faults 3000 --methods all
    .venv/bin/python bench/hardening_eval.py fashion_cnn --ber 1e-6,1e-5,1e-4 --per-rate 25 --methods all

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

Two more modes (bench/HARDENING.md, "Per inference and under fault rates"):

``--fault-model transient``: the plan is ``make_plan(..., target="activations", fault_model="transient",
images=<eval samples>)`` (bits: all unless ``--bits``): each experiment flips one bit of one activation
element in ONE eval image's inference, the same experiments on every model. Per model: SDC-1 per inference
(= per experiment) with its Wilson interval, the reduction factor and interval overlap vs the original, the
silent SDC-1 (no NaN/Inf output), DUE, critical and per-bit rates; the task metric of the faulted image
(accuracy 0/1 or that image's mIoU) and its confidence (mean over pixels of the max softmax probability:
the row's ``mean_msp``, or the clean image's when the outputs are bitwise golden), both with bootstrap
intervals and paired differences; ``--check-confidence N`` recomputes N of them with a fault node. An
experiment that crashed on any model is left out of every model's figures (and listed).

``--ber RATES``: ``onnxfi.ber.make_ber_plan`` over the weight sites (``--per-rate`` draws per rate, bits all
unless ``--bits``); a draw's flipped positions depend only on its seed and the sites' sizes, so every model
gets the same positions (``protect`` rewrites weight values by design: allowed, counted). Per rate and
model: ``onnxfi.ber.ber_summary`` (mean accuracy / mIoU with a t interval across draws, outcome rates), the
paired difference vs the original over the same draws (t interval) and whether the intervals overlap.

``--methods all`` runs ranger, ranger@99.9, clipact, relumax, protect and nan-guard; a method that cannot act
on a fault model (protect under transient activation faults) still runs, as a control, with a note.

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
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime

import onnxfi
from onnxfi import metrics, zoo
from onnxfi.ber import ber_sizes, ber_summary, make_ber_plan, t_quantile
from onnxfi.campaign import run_campaign
from onnxfi.data import Dataset, load_data
from onnxfi.engine import EngineConfig
from onnxfi.harden import HardenOptions, harden, run_outputs
from onnxfi.model import LoadedModel, load_model, save_model
from onnxfi.passes import hardening_method
from onnxfi.passes.activation_fault import InsertActivationFault, required_opset
from onnxfi.passes.opset import upgrade_opset
from onnxfi.plan import Plan, file_sha256, make_plan, parse_bits
from onnxfi.runtime import make_session
from onnxfi.sites import Site, SiteIndex, enumerate_sites
from onnxfi.stats import rate_with_ci
from onnxfi.store import Store
from onnxfi.summary import aggregate

CONFIDENCE = 0.99
RATES = ("sdc1", "due", "critical")
# --methods all
ALL_METHODS = ("ranger", "ranger@99.9", "clipact", "relumax", "protect", "nan-guard")
# the outcome flags the transient and fault-rate modes report
FLAGS = ("sdc1", "sdc5", "critical", "due", "masked")
# what a method can and cannot do under each fault model (printed with the tables)
METHOD_NOTES = {
    "protect": "rewrites fragile weight values only (no nodes): under transient activation faults a no-op control; "
               "under bit error rates the same bit positions flip in its (slightly different) weights",
    "nan-guard": "NaN -> 0 and +-Inf -> +-max at the graph outputs, residual adds and the classifier input: "
                 "turns a DUE into a finite output (SDC or masked), clips nothing else",
}


# ---------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("model", help="zoo name (digits_cnn, fashion_cnn, fashion_seg, ...) or .onnx path")
    p.add_argument("--data", help="evaluation + calibration data (.npz); default: the zoo model's eval data")
    p.add_argument("--methods", default="ranger,relumax,clipact", help="comma list of hardening methods, each "
                   "evaluated on its own (a 'a+b' entry composes a and b; 'ranger@P': ranger's bound at the P-th "
                   "percentile); 'all' = " + ",".join(ALL_METHODS) + "; 'none' = the original only; "
                   "default ranger,relumax,clipact")
    p.add_argument("--target", default="weights", choices=("weights", "activations"), help="fault sites")
    p.add_argument("--fault-model", default="persistent", choices=("persistent", "transient"),
                   help="persistent (default: one fault for every eval image) or transient (one bit of one "
                   "activation element in ONE eval image's inference; implies --target activations)")
    p.add_argument("--ber", metavar="RATES", help="fault-rate mode: comma list of bit error rates over the weight "
                   "bits (e.g. 1e-6,1e-5,1e-4); --per-rate draws each, the same draws on every model")
    p.add_argument("--per-rate", type=int, default=25, help="--ber: draws per rate (default 25)")
    p.add_argument("--check-confidence", type=int, default=0, metavar="N",
                   help="transient: recompute the faulted image's confidence of the first N experiments of each "
                   "model with a fault node (InsertActivationFault) and compare with the stored rows")
    p.add_argument("--bits", default=None, help="bits to flip (fp32 30..23 = exponent); 'all' for every bit; "
                   "default 23-30 (persistent), all (transient, --ber)")
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
    if args.ber and args.fault_model == "transient":
        p.error("--ber and --fault-model transient are separate modes: give one")
    if args.ber and args.target == "activations":
        p.error("--ber flips weight bits: leave out --target activations")
    if args.per_rate < 1 or args.check_confidence < 0:
        p.error("--per-rate must be at least 1 and --check-confidence at least 0")
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


# ---------------------------------------------------------------- hardened models


def method_list(text: str) -> list[str]:
    """``--methods``: a comma list, ``all`` (every method, ranger also at the 99.9th percentile) or ``none``."""
    items = [m.strip() for m in text.split(",") if m.strip()]
    if items == ["none"]:
        return []
    out: list[str] = []
    for m in items:
        for x in (ALL_METHODS if m == "all" else (m,)):
            if x not in out:
                out.append(x)
    return out


def harden_models(
    args: argparse.Namespace, loaded: LoadedModel, data: Dataset, model_path: Path, workdir: Path,
    methods: Sequence[str], check: Callable[[SiteIndex, LoadedModel], list[str]], fits: str,
) -> dict[str, dict[str, Any]]:
    """The original and one hardened model per method (saved under ``workdir``), each checked by ``check``
    (the reasons the plan cannot run unchanged on it; the script stops on any)."""
    models: dict[str, dict[str, Any]] = {"original": {"path": model_path, "model": loaded.model}}
    for method in methods:
        names, _, pct = method.partition("@")  # "ranger@99.9": ranger's bound at that percentile
        result = harden(loaded.model, names.split("+"), data,
                        HardenOptions(threads=args.threads, percentile=float(pct) if pct else None))
        path = workdir / f"{model_path.stem}_{method.replace('+', '_').replace('@', '_p')}.onnx"
        save_model(result.model, path)
        hardened = load_model(path)
        h_index = enumerate_sites(hardened.model, hardened.value_shapes)
        problems = check(h_index, hardened)
        if problems:
            raise SystemExit(f"{method}: the plan does not fit the hardened model:\n  " + "\n  ".join(problems[:20]))
        changed = sum(len(r.changes) for r in result.reports)
        skipped = [s.to_dict() for r in result.reports for s in r.skips]
        models[method] = {"path": path, "model": hardened.model, "index": h_index, "changed": changed,
                          "skipped": skipped}
        note(args, f"{method}: {changed} changes, {len(skipped)} skipped; {fits} -> {path.name}")
    return models


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "onnxfi": onnxfi.__version__}


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
    args.bits = args.bits or "23-30"
    bits = parse_bits(args.bits)
    plan = make_plan(model_path, sites, ["flip"], bits, args.faults, None, CONFIDENCE, seed=args.seed,
                     target=args.target, options={"critical": args.critical, "data": str(data_path)})
    note(args, f"{model_path.name}: plan of {len(plan.experiments)} experiments over {len(sites)} {args.target} "
               f"sites, bits {args.bits}, seed {args.seed} ({plan.mode}; fault space {plan.population:,})")
    directions = flip_directions(plan, index)
    methods = method_list(args.methods)
    clean0 = clean_metric(loaded.model, data, args.threads)

    n_sites = len({e.site for e in plan.experiments})
    models = harden_models(
        args, loaded, data, model_path, workdir, methods,
        lambda h_index, hardened: check_sites(plan, (index, loaded.model), (h_index, hardened.model)),
        f"all {n_sites} planned sites present with the same shape (and values)")

    report: dict[str, Any] = {
        "schema": "onnxfi.bench.hardening_eval/1",
        "model": str(model_path), "data": str(data_path), "samples": data.size,
        "target": args.target, "bits": args.bits, "faults": len(plan.experiments), "seed": args.seed,
        "plan_mode": plan.mode, "design": plan.design, "population": plan.population, "strata": len(plan.strata),
        "sites": len({e.site for e in plan.experiments}), "sites_unknown_shape": unknown, "confidence": CONFIDENCE,
        "machine": machine(),
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
            # the plan design's estimator (onnxfi analyze's headline; the summary's "rates")
            "rates_weighted": {k: summary["rates"].get(k) for k in RATES},
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
    print(f"\nonnxfi's headline estimator for the plan's {report.get('design', '')} design (uniform over every "
          f"targeted bit)")
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
        per_bit = [models[x]["per_bit"][bit] for x in labels]
        print(f"  bit {bit:>3} " + " | ".join(f"{c['k']:>4}/{c['n']:<4} {100 * c['images']:5.1f}%" for c in per_bit))
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


# ---------------------------------------------------------------- transient faults (one inference)


def image_confidence(output: np.ndarray) -> np.ndarray:
    """Per image: the mean over its pixels (one for a classifier) of the max softmax probability over axis 1,
    as the stored rows' ``mean_msp`` computes it (float64; a NaN anywhere gives NaN)."""
    out = np.empty(len(output))
    for i in range(len(output)):  # one image at a time: a float64 copy of a segmentation batch is large
        msp = metrics.max_softmax_probability(metrics.softmax(output[i:i + 1].astype(np.float64), axis=1), axis=1)
        out[i] = float(np.mean(msp))
    return out


def row_confidence(row: dict[str, Any], clean: np.ndarray) -> float:
    """The faulted image's confidence: the row's own for a changed output, the clean image's when masked
    (outputs bitwise equal); NaN for a DUE (no distribution) or a crash."""
    if row["masked"]:
        return float(clean[int(row["image"])])
    v = (row["metrics"] or {}).get("mean_msp")
    return float(v) if isinstance(v, (int, float)) and np.isfinite(v) else float("nan")


def by_id(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: r["id"])


def transient_stats(rows: Sequence[dict[str, Any]], clean_conf: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    ordered = by_id(rows)
    n = len(ordered)
    m: dict[str, Any] = {"rates": {f: wilson(sum(1 for r in ordered if r[f]), n) for f in FLAGS}}
    m["rates"]["sdc1_silent"] = wilson(sum(1 for r in ordered if r["sdc1"] and not r["due"]), n)
    m["rates"]["crash"] = wilson(sum(1 for r in ordered if r["crash"]), n)
    values = np.array([float((r["metrics"] or {}).get("task_value", np.nan)) for r in ordered])
    cleans = np.array([float((r["metrics"] or {}).get("clean_value", np.nan)) for r in ordered])
    conf = np.array([row_confidence(r, clean_conf) for r in ordered])
    for key, name in (("bit", "per_bit"), ("site", "per_site")):
        groups: dict[Any, list[int]] = defaultdict(list)
        for i, r in enumerate(ordered):
            groups[r[key]].append(i)
        m[name] = {}
        for g, idx in sorted(groups.items(), key=lambda kv: -kv[0] if key == "bit" else 0):
            rs = [ordered[i] for i in idx]
            v, c = values[idx], conf[idx]
            m[name][str(g)] = {
                "sdc1": wilson(sum(1 for r in rs if r["sdc1"]), len(rs)), "due": sum(1 for r in rs if r["due"]),
                "task_value_mean": float(np.nanmean(v)) if np.isfinite(v).any() else None,
                "confidence_mean": float(np.nanmean(c)) if np.isfinite(c).any() else None,
                "confidence_clean_mean": float(np.nanmean(clean_conf[[int(r["image"]) for r in rs]][np.isfinite(c)]))
                if np.isfinite(c).any() else None,
            }
    ok = np.isfinite(values)
    m["task_metric"] = next((r["metrics"].get("task_metric") for r in ordered if r["metrics"]), None)
    m["task_value_mean"] = bootstrap_mean(values[ok], args.bootstrap, args.seed)
    m["task_value_clean_mean"] = float(np.nanmean(cleans))
    m["task_value_drop"] = bootstrap_mean(cleans[ok] - values[ok], args.bootstrap, args.seed)
    fin = np.isfinite(conf)
    m["confidence"] = bootstrap_mean(conf[fin], args.bootstrap, args.seed) if fin.any() else None
    m["confidence_left_out"] = int((~fin).sum())
    images = np.array([int(r["image"]) for r in ordered])
    m["confidence_clean_same_images"] = float(np.mean(clean_conf[images]))
    m["confidence_clean_all_images"] = float(np.nanmean(clean_conf))
    m["paths"] = dict(Counter(str(r.get("path")) for r in ordered).most_common())
    m["_values"], m["_conf"], m["_ids"] = values, conf, [r["id"] for r in ordered]
    return m


def recompute_confidence(
    model_path: Path, plan: Plan, rows: Sequence[dict[str, Any]], data: Dataset, n: int, clean: np.ndarray,
    threads: int | None,
) -> dict[str, Any]:
    """An independent check of ``row_confidence`` on the first ``n`` experiments: the model rebuilt with the
    experiment's fault node on its image (``InsertActivationFault``, the naive transient path's pass), that
    image run alone, its confidence computed here."""
    exps = {e.id: e for e in plan.experiments}
    diffs: list[float] = []
    both_nan = 0
    for r in by_id(rows)[:n]:
        e = exps[r["id"]]
        loaded = load_model(model_path, check=False)
        site = enumerate_sites(loaded.model, loaded.value_shapes).get(e.site)
        fault_pass = InsertActivationFault(site, e.index, e.fault_obj(), 0, np.random.default_rng(e.seed))
        model = upgrade_opset(loaded.model, required_opset(site, fault_pass.fault))
        fault_pass(model)
        one = Dataset(data.batch(int(e.image or 0), int(e.image or 0) + 1), None, data.source,
                      {k: data.axis(k) for k in data.feeds})
        mine = float(image_confidence(next(iter(run_outputs(model, one, threads=threads).values())))[0])
        stored = row_confidence(r, clean)
        if not np.isfinite(mine) and not np.isfinite(stored):
            both_nan += 1
        else:
            diffs.append(abs(mine - stored))
    d = np.array(diffs)
    return {"n": min(n, len(rows)), "both_nan": both_nan, "compared": int(d.size),
            "max_abs_diff": float(np.nanmax(d)) if d.size else None,
            "not_finite_diff": int((~np.isfinite(d)).sum())}


def evaluate_transient(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    model_path, data_path = resolve(args.model, args.data)
    loaded = load_model(model_path)
    data = load_data(data_path, loaded.inputs())
    index = enumerate_sites(loaded.model, loaded.value_shapes)
    selected = index.select("activations", args.sites)
    sites = [s for s in selected if s.elements is not None]
    unknown = sorted(s.name for s in selected if s.elements is None)
    args.bits = args.bits or "all"
    plan = make_plan(model_path, sites, ("flip",), parse_bits(args.bits), args.faults, None, CONFIDENCE,
                     seed=args.seed, target="activations", fault_model="transient", images=data.size,
                     options={"critical": args.critical, "data": str(data_path)})
    n_sites = len({e.site for e in plan.experiments})
    note(args, f"{model_path.name}: transient plan of {len(plan.experiments)} experiments over {n_sites} activation "
               f"sites x {data.size} images, bits {args.bits}, seed {args.seed} (fault space {plan.population:,})")
    models = harden_models(
        args, loaded, data, model_path, workdir, method_list(args.methods),
        lambda h_index, hardened: check_sites(plan, (index, loaded.model), (h_index, hardened.model)),
        f"all {n_sites} planned activation sites present with the same shape")
    report: dict[str, Any] = {
        "schema": "onnxfi.bench.hardening_eval.transient/1", "fault_model": "transient",
        "model": str(model_path), "data": str(data_path), "samples": data.size, "target": "activations",
        "bits": args.bits, "faults": len(plan.experiments), "seed": args.seed, "population": plan.population,
        "sites": n_sites, "sites_unknown_shape": unknown,
        "sites_left_out": plan.options.get("left_out_not_per_inference", []), "confidence": CONFIDENCE,
        "machine": machine(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "models": {},
    }
    runs: dict[str, tuple[Plan, list[dict[str, Any]], dict[str, Any], Clean, np.ndarray]] = {}
    for label, entry in models.items():
        p = plan if label == "original" else plan_for(plan, entry["path"])
        rows, summary, _ = run_one(p, entry["path"], data_path, workdir / f"transient_{label}.db", args, label)
        cm = clean_metric(entry["model"], data, args.threads)
        runs[label] = (p, rows, summary, cm, image_confidence(next(iter(cm.outputs.values()))))
    # an experiment that crashed (e.g. timed out on a loaded machine) on any model leaves every model's tables
    crashed = sorted({int(r["id"]) for _, rows, _, _, _ in runs.values() for r in rows if r["crash"]})
    report["crashed_left_out"] = {label: [int(r["id"]) for r in rows if r["crash"]]
                                  for label, (_, rows, _, _, _) in runs.items()}
    if crashed:
        note(args, f"{len(crashed)} experiments crashed on some model; left out of every model's figures: {crashed}")
    crashed_ids = set(crashed)
    for label, (p, all_rows, summary, cm, clean_conf) in runs.items():
        entry = models[label]
        rows = [r for r in all_rows if int(r["id"]) not in crashed_ids]
        m = transient_stats(rows, clean_conf, args)
        m["path"], m["sha256"] = str(entry["path"]), p.model_sha256
        m["clean"] = {"metric": cm.metric, "value": cm.value}
        m["onnxfi_per_inference"] = summary.get("per_inference", {}).get("sdc1")
        if label != "original":
            m["changed"], m["skipped"] = entry["changed"], entry["skipped"]
        if METHOD_NOTES.get(label):
            m["note"] = METHOD_NOTES[label]
        if args.check_confidence:
            m["confidence_check"] = recompute_confidence(entry["path"], p, rows, data, args.check_confidence,
                                                         clean_conf, args.threads)
            note(args, f"  {label}: confidence check {m['confidence_check']}")
        report["models"][label] = m
    base = report["models"]["original"]
    base_silent = base["rates"]["sdc1_silent"]
    for label, m in report["models"].items():
        if label == "original":
            continue
        if m["_ids"] != base["_ids"]:
            raise SystemExit(f"{label}: the stored experiments differ from the original's")
        b, h = base["rates"]["sdc1"], m["rates"]["sdc1"]
        m["sdc1_factor"], m["sdc1_overlap"] = factor(b["rate"], h["rate"]), overlap(b, h)
        hs = m["rates"]["sdc1_silent"]
        m["sdc1_silent_factor"], m["sdc1_silent_overlap"] = factor(base_silent["rate"], hs["rate"]), overlap(base_silent, hs)
        m["task_value_paired_difference"] = bootstrap_mean(
            np.nan_to_num(m["_values"] - base["_values"]), args.bootstrap, args.seed)
        fin = np.isfinite(m["_conf"]) & np.isfinite(base["_conf"])
        if fin.any():
            m["confidence_paired_difference"] = bootstrap_mean(m["_conf"][fin] - base["_conf"][fin], args.bootstrap,
                                                               args.seed)
    for m in report["models"].values():
        for k in ("_values", "_conf", "_ids"):
            del m[k]
    return report


def fmt_mean(t: dict[str, float] | None, digits: int = 4, sign: bool = False) -> str:
    if not t:
        return "-"
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    return f"{f.format(t['mean'])} [{f.format(t['lo'])}, {f.format(t['hi'])}]"


def print_transient(report: dict[str, Any]) -> None:
    models = report["models"]
    base = models["original"]
    print(f"{Path(report['model']).name}: {report['faults']} transient single bit flips (bits {report['bits']}): "
          f"each one activation element of ONE of {report['samples']} eval images' inference, {report['sites']} "
          f"sites, seed {report['seed']}; the same experiments on every model; {int(100 * report['confidence'])}% "
          f"intervals")
    if report["sites_left_out"]:
        print(f"left out (no batch axis): {', '.join(report['sites_left_out'])}")
    crashed = sorted({i for ids in report["crashed_left_out"].values() for i in ids})
    if crashed:
        print(f"left out of every model's figures: {len(crashed)} experiments that crashed on some model ("
              + "; ".join(f"{x}: {len(ids)}" for x, ids in report["crashed_left_out"].items() if ids)
              + "); the figures below are over the other " + str(report["faults"] - len(crashed)))
    metric = base["clean"]["metric"]
    print("\nper inference = per experiment (Wilson); silent = SDC-1 without NaN/Inf in the output; factor and "
          "overlap vs the original")
    print(f"{'model':<12} {'clean ' + metric:>14} {'SDC-1 per inference':>26} {'/':>7} {'ovl':>4} "
          f"{'silent SDC-1':>26} {'/':>7} {'ovl':>4} {'DUE':>24} {'critical':>24}")
    for label, m in models.items():
        c = m["clean"]["value"]
        clean = f"{c:.4f}" + ("" if label == "original" else f" {100 * (c - base['clean']['value']):+.2f}pp")
        fac = "" if label == "original" else f"{m['sdc1_factor']:.2f}x"
        ovl = "" if label == "original" else ("yes" if m["sdc1_overlap"] else "no")
        sfac = "" if label == "original" else f"{m['sdc1_silent_factor']:.2f}x"
        sovl = "" if label == "original" else ("yes" if m["sdc1_silent_overlap"] else "no")
        print(f"{label:<12} {clean:>14} {fmt_rate(m['rates']['sdc1']):>26} {fac:>7} {ovl:>4} "
              f"{fmt_rate(m['rates']['sdc1_silent']):>26} {sfac:>7} {sovl:>4} {fmt_rate(m['rates']['due']):>24} "
              f"{fmt_rate(m['rates']['critical']):>24}")
    print("(onnxfi's own per-inference estimate, summary.aggregate: "
          + ", ".join(f"{x} {100 * m['onnxfi_per_inference']['rate']:.2f}%" for x, m in models.items()
                      if m.get("onnxfi_per_inference")) + ")")
    labels = list(models)
    print("\nSDC-1 per bit (k/n, DUE count)" + "".join(f" | {x}" for x in labels))
    quiet = []
    for bit in base["per_bit"]:
        cells = [models[x]["per_bit"][bit] for x in labels]
        if not any(c["sdc1"]["k"] or c["due"] for c in cells):
            quiet.append(bit)
            continue
        print(f"  bit {bit:>3} " + " | ".join(f"{c['sdc1']['k']:>3}/{c['sdc1']['n']:<4} {c['due']:>3}" for c in cells))
    if quiet:
        print(f"  no SDC-1 and no DUE on any model: bits {','.join(quiet)} "
              f"({sum(base['per_bit'][b]['sdc1']['n'] for b in quiet)} experiments)")
    if "30" in base["per_bit"]:
        print(f"  bit 30 alone, mean {base['task_metric']} / confidence of the faulted image (DUE left out; clean "
              f"confidence of those images in brackets): " + "; ".join(
                  f"{x} {models[x]['per_bit']['30']['task_value_mean']:.4f} / "
                  f"{models[x]['per_bit']['30']['confidence_mean']:.4f} "
                  f"({models[x]['per_bit']['30']['confidence_clean_mean']:.4f})" for x in labels))
    name = base["task_metric"]
    print(f"\n{name} of the faulted image per experiment (bootstrap 99%; the same images fault-free: "
          f"{base['task_value_clean_mean']:.4f}); paired difference vs the original")
    for label, m in models.items():
        line = f"{label:<12} {fmt_mean(m['task_value_mean'])}  drop {fmt_mean(m['task_value_drop'], sign=True)}"
        if label != "original":
            line += f"   vs original {fmt_mean(m['task_value_paired_difference'], sign=True)}"
        print(line)
    print("\nconfidence (max softmax probability, mean over pixels) of the faulted image per experiment "
          "(bootstrap 99%; DUE left out); clean: over all eval images / the experiments' images")
    for label, m in models.items():
        line = (f"{label:<12} {fmt_mean(m['confidence'])}  ({m['confidence_left_out']} left out)  clean "
                f"{m['confidence_clean_all_images']:.4f} / {m['confidence_clean_same_images']:.4f}")
        if "confidence_paired_difference" in m:
            line += f"   vs original {fmt_mean(m['confidence_paired_difference'], sign=True)}"
        if "confidence_check" in m:
            c = m["confidence_check"]
            line += f"   [check: {c['compared']} recomputed, max |diff| {c['max_abs_diff']}]"
        print(line)
    for label, m in models.items():
        if m.get("note"):
            print(f"note {label}: {m['note']}")


# ---------------------------------------------------------------- fault rates (bit error rate over the weights)


def t_mean(values: np.ndarray) -> dict[str, float]:
    """Mean with a Student t 99% interval."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return {"mean": float(v.mean()) if v.size else float("nan"), "lo": float("nan"), "hi": float("nan"),
                "n": int(v.size)}
    half = t_quantile(CONFIDENCE, v.size - 1) * float(v.std(ddof=1)) / np.sqrt(v.size)
    return {"mean": float(v.mean()), "lo": float(v.mean() - half), "hi": float(v.mean() + half), "n": int(v.size)}


def check_ber_sites(
    names: Sequence[str], original: SiteIndex, hardened: SiteIndex, method: str
) -> tuple[list[str], dict[str, int]]:
    """Why the fault-rate plan cannot run unchanged on the hardened model, and per site how many weight
    elements hold other values (allowed for protect only: it rewrites weights by design)."""
    problems: list[str] = []
    differ: dict[str, int] = {}
    h_sites = {s.name: s for s in hardened}
    for name in names:
        o, h = original.get(name), h_sites.get(name)
        if h is None:
            problems.append(f"{name}: not a site of the hardened model")
            continue
        if site_key(o) != site_key(h):
            problems.append(f"{name}: {site_key(o)} in the original, {site_key(h)} hardened")
            continue
        a = np.ascontiguousarray(original.weight_array(o))
        b = np.ascontiguousarray(hardened.weight_array(h))
        k = int(np.count_nonzero(np.any(a.view(np.uint8).reshape(a.size, -1) != b.view(np.uint8).reshape(b.size, -1),
                                        axis=1))) if a.size else 0
        if k:
            differ[name] = k
    if differ and "protect" not in method.split("+"):
        problems.extend(f"{n}: the hardened model holds other values ({k} elements)" for n, k in differ.items())
    return problems, differ


def evaluate_ber(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    model_path, data_path = resolve(args.model, args.data)
    loaded = load_model(model_path)
    data = load_data(data_path, loaded.inputs())
    index = enumerate_sites(loaded.model, loaded.value_shapes)
    sites = [s for s in index.select("weights", args.sites) if s.elements is not None]
    args.bits = args.bits or "all"
    rates = [float(r) for r in args.ber.split(",") if r.strip()]
    plan = make_ber_plan(model_path, sites, rates, args.per_rate, bits=parse_bits(args.bits), seed=args.seed,
                         options={"critical": args.critical, "data": str(data_path)}, confidence=CONFIDENCE)
    names = list(plan.experiments[0].fault["sites"])
    sizes = ber_sizes(index)
    note(args, f"{model_path.name}: fault-rate plan, {args.per_rate} draws at each of {len(rates)} rates over "
               f"{plan.population:,} bits of {len(names)} weight sites (bits {args.bits}), seed {args.seed}")
    differ: dict[str, dict[str, int]] = {}
    models: dict[str, dict[str, Any]] = {"original": {"path": model_path, "model": loaded.model}}
    for method in method_list(args.methods):  # one at a time, so the check knows the method

        def check(h_index: SiteIndex, hardened: LoadedModel, method: str = method) -> list[str]:
            problems, differ[method] = check_ber_sites(names, index, h_index, method)
            return problems

        models.update(harden_models(args, loaded, data, model_path, workdir, [method], check,
                                    f"all {len(names)} weight sites present with the same shape"))
    report: dict[str, Any] = {
        "schema": "onnxfi.bench.hardening_eval.ber/1", "fault_model": "ber",
        "model": str(model_path), "data": str(data_path), "samples": data.size, "target": "weights",
        "bits": args.bits, "rates": sorted(set(rates)), "per_rate": args.per_rate, "seed": args.seed,
        "population_bits": plan.population, "sites": names,
        "bits_per_element": {n: sizes[n][1] for n in names}, "elements": sum(sizes[n][0] for n in names),
        "confidence": CONFIDENCE, "machine": machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "models": {},
    }
    values: dict[str, dict[int, float]] = {}
    for label, entry in models.items():
        p = plan if label == "original" else plan_for(plan, entry["path"])
        rows, _, clean = run_one(p, entry["path"], data_path, workdir / f"ber_{label}.db", args, label)
        s = ber_summary(p, rows, confidence=CONFIDENCE, clean=clean)
        cm = clean_metric(entry["model"], data, args.threads)
        values[label] = {int(r["id"]): float((r["metrics"] or {}).get("task_value", np.nan)) for r in rows}
        m: dict[str, Any] = {"path": str(entry["path"]), "sha256": p.model_sha256,
                             "clean": {"metric": cm.metric, "value": cm.value}, "metric": s["metric"],
                             "per_rate": s["ber"], "paths": s["paths"]}
        if label != "original":
            m["changed"], m["skipped"] = entry["changed"], entry["skipped"]
            m["weights_differ"] = differ.get(label, {})
        if METHOD_NOTES.get(label):
            m["note"] = METHOD_NOTES[label]
        report["models"][label] = m
    rate_of = {e.id: float(e.fault["rate"]) for e in plan.experiments}
    for label, m in report["models"].items():
        if label == "original":
            continue
        for entry in m["per_rate"]:
            ids = [i for i, r in rate_of.items() if r == entry["rate"]]
            base_entry = next(e for e in report["models"]["original"]["per_rate"] if e["rate"] == entry["rate"])
            entry["paired_difference"] = t_mean(np.array([values[label].get(i, np.nan) - values["original"].get(i, np.nan)
                                                          for i in ids]))
            a, b = base_entry["metric"], entry["metric"]
            entry["overlap"] = bool(np.isfinite(a["lo"]) and np.isfinite(b["lo"]) and overlap(a, b))
    return report


def print_ber(report: dict[str, Any]) -> None:
    models = report["models"]
    base = models["original"]
    widths = sorted(set(report["bits_per_element"].values()))
    print(f"{Path(report['model']).name}: bit error rates over {report['population_bits']:,} stored bits "
          f"({report['elements']:,} weight elements of {len(report['sites'])} sites, {'/'.join(map(str, widths))} bits "
          f"each, bits {report['bits']}), {report['per_rate']} draws per rate, seed {report['seed']}; the same draws "
          f"on every model; {int(100 * report['confidence'])}% Student t intervals across draws")
    metric = base["metric"]
    print("clean " + metric + ": " + ", ".join(f"{x} {m['clean']['value']:.4f}" for x, m in models.items()))
    for i, entry in enumerate(base["per_rate"]):
        print(f"\nrate {entry['rate']:g}: {entry['expected_flips']:.1f} flips expected per draw "
              f"(mean drawn {entry['flips_mean']:.1f})")
        print(f"  {'model':<12} {'mean ' + metric:>26} {'paired vs original':>28} {'ovl':>4} {'SDC-1':>24} "
              f"{'DUE':>24} {'critical':>24}")
        for label, m in models.items():
            e = m["per_rate"][i]
            diff = "" if label == "original" else fmt_mean(e["paired_difference"], sign=True)
            ovl = "" if label == "original" else ("yes" if e["overlap"] else "no")
            print(f"  {label:<12} {fmt_mean(e['metric']):>26} {diff:>28} {ovl:>4} {fmt_rate(e['rates']['sdc1']):>24} "
                  f"{fmt_rate(e['rates']['due']):>24} {fmt_rate(e['rates']['critical']):>24}")
    for label, m in models.items():
        if m.get("weights_differ"):
            print(f"{label}: {sum(m['weights_differ'].values())} weight elements differ from the original "
                  f"(in {len(m['weights_differ'])} sites)")
        if m.get("note"):
            print(f"note {label}: {m['note']}")


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    if args.ber:
        return evaluate_ber(args, workdir)
    if args.fault_model == "transient":
        return evaluate_transient(args, workdir)
    return evaluate(args, workdir)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        report = run(args, workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="onnxfi_hardening_") as tmp:
            report = run(args, Path(tmp))
    if args.ber:
        print_ber(report)
    elif args.fault_model == "transient":
        print_transient(report)
    else:
        print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
