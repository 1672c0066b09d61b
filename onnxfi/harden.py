"""Harden a model without retraining: compose the hardening passes, calibrate them, measure what hardening costs.

``harden(model, ["relumax", "protect"], data)`` runs the methods of the registry
(:data:`onnxfi.passes.HARDENING_METHODS`) in the given order on a copy of the model, profiling activation
ranges on ``data`` for each method that needs them (on the model as the previous passes left it).
``measure_hardening`` measures the clean-metric change and the latency overhead under ONNX Runtime.
The FT-ClipAct threshold search lives here too: it needs data, faults and sessions, which passes never touch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxfi import metrics
from onnxfi.bits import is_float_dtype
from onnxfi.data import Dataset
from onnxfi.errors import OnnxfiError, SessionError, first_line
from onnxfi.faults import BitFlip
from onnxfi.outcomes import output_metric
from onnxfi.passes import HARDENING_METHODS, Calibration, ClipAct
from onnxfi.passes._hardening import Change, Skip, graph_opset, hardening_method
from onnxfi.passes.clipact import threshold_array
from onnxfi.profile import Profile, batch_size_for, copy_model, profile_values
from onnxfi.runtime import make_session, run_batches, run_session
from onnxfi.scoring import OutputChoice, choose_output, plausibility
from onnxfi.sites import enumerate_sites

__all__ = [
    "METHODS",
    "DATA_METHODS",
    "METHOD_OPTIONS",
    "parse_methods",
    "SearchConfig",
    "HardenOptions",
    "PassReport",
    "HardenResult",
    "harden",
    "ClipActSearch",
    "search_clipact_thresholds",
    "HardeningEffect",
    "measure_hardening",
    "run_outputs",
    "score_outputs",
]

# Method name -> one line about it; the methods that need calibration data; option -> the method it applies to.
METHODS: dict[str, str] = {name: cls.summary for name, cls in HARDENING_METHODS.items()}
DATA_METHODS = tuple(name for name, cls in HARDENING_METHODS.items() if cls.calibration is Calibration.RANGES)
METHOD_OPTIONS: dict[str, str] = {opt: name for name, cls in HARDENING_METHODS.items() for opt in cls.options}


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """``"relumax,protect"`` (or a list) -> ``["relumax", "protect"]``; unknown or repeated names are errors."""
    parts = [p.strip().lower() for p in (text.split(",") if isinstance(text, str) else text)]
    parts = [p.replace("_", "-") for p in parts if p]
    if not parts:
        raise OnnxfiError(f"no hardening method given; choose from {', '.join(METHODS)}")
    for p in parts:
        if p not in METHODS:
            raise OnnxfiError(f"unknown hardening method {p!r}; choose from {', '.join(METHODS)}")
    dup = sorted({p for p in parts if parts.count(p) > 1})
    if dup:
        raise OnnxfiError(f"method {dup[0]!r} given twice")
    return parts


@dataclass(frozen=True)
class SearchConfig:
    """FT-ClipAct threshold search: fault rates (per weight bit), trials per rate, narrowing rounds."""

    rates: tuple[float, ...] = (1e-6, 1e-5, 1e-4)
    trials: int = 3
    rounds: int = 3
    candidates: int = 4
    seed: int = 0
    max_samples: int = 256

    def __post_init__(self) -> None:
        if not self.rates or any(not 0 < r < 1 for r in self.rates):
            raise OnnxfiError("search fault rates must be in (0, 1)")
        if self.trials < 1 or self.rounds < 1 or self.candidates < 2 or self.max_samples < 1:
            raise OnnxfiError("search needs trials >= 1, rounds >= 1, candidates >= 2, max_samples >= 1")


@dataclass(frozen=True)
class HardenOptions:
    """Settings of :func:`harden`; each applies to the methods named in its comment."""

    percentile: float | None = None  # ranger: upper bound = this percentile instead of the max
    level: int = 1  # protect: 0..3
    search: bool = False  # clipact: search T instead of the profiled max
    search_config: SearchConfig = field(default_factory=SearchConfig)
    guard_points: str | None = None  # nan-guard: regex over value names instead of the default points
    layers: str | None = None  # every method: only the candidates whose label matches this regex (harden --layers)
    batch_size: int = 64
    provider: str = "cpu"
    threads: int | None = None
    seed: int = 0
    output: str | None = None  # the scored output (the clipact search); None: onnxfi.scoring chooses
    task: str | None = None  # read the scored output as this task; None: from the labels / shape

    def __post_init__(self) -> None:
        if self.percentile is not None and not 0 < self.percentile <= 100:
            raise OnnxfiError(f"--percentile must be in (0, 100], got {self.percentile}")
        if self.level not in (0, 1, 2, 3):
            raise OnnxfiError(f"--level must be 0, 1, 2 or 3, got {self.level}")
        if self.batch_size < 1:
            raise OnnxfiError("batch size must be at least 1")
        if self.layers is not None:
            try:
                re.compile(self.layers)
            except re.error as e:
                raise OnnxfiError(f"--layers {self.layers!r} is not a regular expression: {e}") from None


@dataclass
class PassReport:
    """What one method did: nodes (or weights) changed, candidates skipped with reasons, and details."""

    method: str
    changes: list[Change]
    skips: list[Skip]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "changed": [c.to_dict() for c in self.changes],
            "skipped": [s.to_dict() for s in self.skips],
            "details": self.details,
        }


@dataclass
class HardenResult:
    """The hardened model (a copy) and one report per method, in the order they ran."""

    model: ir.Model
    reports: list[PassReport]

    def to_dict(self) -> dict[str, Any]:
        return {"passes": [r.to_dict() for r in self.reports]}


# --------------------------------------------------------------------------------------------------
# running models and scoring outputs


def run_outputs(
    model: ir.Model | Any,
    data: Dataset,
    batch_size: int = 64,
    limit: int | None = None,
    provider: str = "cpu",
    threads: int | None = None,
    feeds_extra: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Every output of ``model`` (an ir.Model or a session) on the first ``limit`` samples of ``data``."""
    session = make_session(model, provider=provider, threads=threads) if isinstance(model, ir.Model) else model
    bsize = batch_size_for(model, batch_size) if isinstance(model, ir.Model) else batch_size
    try:
        return run_batches(session, _session_inputs(session, data, limit), batch=bsize, extra=feeds_extra)
    except Exception as e:  # ORT raises its own exception types, each with a one-line message
        raise SessionError(f"onnxruntime cannot run the model: {first_line(e)}") from None


