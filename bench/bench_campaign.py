"""Time one weight-fault campaign plan, executed by naive rebuilds, onnxfi's engine modes and PyTorchFI.

Usage (from the repository root; ``make bench`` runs it for digits_cnn and resnet18):

    .venv-bench/bin/python bench/bench_campaign.py --model digits_cnn --faults 1088
    .venv-bench/bin/python bench/bench_campaign.py --model resnet18 --faults 384 --baseline-faults 48
    .venv/bin/python bench/bench_campaign.py --model path/to/model.onnx --data feeds.npz --modes port,suffix

Every mode runs the same plan (uniform single bit flips over every weight site and every bit, seeded)
in this process, on the same batch, with the same number of threads, and is timed over the whole loop:
engine and session creation, golden runs, faults and outcome classification. ``pytorchfi`` runs the
equivalent PyTorch module (weights loaded from the ONNX initializers) with pytorchfi's
``declare_weight_fi`` for Conv/Linear weights and the same copy-flip-forward in plain torch for the
tensors pytorchfi cannot address (BatchNorm parameters and statistics, biases).

The FLOP bound of a site is the fastest any runtime could run one of its experiments at the FLOP rate
ORT reached on the full model in this run: ``downstream FLOPs x batch / rate`` (see flops.py).
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import math
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

import onnxfi
import onnxfi.engine as fi_engine
from onnxfi.engine import Engine, EngineConfig
from onnxfi.metrics import detect_task
from onnxfi.model import load_model
from onnxfi.outcomes import classify
from onnxfi.plan import Experiment, Plan, make_plan
from onnxfi.runtime import make_session
from onnxfi.sites import Site, enumerate_sites

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CACHE = BENCH / ".cache"
sys.path.insert(0, str(BENCH))
from flops import FlopCounter  # noqa: E402

ZOO_MODELS = {"digits_cnn": (ROOT / "model_zoo" / "digits_cnn.onnx", ROOT / "model_zoo" / "data" / "digits_eval.npz")}
ONNXFI_MODES = ("naive", "port", "suffix", "suffix-noverify")
TORCH_MODE = "pytorchfi"


# ---------------------------------------------------------------- inputs


def prepare(model: str, data: str | None, batch: int) -> tuple[Path, Path | None, str | None]:
    """(model path, npz holding exactly one batch or None for random data, kind of PyTorch twin or None)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    if model in ("resnet18", "resnet18_fused"):
        model_path, data_path = CACHE / f"{model}.onnx", CACHE / f"resnet18_batch{batch}.npz"
        if not (model_path.exists() and data_path.exists()):
            try:
                from build_resnet18 import build
            except ImportError as e:
                raise SystemExit(
                    f"bench: {e}; building {model} needs torch (run `make bench` or use .venv-bench)") from None
            build(CACHE, batch)
        return model_path, data_path, model
    source: Path | None
    kind: str | None
    if model in ZOO_MODELS:
        model_path, source = ZOO_MODELS[model]
        kind = model
    else:
        model_path, source, kind = Path(model), Path(data) if data else None, None
        if not model_path.is_file():
            raise SystemExit(f"bench: model {model!r} is not digits_cnn, resnet18, resnet18_fused or an .onnx file")
    if source is None:
        return model_path, None, kind
    with np.load(source, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    n = min(len(v) for v in arrays.values())
    if n < batch:
        raise SystemExit(f"bench: {source} has {n} samples, fewer than --batch {batch}")
    out = CACHE / f"{model_path.stem}_batch{batch}.npz"
    np.savez(out, **{k: v[:batch] for k, v in arrays.items()})
    return model_path, out, kind


def weight_sites(model_path: Path) -> list[Site]:
    loaded = load_model(model_path)
    return list(enumerate_sites(loaded.model, loaded.value_shapes).select("weights", None, None, False))


def baseline_subset(plan: Plan, target: int) -> list[Experiment]:
    """The experiments of every k-th site (plan order), about ``target`` of them; all when target is 0.

    Naive rebuilds and PyTorchFI cost the same per experiment whatever the site, so a subset of whole
    sites measures their rate without changing how their per-site setup is amortized.
    """
    exps = plan.experiments
    if target <= 0 or target >= len(exps):
        return list(exps)
    order = list(dict.fromkeys(e.site for e in exps))
    stride = max(1, round(len(exps) / target))
    keep = set(order[::stride])
    return [e for e in exps if e.site in keep]


# ---------------------------------------------------------------- results


@dataclass
class SiteTiming:
    site: str
    n: int = 0
    setup_s: float = 0.0
    run_s: float = 0.0
    golden_s: float | None = None
    shortcuts: int = 0
    verified: int = 0  # suffix: weight experiments re-run with the weight baked in
    path: str = ""


@dataclass
class ModeResult:
    mode: str
    experiments: int
    total_s: float
    outcomes: dict[str, str]  # experiment id -> outcome
    sdc1: dict[str, bool]
    sites: list[SiteTiming] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.experiments / self.total_s if self.total_s > 0 else float("nan")


def known_modes() -> tuple[str, ...]:
    """Engine modes of the installed onnxfi (older versions have no MODES and know naive and port), and
    ``suffix-noverify`` (suffix without re-running rounding-ambiguous weight experiments baked)."""
    modes = tuple(getattr(fi_engine, "MODES", ("port", "naive")))
    if "suffix" in modes and "verify" in EngineConfig.__dataclass_fields__:
        modes += ("suffix-noverify",)
    return modes


# ---------------------------------------------------------------- onnxfi


def run_onnxfi(mode: str, cfg: EngineConfig, exps: Sequence[Experiment]) -> ModeResult:
    """Run ``exps`` in-process with the engine in ``mode``; per-site session setup is timed apart."""
    cfg = replace(cfg, mode="suffix", verify=False) if mode == "suffix-noverify" else replace(cfg, mode=mode)
    if "site_faults" in EngineConfig.__dataclass_fields__:  # the cost model sees the plan, as in run_campaign
        cfg = replace(cfg, site_faults=dict(Counter(e.site for e in exps if e.image is None)))
    t0 = time.perf_counter()
    engine = Engine(cfg)
    per_site: dict[str, SiteTiming] = {}
    outcomes: dict[str, str] = {}
    sdc1: dict[str, bool] = {}
    reasons: dict[str, str] = {}
    for exp in exps:
        st = per_site.get(exp.site)
        if st is None:
            st = per_site[exp.site] = SiteTiming(exp.site)
            ts = time.perf_counter()
            runner = engine.runner(exp.site, True, False)
            st.setup_s = time.perf_counter() - ts
            st.golden_s = runner.golden_time
            info = runner.describe()
            st.path = info["path"]
            if info["reason"]:
                reasons[exp.site] = info["reason"]
        ts = time.perf_counter()
        row = engine.run(exp, needs_bits=True, needs_values=False)
        st.run_s += time.perf_counter() - ts
        st.n += 1
        st.shortcuts += row["path"].endswith("+shortcut")
        st.verified += row["path"].endswith("+baked")
        outcomes[str(exp.id)] = row["outcome"]
        sdc1[str(exp.id)] = bool(row["sdc1"])
    total = time.perf_counter() - t0
    notes = [f"{s}: {why}" for s, why in reasons.items()]
    verified = sum(st.verified for st in per_site.values())
    if verified:
        notes.insert(0, f"{verified}/{len(exps)} experiments re-run with the weight baked in (rounding-ambiguous)")
    split = [st for st in per_site.values() if st.path == "cone-split"]
    if split:
        notes.insert(0, f"{len(split)}/{len(per_site)} sites split (baked head per fault + shared rest), "
                        f"{sum(st.shortcuts for st in split)} experiments masked at the head's output")
    return ModeResult(mode, len(exps), total, outcomes, sdc1, list(per_site.values()), notes)


def golden(cfg: EngineConfig, feeds: dict[str, np.ndarray], repeat: int, onnxfi_too: bool) -> dict[str, Any]:
    """Bare ORT (onnxfi.runtime.make_session + session.run) and onnxfi's fault-free run on the same batch.

    ``cold``: the first run of a fresh session (what a campaign's per-site golden run is), median over
    ``repeat`` sessions, bare and onnxfi (Engine.clean_summary) alternating so that load from other
    processes hits both alike; ``warm``: median of ``repeat`` further runs of the last bare session.
    """
    engine = Engine(replace(cfg, mode="port")) if onnxfi_too else None
    if engine is not None and not hasattr(engine, "clean_summary"):
        engine = None
    cold, fi_cold, warm = [], [], []
    outs: list[Any] = []
    sess = None
    for _ in range(max(1, repeat)):
        sess = make_session(cfg.model_path, cfg.provider, threads=cfg.threads)
        t0 = time.perf_counter()
        outs = sess.run(None, feeds)
        cold.append(time.perf_counter() - t0)
        if engine is not None:
            fi_cold.append(engine.clean_summary()["golden_time_s"])
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        sess.run(None, feeds)  # type: ignore[union-attr]
        warm.append(time.perf_counter() - t0)
    return {"cold_s": float(np.median(cold)), "warm_s": float(np.median(warm)),
            "onnxfi_cold_s": float(np.median(fi_cold)) if fi_cold else None,
            "outputs": [np.asarray(o) for o in outs]}


# ---------------------------------------------------------------- PyTorch / PyTorchFI


def torch_available() -> tuple[bool, bool, str]:
    """(torch importable, pytorchfi importable, versions text)."""
    try:
        import torch
    except ImportError:
        return False, False, "torch not installed"
    try:
        from pytorchfi.core import fault_injection  # noqa: F401
    except ImportError:
        return True, False, f"torch {torch.__version__}, pytorchfi not installed"
    return True, True, f"torch {torch.__version__}, pytorchfi {importlib.metadata.version('pytorchfi')}"


def run_torch(
    kind: str, model_path: Path, feeds: dict[str, np.ndarray], labels: np.ndarray | None,
    exps: Sequence[Experiment], threads: int, use_pytorchfi: bool, ort_golden: np.ndarray,
) -> ModeResult:
    """PyTorchFI's weight-fault flow per experiment: copy the model, flip one weight bit, forward the batch."""
    import torch
    from torch import nn
    from torch_models import build_torch_model, load_onnx_weights

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = build_torch_model(kind)
    load_onnx_weights(model, str(model_path))
    x = torch.from_numpy(np.ascontiguousarray(next(iter(feeds.values()))))
    with torch.no_grad():
        golden = model(x).numpy()
    diff = float(np.max(np.abs(golden - ort_golden)))
    scale = float(np.max(np.abs(ort_golden))) or 1.0
    notes = [f"PyTorch twin vs ORT golden: max abs diff {diff:.2e} (max |logit| {scale:.3g})"]
    if diff > 1e-4 * max(1.0, scale):
        raise SystemExit(f"bench: the PyTorch {kind} does not match the ONNX model (max abs diff {diff:.3g})")
    task = detect_task(golden.shape, golden.dtype)
    pfi = None
    layer_of: dict[str, int] = {}
    if use_pytorchfi:
        from pytorchfi.core import fault_injection

        types = [nn.Conv2d, nn.Linear]
        pfi = fault_injection(model, batch_size=x.shape[0], input_shape=list(x.shape[1:]),
                              layer_types=types, use_cuda=False)
        layer_of = {name: i for i, name in enumerate(
            n for n, m in model.named_modules() if isinstance(m, tuple(types)))}
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    per_site: dict[str, SiteTiming] = {}
    outcomes: dict[str, str] = {}
    sdc1: dict[str, bool] = {}
    paths: Counter[str] = Counter()
    for exp in exps:
        st = per_site.setdefault(exp.site, SiteTiming(exp.site))
        ts = time.perf_counter()
        fault = exp.fault_obj()
        rng = np.random.default_rng(exp.seed)
        module, _, attr = exp.site.rpartition(".")
        shape = tuple(tensors[exp.site].shape)

        def flip(values: Any, rng: np.random.Generator = rng, fault: Any = fault) -> Any:
            old = values.detach().numpy().reshape(-1).copy()
            return torch.from_numpy(fault.apply(old, rng)).reshape(values.shape)

        with torch.no_grad():
            if pfi is not None and attr == "weight" and module in layer_of:
                pos = [int(i) for i in np.unravel_index(exp.index, shape)]
                pos += [None] * (4 - len(pos))  # type: ignore[list-item]
                faulty = pfi.declare_weight_fi(
                    function=lambda w, idx, f=flip: f(w[idx]), layer_num=[layer_of[module]],
                    k=[pos[0]], dim1=[pos[1]], dim2=[pos[2]], dim3=[pos[3]])
                st.path = "pytorchfi"
            else:
                faulty = copy.deepcopy(model)
                try:
                    t = faulty.get_parameter(exp.site)
                except AttributeError:
                    t = faulty.get_buffer(exp.site)
                flat = t.view(-1)
                flat[exp.index : exp.index + 1] = flip(flat[exp.index : exp.index + 1])
                st.path = "torch"
            out = faulty(x).numpy()
        paths[st.path] += 1
        row = classify({"logits": golden}, {"logits": out}, "logits", task, labels, 0.01)
        st.run_s += time.perf_counter() - ts
        st.n += 1
        outcomes[str(exp.id)] = row["outcome"]
        sdc1[str(exp.id)] = bool(row["sdc1"])
    total = time.perf_counter() - t0
    notes.append("experiments by path: " + ", ".join(f"{k} {v}" for k, v in sorted(paths.items()))
                 + " (torch = the same copy-flip-forward where pytorchfi has no API: BatchNorm tensors, biases)")
    return ModeResult(TORCH_MODE, len(exps), total, outcomes, sdc1, list(per_site.values()), notes)


# ---------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime as ort

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}", "onnxruntime": ort.__version__,
            "onnxfi": getattr(onnxfi, "__version__", "?"), "torch": torch_available()[2]}


