"""Execute experiments: per site one ONNX Runtime session with the site opened to faults, a golden run
from that same session, then each fault's outputs classified against it.

Outcomes (one per experiment, first match wins): ``crash`` (runtime error, dead worker, timeout),
``due`` (NaN/Inf in an output the golden run had finite), ``critical`` (task metric drops by more than
the threshold), ``sdc5`` (golden top-1 leaves the top-5 on some image), ``sdc1`` (top-1 changes on
some image; for segmentation: some pixel's class), ``tolerable`` (outputs differ, no decision does),
``masked`` (every output bitwise equal to golden). The flags are kept separately, so the SDC-1 rate
counts every experiment that changed a decision, SDC-5 and critical ones included.
"""

from __future__ import annotations

import importlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxfi import metrics
from onnxfi.bits import dtype_info
from onnxfi.data import Dataset, load_data, random_data
from onnxfi.errors import OnnxfiError
from onnxfi.faults import BitFault, BitFlip, Fault, RandomValue, SetValue, inject_element
from onnxfi.model import LoadedModel, load_model
from onnxfi.passes.activation_fault import InsertActivationFault, required_opset
from onnxfi.passes.fault_port import (
    PORT_AND,
    PORT_OR,
    PORT_SEL,
    PORT_VAL,
    PORT_XOR,
    AddActivationPort,
    WeightToInput,
    identity_ports,
)
from onnxfi.passes.opset import upgrade_opset
from onnxfi.plan import Experiment
from onnxfi.runtime import make_session
from onnxfi.sites import Site, SiteIndex, enumerate_sites

__all__ = ["EngineConfig", "Engine", "classify", "OUTCOMES", "task_metric"]

OUTCOMES = ("masked", "tolerable", "sdc1", "sdc5", "critical", "due", "crash")


@dataclass
class EngineConfig:
    """Everything a worker needs to rebuild the same sessions and data (plain, picklable values)."""

    model_path: str
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    check: bool = True
    data_path: str | None = None
    samples: int = 16
    data_seed: int = 0
    provider: str = "cpu"
    threads: int | None = None
    batch: int = 256
    output: str | None = None
    task: str | None = None
    critical: float = 0.01
    metric: str | None = None
    mode: str = "port"  # "port": one session per site; "naive": a rebuilt model and session per fault
    max_sessions: int = 8


def _load_metric(spec: str) -> Callable[..., Any]:
    mod, _, fn = spec.partition(":")
    if not mod or not fn:
        raise OnnxfiError(f"bad --metric {spec!r}: use module:function")
    try:
        return getattr(importlib.import_module(mod), fn)  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as e:
        raise OnnxfiError(f"cannot load --metric {spec!r}: {e}") from None


def task_metric(task: str, out: np.ndarray, golden: np.ndarray, labels: np.ndarray | None) -> tuple[str, float]:
    """The metric that decides 'critical': accuracy / mIoU vs labels, else agreement with golden."""
    if task == "classification":
        if labels is not None:
            return "accuracy", metrics.accuracy(out, labels)
        return "golden_agreement", float(np.mean(metrics.top1(out) == metrics.top1(golden)))
    if task == "segmentation":
        ref = labels if labels is not None else golden
        pred = out
        k = out.shape[1] if out.ndim == 4 else None
        return "miou", metrics.miou(pred, ref, k)
    return "max_abs_error", metrics.error_stats(out, golden)["max_abs"]