def _session_inputs(session: Any, data: Dataset, limit: int | None = None) -> Dataset:
    """``data`` restricted to the inputs ``session`` takes and to its first ``limit`` samples (no copies)."""
    data = data.select(i.name for i in session.get_inputs())
    return data if limit is None or limit >= data.size else data.head(limit)  # along each input's sample axis


def _decisions(output: np.ndarray, choice: OutputChoice, reference: np.ndarray) -> np.ndarray:
    """The decisions of ``output`` read as the scored output (a mask with the threshold of ``reference``)."""
    threshold = metrics.mask_threshold(reference) if choice.layout in metrics.MASK_LAYOUTS else None
    with np.errstate(invalid="ignore"):
        return metrics.decisions(output, choice.layout, threshold)


def score_outputs(
    reference: Mapping[str, np.ndarray],
    outputs: Mapping[str, np.ndarray],
    labels: np.ndarray | None,
    choice: OutputChoice | None = None,
) -> tuple[OutputChoice, str, float | None, float | None]:
    """(the scored output, metric, reference score, score) of ``outputs`` against ``reference``'s run.

    The scored output is ``choice``, else :func:`onnxfi.scoring.choose_output` on ``reference`` and
    ``labels``. With labels that fit it: the task metric (``accuracy`` of class ids, ``miou`` of label
    maps) of both runs; else ``top1_agreement``, the fraction of decisions (samples, or pixels) equal
    to the reference's; a raw output (no decisions) scores ``none``.
    """
    choice = choice or choose_output(reference, labels)
    if choice.layout == "raw":
        return choice, "none", None, None
    ref, out = reference[choice.name], outputs[choice.name]
    if choice.task == "detection":  # mAP@0.5 against the labels, else against the reference's detections
        lab = labels if choice.metric is not None else None
        metric, before = output_metric(choice.task, choice.layout, reference, reference, choice.name, lab)
        return choice, metric, before, output_metric(choice.task, choice.layout, outputs, reference, choice.name,
                                                     lab)[1]
    if labels is not None and choice.metric is not None:
        with np.errstate(invalid="ignore"):
            metric, before = output_metric(choice.task, choice.layout, reference, reference, choice.name, labels)
            after = output_metric(choice.task, choice.layout, outputs, reference, choice.name, labels)[1]
        return choice, metric, before, after
    return choice, "top1_agreement", 1.0, float(np.mean(_decisions(out, choice, ref) == _decisions(ref, choice, ref)))


