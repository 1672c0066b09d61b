"""Input feeds for a model: a user's ``.npz``, a data-loader script or seeded random data -> a
:class:`Dataset` that hands out batches along each input's sample axis.

The sample axis of each input comes from the model (:func:`sample_axes`): axis 0 as a rule; a scalar
input (shape ``[]``) has none and goes whole to every run; when the model batches on a dynamic first dim,
an input whose first dim is fixed (an RNN state ``[2,N,128]``) has its sample axis where its batch dim is,
or none when it has no dynamic dim (a table every run takes whole).

Data and models are untrusted input:

- every allocation sized by them (random data from the input dims and ``--samples``, the arrays an
  ``.npz`` header declares, a conversion, joining a loader's feed dicts) is checked against
  :func:`onnxfi.memory.check_bytes` first: over the budget, a one-line error instead of a ``MemoryError``;
- an array whose dtype is not the input's is converted only when every value survives (int64 0/1 pixels
  into float32: yes; int64 2**40 + 1 into float32: no); a float narrowed to a smaller float (float64 data for
  a float32 input) is rounded to nearest, as frameworks feed it, and refused only where a value overflows to
  Inf or a non-zero becomes 0 (1e39 into float32); a lossy conversion is refused, naming the first value it
  changes, unless ``allow_cast=True`` (the CLI's ``--allow-cast``);
- what is accepted but suspicious goes to :attr:`Dataset.warnings` (the library never prints): NaN/Inf
  values per input, integer data converted for a float input, values a permitted lossy cast changed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import sys
import traceback
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxfi.bits import is_float_dtype
from onnxfi.errors import DataError, OnnxfiError, first_line
from onnxfi.memory import ENV_VAR, MemoryBudgetError, check_bytes
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
    sample axis goes whole to every batch. ``warnings``: one line each about data that was accepted but may
    not be what the user meant (NaN/Inf values, converted dtypes), for the caller to show."""

    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str
    axes: dict[str, int | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def batch_for(self, specs: Sequence[InputSpec], batch: int) -> int:
        """``batch`` capped at the samples per run that the model's inputs fix (an input whose sample axis has
        a fixed size, as a ``[1, 3, 800, 608]`` export: exactly that many samples per run)."""
        for s in specs:
            ax = self.axis(s.name) if s.name in self.feeds else None
            fixed = s.shape[ax] if s.shape and ax is not None and ax < len(s.shape) else None
            if isinstance(fixed, int) and fixed > 0:
                batch = min(batch, fixed)
        return batch

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
        return Dataset(self.batch(0, n), labels, self.source, {k: self.axis(k) for k in self.feeds},
                       list(self.warnings))

    def select(self, names: Iterable[str]) -> Dataset:
        """Only the inputs in ``names`` (a session that takes fewer inputs than the model)."""
        keep = set(names)
        feeds = {k: v for k, v in self.feeds.items() if k in keep}
        return Dataset(feeds, self.labels, self.source, {k: self.axis(k) for k in feeds}, list(self.warnings))


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


def _random_work_bytes(dt: np.dtype) -> int:
    """Bytes per value of the working array :func:`random_data` draws ``dt`` values into before converting."""
    if dt.kind == "f" or dt.name == "bfloat16":
        return 0 if dt == np.float32 else 4  # float32 draws
    return 8  # int64 draws for integers, float64 draws for booleans


def _check_random_bytes(planned: Sequence[tuple[InputSpec, np.dtype, tuple[int, ...]]], batch: int) -> None:
    """The random inputs (every input, and the largest working array) within the memory budget, before
    any is made: a dim of 10^8 in the model or in --input-shape is a one-line error, not a MemoryError."""
    if not planned:
        return
    sizes = [(math.prod(shape) * dt.itemsize, math.prod(shape) * _random_work_bytes(dt)) for _, dt, shape in planned]
    total = sum(final for final, _ in sizes) + max(work for _, work in sizes)
    spec, dt, shape = planned[max(range(len(planned)), key=lambda i: sum(sizes[i]))]
    what = f"random data for input {spec.name!r} [{','.join(map(str, shape))}] {dt}"
    if len(planned) > 1:
        what += f" (and {len(planned) - 1} more input(s))"
    if batch > 1:
        what += f", {batch} samples,"
    check_bytes(what, total)


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
    axes = sample_axes(specs)
    planned: list[tuple[InputSpec, np.dtype, tuple[int, ...]]] = []
    for spec in specs:
        dt = _numpy_dtype(spec.dtype)
        if spec.shape is not None and len(spec.shape) == 0 and dt.kind in "iu":
            raise DataError(
                f"input {spec.name!r} is a scalar {dt} (shape []): random data has no sensible value for it "
                "(a sample rate, a size, an index); give it with --data-loader (or --data)"
            )
        planned.append((spec, dt, resolve_shape(spec, overrides, batch, axes[spec.name])))
    _check_random_bytes(planned, batch)
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec, dt, shape in planned:
        try:
            if dt.kind == "f" or dt.name == "bfloat16":
                feeds[spec.name] = rng.random(shape, dtype=np.float32).astype(dt, copy=False)
            elif dt.kind in "iu":
                feeds[spec.name] = rng.integers(0, 10, size=shape).astype(dt)
            elif dt.kind == "b":
                feeds[spec.name] = rng.random(shape) < 0.5
            else:
                raise OnnxfiError(f"cannot make random data for input {spec.name!r} of type {spec.dtype.name}")
        except MemoryError:  # within the budget, but the machine has less free right now
            raise MemoryBudgetError(f"random data for input {spec.name!r} {list(shape)} {dt}: out of memory "
                                    f"(set {ENV_VAR} lower, or give smaller dims with --input-shape)") from None
        feeds[spec.name] = np.asarray(feeds[spec.name])  # a 0-d input comes back from numpy as a scalar
    return Dataset(feeds, None, f"random (seed {seed})", axes)


_BLOCK = 1 << 22  # values compared at a time: the working arrays of a check stay small


def _blocks(arr: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``arr`` in slices along axis 0 of about :data:`_BLOCK` values: (first row, slice)."""
    if arr.ndim == 0 or arr.shape[0] == 0:
        yield 0, arr
        return
    step = max(1, _BLOCK // max(1, arr.size // arr.shape[0]))
    for start in range(0, arr.shape[0], step):
        yield start, arr[start:start + step]


def _changed(orig: np.ndarray, cast: np.ndarray) -> np.ndarray:
    """Where converting ``orig`` to ``cast`` (its values in another dtype) changed a value (NaN stays NaN)."""
    src, dst = orig.dtype, cast.dtype
    with np.errstate(invalid="ignore", over="ignore"):
        if src.kind in "iu" and dst.kind in "iu":  # the range alone decides (a round trip can wrap back)
            s, d = np.iinfo(src), np.iinfo(dst)
            out = np.zeros(orig.shape, bool)
            if d.min > s.min:
                out |= orig < d.min
            if d.max < s.max:
                out |= orig > d.max
            return out
        if src.kind == "f" and dst.kind == "f":  # narrowing rounds to nearest, as every framework feeds it;
            wide = cast.astype(np.float64)  # what changes a value is overflow to Inf or underflow to 0
            o = orig.astype(np.float64)
            return np.asarray((np.isfinite(o) & ~np.isfinite(wide)) | ((o != 0) & (wide == 0)))
        back = cast.astype(src)
        out = np.asarray(back != orig)
        if src.kind in "iu":  # a value rounded past the integer range converts back to anything
            bits = 8 * src.itemsize
            lo, hi = (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1)) if src.kind == "i" else (0.0, 2.0**bits)
            wide = cast.astype(np.float64)
            out |= ~np.isfinite(wide) | (wide >= hi) | (wide < lo)
        else:
            out &= ~(np.isnan(orig) & np.isnan(back))
        return out


@dataclass
class _Conversions:
    """What converting the data to the inputs' dtypes did, per input (over every feed dict of a loader):
    the source dtypes, the values converted and changed, the range of integer data given for a float input."""

    sources: dict[str, list[str]] = field(default_factory=dict)
    values: dict[str, int] = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict)
    int_range: dict[str, tuple[int, int]] = field(default_factory=dict)

    def add(self, name: str, orig: np.ndarray, changed: int, int_for_float: bool) -> None:
        if str(orig.dtype) not in self.sources.setdefault(name, []):
            self.sources[name].append(str(orig.dtype))
        self.values[name] = self.values.get(name, 0) + int(orig.size)
        self.changed[name] = self.changed.get(name, 0) + changed
        if int_for_float and orig.size:
            lo, hi = int(orig.min()), int(orig.max())
            old = self.int_range.get(name, (lo, hi))
            self.int_range[name] = (min(lo, old[0]), max(hi, old[1]))

    def warnings(self, specs: Sequence[InputSpec], where: str) -> list[str]:
        out: list[str] = []
        for spec in specs:
            if spec.name not in self.sources:
                continue
            src, want = "/".join(self.sources[spec.name]), _numpy_dtype(spec.dtype)
            if self.changed[spec.name]:
                out.append(f"{where}: input {spec.name!r}: converting {src} to {want} changed "
                           f"{self.changed[spec.name]:,} of {self.values[spec.name]:,} values (--allow-cast)")
            if spec.name in self.int_range:
                lo, hi = self.int_range[spec.name]
                out.append(f"{where}: input {spec.name!r}: integer data ({src}, values {lo}..{hi}) for a {want} "
                           "input, converted; check that it is scaled as the model expects")
        return out


def _convert(spec: InputSpec, arr: np.ndarray, want: np.dtype, where: str, allow_cast: bool,
             log: _Conversions | None) -> np.ndarray:
    """``arr`` as ``want``: refused (naming the first value it changes) when a value would not survive the
    conversion, unless ``allow_cast``; ``log`` records what it did."""
    check_bytes(f"{where}: converting array {spec.name!r} [{','.join(map(str, arr.shape))}] from {arr.dtype} to "
                f"{want}", arr.size * want.itemsize)
    with np.errstate(invalid="ignore", over="ignore"):
        out = arr.astype(want)
    changed = 0
    for start, block in _blocks(arr):
        mask = _changed(block, out[start:start + len(block)] if arr.ndim else out)
        if not mask.any():
            continue
        if not allow_cast:
            local = np.unravel_index(int(np.flatnonzero(mask)[0]), mask.shape)
            idx = (local[0] + start, *local[1:]) if arr.ndim else ()
            was, now = arr[idx].item(), out[idx].item()
            at = f" at [{', '.join(map(str, idx))}]" if arr.ndim else ""
            raise DataError(
                f"{where}: array {spec.name!r} is {arr.dtype}, the model input wants {want}, and converting it "
                f"changes values (first: {was!r}{at} becomes {now!r}); convert the data yourself "
                f"(e.g. .astype(numpy.{want})) or pass --allow-cast"
            )
        changed += int(np.count_nonzero(mask))
    if log is not None:
        log.add(spec.name, arr, changed, arr.dtype.kind in "iu" and want.kind in "fc")
    return out


def _check_compatible(spec: InputSpec, arr: np.ndarray, where: str, axis: int | None, allow_cast: bool = False,
                      log: _Conversions | None = None) -> np.ndarray:
    """``arr`` as the input's dtype (converted only when every value survives, or ``allow_cast``); every
    dim but the sample axis as the model fixes it."""
    want = _numpy_dtype(spec.dtype)
    if arr.dtype != want:
        same_kind = (arr.dtype.kind == want.kind) or (arr.dtype.kind in "iu" and want.kind in "iu")
        if (not same_kind and not (arr.dtype.kind in "iu" and want.kind == "f")) or "V" in (arr.dtype.kind, want.kind):
            raise DataError(f"{where}: array {spec.name!r} is {arr.dtype}, the model input wants {want}")
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
    return arr if arr.dtype == want else _convert(spec, arr, want, where, allow_cast, log)


def _nonfinite_warnings(feeds: Mapping[str, np.ndarray], axes: Mapping[str, int | None], where: str) -> list[str]:
    """One line per input holding NaN or Inf values: their counts, and the samples they are in."""
    out: list[str] = []
    n = _sample_counts(feeds, axes, where)
    for name, value in feeds.items():
        if not (is_float_dtype(value.dtype) or value.dtype.kind == "c"):
            continue
        nan = inf = 0
        for _, block in _blocks(value):
            nan += int(np.count_nonzero(np.isnan(block)))
            inf += int(np.count_nonzero(np.isinf(block)))
        if nan or inf:
            scope = f"in {n:,} samples" if axes.get(name) is not None else "(no sample axis: every run takes it)"
            out.append(f"{where}: input {name!r}: {nan:,} NaN, {inf:,} Inf values {scope}")
    return out


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


_NPY_HEADERS: dict[tuple[int, int], Callable[[Any], tuple[tuple[int, ...], bool, np.dtype]]] = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _check_npz_sizes(p: Path) -> None:
    """Every member of the ``.npz`` at ``p`` is an ``.npy`` array whose header declares no more bytes than
    the member holds, and all together fit the memory budget: checked from the headers, before numpy
    allocates what they declare (a forged header of 10^12 values in a tiny file is a one-line error)."""
    total, largest, largest_what = 0, -1, ""
    try:
        with zipfile.ZipFile(p) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                name = info.filename
                with zf.open(info) as f:
                    try:
                        version = np.lib.format.read_magic(f)
                    except ValueError:
                        raise DataError(f"{p.name}: member {name!r} is not a .npy array "
                                        "(save the inputs with numpy.savez)") from None
                    read_header = _NPY_HEADERS.get(version)
                    if read_header is None:
                        raise DataError(f"{p.name}: member {name!r} is a .npy of format {version[0]}.{version[1]}; "
                                        "save plain numeric arrays with numpy.savez")
                    shape, _, dtype = read_header(f)
                    held = info.file_size - f.tell()
                if any(d < 0 for d in shape):
                    raise DataError(f"{p.name}: member {name!r} declares the shape {list(shape)}")
                nbytes = math.prod(shape) * dtype.itemsize
                what = f"{name.removesuffix('.npy')!r} [{','.join(map(str, shape))}] {dtype}"
                if nbytes > held:
                    raise DataError(f"{p.name}: array {what} needs {nbytes:,} bytes but its member holds {held:,} "
                                    "(a truncated or forged .npz)")
                total += nbytes
                if nbytes > largest:
                    largest, largest_what = nbytes, what
    except (ValueError, TypeError, SyntaxError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{p.name}: not a readable .npz ({first_line(e, 200)})") from None
    if largest >= 0:
        check_bytes(f"{p.name}: array {largest_what}" + (" with the other arrays" if total > largest else ""), total)


def load_data(path: str | os.PathLike[str], specs: Sequence[InputSpec], *, allow_cast: bool = False) -> Dataset:
    """Read an ``.npz``: one array per input name (or one array for a single-input model) + optional labels.

    Each array holds its input's samples along the input's sample axis (:func:`sample_axes`: the first
    axis as a rule); a 0-d array (a sample rate) goes whole to every batch. Never unpickles: object
    arrays are refused. The arrays' sizes are checked from their headers against the memory budget before
    any is read. An array of another dtype than its input's is converted when every value survives, else
    refused unless ``allow_cast``; NaN/Inf values and conversions worth a look go to ``warnings``.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    if not zipfile.is_zipfile(p):  # np.load would return a bare array (.npy) or try to unpickle
        raise DataError(f"{p.name}: not an .npz file (save the inputs with numpy.savez)")
    _check_npz_sizes(p)
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise DataError(f"{p.name}: contains pickled objects; refused (save plain numeric arrays)") from None
        raise DataError(f"{p.name}: not a readable .npz ({e})") from None
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{p.name}: not a readable .npz ({e})") from None
    labels = arrays.pop(LABELS_KEY, None)
    arrays = _match_inputs(arrays, specs, p.name)
    axes = sample_axes(specs)
    log = _Conversions()
    feeds = {s.name: _check_compatible(s, arrays[s.name], p.name, axes[s.name], allow_cast, log) for s in specs}
    axes = _effective_axes(feeds, axes)
    n = _sample_counts(feeds, axes, p.name)
    if labels is not None and (labels.ndim == 0 or labels.shape[0] != n):
        raise DataError(f"{p.name}: labels have {labels.shape[:1]} samples, inputs have {n}")
    warnings = log.warnings(specs, p.name) + _nonfinite_warnings(feeds, axes, p.name)
    return Dataset(feeds, labels, str(p), axes, warnings)


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


def load_loader(spec: str, specs: Sequence[InputSpec], *, allow_cast: bool = False) -> Dataset:
    """Run a data-loader script (``PATH.py[:FUNC]``): ``FUNC()`` yields (or returns an iterable of) feed
    dicts ``{input name: array}``, each with an optional ``labels`` array for its samples.

    Each feed dict holds one or more samples along each input's sample axis (:func:`sample_axes`); the
    feed dicts are joined along those axes into one :class:`Dataset`, so they must agree on every other dim.
    An input without a sample axis (shape ``[]``, e.g. a sample rate) goes whole to every batch and must be
    the same in every feed dict. The script is imported, and the function called, in every process that
    needs the data (each campaign worker too): it must give the same data every time. Dtypes are converted
    as :func:`load_data` converts them (``allow_cast``), and the joined arrays checked against the memory budget.
    """
    path, func = parse_loader_spec(spec)
    items = _feed_dicts(_loader_function(path, func), path, func)
    axes = sample_axes(specs)
    names = {s.name for s in specs}
    per_input: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
    labels: list[np.ndarray] = []
    log = _Conversions()
    for i, item in enumerate(items):
        where = f"data loader {path.name}:{func}: feed dict {i}"
        arrays = {str(k): _as_array(v, str(k), where) for k, v in item.items()}
        label = arrays.pop(LABELS_KEY, None) if LABELS_KEY not in names else None
        matched = _match_inputs(arrays, specs, where)
        feeds = {s.name: _check_compatible(s, matched[s.name], where, axes[s.name], allow_cast, log) for s in specs}
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
    if len(items) > 1:  # joining copies every array once more
        check_bytes(f"data loader {path.name}:{func}: joining {len(items):,} feed dicts",
                    sum(v.nbytes for values in per_input.values() for v in values)
                    + sum(label.nbytes for label in labels))
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
    where = f"data loader {path.name}:{func}"
    warnings = log.warnings(specs, where) + _nonfinite_warnings(feeds_out, axes, where)
    return Dataset(feeds_out, label_out, src, axes, warnings)


def make_dataset(
    specs: Sequence[InputSpec],
    data: str | os.PathLike[str] | None = None,
    loader: str | None = None,
    seed: int = 0,
    samples: int = 1,
    overrides: Mapping[str, tuple[int, ...]] | None = None,
    *,
    allow_cast: bool = False,
) -> Dataset:
    """The data a command runs on: an ``.npz`` (``data``), a data-loader script (``loader``,
    ``PATH.py[:FUNC]``), else ``samples`` seeded random samples. ``allow_cast``: convert data of another
    dtype than its input's even where values change (see :func:`load_data`)."""
    if data and loader:
        raise DataError("give the data as an .npz (--data) or a data loader (--data-loader), not both")
    if loader:
        return load_loader(loader, specs, allow_cast=allow_cast)
    if data:
        return load_data(data, specs, allow_cast=allow_cast)
    return random_data(specs, seed=seed, batch=samples, overrides=overrides)
