"""Input feeds for a model: a user's ``.npz``, a data-loader script or seeded random data -> a
:class:`Dataset` that hands out batches along each input's sample axis.

The sample axis of each input comes from the model (:func:`sample_axes`): axis 0 as a rule; a scalar
input (shape ``[]``) has none and goes whole to every run; when the model batches on a dynamic first dim,
an input whose first dim is fixed (an RNN state ``[2,N,128]``) has its sample axis where its batch dim is,
or none when it has no dynamic dim (a table every run takes whole).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import traceback
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxfi.errors import DataError, OnnxfiError, first_line
from onnxfi.model import InputSpec

__all__ = [
    "Dataset",
    "load_data",
    "load_loader",
    "make_dataset",
    "parse_loader_spec",
    "resolve_loader_spec",
    "random_data",
    "resolve_shape",
    "sample_axes",
    "LABELS_KEY",
    "LOADER_FUNC",
    "MAX_FEED_DICTS",
]

LABELS_KEY = "labels"
LOADER_FUNC = "load_data"  # the function a --data-loader script is called through unless PATH.py:FUNC names one
MAX_FEED_DICTS = 100_000  # a loader that yields more is taken for one that never ends


@dataclass
class Dataset:
    """Feeds by input name, optional labels (first axis = samples), where they came from, and each input's
    sample axis (``axes``; an input missing from it: axis 0, or none for a 0-d array). An input without a
    sample axis goes whole to every batch."""

    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str
    axes: dict[str, int | None] = field(default_factory=dict)

    def axis(self, name: str) -> int | None:
        """The sample axis of input ``name`` (None: it has none and every batch takes it whole)."""
        if name in self.axes:
            return self.axes[name]
        return 0 if self.feeds[name].ndim else None

    @property
    def size(self) -> int:
        """Samples along the sample axes (0 when no input has one: the model runs once)."""
        for name, value in self.feeds.items():
            ax = self.axis(name)
            if ax is not None:
                return int(value.shape[ax])
        return 0

    def batch(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """The feeds of samples ``start:stop`` (views, no copies); inputs without a sample axis whole."""
        out: dict[str, np.ndarray] = {}
        for name, value in self.feeds.items():
            ax = self.axis(name)
            out[name] = value if ax is None else value[(slice(None),) * ax + (slice(start, stop),)]
        return out

    def head(self, n: int) -> Dataset:
        """The first ``n`` samples (labels too), the sample axes kept."""
        labels = None if self.labels is None else self.labels[:n]
        return Dataset(self.batch(0, n), labels, self.source, {k: self.axis(k) for k in self.feeds})

    def select(self, names: Iterable[str]) -> Dataset:
        """Only the inputs in ``names`` (a session that takes fewer inputs than the model)."""
        keep = set(names)
        feeds = {k: v for k, v in self.feeds.items() if k in keep}
        return Dataset(feeds, self.labels, self.source, {k: self.axis(k) for k in feeds})


def _numpy_dtype(dtype: ir.DataType) -> np.dtype:
    try:
        return np.dtype(dtype.numpy())
    except Exception:
        raise OnnxfiError(f"inputs of type {dtype.name} are not supported") from None


def _fixed(d: int | str | None) -> bool:
    return isinstance(d, int) and d > 0


def sample_axes(specs: Sequence[InputSpec]) -> dict[str, int | None]:
    """The sample axis of each input, or None for an input that goes whole to every batch.

    - shape ``[]`` (a sample rate, a flag): none;
    - unknown shape, or a dynamic first dim: axis 0;
    - a fixed first dim, when no input has a dynamic first dim (a fixed-batch model): axis 0;
    - a fixed first dim while another input's first dim is dynamic (the model batches there): the dim named
      like that batch dim (``[2,batch,128]``), else the input's only dynamic dim (``[2,?,128]``), else none
      when it has no dynamic dim (a fixed table); several unnamed dynamic dims are ambiguous: an error that
      asks to fix all but one with ``--input-shape``.
    """
    batch_names = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], str)}
    batched = any(s.shape is None or (len(s.shape) > 0 and not _fixed(s.shape[0])) for s in specs)
    axes: dict[str, int | None] = {}
    for s in specs:
        shape = s.shape
        if shape is not None and len(shape) == 0:
            axes[s.name] = None
        elif shape is None or not _fixed(shape[0]) or not batched:
            axes[s.name] = 0
        else:
            named = [i for i, d in enumerate(shape) if isinstance(d, str) and d in batch_names]
            dynamic = [i for i, d in enumerate(shape) if not _fixed(d)]
            if named or len(dynamic) == 1:
                axes[s.name] = (named or dynamic)[0]
            elif not dynamic:
                axes[s.name] = None
            else:
                example = "x".join("?" if i == dynamic[0] else (str(d) if _fixed(d) else "SIZE")
                                   for i, d in enumerate(shape))
                raise DataError(
                    f"input {s.name!r} {s.shape_text()}: cannot tell which dynamic dim holds the samples; fix the "
                    f"others with --input-shape (e.g. {s.name}:{example}, ? = the sample axis)"
                )
    return axes


def resolve_shape(
    spec: InputSpec,
    overrides: Mapping[str, tuple[int, ...]] | None = None,
    batch: int | None = None,
    axis: int | None = 0,
) -> tuple[int, ...]:
    """A concrete shape for ``spec``: the override (its -1 dims, from ``?``/``N``, taken from the model),
    or the static dims with the dynamic sample-axis dim (``axis``) set to ``batch``."""
    dims_in: tuple[int | str | None, ...] | None = spec.shape
    if overrides and spec.name in overrides:
        want = tuple(overrides[spec.name])
        if all(d > 0 for d in want):
            return want
        model = spec.shape if spec.shape is not None and len(spec.shape) == len(want) else (None,) * len(want)
        dims_in = tuple(w if w > 0 else m for w, m in zip(want, model))
    if dims_in is None:
        raise OnnxfiError(
            f"input {spec.name!r} has an unknown shape; give --input-shape {spec.name}:DIMS (e.g. 1x3x224x224)"
        )
    dims: list[int] = []
    for i, d in enumerate(dims_in):
        if isinstance(d, int) and d > 0:
            dims.append(d)
        elif i == axis and batch is not None:
            dims.append(batch)
        else:
            shown = "[" + ",".join(str(x) if _fixed(x) else "?" for x in dims_in) + "]"
            example = "x".join(str(x) if _fixed(x) else ("N" if j == axis else "?") for j, x in enumerate(dims_in))
            raise OnnxfiError(
                f"input {spec.name!r} has dynamic dims {shown}; give --input-shape {spec.name}:{example} "
                "with a size for each ? (N: the sample axis, sized by the sample count)"
            )
    return tuple(dims)


def random_data(
    specs: Sequence[InputSpec],
    seed: int = 0,
    batch: int = 1,
    overrides: Mapping[str, tuple[int, ...]] | None = None,
) -> Dataset:
    """Seeded random inputs: floats uniform in [0, 1) (image-like), integers in [0, 10), booleans fair;
    ``batch`` samples along each input's sample axis.

    A scalar integer input (a sample rate, a size, an index) has no sensible random value: a
    :class:`DataError` asks for a data loader."""
    rng = np.random.default_rng(seed)
    axes = sample_axes(specs)
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        dt = _numpy_dtype(spec.dtype)
        if spec.shape is not None and len(spec.shape) == 0 and dt.kind in "iu":
            raise DataError(
                f"input {spec.name!r} is a scalar {dt} (shape []): random data has no sensible value for it "
                "(a sample rate, a size, an index); give it with --data-loader (or --data)"
            )
        shape = resolve_shape(spec, overrides, batch, axes[spec.name])
        if dt.kind == "f" or dt.name == "bfloat16":
            feeds[spec.name] = rng.random(shape, dtype=np.float32).astype(dt)
        elif dt.kind in "iu":
            feeds[spec.name] = rng.integers(0, 10, size=shape).astype(dt)
        elif dt.kind == "b":
            feeds[spec.name] = rng.random(shape) < 0.5
        else:
            raise OnnxfiError(f"cannot make random data for input {spec.name!r} of type {spec.dtype.name}")
        feeds[spec.name] = np.asarray(feeds[spec.name])  # a 0-d input comes back from numpy as a scalar
    return Dataset(feeds, None, f"random (seed {seed})", axes)


def _check_compatible(spec: InputSpec, arr: np.ndarray, where: str, axis: int | None) -> np.ndarray:
    """``arr`` as the input's dtype; every dim but the sample axis as the model fixes it."""
    want = _numpy_dtype(spec.dtype)
    if arr.dtype != want:
        same_kind = (arr.dtype.kind == want.kind) or (arr.dtype.kind in "iu" and want.kind in "iu")
        if not same_kind and not (arr.dtype.kind in "iu" and want.kind == "f"):
            raise DataError(f"{where}: array {spec.name!r} is {arr.dtype}, the model input wants {want}")
        arr = arr.astype(want)
    if spec.shape is not None:
        if arr.ndim != len(spec.shape):
            raise DataError(
                f"{where}: array {spec.name!r} has shape {list(arr.shape)}, "
                f"the model input wants rank {len(spec.shape)} {spec.shape_text()}"
            )
        for i, (got, d) in enumerate(zip(arr.shape, spec.shape)):
            if _fixed(d) and got != d and i != axis:
                raise DataError(
                    f"{where}: array {spec.name!r} has shape {list(arr.shape)}, "
                    f"the model input wants {spec.shape_text()}"
                )
    return arr


