"""``onnxfi zoo``: list the model zoo, print a model's path, re-measure a model's clean metric."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.table import Table

from onnxfi.commands._json import SCHEMAS, add_json_arg, json_command, write_json

if TYPE_CHECKING:  # the zoo module loads ONNX: it loads when the command runs, not with the parser (--help)
    from onnxfi.zoo import ZooEntry

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``zoo`` subcommand (with ``list``, ``path NAME``, ``eval NAME``) to ``subparsers``."""
    parser = subparsers.add_parser(
        "zoo",
        help="list the bundled model zoo, print a model's path, evaluate a model",
        description=(
            "The model zoo: small ONNX models with eval subsets. A zoo name can be given wherever "
            "a model path is expected."
        ),
    )
    actions = parser.add_subparsers(dest="zoo_action", metavar="ACTION")
    p_list = actions.add_parser("list", help="table of the zoo models and their recorded metrics")
    add_json_arg(p_list, "the registry entries")
    p_path = actions.add_parser("path", help="print the .onnx path of a zoo model")
    p_path.add_argument("name", metavar="NAME")
    p_path.add_argument("--data", action="store_true", help="print the eval subset (.npz) path instead")
    p_eval = actions.add_parser("eval", help="measure a zoo model's clean metric with onnxruntime")
    p_eval.add_argument("name", metavar="NAME")
    add_json_arg(p_eval, "the measured and recorded metrics")
    p_eval.add_argument(
        "--provider",
        action="append",
        dest="providers",
        metavar="EP",
        help="onnxruntime execution provider (repeatable; default CPUExecutionProvider)",
    )
    parser.set_defaults(func=run, zoo_action=None)


def _entry_json(entry: ZooEntry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "file": str(entry.file),
        "task": entry.task,
        "inputs": [{"name": i.name, "shape": list(i.shape or ()), "dtype": i.dtype_name} for i in entry.inputs],
        "outputs": list(entry.outputs),
        "eval_data": str(entry.eval_data),
        "eval_samples": entry.eval_samples,
        "metric": entry.metric,
        "value": entry.value,
        "framework": entry.framework,
        "converter": entry.converter,
        "data_source": dict(entry.data_source),
    }


_SHORT = {"pytorch": "torch", "tensorflow": "tf/keras", "paddlepaddle": "paddle", "scikit-learn": "sklearn"}


def _list(args: argparse.Namespace, console: Console) -> int:
    from onnxfi import zoo

    items = zoo.entries()
    table = Table(title=f"onnxfi model zoo ({zoo.zoo_dir()})", box=box.SIMPLE_HEAD)
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("input", no_wrap=True)
    table.add_column("recorded metric", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("framework")
    for e in items:
        if e.inputs:
            first = e.inputs[0]
            shape = "x".join(str(d) for d in first.shape or ())
            spec = shape if first.dtype_name == "float32" else f"{shape} {first.dtype_name}"
        else:
            spec = "?"
        size = f"{e.file.stat().st_size / 1024:.0f} KiB" if e.file.is_file() else "missing"
        framework = e.framework.split(" ")[0]
        table.add_row(e.name, spec, f"{e.metric} {e.value:.4f}", size, _SHORT.get(framework, framework))
    console.print(table)
    write_json(getattr(args, "json", None), {"schema": SCHEMAS["zoo list"], "zoo": str(zoo.zoo_dir()),
                           "models": [_entry_json(e) for e in items]})
    return 0


def _eval(args: argparse.Namespace, console: Console) -> int:
    from onnxfi import zoo

    result = zoo.evaluate(args.name, providers=args.providers)
    table = Table(title=f"{result['name']} ({result['task']}, {result['samples']} samples)")
    table.add_column("metric")
    table.add_column("measured", justify="right")
    table.add_column("recorded", justify="right")
    table.add_column("difference", justify="right")
    table.add_row(
        result["metric"],
        f"{result['value']:.4f}",
        f"{result['recorded']:.4f}",
        f"{0.0 if abs(result['difference']) < 5e-5 else result['difference']:+.4f}",
    )
    for key, value in result["metrics"].items():
        if key != result["metric"]:
            table.add_row(key, f"{value:.4f}", "", "")
    console.print(table)
    console.print(f"providers: {', '.join(result['providers'])}")
    write_json(args.json, {"schema": SCHEMAS["zoo eval"], **result})
    return 0


@json_command
def run(args: argparse.Namespace) -> int:
    """Run ``onnxfi zoo ...``; returns the exit code (errors raise :class:`onnxfi.errors.OnnxfiError`)."""
    console = Console()
    action = getattr(args, "zoo_action", None)
    if action == "list" or action is None:
        return _list(args, console)
    if action == "path":
        from onnxfi import zoo

        entry = zoo.get(args.name)
        sys.stdout.write(f"{entry.eval_data if args.data else entry.file}\n")
        return 0
    if action == "eval":
        return _eval(args, console)
    raise AssertionError(f"unhandled zoo action {action!r}")
