"""``onnxfi critical-bits``: the (element, bit) pairs of weights whose single flip causes an outcome, by a
checked search instead of flipping every bit (:mod:`onnxfi.critical`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from onnxfi.commands._common import (
    add_model_args,
    fmt_int,
    input_shapes_from_args,
    load_from_args,
    print_data_warnings,
    resolve_model_arg,
    stdout,
)
from onnxfi.commands._json import add_json_arg, json_command, write_json
from onnxfi.commands._text import KEEP, fit_names
from onnxfi.errors import OnnxfiError

if TYPE_CHECKING:  # ONNX, ONNX Runtime and numpy load when the command runs, not with the parser (--help)
    from onnxfi.critical import CriticalBits

__all__ = ["register", "run"]

_EXAMPLES = """examples:
  onnxfi critical-bits digits_cnn --sites 'classifier'              every element of the classifier's weights
  onnxfi critical-bits digits_cnn --sites 'features.3' --elements 50  50 elements per weight, with intervals
  onnxfi critical-bits model.onnx --data eval.npz --outcome due --db cb.db --json cb.json
  onnxfi critical-bits digits_cnn --sites 'features.1.bias' --check   also flip every bit: the agreement

how: per element the bits split by the direction their flip moves the value (away from / toward zero); in
each the outcome is assumed monotone in |new - old| and the boundary is searched (gallop, then bisection),
then checked by running flips on both sides of it. A flip that contradicts the boundary makes the element
run every bit (a fallback). The sign bit is always run. Integer/quantized weights: every bit of each element.
"""

# the harmful outcomes of each --outcome (onnxfi.critical.THRESHOLDS, spelled out so that building the parser
# loads no engine: tests/test_startup.py checks that they agree), in words
_MEANS = {"sdc1": "SDC-1 or worse (a changed decision, critical, DUE or crash)",
          "critical": "critical or worse (task metric drop > --critical, DUE or crash)",
          "due": "DUE or crash (NaN/Inf in an output, or a runtime failure)"}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "critical-bits", help="find the weight bits whose single flip causes an outcome (checked search)",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="For the selected weights, find every (element, bit) whose single flip causes the chosen "
        "outcome, running a fraction of the flips an exhaustive sweep needs (BinFI-style search over the change "
        "in value, checked on both sides of each boundary, every bit where a check fails).",
    )
    add_model_args(p)
    p.add_argument("--data", help=".npz eval data (default: the zoo model's eval set, else seeded random inputs)")
    p.add_argument("--samples", type=int, default=16, help="random inputs when no data (default 16)")
    p.add_argument("--sites", metavar="REGEX", help="weights whose name matches (default: every weight)")
    p.add_argument("--outcome", choices=list(_MEANS), default="sdc1",
                   help="what counts as harmful: sdc1 (default: any decision change, or DUE), critical (task "
                   "metric drop > --critical, or DUE), due (NaN/Inf)")
    p.add_argument("--elements", type=int, metavar="K",
                   help="search K elements per weight, drawn uniformly with --seed (default: every element); the "
                   "fractions then come with intervals")
    p.add_argument("--seed", type=int, default=0, help="seed of the element sample and of random data")
    p.add_argument("--verify", type=int, default=1, metavar="N",
                   help="flips run on each side of a boundary beyond the pair that bounds it (default 1)")
    p.add_argument("--check", action="store_true",
                   help="also flip every other bit of the searched elements and report the agreement")
    p.add_argument("--exhaustive", action="store_true", help="flip every bit of every searched element (no search)")
    p.add_argument("--confidence", type=float, default=0.99, help="interval confidence (default 0.99)")
    p.add_argument("--critical", type=float, default=0.01, help="metric drop that makes an SDC critical")
    p.add_argument("--output", help="model output that carries the decision (default: chosen from the evidence)")
    p.add_argument("--batch", type=int, default=256, help="samples per ORT run")
    p.add_argument("--threads", type=int, help="ORT intra-op threads")
    p.add_argument("--top", type=int, default=10, help="most severe flips listed (default 10)")
    p.add_argument("--db", help="SQLite store to add the search to (a table beside any campaign in it)")
    add_json_arg(p, "the search (per layer, top flips, experiment counts)")
    p.set_defaults(func=run)


def _pct(r: dict[str, Any]) -> str:
    if r["method"] == "census":
        return f"{100 * r['rate']:.2f}% (every element)"
    return f"{100 * r['rate']:.2f}% [{100 * r['lo']:.2f}, {100 * r['hi']:.2f}]"


def _value(v: Any) -> str:
    return v if isinstance(v, str) else f"{float(v):.6g}"


def print_result(doc: dict[str, Any]) -> None:
    """A search's JSON document as terminal tables."""
    from onnxfi.outcomes import OUTCOME_LABELS

    conf = int(round(100 * doc["settings"]["confidence"]))
    layers = doc["layers"]

    def layer_table(names: list[str]) -> Table:
        t = Table(title=f"Critical bits per weight: harmful = {_MEANS[doc['outcome']]}; fraction of (element, bit) "
                  f"pairs, {conf}% interval over elements when sampled", title_justify="left", show_edge=False,
                  header_style="bold")
        for col in ("site", "dtype", "elements", "critical bits", "fraction [CI]", "experiments", "fallbacks"):
            t.add_column(col, **KEEP)
        for name, e in zip(names, layers):
            searched = (fmt_int(e["elements"]) if e["searched"] == e["elements"]
                        else f"{fmt_int(e['searched'])} of {fmt_int(e['elements'])}")
            ratio = e["experiments"] / e["exhaustive_experiments"] if e["exhaustive_experiments"] else 0.0
            fall = str(e["fallbacks"]) + (" (every bit: integer)" if e["exhaustive_reason"] else "")
            t.add_row(escape(name), e["dtype"], searched, f"{fmt_int(e['critical'])} / {fmt_int(e['pairs'])}",
                      _pct(e["rate"]), f"{fmt_int(e['experiments'])} / {fmt_int(e['exhaustive_experiments'])} "
                      f"({100 * ratio:.0f}%)", fall)
        return t

    stdout.print(fit_names(layer_table, [e["site"] for e in layers], stdout))
    if doc["top"]:
        t = Table(title=f"Most severe flips (top {len(doc['top'])}; bit 0 = LSB, fp32: 31 sign, 30-23 exponent)",
                  title_justify="left", show_edge=False, header_style="bold")
        for col in ("site", "element", "bit", "outcome", "old -> new", "images changed"):
            t.add_column(col, **KEEP)
        for e in doc["top"]:
            changed = e["images_changed"]
            where = str(e["idx"]) if len(e["index"]) <= 1 else f"{e['idx']} [{','.join(map(str, e['index']))}]"
            t.add_row(escape(e["site"]), where, str(e["bit"]),
                      OUTCOME_LABELS.get(e["outcome"], e["outcome"]), f"{_value(e['old'])} -> {_value(e['new'])}",
                      "-" if changed is None else f"{100 * changed:.1f}%")
        stdout.print(t)
    exh = doc["exhaustive_experiments"]
    rate = doc["rate"]
    if rate:
        stdout.print(f"critical bits overall: {_pct(rate)} of the selected weights' (element, bit) pairs")
    stdout.print(f"experiments: {fmt_int(doc['experiments'])} of {fmt_int(exh)} for every bit of the searched "
                 f"elements ({100 * (doc['ratio'] or 0.0):.1f}%)")
    check = doc.get("check")
    if check:
        stdout.print(f"check (every bit run, {fmt_int(check['experiments'])} more experiments): the search agrees on "
                     f"{fmt_int(check['agree'])} of {fmt_int(check['pairs'])} (element, bit) pairs "
                     f"({100 * check['agreement']:.2f}%)")
        for d in check["disagreements"][:5]:
            stdout.print(escape(f"  {d['site']} element {d['idx']} bit {d['bit']}: search says "
                                f"{'harmful' if d['search'] else 'harmless'}, the flip was "
                                f"{'harmful' if d['run'] else 'harmless'}"), style="yellow")