def fmt_rate(x: float) -> str:
    if not math.isfinite(x):
        return "-"
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def fmt_flops(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.0f}"


def layer_table(res: ModeResult, fc: FlopCounter, names: dict[str, str], batch: int, rate: float,
                out: Callable[[str], None]) -> list[dict[str, Any]]:
    """Per site: exp/s with and without its setup, the FLOP bound and the steady rate's ratio to it."""
    rows = []
    out(f"\n  per layer, mode {res.mode}: exp/s includes the site's setup, steady does not; "
        "bound = ORT FLOP rate / (downstream FLOPs x batch)")
    out(f"  {'site':<34}{'path':>7}{'n':>5}{'setup s':>9}{'exp/s':>8}{'steady':>8}{'bound':>8}"
        f"{'ratio':>7}{'FLOP/img':>10}")
    for st in res.sites:
        down = fc.downstream(names.get(st.site, st.site))
        bound = rate / (down * batch) if down > 0 else float("inf")
        amort = st.n / (st.setup_s + st.run_s) if st.setup_s + st.run_s > 0 else float("nan")
        steady = st.n / st.run_s if st.run_s > 0 else float("nan")
        ratio = steady / bound if math.isfinite(bound) else float("nan")
        rows.append({**asdict(st), "downstream_flop_per_image": down, "bound_exp_s": bound,
                     "exp_s": amort, "steady_exp_s": steady, "ratio_to_bound": ratio})
        out(f"  {st.site[-34:]:<34}{st.path[:7]:>7}{st.n:>5}{st.setup_s:>9.3f}{fmt_rate(amort):>8}"
            f"{fmt_rate(steady):>8}{fmt_rate(bound):>8}{ratio:>7.2f}{fmt_flops(down):>10}")
    return rows


