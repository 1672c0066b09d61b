"""``onnxfi harden``: apply hardening passes, write the hardened model, report changes, accuracy and latency."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
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

# ONNX, ONNX Runtime, numpy and the passes load when the command runs, not with the parser (--help)
if TYPE_CHECKING:
    from onnxfi.data import Dataset
    from onnxfi.harden import HardeningEffect, HardenResult, PassReport
    from onnxfi.model import LoadedModel

__all__ = ["register", "run"]

# how the before/after line names each task metric (onnxfi.outcomes.output_metric)
_METRIC_LABELS = {"accuracy": "accuracy", "miou": "mIoU", "map50": "mAP@0.5",
                  "map50_golden": "mAP@0.5 against the original's detections", "seq_accuracy": "sequence accuracy",
                  "token_accuracy": "token accuracy", "golden_agreement": "agreement with the original"}

# onnxfi.harden.METHODS (the passes' registry: name -> summary), spelled out so that building the parser loads
# no pass; tests/test_startup.py checks that they agree
METHODS = {
    "ranger": "Ranger: Clip(x, lo, hi) after each activation (chain) with profiled bounds",
    "clipact": "FT-ClipAct: ReLU -> x if 0 <= x <= T else 0 (T: profiled max, or --search)",
    "relumax": "ReLUMax: ReLU -> 0 where the pre-activation exceeds its profiled max",
    "protect": "zero-cost protection: nudge fp32 weights out of exponent classes where one flip blows up",
    "nan-guard": "NaN -> 0, +-Inf -> +-max at outputs, residual Adds and the classifier input",
    "weight-clip": "weight range check: clip each weight to its own fault-free [min, max] at run time",
}

_EXAMPLES = """methods (composed in the order given):
""" + "".join(f"  {name:<11} {text}\n" for name, text in METHODS.items()) + """
examples:
  onnxfi harden model.onnx --method ranger --calib calib.npz -o hardened.onnx
  onnxfi harden model.onnx --method relumax,protect --calib calib.npz -o hardened.onnx --json harden.json
  onnxfi harden model.onnx --method ranger --percentile 99.99 --calib calib.npz -o out.onnx
  onnxfi harden model.onnx --method clipact --search --calib calib.npz -o out.onnx
  onnxfi harden model.onnx --method protect --level 2 --eval eval.npz -o out.onnx   (no calibration)
  onnxfi harden model.onnx --method nan-guard --guard-points 'Add|logits' -o out.onnx
  onnxfi harden digits_cnn --method ranger -o out.onnx                 (zoo name: its eval data calibrates)
  onnxfi harden detector.onnx --method ranger --calib calib.npz -o out.onnx --output scores

