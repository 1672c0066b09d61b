"""Argument groups and helpers shared by the sub-commands (the CLI/report layer: may print).

Light to import: building the parser (``onnxfi --help``, ``--version``) loads no ONNX, ONNX Runtime or numpy;
the helpers that need them import them when called.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from onnxfi.errors import OnnxfiError

if TYPE_CHECKING:
    import onnx_ir as ir

    from onnxfi.model import LoadedModel
    from onnxfi.sites import SiteIndex

__all__ = [
    "add_allow_cast_arg",
    "print_data_warnings",
    "add_model_args",
    "load_from_args",
    "input_shapes_from_args",
    "add_data_loader_arg",
    "data_loader_from_args",
    "DATA_LOADER_HELP",
    "resolve_model_arg",
    "stdout",
    "stderr",
    "fmt_int",
    "fmt_value",
    "dtype_name",
    "TASKS",
    "MODES",
]

# onnxfi.metrics.TASKS and onnxfi.engine.MODES, spelled out so that building the parser (--help, --version)
# loads neither the metrics nor the engine (ONNX, numpy); tests/test_startup.py checks that they agree
TASKS = ("classification", "segmentation", "regression", "sequence", "ctc", "tokens", "detection")
MODES = ("suffix", "port", "naive")

# Rich assumes 80 columns off a terminal; site tables are wider, so give pipes and CI logs room.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
stdout = Console(highlight=False, width=_WIDTH)
stderr = Console(stderr=True, highlight=False, width=_WIDTH)


def dtype_name(dtype: ir.DataType) -> str:
    from onnxfi.bits import FAULT_DTYPES

    info = FAULT_DTYPES.get(dtype)
    return info.name if info else dtype.name.lower()


def add_task_args(p: argparse.ArgumentParser) -> None:
    """``--task`` (how the scored output is read) and ``--decoder`` (a detector's own decoder)."""
    p.add_argument("--task", choices=list(TASKS),
                   help="read the scored output as this task (default: from the evidence: labels, output names and "
                        "shapes; per-step class scores [N, T, C]: ctc = greedy CTC decode, tokens = one class per "
                        "step; detection: boxes/scores/classes, raw YOLO or SSD heads)")
    p.add_argument("--decoder", metavar="MODULE:FUNCTION",
                   help="a detector's decoder: function(outputs) -> one (boxes [K, 4] x1 y1 x2 y2, scores [K], "
                        "classes [K]) per image (implies --task detection; see onnxfi/detection.py)")


def task_from_args(args: argparse.Namespace) -> str | None:
    """The task the commands pass on: ``--task``, or ``detection:MODULE:FUNCTION`` with ``--decoder``."""
    decoder = getattr(args, "decoder", None)
    if decoder:
        if args.task not in (None, "detection"):
            raise OnnxfiError(f"--decoder reads a detector's outputs: it goes with --task detection, not {args.task}")
        mod, _, fn = decoder.rpartition(":")
        if mod.endswith(".py"):  # a file: absolute, as workers in another folder import it
            if not os.path.isfile(mod):
                raise OnnxfiError(f"--decoder {decoder}: no file {mod}")
            decoder = f"{os.path.abspath(mod)}:{fn}"
        return f"detection:{decoder}"
    task: str | None = args.task
    return task


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="path to a .onnx file, or a model_zoo name")
    p.add_argument(
        "--input-shape", action="append", default=[], metavar="NAME:DIMS",
        help="fix a dynamic input, e.g. input:1x3x224x224; ? or N leaves a dim dynamic (x:Nx3x48x192) "
        "(repeatable)",
    )
    p.add_argument("--no-check", action="store_true", help="skip the ONNX checker (shape inference still runs)")


def resolve_model_arg(spec: str) -> str:
    try:
        zoo = importlib.import_module("onnxfi.zoo")  # the bundled model zoo, when present
    except ImportError:
        return spec
    return str(zoo.resolve_model(spec))


DATA_LOADER_HELP = (
    "Python data loader instead of an .npz: FUNC (default load_data) in PATH.py yields feed dicts "
    "{input name: array} (+ optional 'labels'); they are joined along each input's sample axis, and inputs of "
    "shape [] (e.g. a sample rate) go whole to every run. It runs here and in every worker: it must give the "
    "same data every time (seed any randomness)"
)


def add_data_loader_arg(p: argparse.ArgumentParser, what: str = "") -> None:
    """``--data-loader PATH.py[:FUNC]`` (Polygraphy's style; exclusive with the command's .npz option)."""
    p.add_argument("--data-loader", metavar="PATH.py[:FUNC]", help=DATA_LOADER_HELP + what)


def add_allow_cast_arg(p: argparse.ArgumentParser) -> None:
    """``--allow-cast``: data of another dtype than its input's is converted even where values change."""
    p.add_argument("--allow-cast", action="store_true",
                   help="convert data of another dtype than its input's even where values change (int64 2**40+1 "
                   "into float32, 1e39 into float32); without it only exact conversions are made (float64 data is "
                   "rounded to the nearest float32) and a lossy one is an error")


def print_data_warnings(warnings: Iterable[str]) -> None:
    """The data's warnings (NaN/Inf values, integer data for a float input, values a cast changed), on stderr."""
    for w in warnings:
        stderr.print(f"[yellow]warning:[/yellow] {escape(w)}")


def data_loader_from_args(args: argparse.Namespace, npz_option: str = "data") -> str | None:
    """``--data-loader`` checked and made absolute (workers import it themselves), or None; given with
    the command's .npz option (``--data``, ``--calib``) it is an error."""
    spec = getattr(args, "data_loader", None)
    if not spec:
        return None
    if getattr(args, npz_option, None):
        raise OnnxfiError(f"--{npz_option} and --data-loader both give the data: use one")
    from onnxfi.data import resolve_loader_spec

    return resolve_loader_spec(spec)


def input_shapes_from_args(args: argparse.Namespace) -> dict[str, tuple[int, ...]]:
    from onnxfi.model import parse_input_shape

    shapes: dict[str, tuple[int, ...]] = {}
    for text in getattr(args, "input_shape", None) or []:
        name, dims = parse_input_shape(text)
        shapes[name] = dims
    return shapes


def load_from_args(args: argparse.Namespace) -> tuple[LoadedModel, SiteIndex]:
    from onnxfi.model import load_model
    from onnxfi.sites import enumerate_sites

    loaded = load_model(
        resolve_model_arg(args.model), input_shapes_from_args(args), check=not getattr(args, "no_check", False)
    )
    return loaded, enumerate_sites(loaded.model, loaded.value_shapes)


def fmt_int(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def fmt_value(v: Any) -> str:
    """A scalar as text: integers exactly, floats with 9 significant digits (enough for float32)."""
    if v is None:
        return "-"
    kind = getattr(getattr(v, "dtype", None), "kind", "f")
    if kind in "iub":
        return str(int(v))
    return f"{float(v):.9g}"
