"""One model on several runtimes: outputs vs a reference runtime (tolerances), latency, and one fault campaign each.

Runtimes ("backends") by name:

- ``cpu``, ``cuda``, ``tensorrt``, ``dml``, ``coreml``, ``rocm``, ... (or a full provider name): ONNX Runtime
  with that execution provider; ``ort-openvino`` is ORT's OpenVINO execution provider;
- ``reference``: the ONNX reference evaluator (``onnx.reference``; pure numpy, exact but slow);
- ``openvino``: OpenVINO's own runtime on its CPU device (``pip install onnxfi[openvino]``).

Tolerances follow Polygraphy: one value or a per-output mapping with a default; an element mismatches only
when *both* its absolute error exceeds ``atol`` and its relative error (to the reference) exceeds ``rtol``.

The fault campaign is the same seeded plan of weight faults on every runtime: each fault is baked into a
copy of the model, which every runtime loads and runs (so each applies its own fusion and precision), and
the outputs are classified (:func:`onnxfi.outcomes.classify`) against that runtime's own fault-free outputs.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from onnxfi import metrics
from onnxfi.bits import is_float_dtype
from onnxfi.data import Dataset
from onnxfi.errors import OnnxfiError, ProviderError, first_line
from onnxfi.faults import inject_element
from onnxfi.model import LoadedModel
from onnxfi.outcomes import FLAGS, OUTCOMES, classify, crash_row, experiment_row, output_metric
from onnxfi.plan import Plan, make_plan
from onnxfi.runtime import PROVIDER_NAMES, run_batches
from onnxfi.scoring import choose_output, describe_shapes, plausibility
from onnxfi.sites import enumerate_sites
from onnxfi.stats import rate_with_ci

__all__ = [
    "COMPARE_SCHEMA",
    "Tolerance",
    "parse_tolerance",
    "Backend",
    "Session",
    "OrtBackend",
    "ReferenceBackend",
    "OpenVinoBackend",
    "RuntimeUnavailable",
    "get_backend",
    "backend_names",
    "available_backends",
    "OutputDiff",
    "compare_outputs",
    "Latency",
    "measure_latency",
    "RuntimeReport",
    "CompareResult",
    "run_compare",
]

COMPARE_SCHEMA = "onnxfi.compare/1"
_SHORT = {v: k for k, v in PROVIDER_NAMES.items()}
_NOT_COMPUTE = {"AzureExecutionProvider"}  # remote endpoints, not a local engine


# ---------------------------------------------------------------------------------------------- tolerances


@dataclass(frozen=True)
class Tolerance:
    """A default value and optional per-output values."""

    default: float
    per_output: Mapping[str, float] = field(default_factory=dict)

    def get(self, output: str) -> float:
        return self.per_output.get(output, self.default)

    def __str__(self) -> str:
        parts = [f"{self.default:g}"] + [f"{k}:{v:g}" for k, v in self.per_output.items()]
        return ",".join(parts)


def parse_tolerance(specs: str | Sequence[str] | float | None, default: float, what: str = "tolerance") -> Tolerance:
    """``"1e-5"``, ``"logits:1e-3"``, ``"1e-5,logits:1e-3"`` or a list of those (Polygraphy's syntax)."""
    if specs is None:
        return Tolerance(default)
    if isinstance(specs, (int, float)):
        return Tolerance(_tol_value(str(specs), what))
    items = [specs] if isinstance(specs, str) else list(specs)
    per: dict[str, float] = {}
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, value = part.rpartition(":")
            if sep:
                if not name:
                    raise OnnxfiError(f"bad {what} {part!r}: use VALUE or OUTPUT:VALUE")
                per[name] = _tol_value(value, what)
            else:
                default = _tol_value(value, what)
    return Tolerance(default, per)


def _tol_value(text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise OnnxfiError(f"bad {what} {text!r}: not a number") from None
    if not v >= 0 or not np.isfinite(v):
        raise OnnxfiError(f"bad {what} {text!r}: must be a finite number >= 0")
    return v


# ---------------------------------------------------------------------------------------------- backends


class RuntimeUnavailable(ProviderError):
    """A runtime that this install or machine cannot use; ``reason`` says why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


class Session(ABC):
    """A loaded model: ``run(feeds)`` -> outputs by name, in the model's output order."""

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Backend(ABC):
    """A runtime that can load ONNX models."""

    name: str = ""

    @abstractmethod
    def load(self, model: onnx.ModelProto, serialized: bytes) -> Session:
        """A session for ``model`` (``serialized`` is the same model as bytes, for runtimes that want them)."""

    def describe(self) -> str:
        return self.name


class _OrtSession(Session):
    def __init__(self, sess: ort.InferenceSession, names: list[str]) -> None:
        self.sess, self.names = sess, names

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.names, (np.asarray(o) for o in self.sess.run(self.names, dict(feeds)))))