def classify(
    golden: dict[str, np.ndarray],
    faulty: dict[str, np.ndarray],
    primary: str,
    task: str,
    labels: np.ndarray | None,
    critical: float,
    custom: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Outcome flags and metrics of one experiment (see the module docstring)."""
    masked = all(
        faulty[k].shape == g.shape and faulty[k].tobytes() == g.tobytes() for k, g in golden.items()
    )
    out, gold = faulty[primary], golden[primary]
    due = False
    for k, g in golden.items():
        f = faulty[k]
        if f.dtype.kind == "f" and not np.all(np.isfinite(f)) and np.all(np.isfinite(g)):
            due = True
    m: dict[str, Any] = {}
    sdc1 = sdc5 = False
    changed_frac = 0.0
    if masked:
        pass
    elif task == "classification":
        m = metrics.classification_metrics(out, gold, labels)
        s1 = metrics.sdc1_mask(out, gold)
        sdc1 = bool(s1.any())
        sdc5 = bool(metrics.sdc5_mask(out, gold).any())
        changed_frac = float(s1.mean())
    elif task == "segmentation":
        m = metrics.segmentation_metrics(out, gold, labels)
        sdc1 = m.get("pixel_change_frac", 0.0) > 0
        pred = out.argmax(1) if out.ndim == 4 else out
        gpred = gold.argmax(1) if gold.ndim == 4 else gold
        changed_frac = float(np.mean(np.any((pred != gpred).reshape(len(pred), -1), axis=1)))
    else:
        m = {f"err_{k}": v for k, v in metrics.error_stats(out, gold).items()}
        sdc1 = True
        changed_frac = float(np.mean(np.any((out != gold).reshape(len(out), -1), axis=1))) if out.ndim else 1.0
    name, clean = task_metric(task, gold, gold, labels)
    value = clean if masked else task_metric(task, out, gold, labels)[1]
    m["task_metric"] = name
    m["task_value"] = float(value)
    m["clean_value"] = float(clean)
    drop = (value - clean) if name == "max_abs_error" else (clean - value)
    is_critical = (not masked) and (not np.isfinite(value) or drop > critical) and name != "max_abs_error"
    if custom is not None:
        res = custom(faulty, golden, labels)
        if isinstance(res, dict):
            m.update({f"custom_{k}": float(v) for k, v in res.items()})
        else:
            m["custom"] = float(res)
    if due:
        outcome = "due"
    elif is_critical:
        outcome = "critical"
    elif sdc5:
        outcome = "sdc5"
    elif sdc1:
        outcome = "sdc1"
    elif masked:
        outcome = "masked"
    else:
        outcome = "tolerable"
    clean_m = {k: (float(v) if isinstance(v, (int, float, np.floating)) and np.isfinite(v) else
                   (None if isinstance(v, (int, float, np.floating)) else v)) for k, v in m.items()}
    return {
        "outcome": outcome, "masked": masked, "sdc1": sdc1 or sdc5, "sdc5": sdc5,
        "critical": is_critical, "due": due, "crash": False, "images_changed": changed_frac,
        "metrics": clean_m,
    }


class _SiteRunner:
    """One site's session: feeds that inject a fault, and the golden outputs of the same session."""

    def __init__(self, engine: Engine, site: Site, needs_bits: bool, needs_values: bool) -> None:
        self.engine, self.site = engine, site
        cfg = engine.cfg
        loaded = load_model(cfg.model_path, cfg.input_shapes, check=False)
        self.extra: dict[str, np.ndarray] = {}
        model: ir.Model = loaded.model
        if site.kind == "weight":
            if site.graph:  # subgraph weights cannot be fed; rebuild per fault
                self.mode = "rebuild"
                self.loaded = loaded
                self.index = enumerate_sites(loaded.model, loaded.value_shapes)
                self.original = self.index.weight_array(self.index.get(site.name)).copy()
                self.session = None
            else:
                self.mode = "weight"
                self.original = engine.index.weight_array(site).copy()
                WeightToInput(site.tensor_name)(model)
                self.session = make_session(model, cfg.provider, threads=cfg.threads)
        else:
            self.mode = "activation"
            if needs_bits:
                model = upgrade_opset(model, required_opset(site, _BIT_PROBE))
            port = AddActivationPort(site, needs_bits, needs_values)
            port(model)
            self.port_shape = port.port_shape()
            ident = identity_ports(site, self.port_shape)
            keep = ([PORT_AND, PORT_OR, PORT_XOR] if needs_bits else []) + ([PORT_SEL, PORT_VAL] if needs_values else [])
            self.identity = {k: ident[k] for k in keep}
            self.session = make_session(model, cfg.provider, threads=cfg.threads)
        t0 = time.perf_counter()
        self.golden = self._run(self._clean_feeds())
        self.golden_time = time.perf_counter() - t0

    def _clean_feeds(self) -> dict[str, np.ndarray]:
        if self.mode == "weight":
            return {self.site.tensor_name: self.original}
        if self.mode == "activation":
            return dict(self.identity)
        return {}

    def _run(self, extra: dict[str, np.ndarray], session: Any = None) -> dict[str, np.ndarray]:
        sess = session if session is not None else self.session
        assert sess is not None
        data = self.engine.data
        names = self.engine.output_names
        chunks: list[list[np.ndarray]] = []
        n = max(1, data.size)
        bs = self.engine.cfg.batch
        for start in range(0, n, bs):
            feeds = data.batch(start, min(n, start + bs))
            feeds.update(extra)
            chunks.append(sess.run(names, feeds))
        return {
            name: (np.concatenate([c[i] for c in chunks]) if len(chunks) > 1 else np.asarray(chunks[0][i]))
            for i, name in enumerate(names)
        }

    def run(self, exp: Experiment) -> dict[str, np.ndarray]:
        fault = exp.fault_obj()
        rng = np.random.default_rng(exp.seed)
        if self.mode == "weight":
            arr = inject_element(self.original, exp.index, fault, rng)
            return self._run({self.site.tensor_name: arr})
        if self.mode == "rebuild":
            site = self.index.get(self.site.name)
            arr = inject_element(self.original, exp.index, fault, rng)
            self.index.set_weight_array(site, arr)
            try:
                sess = make_session(self.loaded.model, self.engine.cfg.provider, threads=self.engine.cfg.threads)
            finally:
                self.index.set_weight_array(site, self.original)
            return self._run({}, sess)
        feeds = {k: v.copy() for k, v in self.identity.items()}
        info = dtype_info(self.site.dtype)
        if isinstance(fault, RandomValue):
            fault = SetValue(float(fault.draw(rng, (1,), info.numpy)[0]))
        if isinstance(fault, BitFault):
            m = fault.masks(info)
            word_np = info.word if info.is_float else info.numpy
            for key, value in ((PORT_AND, m.and_mask), (PORT_OR, m.or_mask), (PORT_XOR, m.xor_mask)):
                feeds[key].reshape(-1)[exp.index] = np.array(value, dtype=info.word).view(word_np)
        else:
            assert isinstance(fault, SetValue)
            feeds[PORT_SEL].reshape(-1)[exp.index] = True
            feeds[PORT_VAL].reshape(-1)[exp.index] = fault.apply(np.zeros(1, info.numpy))[0]
        return self._run(feeds)


_BIT_PROBE: Fault = BitFlip((0,))


class _NaiveRunner(_SiteRunner):
    """Reference path: per fault, a model rewritten with the fault baked in and a new session."""

    def __init__(self, engine: Engine, site: Site) -> None:
        self.engine, self.site = engine, site
        cfg = engine.cfg
        self.loaded = load_model(cfg.model_path, cfg.input_shapes, check=False)
        self.index = enumerate_sites(self.loaded.model, self.loaded.value_shapes)
        self.mode = "naive"
        self.session = make_session(self.loaded.model, cfg.provider, threads=cfg.threads)
        t0 = time.perf_counter()
        self.golden = self._run({})
        self.golden_time = time.perf_counter() - t0

    def run(self, exp: Experiment) -> dict[str, np.ndarray]:
        fault = exp.fault_obj()
        rng = np.random.default_rng(exp.seed)
        loaded = load_model(self.engine.cfg.model_path, self.engine.cfg.input_shapes, check=False)
        index = enumerate_sites(loaded.model, loaded.value_shapes)
        site = index.get(self.site.name)
        if site.kind == "weight":
            arr = inject_element(index.weight_array(site), exp.index, fault, rng)
            index.set_weight_array(site, arr)
            model = loaded.model
        else:
            p = InsertActivationFault(site, exp.index, fault, None, rng)
            model = upgrade_opset(loaded.model, required_opset(site, p.fault))
            p(model)
        sess = make_session(model, self.engine.cfg.provider, threads=self.engine.cfg.threads)
        return self._run({}, sess)


class Engine:
    """Loads the model and data once, keeps recent site sessions, runs and classifies experiments."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.loaded: LoadedModel = load_model(cfg.model_path, cfg.input_shapes, check=cfg.check)
        self.index: SiteIndex = enumerate_sites(self.loaded.model, self.loaded.value_shapes)
        specs = self.loaded.inputs()
        self.data: Dataset = (
            load_data(cfg.data_path, specs) if cfg.data_path
            else random_data(specs, seed=cfg.data_seed, batch=cfg.samples, overrides=cfg.input_shapes)
        )
        outs = [o.name for o in self.loaded.outputs()]
        self.output_names = outs
        primary = cfg.output or outs[0]
        if primary not in outs:
            raise OnnxfiError(f"--output {primary!r} is not a model output ({', '.join(outs)})")
        self.primary = primary
        self.custom = _load_metric(cfg.metric) if cfg.metric else None
        self._runners: OrderedDict[tuple[str, bool, bool], _SiteRunner] = OrderedDict()
        self.task: str = cfg.task or ""

    def runner(self, site_name: str, needs_bits: bool, needs_values: bool) -> _SiteRunner:
        key = (site_name, needs_bits, needs_values)
        r = self._runners.get(key)
        if r is None:
            site = self.index.get(site_name)
            r = _NaiveRunner(self, site) if self.cfg.mode == "naive" else _SiteRunner(self, site, needs_bits, needs_values)
            self._runners[key] = r
            while len(self._runners) > self.cfg.max_sessions:
                self._runners.popitem(last=False)
            if not self.task:
                gold = r.golden[self.primary]
                self.task = metrics.detect_task(gold.shape, gold.dtype)
        else:
            self._runners.move_to_end(key)
        return r

    def golden(self, site_name: str) -> dict[str, np.ndarray]:
        return self.runner(site_name, False, False).golden

    def run(self, exp: Experiment, needs_bits: bool, needs_values: bool) -> dict[str, Any]:
        """Run one experiment; returns its row (without worker/time bookkeeping)."""
        r = self.runner(exp.site, needs_bits, needs_values)
        faulty = r.run(exp)
        return classify(r.golden, faulty, self.primary, self.task, self.data.labels, self.cfg.critical, self.custom)

    def clean_summary(self) -> dict[str, Any]:
        """Metrics of the fault-free model on the campaign data (full session, no ports)."""
        sess = make_session(self.loaded.model, self.cfg.provider, threads=self.cfg.threads)
        runner = _SiteRunner.__new__(_SiteRunner)
        runner.engine, runner.session = self, sess
        t0 = time.perf_counter()
        outs = runner._run({})
        elapsed = time.perf_counter() - t0
        gold = outs[self.primary]
        task = self.task or metrics.detect_task(gold.shape, gold.dtype)
        self.task = task
        name, value = task_metric(task, gold, gold, self.data.labels)
        return {"task": task, "metric": name, "value": value, "golden_time_s": elapsed,
                "samples": self.data.size, "data": self.data.source, "primary_output": self.primary}