# --------------------------------------------------------------------------------------------------
# FT-ClipAct threshold search


@dataclass
class ClipActSearch:
    """Result of the search: T per activation, the AUC before/after, and every evaluated candidate."""

    thresholds: dict[str, float]
    initial: dict[str, float]
    auc_initial: float
    auc_final: float
    metric: str
    history: list[dict[str, Any]]
    fault_bits: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "thresholds": self.thresholds,
            "initial": self.initial,
            "auc_initial": self.auc_initial,
            "auc_final": self.auc_final,
            "metric": self.metric,
            "fault_bits": self.fault_bits,
            "history": self.history,
        }


def _fault_sets(
    weights: Mapping[str, np.ndarray], config: SearchConfig
) -> tuple[list[list[dict[str, np.ndarray]]], int]:
    """Per rate, per trial: the weights hit by random single-bit flips (rate per stored bit), seeded."""
    names = list(weights)
    bits = np.array([weights[n].size * weights[n].itemsize * 8 for n in names], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(bits)])
    total = int(offsets[-1])
    out: list[list[dict[str, np.ndarray]]] = []
    for ri, rate in enumerate(config.rates):
        trials = []
        for t in range(config.trials):
            rng = np.random.default_rng([config.seed, ri, t])
            k = int(rng.binomial(total, rate)) if total else 0
            positions = rng.integers(0, total, size=k) if k else np.zeros(0, dtype=np.int64)
            faulty: dict[str, np.ndarray] = {}
            for pos in positions:
                si = int(np.searchsorted(offsets, pos, side="right") - 1)
                name = names[si]
                width = weights[name].itemsize * 8
                element, bit = divmod(int(pos - offsets[si]), width)
                arr = faulty.setdefault(name, weights[name].copy())
                flat = arr.reshape(-1)
                flat[element : element + 1] = BitFlip((bit,)).apply(flat[element : element + 1])
            trials.append(faulty)
        out.append(trials)
    return out, total


def _auc(accuracies: Sequence[float], rates: Sequence[float]) -> float:
    """Area under accuracy vs log10(fault rate), normalised to [0, 1] (the accuracy itself for one rate)."""
    if len(rates) == 1:
        return float(accuracies[0])
    x = np.log10(np.asarray(rates, dtype=np.float64))
    order = np.argsort(x)
    x, y = x[order], np.asarray(accuracies, dtype=np.float64)[order]
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))
    return area / float(x[-1] - x[0])