class OrtBackend(Backend):
    """ONNX Runtime with one execution provider (and CPU for the nodes it does not take)."""

    def __init__(self, provider: str, threads: int | None = None, name: str | None = None) -> None:
        self.provider = provider
        self.threads = threads
        self.name = name or _SHORT.get(provider, provider)

    def load(self, model: onnx.ModelProto, serialized: bytes) -> Session:
        so = ort.SessionOptions()
        so.log_severity_level = 4  # errors come back as exceptions (one line each), not as log lines
        if self.threads:
            so.intra_op_num_threads = self.threads
        providers = [self.provider] if self.provider == "CPUExecutionProvider" else [self.provider, "CPUExecutionProvider"]
        sess = ort.InferenceSession(serialized, sess_options=so, providers=providers)
        used = sess.get_providers()
        if not used or used[0] != self.provider:
            # ORT falls back to CPU with a log line when a provider's libraries cannot be loaded.
            raise RuntimeUnavailable(self.name, f"onnxruntime fell back to {', '.join(used)}: {self.provider} is listed "
                                     "but could not be initialised (missing CUDA/cuDNN/TensorRT libraries or no device?)")
        return _OrtSession(sess, [o.name for o in model.graph.output])

    def describe(self) -> str:
        return f"onnxruntime {ort.__version__} {self.provider}"


class _RefSession(Session):
    def __init__(self, ev: Any, names: list[str]) -> None:
        self.ev, self.names = ev, names

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with np.errstate(all="ignore"):  # a faulty weight overflows in numpy: that is the point, not a warning
            outs = self.ev.run(None, dict(feeds))
        return dict(zip(self.names, (np.asarray(o) for o in outs)))


class ReferenceBackend(Backend):
    """The ONNX reference evaluator: numpy implementations of the operators, no graph optimizations."""

    name = "reference"

    def load(self, model: onnx.ModelProto, serialized: bytes) -> Session:
        from onnx.reference import ReferenceEvaluator

        return _RefSession(ReferenceEvaluator(model), [o.name for o in model.graph.output])

    def describe(self) -> str:
        return f"onnx {onnx.__version__} reference evaluator"


class _OvSession(Session):
    def __init__(self, compiled: Any, names: list[str]) -> None:
        self.request = compiled.create_infer_request()
        self.ports = list(compiled.outputs)
        self.names = names

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = self.request.infer(dict(feeds))
        # The arrays can share the request's buffers, which the next infer() overwrites: copy them.
        return {n: np.array(res[p], copy=True) for n, p in zip(self.names, self.ports)}


class OpenVinoBackend(Backend):
    """OpenVINO's own runtime (its ONNX frontend and CPU plugin): a second, independent engine."""

    name = "openvino"

    def __init__(self, device: str = "CPU", threads: int | None = None) -> None:
        try:
            import openvino
        except ImportError:
            raise RuntimeUnavailable("openvino", "not installed (pip install onnxfi[openvino])") from None
        self._ov = openvino
        self.core = openvino.Core()
        if device not in self.core.available_devices:
            raise RuntimeUnavailable("openvino", f"device {device} not found (devices: "
                                     f"{', '.join(self.core.available_devices) or 'none'})")
        self.device = device
        self.config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads} if threads else {}

    def load(self, model: onnx.ModelProto, serialized: bytes) -> Session:
        ov_model = self.core.read_model(serialized)
        compiled = self.core.compile_model(ov_model, self.device, self.config)
        return _OvSession(compiled, [o.name for o in model.graph.output])

    def describe(self) -> str:
        version = getattr(self._ov, "__version__", "?").split("-")[0]
        return f"openvino {version} {self.device}"


def backend_names() -> list[str]:
    """Every runtime name ``get_backend`` knows (available or not)."""
    return ["reference", "openvino", "ort-openvino"] + [n for n in PROVIDER_NAMES if n != "openvino"]