Calibration data is an .npz with one array per input name (+ optional `labels`), or --data-loader
PATH.py[:FUNC] (feed dicts from a Python function, as for run and analyze). Without either, a zoo
model uses its eval data and any other model seeded random inputs (weak bounds: a warning says so).
The report compares the hardened model with the original on the same data (--eval, else the calibration
data): accuracy (mIoU for label maps) against labels when there are labels, else top-1 agreement with the
original, on the output that agrees best with the labels (--output NAME picks it; the choice and the
runner-up are printed); and the median ONNX Runtime latency of both under the same session options.
-o names the hardened file, --output the scored model output.
"""

_SHOW = 20  # rows per table before eliding (everything is in --json)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "harden", help=f"harden a model without retraining ({', '.join(METHODS)})",
        epilog=_EXAMPLES,
        description="Apply hardening passes to a model, write it, and report what changed, the clean-metric "
        "change and the latency overhead.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    p.add_argument("--method", metavar="M[,M2]", help=f"comma list of: {', '.join(METHODS)} (or --recipe)")
    p.add_argument("--recipe", metavar="RECIPE.json",
                   help="apply a recipe written by onnxfi advise: each step's method at its layers, in order")
    p.add_argument("-o", "--out", metavar="OUT.onnx", help="where to write the hardened model (required)")
    p.add_argument("--output", metavar="NAME",
                   help="the model output the accuracy comparison scores (default: the one that agrees best with "
                   "the labels, else by shape; see onnxfi.scoring)")
    add_task_args(p)
    p.add_argument("--calib", metavar="DATA.npz", help="calibration data for the activation ranges")
    add_data_loader_arg(p, "; here it serves as --calib (and as the comparison data unless --eval)")
    add_allow_cast_arg(p)
    p.add_argument("--eval", metavar="DATA.npz", help="data for the accuracy comparison (default: the calibration data)")
    p.add_argument("--percentile", type=float, metavar="P",
                   help="ranger: upper bound = P-th percentile of each activation instead of its max")
    p.add_argument("--level", type=int, choices=(0, 1, 2, 3), metavar="L",
                   help="protect: 0..3, wider windows protect more weights with larger changes (default 1)")
    p.add_argument("--search", action="store_true",
                   help="clipact: search each threshold by fault-injection AUC instead of the profiled max")
    p.add_argument("--layers", metavar="REGEX",
                   help="harden only where REGEX matches (searched in each candidate's name: the activation node "
                        "for ranger/clipact/relumax, the weight for protect, the value for nan-guard; the others "
                        "are listed as skipped)")
    p.add_argument("--guard-points", metavar="REGEX",
                   help="nan-guard: guard the values whose names match REGEX instead of the default points")
    p.add_argument("--samples", type=int, default=64, help="random calibration inputs: how many (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed for random inputs, subsampling and the search")
    p.add_argument("--batch", type=int, default=64, help="samples per run (default 64)")
    p.add_argument("--repeat", type=int, default=50, help="timed runs per model for the latency (default 50)")
    p.add_argument("--provider", default="cpu", help="execution provider: cpu, cuda, ...")
    p.add_argument("--threads", type=int, help="ORT intra-op threads (default: ORT's choice)")
    p.add_argument("--external-data", action="store_true", help="write weights to OUT.onnx.data")
    add_json_arg(p, "every change, skip and the comparison")
    p.set_defaults(func=run)


def _calibration(
    args: argparse.Namespace, loaded: LoadedModel, methods: list[str], warnings: list[str]
) -> Dataset:
    from onnxfi.data import load_data, load_loader, random_data
    from onnxfi.harden import DATA_METHODS
    from onnxfi.zoo import default_data

    specs = loaded.inputs()
    loader = data_loader_from_args(args, "calib")
    cast = args.allow_cast
    if loader:
        return load_loader(loader, specs, allow_cast=cast)
    if args.calib:
        return load_data(args.calib, specs, allow_cast=cast)
    zoo_data = default_data(args.model)
    if zoo_data is not None:
        return load_data(zoo_data, specs, allow_cast=cast)
    if args.eval and not any(m in DATA_METHODS for m in methods):
        return load_data(args.eval, specs, allow_cast=cast)  # nothing to calibrate: the eval data serves the report
    if any(m in DATA_METHODS for m in methods):
        warnings.append(
            "no --calib: calibrating on seeded random inputs; bounds from random data are weak "
            "(give --calib DATA.npz with real inputs)"
        )
    else:
        warnings.append("no --calib or --eval: comparing the models on seeded random inputs")
    return random_data(specs, seed=args.seed, batch=args.samples, overrides=input_shapes_from_args(args))


def _check_options(args: argparse.Namespace, methods: list[str]) -> None:
    from onnxfi.harden import METHOD_OPTIONS

    if args.batch < 1 or args.repeat < 1 or args.samples < 1:
        raise OnnxfiError("--batch, --repeat and --samples must be at least 1")
    for option, method in METHOD_OPTIONS.items():  # each method's options, from the registry
        value = getattr(args, option)
        if value is not None and value is not False and method not in methods:  # --level 0 is given
            raise OnnxfiError(f"--{option.replace('_', '-')} applies to {method}; add it to --method")


@json_command
def run(args: argparse.Namespace) -> int:
    from onnxfi.data import load_data
    from onnxfi.harden import HardenOptions, harden, measure_hardening, parse_methods, run_outputs
    from onnxfi.model import load_model, save_model
    from onnxfi.scoring import choose_output, describe_shapes

    recipe = None
    if args.recipe is not None:
        from onnxfi.advise import load_recipe

        if args.method is not None or args.layers is not None:
            raise OnnxfiError("--recipe names the methods and their layers: leave out --method and --layers")
        recipe = load_recipe(args.recipe)
        methods = recipe.methods
    elif args.method is None:
        raise OnnxfiError("give --method M[,M2] (or --recipe RECIPE.json from onnxfi advise)")
    else:
        methods = parse_methods(args.method)
    _check_options(args, methods)
    options = HardenOptions(
        percentile=args.percentile, level=1 if args.level is None else args.level, search=args.search,
        guard_points=args.guard_points, batch_size=args.batch, provider=args.provider, threads=args.threads,
        seed=args.seed, layers=args.layers,
    )
    if args.out is None:
        if args.output is not None and args.output.endswith(".onnx"):
            raise OnnxfiError(f"--output {args.output} names the scored model output, not the hardened file: "
                              "use -o for the hardened file")
        raise OnnxfiError("-o OUT.onnx is required: where to write the hardened model")
    out = Path(args.out)
    if out.suffix != ".onnx":
        raise OnnxfiError(f"-o {out}: the hardened model must be a .onnx file")
    loaded, _ = load_from_args(args)
    names = [o.name for o in loaded.outputs()]
    if args.output is not None and args.output not in names:
        shapes = describe_shapes((o.name, o.shape) for o in loaded.outputs())
        hint = "; use -o for the hardened file" if args.output.endswith(".onnx") else "; choose one with --output NAME"
        raise OnnxfiError(f"--output {args.output!r} is not a model output (outputs: {shapes}){hint}")
    warnings = list(loaded.warnings)
    calib = _calibration(args, loaded, methods, warnings)
    evaluation = load_data(args.eval, loaded.inputs(), allow_cast=args.allow_cast) if args.eval else calib
    print_data_warnings(dict.fromkeys([*calib.warnings, *evaluation.warnings]))
    # the scored output, chosen on the original's clean run before anything is hardened or written
    reference = run_outputs(loaded.model, evaluation, args.batch, provider=args.provider, threads=args.threads)
    choice = choose_output(reference, evaluation.labels, args.output, task_from_args(args))
    options = replace(options, output=choice.name, task=choice.task)
    if recipe is not None:
        from onnxfi.advise import apply_recipe

        result = apply_recipe(loaded.model, recipe, calib, options)
    else:
        result = harden(loaded.model, methods, calib, options)
    written = save_model(result.model, out, external_data=args.external_data or loaded.has_external_data)
    load_model(out)  # the written file must pass the checker and load again
    effect = measure_hardening(
        loaded.model, result.model, evaluation, repeat=args.repeat, batch_size=args.batch,
        provider=args.provider, threads=args.threads, choice=choice,
    )
    if effect.warning:
        warnings.append(effect.warning)
    report: dict[str, Any] = {
        "model": str(loaded.path),
        "output": str(out),
        "files": [str(f) for f in written],
        "methods": methods,
        "output_choice": choice.to_dict(),
        "calibration": {"data": calib.source, "samples": calib.size},
        "warnings": warnings,
        **result.to_dict(),
        "comparison": effect.to_dict(),
    }
    for w in warnings:
        stderr.print(f"[yellow]warning:[/yellow] {escape(w)}")
    _print(loaded, out, methods, calib, result, effect, args.provider)
    write_json(args.json, {"schema": SCHEMAS["harden"], **report})
    return 0


def _print(
    loaded: LoadedModel, out: Path, methods: list[str], calib: Dataset, result: HardenResult,
    effect: HardeningEffect, provider: str,
) -> None:
    from onnxfi.harden import DATA_METHODS

    role = "calibration" if any(m in DATA_METHODS for m in methods) else "data"
    stdout.print(f"[bold]{escape(str(loaded.path))}[/bold] -> [bold]{escape(str(out))}[/bold]: "
                 f"{', '.join(methods)} ({role}: {calib.size} samples from {escape(calib.source)})")
    for report in result.reports:
        _print_pass(report)
    c = effect
    if c.choice is not None:
        stdout.print(escape(f"\nscored output: {c.choice.name} ({c.choice.layout}): {c.choice.reason}"))
    if c.before is not None and c.after is not None:
        label = _METRIC_LABELS.get(c.metric, "top-1 agreement with the original")
        stdout.print(escape(f"{label}: {c.before:.4f} -> {c.after:.4f} ({c.after - c.before:+.4f}) "
                            f"on {c.samples} samples of {c.data} (output {c.output})"))
    stdout.print(f"max |output difference| {c.max_abs_diff:.6g}")
    stdout.print(f"latency: {c.latency_before_ms:.3f} ms -> {c.latency_after_ms:.3f} ms median "
                 f"({c.overhead * 100:+.1f}%), batch {c.batch}, {c.repeat} runs each on {provider}")


def _print_pass(report: PassReport) -> None:
    stdout.print(f"\n[bold]{report.method}[/bold]: {len(report.changes)} changed, {len(report.skips)} skipped")
    d = report.details
    if report.method == "protect":
        stdout.print(f"  level {d['level']}: {d['rewritten']} weights rewritten, worst relative change "
                     f"{d['worst_relative_change']:.3g} (bound {d['bound']:.3g})")
    if report.method == "clipact" and isinstance(d.get("search"), dict):
        s = d["search"]
        stdout.print(f"  threshold search ({s['metric']}): AUC {s['auc_initial']:.4f} at the profiled max -> "
                     f"{s['auc_final']:.4f}")
    if report.changes:
        t = Table(show_edge=False, header_style="bold")
        for col in ("changed", "value", "what"):
            t.add_column(col)
        for ch in report.changes[:_SHOW]:
            t.add_row(escape(ch.node), escape(ch.value), escape(ch.detail))
        stdout.print(t)
        if len(report.changes) > _SHOW:
            stdout.print(f"  ... {len(report.changes) - _SHOW} more (--json lists all)")
    if report.skips:
        by_reason: dict[str, list[str]] = {}
        for sk in report.skips:
            by_reason.setdefault(sk.reason, []).append(sk.node)
        t = Table(show_edge=False, header_style="bold")
        t.add_column("skipped")
        t.add_column("reason")
        for reason, nodes in list(by_reason.items())[:_SHOW]:
            shown = ", ".join(nodes[:3]) + (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")
            t.add_row(escape(shown), escape(reason))
        stdout.print(t)
        if len(by_reason) > _SHOW:
            stdout.print(f"  ... {len(by_reason) - _SHOW} more reasons (--json lists all)")