def search_clipact_thresholds(
    model: ir.Model,
    threshold_values: Mapping[str, str],
    initial: Mapping[str, float],
    data: Dataset,
    labels: np.ndarray,
    output: str,
    config: SearchConfig | None = None,
    batch_size: int = 64,
    provider: str = "cpu",
    threads: int | None = None,
    choice: OutputChoice | None = None,
) -> ClipActSearch:
    """Search T per clipact layer (``threshold_values``: activation -> T initializer) as FT-ClipAct does.

    Layer by layer, T starts in [0, max]: ``candidates`` evenly spaced values in (lo, hi] are scored by
    the area under the accuracy-vs-fault-rate curve, the interval shrinks to one spacing either side of
    the round's best, ``rounds`` times; each layer keeps the best T seen (the profiled max unless a
    candidate beat it), so the final AUC is never below the initial one. Faults: at each rate, ``trials`` seeded draws of random single-bit flips
    (rate per stored bit) over the float32 weights of every graph (initializers and Constant nodes,
    hardening constants excluded), the same draws for every candidate. Each draw is baked into its own
    session (so ORT still folds and prepacks weights); the T values are fed as overridable
    initializers. ``model`` is not modified. Accuracy is the fraction of the decisions of ``output``
    (read as ``choice`` says; default: :func:`onnxfi.scoring.choose_output` with ``output`` requested)
    equal to ``labels``: class ids per sample, or per pixel.
    """
    cfg = config or SearchConfig()
    evaluation = copy_model(model)
    graph = evaluation.graph
    opset = graph_opset(graph)
    t_inits = {layer: graph.initializers[name] for layer, name in threshold_values.items()}
    t_names = {v.name for v in t_inits.values()}
    present = {v.name for v in graph.inputs}
    for v in t_inits.values():
        if v.name not in present:
            graph.inputs.append(v)
    index = enumerate_sites(evaluation)
    hardening_nodes = {n.name for n in graph.all_nodes() if hardening_method(n) and n.name}
    sites = {
        site.name: site for site in index.select("weights")
        if site.dtype == ir.DataType.FLOAT and site.tensor_name not in t_names
        and not (site.nodes and set(site.nodes) <= hardening_nodes)
    }
    weights = {name: index.weight_array(site).copy() for name, site in sites.items()}
    fault_sets, total_bits = _fault_sets(weights, cfg)

    def session_with(faulty: Mapping[str, np.ndarray]) -> Any:
        for name, arr in faulty.items():
            index.set_weight_array(sites[name], arr)
        try:
            return make_session(evaluation, provider=provider, threads=threads)
        finally:
            for name in faulty:
                index.set_weight_array(sites[name], weights[name])

    clean = session_with({})
    sessions = [[session_with(f) if f else clean for f in per_rate] for per_rate in fault_sets]
    dtypes = {layer: v.dtype or ir.DataType.FLOAT for layer, v in t_inits.items()}
    n = min(data.size, cfg.max_samples) if data.size else None
    bsize = batch_size_for(model, max(batch_size, cfg.max_samples))
    ref = labels[:n] if n is not None else labels
    clean_all = run_outputs(clean, data, bsize, n)
    clean_out = clean_all[output]
    if choice is None:
        choice = choose_output(clean_all, None, output)
    cache: dict[tuple[tuple[float, ...], int, int], float] = {}
    layers = list(threshold_values)

    def accuracy(ts: Mapping[str, float], ri: int, t: int) -> float:
        faulty = fault_sets[ri][t]
        key = (tuple(ts[layer] for layer in layers), ri if faulty else -1, t if faulty else -1)
        if key not in cache:
            extra = {t_inits[layer].name or "": threshold_array(ts[layer], dtypes[layer], opset) for layer in layers}
            out = run_outputs(sessions[ri][t], data, bsize, n, feeds_extra=extra)[output]
            pred = _decisions(out, choice, clean_out) if choice is not None else None
            cache[key] = float(np.mean(pred == ref)) if pred is not None and pred.shape == ref.shape else 0.0
        return cache[key]

    def auc(ts: Mapping[str, float]) -> float:
        accs = [float(np.mean([accuracy(ts, ri, t) for t in range(cfg.trials)])) for ri in range(len(cfg.rates))]
        return _auc(accs, cfg.rates)

    current = {layer: float(initial[layer]) for layer in layers}
    auc_initial = auc(current)
    history: list[dict[str, Any]] = []
    for layer in layers:
        top = current[layer]
        lo, hi = 0.0, top
        best_t, best_auc = top, auc(current)  # the profiled max is the candidate to beat
        for rnd in range(cfg.rounds):
            cands = [float(c) for c in np.linspace(lo, hi, cfg.candidates + 1)[1:]]
            scores = [auc({**current, layer: c}) for c in cands]
            i = max(range(len(cands)), key=lambda k: (scores[k], cands[k]))  # ties: the larger T
            history.append({"layer": layer, "round": rnd, "candidates": cands, "auc": scores})
            if scores[i] > best_auc:
                best_t, best_auc = cands[i], scores[i]
            step = (hi - lo) / cfg.candidates
            lo, hi = max(0.0, cands[i] - step), min(top, cands[i] + step)
        current[layer] = best_t
    return ClipActSearch(
        current, dict(initial), auc_initial, auc(current),
        "accuracy (labels)" if labels is not None else "top-1 agreement", history, total_bits,
    )


