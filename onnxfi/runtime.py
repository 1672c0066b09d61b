"""Run models with ONNX Runtime: providers by short name, session creation, timed inference."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnxfi.errors import ProviderError, SessionError, first_line
from onnxfi.memory import check_bytes

__all__ = [
    "PROVIDER_NAMES",
    "available_providers",
    "resolve_provider",
    "make_session",
    "RunResult",
    "run_session",
    "model_bytes",
    "run_batches",
    "run_chunks",
    "concat_batches",
]

PROVIDER_NAMES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
}
_SHORT = {v: k for k, v in PROVIDER_NAMES.items()}


def available_providers() -> list[str]:
    """Short names of the execution providers this onnxruntime install can use."""
    return [_SHORT.get(p, p) for p in ort.get_available_providers()]


def resolve_provider(name: str) -> list[str]:
    """ORT provider list for a short (``cuda``) or full (``CUDAExecutionProvider``) name, CPU as fallback."""
    full = PROVIDER_NAMES.get(name.lower(), name)
    avail = ort.get_available_providers()
    if full not in avail:
        known = name.lower() in PROVIDER_NAMES or name in _SHORT
        what = "not available in this onnxruntime install" if known else "unknown"
        raise ProviderError(
            f"execution provider {name!r} is {what}; available: {', '.join(available_providers())}"
        )
    return [full] if full == "CPUExecutionProvider" else [full, "CPUExecutionProvider"]


def model_bytes(model: ir.Model) -> bytes:
    """The model serialized; a model that cannot be (e.g. a name that is not UTF-8) is a one-line error."""
    try:
        return ir.to_proto(model).SerializeToString()
    except (ir.serde.SerdeError, UnicodeError, ValueError) as e:
        raise SessionError(f"the model cannot be serialized for onnxruntime: {first_line(e, limit=200)}") from None


def make_session(
    model: ir.Model | bytes | str | os.PathLike[str],
    provider: str = "cpu",
    optimization: str = "all",
    threads: int | None = None,
    optimized_path: str | None = None,
) -> ort.InferenceSession:
    """An InferenceSession on ``provider`` with ORT's full graph optimizations unless told otherwise;
    ``optimized_path``: where ORT writes the graph it optimized (for this machine: NCHWc layouts)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[optimization]
    so.log_severity_level = 4  # errors come back as exceptions (one line each), not as log lines
    if threads:
        so.intra_op_num_threads = threads
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    source: bytes | str
    if isinstance(model, ir.Model):
        source = model_bytes(model)
    elif isinstance(model, bytes):
        source = model
    else:
        source = os.fspath(model)
    providers = resolve_provider(provider)
    try:
        return ort.InferenceSession(source, sess_options=so, providers=providers)
    except Exception as e:  # ORT raises its own exception types, each with a one-line message
        raise SessionError(f"onnxruntime cannot load the model: {_ort_message(e)}") from None


def _ort_message(e: BaseException) -> str:
    """ORT's message without its source-location prefix, first line only."""
    text = first_line(e, limit=None)
    if ") " in text and "onnxruntime::" in text:  # "... model.cc:256 onnxruntime::Model::Model(...) Unsupported ..."
        text = text.rsplit(") ", 1)[1]
    return text[:300]


@dataclass
class RunResult:
    """Outputs by name (in graph order) and the wall time of each timed repetition in seconds."""

    outputs: dict[str, np.ndarray]
    times: list[float]

    @property
    def median_s(self) -> float:
        return float(np.median(self.times)) if self.times else float("nan")


def run_session(
    session: ort.InferenceSession,
    feeds: Mapping[str, np.ndarray],
    output_names: Sequence[str] | None = None,
    repeat: int = 1,
    warmup: int = 0,
) -> RunResult:
    """Run ``session`` on ``feeds``: ``warmup`` untimed runs, then ``repeat`` timed ones."""
    names = list(output_names) if output_names else [o.name for o in session.get_outputs()]
    outs: list[np.ndarray] = []
    times = []
    try:
        for _ in range(warmup):
            session.run(names, dict(feeds))
        for _ in range(max(1, repeat)):
            t0 = time.perf_counter()
            outs = session.run(names, dict(feeds))
            times.append(time.perf_counter() - t0)
    except Exception as e:  # ORT raises its own exception types, each with a one-line message
        raise SessionError(f"onnxruntime cannot run the model: {_ort_message(e)}") from None
    return RunResult(dict(zip(names, (np.asarray(o) for o in outs))), times)


class _Batched(Protocol):
    @property
    def size(self) -> int: ...

    def batch(self, start: int, stop: int) -> dict[str, np.ndarray]: ...


def _sample_axis(arrays: Sequence[np.ndarray]) -> int:
    """The axis per-batch arrays are joined along: the one axis where their lengths differ (a shorter last
    batch: axis 1 of an RNN state [layers, N, hidden]), else axis 0."""
    shapes = {a.shape for a in arrays}
    ranks = {len(s) for s in shapes}
    if len(ranks) == 1 and len(shapes) > 1:
        differ = [i for i in range(ranks.pop()) if len({s[i] for s in shapes}) > 1]
        if len(differ) == 1:
            return differ[0]
    return 0


def concat_batches(chunks: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-batch outputs joined along the sample axis; a 0-d output (no sample axis) is taken from the first."""
    first = chunks[0]
    out: dict[str, np.ndarray] = {}
    for k in first:
        parts = [np.asarray(c[k]) for c in chunks]
        out[k] = np.concatenate(parts, axis=_sample_axis(parts)) if len(parts) > 1 and parts[0].ndim else parts[0]
    return out


def run_chunks(
    session: Any,
    data: _Batched,
    output_names: Sequence[str] | None = None,
    batch: int = 256,
    extra: Mapping[str, np.ndarray] | None = None,
    keep_feeds: bool = False,
    each: Callable[[dict[str, np.ndarray]], None] | None = None,
) -> list[dict[str, np.ndarray]]:
    """The requested outputs of ``session`` per batch of ``data`` (anything with ``size`` and
    ``batch(start, stop)``, such as :class:`onnxfi.data.Dataset`), ``batch`` samples per run.

    ``extra`` feeds are added to every batch (fault ports, a fed weight); with ``keep_feeds`` each
    chunk also holds the batch's feeds; ``each`` sees every chunk as it is made (and may raise to stop, e.g.
    over a memory budget). The one loop every caller uses."""
    names = list(output_names) if output_names else [o.name for o in session.get_outputs()]
    n = max(1, data.size)
    step = max(1, batch)
    chunks = []
    for start in range(0, n, step):
        feeds = data.batch(start, min(n, start + step))
        if extra:
            feeds.update(extra)
        chunk = {k: np.asarray(v) for k, v in zip(names, session.run(names, feeds))}
        if each is not None:
            each(chunk)
        if start == 0 and n > step:  # every batch's outputs are kept: sized from the first, before the rest run
            per_batch = sum(v.nbytes for v in chunk.values())
            check_bytes(f"the outputs of {n:,} samples ({per_batch:,} bytes per batch of {step})",
                        per_batch * -(-n // step))
        if keep_feeds:
            chunk.update(feeds)
        chunks.append(chunk)
    return chunks


def run_batches(
    session: Any,
    data: _Batched,
    output_names: Sequence[str] | None = None,
    batch: int = 256,
    extra: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """:func:`run_chunks` joined along the sample axis."""
    return concat_batches(run_chunks(session, data, output_names, batch, extra))