def get_backend(name: str, threads: int | None = None) -> Backend:
    """The backend called ``name``; :class:`RuntimeUnavailable` (with the reason) when it cannot run here."""
    key = name.strip()
    low = key.lower()
    if low == "reference":
        return ReferenceBackend()
    if low == "openvino":
        return OpenVinoBackend(threads=threads)
    provider = PROVIDER_NAMES["openvino"] if low == "ort-openvino" else PROVIDER_NAMES.get(low, key)
    if provider not in _SHORT and not provider.endswith("ExecutionProvider"):
        raise OnnxfiError(f"unknown runtime {name!r}; known: {', '.join(backend_names())}")
    label = low if low in PROVIDER_NAMES or low == "ort-openvino" else _SHORT.get(provider, provider)
    avail = ort.get_available_providers()
    if provider not in avail:
        have = ", ".join(_SHORT.get(p, p) for p in avail if p not in _NOT_COMPUTE)
        hint = {
            "CUDAExecutionProvider": "; install onnxruntime-gpu (pip uninstall -y onnxruntime && pip install onnxfi[gpu])",
            "TensorrtExecutionProvider": "; needs onnxruntime-gpu and the TensorRT libraries",
            "OpenVINOExecutionProvider": "; needs onnxruntime-openvino (or use `openvino`, OpenVINO's own runtime)",
        }.get(provider, "")
        raise RuntimeUnavailable(label, f"not in this onnxruntime {ort.__version__} install (it has {have}){hint}")
    return OrtBackend(provider, threads, name=label)


def available_backends() -> list[str]:
    """Names of the runtimes usable here: reference, every local ORT provider, openvino when installed."""
    names = ["reference"] + [_SHORT.get(p, p) for p in ort.get_available_providers() if p not in _NOT_COMPUTE]
    try:
        OpenVinoBackend()
        names.append("openvino")
    except RuntimeUnavailable:
        pass
    return names


# ---------------------------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class OutputDiff:
    """One output of a runtime against the reference runtime's."""

    name: str
    shape: tuple[int, ...]
    ref_shape: tuple[int, ...]
    atol: float
    rtol: float
    max_abs: float
    max_rel: float
    mean_abs: float
    mismatches: int
    elements: int
    passed: bool
    top1_agreement: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["shape"], d["ref_shape"] = list(self.shape), list(self.ref_shape)
        for k in ("max_abs", "max_rel", "mean_abs"):
            d[k] = float(d[k]) if np.isfinite(d[k]) else str(d[k])
        return d


def compare_outputs(
    ref: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray], atol: Tolerance, rtol: Tolerance
) -> list[OutputDiff]:
    """Per output of ``ref``: error statistics and whether every element is within tolerance.

    An element mismatches when ``|out - ref| > atol`` and ``|out - ref| / |ref| > rtol``; NaN in the
    same place in both is a match, NaN in one only is a mismatch.
    """
    diffs = []
    for name, r in ref.items():
        a_t, r_t = atol.get(name), rtol.get(name)
        o = out.get(name)
        if o is None:
            diffs.append(OutputDiff(name, (), tuple(r.shape), a_t, r_t, np.inf, np.inf, np.inf, int(r.size),
                                    int(r.size), False, None, "missing"))
            continue
        o = np.asarray(o)
        if o.shape != r.shape:
            diffs.append(OutputDiff(name, tuple(o.shape), tuple(r.shape), a_t, r_t, np.inf, np.inf, np.inf,
                                    int(r.size), int(r.size), False, None, "shape differs"))
            continue
        rf, of = _as_float(r), _as_float(o)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            absd = np.abs(of - rf)
            reld = absd / np.abs(rf)
        both_nan = np.isnan(rf) & np.isnan(of)
        same_inf = np.isinf(rf) & (of == rf)
        absd = np.where(both_nan | same_inf, 0.0, absd)
        reld = np.where(both_nan | same_inf | (absd == 0), 0.0, reld)
        bad_abs = ~(absd <= a_t)  # NaN counts as over
        bad_rel = ~(reld <= r_t)
        mism = int(np.count_nonzero(bad_abs & bad_rel))
        finite_abs = absd[np.isfinite(absd)]
        max_abs = float(np.max(absd)) if absd.size else 0.0
        max_rel = float(np.max(reld)) if reld.size else 0.0
        mean_abs = float(np.mean(finite_abs)) if finite_abs.size else (0.0 if not absd.size else np.inf)
        top1 = None
        if rf.ndim == 2 and rf.shape[1] > 1 and is_float_dtype(rf.dtype):
            top1 = float(np.mean(metrics.top1(of) == metrics.top1(rf)))
        diffs.append(OutputDiff(name, tuple(o.shape), tuple(r.shape), a_t, r_t, max_abs, max_rel, mean_abs, mism,
                                int(r.size), mism == 0, top1))
    return diffs


