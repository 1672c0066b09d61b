"""``onnxfi worst-case``: the fewest weight bit flips (greedy, gradient-free) that bring the model's metric below a
target, written as a plan that ``onnxfi inject --from-plan`` replays (:mod:`onnxfi.worstcase`)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from onnxfi.commands._common import (
    add_allow_cast_arg,
    add_model_args,
    add_task_args,
    fmt_int,
    input_shapes_from_args,
    load_from_args,
    print_data_warnings,
    resolve_model_arg,
    stdout,
    task_from_args,
)
from onnxfi.commands._json import add_json_arg, json_command, write_json
from onnxfi.commands._text import KEEP, fit_names
from onnxfi.errors import OnnxfiError

__all__ = ["register", "run"]

_EXAMPLES = """examples:
  onnxfi worst-case digits_cnn --target-accuracy 0.2            zoo model and its eval data
  onnxfi worst-case model.onnx --data eval.npz --target-accuracy 0.5 --sites 'conv' --bits 30,29
  onnxfi worst-case model.onnx --candidates 64 --max-flips 5 --json wc.json -o wc.plan.json
  onnxfi inject model.onnx --from-plan wc.plan.json --experiment 2 -o worst.onnx   the first 3 flips
  onnxfi run worst.onnx --data eval.npz                          the accuracy the search reported

how: each step runs the model once per candidate flip (on top of the flips chosen so far) and keeps the one
that lowers the metric most; candidates: half the budget the flips with the largest value change |new - old|
(round-robin over the weights), half a seeded random draw over every selected (weight, element, bit).
Default bits: sign and exponent of floats (float32: 31, 30-23), the high byte of integers. Bit 0 = LSB.
The metric: accuracy against the labels; without labels, agreement with the fault-free decisions.
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "worst-case", help="find the fewest weight bit flips that bring the metric below a target",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A greedy, gradient-free search for the fewest weight bit flips that bring the task metric "
        "(accuracy against labels, else agreement with the fault-free top-1) below --target-accuracy. Each step "
        "evaluates candidate single flips on top of those chosen so far, each by running the whole faulty "
        "model, and keeps the worst. The flips are written as a plan that `onnxfi inject --from-plan` replays.",
    )
    add_model_args(p)
    p.add_argument("--data", help=".npz eval data (default: the zoo model's eval set, else seeded random inputs)")
    add_allow_cast_arg(p)
    p.add_argument("--samples", type=int, default=16, help="random inputs when no data (default 16)")
    p.add_argument("--target-accuracy", type=float, required=True, metavar="T",
                   help="stop once the metric is below T (accuracy, or agreement with the fault-free top-1)")
    p.add_argument("--sites", metavar="REGEX", help="weights whose name matches (default: every weight)")
    p.add_argument("--bits", help="bits to flip, e.g. 30,29 or 23-30 or all (default: sign and exponent of "
                   "floats, the high byte of integers); bits beyond a weight's width are left out")
    p.add_argument("--candidates", type=int, default=256, metavar="K",
                   help="candidate flips evaluated per step (default 256): half by value change, half random")
    p.add_argument("--max-flips", type=int, default=20, metavar="M", help="stop after M flips (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random candidates and of random data")
    p.add_argument("--batch", type=int, default=64, help="samples per ORT run (default 64, as `onnxfi run`)")
    p.add_argument("--threads", type=int, help="ORT intra-op threads")
    p.add_argument("--provider", default="cpu", help="execution provider (default cpu)")
    p.add_argument("--output", metavar="NAME", help="model output that carries the decision (default: chosen "
                   "from the evidence, as `onnxfi run`)")
    add_task_args(p)
    p.add_argument("-o", "--plan", metavar="PLAN.json",
                   help="where to write the flips as a plan (default: ./<model>.worst-case.plan.json)")
    add_json_arg(p, "the flips, the metric after each and the runs used")
    p.set_defaults(func=run)


def _bits_arg(text: str | None) -> list[int] | None:
    from onnxfi.plan import parse_bits

    if text is not None and text.strip().lower() == "all":
        return list(range(64))  # cut to each weight's width
    return parse_bits(text)


def _value(v: Any, dtype: str) -> str:
    if isinstance(v, str):
        return v
    return str(int(v)) if "int" in dtype else f"{float(v):.6g}"


