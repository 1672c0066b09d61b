"""Time one transient-fault plan (one bit flip in one activation element of one inference), executed by a
naive single-image injector, onnxfi (batched and one at a time) and PyTorchFI's neuron injection.

Usage (from the repository root; ``make bench`` runs it for digits_cnn and resnet18_fused):

    .venv-bench/bin/python bench/bench_transient.py --model digits_cnn --faults 4096
    .venv-bench/bin/python bench/bench_transient.py --model resnet18_fused --faults 1280 --baseline-faults 48

Every mode runs experiments of the same plan (``onnxfi.plan.make_plan`` with ``fault_model="transient"``
over the activation sites produced by ``--ops``, default Conv outputs: the sites PyTorchFI's neuron
injection addresses), on the same N eval samples in batches of B, in this process unless said otherwise:

* ``naive-1img``: an injector written here (not onnxfi's engine): per experiment the model is reloaded, a
  fault node is inserted after the site with onnxfi's own pass (``InsertActivationFault`` with
  ``image=None``, i.e. the same element of every image of the batch, on a batch of that one image: what a
  user of onnxfi's API would write by hand), a new ONNX Runtime session is built and the one image run.
  Its golden is the unmodified model on that image (one session, each image once).
* ``onnxfi-campaign``: ``onnxfi.campaign.run_campaign`` (local executor, one worker process), the whole
  ``onnxfi analyze --fault-model transient`` path: worker start, clean run, every row stored in SQLite.
* ``onnxfi-engine``: ``Engine`` (suffix mode) in this process, experiments grouped as the executor groups
  them (consecutive experiments of one site and round) and packed by ``Engine.prefetch``: one cone run
  carries the faults of different samples of one eval batch.
* ``onnxfi-1by1``: the same engine without ``prefetch``: one cone run per experiment.
* ``pytorchfi``: the equivalent PyTorch module (weights from the ONNX initializers, ``torch_models.py``)
  with ``pytorchfi.core.fault_injection.declare_neuron_fi(batch=[...], layer_num=[...], dim1..dim3,
  function=hook)``: one forward pass of an eval batch carries up to B faults, one per batch element (any
  Conv2d layers), the hook flipping the IEEE-754 bit of each chosen output element.
* ``persistent``: a persistent activation plan (``analyze --target activations``: the fault hits the same
  element in every sample) on the same sites, same engine: the per-experiment figure that a transient
  experiment, 1/B of a batch run at best, is compared with.

Outcomes of ``onnxfi-engine`` are checked against onnxfi's naive mode (``EngineConfig(mode="naive")``:
per fault a rebuilt model whose fault node hits the one image, run on its eval batch) on every experiment
or an evenly spread subset (``--check-faults``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnxfi.campaign import run_campaign
from onnxfi.engine import Engine, EngineConfig
from onnxfi.model import load_model
from onnxfi.outcomes import classify
from onnxfi.passes.activation_fault import InsertActivationFault, required_opset
from onnxfi.passes.opset import upgrade_opset
from onnxfi.plan import Experiment, Plan, make_plan
from onnxfi.sites import Site, enumerate_sites
from onnxfi.store import Store

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from bench_campaign import _clean, fmt_rate, machine, prepare, torch_available  # noqa: E402

MODES = ("naive-1img", "onnxfi-campaign", "onnxfi-engine", "onnxfi-1by1", "pytorchfi", "persistent")


@dataclass
class ModeResult:
    mode: str
    experiments: int
    total_s: float
    setup_s: float = 0.0  # per-site setup inside total_s (sessions, prefix caches, golden runs)
    outcomes: dict[int, str] = field(default_factory=dict)
    sdc1: dict[int, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    runs: int = 0  # model / cone / forward runs made for the experiments
    per_site: dict[str, list[float]] = field(default_factory=dict)  # site -> [experiments, setup s, run s]

    def on_sites(self, names: set[str]) -> tuple[int, float, float]:
        """(experiments, setup s, run s) over the sites ``names`` (engine modes)."""
        rows = [v for k, v in self.per_site.items() if k in names]
        return int(sum(r[0] for r in rows)), sum(r[1] for r in rows), sum(r[2] for r in rows)

    @property
    def rate(self) -> float:
        return self.experiments / self.total_s if self.total_s > 0 else float("nan")

    @property
    def steady_rate(self) -> float:
        t = self.total_s - self.setup_s
        return self.experiments / t if t > 0 else float("nan")

    def record(self, exp: Experiment, row: dict[str, Any]) -> None:
        self.outcomes[exp.id] = str(row["outcome"])
        self.sdc1[exp.id] = bool(row["sdc1"])


@dataclass
class Scoring:
    """How an experiment is classified (the engine's choice of output, task and layout) and the eval data."""

    primary: str
    task: str
    layout: str | None
    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None
    ort_primary: np.ndarray  # the fault-free model's scored output on every eval sample (ONNX Runtime)

    def labels_of(self, image: int) -> np.ndarray | None:
        return None if self.labels is None else self.labels[image:image + 1]


def spread(exps: Sequence[Experiment], target: int) -> list[Experiment]:
    """About ``target`` experiments evenly spread over ``exps`` (plan order kept); all when target <= 0."""
    if target <= 0 or target >= len(exps):
        return list(exps)
    keep = np.unique(np.linspace(0, len(exps) - 1, target).round().astype(int))
    return [exps[i] for i in keep]


def site_chunks(exps: Sequence[Experiment], limit: int = 256) -> list[list[Experiment]]:
    """Consecutive experiments of one site and round, at most ``limit`` (what a worker computes together:
    ``onnxfi.executors._common.chunk_by_site`` and its hints)."""
    chunks: list[list[Experiment]] = []
    for e in exps:
        last = chunks[-1] if chunks else None
        if last and last[0].site == e.site and last[0].round == e.round and len(last) < limit:
            last.append(e)
        else:
            chunks.append([e])
    return chunks


# ---------------------------------------------------------------- naive single-image injector


def run_naive_single(model_path: Path, sites: dict[str, Site], exps: Sequence[Experiment], sc: Scoring,
                     threads: int) -> ModeResult:
    """Per experiment: reload the model, insert the fault node after the site, new session, run one image.

    The golden of an image is the same graph with the fault node doing nothing (``identity=True``), one
    session per site and node structure: a fault node keeps ONNX Runtime from fusing the site's producer
    with its consumers (Conv + BatchNormalization + Relu), and the fused graph rounds differently, so the
    unmodified model's output would turn most masked faults into tolerable ones."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3

    tmp = tempfile.TemporaryDirectory()
    upgraded = Path(tmp.name) / model_path.name

    def faulted(site: Site, exp: Experiment, identity: bool) -> tuple[ort.InferenceSession, tuple[str, ...]]:
        model = ir.load(str(upgraded))
        node = InsertActivationFault(site, exp.index, exp.fault_obj(), image=None, identity=identity)
        node(model)
        sess = ort.InferenceSession(ir.to_proto(model).SerializeToString(), so, providers=["CPUExecutionProvider"])
        return sess, node.structure

    t0 = time.perf_counter()
    # once: the model at the opset the fault nodes need (BitCast, opset 26, for float bit flips)
    need = max(required_opset(sites[e.site], e.fault_obj()) for e in exps)
    ir.save(upgrade_opset(ir.load(str(model_path)), need), str(upgraded))
    identity: dict[tuple[str, tuple[str, ...]], ort.InferenceSession] = {}
    golden: dict[tuple[str, tuple[str, ...], int], dict[str, np.ndarray]] = {}
    res = ModeResult("naive-1img", len(exps), 0.0)
    names: list[str] = []
    for exp in exps:
        assert exp.image is not None
        feeds = {k: v[exp.image:exp.image + 1] for k, v in sc.feeds.items()}
        site = sites[exp.site]
        sess, structure = faulted(site, exp, identity=False)
        names = names or [o.name for o in sess.get_outputs()]
        out = dict(zip(names, sess.run(names, feeds), strict=True))
        res.runs += 1
        key = (exp.site, structure, exp.image)
        if key not in golden:
            ident = identity.get(key[:2])
            if ident is None:
                ident = identity[key[:2]] = faulted(site, exp, identity=True)[0]
            golden[key] = dict(zip(names, ident.run(names, feeds), strict=True))
        res.record(exp, classify(golden[key], out, sc.primary, sc.task, sc.labels_of(exp.image), 0.01,
                                 layout=sc.layout))
    res.total_s = time.perf_counter() - t0
    tmp.cleanup()
    res.notes.append(f"once: the model converted to opset {need}; per experiment: that model reloaded, "
                     "InsertActivationFault(image=None) on a batch of the one image, new ORT session, one image "
                     "run; golden = the identity "
                     f"fault node's graph ({len(identity)} sessions, {len(golden)} single-image runs)")
    return res


# ---------------------------------------------------------------- onnxfi


def run_engine(mode: str, cfg: EngineConfig, exps: Sequence[Experiment], packed: bool) -> ModeResult:
    """``exps`` in this process, chunk by chunk (consecutive experiments of one site and round); ``packed``:
    each chunk prefetched (one cone run per eval batch and per sample repeated in the chunk). Each site's
    setup (its runner: sessions, prefix cache, golden runs) and run time are recorded apart."""
    t0 = time.perf_counter()
    engine = Engine(cfg)
    res = ModeResult(mode, len(exps), 0.0)
    paths: Counter[str] = Counter()
    for chunk in site_chunks(exps):
        name, transient = chunk[0].site, chunk[0].image is not None
        st = res.per_site.get(name)
        ts = time.perf_counter()
        runner = engine.runner(name, True, False, transient)  # built on first use (or after an eviction)
        if st is None:
            st = res.per_site[name] = [0, time.perf_counter() - ts, 0.0]
            res.setup_s += st[1]
        before = getattr(runner, "runs", 0)
        ts = time.perf_counter()
        if packed:
            engine.prefetch(list(chunk), True, False)
        for exp in chunk:
            row = engine.run(exp, True, False)
            paths[row["path"]] += 1
            res.record(exp, row)
        st[0] += len(chunk)
        st[2] += time.perf_counter() - ts
        res.runs += getattr(runner, "runs", 0) - before  # cone runs made for this chunk's experiments
    res.total_s = time.perf_counter() - t0
    res.notes.append("paths: " + ", ".join(f"{k} {v}" for k, v in sorted(paths.items())))
    return res


def site_subset(exps: Sequence[Experiment], target: int) -> list[Experiment]:
    """The experiments of every k-th site (plan order), about ``target`` of them; all when target <= 0."""
    if target <= 0 or target >= len(exps):
        return list(exps)
    order = list(dict.fromkeys(e.site for e in exps))
    keep = set(order[::max(1, round(len(exps) / target))])
    return [e for e in exps if e.site in keep]


def run_onnxfi_campaign(plan: Plan, cfg: EngineConfig) -> ModeResult:
    """The CLI's campaign path: local executor, one worker process, rows stored in SQLite."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        store = Store(Path(tmp) / "bench.db")
        result = run_campaign(plan, cfg, store, workers=1, executor="local")
        total = time.perf_counter() - t0
        rows = list(store.rows())
        store.close()
    res = ModeResult("onnxfi-campaign", len(plan.experiments), total)
    paths: Counter[str] = Counter()
    for r in rows:
        res.outcomes[int(r["id"])] = str(r["outcome"])
        res.sdc1[int(r["id"])] = bool(r["sdc1"])
        paths[str(r.get("path"))] += 1
    res.notes.append(f"{result.executed} rows stored; paths: " + ", ".join(f"{k} {v}" for k, v in sorted(paths.items())))
    return res


# ---------------------------------------------------------------- PyTorchFI


def conv_modules(model_path: Path) -> dict[str, str]:
    """ONNX Conv output tensor -> PyTorch module name (the Conv's weight initializer keeps the module's name)."""
    out = {}
    for node in load_model(model_path).model.graph:
        if node.op_type == "Conv" and len(node.inputs) > 1 and node.inputs[1] is not None:
            weight = node.inputs[1].name or ""
            if weight.endswith(".weight") and node.outputs[0].name:
                out[node.outputs[0].name] = weight[: -len(".weight")]
    return out


def flip_f32(value: float, bit: int) -> float:
    """``value`` as float32 with IEEE-754 bit ``bit`` inverted (bit 0 = least significant, 31 = sign)."""
    word = np.array([value], dtype=np.float32).view(np.uint32) ^ np.uint32(1 << bit)
    return float(word.view(np.float32)[0])


def pack_by_sample(exps: Sequence[Experiment], batch: int) -> list[tuple[int, list[tuple[int, Experiment]]]]:
    """Runs of (eval batch, [(row, experiment)]): each run holds at most one experiment per sample, the first
    run with the sample free taking it (experiments of any sites)."""
    runs: dict[int, list[list[tuple[int, Experiment]]]] = {}
    for e in exps:
        assert e.image is not None
        k, row = divmod(e.image, batch)
        slots = runs.setdefault(k, [])
        for run in slots:
            if all(r != row for r, _ in run):
                run.append((row, e))
                break
        else:
            slots.append([(row, e)])
    return [(k, run) for k in sorted(runs) for run in runs[k]]


def run_pytorchfi(kind: str, model_path: Path, exps: Sequence[Experiment], sc: Scoring, batch: int,
                  threads: int, sites: dict[str, Site]) -> ModeResult:
    """PyTorchFI neuron injection, batched: one forward pass of an eval batch per run of ``pack_by_sample``."""
    import torch
    from pytorchfi.core import fault_injection
    from torch import nn
    from torch_models import build_torch_model, load_onnx_weights

    torch.set_num_threads(threads)
    x_all = torch.from_numpy(np.ascontiguousarray(next(iter(sc.feeds.values()))))
    t0 = time.perf_counter()
    model = build_torch_model(kind)
    load_onnx_weights(model, str(model_path))
    layer_of = {name: i for i, name in enumerate(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))}
    module_of = conv_modules(model_path)
    pfi = fault_injection(model, batch_size=batch, input_shape=list(x_all.shape[1:]), layer_types=[nn.Conv2d],
                          use_cuda=False)
    bits: list[int] = []

    def hook(module: Any, inputs: Any, output: Any) -> None:
        layer = pfi.get_current_layer()
        for i, target in enumerate(pfi.corrupt_layer):
            if target == layer:
                idx = (pfi.corrupt_batch[i], pfi.corrupt_dim1[i], pfi.corrupt_dim2[i], pfi.corrupt_dim3[i])
                output[idx] = flip_f32(output[idx].item(), bits[i])
        pfi.updateLayer()

    golden: dict[int, np.ndarray] = {}
    res = ModeResult("pytorchfi", len(exps), 0.0)
    for k, run in pack_by_sample(exps, batch):
        x = x_all[k * batch:(k + 1) * batch]
        if k not in golden:
            with torch.no_grad():
                golden[k] = model(x).numpy()
        layers, rows, d1, d2, d3 = [], [], [], [], []
        bits.clear()
        for row, e in run:
            c, h, w = np.unravel_index(e.index, sites[e.site].concrete_shape or ())
            layers.append(layer_of[module_of[e.site]])
            rows.append(row)
            d1.append(int(c))
            d2.append(int(h))
            d3.append(int(w))
            assert e.bit is not None and e.fault.get("kind") == "flip"
            bits.append(e.bit)
        faulty = pfi.declare_neuron_fi(batch=rows, layer_num=layers, dim1=d1, dim2=d2, dim3=d3, function=hook)
        with torch.no_grad():
            out = faulty(x).numpy()
        res.runs += 1
        for row, e in run:
            assert e.image is not None
            res.record(e, classify({sc.primary: golden[k][row:row + 1]}, {sc.primary: out[row:row + 1]},
                                   sc.primary, sc.task, sc.labels_of(e.image), 0.01, layout=sc.layout))
    res.total_s = time.perf_counter() - t0
    with torch.no_grad():
        diff = float(np.max(np.abs(model(x_all).numpy() - sc.ort_primary)))
    res.notes.append(f"batched neuron injection: declare_neuron_fi with batch=[rows] (one fault per batch element, "
                     f"any Conv2d layers mixed) + one forward pass per run; {res.runs} runs of batch {batch} "
                     f"({len(exps) / max(res.runs, 1):.1f} faults per run)")
    res.notes.append(f"PyTorch twin vs ORT on the eval samples: max abs diff {diff:.2e}")
    return res