def _as_float(x: np.ndarray) -> np.ndarray:
    if x.dtype.kind in "fiub":
        return x.astype(np.float64)
    try:
        return x.astype(np.float64)  # ml_dtypes (bfloat16, float8) convert
    except (TypeError, ValueError):
        raise OnnxfiError(f"cannot compare outputs of type {x.dtype}") from None


# ---------------------------------------------------------------------------------------------- latency


@dataclass(frozen=True)
class Latency:
    runs: int
    batch: int
    median_ms: float
    p90_ms: float
    min_ms: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def measure_latency(session: Session, feeds: Mapping[str, np.ndarray], repeat: int = 20, warmup: int = 3) -> Latency:
    """``warmup`` untimed runs, then ``repeat`` timed ones: median, 90th percentile and minimum in ms."""
    for _ in range(warmup):
        session.run(feeds)
    times = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        session.run(feeds)
        times.append(1000.0 * (time.perf_counter() - t0))
    batch = int(next(iter(feeds.values())).shape[0]) if feeds and next(iter(feeds.values())).ndim else 1
    return Latency(len(times), batch, float(np.median(times)), float(np.percentile(times, 90)), float(min(times)))


# ---------------------------------------------------------------------------------------------- compare


@dataclass
class RuntimeReport:
    """What one runtime did: availability, output agreement with the reference, latency, fault outcomes."""

    name: str
    available: bool
    reason: str = ""
    description: str = ""
    is_reference: bool = False
    outputs: list[OutputDiff] = field(default_factory=list)
    latency: Latency | None = None
    outcomes: dict[str, int] = field(default_factory=dict)
    rates: dict[str, dict[str, Any]] = field(default_factory=dict)
    load_s: float = 0.0
    error: str = ""

    @property
    def passed(self) -> bool | None:
        """Outputs within tolerance of the reference (None: not compared)."""
        if not self.available or self.is_reference:
            return None
        if self.error:
            return False
        return all(d.passed for d in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "available": self.available, "reason": self.reason, "runtime": self.description,
            "reference": self.is_reference, "passed": self.passed, "error": self.error,
            "outputs": [d.to_dict() for d in self.outputs],
            "latency": self.latency.to_dict() if self.latency else None,
            "faults": {"outcomes": self.outcomes, "rates": self.rates} if self.outcomes else None,
        }


@dataclass
class CompareResult:
    model: str
    reference: str
    runtimes: list[RuntimeReport]
    samples: int
    data: str
    atol: Tolerance
    rtol: Tolerance
    plan: dict[str, Any] = field(default_factory=dict)
    fault_samples: int = 0
    disagreements: list[dict[str, Any]] = field(default_factory=list)
    task: str = ""
    output_choice: dict[str, Any] = field(default_factory=dict)  # OutputChoice.to_dict() of the scored output
    clean: dict[str, Any] = field(default_factory=dict)  # {"metric", "value"}: the reference's clean task metric
    warning: str | None = None  # onnxfi.scoring.plausibility of the clean metric

    @property
    def passed(self) -> bool:
        return all(r.passed is not False for r in self.runtimes)

    @property
    def unavailable(self) -> list[RuntimeReport]:
        return [r for r in self.runtimes if not r.available]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": COMPARE_SCHEMA, "model": self.model, "reference": self.reference, "passed": self.passed,
            "data": self.data, "samples": self.samples, "atol": str(self.atol), "rtol": str(self.rtol),
            "task": self.task, "output_choice": self.output_choice,
            "clean": {k: (v if not isinstance(v, float) or np.isfinite(v) else None) for k, v in self.clean.items()},
            "warning": self.warning, "runtimes": [r.to_dict() for r in self.runtimes],
            "faults": {"plan": self.plan, "samples": self.fault_samples, "disagreements": self.disagreements},
        }