@json_command
def run(args: argparse.Namespace) -> int:
    from onnxfi.critical import CRITICAL_BITS_SCHEMA, find_critical_bits
    from onnxfi.engine import Engine, EngineConfig
    from onnxfi.jsonvalues import jsonable
    from onnxfi.store import Store
    from onnxfi.zoo import default_data

    if args.elements is not None and args.elements < 1:
        raise OnnxfiError("--elements must be at least 1")
    if args.verify < 0:
        raise OnnxfiError("--verify must be 0 or more")
    if args.db and Path(args.db).exists():  # a damaged, foreign or newer store: one line before the search runs
        Store(args.db, readonly=True).close()
    model_path = resolve_model_arg(args.model)
    _, index = load_from_args(args)
    chosen = index.select("weights", args.sites)
    if not chosen:
        raise OnnxfiError("no weight sites match --sites" + index.pattern_hint(args.sites))
    data = args.data or default_data(args.model)
    cfg = EngineConfig(model_path=model_path, input_shapes=input_shapes_from_args(args), check=not args.no_check,
                       data_path=data, samples=args.samples, data_seed=args.seed, threads=args.threads,
                       batch=args.batch, output=args.output, critical=args.critical)
    engine = Engine(cfg)
    clean = engine.clean_summary()
    print_data_warnings(clean.get("data_warnings") or [])
    elements = sum(min(s.elements or 0, args.elements or (s.elements or 0)) for s in chosen)
    bits = sum(min(s.elements or 0, args.elements or (s.elements or 0)) * s.bits for s in chosen)
    stdout.print(f"[bold]{escape(Path(model_path).name)}[/bold]: {len(chosen)} weight(s), {fmt_int(elements)} "
                 f"elements ({fmt_int(bits)} single-bit flips exhaustively), harmful = {_MEANS[args.outcome]}; "
                 f"data {escape(str(data or 'random'))}; clean {clean.get('metric')} {clean.get('value', 0.0):.4f}")
    with Progress(TextColumn("elements"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[exp]} flips"),
                  TimeElapsedColumn(), console=stdout) as prog:
        task = prog.add_task("elements", total=elements, exp=0)
        result: CriticalBits = find_critical_bits(
            engine, chosen, outcome=args.outcome, elements=args.elements, seed=args.seed, verify=args.verify,
            check=args.check, exhaustive=args.exhaustive, confidence=args.confidence,
            progress=lambda done, total, exp: prog.update(task, completed=done, exp=exp))
    result.clean = clean
    body = result.to_dict(args.top)
    doc: dict[str, Any] = {"schema": CRITICAL_BITS_SCHEMA, "model": model_path, "db": args.db, "search": None,
                           "sites_regex": args.sites, **body}
    if args.db:
        with Store.open_locked(args.db) as store:
            doc["search"] = store.add_critical_bits(jsonable(doc), result.pairs())
    print_result(doc)
    write_json(args.json, doc)
    if args.db:
        stdout.print(f"stored: {args.db} (search {doc['search']}; tables critical_bits_searches, critical_bits)")
    return 0
