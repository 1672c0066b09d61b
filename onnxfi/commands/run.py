"""``onnxfi run``: run a model on data (or seeded random inputs), summarise outputs, time it, score labels."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from rich.table import Table

from onnxfi.commands._common import add_model_args, input_shapes_from_args, load_from_args, print_json, stdout
from onnxfi.data import Dataset, load_data, random_data
from onnxfi.errors import OnnxfiError
from onnxfi.runtime import concat_batches, make_session, run_session

__all__ = ["register", "run", "label_accuracy"]

_EXAMPLES = """examples:
  onnxfi run model.onnx                         seeded random inputs from the input spec
  onnxfi run model.onnx --data eval.npz         one array per input name (+ optional `labels`)
  onnxfi run model.onnx --provider cuda --repeat 20 --json
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="run the model, summarise outputs and timing", epilog=_EXAMPLES,
        description="Run a model with ONNX Runtime. Data: an .npz with one array per input name (or a "
        "single array for a single-input model) and optional `labels`; without data, seeded random inputs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    p.add_argument("--data", help=".npz file with inputs (and optional labels)")
    p.add_argument("--provider", default="cpu", help="execution provider: cpu, cuda, tensorrt, openvino, ...")
    p.add_argument("--batch", type=int, default=64, help="samples per run (default 64)")
    p.add_argument("--samples", type=int, default=1, help="random inputs: how many samples (default 1)")
    p.add_argument("--repeat", type=int, default=5, help="timed repetitions of the first batch (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed for random inputs")
    p.add_argument("--threads", type=int, help="ORT intra-op threads (default: ORT's choice)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def label_accuracy(output: np.ndarray, labels: np.ndarray) -> tuple[str, float] | None:
    """Top-1 accuracy ([N,C] scores) or pixel accuracy ([N,C,H,W] scores); None when shapes don't fit."""
    if output.ndim >= 2 and labels.shape == (output.shape[0], *output.shape[2:]):
        pred = np.argmax(output, axis=1)
        return ("accuracy" if output.ndim == 2 else "pixel_accuracy"), float(np.mean(pred == labels))
    if output.shape == labels.shape and output.dtype.kind in "iu":
        return "accuracy", float(np.mean(output == labels))
    return None


def _summary(name: str, arr: np.ndarray) -> dict[str, Any]:
    finite = np.isfinite(arr) if arr.dtype.kind == "f" else np.ones(arr.shape, bool)
    vals = arr[finite].astype(np.float64) if arr.size else np.zeros(0)
    return {
        "name": name,
        "dtype": str(arr.dtype),
        "shape": list(arr.shape),
        "min": float(vals.min()) if vals.size else None,
        "max": float(vals.max()) if vals.size else None,
        "mean": float(vals.mean()) if vals.size else None,
        "nonfinite": int(arr.size - int(finite.sum())),
    }


def run(args: argparse.Namespace) -> int:
    if args.batch < 1 or args.repeat < 1 or args.samples < 1:
        raise OnnxfiError("--batch, --repeat and --samples must be at least 1")
    loaded, _ = load_from_args(args)
    specs = loaded.inputs()
    data: Dataset = (
        load_data(args.data, specs) if args.data
        else random_data(specs, seed=args.seed, batch=args.samples, overrides=input_shapes_from_args(args))
    )
    session = make_session(loaded.model, provider=args.provider, threads=args.threads)
    n = max(1, data.size)
    # the first batch is the timed one; the rest run once, each through run_session for its one-line errors
    first = run_session(session, data.batch(0, min(n, args.batch)), repeat=args.repeat, warmup=1)
    rest = [run_session(session, data.batch(start, min(n, start + args.batch))).outputs
            for start in range(args.batch, n, args.batch)]
    outputs = concat_batches([first.outputs, *rest])
    result: dict[str, Any] = {
        "model": str(loaded.path),
        "provider": args.provider,
        "data": data.source,
        "samples": n,
        "batch": min(n, args.batch),
        "latency_ms": {"median": first.median_s * 1e3, "min": min(first.times) * 1e3, "repeat": args.repeat},
        "outputs": [_summary(k, v) for k, v in outputs.items()],
    }
    if data.labels is not None:
        score = label_accuracy(next(iter(outputs.values())), data.labels)
        if score is not None:
            result[score[0]] = score[1]
    if args.json:
        print_json(result)
        return 0
    stdout.print(f"[bold]{result['model']}[/bold] on {args.provider}: {n} samples from {data.source}")
    t = Table(show_edge=False, header_style="bold")
    for col in ("output", "dtype", "shape", "min", "max", "mean", "NaN/Inf"):
        t.add_column(col)
    for o in result["outputs"]:
        t.add_row(o["name"], o["dtype"], str(o["shape"]),
                  *(f"{o[k]:.6g}" if o[k] is not None else "-" for k in ("min", "max", "mean")), str(o["nonfinite"]))
    stdout.print(t)
    lat = result["latency_ms"]
    stdout.print(f"latency   {lat['median']:.3f} ms median, {lat['min']:.3f} ms min "
                 f"(batch {result['batch']}, {args.repeat} runs)")
    for key in ("accuracy", "pixel_accuracy"):
        if key in result:
            stdout.print(f"{key.replace('_', ' ')}  {result[key]:.4f} ({n} labelled samples)")
    return 0