# --------------------------------------------------------------------------------------------------
# composition


def _profile(
    model: ir.Model, data: Dataset | None, names: list[str], options: HardenOptions, method: str,
    percentiles: Sequence[float] = (),
) -> Profile:
    if data is None:
        raise OnnxfiError(f"{method} needs calibration data to profile activation ranges")
    return profile_values(
        model, data, names, percentiles=percentiles, batch_size=options.batch_size, seed=options.seed,
        provider=options.provider, threads=options.threads,
    )


def _reference_labels(
    original: ir.Model, data: Dataset, options: HardenOptions
) -> tuple[np.ndarray, OutputChoice]:
    """What the clipact search scores against: the labels when they fit the scored output, else the
    original model's decisions; and the scored output."""
    outs = run_outputs(original, data, options.batch_size, options.search_config.max_samples,
                       options.provider, options.threads)
    n = next(iter(outs.values())).shape[0] if outs else 0
    labels = data.labels[:n] if data.labels is not None else None
    choice = choose_output(outs, labels, options.output, options.task)
    if choice.layout == "raw":
        raise OnnxfiError(f"the clipact search needs an output that makes decisions (class scores, a mask); "
                          f"{choice.name!r} makes none")
    if labels is not None and choice.metric is not None:
        ids = labels.reshape(-1) if choice.task == "classification" else labels
        return ids.astype(np.int64), choice
    return _decisions(outs[choice.name], choice, outs[choice.name]), choice


def _run_method(
    model: ir.Model, original: ir.Model, method: str, data: Dataset | None, options: HardenOptions
) -> PassReport:
    pass_ = HARDENING_METHODS[method].from_settings(options)
    pass_.only = re.compile(options.layers) if options.layers else None
    details = pass_.report_settings()
    if options.layers:
        details["layers"] = options.layers
    if pass_.calibration is Calibration.RANGES:
        prof = _profile(model, data, pass_.profile_points(model), options, method, pass_.profile_percentiles())
        pass_.calibrate(prof.ranges)
        details.update(samples=prof.samples, data=prof.source)
    pass_(model)
    details.update(pass_.report_results())
    if isinstance(pass_, ClipAct) and options.search and pass_.threshold_values:
        assert data is not None  # clipact needs calibration data
        labels, choice = _reference_labels(original, data, options)
        result = search_clipact_thresholds(
            model, pass_.threshold_values, dict(pass_.applied), data, labels, choice.name, options.search_config,
            options.batch_size, options.provider, options.threads, choice,
        )
        pass_.set_thresholds(model, result.thresholds)
        details["thresholds"] = result.thresholds
        details["search"] = result.to_dict()
    return PassReport(method, list(pass_.changes), list(pass_.skips), details)


def harden(
    model: ir.Model,
    methods: Sequence[str],
    data: Dataset | None = None,
    options: HardenOptions | None = None,
) -> HardenResult:
    """Apply ``methods`` in order to a copy of ``model``; ``data`` calibrates the data-driven methods."""
    opts = options or HardenOptions()
    chosen = parse_methods(list(methods))
    if opts.search and "clipact" not in chosen:
        raise OnnxfiError("--search tunes clipact thresholds; add clipact to --method")
    if data is None and any(m in DATA_METHODS for m in chosen):
        need = next(m for m in chosen if m in DATA_METHODS)
        raise OnnxfiError(f"{need} needs calibration data to profile activation ranges")
    hardened = copy_model(model)
    reports = [_run_method(hardened, model, m, data, opts) for m in chosen]
    return HardenResult(hardened, reports)


# --------------------------------------------------------------------------------------------------
# what hardening costs


