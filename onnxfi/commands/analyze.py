"""``onnxfi analyze``: a planned fault-injection campaign with outcome rates, intervals, per-layer and per-bit tables."""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from onnxfi.campaign import CampaignResult, matched_plan, prestart_workers, run_campaign
from onnxfi.commands._common import (
    MODES,
    add_allow_cast_arg,
    add_data_loader_arg,
    add_model_args,
    add_task_args,
    data_loader_from_args,
    input_shapes_from_args,
    load_from_args,
    resolve_model_arg,
    stdout,
    task_from_args,
)
from onnxfi.commands._json import SCHEMAS, STDOUT, add_json_arg, json_command, write_json
from onnxfi.commands._text import KEEP, fit_names, short_names, table_width
from onnxfi.errors import OnnxfiError

# ONNX, ONNX Runtime, numpy and the engine load when the command runs, not with the parser (--help)
if TYPE_CHECKING:
    from onnxfi.engine import EngineConfig
    from onnxfi.plan import Plan
    from onnxfi.store import Store

__all__ = ["register", "run", "print_summary"]

_EXAMPLES = """examples:
  onnxfi analyze digits_cnn                                   zoo model, its eval data, weight bit flips
  onnxfi analyze model.onnx --data eval.npz --faults 2000 --bits 23-30
  onnxfi analyze model.onnx --target activations --margin 0.01 --confidence 0.99 --early-stop
  onnxfi analyze model.onnx --fault flip --fault stuck-1 --sites 'conv|fc' --json report.json
  onnxfi analyze model.onnx --per-stratum 20 --bits 23-31   layer x bit sensitivity map (per-stratum design)
  onnxfi analyze model.onnx --design adaptive --margin 0.01  fewer faults for the same SDC-1 interval
  onnxfi analyze model.onnx --db run.db --resume              continue an interrupted campaign
  onnxfi analyze digits_cnn --fault-model transient --faults 5000   one fault in one inference (SDC per inference)
  onnxfi analyze digits_cnn --ber 1e-7,1e-6,1e-5 --faults 30  accuracy vs bit error rate (30 draws per rate)
  onnxfi analyze digits_cnn --fault-model transient --compare hardened.onnx   same faults on both models

fault models: persistent (default: one fault present for the whole eval set, a weight in memory or an
activation element in every inference), transient (one activation element of one inference: a particle
strike during one run), fault rate (--ber: every selected weight bit flips with probability p; many faults).

rates: per fault (one fault in the model's fault space changes some eval decision) and per inference (the
fraction of eval inferences a fault changes), both estimated for the whole fault space with the estimator of
the plan's design, over complete rounds; an interrupted campaign reports the rounds that finished. For
transient faults the two are one question: the probability that the hit inference's decision changes.
--ber reports the eval metric per rate (mean over draws, with an interval) and the outcome rates per rate.

outcomes: masked (outputs bitwise equal), tolerable (differ, no decision changes), sdc1 (top-1 changes on
some image), sdc5 (golden top-1 leaves the top-5), critical (task metric drops by more than --critical),
due (NaN/Inf in outputs), crash (runtime error, dead worker, or over 10x the golden time).
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "analyze", help="run a fault-injection campaign and report vulnerability", epilog=_EXAMPLES,
        description="Plan a statistically sized fault-injection campaign, run it in crash-isolated workers, "
        "store every experiment in SQLite, and report outcome rates with confidence intervals per layer and bit.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    p.add_argument("--data", help=".npz eval data (inputs + optional labels); default: the zoo model's eval "
                   "set, else seeded random inputs")
    add_data_loader_arg(p)
    add_allow_cast_arg(p)
    p.add_argument("--samples", type=int, default=16, help="random inputs when no data (default 16)")
    p.add_argument("--target", choices=["weights", "activations", "all"],
                   help="sites to fault (default: weights; activations with --fault-model transient)")
    p.add_argument("--fault-model", choices=["persistent", "transient"], default="persistent",
                   help="persistent (default): a fault stays for the whole eval set; transient: one activation "
                   "element of one inference (uniform over eval samples x elements x bits)")
    p.add_argument("--ber", metavar="RATES", help="fault-rate campaign: every selected weight bit flips with "
                   "probability p, for each p in RATES (e.g. 1e-7,1e-6,1e-5); --faults draws per rate (default 30)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--faults", type=int, help="number of experiments")
    size.add_argument("--margin", type=float, help="error margin e for Leveugle sizing (default 0.05)")
    size.add_argument("--per-stratum", type=int, metavar="N",
                      help="N faults per (site, bit) stratum: the per-stratum design (a layer x bit sensitivity map)")
    p.add_argument("--design", choices=["proportional", "per-stratum", "adaptive"],
                   help="how faults are drawn: proportional (default; every fault of the space equally likely, "
                   "so the sample rate is the model's rate), per-stratum (equal faults per site and bit, for "
                   "layer x bit maps; rates re-weighted), adaptive (--margin only: Neyman allocation over bits "
                   "in rounds until the SDC-1 interval is within the margin)")
    p.add_argument("--confidence", type=float, default=0.99, help="confidence level (default 0.99)")
    p.add_argument("--p", type=float, default=0.5, help="expected rate for sizing (default 0.5, worst case)")
    p.add_argument("--bits", help="bits to hit, e.g. 23-30 or 31,30 (default: all bits of each dtype)")
    p.add_argument("--sites", metavar="REGEX", help="only sites whose name matches")
    p.add_argument("--ops", help="only sites used/produced by these op types, e.g. Conv,Gemm")
    p.add_argument("--layers", metavar="REGEX", help="only sites used/produced by nodes whose name matches")
    p.add_argument("--include-structure", action="store_true", help="also fault shape/index tensors")
    p.add_argument("--fault", action="append", default=[],
                   help="fault model: flip (default), stuck-0, stuck-1, burst:K, value:V, random:LO,HI, zero; "
                   "repeat for a mix")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--db", help="SQLite results file (default: next to --json FILE, else ./<model>.onnxfi.db)")
    p.add_argument("--resume", action="store_true", help="continue the campaign stored in --db")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --db")
    add_json_arg(p, "the plan header, clean run and summary")
    p.add_argument("--early-stop", action="store_true", help="stop once the SDC-1 interval is within --margin")
    p.add_argument("--workers", type=int, help="worker processes (default: one per core, each with one ORT "
                   "thread, fewer where memory is short; 1 with a GPU provider or --executor ray)")
    p.add_argument("--threads", type=int, help="ORT intra-op threads per worker")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: worker processes here (default); ray: Ray actors (pip install 'onnxfi[ray]')")
    p.add_argument("--address", help="with --executor ray: a running cluster (auto, HOST:PORT, ray://HOST:PORT); "
                   "default $RAY_ADDRESS, else a Ray instance on this machine")
    p.add_argument("--provider", default="cpu")
    add_task_args(p)
    p.add_argument("--output", help="model output that carries the decision (default: chosen from the evidence: "
                   "the output that agrees best with the labels, else by shape; ambiguous -> exit 2 with the list)")
    p.add_argument("--metric", metavar="MODULE:FUNC", help="custom metric f(outputs, golden, labels) -> float|dict")
    p.add_argument("--critical", type=float, default=0.01,
                   help="metric drop (absolute, e.g. 0.01 = 1 point) that makes an SDC critical")
    p.add_argument("--batch", type=int, default=256, help="samples per ORT run")
    p.add_argument("--mode", choices=list(MODES), default="suffix",
                   help="suffix (default): per site a cached fault-free prefix and a session of the site's "
                   "forward cone; port: one whole-model session per site; naive: a new model and session per fault")
    p.add_argument("--cache-mb", type=float, default=1024.0,
                   help="memory for cached prefix tensors per worker (default 1024); sites over it use port mode")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="suffix mode, weights: skip re-running with the weight baked in the experiments whose "
                   "outcome rounding could change (faster; masked/tolerable may then differ from --mode naive "
                   "for faults as small as the rounding)")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report (needs matplotlib)")
    p.add_argument("--compare", metavar="OTHER.onnx",
                   help="run the same plan on OTHER (e.g. a hardened copy; faults matched by site name) and "
                   "print both side by side; its results go to DB.compare.db")
    p.add_argument("--timeout-min", type=float, default=30.0, help="minimum seconds before a fault is a hang")
    p.add_argument("--top", type=int, default=15, help="layers shown in the terminal table")
    p.set_defaults(func=run, start_early=start_early)


def start_early(args: argparse.Namespace) -> None:
    """Before this process loads ONNX and numpy (:func:`onnxfi.cli.main`): start the process the local
    workers fork from, so that its imports (the engine, ONNX Runtime) overlap this process's own and its
    model load and plan.

    Not when :func:`run` is about to stop on its first checks (workers, the database), which the
    server's imports would only slow down on a busy machine. A zoo name is taken for its file's stem
    here (the default database's name); where that guess is wrong, the server starts or not in vain,
    and :func:`run` makes the checks that count."""
    try:
        exists = _db_path(args, args.model).exists()
    except OSError:  # run() says what is wrong with it
        return
    if (args.workers is not None and args.workers < 1) or (exists and not args.resume and not args.overwrite) or (args.resume and not exists):
        return
    prestart_workers(args.executor)


def _db_path(args: argparse.Namespace, model_path: str) -> Path:
    """``--db``, else next to ``--json FILE``, else ``./<model>.onnxfi.db``."""
    if args.db:
        return Path(args.db)
    if args.json and args.json != STDOUT:
        return Path(args.json).with_suffix(".db")
    return Path(f"{Path(model_path).stem}.onnxfi.db")


def parse_rates(text: str) -> list[float]:
    """``--ber`` rates: a comma-separated list of probabilities in (0, 1)."""
    rates = []
    for part in text.split(","):
        try:
            r = float(part)
        except ValueError:
            raise OnnxfiError(f"--ber: {part.strip()!r} is not a number (e.g. --ber 1e-7,1e-6,1e-5)") from None
        if not 0.0 < r < 1.0:
            raise OnnxfiError(f"--ber: {part.strip()} is not a probability between 0 and 1")
        rates.append(r)
    return sorted(set(rates))


def _ber_plan(args: argparse.Namespace, model_path: str, chosen: list[Any], target: str,
              options: dict[str, Any]) -> Plan:
    from onnxfi.ber import make_ber_plan
    from onnxfi.plan import parse_bits

    for flag, given in (("--margin", args.margin), ("--per-stratum", args.per_stratum), ("--design", args.design)):
        if given is not None:
            raise OnnxfiError(f"--ber is sized by --faults (draws per rate), not {flag}")
    if args.fault and args.fault != ["flip"]:
        raise OnnxfiError("--ber flips bits; it does not take --fault")
    per_rate = 30 if args.faults is None else args.faults
    return make_ber_plan(model_path, chosen, parse_rates(args.ber), per_rate, parse_bits(args.bits), seed=args.seed,
                         target=target, options=options, confidence=args.confidence)


def _default_data(model_arg: str) -> str | None:
    from onnxfi.zoo import default_data

    return default_data(model_arg)


def _pct(r: dict[str, Any]) -> str:
    return f"{100 * r['rate']:.2f}% [{100 * r['lo']:.2f}, {100 * r['hi']:.2f}]"


_DESIGN_NOTES = {
    "proportional": "every fault of the space equally likely: the sample rate is the model's rate",
    "per-stratum": "equal faults per (site, bit): a sensitivity map; rates re-weighted to the fault space",
    "adaptive": "Neyman allocation over bits in rounds; rates re-weighted to the fault space",
}


def _method(r: dict[str, Any]) -> str:
    return str(r.get("method") or "wilson")


def print_summary(plan: Plan, clean: dict[str, Any], s: dict[str, Any], top: int = 15) -> None:
    """The campaign summary ``s`` (:func:`onnxfi.summary.aggregate`'s) as terminal tables."""
    from onnxfi.outcomes import decision_words, flag_description, shown_flags

    if plan.fault_model == "ber":  # a metric per bit error rate, no single rate
        from onnxfi.commands._ber import ber_table

        stdout.print(ber_table(s))
        return
    conf = int(round(100 * s["confidence"]))
    design = s.get("design", plan.design)
    rates, raw = s["rates"], s.get("rates_raw", s["rates"])
    self_weighting = design == "proportional"
    transient = plan.fault_model == "transient"
    question = ("Per inference, transient faults: one fault in one activation element of one inference (uniform "
                "over eval samples x elements x bits)" if transient else "Per fault: rates over the model's fault space")
    t = Table(title=f"{question} ({design} design: "
              f"{_DESIGN_NOTES.get(design, design)}; {conf}% {_method(rates['sdc1'])} intervals)",
              title_justify="left", show_edge=False, header_style="bold")
    cols = ["outcome", "count", "rate [CI]"] if self_weighting else ["outcome", "sampled k/n", "rate [CI]",
                                                                      "raw sample rate (tilted)"]
    for col in cols:
        t.add_column(col, **KEEP)
    critical = plan.options.get("critical", 0.01)
    for key in shown_flags(clean.get("task")):
        r = rates[key]
        label = escape(flag_description(key, clean.get("task"), critical))
        if self_weighting:
            t.add_row(label, str(r["k"]), _pct(r))
        else:
            t.add_row(label, f"{r['k']}/{r['n']}", _pct(r), f"{100 * raw[key]['rate']:.2f}%")
    stdout.print(t)
    per = (s.get("per_inference") or {}).get("sdc1")
    if per and not transient:
        stdout.print(f"Per inference: a fault changes the {decision_words(clean.get('task'))} of {_pct(per)} of "
                     f"eval inferences (mean over faults; {conf}% {_method(per)} interval)")
    tok = (s.get("per_token") or {}).get("error_rate")
    if tok:
        stdout.print(f"Per token: a fault changes {_pct(tok)} of the decoded tokens (edit distance over the "
                     f"fault-free length, mean over faults; {conf}% {_method(tok)} interval)")
    drop = (s.get("task_drop") or {}).get("map50")
    if drop:
        stdout.print(f"mAP@0.5 drop: a fault lowers the detector's mAP@0.5 by {_pct(drop)} (absolute: clean - faulty, "
                     f"{'against the labels' if clean.get('metric') == 'map50' else 'against its own fault-free detections'}, "
                     f"a gain counts as 0; mean over faults; {conf}% {_method(drop)} interval)")
    prog = s.get("progress") or {}
    if prog and not prog.get("complete", True):
        stdout.print(f"[yellow]partial campaign: {prog.get('rounds_complete')} of {prog.get('rounds')} rounds "
                     f"complete; the rates use {prog.get('used', 0):,} of {prog.get('planned', 0):,} planned "
                     f"experiments ({100 * float(prog.get('fraction', 0.0)):.1f}%)"
                     + (f"; {prog['partial_rows']:,} stored rows of unfinished rounds are left out"
                        if prog.get("partial_rows") else "") + "[/yellow]")
    stdout.print("outcome counts: " + ", ".join(f"{k} {v}" for k, v in s["outcomes"].items() if v)
                 + f"; images whose decision changed, mean per experiment: {100 * s['images_changed_mean']:.2f}%")
    layers = s["layers"][:top]

    def layer_table(names: list[str]) -> Table:
        lt = Table(title=f"Layers by SDC-1 rate (top {min(top, len(s['layers']))} of {len(s['layers'])})",
                   title_justify="left", show_edge=False, header_style="bold")
        for col in ("#", "site", "n", "SDC-1 [CI]", "DUE [CI]", "critical"):
            lt.add_column(col, **KEEP)
        for i, (name, e) in enumerate(zip(names, layers), 1):
            lt.add_row(str(i), escape(name), str(e["n"]), _pct(e["sdc1"]), _pct(e["due"]),
                       f"{100 * e['critical']['rate']:.1f}%")
        return lt

    stdout.print(fit_names(layer_table, [str(e["key"]) for e in layers], stdout))
    if s["bits"]:
        def bit_table(scale: int) -> Table:
            bt = Table(title="Bits (bit 0 = LSB; fp32: 31 sign, 30-23 exponent)", title_justify="left",
                       show_edge=False, header_style="bold")
            for col in ("bit", "n", "SDC-1 [CI]", "DUE [CI]", "profile"):
                bt.add_column(col, **KEEP)
            for e in s["bits"]:
                bar = "#" * int(round(scale * max(e["sdc1"]["rate"], e["due"]["rate"])))
                bt.add_row(str(e["key"]), str(e["n"]), _pct(e["sdc1"]), _pct(e["due"]), bar)
            return bt

        bt = bit_table(30)
        excess = table_width(bt, stdout) - stdout.width
        stdout.print(bit_table(max(5, 30 - excess)) if excess > 0 else bt)  # a shorter bar, not a wrapped one
    _print_layer_bit(s, top)
    if clean:
        stdout.print(f"clean {clean.get('metric')}: {clean.get('value', float('nan')):.4f} on {clean.get('samples')} "
                     f"samples ({clean.get('data')}); task {clean.get('task')}; plan {plan.mode}, "
                     f"population {plan.population:,}, seed {plan.seed}")


# the engine's fast paths; any other path (port, rebuild, naive) is a fallback worth a line
_FAST_PATHS = ("opt-slice", "opt-cut", "opt-cut-baked", "cone-opt", "cone", "cone-split", "cone-baked")


def path_note(rows: list[dict[str, Any]]) -> str | None:
    """One line of execution paths per site kind, when any experiment left the fast paths; else None."""
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        base = str(r.get("path") or "unrecorded").split("+")[0]
        by_kind[str(r.get("kind") or "?")][base] += 1
    if all(p in _FAST_PATHS for c in by_kind.values() for p in c):
        return None
    parts = [f"{kind}: " + ", ".join(f"{p} {n:,}" for p, n in c.most_common()) for kind, c in sorted(by_kind.items())]
    return "execution paths (port/rebuild/naive are the slower fallbacks) - " + "; ".join(parts)


def _print_layer_bit(s: dict[str, Any], top: int) -> None:
    """Layer x bit grid of the SDC-1-or-DUE rate (%), most vulnerable layers first."""
    cells = {(e["site"], e["bit"]): e for e in s.get("layer_bit", [])}
    if not cells:
        return
    bits = sorted({b for _, b in cells}, reverse=True)
    layers = [str(e["key"]) for e in s["layers"] if any((str(e["key"]), b) in cells for b in bits)][:top]
    site_w = min(28, max(8, *(len(ly) for ly in layers)))
    names = short_names(layers, site_w)  # from the middle, distinct names kept distinct
    site_w = max(site_w, *(len(n) for n in names))
    fit = max(4, (stdout.width - site_w - 1) // 4)  # 3 digits and a space per bit
    total = len(bits)
    shown = min(total, fit, 32)
    if shown < total:  # keep the terminal readable: the most damaging bits that fit
        worst = sorted(bits, key=lambda b: -sum(cells[(ly, b)]["rate"] for ly in layers if (ly, b) in cells))
        bits = sorted(worst[:shown], reverse=True)
    note = "" if shown == total else f"; the {shown} most damaging of {total} bits"
    t = Table(title=f"Layer x bit: SDC-1 or DUE rate, % (- = not sampled; rows: top layers{note})",
              title_justify="left", box=None, header_style="bold", pad_edge=False, padding=(0, 1, 0, 0))
    t.add_column("site", min_width=site_w, max_width=site_w, **KEEP)
    for b in bits:
        t.add_column(str(b), justify="right", min_width=3, no_wrap=True)
    for layer, name in zip(layers, names):
        row = []
        for b in bits:
            e = cells.get((layer, b))
            if e is None:
                row.append("-")
            else:
                pct = 100 * e["rate"]
                style = "bold red" if pct >= 50 else ("yellow" if pct >= 10 else "dim")
                row.append(f"[{style}]{pct:.0f}[/{style}]")
        t.add_row(escape(name), *row)
    stdout.print(t)


def _ber_compare_table(a: dict[str, Any], b: dict[str, Any], name_a: str, name_b: str, conf: int) -> Table:
    """Two fault-rate summaries of the same draws side by side: the metric per rate, and whether the
    intervals are apart."""
    metric = str(a.get("metric") or "metric")
    t = Table(title=f"{name_a} vs {name_b} (the same draws: {metric} per bit error rate, mean over draws, "
              f"{conf}% intervals)", title_justify="left", show_edge=False, header_style="bold")
    for col in ("BER", name_a, name_b, "difference", "intervals"):
        t.add_column(escape(col), **KEEP)
    other = {float(e["rate"]): e for e in b.get("ber", [])}

    def cell(m: dict[str, Any]) -> str:
        return f"{m['mean']:.4f} [{m['lo']:.4f}, {m['hi']:.4f}]" if m.get("n") else "-"

    for e in a.get("ber", []):
        o = other.get(float(e["rate"]))
        if o is None:
            continue
        ma, mb = e["metric"], o["metric"]
        diff = f"{mb['mean'] - ma['mean']:+.4f}" if ma.get("n") and mb.get("n") else "-"
        apart = bool(ma.get("n") and mb.get("n") and (ma["hi"] < mb["lo"] or mb["hi"] < ma["lo"]))
        t.add_row(f"{float(e['rate']):g}", cell(ma), cell(mb), diff, "[green]apart[/green]" if apart else "overlap")
    return t


def _run_compare(args: argparse.Namespace, plan: Any, other_plan: Any, cfg: EngineConfig, db_path: Path,
                 store: Store, result: CampaignResult) -> dict[str, Any]:
    """Run ``other_plan`` (``plan`` on ``--compare``, experiments matched by site name) and print both."""
    from dataclasses import replace

    from onnxfi.outcomes import FLAG_LABELS, FLAGS
    from onnxfi.store import Store

    other_path = other_plan.model
    other_db = Path(f"{db_path}.compare.db")
    for path in (other_db, Path(f"{other_db}-wal"), Path(f"{other_db}-shm")):
        path.unlink(missing_ok=True)
    other_cfg = replace(cfg, model_path=other_path)
    stdout.print(f"[bold]{Path(other_path).name}[/bold]: the same {len(plan.experiments):,} experiments")
    with Store(other_db) as other_store, Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), console=stdout) as prog:
        task = prog.add_task("compare", total=len(other_plan.experiments))
        other = run_campaign(other_plan, other_cfg, other_store, workers=args.workers,
                             progress=lambda d, t, live: prog.update(task, completed=d),
                             min_timeout_s=args.timeout_min, executor=args.executor, address=args.address)
    store.set_meta("compare", {"db": str(other_db), "model": other_path})
    a, b = result.summary, other.summary
    conf = int(round(100 * a["confidence"]))
    if plan.fault_model == "ber":
        stdout.print(_ber_compare_table(a, b, Path(cfg.model_path).name, Path(other_path).name, conf))
        return {"model": other_path, "db": str(other_db), "clean": other.clean, "summary": other.summary}
    question = "per-inference rates, transient faults" if plan.fault_model == "transient" else "per-fault rates"
    t = Table(title=f"{Path(cfg.model_path).name} vs {Path(other_path).name} (same plan, {question} over the "
              f"fault space, {a.get('design', plan.design)} design, {conf}% intervals)",
              title_justify="left", show_edge=False, header_style="bold")
    for col in ("rate", Path(cfg.model_path).name, Path(other_path).name, "ratio", "intervals"):
        t.add_column(escape(col), **KEEP)
    for key in FLAGS:
        ra, rb = a["rates"][key], b["rates"][key]
        ratio = f"{ra['rate'] / rb['rate']:.1f}x" if rb["rate"] > 0 else ("-" if ra["rate"] == 0 else "inf")
        apart = ra["hi"] < rb["lo"] or rb["hi"] < ra["lo"]
        t.add_row(FLAG_LABELS[key], _pct(ra), _pct(rb), ratio, "[green]apart[/green]" if apart else "overlap")
    stdout.print(t)
    ca, cb = result.clean, other.clean
    if ca and cb:
        stdout.print(f"clean {ca.get('metric')}: {ca.get('value', float('nan')):.4f} -> {cb.get('value', float('nan')):.4f}")
    return {"model": other_path, "db": str(other_db), "clean": other.clean, "summary": other.summary}


@json_command
def run(args: argparse.Namespace) -> int:
    from onnxfi.data import make_dataset
    from onnxfi.engine import EngineConfig
    from onnxfi.plan import Plan, file_sha256, left_out_note, make_plan, parse_bits
    from onnxfi.store import Store

    if args.workers is not None and args.workers < 1:
        raise OnnxfiError("--workers must be at least 1")
    if args.html:  # before the campaign: matplotlib and a writable path, not an error after an hour of it
        from onnxfi.report.html import preflight

        preflight(args.html)
    model_path = resolve_model_arg(args.model)
    db_path = _db_path(args, model_path)
    replace = db_path.exists() and not args.resume
    if replace and not args.overwrite:
        raise OnnxfiError(f"{db_path} exists: use --resume to continue it, --overwrite to replace it, or --db")
    if args.resume and not db_path.exists():
        raise OnnxfiError(f"--resume: {db_path} does not exist")
    loader = data_loader_from_args(args)
    data = args.data or (None if loader else _default_data(args.model))
    cfg = EngineConfig(
        model_path=model_path, input_shapes=input_shapes_from_args(args), check=not args.no_check,
        data_path=data, data_loader=loader, samples=args.samples, data_seed=args.seed, provider=args.provider, threads=args.threads,
        batch=args.batch, output=args.output, task=task_from_args(args), critical=args.critical, metric=args.metric,
        mode=args.mode, cache_mb=args.cache_mb, verify=args.verify, allow_cast=args.allow_cast,
    )
    created = replace or not db_path.exists()
    # the writer lock before anything is deleted or written: a second campaign on this --db (--overwrite
    # included) is refused while this one runs; --overwrite deletes the old database under the lock
    store = Store.open_locked(db_path, replace=replace)
    keep = True
    try:
        if args.resume:
            stored_plan = store.meta("plan")
            if stored_plan is None:
                raise OnnxfiError(f"{db_path}: nothing to resume (no campaign in it: it stopped before its plan was stored); start it again with --overwrite")
            stored_cfg = store.meta("config")
            if stored_cfg:
                known = EngineConfig.__dataclass_fields__  # a key another onnxfi version wrote is left out
                cfg = EngineConfig(**{k: v for k, v in stored_cfg.items() if k in known})
                cfg.input_shapes = {k: tuple(v) for k, v in cfg.input_shapes.items()}
            plan = Plan.from_dict(stored_plan)
            if file_sha256(cfg.model_path) != plan.model_sha256:
                raise OnnxfiError(f"{cfg.model_path} changed since the campaign started (hash differs); refusing to resume")
        else:
            loaded, sites = load_from_args(args)
            ops = [o.strip() for o in args.ops.split(",")] if args.ops else None
            transient = args.fault_model == "transient"
            if transient and args.ber:
                raise OnnxfiError("--ber is a fault-rate campaign over weights; it does not take --fault-model "
                                  "transient")
            target = args.target or ("activations" if transient else "weights")
            chosen = sites.select(target, args.sites, ops, args.include_structure, layers=args.layers)
            if not chosen:
                raise OnnxfiError("no fault sites match the filters (--target/--sites/--ops/--layers)"
                                  + sites.pattern_hint(args.sites))
            design = args.design or ("per-stratum" if args.per_stratum else "proportional")
            if args.per_stratum is not None and design != "per-stratum":
                raise OnnxfiError(f"--per-stratum is the per-stratum design's size, not {design}'s")
            if design == "adaptive" and args.faults is not None:
                raise OnnxfiError("--design adaptive is sized by --margin, not --faults")
            margin = args.margin if args.faults is None and args.per_stratum is None else None
            if args.faults is None and args.per_stratum is None and margin is None:
                margin = 0.05
            options = {"critical": args.critical, "data": data or loader, "sites_regex": args.sites, "ops": args.ops}
            if args.ber:
                plan = _ber_plan(args, model_path, chosen, target, options)
            else:
                images = None
                if transient:  # the fault space counts eval samples: know how many before planning
                    images = make_dataset(loaded.inputs(), cfg.data_path, cfg.data_loader, seed=cfg.data_seed,
                                          samples=cfg.samples, overrides=cfg.input_shapes,
                                          allow_cast=cfg.allow_cast).size
                plan = make_plan(
                    model_path, chosen, args.fault or ["flip"], parse_bits(args.bits), args.faults, margin,
                    args.confidence, args.p, args.seed, target, design=design, per_stratum=args.per_stratum,
                    options=options, fault_model=args.fault_model, images=images,
                )
        left_out = plan.options.get("left_out_unknown_shape")
        if left_out:
            stdout.print(escape(left_out_note(left_out)), style="yellow")
        not_per_inference = plan.options.get("left_out_not_per_inference")
        if not_per_inference:
            stdout.print(escape(f"transient faults: left out {len(not_per_inference)} site(s) without a batch "
                                f"dimension or not activations (e.g. {not_per_inference[0]})"), style="yellow")
        other_plan = None
        if args.compare:  # checked before the first campaign runs
            other_plan = matched_plan(plan, resolve_model_arg(args.compare), cfg.input_shapes)
        plan.save(str(db_path) + ".plan.json")
        rounds = len({e.round for e in plan.experiments})
        grows = " to start, more rounds until the margin is met" if plan.design == "adaptive" else ""
        if plan.fault_model == "ber":
            ber = plan.options.get("ber") or {}
            stdout.print(f"[bold]{Path(cfg.model_path).name}[/bold]: {len(plan.experiments):,} experiments (fault rate: "
                         f"{len(ber.get('rates', []))} rates x {ber.get('per_rate')} draws; {plan.population:,} weight "
                         f"bits over {len({s.site for s in plan.strata})} sites), seed {plan.seed}, data "
                         f"{cfg.data_path or cfg.data_loader or 'random'}")
        else:
            stdout.print(f"[bold]{Path(cfg.model_path).name}[/bold]: {len(plan.experiments):,} experiments{grows} "
                         f"({plan.design} design, {plan.mode}, {rounds} round{'s' if rounds != 1 else ''}; fault space "
                         f"{plan.population:,}; {len(plan.strata)} strata over {len({s.site for s in plan.strata})} "
                         f"sites), seed {plan.seed}, data {cfg.data_path or cfg.data_loader or 'random'}")
        with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("SDC-1 {task.fields[sdc]}"), TimeElapsedColumn(), TextColumn("ETA"),
                      TimeRemainingColumn(), console=stdout, transient=False) as prog:
            waiting = "- (per rate at the end)" if plan.fault_model == "ber" else "- (after the first round)"
            task = prog.add_task("faults", total=len(plan.experiments), sdc=waiting)

            def progress(done: int, total: int, live: dict[str, Any]) -> None:
                h = live.get("headline")
                sdc = waiting if not h or h["n"] == 0 else _pct(h)
                prog.update(task, completed=done, total=total, sdc=sdc)

            result = run_campaign(plan, cfg, store, workers=args.workers, resume=args.resume,
                                  early_stop=args.early_stop, progress=progress, min_timeout_s=args.timeout_min,
                                  executor=args.executor, address=args.address)
        plan = result.plan  # an adaptive plan grows while it runs
        choice = (result.clean or {}).get("output_choice") or {}
        if choice.get("reason"):
            stdout.print(escape(f"scored output: {choice.get('name')}: {choice['reason']}"))
        print_summary(plan, result.clean, result.summary, args.top)
        if (result.clean or {}).get("warning"):
            stdout.print(escape(f"warning: {result.clean['warning']}"), style="bold yellow")
        for w in (result.clean or {}).get("data_warnings") or []:
            stdout.print(escape(f"warning: {w}"), style="yellow")
        note = path_note(list(store.rows()))
        if note:
            stdout.print(escape(note), style="yellow")
        doc = {"schema": SCHEMAS["analyze"], "model": cfg.model_path, "db": str(db_path),
               "plan": {k: v for k, v in plan.to_dict().items() if k != "experiments"}, "clean": result.clean,
               "summary": result.summary, "interrupted": result.interrupted, "early_stopped": result.early_stopped,
               "workers": {k: result.extra.get(k) for k in ("workers", "threads")}}
        if args.compare and not result.interrupted:
            other = _run_compare(args, plan, other_plan, cfg, db_path, store, result)
            doc["compare"] = other
        write_json(args.json, doc)
        if args.html:
            from onnxfi.report.html import write_report

            stdout.print(f"wrote {write_report(db_path, args.html)}")
        stdout.print(f"results: {db_path} (export: onnxfi results {db_path} --csv); plan: {db_path}.plan.json")
        if result.interrupted:
            stdout.print(f"[yellow]interrupted: {store.count()} of {len(plan.experiments)} stored (the rates above "
                         "use the complete rounds only); "
                         f"continue with: onnxfi analyze {args.model} --db {db_path} --resume[/yellow]")
            return 130
        return 0
    except BaseException:
        # A run that failed before storing any result leaves nothing behind, so the same --db works next time.
        keep = not created or store.count() > 0
        raise
    finally:
        store.close(discard=not keep)  # a database that stored nothing is deleted while still locked
        if not keep:
            Path(f"{db_path}.plan.json").unlink(missing_ok=True)