def print_result(doc: dict[str, Any]) -> None:
    """A search's JSON document as a table and summary lines."""
    metric = doc["metric"].replace("_", " ")

    def table(names: list[str]) -> Table:
        t = Table(title=f"Worst-case flips in order (bit 0 = LSB; float32: 31 sign, 30-23 exponent); {metric} with "
                  "this and every earlier flip; p(ref): mean softmax probability of the reference class (label, else "
                  "fault-free top-1), the tie-break", title_justify="left", show_edge=False, header_style="bold")
        for col in ("#", "site", "element", "bit", "old -> new", metric, "p(ref)", "from"):
            t.add_column(col, **KEEP)
        for i, (name, f) in enumerate(zip(names, doc["flips"]), 1):
            where = str(f["index"]) if len(f["coords"]) <= 1 else f"{f['index']} [{','.join(map(str, f['coords']))}]"
            p = f["ref_probability"]
            t.add_row(str(i), escape(name), where, str(f["bit"]),
                      f"{_value(f['old_value'], f['dtype'])} -> {_value(f['new_value'], f['dtype'])}",
                      f"{f['metric']:.4f}", "-" if p is None or math.isnan(p) else f"{p:.4f}",
                      f"{f['source']} ({f['candidates']} cand.)")
        return t

    if doc["flips"]:
        stdout.print(fit_names(table, [f["site"] for f in doc["flips"]], stdout))
    final, target = doc["final"], doc["target"]
    why = {"target": f"below {target:g}", "clean": f"the clean model is already below {target:g}",
           "max-flips": f"NOT below {target:g}: --max-flips reached",
           "stalled": f"NOT below {target:g}: no candidate lowered it (or, at an equal {metric}, p(ref)) further"
           }[doc["stop"]]
    n = doc["n_flips"]
    stdout.print(f"{'flips needed' if doc['reached'] else 'flips chosen'}: {n} ({metric} {doc['clean']:.4f} -> "
                 f"{final:.4f}, {why})", style=None if doc["reached"] else "yellow")
    failed = f"; {doc['failed_runs']} failed in ONNX Runtime" if doc["failed_runs"] else ""
    stdout.print(f"model runs: {fmt_int(doc['runs'])} over the eval data (1 clean + {fmt_int(doc['runs'] - 1)} "
                 f"candidate flips{failed}); {doc['seconds']:.1f} s")


@json_command
def run(args: argparse.Namespace) -> int:
    from onnxfi.data import make_dataset
    from onnxfi.worstcase import WORST_CASE_SCHEMA, default_bits, find_worst_case, worst_case_plan
    from onnxfi.zoo import default_data

    target = args.target_accuracy
    if not (math.isfinite(target) and 0.0 < target <= 1.0):
        raise OnnxfiError(f"--target-accuracy must lie in (0, 1], got {target}")
    if args.candidates < 1 or args.batch < 1 or args.samples < 1:
        raise OnnxfiError("--candidates, --batch and --samples must be at least 1")
    if args.max_flips < 0:
        raise OnnxfiError("--max-flips must be 0 or more")
    bits = _bits_arg(args.bits)
    task = task_from_args(args)
    model_path = resolve_model_arg(args.model)
    plan_path = Path(args.plan) if args.plan else Path(f"{Path(model_path).stem}.worst-case.plan.json")
    if plan_path.suffix.lower() != ".json":
        raise OnnxfiError(f"-o {plan_path}: the plan is a JSON file; name it .json")
    loaded, index = load_from_args(args)
    chosen = [s for s in index.select("weights", args.sites) if s.elements]
    if bits is not None:
        chosen = [s for s in chosen if any(0 <= b < s.bits for b in bits)]
    if not chosen:
        raise OnnxfiError("no weight sites match --sites/--bits" + index.pattern_hint(args.sites))
    data_path = args.data or default_data(args.model)
    data = make_dataset(loaded.inputs(), data_path, None, seed=args.seed, samples=args.samples,
                        overrides=input_shapes_from_args(args), allow_cast=args.allow_cast)
    print_data_warnings(data.warnings)
    batch = data.batch_for(loaded.inputs(), args.batch)
    space = sum(int(s.elements or 0) * len([b for b in (bits if bits is not None else default_bits(s))
                                            if 0 <= b < s.bits]) for s in chosen)
    bit_text = f"bits {args.bits}" if bits is not None else "sign and exponent bits (integers: high byte)"
    stdout.print(f"[bold]{escape(Path(model_path).name)}[/bold]: {len(chosen)} weight(s), {bit_text}: "
                 f"{fmt_int(space)} single flips; {args.candidates} candidates per step; data "
                 f"{escape(data.source)} ({fmt_int(data.size)} samples)")
    with Progress(TextColumn("flip {task.fields[step]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("best {task.fields[best]}"), TimeElapsedColumn(), console=stdout) as prog:
        bar = prog.add_task("search", total=None, step=1, best="-")

        def progress(step: int, done: int, total: int, best: float) -> None:
            prog.update(bar, completed=done, total=total, step=step, best="-" if math.isnan(best) else f"{best:.4f}")

        result, choice = find_worst_case(
            loaded, index, chosen, data, target, candidates=args.candidates, max_flips=args.max_flips, bits=bits,
            seed=args.seed, batch=batch, output=args.output, task=task, provider=args.provider, threads=args.threads,
            progress=progress)
    plan = worst_case_plan(result, model_path, chosen, bits)
    plan.save(plan_path)
    doc: dict[str, Any] = {"schema": WORST_CASE_SCHEMA, "model": model_path, "data": data.source,
                           "sites_regex": args.sites, "output_choice": choice.to_dict(), **result.to_dict(),
                           "plan": str(plan_path), "experiment": len(result.steps) - 1 if result.steps else None}
    stdout.print(escape(f"scored output: {choice.name} ({choice.layout}): {choice.reason}"))
    print_result(doc)
    if result.steps:
        stdout.print(f"wrote {escape(str(plan_path))}: replay every flip with\n  onnxfi inject {escape(args.model)} "
                     f"--from-plan {escape(str(plan_path))} --experiment {doc['experiment']} -o worst.onnx\n"
                     f"(experiment k holds the first k + 1 flips)")
    else:
        stdout.print(f"wrote {escape(str(plan_path))} (no flips: nothing to replay)")
    write_json(args.json, doc)
    return 0
