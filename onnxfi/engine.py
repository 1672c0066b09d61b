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
import onnx
import onnx.numpy_helper
import onnx_ir as ir

from onnxfi import metrics
from onnxfi.bits import dtype_info, dtype_info_for_numpy
from onnxfi.data import Dataset, load_data, random_data
from onnxfi.errors import OnnxfiError
from onnxfi.faults import BitFault, BitFlip, Fault, RandomValue, SetValue, inject_element
from onnxfi.model import LoadedModel, load_model
from onnxfi.passes.activation_fault import InsertActivationFault, required_opset
from onnxfi.passes.expose import ExposeValues
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
from onnxfi.suffix import Cut, CutError, boundary, cut_model, weight_start

__all__ = ["EngineConfig", "Engine", "classify", "OUTCOMES", "task_metric", "MODES"]

MODES = ("suffix", "port", "naive")

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
    # "suffix": per site, a cached fault-free prefix and a session of the site's forward cone only
    # (falls back to "port" where a model cannot be cut); "port": one whole-model session per site
    # with the site opened to faults; "naive": a rebuilt model and a new session per fault.
    mode: str = "suffix"
    max_sessions: int = 8
    cache_mb: float = 1024.0
    shortcuts: bool = True


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


def _perturbed(weight: np.ndarray) -> np.ndarray:
    """``weight`` with a low bit flipped in every element: a probe that shows whether ORT folds it."""
    info = dtype_info_for_numpy(weight.dtype)
    word = np.ascontiguousarray(weight).view(info.word) if info.is_float else weight
    return np.asarray(word ^ np.asarray(2 if info.bits > 8 else 1, dtype=word.dtype)).view(weight.dtype)


