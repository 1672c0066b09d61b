"""``onnxfi advise``: choose activation hardening per layer under a latency budget, write the recipe, verify it."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from onnxfi.commands._common import add_model_args, load_from_args, resolve_model_arg, stderr, stdout
from onnxfi.commands._json import add_json_arg, json_command, write_json
from onnxfi.errors import OnnxfiError

__all__ = ["register", "run"]

HELP = """Choose, per activation layer, which hardening (ranger, clipact, relumax) to apply so that the
predicted per-inference SDC rate is lowest within a latency budget, write the recipe (`onnxfi harden --recipe`
applies it), then verify: a fresh weight-fault plan (seed + 1) on the original, the recipe and each method
applied to the whole model, with intervals. The prediction attributes each weight fault to the first
activation downstream of its weight and takes the outcome it had under that layer's method; costs are the
measured latency of one method at one layer (README: Hardening advisor).

examples:
  onnxfi advise digits_cnn --budget-latency 5 -o digits.recipe.json
  onnxfi harden digits_cnn --recipe digits.recipe.json -o digits_hardened.onnx
  onnxfi advise model.onnx --data eval.npz --faults 2000 --methods ranger,clipact --json advise.json
"""


def register(sub: Any) -> None:
    p = sub.add_parser("advise", help="choose per-layer hardening under a latency budget and verify it",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--data", metavar="DATA.npz", help="eval and calibration data (default: a zoo model's eval set)")
    p.add_argument("--budget-latency", type=float, default=5.0, metavar="PCT",
                   help="latency overhead allowed, percent of the original's median (default 5)")
    p.add_argument("--methods", default="ranger,clipact,relumax",
                   help="activation methods to choose from (default ranger,clipact,relumax)")
    p.add_argument("--faults", type=int, default=1000, help="weight faults per plan (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="plan seed; verification uses seed + 1 (default 0)")
    p.add_argument("--repeat", type=int, default=200, help="interleaved latency rounds (default 200)")
    p.add_argument("--batch", type=int, default=64, help="samples per latency run (default 64)")
    p.add_argument("--no-verify", action="store_true", help="choose and write the recipe only")
    p.add_argument("-o", "--out", metavar="RECIPE.json", help="write the recipe here")
    add_json_arg(p, "units, costs, the choice, the recipe and the verification")
    p.set_defaults(func=run)


def _pct(r: Any) -> str:
    return f"{100 * r.rate:.2f}% [{100 * r.lo:.2f}, {100 * r.hi:.2f}]"


@json_command
def run(args: argparse.Namespace) -> int:
    from onnxfi import advise
    from onnxfi.api import analyze
    from onnxfi.data import load_data
    from onnxfi.harden import HardenOptions, harden, parse_methods
    from onnxfi.model import save_model
    from onnxfi.zoo import default_data

    methods = parse_methods(args.methods)
    other = [m for m in methods if m not in advise.ACTIVATION_METHODS]
    if other:
        raise OnnxfiError(f"advise chooses among {', '.join(advise.ACTIVATION_METHODS)}; not {other[0]}")
    if args.budget_latency < 0 or args.faults < 10 or args.repeat < 5 or args.batch < 1:
        raise OnnxfiError("--budget-latency must be >= 0, --faults >= 10, --repeat >= 5, --batch >= 1")
    model_path = resolve_model_arg(args.model)
    data_path = args.data or default_data(args.model)
    if data_path is None:
        raise OnnxfiError("advise needs eval data with labels or real inputs: give --data DATA.npz")
    loaded, _ = load_from_args(args)
    data = load_data(data_path, loaded.inputs())
    budget = args.budget_latency / 100.0
    units = advise.activation_units(loaded.model)
    if not units:
        raise OnnxfiError("no activation to harden in this model (ranger, clipact and relumax bound activations)")
    stdout.print(escape(f"{Path(model_path).name}: {len(units)} activation layers x {len(methods)} methods, "
                        f"budget {args.budget_latency:g}% latency; data {data.source} ({data.size} samples)"))
    doc: dict[str, Any] = {"schema": advise.ADVISE_SCHEMA, "model": str(model_path), "data": data.source,
                           "budget_latency": budget, "methods": methods, "units": units, "faults": args.faults,
                           "seed": args.seed}
    with tempfile.TemporaryDirectory(prefix="onnxfi-advise-") as tmp, Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=stderr, transient=True) as prog:
        work = Path(tmp)
        whole = {m: harden(loaded.model, [m], data, HardenOptions()).model for m in methods}
        paths = {}
        for m, hm in whole.items():
            paths[m] = work / f"{m}.onnx"
            save_model(hm, paths[m])

        def campaigns(seed: int, others: dict[str, Path], what: str) -> tuple[Any, dict[str, Any]]:
            task = prog.add_task(what, total=len(others))
            base, out = None, {}
            for key, path in others.items():
                rep = analyze(model_path, data_path, faults=args.faults, seed=seed, compare_with=str(path),
                              db=work / f"{what.split()[0]}-{key}.db")
                base = base or rep
                out[key] = rep.compare
                prog.advance(task)
            return base, out

        base, under = campaigns(args.seed, paths, "choice campaigns")
        find = advise.downstream_units(loaded.model, units)
        attributed: dict[str, list[int]] = {}
        for r in base.rows:
            u = find(str(r["site"]))
            if u is not None:
                attributed.setdefault(u, []).append(int(r["id"]))
        sdc = {int(r["id"]): float(r.get("images_changed") or 0.0) for r in base.rows}
        sdc_under = {m: {int(r["id"]): float(r.get("images_changed") or 0.0) for r in rep.rows}
                     for m, rep in under.items()}
        # costs: one method at one unit, and each method on the whole model, in one interleaved loop
        task = prog.add_task("latency (per layer)", total=1)
        single = {(u, m): harden(loaded.model, [m], data, HardenOptions(layers=advise.layers_regex([u]))).model
                  for u in units for m in methods}
        feeds = data.batch(0, min(data.size, args.batch))
        timed = advise.latencies({"original": loaded.model, **{f"{u}\t{m}": sm for (u, m), sm in single.items()},
                                  **{f"whole\t{m}": wm for m, wm in whole.items()}}, feeds, args.repeat)
        prog.advance(task)
        t0 = timed["original"]
        cost = {(u, m): max(0.0, timed[f"{u}\t{m}"] / t0 - 1) for u in units for m in methods}
        # per-layer costs need not add up: measure the chosen recipe itself; while it is over the budget, choose
        # again within a budget lowered by what the sum missed (at most 5 rounds; the last fit is kept)
        task = prog.add_task("latency (the recipe)", total=None)
        rounds: list[dict[str, Any]] = []
        allowed = budget
        choice = advise.choose(units, methods, attributed, sdc, sdc_under, cost, allowed)
        for _ in range(5):
            if not choice.assignment:
                break
            trial = advise.apply_recipe(loaded.model, choice.recipe(), data, HardenOptions()).model
            t = advise.latencies({"original": loaded.model, "recipe": trial}, feeds, args.repeat)
            over = t["recipe"] / t["original"] - 1
            rounds.append({"allowed": allowed, "assignment": dict(choice.assignment), "summed_cost": choice.cost,
                           "measured_overhead": over})
            if over <= budget:
                break
            allowed -= max(over - choice.cost, 0.1 * budget)
            choice = advise.choose(units, methods, attributed, sdc, sdc_under, cost, max(allowed, 0.0))
        else:
            choice = advise.choose(units, methods, attributed, sdc, sdc_under, cost, 0.0)  # nothing fit: free only
        prog.update(task, total=1, completed=1)
        recipe = choice.recipe()
        doc["choice"] = {
            "assignment": choice.assignment, "predicted_per_inference": choice.predicted,
            "baseline_per_inference": choice.baseline, "cost": choice.cost, "exact": choice.exact,
            "combinations": choice.combos, "rounds": rounds,
            "units": [{"unit": u, "faults": len(attributed.get(u, [])),
                       **{m: {"cost": cost[(u, m)], "gain": choice.benefit[(u, m)]} for m in methods}} for u in units],
        }
        doc["recipe"] = recipe.to_dict(str(model_path))
        if args.out:
            Path(args.out).write_text(json.dumps(doc["recipe"], indent=2) + "\n", encoding="utf-8")
        _print_choice(units, methods, attributed, cost, choice, len(sdc))
        for r in rounds[:-1]:
            stdout.print(escape(f"chose again: {len(r['assignment'])} step(s) summing {100 * r['summed_cost']:+.1f}% "
                                f"measured {100 * r['measured_overhead']:+.1f}% latency together, over the budget"))
        if not args.no_verify:
            hardened = advise.apply_recipe(loaded.model, recipe, data, HardenOptions()).model
            rpath = work / "recipe.onnx"
            save_model(hardened, rpath)
            vbase, vunder = campaigns(args.seed + 1, {"recipe": rpath, **paths}, "verification campaigns")
            lat = advise.latencies({"original": loaded.model, "recipe": hardened, **whole}, feeds, args.repeat)
            rows = []
            ver: dict[str, Any] = {"seed": args.seed + 1, "original": _rates(vbase), "latency_ms": lat}
            for key in ["recipe", *methods]:
                over = lat[key] / lat["original"] - 1
                ver[key] = {**_rates(vunder[key]), "overhead": over, "within_budget": over <= budget}
                rows.append((key, over, vunder[key]))
            doc["verification"] = ver
            _print_verification(vbase, rows, budget, choice.predicted, lat["original"])
    if args.out:
        stdout.print(escape(f"recipe: {args.out} (apply: onnxfi harden {args.model} --recipe {args.out} -o OUT.onnx)"))
    if args.json:
        write_json(args.json, doc)
    return 0


def _rates(rep: Any) -> dict[str, Any]:
    per, sdc = rep.per_inference, rep.rate("sdc1")
    return {"per_inference": {"rate": per.rate, "lo": per.lo, "hi": per.hi, "method": per.method},
            "sdc1": {"k": sdc.k, "n": sdc.n, "rate": sdc.rate, "lo": sdc.lo, "hi": sdc.hi, "method": sdc.method}}


def _print_choice(units: list[str], methods: list[str], attributed: dict[str, list[int]],
                  cost: dict[tuple[str, str], float], choice: Any, n: int) -> None:
    t = Table(title="Per layer: faults attributed, latency cost and predicted per-inference SDC reduction of each "
                    "method; * = chosen", title_justify="left", show_edge=False, header_style="bold")
    t.add_column("activation")
    t.add_column("faults", justify="right")
    for m in methods:
        t.add_column(m, justify="right")
    for u in units:
        cells = []
        for m in methods:
            mark = " *" if choice.assignment.get(u) == m else ""
            cells.append(f"{100 * cost[(u, m)]:+.1f}% / -{100 * choice.benefit[(u, m)]:.3f}{mark}")
        t.add_row(escape(u), str(len(attributed.get(u, []))), *cells)
    stdout.print(t)
    stdout.print(f"predicted per-inference SDC: {100 * choice.baseline:.3f}% -> {100 * choice.predicted:.3f}% "
                 f"at {100 * choice.cost:+.1f}% latency ({'exact over' if choice.exact else 'greedy; '} "
                 f"{choice.combos:,} combinations; {n:,} faults)")


def _print_verification(base: Any, rows: list[tuple[str, float, Any]], budget: float, predicted: float,
                        t0: float) -> None:
    t = Table(title=f"Verification on a fresh plan ({base.plan.population:,} faults in the space, "
                    f"{len(base.rows):,} drawn; 99% intervals); original {t0:.3f} ms median",
              title_justify="left", show_edge=False, header_style="bold")
    for col in ("model", "latency", "within budget", "per-inference SDC [CI]", "SDC-1 per fault [CI]"):
        t.add_column(col)
    t.add_row("original", "-", "-", _pct(base.per_inference), _pct(base.rate("sdc1")))
    for key, over, rep in rows:
        name = "advised recipe" if key == "recipe" else f"{key} (whole model)"
        t.add_row(escape(name), f"{100 * over:+.1f}%", "yes" if over <= budget else "no", _pct(rep.per_inference),
                  _pct(rep.rate("sdc1")))
    stdout.print(t)
    recipe = next(rep for key, _, rep in rows if key == "recipe")
    stdout.print(f"advised recipe: predicted {100 * predicted:.3f}%, measured {_pct(recipe.per_inference)} "
                 "per-inference SDC on faults the choice did not see")