# ---------------------------------------------------------------- report


def agreement(a: ModeResult, b: ModeResult) -> dict[str, int]:
    common = [k for k in a.outcomes if k in b.outcomes]
    return {"n": len(common), "outcome": sum(a.outcomes[k] == b.outcomes[k] for k in common),
            "sdc1": sum(a.sdc1[k] == b.sdc1[k] for k in common)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits_cnn", help="digits_cnn, resnet18, resnet18_fused or an .onnx path")
    ap.add_argument("--data", help="an .npz for a model given by path (default: seeded random inputs)")
    ap.add_argument("--faults", type=int, default=4096, help="experiments in the transient plan (default 4096)")
    ap.add_argument("--rounds", type=int, help="rounds of the plan (default: make_plan's, as the CLI: one per ~50 "
                    "experiments, at most 20, at most one per ~64 experiments per site); the executor packs experiments of "
                    "one site and round together")
    ap.add_argument("--samples", type=int, default=0, help="eval samples N (default: the batch size B)")
    ap.add_argument("--batch", type=int, default=64, help="eval batch size B (default 64)")
    ap.add_argument("--ops", default="Conv", help="activation sites produced by these ops (comma list, default Conv; "
                    "'all': every activation site; PyTorchFI runs only the experiments at Conv outputs)")
    ap.add_argument("--bits", help="bit range LO-HI (default: every bit)")
    ap.add_argument("--baseline-faults", type=int, default=256,
                    help="naive-1img runs about this many experiments spread over the plan (0: all)")
    ap.add_argument("--one-by-one-faults", type=int, default=0,
                    help="onnxfi-1by1 runs the experiments of every k-th site, about this many (0: all), and is "
                    "compared with onnxfi-engine's time on the same sites")
    ap.add_argument("--check-faults", type=int, default=256,
                    help="onnxfi's naive mode checks about this many experiments spread over the plan (0: all)")
    ap.add_argument("--persistent-faults", type=int, default=256, help="experiments in the persistent plan")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ORT and torch threads")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write every figure to this JSON file")
    args = ap.parse_args(argv)
    out: Callable[[str], None] = print
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"unknown mode(s) {bad}; use {', '.join(MODES)}")

    n_samples = args.samples or args.batch
    model_path, data_path, kind = prepare(args.model, args.data, n_samples)
    loaded = load_model(model_path)
    ops = None if args.ops == "all" else [o.strip() for o in args.ops.split(",") if o.strip()]
    chosen = enumerate_sites(loaded.model, loaded.value_shapes).select("activations", None, ops, False)
    sites = {s.name: s for s in chosen}
    bits = None
    if args.bits:
        lo, _, hi = args.bits.partition("-")
        bits = list(range(int(lo), int(hi or lo) + 1))
    cfg = EngineConfig(str(model_path), data_path=str(data_path) if data_path else None, samples=n_samples,
                       batch=args.batch, threads=args.threads, mode="suffix")
    probe = Engine(cfg)
    clean = probe.clean_summary()
    n_samples = probe.ctx.data.size
    choice = probe.ctx.choice
    feeds = dict(probe.ctx.data.batch(0, n_samples))
    plain = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    sc = Scoring(probe.primary, choice.task, choice.layout, feeds, probe.ctx.data.labels,
                 np.asarray(plain.run([probe.primary], feeds)[0]))
    del probe, plain
    plan = make_plan(model_path, chosen, ["flip"], bits, args.faults, None, seed=args.seed, target="activations",
                     rounds=args.rounds, fault_model="transient", images=n_samples)
    exps = list(plan.experiments)
    used = sorted({e.site for e in exps}, key=list(sites).index)
    chunks = site_chunks(exps)
    info = machine()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    out(f"== bench_transient: {model_path.name}, N = {n_samples} eval samples in batches of B = {args.batch}, "
        f"{args.threads} threads")
    out(f"   {info['cpu']}, {info['cores']} cores; onnxruntime {info['onnxruntime']}; {info['torch']}; "
        f"load average {load:.2f} at the start")
    out(f"   plan: {len(exps)} transient single bit flips over {len(used)} activation sites ({args.ops} outputs), "
        f"{'bits ' + args.bits if args.bits else 'all bits'}, {1 + max(e.round for e in exps)} rounds (seed "
        f"{args.seed}); {len(chunks)} site-and-round chunks of {len(exps) / len(chunks):.1f} experiments on average")
    out(f"   fault-free model: {clean['metric']} {clean['value']:.4f} on the N samples, output {sc.primary} "
        f"({sc.task}); golden run of the N samples {clean['golden_time_s'] * 1e3:.2f} ms (cold)")

    results: dict[str, ModeResult] = {}
    skipped: dict[str, str] = {}

    def show(r: ModeResult, extra: str = "") -> None:
        out(f"   {r.mode:<16}{r.experiments:>6} experiments in {r.total_s:8.2f} s = {fmt_rate(r.rate):>7} exp/s"
            + extra)

    def steady(r: ModeResult) -> str:
        return f"; steady {fmt_rate(r.steady_rate)} exp/s (site setup {r.setup_s:.2f} s excluded)"

    if "naive-1img" in modes:
        results["naive-1img"] = run_naive_single(model_path, sites, spread(exps, args.baseline_faults), sc,
                                                 args.threads)
        show(results["naive-1img"])
    if "onnxfi-campaign" in modes:
        results["onnxfi-campaign"] = run_onnxfi_campaign(plan, cfg)
        show(results["onnxfi-campaign"], "  (run_campaign: 1 worker process, rows in SQLite)")
    if "onnxfi-engine" in modes:
        r = results["onnxfi-engine"] = run_engine("onnxfi-engine", cfg, exps, packed=True)
        show(r, steady(r) + f"; {r.runs} cone runs, {len(exps) / max(r.runs, 1):.1f} experiments per run")
    one_sites: set[str] = set()
    if "onnxfi-1by1" in modes:
        one = site_subset(exps, args.one_by_one_faults)
        one_sites = {e.site for e in one}
        r = results["onnxfi-1by1"] = run_engine("onnxfi-1by1", cfg, one, packed=False)
        show(r, steady(r) + f"; {r.runs} cone runs"
             + ("" if len(one) == len(exps) else f"; {len(one_sites)} of the {len(used)} sites"))
    if "pytorchfi" in modes:
        have_torch, have_pfi, _ = torch_available()
        mapped = conv_modules(model_path)
        pexps = [e for e in exps if e.site in mapped]
        if kind is None:
            skipped["pytorchfi"] = "no PyTorch twin for this model"
        elif not (have_torch and have_pfi):
            skipped["pytorchfi"] = "torch or pytorchfi is not installed (use .venv-bench: make bench)"
        elif not pexps:
            skipped["pytorchfi"] = "no experiment of the plan is at a Conv output"
        else:
            r = results["pytorchfi"] = run_pytorchfi(kind, model_path, pexps, sc, args.batch, args.threads, sites)
            show(r, f"; {r.runs} forward passes, {len(pexps) / r.runs:.1f} faults per pass"
                 + ("" if len(pexps) == len(exps) else f"; only the {len(pexps)} experiments at Conv outputs"))
        if "pytorchfi" in skipped:
            out(f"   note: skipping pytorchfi: {skipped['pytorchfi']}")
    if "persistent" in modes:
        pplan = make_plan(model_path, chosen, ["flip"], bits, args.persistent_faults, None, seed=args.seed,
                          target="activations")
        r = results["persistent"] = run_engine("persistent", cfg, list(pplan.experiments), packed=False)
        show(r, steady(r) + f"; every experiment runs all {n_samples} samples")
    check: ModeResult | None = None
    if "onnxfi-engine" in modes:
        check = run_engine("onnxfi-naive", replace(cfg, mode="naive"), spread(exps, args.check_faults), packed=False)
        show(check, "  (onnxfi's naive mode: the outcome check)")

    # ---- ratios
    eng, camp, one_r, per = (results.get(m) for m in ("onnxfi-engine", "onnxfi-campaign", "onnxfi-1by1",
                                                        "persistent"))
    ratios: dict[str, float] = {}

    def ratio(name: str, a: float, b: float) -> None:
        if math.isfinite(a) and math.isfinite(b) and b > 0:
            ratios[name] = a / b
            out(f"   {name:<60}{a / b:>9.2f}x")

    out("\n   ratios of exp/s (whole loops, setup included, unless said):")
    for fast in (camp, eng):
        if fast is None:
            continue
        for base in ("naive-1img", "pytorchfi"):
            if base in results:
                ratio(f"{fast.mode} / {base}", fast.rate, results[base].rate)
    if eng is not None and one_r is not None:
        n, setup, run = eng.on_sites(one_sites)
        n1, setup1, run1 = one_r.on_sites(one_sites)
        where = "" if len(one_sites) == len(used) else f" ({len(one_sites)} of {len(used)} sites)"
        ratio(f"onnxfi-engine / onnxfi-1by1{where}: what packing buys", n / (setup + run), n1 / (setup1 + run1))
        ratio(f"onnxfi-engine / onnxfi-1by1{where}, steady", n / run, n1 / run1)
    target = 0.5 * args.batch
    if eng is not None and per is not None:
        ratio("transient / persistent activation (onnxfi-engine)", eng.rate, per.rate)
        ratio("transient / persistent activation (onnxfi-engine), steady", eng.steady_rate, per.steady_rate)
        got = ratios.get("transient / persistent activation (onnxfi-engine), steady", float("nan"))
        ideal = n_samples  # a persistent experiment runs N samples; a full packed run carries B faults in B samples
        out(f"   target: transient / persistent >= 0.5 x B = {target:g} (B = {args.batch}, N = {n_samples}; "
            f"full packing would give about {ideal}, less the per-experiment work): steady {got:.2f}x "
            f"{'MET' if got >= target else 'NOT MET'}")

    # ---- agreement
    agree: dict[str, dict[str, int]] = {}
    if check is not None and eng is not None:
        agree["onnxfi-engine vs onnxfi naive mode"] = agreement(eng, check)
    ref = eng or camp
    if ref is not None:
        for name in ("onnxfi-campaign", "onnxfi-1by1", "naive-1img", "pytorchfi"):
            if name in results and results[name] is not ref:
                agree[f"{ref.mode} vs {name}"] = agreement(ref, results[name])
    if agree:
        out("\n   agreement on the same experiments (outcome, SDC-1 flag):")
        for name, a in agree.items():
            out(f"     {name:<44} {a['outcome']}/{a['n']}, {a['sdc1']}/{a['n']}")
        key = "onnxfi-engine vs onnxfi naive mode"
        if key in agree:
            a = agree[key]
            out(f"   batched outcomes equal onnxfi's naive mode on every checked experiment: "
                f"{'YES' if a['outcome'] == a['n'] else 'NO'} ({a['outcome']}/{a['n']})")
    everything = [*results.items(), *([("onnxfi-naive", check)] if check else [])]
    for name, r in everything:
        for note in r.notes:
            out(f"   [{name}] {note}")

    if args.json:
        doc = {"machine": info, "load_average_start": load, "model": str(model_path), "samples": n_samples,
               "batch": args.batch, "threads": args.threads, "ops": args.ops, "faults": len(exps),
               "rounds": 1 + max(e.round for e in exps), "chunks": len(chunks), "sites": used, "seed": args.seed,
               "modes": {m: {"experiments": r.experiments, "seconds": r.total_s, "setup_s": r.setup_s,
                             "exp_s": r.rate, "steady_exp_s": r.steady_rate, "runs": r.runs, "notes": r.notes}
                         for m, r in everything},
               "ratios": ratios, "target_transient_over_persistent": target, "agreement": agree,
               "skipped": skipped}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_clean(doc), indent=1))
        out(f"\n   wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