class _SuffixRunner(_SiteRunner):
    """Prefix cache + suffix session: the fault-free model runs once with every tensor the site's
    forward cone reads exposed; each fault then runs only the cone, fed from that cache.

    Activation faults are applied to the cached site tensor in numpy (the same element of every image,
    as the port does), so no fault node and no opset upgrade is needed. Weight faults feed the faulty
    weight to the cone, which starts at the weight's consumers. When the site's only consumer is a
    ReLU, MaxPool or Clip and that node's output on the faulty tensor is bitwise equal to its golden
    output, the fault is masked and the cone is not run (``shortcuts``).
    """

    def __init__(self, engine: Engine, site: Site) -> None:
        self.engine, self.site = engine, site
        self.mode = "suffix"
        self.shortcuts = 0
        cfg = engine.cfg
        if site.graph:
            raise CutError("site is inside a subgraph")
        proto = engine.model_proto()
        name = site.tensor_name
        self.info = dtype_info(site.dtype)
        start = weight_start(proto, name) if site.kind == "weight" else [name]
        expose = boundary(proto, start, [name]) + ([name] if site.kind == "activation" else [])
        full = load_model(cfg.model_path, cfg.input_shapes, check=False).model
        if expose:
            ExposeValues(expose)(full)
        prefix = make_session(full, cfg.provider, threads=cfg.threads)
        out_names = [o.name for o in prefix.get_outputs()]
        self.chunks: list[dict[str, np.ndarray]] = []
        budget = cfg.cache_mb * 2**20
        used = 0
        data = engine.data
        n = max(1, data.size)
        for lo in range(0, n, cfg.batch):
            feeds = data.batch(lo, min(n, lo + cfg.batch))
            outs = dict(zip(out_names, prefix.run(out_names, feeds)))
            chunk = {k: np.asarray(v) for k, v in outs.items()}
            chunk.update(feeds)
            used += sum(v.nbytes for k, v in outs.items() if k in expose)
            if used > budget:
                raise CutError(f"prefix cache for {site.name} needs more than --cache-mb {cfg.cache_mb:g}")
            self.chunks.append(chunk)
        del prefix
        self.cache_bytes = used
        if site.kind == "weight":
            self.original = engine.index.weight_array(site).copy()
        else:
            arr = self.chunks[0][name]
            if arr.dtype != self.info.numpy:
                raise CutError(f"ONNX Runtime returns {site.name} as {arr.dtype}, not {self.info.numpy}")
        cut: Cut = cut_model(proto, start, [name], {**self.chunks[0], name: self.original} if site.kind == "weight" else self.chunks[0])
        self.cut = cut
        self.session = make_session(cut.model.SerializeToString(), cfg.provider, threads=cfg.threads)
        self.checkpoint = None
        if cfg.shortcuts and site.kind == "activation" and cut.checkpoint is not None:
            self.checkpoint = make_session(cut.checkpoint.SerializeToString(), cfg.provider, threads=1)
            self.checkpoint_golden = [self._check(c[name]) for c in self.chunks]
        t0 = time.perf_counter()
        self.golden = self._suffix_run(
            (lambda c: self.original) if site.kind == "weight" else (lambda c: c[name]))
        self.golden_time = time.perf_counter() - t0
        self.baked = False
        if site.kind == "weight":
            # A weight fed as an input stops ORT from folding it (Conv+BatchNormalization fusion,
            # DequantizeLinear of constant weights, constant subexpressions), which changes the
            # arithmetic. If the fault-free outputs show that, each fault gets its own session with the
            # faulty weight baked in, as the whole-model path does, but of the forward cone only.
            def differs(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
                return any(a[k].tobytes() != b[k].tobytes() for k in a)

            baked_golden = self._suffix_run(lambda c: self.original, self._baked_session(self.original))
            folded = differs(baked_golden, self.golden)
            if not folded:  # equal fault-free outputs can hide a fold: try a perturbed weight too
                probe = _perturbed(self.original)
                folded = differs(self._suffix_run(lambda c: probe, self._baked_session(probe)),
                                 self._suffix_run(lambda c: probe))
            if folded:
                self.baked = True
                self.golden = baked_golden
                engine.fallbacks[site.name] = "weight is folded by ONNX Runtime: one cone session per fault"

    def _check(self, x: np.ndarray) -> bytes:
        assert self.checkpoint is not None
        return bytes(np.asarray(self.checkpoint.run(None, {self.site.tensor_name: x})[0]).tobytes())

    def _baked_session(self, weight: np.ndarray) -> Any:
        """A session of the cone with ``weight`` as an initializer instead of an input."""
        model = onnx.ModelProto()
        model.CopyFrom(self.cut.model)
        name = self.site.tensor_name
        keep = [i for i in model.graph.input if i.name != name]
        del model.graph.input[:]
        model.graph.input.extend(keep)
        model.graph.initializer.append(onnx.numpy_helper.from_array(weight, name))
        return make_session(model.SerializeToString(), self.engine.cfg.provider, threads=self.engine.cfg.threads)

    def _suffix_run(
        self, site_value: Callable[[dict[str, np.ndarray]], np.ndarray], session: Any = None
    ) -> dict[str, np.ndarray]:
        sess = session if session is not None else self.session
        assert sess is not None
        cut, name = self.cut, self.site.tensor_name
        parts: dict[str, list[np.ndarray]] = {k: [] for k in self.engine.output_names}
        for chunk in self.chunks:
            feeds = {k: chunk[k] for k in cut.inputs if k != name}
            value = site_value(chunk)
            if session is None:
                feeds[name] = value
            outs = sess.run(cut.outputs, feeds) if cut.outputs else []
            got = dict(zip(cut.outputs, outs))
            for k in self.engine.output_names:
                if k in got:
                    parts[k].append(np.asarray(got[k]))
                elif k == name:  # the site itself is a model output
                    parts[k].append(value)
                else:
                    parts[k].append(chunk[k])
        return {k: (np.concatenate(v) if len(v) > 1 else v[0]) for k, v in parts.items()}

    def run(self, exp: Experiment) -> dict[str, np.ndarray]:
        fault = exp.fault_obj()
        rng = np.random.default_rng(exp.seed)
        if self.site.kind == "weight":
            arr = inject_element(self.original, exp.index, fault, rng)
            if self.baked:
                return self._suffix_run(lambda c: arr, self._baked_session(arr))
            return self._suffix_run(lambda c: arr)
        if isinstance(fault, RandomValue):  # one value for every image, drawn as the port draws it
            fault = SetValue(float(fault.draw(rng, (1,), self.info.numpy)[0]))
        name, batched = self.site.tensor_name, self.site.batched
        faulty: list[np.ndarray] = []
        guard = True
        for chunk in self.chunks:
            x = np.array(chunk[name], copy=True)
            flat = x.reshape(len(x), -1) if batched and x.ndim else x.reshape(1, -1)
            old = flat[:, exp.index].copy()
            new = fault.apply(old)
            flat[:, exp.index] = new
            faulty.append(x)
            changed = old.view(np.uint8).reshape(len(old), -1) != new.view(np.uint8).reshape(len(new), -1)
            moved = new[changed.any(axis=1)]
            if moved.dtype.kind == "f" and (not np.all(np.isfinite(moved)) or np.any(moved == 0)):
                guard = False  # NaN/Inf/±0 may be treated differently once fused: no shortcut
        if self.checkpoint is not None and guard and all(
            self._check(x) == g for x, g in zip(faulty, self.checkpoint_golden)
        ):
            self.shortcuts += 1
            return self.golden
        it = iter(faulty)
        return self._suffix_run(lambda c: next(it))


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
        self._proto: onnx.ModelProto | None = None
        self.fallbacks: dict[str, str] = {}  # site -> why the suffix path was not used
        if cfg.mode not in MODES:
            raise OnnxfiError(f"unknown execution mode {cfg.mode!r} (use {', '.join(MODES)})")

    def runner(self, site_name: str, needs_bits: bool, needs_values: bool) -> _SiteRunner:
        key = (site_name, needs_bits, needs_values)
        r = self._runners.get(key)
        if r is None:
            site = self.index.get(site_name)
            r = self._make_runner(site, needs_bits, needs_values)
            self._runners[key] = r
            while len(self._runners) > 1 and (
                len(self._runners) > self.cfg.max_sessions
                or sum(getattr(x, "cache_bytes", 0) for x in self._runners.values()) > self.cfg.cache_mb * 2**20
            ):
                self._runners.popitem(last=False)
            if not self.task:
                gold = r.golden[self.primary]
                self.task = metrics.detect_task(gold.shape, gold.dtype)
        else:
            self._runners.move_to_end(key)
        return r

    def model_proto(self) -> onnx.ModelProto:
        if self._proto is None:
            self._proto = ir.to_proto(self.loaded.model)
        return self._proto

    def _make_runner(self, site: Site, needs_bits: bool, needs_values: bool) -> _SiteRunner:
        if self.cfg.mode == "naive":
            return _NaiveRunner(self, site)
        if self.cfg.mode == "suffix":
            try:
                return _SuffixRunner(self, site)
            except CutError as e:
                self.fallbacks[site.name] = str(e)
        return _SiteRunner(self, site, needs_bits, needs_values)

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
