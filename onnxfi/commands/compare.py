"""``onnxfi compare``: one model on several runtimes: outputs vs a reference, latency, fault outcomes side by side."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
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
    resolve_model_arg,
    stderr,
    stdout,
    task_from_args,
)
from onnxfi.commands._json import add_json_arg, json_command, write_json
from onnxfi.commands._text import KEEP, NUMBER, fit_names, table_width
from onnxfi.errors import OnnxfiError

if TYPE_CHECKING:  # ONNX, ONNX Runtime and numpy load when the command runs, not with the parser (--help)
    from onnxfi.compare import Backend, CompareResult, RuntimeUnavailable

__all__ = ["register", "run", "print_result"]

_EXAMPLES = """examples:
  onnxfi compare digits_cnn                                     ONNX Runtime CPU vs the ONNX reference evaluator
  onnxfi compare model.onnx --providers cpu,openvino,reference --data eval.npz
  onnxfi compare model.onnx --providers cuda,cpu --atol 1e-3 --atol logits:1e-2 --rtol 1e-3
  onnxfi compare model.onnx --providers all --faults 0 --json cmp.json      every runtime here, no campaign

runtimes: cpu, cuda, tensorrt, dml, coreml, rocm, ... (ONNX Runtime execution providers; ort-openvino for ORT's
OpenVINO EP), reference (onnx.reference, pure numpy), openvino (OpenVINO's own runtime: pip install
onnxfi[openvino]), all (every one available here). An unavailable runtime is listed with the reason.

outputs: an element mismatches when |out - ref| > atol AND |out - ref| / |ref| > rtol (Polygraphy's rule);
give one value or OUTPUT:VALUE per output. latency: median and p90 of --repeat runs on --latency-batch samples.
faults: the same seeded weight bit flips (--faults, default 50) baked into a copy of the model for every runtime,
each classified against that runtime's own fault-free outputs, on the first --fault-samples samples. The
reference evaluator runs each fault in numpy, so this part is the slow one: keep --faults small.
exit status: 0 outputs agree within tolerance, 1 a mismatch, 2 error (an unavailable runtime included, unless
--skip-unavailable).
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "compare", help="compare runtimes: outputs vs a reference, latency, fault outcomes",
        description="Run one model on several runtimes (ONNX Runtime execution providers, the ONNX reference "
        "evaluator, OpenVINO): outputs against a reference with tolerances, latency, and the same small fault "
        "campaign on each, since fusion and precision can mask a fault on one runtime and not another.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    p.add_argument("--providers", default="cpu,reference", metavar="A,B,...",
                   help="runtimes to compare (default cpu,reference; 'all' = every available one)")
    p.add_argument("--reference", metavar="NAME", help="runtime the others are compared with (default: the first)")
    p.add_argument("--data", help=".npz inputs (default: the zoo model's eval set, else seeded random inputs)")
    add_data_loader_arg(p)
    add_allow_cast_arg(p)
    p.add_argument("--samples", type=int, default=16, help="random inputs when there is no data (default 16)")
    p.add_argument("--atol", action="append", metavar="[OUTPUT:]VALUE", help="absolute tolerance (default 1e-4)")
    p.add_argument("--rtol", action="append", metavar="[OUTPUT:]VALUE", help="relative tolerance (default 1e-4)")
    p.add_argument("--repeat", type=int, default=20, help="timed runs per runtime (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    p.add_argument("--latency-batch", type=int, default=1, help="samples per timed run (default 1)")
    p.add_argument("--batch", type=int, default=256, help="samples per run for outputs and faults (default 256)")
    p.add_argument("--faults", type=int, default=50, help="weight bit flips per runtime (default 50; 0: none)")
    p.add_argument("--bits", help="bits to flip, e.g. 23-30 (default: all bits)")
    p.add_argument("--sites", metavar="REGEX", help="only weights whose name matches")
    p.add_argument("--fault-samples", type=int, default=128,
                   help="samples each fault runs on (default 128: the reference evaluator is slow)")
    p.add_argument("--critical", type=float, default=0.01, help="metric drop that makes a fault critical")
    p.add_argument("--output", metavar="NAME",
                   help="model output the faults are scored on (default: chosen by onnxfi.scoring: the output that "
                   "agrees best with the labels, else by shape; ambiguity is an error asking for --output)")
    add_task_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="intra-op threads for every runtime")
    p.add_argument("--skip-unavailable", action="store_true",
                   help="name an unavailable runtime but do not make it an error")
    add_json_arg(p, "the comparison")
    p.set_defaults(func=run)


