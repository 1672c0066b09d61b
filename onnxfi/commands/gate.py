"""``onnxfi gate``: run a configured fault campaign and pass or fail it against thresholds and a baseline (CI)."""

from __future__ import annotations

import argparse
import sys
import traceback
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from onnxfi.campaign import prestart_workers
from onnxfi.commands._common import (
    add_allow_cast_arg,
    add_data_loader_arg,
    data_loader_from_args,
    resolve_model_arg,
    stderr,
    stdout,
)
from onnxfi.commands._json import add_json_arg, json_command, write_json
from onnxfi.errors import OnnxfiError

if TYPE_CHECKING:  # ONNX, ONNX Runtime and the engine load when the command runs, not with the parser (--help)
    from onnxfi.gate import GateResult

__all__ = ["register", "run"]

_EXAMPLES = """examples:
  onnxfi gate --config examples/gate/onnxfi.toml          the model named in the config
  onnxfi gate candidate.onnx --config onnxfi.toml --junit gate.xml --json gate.json
  onnxfi gate model.onnx                                  config from ./onnxfi.toml or pyproject.toml
  onnxfi gate model.onnx --baseline main-gate.json        fail on a regression against a previous --json

config (onnxfi.toml [gate], or pyproject.toml [tool.onnxfi.gate]; paths relative to that file):
  [gate]             model, data (.npz) or data_loader ("feeds.py:load_data"), db (results store, reused when
                     the plan is unchanged), provider, output (the model output scored; default: chosen from
                     labels and shapes), task
  [gate.plan]        target, bits = "23-30", faults = 300 (or margin/confidence), seed, sites, ops, fault, critical,
                     design = "proportional" (default: every fault equally likely) | "per-stratum" | "adaptive"
  [gate.thresholds]  sdc1 / sdc5 / critical / due / crash = max per-fault rate; sdc1_per_inference = max fraction
                     of inferences a fault changes; clean_min; clean_drop (both need labelled data);
                     confidence (0.95)
  [gate.layers]      "REGEX" = { sdc1 = 0.8 }   per-layer limits for the sites whose name fully matches
  [gate.baseline]    file = "baseline.json", sdc1 = 0.05 (allowed increase), clean_drop = 0.005

A rate passes when the one-sided upper confidence bound of the campaign's population estimate (the estimator
of the plan's design, over complete rounds) is at most the limit (or the baseline rate + delta).
exit status: 0 every check passed, 1 a check failed, 2 error (bad config, model, data).
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "gate", help="CI gate: fail when fault rates exceed thresholds or regress from a baseline",
        description="Run the fault campaign a gate config describes (deterministic with its seed; finished "
        "experiments in the store are reused), check the outcome rates' upper confidence bounds against the "
        "thresholds and a baseline, and exit 0 (pass), 1 (fail) or 2 (error).",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", nargs="?",
                   help="path to a .onnx file, or a model_zoo name (default: the config's model)")
    p.add_argument("--config", metavar="FILE", help="onnxfi.toml or pyproject.toml (default: ./onnxfi.toml, "
                   "else ./pyproject.toml)")
    p.add_argument("--data", help=".npz eval data (default: the config's, else the zoo model's eval set, else "
                   "seeded random inputs)")
    add_data_loader_arg(p, " (default: the config's data_loader)")
    add_allow_cast_arg(p)
    p.add_argument("--db", help="results store; {model} is replaced by the model's file stem (default: the config's "
                   "db, else .onnxfi/gate-{model}.db)")
    p.add_argument("--fresh", action="store_true", help="ignore stored results and rerun every experiment")
    p.add_argument("--baseline", metavar="FILE", help="previous gate/analyze --json report (replaces the config's "
                   "[gate.baseline] file; the deltas still come from the config)")
    add_json_arg(p, "the verdict, checks and summary (a baseline later)")
    p.add_argument("--junit", metavar="FILE", help="write JUnit XML: one testcase per check")
    p.add_argument("--workers", type=int, help="worker processes (default: the config's, else one per core with one ORT thread each)")
    p.set_defaults(func=run, start_early=start_early)


def start_early(args: argparse.Namespace) -> None:
    """Before this process loads ONNX Runtime (:func:`onnxfi.cli.main`): start the process the campaign's
    local workers fork from, so that its imports overlap this process's own (not when :func:`run` is
    about to refuse ``--workers``)."""
    if args.workers is None or args.workers >= 1:
        prestart_workers("local")


def _fmt(x: float | None, pct: bool) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.2f}%" if pct else f"{x:.4f}"


def print_result(res: GateResult) -> None:
    conf = int(round(100 * res.config.confidence))
    t = Table(show_edge=False, header_style="bold", title_justify="left",
              title=f"Checks ({conf}% one-sided upper bounds)")
    for col in ("check", "measured", "bound", "limit", "result"):
        t.add_column(col)
    for c in res.checks:
        pct = c.kind != "clean"
        measured = _fmt(c.measured, pct) + (f" ({c.k}/{c.n} sampled)" if c.n is not None else "")
        t.add_row(escape(c.name), measured, _fmt(c.bound, pct), _fmt(c.limit, pct),
                  "[green]pass[/green]" if c.passed else "[bold red]FAIL[/bold red]")
    stdout.print(t)
    clean = res.clean
    if clean:
        stdout.print(f"clean {clean.get('metric')}: {float(clean.get('value', float('nan'))):.4f} on "
                     f"{clean.get('samples')} samples ({clean.get('data') or 'random inputs'})")
    for w in res.warnings:
        stdout.print(f"[yellow]warning: {escape(w)}[/yellow]")
    n = len(res.checks)
    if res.passed:
        stdout.print(f"[bold green]PASS[/bold green]: {n} of {n} checks passed ({res.elapsed_s:.1f} s)")
    else:
        fails = res.failures
        stdout.print(f"[bold red]FAIL[/bold red]: {len(fails)} of {n} checks failed ({res.elapsed_s:.1f} s)")
        for c in fails:
            stdout.print(escape(f"  {c.name}: {c.message}"))
        if res.interrupted:
            stdout.print("  interrupted before every experiment ran")


@json_command
def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (OnnxfiError, KeyboardInterrupt):
        raise
    except Exception:  # a bug must not read as a failed gate (exit 1): report it as an error
        traceback.print_exc(file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from onnxfi.gate import find_config, load_config, write_junit
    from onnxfi.gate_campaign import run_gate
    from onnxfi.zoo import default_data

    cfg_path = find_config(args.config)
    cfg = load_config(cfg_path)
    if args.workers is not None:
        if args.workers < 1:
            raise OnnxfiError("--workers must be at least 1")
        cfg = replace(cfg, workers=args.workers)
    if args.baseline:
        if cfg.baseline is None:
            raise OnnxfiError(f"--baseline: {cfg_path} has no [gate.baseline] table with the allowed deltas "
                              "(e.g. sdc1 = 0.05)")
        cfg = replace(cfg, baseline=replace(cfg.baseline, file=Path(args.baseline)))
    model_arg = args.model or cfg.model
    if not model_arg:
        raise OnnxfiError(f"no model: give MODEL or set model in {cfg_path}")
    model_path = resolve_model_arg(model_arg)
    if not Path(model_path).is_file():
        raise OnnxfiError(f"model not found: {model_arg}")
    loader = data_loader_from_args(args) or (None if args.data else cfg.data_loader)
    data = args.data or (None if loader else cfg.data or default_data(model_arg))
    db = (args.db or cfg.db or str(Path(".onnxfi") / "gate-{model}.db")).replace("{model}", Path(model_path).stem)
    spec = cfg.plan
    size = (f"{spec.faults} faults" if spec.faults else f"{spec.per_stratum} per stratum" if spec.per_stratum
            else f"margin {spec.margin or 0.05} at {spec.confidence}")
    stdout.print(f"[bold]gate[/bold] {Path(model_path).name} ({cfg_path}): {spec.target}, {spec.design} design, {size}, "
                 f"bits {spec.bits or 'all'}, seed {spec.seed}, data {data or loader or 'random inputs'}")
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=stdout, transient=True) as prog:
        task = prog.add_task("faults", total=None)

        def progress(done: int, total: int, live: dict[str, Any]) -> None:
            prog.update(task, completed=done, total=total)

        res = run_gate(model_path, cfg, db, fresh=args.fresh, progress=progress, data_path=data, data_loader=loader,
                       allow_cast=args.allow_cast)
    if not data and not loader:
        res.warnings.append("no data: seeded random inputs, so the clean metric is agreement with the model itself")
    stdout.print(f"{res.summary['experiments']} experiments: {res.executed} run, {res.reused} reused from {res.db}")
    print_result(res)
    write_json(args.json, res.to_dict())
    if args.junit:
        write_junit(res, args.junit)
        stdout.print(f"wrote {args.junit}")
    if res.interrupted:
        stderr.print("gate interrupted; rerun to finish (stored experiments are reused)")
        return 130
    return 0 if res.passed else 1