@dataclass
class HardeningEffect:
    """Clean metric and latency of the original and hardened models on the same data and session options."""

    output: str
    metric: str
    before: float | None
    after: float | None
    samples: int
    max_abs_diff: float
    latency_before_ms: float
    latency_after_ms: float
    batch: int
    repeat: int
    data: str
    choice: OutputChoice | None = None  # the scored output and why (onnxfi.scoring)
    warning: str | None = None  # onnxfi.scoring.plausibility of the original's clean metric

    @property
    def metric_change(self) -> float | None:
        return None if self.before is None or self.after is None else self.after - self.before

    @property
    def overhead(self) -> float:
        """Relative latency overhead (0.05 = 5% slower)."""
        return self.latency_after_ms / self.latency_before_ms - 1 if self.latency_before_ms > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        def num(x: float | None) -> float | None:
            return None if x is None or not math.isfinite(x) else float(x)

        return {
            "output": self.output,
            "output_choice": self.choice.to_dict() if self.choice else None,
            "warning": self.warning,
            "metric": self.metric,
            "before": num(self.before),
            "after": num(self.after),
            "change": num(self.metric_change),
            "samples": self.samples,
            "max_abs_diff": num(self.max_abs_diff),
            "data": self.data,
            "latency_ms": {
                "before": self.latency_before_ms,
                "after": self.latency_after_ms,
                "overhead": num(self.overhead),
                "batch": self.batch,
                "repeat": self.repeat,
                "statistic": "median",
            },
        }


def _max_abs_diff(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    worst = 0.0
    for name, x in a.items():
        y = b[name]
        if not is_float_dtype(x.dtype) or x.shape != y.shape or x.size == 0:
            continue
        with np.errstate(invalid="ignore", over="ignore"):
            d = np.abs(x.astype(np.float64) - y.astype(np.float64))
        d = d[np.isfinite(d)]
        if d.size:
            worst = max(worst, float(d.max()))
    return worst


def measure_hardening(
    original: ir.Model,
    hardened: ir.Model,
    data: Dataset,
    *,
    repeat: int = 50,
    batch_size: int = 64,
    provider: str = "cpu",
    threads: int | None = None,
    choice: OutputChoice | None = None,
    output: str | None = None,
    task: str | None = None,
) -> HardeningEffect:
    """Score both models on ``data`` and time them (median of ``repeat`` runs of the first batch each).

    The scored output is ``choice``, else :func:`onnxfi.scoring.choose_output` on the original's outputs
    (``output`` / ``task`` as ``--output`` / ``--task``); see :func:`score_outputs`.
    Both sessions use the same provider, optimization level (all) and threads; timed runs alternate
    between the two models in rounds so that drift (turbo, other load) hits both alike.
    """
    if repeat < 1:
        raise OnnxfiError("--repeat must be at least 1")
    s0 = make_session(original, provider=provider, threads=threads)
    s1 = make_session(hardened, provider=provider, threads=threads)
    bsize = batch_size_for(original, batch_size)
    ref = run_outputs(s0, data, bsize)
    out = run_outputs(s1, data, bsize)
    if choice is None:
        choice = choose_output(ref, data.labels, output, task)
    choice, metric, before, after = score_outputs(ref, out, data.labels, choice)
    warning = plausibility(choice, before) if before is not None and metric in ("accuracy", "miou") else None
    feeds = _session_inputs(s0, data).batch(0, bsize)
    rounds = min(repeat, 5)
    t0: list[float] = []
    t1: list[float] = []
    for r in range(rounds):
        k = repeat // rounds + (1 if r < repeat % rounds else 0)
        t0 += run_session(s0, feeds, repeat=k, warmup=1).times
        t1 += run_session(s1, feeds, repeat=k, warmup=1).times
    first = next(iter(feeds.values()), None)
    batch = int(first.shape[0]) if first is not None and first.ndim else 1
    return HardeningEffect(
        choice.name, metric, before, after, max(1, data.size), _max_abs_diff(ref, out),
        float(np.median(t0)) * 1e3, float(np.median(t1)) * 1e3, batch, repeat, data.source, choice, warning,
    )
