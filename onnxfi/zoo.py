"""The onnxfi model zoo: small ONNX models with committed eval subsets and recorded metrics.

The zoo is the folder named by the ``ONNXFI_ZOO`` environment variable, else the copy shipped inside
an installed wheel (``onnxfi/_zoo/``, the repository's ``model_zoo/`` packaged as data), else the
repository's ``model_zoo/`` folder (a source checkout or editable install). ``registry.json`` maps each
model name to its ``.onnx`` file, task, input spec, eval subset (a pickle-free ``.npz`` with one array
per model input plus ``labels``), metric and the metric value recorded by running the exported model
with onnxruntime on that subset. Metrics come from :mod:`onnxfi.metrics`.

This module never prints.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxfi import metrics as _metrics
from onnxfi.errors import DataError, ModelLoadError, OnnxfiError, ProviderError
from onnxfi.model import InputSpec

__all__ = [
    "ZOO_ENV_VAR",
    "ZooEntry",
    "compute_metrics",
    "default_data",
    "entries",
    "eval_data_path",
    "evaluate",
    "get",
    "load_eval_data",
    "model_path",
    "names",
    "registry_path",
    "resolve_model",
    "zoo_dir",
]

ZOO_ENV_VAR = "ONNXFI_ZOO"
"""Environment variable that overrides the zoo folder."""

TASKS = ("classification", "segmentation", "detection")


@dataclass(frozen=True)
class ZooEntry:
    """One registry entry. Paths are absolute (resolved against the zoo folder)."""

    name: str
    file: Path  # the .onnx model
    task: str  # one of TASKS
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    # the output the metric is computed on (default: the first)
    metric_output: str
    eval_data: Path  # the .npz eval subset: one array per input, and labels
    eval_samples: int
    # the recorded clean metric: its name and value on the eval subset
    metric: str
    value: float
    metrics: Mapping[str, float]
    framework: str
    converter: str
    data_source: Mapping[str, str]
    notes: str
    extra: Mapping[str, Any] = field(default_factory=dict)


_PACKAGE = Path(__file__).resolve().parent


def _candidates() -> tuple[Path, ...]:
    """Where the zoo may be, in order: the wheel's package data, then the source checkout's folder."""
    return (_PACKAGE / "_zoo", _PACKAGE.parent / "model_zoo")


def zoo_dir() -> Path:
    """The zoo folder: ``$ONNXFI_ZOO`` if set, else the first of the installed package data
    (``onnxfi/_zoo``) and the repository's ``model_zoo/`` that holds a ``registry.json``; when neither
    does, the repository's folder (so that the error names where a checkout keeps it)."""
    env = os.environ.get(ZOO_ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    candidates = _candidates()
    for folder in candidates:
        if (folder / "registry.json").is_file():
            return folder
    return candidates[-1]


def registry_path() -> Path:
    """Path of ``registry.json`` inside :func:`zoo_dir`."""
    return zoo_dir() / "registry.json"


_KNOWN_KEYS = {
    "file", "task", "inputs", "outputs", "metric_output", "eval_data", "eval_samples", "metric",
    "value", "metrics", "framework", "converter", "data_source", "notes",
}  # fmt: skip


def _entry_from_json(name: str, raw: Mapping[str, Any], root: Path) -> ZooEntry:
    try:
        inputs = tuple(
            InputSpec(name=str(i["name"]), dtype=ir.DataType.from_numpy(np.dtype(str(i["dtype"]))),
                      shape=tuple(i["shape"]))
            for i in raw["inputs"]
        )
        outputs = tuple(str(o) for o in raw.get("outputs", ()))
        task = str(raw["task"])
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}")
        return ZooEntry(
            name=name,
            file=root / str(raw["file"]),
            task=task,
            inputs=inputs,
            outputs=outputs,
            metric_output=str(raw.get("metric_output") or (outputs[0] if outputs else "")),
            eval_data=root / str(raw["eval_data"]),
            eval_samples=int(raw.get("eval_samples", 0)),
            metric=str(raw["metric"]),
            value=float(raw["value"]),
            metrics={str(k): float(v) for k, v in dict(raw.get("metrics", {})).items()},
            framework=str(raw.get("framework", "")),
            converter=str(raw.get("converter", "")),
            data_source={str(k): str(v) for k, v in dict(raw.get("data_source", {})).items()},
            notes=str(raw.get("notes", "")),
            extra={k: v for k, v in raw.items() if k not in _KNOWN_KEYS},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise OnnxfiError(f"model zoo registry {registry_path()}: bad entry {name!r}: {exc}") from exc


def _load_registry() -> dict[str, ZooEntry]:
    path = registry_path()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        looked = (str(path) if os.environ.get(ZOO_ENV_VAR)
                  else " or ".join(str(c / "registry.json") for c in _candidates()))
        raise OnnxfiError(
            f"model zoo registry not found: {looked} (reinstall onnxfi, set {ZOO_ENV_VAR} to a zoo folder, "
            "or run 'make zoo' in a source checkout)"
        ) from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise OnnxfiError(f"cannot read model zoo registry {path}: {exc}") from exc
    models = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(models, dict):
        raise OnnxfiError(f"model zoo registry {path}: missing 'models' mapping")
    root = path.parent
    return {str(name): _entry_from_json(str(name), spec, root) for name, spec in models.items()}


def entries() -> list[ZooEntry]:
    """All registry entries, sorted by name."""
    return [e for _, e in sorted(_load_registry().items())]


def names() -> list[str]:
    """All model names in the registry, sorted."""
    return sorted(_load_registry())


def get(name: str) -> ZooEntry:
    """The entry called ``name``; raises :class:`OnnxfiError` listing the available names."""
    registry = _load_registry()
    try:
        return registry[name]
    except KeyError:
        available = ", ".join(sorted(registry)) or "(none)"
        close = difflib.get_close_matches(name, list(registry), n=3)
        hint = f"did you mean {', '.join(close)}? (available: {available})" if close else f"available: {available}"
        raise OnnxfiError(f"unknown zoo model {name!r}; {hint}") from None


def model_path(name: str) -> Path:
    """The ``.onnx`` file of zoo model ``name``."""
    return get(name).file


def resolve_model(spec: str | os.PathLike[str]) -> Path:
    """Turn a CLI model argument into a path.

    An existing file wins; otherwise a zoo model name gives that model's file; anything else
    comes back unchanged as a path, so that the model loader reports it as not found.
    """
    path = Path(spec)
    name = _zoo_name(spec)
    if name is None:
        return path
    try:
        registry = _load_registry()
    except OnnxfiError:
        return path
    if name in registry:
        return registry[name].file
    close = difflib.get_close_matches(name, list(registry), n=3)
    if close and not path.exists():  # a mistyped zoo name, not a file: say which names come close
        raise ModelLoadError(f"model file not found: {path}; did you mean zoo model {', '.join(close)}?")
    return path


def _zoo_name(spec: str | os.PathLike[str]) -> str | None:
    """``spec`` when it can name a zoo model: not an existing file, no folder, no ``.onnx`` suffix."""
    text = os.fspath(spec)
    if not text or Path(text).is_file() or os.sep in text or text.endswith(".onnx"):
        return None
    return text


def default_data(model_arg: str | os.PathLike[str]) -> str | None:
    """The eval subset of the zoo model ``model_arg`` names (the default ``--data`` of a command), else None.

    None for a model file, for a name the registry does not list, and when there is no registry (no zoo
    installed). A registry that exists but cannot be read raises its one-line :class:`OnnxfiError`; a
    listed subset that is missing is returned all the same, so that loading it says so.
    """
    name = _zoo_name(model_arg)
    if name is None or not registry_path().is_file():
        return None
    entry = _load_registry().get(name)
    return None if entry is None else str(entry.eval_data)


def eval_data_path(name: str) -> Path:
    """The committed eval subset (``.npz``) of zoo model ``name``."""
    return get(name).eval_data


def load_eval_data(name: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Feeds (one array per model input) and labels of zoo model ``name``'s eval subset."""
    entry = get(name)
    try:
        with np.load(entry.eval_data, allow_pickle=False) as data:
            arrays = {key: np.asarray(data[key]) for key in data.files}
    except FileNotFoundError as exc:
        raise DataError(f"eval data of zoo model {name!r} not found: {entry.eval_data}") from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read eval data {entry.eval_data}: {exc}") from exc
    if "labels" not in arrays:
        raise DataError(f"eval data {entry.eval_data} has no 'labels' array")
    labels = arrays.pop("labels")
    missing = [spec.name for spec in entry.inputs if spec.name not in arrays]
    if missing:
        raise DataError(f"eval data {entry.eval_data} lacks input array(s): {', '.join(missing)}")
    return {spec.name: arrays[spec.name] for spec in entry.inputs}, labels


def compute_metrics(task: str, output: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Metrics of a model output against labels.

    classification: ``accuracy`` (:func:`onnxfi.metrics.accuracy`: argmax over axis 1 equals the label).
    segmentation (output [N,C,H,W], labels [N,H,W]): ``miou`` (:func:`onnxfi.metrics.miou`: mean IoU over
    the classes present in the labels or the prediction) and ``pixel_accuracy``; label ids outside
    ``[0, C)`` (255 "ignore" ids) are left out of both.
    detection (a raw YOLO head [N, A, 5 + C], labels padded [N, M, 5] rows class, x1, y1, x2, y2): ``map50``
    (:func:`onnxfi.detection.average_precision` of :class:`onnxfi.detection.YoloDecoder`'s detections: score
    0.25, class-wise NMS at IoU 0.45).
    """
    if task == "detection":
        from onnxfi import detection

        found = detection.YoloDecoder("output")({"output": np.asarray(output)})
        return {"map50": detection.average_precision(found, detection.labels_to_detections(labels))}
    scores = np.asarray(output)
    if scores.ndim < 2:
        raise OnnxfiError(f"expected an output with a class axis, got shape {scores.shape}")
    pred_shape = scores.shape[:1] + scores.shape[2:]
    labels = np.asarray(labels)
    if pred_shape != labels.shape:
        raise OnnxfiError(f"prediction shape {pred_shape} does not match labels shape {labels.shape}")
    if task == "classification":
        return {"accuracy": _metrics.accuracy(scores, labels)}
    if task == "segmentation":
        return {"miou": _metrics.miou(scores, labels), "pixel_accuracy": _metrics.pixel_accuracy(scores, labels)}
    raise OnnxfiError(f"unknown task {task!r}; expected one of: {', '.join(TASKS)}")


def evaluate(name: str, providers: Sequence[str] | None = None) -> dict[str, Any]:
    """Run zoo model ``name`` with onnxruntime on its eval subset and compute its clean metric.

    Returns a dict with ``name``, ``task``, ``metric``, ``value`` (measured), ``recorded``,
    ``difference`` (value - recorded), ``metrics`` (all measured metrics), ``samples`` and
    ``providers`` (those the session used).
    """
    import onnxruntime as ort

    entry = get(name)
    if not entry.file.is_file():
        raise ModelLoadError(f"model file of zoo model {name!r} not found: {entry.file}")
    feeds, labels = load_eval_data(name)
    wanted = list(providers) if providers else ["CPUExecutionProvider"]
    unknown = [p for p in wanted if p not in ort.get_available_providers()]
    if unknown:
        raise ProviderError(
            f"execution provider(s) not available: {', '.join(unknown)}; "
            f"available: {', '.join(ort.get_available_providers())}"
        )
    try:
        session = ort.InferenceSession(str(entry.file), providers=wanted)
        (output,) = session.run([entry.metric_output], feeds)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise OnnxfiError(f"onnxruntime failed on zoo model {name!r}: {exc}") from exc
    metrics = compute_metrics(entry.task, np.asarray(output), labels)
    if entry.metric not in metrics:
        raise OnnxfiError(
            f"zoo model {name!r}: metric {entry.metric!r} is not computed for task {entry.task!r}"
        )
    value = metrics[entry.metric]
    return {
        "name": name,
        "task": entry.task,
        "metric": entry.metric,
        "value": value,
        "recorded": entry.value,
        "difference": value - entry.value,
        "metrics": metrics,
        "samples": int(labels.shape[0]),
        "providers": list(session.get_providers()),
    }