def _backends(spec: str, threads: int | None) -> list[Backend | RuntimeUnavailable]:
    from onnxfi.compare import RuntimeUnavailable, available_backends, get_backend

    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise OnnxfiError("--providers: give at least one runtime")
    if any(n.lower() == "all" for n in names):
        names = [n for n in names if n.lower() != "all"] + available_backends()
    seen: list[str] = []
    for n in names:
        if n.lower() not in seen:
            seen.append(n.lower())
    out: list[Backend | RuntimeUnavailable] = []
    for n in seen:
        try:
            out.append(get_backend(n, threads))
        except RuntimeUnavailable as e:
            out.append(e)
    return out


def _bits(bits: list[int] | None) -> str:
    if not bits:
        return "all"
    runs: list[list[int]] = []
    for b in sorted(bits):
        if runs and b == runs[-1][-1] + 1:
            runs[-1].append(b)
        else:
            runs.append([b])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def _fmt_err(x: float) -> str:
    return f"{x:.3g}"


def print_result(res: CompareResult) -> None:
    from onnxfi.outcomes import OUTCOME_LABELS, OUTCOMES

    # rows: runtime, output (a model output's name, or a note), the four numbers, median ms, p90 ms, result
    rows: list[tuple[str, str | None, list[str], str, str, str]] = []  # output None: "-" (no output compared)
    for r in res.runtimes:
        lat = r.latency
        med = f"{lat.median_ms:.3f}" if lat else "-"
        p90 = f"{lat.p90_ms:.3f}" if lat else "-"
        if not r.available:
            rows.append((r.name, None, ["-"] * 4, "-", "-", f"[yellow]unavailable: {escape(r.reason)}[/yellow]"))
            continue
        if r.error:
            rows.append((r.name, None, ["-"] * 4, med, p90, f"[bold red]ERROR: {escape(r.error)}[/bold red]"))
            continue
        if r.is_reference:
            rows.append((r.name, "", ["-"] * 4, med, p90, ""))  # "": the reference itself
            continue
        for i, d in enumerate(r.outputs):
            res_txt = "[green]match[/green]" if d.passed else f"[bold red]MISMATCH[/bold red]{' (' + escape(d.note) + ')' if d.note else ''}"
            top1 = f"{100 * d.top1_agreement:.2f}%" if d.top1_agreement is not None else "-"
            rows.append((r.name if i == 0 else "", d.name, [_fmt_err(d.max_abs), _fmt_err(d.max_rel),
                         f"{d.mismatches}/{d.elements}", top1], med if i == 0 else "", p90 if i == 0 else "", res_txt))

    def make(names: list[str], latency: bool = True) -> Table:
        t = Table(title=f"Outputs vs {res.reference} ({res.samples} samples; atol {res.atol}, rtol {res.rtol})",
                  title_justify="left", show_edge=False, header_style="bold", collapse_padding=not latency)
        t.add_column("runtime", **KEEP)
        t.add_column("output", **KEEP)
        for col in ("max abs", "max rel", "mismatched", "top-1 agree", *(("median ms", "p90 ms") if latency else ())):
            t.add_column(col, **NUMBER)
        t.add_column("result", **KEEP)
        named = iter(names)
        for runtime, output, numbers, med, p90, result in rows:
            out = "-" if output is None else "(reference)" if not output else escape(next(named))
            t.add_row(escape(runtime), out, *numbers, *((med, p90) if latency else ()), result)
        return t

    names = [o for _, o, *_ in rows if o]
    t = fit_names(make, names, stdout)
    if table_width(t, stdout) > stdout.width:  # a narrow terminal: latency in a table of its own
        stdout.print(fit_names(lambda n: make(n, latency=False), names, stdout))
        lt = Table(title="Latency", title_justify="left", show_edge=False, header_style="bold")
        for col in ("runtime", "median ms", "p90 ms"):
            lt.add_column(col, **NUMBER)
        for runtime, _, _, med, p90, _ in rows:
            if runtime:
                lt.add_row(escape(runtime), med, p90)
        stdout.print(lt)
    else:
        stdout.print(t)
    lat_batch = next((r.latency.batch for r in res.runtimes if r.latency), None)
    if lat_batch is not None:
        stdout.print(f"latency: batch {lat_batch}, runs per runtime {next(r.latency.runs for r in res.runtimes if r.latency)}")
    ran = [r for r in res.runtimes if r.outcomes]
    if ran:
        plan = res.plan
        ft = Table(title=f"Same {plan.get('requested')} weight bit flips on each runtime (bits {_bits(plan.get('bits'))}, "
                   f"seed {plan.get('seed')}, first {res.fault_samples} samples; every weight fault equally likely, so k/n "
                   "is the model's rate; 95% Wilson intervals)",
                   title_justify="left", show_edge=False, header_style="bold")
        ft.add_column("outcome", **KEEP)
        for r in ran:
            ft.add_column(escape(r.name), **KEEP)
        for key in OUTCOMES:
            ft.add_row(key, *[str(r.outcomes.get(key, 0)) for r in ran])
        for key in ("sdc1", "critical", "due"):
            label = f"{OUTCOME_LABELS[key]} rate"
            cells = []
            for r in ran:
                x = r.rates[key]
                cells.append(f"{100 * x['rate']:.1f}% [{100 * x['lo']:.1f}, {100 * x['hi']:.1f}]")
            ft.add_row(label, *cells)
        stdout.print(ft)
        n = len(res.disagreements)
        stdout.print(f"faults classified differently across runtimes: {n} of {plan.get('requested')}")
        for dis in res.disagreements[:5]:
            outs = ", ".join(f"{k} {v}" for k, v in dis["outcomes"].items())
            stdout.print(escape(f"  #{dis['id']} {dis['site']}[{dis['index']}] bit {dis['bit']}: {outs}"))
    choice = res.output_choice
    if choice:
        stdout.print(escape(f"scored output: {choice['name']} ({choice['layout']}): {choice['reason']}"))
    verdict = [r for r in res.runtimes if r.passed is False]
    if verdict:
        stdout.print(f"[bold red]MISMATCH[/bold red]: {', '.join(r.name for r in verdict)} differ from {res.reference} "
                     "beyond tolerance")
    elif any(r.passed for r in res.runtimes):
        stdout.print(f"[bold green]MATCH[/bold green]: every runtime agrees with {res.reference} within tolerance")