def _describe_counts(counts: Mapping[str, int], axes: Mapping[str, int | None]) -> str:
    return ", ".join(f"{k} {n} (axis {axes[k]})" for k, n in counts.items())


def _sample_counts(feeds: Mapping[str, np.ndarray], axes: Mapping[str, int | None], where: str) -> int:
    """The one sample count of ``feeds`` along their sample axes (0 when none has one)."""
    counts = {k: int(v.shape[ax]) for k, v in feeds.items() if (ax := axes[k]) is not None}
    if len(set(counts.values())) > 1:
        raise DataError(
            f"{where}: inputs have different sample counts along their sample axes: {_describe_counts(counts, axes)} "
            "(inputs of shape [] and fixed-shape inputs of a batched model go whole to every run)"
        )
    return next(iter(counts.values()), 0)


def _match_inputs(arrays: dict[str, np.ndarray], specs: Sequence[InputSpec], where: str) -> dict[str, np.ndarray]:
    """``arrays`` by input name: every input present, nothing else (one unnamed array serves a one-input model)."""
    names = [s.name for s in specs]
    if len(specs) == 1 and names[0] not in arrays:
        if len(arrays) != 1:
            raise DataError(
                f"{where}: has arrays {sorted(arrays)}; the model's input is {names[0]!r} "
                "(name the array after it, or keep a single array)"
            )
        return {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise DataError(f"{where}: no array for input(s) {', '.join(missing)}; it has {sorted(arrays)}")
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise DataError(f"{where}: arrays {extra} match no model input (inputs: {names})")
    return arrays


def _effective_axes(feeds: Mapping[str, np.ndarray], axes: Mapping[str, int | None]) -> dict[str, int | None]:
    """The model's sample axes; a 0-d array (for an input of unknown shape) has none."""
    return {k: (None if v.ndim == 0 else axes[k]) for k, v in feeds.items()}


def load_data(path: str | os.PathLike[str], specs: Sequence[InputSpec]) -> Dataset:
    """Read an ``.npz``: one array per input name (or one array for a single-input model) + optional labels.

    Each array holds its input's samples along the input's sample axis (:func:`sample_axes`: the first
    axis as a rule); a 0-d array (a sample rate) goes whole to every batch. Never unpickles: object
    arrays are refused.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    if not zipfile.is_zipfile(p):  # np.load would return a bare array (.npy) or try to unpickle
        raise DataError(f"{p.name}: not an .npz file (save the inputs with numpy.savez)")
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise DataError(f"{p.name}: contains pickled objects; refused (save plain numeric arrays)") from None
        raise DataError(f"{p.name}: not a readable .npz ({e})") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"{p.name}: not a readable .npz ({e})") from None
    labels = arrays.pop(LABELS_KEY, None)
    arrays = _match_inputs(arrays, specs, p.name)
    axes = sample_axes(specs)
    feeds = {s.name: _check_compatible(s, arrays[s.name], p.name, axes[s.name]) for s in specs}
    axes = _effective_axes(feeds, axes)
    n = _sample_counts(feeds, axes, p.name)
    if labels is not None and (labels.ndim == 0 or labels.shape[0] != n):
        raise DataError(f"{p.name}: labels have {labels.shape[:1]} samples, inputs have {n}")
    return Dataset(feeds, labels, str(p), axes)


# ---------------------------------------------------------------------------------------------- loaders


def parse_loader_spec(spec: str) -> tuple[Path, str]:
    """``PATH.py[:FUNC]`` -> (the script, the function name; :data:`LOADER_FUNC` by default)."""
    path, func = spec, LOADER_FUNC
    head, sep, tail = spec.rpartition(":")
    if sep and head.endswith(".py"):  # "C:\\x.py" keeps its drive: only a name after ".py:" is a function
        if not tail.isidentifier():
            raise DataError(f"--data-loader {spec!r}: {tail!r} is not a function name (use PATH.py[:FUNC])")
        path, func = head, tail
    p = Path(path)
    if p.suffix != ".py":
        raise DataError(f"--data-loader {spec!r}: not a Python file (use PATH.py[:FUNC])")
    if not p.is_file():
        raise DataError(f"data loader not found: {p}")
    return p, func


def resolve_loader_spec(spec: str) -> str:
    """``spec`` checked and made absolute (``/abs/PATH.py:FUNC``), as workers in another folder need it."""
    p, func = parse_loader_spec(spec)
    return f"{p.resolve()}:{func}"


def _user_error(e: BaseException, path: Path) -> str:
    """The user's exception in one line, with the line of the loader script it came from."""
    here = path.resolve()
    line = next((f.lineno for f in reversed(traceback.extract_tb(e.__traceback__))
                 if Path(f.filename).resolve() == here), None)
    return f"{type(e).__name__}: {first_line(e, 200)}" + (f" (line {line})" if line else "")


def _loader_function(path: Path, func: str) -> Callable[[], Any]:
    """Import the script at ``path`` (the user's code, run as is) and return its function ``func``."""
    here = str(path.resolve())
    name = "_onnxfi_data_loader_" + hashlib.sha256(here.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, here)
    if spec is None or spec.loader is None:
        raise DataError(f"data loader {path}: cannot import it")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up
    folder = str(path.parent.resolve())
    sys.path.insert(0, folder)  # the script may import modules beside it
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # the user's code: its error in one line
        sys.modules.pop(name, None)
        raise DataError(f"data loader {path.name}: importing it raised {_user_error(e, path)}") from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    fn = getattr(module, func, None)
    if not callable(fn):
        found = sorted(k for k, v in vars(module).items()
                       if callable(v) and not k.startswith("_") and getattr(v, "__module__", None) == name)
        raise DataError(f"data loader {path.name} has no function {func!r} (it defines: {', '.join(found) or 'none'}; "
                        f"name one with {path.name}:FUNC)")
    return fn


def _feed_dicts(fn: Callable[[], Any], path: Path, func: str) -> list[Mapping[str, Any]]:
    where = f"data loader {path.name}:{func}"
    try:
        result = fn()
    except (Exception, SystemExit) as e:  # the user's code
        raise DataError(f"{where} raised {_user_error(e, path)}") from None
    if isinstance(result, Mapping):  # one feed dict, returned as it is
        result = [result]
    if not isinstance(result, Iterable):
        raise DataError(f"{where}: returned an object of type {type(result).__name__}; it must yield (or return a list of) "
                        "feed dicts {input name: array}")
    items: list[Mapping[str, Any]] = []
    try:
        for item in result:
            if not isinstance(item, Mapping):
                raise DataError(f"{where}: item {len(items)} is a {type(item).__name__}, not a feed dict "
                                "{input name: array}")
            items.append(item)
            if len(items) > MAX_FEED_DICTS:
                raise DataError(f"{where}: more than {MAX_FEED_DICTS:,} feed dicts; a loader must end")
    except DataError:
        raise
    except (Exception, SystemExit) as e:  # the user's code, run while it yields
        raise DataError(f"{where} raised {_user_error(e, path)}") from None
    if not items:
        raise DataError(f"{where}: yielded no feed dicts")
    return items


def _as_array(value: Any, name: str, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as e:  # a value numpy cannot take (a GPU tensor, ...)
        raise DataError(f"{where}: {name!r} is not an array ({first_line(e, 120)})") from None
    if arr.dtype.kind in "OUSmM" or arr.dtype.fields:  # objects, text, dates, records
        raise DataError(f"{where}: {name!r} is {arr.dtype}, not a numeric array")
    return arr


def load_loader(spec: str, specs: Sequence[InputSpec]) -> Dataset:
    """Run a data-loader script (``PATH.py[:FUNC]``): ``FUNC()`` yields (or returns an iterable of) feed
    dicts ``{input name: array}``, each with an optional ``labels`` array for its samples.

    Each feed dict holds one or more samples along each input's sample axis (:func:`sample_axes`); the
    feed dicts are joined along those axes into one :class:`Dataset`, so they must agree on every other dim.
    An input without a sample axis (shape ``[]``, e.g. a sample rate) goes whole to every batch and must be
    the same in every feed dict. The script is imported, and the function called, in every process that
    needs the data (each campaign worker too): it must give the same data every time.
    """
    path, func = parse_loader_spec(spec)
    items = _feed_dicts(_loader_function(path, func), path, func)
    axes = sample_axes(specs)
    names = {s.name for s in specs}
    per_input: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
    labels: list[np.ndarray] = []
    for i, item in enumerate(items):
        where = f"data loader {path.name}:{func}: feed dict {i}"
        arrays = {str(k): _as_array(v, str(k), where) for k, v in item.items()}
        label = arrays.pop(LABELS_KEY, None) if LABELS_KEY not in names else None
        matched = _match_inputs(arrays, specs, where)
        feeds = {s.name: _check_compatible(s, matched[s.name], where, axes[s.name]) for s in specs}
        n = _sample_counts(feeds, _effective_axes(feeds, axes), where)
        if label is not None:
            if label.ndim == 0 and n <= 1:
                label = label.reshape(1)
            if label.ndim == 0 or label.shape[0] != max(n, 1):
                raise DataError(f"{where}: labels have {label.shape[:1]} samples, its inputs have {n}")
            if len(labels) != i:
                raise DataError(f"{where}: has labels, feed dict 0 has none (give labels in every one or none)")
            labels.append(label)
        elif labels:
            raise DataError(f"{where}: has no labels, feed dict 0 has (give labels in every one or none)")
        for k, v in feeds.items():
            per_input[k].append(v)
    src = f"{path}:{func}"
    feeds_out: dict[str, np.ndarray] = {}
    for name, values in per_input.items():
        ax = axes[name]
        first = values[0]
        if ax is None or first.ndim == 0:
            for j, v in enumerate(values[1:], 1):
                if v.shape != first.shape or not np.array_equal(v, first, equal_nan=v.dtype.kind in "fc"):
                    raise DataError(
                        f"data loader {path.name}:{func}: input {name!r} has no sample axis (it goes whole to every "
                        f"run) but feed dict {j} gives another value than feed dict 0"
                    )
            feeds_out[name] = first
            axes[name] = None  # a 0-d array for an input of unknown shape has none either
            continue
        for j, v in enumerate(values[1:], 1):
            if v.shape[:ax] + v.shape[ax + 1:] != first.shape[:ax] + first.shape[ax + 1:]:
                raise DataError(
                    f"data loader {path.name}:{func}: input {name!r} is {list(first.shape)} in feed dict 0 and "
                    f"{list(v.shape)} in feed dict {j}: feed dicts are joined along the sample axis ({ax}), so every "
                    "other dim must agree"
                )
        feeds_out[name] = values[0] if len(values) == 1 else np.concatenate(values, axis=ax)
    label_out = None
    if labels:
        try:
            label_out = labels[0] if len(labels) == 1 else np.concatenate(labels)
        except ValueError:
            raise DataError(f"data loader {path.name}:{func}: labels of different shapes "
                            f"({list(labels[0].shape)}, ...) cannot be joined") from None
    return Dataset(feeds_out, label_out, src, axes)


def make_dataset(
    specs: Sequence[InputSpec],
    data: str | os.PathLike[str] | None = None,
    loader: str | None = None,
    seed: int = 0,
    samples: int = 1,
    overrides: Mapping[str, tuple[int, ...]] | None = None,
) -> Dataset:
    """The data a command runs on: an ``.npz`` (``data``), a data-loader script (``loader``,
    ``PATH.py[:FUNC]``), else ``samples`` seeded random samples."""
    if data and loader:
        raise DataError("give the data as an .npz (--data) or a data loader (--data-loader), not both")
    if loader:
        return load_loader(loader, specs)
    if data:
        return load_data(data, specs)
    return random_data(specs, seed=seed, batch=samples, overrides=overrides)
