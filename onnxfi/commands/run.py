"""``onnxfi run``: run a model on data (or seeded random inputs), summarise outputs, time it, score labels."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from onnxfi.commands._common import (
    add_allow_cast_arg,
    add_data_loader_arg,
    add_model_args,
    add_task_args,
    data_loader_from_args,
    input_shapes_from_args,
    load_from_args,
    print_data_warnings,
    stderr,
    stdout,
    task_from_args,
)
from onnxfi.commands._json import SCHEMAS, add_json_arg, json_command, write_json
from onnxfi.errors import OnnxfiError

if TYPE_CHECKING:  # ONNX, ONNX Runtime and numpy load when the command runs, not with the parser (--help)
    import numpy as np

    from onnxfi.data import Dataset
    from onnxfi.scoring import OutputChoice

__all__ = ["register", "run", "label_scores"]

_EXAMPLES = """examples:
  onnxfi run model.onnx                         seeded random inputs from the input spec
  onnxfi run model.onnx --data eval.npz         one array per input name (+ optional `labels`)
  onnxfi run vad.onnx --data-loader feeds.py    feed dicts from load_data() in feeds.py (any inputs)
  onnxfi run model.onnx --provider cuda --repeat 20 --json run.json
  onnxfi run detector.onnx --data eval.npz --output scores   score the labels on this output

With labels, the output they are scored on is the one that agrees best with them (onnxfi.scoring:
the choice and the runner-up are printed); --output NAME picks it, --task reads it as a given task.
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
    add_data_loader_arg(p)
    add_allow_cast_arg(p)
    p.add_argument("--provider", default="cpu", help="execution provider: cpu, cuda, tensorrt, openvino, ...")
    p.add_argument("--batch", type=int, default=64, help="samples per run (default 64)")
    p.add_argument("--samples", type=int, default=1, help="random inputs: how many samples (default 1)")
    p.add_argument("--repeat", type=int, default=5, help="timed repetitions of the first batch (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed for random inputs")
    p.add_argument("--threads", type=int, help="ORT intra-op threads (default: ORT's choice)")
    p.add_argument("--output", metavar="NAME", help="the output the labels are scored on (default: the one that "
                   "agrees best with them)")
    add_task_args(p)
    add_json_arg(p, "the outputs, latency and scores")
    p.set_defaults(func=run)


def label_scores(outputs: dict[str, np.ndarray], labels: np.ndarray, choice: OutputChoice) -> dict[str, float]:
    """The chosen output against the labels: ``accuracy`` (class ids) or ``miou`` and ``pixel_accuracy``
    (label maps), read in the choice's layout; empty when the labels do not fit it."""
    from onnxfi import metrics
    from onnxfi.outcomes import output_metric

    out = outputs[choice.name]
    if choice.metric is None:
        return {}
    name, value = output_metric(choice.task, choice.layout, outputs, outputs, choice.name, labels)
    scores = {name: value}
    if name == "miou":
        threshold = metrics.mask_threshold(out) if choice.layout in metrics.MASK_LAYOUTS else None
        pred = metrics.decisions(out, choice.layout, threshold)
        k = metrics.layout_classes(out, choice.layout) or metrics.label_map_classes(pred, labels)
        scores["pixel_accuracy"] = metrics.pixel_accuracy(pred, labels, k)
    return scores


def _summary(name: str, arr: np.ndarray) -> dict[str, Any]:
    import numpy as np

    from onnxfi.bits import is_float_dtype

    finite = np.isfinite(arr) if is_float_dtype(arr.dtype) else np.ones(arr.shape, bool)
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


@json_command
def run(args: argparse.Namespace) -> int:
    from onnxfi.data import make_dataset
    from onnxfi.runtime import concat_batches, make_session, run_session
    from onnxfi.scoring import choose_output, plausibility

    if args.batch < 1 or args.repeat < 1 or args.samples < 1:
        raise OnnxfiError("--batch, --repeat and --samples must be at least 1")
    task = task_from_args(args)
    loaded, _ = load_from_args(args)
    specs = loaded.inputs()
    data: Dataset = make_dataset(specs, args.data, data_loader_from_args(args), seed=args.seed, samples=args.samples,
                                 overrides=input_shapes_from_args(args), allow_cast=args.allow_cast)
    print_data_warnings(data.warnings)
    args.batch = data.batch_for(specs, args.batch)  # a model with a fixed batch dimension takes that many per run
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
        "data_warnings": list(data.warnings),
        "samples": n,
        "batch": min(n, args.batch),
        "latency_ms": {"median": first.median_s * 1e3, "min": min(first.times) * 1e3, "repeat": args.repeat},
        "outputs": [_summary(k, v) for k, v in outputs.items()],
    }
    warning = None
    if data.labels is not None or args.output is not None or task is not None:
        choice = choose_output(outputs, data.labels, args.output, task, samples=data.size)
        result["output_choice"] = choice.to_dict()
        if data.labels is not None:
            scores = label_scores(outputs, data.labels, choice)
            result.update(scores)
            name = next(iter(scores), None)
            warning = plausibility(choice, scores[name]) if name is not None else None
        result["warning"] = warning
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
    choice_d = result.get("output_choice")
    if choice_d:
        stdout.print(escape(f"scored output: {choice_d['name']} ({choice_d['layout']}): {choice_d['reason']}"))
    for key in ("accuracy", "miou", "pixel_accuracy"):
        if key in result:
            stdout.print(f"{key.replace('_', ' ')}  {result[key]:.4f} ({n} labelled samples)")
    if warning:
        stderr.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    write_json(args.json, {"schema": SCHEMAS["run"], **result})
    return 0