@json_command
def run(args: argparse.Namespace) -> int:
    from onnxfi.compare import parse_tolerance, run_compare
    from onnxfi.data import make_dataset
    from onnxfi.plan import parse_bits
    from onnxfi.zoo import default_data

    for name in ("repeat", "latency_batch", "batch", "fault_samples"):
        if getattr(args, name) < 1:
            raise OnnxfiError(f"--{name.replace('_', '-')} must be at least 1")
    if args.faults < 0 or args.warmup < 0:
        raise OnnxfiError("--faults and --warmup must be >= 0")
    backends = _backends(args.providers, args.threads)
    if args.reference and args.reference.lower() not in [getattr(b, "name", "") for b in backends]:
        backends = _backends(args.reference, args.threads) + backends
    atol = parse_tolerance(args.atol, 1e-4, "--atol")
    rtol = parse_tolerance(args.rtol, 1e-4, "--rtol")
    model_path = str(resolve_model_arg(args.model))
    loaded, _ = load_from_args(args)
    specs = loaded.inputs()
    loader = data_loader_from_args(args)
    data_path = args.data or (None if loader else default_data(args.model))
    data = make_dataset(specs, data_path, loader, seed=args.seed, samples=args.samples,
                        overrides=input_shapes_from_args(args), allow_cast=args.allow_cast)
    print_data_warnings(data.warnings)
    batch = data.batch_for(specs, args.batch)  # a model with a fixed batch dimension takes that many per run
    names = ", ".join(b.name for b in backends)
    stdout.print(f"[bold]compare[/bold] {Path(model_path).name} on {names}; data {data.source} ({data.size} samples)")
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=stdout, transient=True) as prog:
        task = prog.add_task("loading", total=None)

        def progress(what: str, done: int, total: int) -> None:
            prog.update(task, description=what, completed=done, total=total)

        res = run_compare(
            loaded, model_path, backends, data, reference=args.reference.lower() if args.reference else None,
            atol=atol, rtol=rtol, repeat=args.repeat, warmup=args.warmup,
            latency_batch=min(args.latency_batch, batch), batch=batch, n_faults=args.faults,
            bits=parse_bits(args.bits), sites=args.sites, seed=args.seed, fault_samples=args.fault_samples,
            critical=args.critical, output=args.output, progress=progress, task=task_from_args(args),
        )
    print_result(res)
    if res.warning:
        stderr.print(f"[yellow]warning:[/yellow] {escape(res.warning)}")
    write_json(args.json, res.to_dict())
    missing = res.unavailable
    if missing and not args.skip_unavailable:
        raise OnnxfiError(f"runtime(s) not available: {', '.join(r.name for r in missing)} (reasons in the table; "
                          "--skip-unavailable to go on without them)")
    return 0 if res.passed else 1