def projection(res: ModeResult, per_site: int) -> float:
    """exp/s this mode would reach with ``per_site`` experiments on every site it ran (same setup and
    steady cost per site as measured): how the per-site setup amortizes in a larger campaign."""
    done = [st for st in res.sites if st.n and st.run_s > 0]
    if not done:
        return float("nan")
    seconds = sum(st.setup_s + per_site * st.run_s / st.n for st in done)
    return per_site * len(done) / seconds


def _clean(x: Any) -> Any:
    """JSON-safe: NaN and infinities become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits_cnn", help="digits_cnn, resnet18 (BatchNorm separate), resnet18_fused (BatchNorm folded into Conv) "
                    "or a path to an .onnx file")
    ap.add_argument("--data", help="an .npz for a model given by path (default: seeded random inputs)")
    ap.add_argument("--faults", type=int, default=1088, help="experiments in the plan (default 1088)")
    ap.add_argument("--baseline-faults", type=int, default=0,
                    help="run naive and pytorchfi on the sites of about this many experiments of the plan (0: all)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ORT and torch threads")
    ap.add_argument("--modes", default="naive,port,suffix,suffix-noverify,pytorchfi",
                    help="comma list of naive, port, suffix (onnxfi engine modes) and pytorchfi")
    ap.add_argument("--torch-impl", choices=("pytorchfi", "plain"), default="pytorchfi",
                    help="pytorchfi: its declare_weight_fi where it applies; plain: copy-flip-forward in torch")
    ap.add_argument("--golden-repeat", type=int, default=5, help="sessions and runs timed for the golden figures")
    ap.add_argument("--project", type=int, default=32,
                    help="also project port/suffix exp/s at this many experiments per site (0: off)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bits", help="bit range LO-HI of the plan (default: every bit), e.g. 23-30 for fp32 exponents")
    ap.add_argument("--json", type=Path, help="write every figure to this JSON file")
    args = ap.parse_args(argv)
    out = print

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in (*ONNXFI_MODES, TORCH_MODE)]
    if bad:
        ap.error(f"unknown mode(s) {bad}; use {', '.join((*ONNXFI_MODES, TORCH_MODE))}")
    model_path, data_path, kind = prepare(args.model, args.data, args.batch)
    sites = weight_sites(model_path)
    names = {s.name: s.tensor_name or s.name for s in sites}
    bits = None
    if args.bits:
        lo, _, hi = args.bits.partition("-")
        bits = list(range(int(lo), int(hi or lo) + 1))
    plan = make_plan(model_path, sites, ["flip"], bits=bits, n_faults=args.faults, seed=args.seed, target="weights")
    exps = list(plan.experiments)
    base_exps = baseline_subset(plan, args.baseline_faults)
    cfg = EngineConfig(str(model_path), data_path=str(data_path) if data_path else None, samples=args.batch,
                       batch=args.batch, threads=args.threads, mode="port")
    probe = Engine(cfg)
    feeds = probe.ctx.data.batch(0, args.batch)
    labels = probe.ctx.data.labels
    del probe
    info = machine()
    out(f"== bench_campaign: {model_path.name}, batch {args.batch}, {args.threads} threads")
    out(f"   {info['cpu']}, {info['cores']} cores; onnxruntime {info['onnxruntime']}; {info['torch']}")
    which = f"bits {args.bits}" if args.bits else "all bits"
    out(f"   plan: {len(exps)} single bit flips over {len(sites)} weight sites x {which} (seed {args.seed}, "
        f"{plan.mode}); {len(exps) / len(sites):.1f} experiments per site")
    if len(base_exps) < len(exps):
        out(f"   naive and pytorchfi run the {len(base_exps)} experiments of {len({e.site for e in base_exps})} "
            f"of the sites (every {round(len(exps) / args.baseline_faults)}th site in plan order)")

    fc = FlopCounter(str(model_path))
    bare = [golden(cfg, feeds, args.golden_repeat, onnxfi_too=True)]
    fi_cold = bare[0]["onnxfi_cold_s"]
    out(f"   model {fmt_flops(fc.total)}FLOP/image; bare ORT golden batch: cold {bare[0]['cold_s'] * 1e3:.2f} ms, "
        f"warm {bare[0]['warm_s'] * 1e3:.2f} ms"
        + (f"; onnxfi clean run (cold) {fi_cold * 1e3:.2f} ms" if fi_cold is not None else ""))

    results: dict[str, ModeResult] = {}
    skipped: dict[str, str] = {}
    have_torch, have_pfi, _ = torch_available()
    for mode in modes:
        if mode == TORCH_MODE:
            if kind is None:
                skipped[mode] = "no PyTorch twin for this model"
            elif not have_torch:
                skipped[mode] = "torch is not installed (use .venv-bench: make bench)"
            else:
                use_pfi = have_pfi and args.torch_impl == "pytorchfi"
                if not use_pfi:
                    out("   note: pytorchfi " + ("not installed" if not have_pfi else "not used (--torch-impl plain)")
                        + "; timing the same copy-flip-forward in plain torch")
                results[mode] = run_torch(kind, model_path, feeds, labels, base_exps, args.threads, use_pfi,
                                          bare[0]["outputs"][0])
        elif mode not in known_modes():
            skipped[mode] = f"the installed onnxfi does not know it (modes: {', '.join(known_modes())})"
        else:
            results[mode] = run_onnxfi(mode, cfg, base_exps if mode == "naive" else exps)
        if mode in skipped:
            out(f"   note: skipping mode {mode}: {skipped[mode]}")
        else:
            r = results[mode]
            out(f"   {mode:<10} {r.experiments:>6} experiments in {r.total_s:8.2f} s = {fmt_rate(r.rate):>7} exp/s")
    bare.append(golden(cfg, feeds, args.golden_repeat, onnxfi_too=False))
    warm = min(b["warm_s"] for b in bare)
    rate = fc.total * args.batch / warm
    out(f"   bare ORT warm golden after the modes: {bare[1]['warm_s'] * 1e3:.2f} ms; "
        f"ORT FLOP rate {rate / 1e9:.1f} GFLOP/s (best warm golden of the two)")

    naive = results.get("naive")
    pfi = results.get(TORCH_MODE)
    header = f"{'mode':<10}{'exp':>7}{'seconds':>10}{'exp/s':>9}{'x naive':>9}{'x pytorchfi':>12}"
    proj = args.project > 0
    out(f"\n  {header}" + (f"{f'@{args.project}/site':>12}" if proj else ""))
    summary = {}
    for mode, r in results.items():
        vs_naive = r.rate / naive.rate if naive else float("nan")
        vs_pfi = r.rate / pfi.rate if pfi else float("nan")
        projected = projection(r, args.project) if proj and mode in ("port", "suffix") else float("nan")
        summary[mode] = {"experiments": r.experiments, "seconds": r.total_s, "exp_s": r.rate,
                         "x_naive": vs_naive, "x_pytorchfi": vs_pfi, "notes": r.notes,
                         "setup_s": sum(st.setup_s for st in r.sites), "sites_run": len(r.sites),
                         f"projected_exp_s_at_{args.project}_per_site": projected}
        out(f"  {mode:<10}{r.experiments:>7}{r.total_s:>10.2f}{fmt_rate(r.rate):>9}{vs_naive:>9.2f}{vs_pfi:>12.2f}"
            + (f"{fmt_rate(projected):>12}" if proj else ""))
    if proj:
        out(f"  (@{args.project}/site: projected exp/s with {args.project} experiments on every site, from each "
            "site's measured setup and steady time; not measured)")
    for mode, r in results.items():
        for note in r.notes[:4]:
            out(f"  [{mode}] {note}")
        if len(r.notes) > 4:
            out(f"  [{mode}] ... {len(r.notes) - 4} more")

    layers = {}
    for mode in ("port", "suffix"):
        if mode in results:
            layers[mode] = layer_table(results[mode], fc, names, args.batch, rate, out)

    # Same plan, same faults: the outcomes should agree (up to one-ulp differences between sessions that
    # turn "masked" into "tolerable"); a check that every mode really ran the same experiments.
    agree = {}
    ref_mode = next((m for m in ("suffix", "port", "naive") if m in results), None)
    if ref_mode:
        ref = results[ref_mode]
        for mode, r in results.items():
            common = [k for k in r.outcomes if k in ref.outcomes]
            if mode == ref_mode or not common:
                continue
            same_out = sum(r.outcomes[k] == ref.outcomes[k] for k in common)
            same_sdc = sum(r.sdc1[k] == ref.sdc1[k] for k in common)
            agree[mode] = {"vs": ref_mode, "n": len(common), "outcome": same_out, "sdc1": same_sdc}
        if agree:
            out(f"\n  agreement with {ref_mode} on the same experiments (outcome, SDC-1 flag):")
            for mode, a in agree.items():
                out(f"    {mode:<10} {a['outcome']}/{a['n']}, {a['sdc1']}/{a['n']}")

    fast = [m for m in ("suffix", "port") if m in results]
    targets: dict[str, Any] = {}
    if fast:
        best = max(fast, key=lambda m: results[m].rate)
        b = results[best]
        out(f"\n  targets (onnxfi = mode {best}; the machine must be quiet for these to mean anything):")
        if naive:
            targets["x_naive"] = b.rate / naive.rate
            out(f"    uniform weight campaign >= 4x naive:     {targets['x_naive']:.2f}x "
                f"{'PASS' if targets['x_naive'] >= 4 else 'FAIL'}")
        if pfi:
            targets["x_pytorchfi"] = b.rate / pfi.rate
            out(f"    uniform weight campaign >= 5x PyTorchFI: {targets['x_pytorchfi']:.2f}x "
                f"{'PASS' if targets['x_pytorchfi'] >= 5 else 'FAIL'}")
        ratios = [(row["ratio_to_bound"], row["site"]) for row in layers[best] if math.isfinite(row["ratio_to_bound"])]
        if ratios:
            low, where = min(ratios)
            targets["min_ratio_to_bound"] = low
            targets["layers_below_0.8"] = sum(r < 0.8 for r, _ in ratios)
            out(f"    every layer >= 0.8 of its FLOP bound:    min {low:.2f} ({where}); "
                f"{targets['layers_below_0.8']}/{len(ratios)} layers below")
        if fi_cold is not None:
            targets["golden_vs_bare"] = bare[0]["cold_s"] / fi_cold
            out(f"    golden throughput >= 0.95x bare ORT:     {targets['golden_vs_bare']:.2f}x "
                f"{'PASS' if targets['golden_vs_bare'] >= 0.95 else 'FAIL'} (onnxfi clean run vs bare ORT, "
                f"first run of a fresh session, medians of {args.golden_repeat})")

    if args.json:
        doc = {"machine": info, "model": str(model_path), "batch": args.batch, "threads": args.threads,
               "faults": len(exps), "baseline_faults": len(base_exps), "sites": len(sites), "seed": args.seed,
               "model_flop_per_image": fc.total, "ort_gflop_s": rate / 1e9,
               "golden": {"bare_cold_s": bare[0]["cold_s"], "bare_warm_s": [b["warm_s"] for b in bare],
                          "onnxfi_cold_s": fi_cold},
               "modes": summary, "skipped": skipped, "layers": layers, "agreement": agree, "targets": targets}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_clean(doc), indent=1))
        out(f"\n  wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
