"""Input feeds for a model: a user's ``.npz`` (arrays named after inputs, optional ``labels``) or seeded random data."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxfi.errors import DataError, OnnxfiError
from onnxfi.model import InputSpec

__all__ = ["Dataset", "load_data", "random_data", "resolve_shape", "LABELS_KEY"]

LABELS_KEY = "labels"


@dataclass
class Dataset:
    """Feeds by input name (first axis = samples), optional labels, and where they came from."""

    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str

    @property
    def size(self) -> int:
        first = next((v for v in self.feeds.values() if v.ndim), None)  # a 0-d input (a flag) has no samples
        return 0 if first is None else int(first.shape[0])

    def batch(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {k: (v[start:stop] if v.ndim else v) for k, v in self.feeds.items()}


def _numpy_dtype(dtype: ir.DataType) -> np.dtype:
    try:
        return np.dtype(dtype.numpy())
    except Exception:
        raise OnnxfiError(f"inputs of type {dtype.name} are not supported") from None


def resolve_shape(
    spec: InputSpec, overrides: Mapping[str, tuple[int, ...]] | None = None, batch: int | None = None
) -> tuple[int, ...]:
    """A concrete shape for ``spec``: the override, or its static dims with a dynamic batch dim set to ``batch``."""
    if overrides and spec.name in overrides:
        return tuple(overrides[spec.name])
    if spec.shape is None:
        raise OnnxfiError(
            f"input {spec.name!r} has an unknown shape; give --input-shape {spec.name}:DIMS (e.g. 1x3x224x224)"
        )
    dims: list[int] = []
    for i, d in enumerate(spec.shape):
        if isinstance(d, int) and d > 0:
            dims.append(d)
        elif i == 0 and batch is not None:
            dims.append(batch)
        else:
            dyn = [str(x) if x is not None else "?" for x in spec.shape]
            raise OnnxfiError(
                f"input {spec.name!r} has dynamic dims [{','.join(dyn)}]; "
                f"give --input-shape {spec.name}:DIMS (e.g. {spec.name}:"
                + "x".join(str(x) if isinstance(x, int) and x > 0 else ("1" if j == 0 else "?")
                           for j, x in enumerate(spec.shape)) + ")"
            )
    return tuple(dims)


def random_data(
    specs: Sequence[InputSpec],
    seed: int = 0,
    batch: int = 1,
    overrides: Mapping[str, tuple[int, ...]] | None = None,
) -> Dataset:
    """Seeded random inputs: floats uniform in [0, 1) (image-like), integers in [0, 10), booleans fair."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = resolve_shape(spec, overrides, batch)
        dt = _numpy_dtype(spec.dtype)
        if dt.kind == "f" or dt.name == "bfloat16":
            feeds[spec.name] = rng.random(shape, dtype=np.float32).astype(dt)
        elif dt.kind in "iu":
            feeds[spec.name] = rng.integers(0, 10, size=shape).astype(dt)
        elif dt.kind == "b":
            feeds[spec.name] = rng.random(shape) < 0.5
        else:
            raise OnnxfiError(f"cannot make random data for input {spec.name!r} of type {spec.dtype.name}")
        feeds[spec.name] = np.asarray(feeds[spec.name])  # a 0-d input comes back from numpy as a scalar
    return Dataset(feeds, None, f"random (seed {seed})")


def _check_compatible(spec: InputSpec, arr: np.ndarray, path: Path) -> np.ndarray:
    want = _numpy_dtype(spec.dtype)
    if arr.dtype != want:
        same_kind = (arr.dtype.kind == want.kind) or (arr.dtype.kind in "iu" and want.kind in "iu")
        if not same_kind and not (arr.dtype.kind in "iu" and want.kind == "f"):
            raise DataError(
                f"{path.name}: array {spec.name!r} is {arr.dtype}, the model input wants {want}"
            )
        arr = arr.astype(want)
    if spec.shape is not None:
        if arr.ndim != len(spec.shape):
            raise DataError(
                f"{path.name}: array {spec.name!r} has shape {list(arr.shape)}, "
                f"the model input wants rank {len(spec.shape)} {spec.shape_text()}"
            )
        for i, (got, d) in enumerate(zip(arr.shape, spec.shape)):
            if isinstance(d, int) and d > 0 and got != d and i > 0:
                raise DataError(
                    f"{path.name}: array {spec.name!r} has shape {list(arr.shape)}, "
                    f"the model input wants {spec.shape_text()}"
                )
    return arr


def load_data(path: str | os.PathLike[str], specs: Sequence[InputSpec]) -> Dataset:
    """Read an ``.npz``: one array per input name (or one array for a single-input model) + optional labels.

    Never unpickles: object arrays are refused.
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
    names = [s.name for s in specs]
    feeds: dict[str, np.ndarray] = {}
    if len(specs) == 1 and specs[0].name not in arrays:
        if len(arrays) != 1:
            raise DataError(
                f"{p.name}: has arrays {sorted(arrays)}; the model's input is {names[0]!r} "
                "(name the array after it, or keep a single array)"
            )
        arrays = {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise DataError(f"{p.name}: no array for input(s) {', '.join(missing)}; it has {sorted(arrays)}")
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise DataError(f"{p.name}: arrays {extra} match no model input (inputs: {names})")
    for spec in specs:
        feeds[spec.name] = _check_compatible(spec, arrays[spec.name], p)
    sizes = {k: v.shape[0] for k, v in feeds.items() if v.ndim}  # 0-d inputs go to every batch as they are
    if len(set(sizes.values())) > 1:
        raise DataError(f"{p.name}: inputs have different sample counts {sizes}")
    if labels is not None:
        n = next(iter(sizes.values()), 0)
        if labels.ndim == 0 or labels.shape[0] != n:
            raise DataError(f"{p.name}: labels have {labels.shape[:1]} samples, inputs have {n}")
    return Dataset(feeds, labels, str(p))