class _ByName:
    """A :class:`Session` as :func:`onnxfi.runtime.run_batches` calls an ORT session: ``run(names, feeds)``."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        out = self.session.run(feeds)
        return [out[n] for n in names]


def _run_batched(session: Session, data: Dataset, names: Sequence[str], batch: int) -> dict[str, np.ndarray]:
    """Every output of ``session`` on every sample of ``data``, ``batch`` samples per run."""
    return run_batches(_ByName(session), data, names, batch)


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {first_line(e)}"


def run_compare(
    loaded: LoadedModel,
    model_path: str,
    backends: Sequence[Backend | RuntimeUnavailable],
    data: Dataset,
    reference: str | None = None,
    atol: Tolerance | None = None,
    rtol: Tolerance | None = None,
    repeat: int = 20,
    warmup: int = 3,
    latency_batch: int = 1,
    batch: int = 256,
    n_faults: int = 50,
    bits: Sequence[int] | None = None,
    sites: str | None = None,
    seed: int = 0,
    fault_samples: int | None = 128,
    critical: float = 0.01,
    output: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    task: str | None = None,
) -> CompareResult:
    """Compare ``backends`` (an unavailable one is reported with its reason) on ``data``.

    ``reference`` names the backend the others are compared with (default: the first available).
    ``n_faults`` weight bit flips (0: no campaign) run on the first ``fault_samples`` samples.
    The faults are scored on the output :func:`onnxfi.scoring.choose_output` picks from the reference
    runtime's clean outputs (``output`` / ``task`` override, as ``--output`` / ``--task``).
    """
    atol = atol or Tolerance(1e-4)
    rtol = rtol or Tolerance(1e-4)
    proto = ir.to_proto(loaded.model)
    serialized = proto.SerializeToString()
    out_names = [o.name for o in proto.graph.output]
    if output is not None and output not in out_names:  # before loading any runtime
        shapes = describe_shapes((o.name, o.shape) for o in loaded.outputs())
        raise OnnxfiError(f"--output {output!r} is not a model output; outputs: {shapes}")
    reports: list[RuntimeReport] = []
    live: list[tuple[RuntimeReport, Backend, Session]] = []
    for b in backends:
        if isinstance(b, RuntimeUnavailable):
            reports.append(RuntimeReport(b.name, False, b.reason))
            continue
        rep = RuntimeReport(b.name, True, description=b.describe())
        t0 = time.perf_counter()
        try:
            sess = b.load(proto, serialized)
        except RuntimeUnavailable as e:
            rep.available, rep.reason = False, e.reason
        except Exception as e:  # a runtime that cannot load this model: report it, compare the rest
            rep.error = f"cannot load the model: {_error_text(e)}"
        else:
            live.append((rep, b, sess))
        rep.load_s = time.perf_counter() - t0
        reports.append(rep)
    usable = [t for t in live if not t[0].error]
    if reference is None:
        if not usable:
            reasons = "; ".join(f"{r.name}: {r.reason or r.error}" for r in reports)
            raise OnnxfiError(f"no runtime could load the model ({reasons})")
        reference = usable[0][0].name
    ref_entry = next((t for t in live if t[0].name == reference), None)
    if ref_entry is None:
        named = next((r for r in reports if r.name == reference), None)
        why = f": {named.reason or named.error}" if named else " (not in the list)"
        raise OnnxfiError(f"reference runtime {reference!r} is not usable{why}")
    if ref_entry[0].error:
        raise OnnxfiError(f"reference runtime {reference!r}: {ref_entry[0].error}")
    ref_entry[0].is_reference = True
    n = data.size
    bs = batch
    goldens: dict[str, dict[str, np.ndarray]] = {}
    for i, (rep, _, sess) in enumerate(usable):
        if progress:
            progress(f"{rep.name}: outputs", i, len(usable))
        try:
            goldens[rep.name] = _run_batched(sess, data, out_names, bs)
            rep.latency = measure_latency(sess, data.batch(0, max(1, min(latency_batch, n))), repeat, warmup)
        except Exception as e:  # a runtime that fails on this model is a finding, not an error of the tool
            rep.error = f"run failed: {_error_text(e)}"
    if reference not in goldens:
        raise OnnxfiError(f"reference runtime {reference!r}: {ref_entry[0].error}")
    ref_out = goldens[reference]
    choice = choose_output(ref_out, data.labels, output, task)
    primary = choice.name
    for rep, _, _ in usable:
        if rep.name in goldens and rep.name != reference:
            rep.outputs = compare_outputs(ref_out, goldens[rep.name], atol, rtol)
    clean = output_metric(choice.task, choice.layout, ref_out, ref_out, primary, data.labels)
    result = CompareResult(model_path, reference, reports, n, data.source, atol, rtol, task=choice.task,
                           output_choice=choice.to_dict(), clean={"metric": clean[0], "value": clean[1]},
                           warning=plausibility(choice, clean[1]) if clean[0] in ("accuracy", "miou") else None)
    if n_faults > 0:
        runners = [(rep, b) for rep, b, _ in usable if rep.name in goldens]
        _fault_campaign(result, loaded, model_path, runners, data, n_faults, bits, sites, seed, fault_samples,
                        critical, out_names, primary, choice.layout, bs, progress)
    return result


def _fault_campaign(
    result: CompareResult,
    loaded: LoadedModel,
    model_path: str,
    runners: list[tuple[RuntimeReport, Backend]],
    data: Dataset,
    n_faults: int,
    bits: Sequence[int] | None,
    sites_regex: str | None,
    seed: int,
    fault_samples: int | None,
    critical: float,
    out_names: Sequence[str],
    primary: str,
    layout: str,
    batch: int,
    progress: Callable[[str, int, int], None] | None,
) -> None:
    index = enumerate_sites(loaded.model, loaded.value_shapes)
    plan: Plan = make_plan(model_path, index.select("weights", sites_regex), ["flip"], bits, n_faults, None,
                           seed=seed, target="weights")
    result.plan = {k: v for k, v in plan.to_dict().items() if k not in ("experiments", "strata", "options")}
    m = min(data.size, fault_samples) if fault_samples else data.size
    result.fault_samples = m
    sub = data.head(m)  # along each input's sample axis
    golden: dict[str, dict[str, np.ndarray]] = {}
    for rep, b in runners:
        try:
            proto = ir.to_proto(loaded.model)
            golden[rep.name] = _run_batched(b.load(proto, proto.SerializeToString()), sub, out_names, batch)
        except Exception as e:
            rep.error = rep.error or f"fault campaign: {_error_text(e)}"
    active = [(rep, b) for rep, b in runners if rep.name in golden]
    counts = {rep.name: {o: 0 for o in OUTCOMES} for rep, _ in active}
    flags = {rep.name: {k: 0 for k in FLAGS} for rep, _ in active}
    for i, exp in enumerate(plan.experiments):
        if progress:
            progress("faults", i, len(plan.experiments))
        site = index.get(exp.site)
        original = index.weight_array(site).copy()
        index.set_weight_array(site, inject_element(original, exp.index, exp.fault_obj(), np.random.default_rng(exp.seed)))
        try:
            proto = ir.to_proto(loaded.model)
        finally:
            index.set_weight_array(site, original)
        serialized = proto.SerializeToString()
        outcomes: dict[str, str] = {}
        for rep, b in active:
            try:
                faulty = _run_batched(b.load(proto, serialized), sub, out_names, batch)
            except Exception as e:  # the runtime rejected or crashed on the faulty model: a crash outcome
                row = crash_row(exp, _error_text(e), None)
            else:  # classifying is onnxfi's own code: an error there is a bug, never an outcome
                result_ = classify(golden[rep.name], faulty, primary, metrics.layout_task(layout), sub.labels,
                                   critical, layout=layout)
                row = experiment_row(exp, result_, time_s=None, worker=None)
            outcomes[rep.name] = row["outcome"]
            counts[rep.name][row["outcome"]] += 1
            for k in flags[rep.name]:
                flags[rep.name][k] += bool(row[k])
        if len(set(outcomes.values())) > 1:
            result.disagreements.append({"id": exp.id, "site": exp.site, "index": exp.index, "bit": exp.bit,
                                         "outcomes": outcomes})
    if progress:
        progress("faults", len(plan.experiments), len(plan.experiments))
    total = len(plan.experiments)
    for rep, _ in active:
        rep.outcomes = counts[rep.name]
        rep.rates = {k: {"k": v, "n": total, **_ci(v, total)} for k, v in flags[rep.name].items()}


def _ci(k: int, n: int) -> dict[str, float]:
    r = rate_with_ci(k, n, 0.95)
    return {"rate": r.rate, "lo": r.lo, "hi": r.hi}
